using System;
using System.IO;
using System.Linq;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;

namespace BastionTools.Infra.Tests
{
    /// <summary>
    /// cdk-nag's AwsSolutions and NIST 800-53 rev 5 packs (infra/nag/check.mjs) on the real templates of every
    /// configuration and both profiles, and proof that the check can fail: an open security group, a removed, reasonless,
    /// stale or unknown-pack acknowledgement.
    /// </summary>
    [Collection(InfraCollection.Name)]
    public sealed class NagTests
    {
        private readonly Stacks _stacks;
        private readonly NagChecker _nag;
        private readonly ITestOutputHelper _output;

        public NagTests(Stacks stacks, NagChecker nag, ITestOutputHelper output)
        {
            _stacks = stacks;
            _nag = nag;
            _output = output;
        }

        private NagResult Check(string templatePath, params string[] packs)
        {
            var result = _nag.Check(templatePath, packs);
            _output.WriteLine(result.Output);
            return result;
        }

        [Theory]
        [MemberData(nameof(Stacks.Names), MemberType = typeof(Stacks))]
        public void Every_configuration_is_cdk_nag_clean(string config)
        {
            var result = Check(_stacks[config].TemplatePath);
            _output.WriteLine("synthesis times: " + _stacks.Timings);
            Assert.True(result.ExitCode == 0, result.Output);
            Assert.Empty(result.FindingRuleIds);
            Assert.Empty(result.Problems);
            Assert.Equal(new[] { NagChecker.AwsSolutions, NagChecker.Nist80053R5 }, result.Packs);
            Assert.True(result.CompliantChecks(NagChecker.AwsSolutions) > 10, "too few AwsSolutions rules evaluated: " + result.Output);
            Assert.True(result.CompliantChecks(NagChecker.Nist80053R5) > 30, "too few NIST 800-53 rev 5 rules evaluated: " + result.Output);
        }

        [Fact]
        public void Production_profile_reaches_both_packs_acknowledging_only_what_no_profile_changes()
        {
            var s = _stacks.Production;
            var result = Check(s.TemplatePath);
            Assert.True(result.ExitCode == 0, result.Output);
            Assert.Empty(result.Findings);
            string On(Constructs.IConstruct c) => " on " + s.Id(c);
            var expected = new[]
            {
                // The same as the default profile's AwsSolutions ones, but for RDS3 (Multi-AZ now)...
                "AwsSolutions-EC29" + On(s.Stack.Bastion.Instance),
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]" + On(s.Stack.Bastion.Role),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:*]" + On(s.Stack.Bastion.Policy),
                "AwsSolutions-IAM5[Resource::*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/<aws:username>-*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:db:*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:cluster:*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-RDS11" + On(s.Stack.Database.Instance),
                // ...plus the AWS-managed service role policies of enhanced monitoring and AWS Backup...
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole]" + On(s.Stack.Database.MonitoringRole!),
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup]" + On(s.Stack.Backup!.Role),
                // ...and of NIST 800-53 rev 5 only the VPC's unused default security group.
                "NIST.800.53.R5-VPCDefaultSecurityGroupClosed" + On(s.Stack.Network.Vpc),
            }.OrderBy(x => x, StringComparer.Ordinal).ToArray();
            Assert.Equal(expected, result.Acknowledged);
        }

        [Fact]
        public void Default_profile_acknowledges_exactly_the_nist_findings_production_fixes()
        {
            // The cheap default: Multi-AZ, enhanced monitoring and an AWS Backup plan are what the production profile
            // adds. Without the acknowledgements these are the NIST findings, on the database (and the VPC's default group).
            var s = _stacks.Default;
            var template = Load(s);
            foreach (var id in new[] { s.Id(s.Stack.Database.Instance), s.Id(s.Stack.Network.Vpc) })
            {
                var rules = template["Resources"]![id]!["Metadata"]!["cdk_nag"]!["rules_to_suppress"]!.AsArray();
                foreach (var r in rules.Where(r => r!["id"]!.GetValue<string>().StartsWith("NIST.", StringComparison.Ordinal)).ToArray()) rules.Remove(r);
                if (rules.Count == 0) ((JsonObject)template["Resources"]![id]!["Metadata"]!).Remove("cdk_nag");
            }
            var result = Check(Write("default-no-nist-ack", template.ToJsonString()), NagChecker.Nist80053R5);
            Assert.Equal(1, result.ExitCode);
            var db = " on " + s.Id(s.Stack.Database.Instance);
            Assert.Equal(new[]
            {
                "NIST.800.53.R5-RDSEnhancedMonitoringEnabled" + db,
                "NIST.800.53.R5-RDSInBackupPlan" + db,
                "NIST.800.53.R5-RDSMultiAZSupport" + db,
                "NIST.800.53.R5-VPCDefaultSecurityGroupClosed on " + s.Id(s.Stack.Network.Vpc),
            }, result.Findings);
        }

        [Fact]
        public void Nat_variant_acknowledges_only_the_nat_gateways_route_to_the_internet_gateway()
        {
            var s = _stacks.Nat;
            var result = Check(s.TemplatePath, NagChecker.Nist80053R5);
            Assert.True(result.ExitCode == 0, result.Output);
            Assert.Equal(2, s.Stack.Network.Vpc.PublicSubnets.Length);
            var routes = s.Stack.Network.Vpc.PublicSubnets
                .Select(sub => "NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW on " + s.Id((Amazon.CDK.CfnElement)sub.Node.FindChild("DefaultRoute")));
            var db = " on " + s.Id(s.Stack.Database.Instance);
            var expected = routes.Concat(new[]
            {
                "NIST.800.53.R5-RDSEnhancedMonitoringEnabled" + db,
                "NIST.800.53.R5-RDSInBackupPlan" + db,
                "NIST.800.53.R5-RDSMultiAZSupport" + db,
                "NIST.800.53.R5-VPCDefaultSecurityGroupClosed on " + s.Id(s.Stack.Network.Vpc),
            }).OrderBy(x => x, StringComparer.Ordinal).ToArray();
            Assert.Equal(expected, result.Acknowledged);
        }

        [Fact]
        public void One_pack_can_be_checked_alone_and_the_other_packs_acknowledgements_are_left_alone()
        {
            var s = _stacks.Default;
            var aws = Check(s.TemplatePath, NagChecker.AwsSolutions);
            Assert.True(aws.ExitCode == 0, aws.Output);
            Assert.Equal(new[] { NagChecker.AwsSolutions }, aws.Packs);
            Assert.Equal(0, aws.CompliantChecks(NagChecker.Nist80053R5));
            Assert.All(aws.Acknowledged, a => Assert.StartsWith("AwsSolutions-", a, StringComparison.Ordinal));
            Assert.Equal(10, aws.Acknowledged.Length);

            var nist = Check(s.TemplatePath, NagChecker.Nist80053R5);
            Assert.True(nist.ExitCode == 0, nist.Output);
            Assert.Equal(new[] { NagChecker.Nist80053R5 }, nist.Packs);
            Assert.Equal(0, nist.CompliantChecks(NagChecker.AwsSolutions));
            Assert.All(nist.Acknowledged, a => Assert.StartsWith("NIST.800.53.R5-", a, StringComparison.Ordinal));
            Assert.Equal(4, nist.Acknowledged.Length);
        }

        [Fact]
        public void An_acknowledgement_for_an_unknown_pack_fails_the_check()
        {
            var s = _stacks.Default;
            var template = Load(s);
            var instance = s.Id(s.Stack.Bastion.Instance);
            template["Resources"]![instance]!["Metadata"]!["cdk_nag"]!["rules_to_suppress"]!.AsArray().Add(JsonNode.Parse("""
                {"id": "NIST.800.53.R9-EC2IMDSv2Enabled", "reason": "A pack this check does not run, so nothing would ever match it."}
                """));
            var result = Check(Write("unknown-pack", template.ToJsonString()));
            Assert.Equal(1, result.ExitCode);
            Assert.Contains(result.Problems, p => p.Contains(instance, StringComparison.Ordinal) && p.Contains("no known pack", StringComparison.Ordinal));
        }

        [Fact]
        public void Default_template_has_exactly_the_acknowledgements_written_in_the_code_in_both_packs()
        {
            var s = _stacks.Default;
            var result = Check(s.TemplatePath);
            Assert.Equal(0, result.ExitCode);
            string On(Constructs.IConstruct c) => " on " + s.Id(c);
            var expected = new[]
            {
                "AwsSolutions-EC29" + On(s.Stack.Bastion.Instance),
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]" + On(s.Stack.Bastion.Role),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:*]" + On(s.Stack.Bastion.Policy),
                "AwsSolutions-IAM5[Resource::*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:db:*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:cluster:*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/<aws:username>-*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-RDS11" + On(s.Stack.Database.Instance),
                "AwsSolutions-RDS3" + On(s.Stack.Database.Instance),
                "NIST.800.53.R5-RDSEnhancedMonitoringEnabled" + On(s.Stack.Database.Instance),
                "NIST.800.53.R5-RDSInBackupPlan" + On(s.Stack.Database.Instance),
                "NIST.800.53.R5-RDSMultiAZSupport" + On(s.Stack.Database.Instance),
                "NIST.800.53.R5-VPCDefaultSecurityGroupClosed" + On(s.Stack.Network.Vpc),
            }.OrderBy(x => x, StringComparer.Ordinal).ToArray();
            Assert.Equal(expected, result.Acknowledged);
        }

        [Fact]
        public void Multi_az_on_a_custom_port_needs_no_rds_acknowledgement()
        {
            var result = Check(_stacks.Shell.TemplatePath);
            Assert.Equal(0, result.ExitCode);
            Assert.DoesNotContain(result.Acknowledged, a => a.StartsWith("AwsSolutions-RDS", StringComparison.Ordinal));
        }

        [Fact]
        public void A_security_group_open_to_the_world_fails_the_check()
        {
            var path = Write("open-sg", """
                {
                  "Resources": {
                    "Vpc": { "Type": "AWS::EC2::VPC", "Properties": { "CidrBlock": "10.0.0.0/16" } },
                    "OpenSecurityGroup": {
                      "Type": "AWS::EC2::SecurityGroup",
                      "Properties": {
                        "GroupDescription": "ssh from anywhere",
                        "VpcId": { "Ref": "Vpc" },
                        "SecurityGroupIngress": [ { "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0" } ]
                      }
                    }
                  }
                }
                """);
            var result = Check(path);
            Assert.Equal(1, result.ExitCode);
            Assert.Contains("AwsSolutions-EC23", result.FindingRuleIds);
            Assert.Contains("FAIL", result.Output);
        }

        [Fact]
        public void Removing_an_acknowledgement_from_the_metadata_brings_its_finding_back()
        {
            var s = _stacks.Default;
            var template = Load(s);
            var instance = s.Id(s.Stack.Bastion.Instance);
            ((JsonObject)template["Resources"]![instance]!["Metadata"]!).Remove("cdk_nag");
            var result = Check(Write("no-ack", template.ToJsonString()));
            Assert.Equal(1, result.ExitCode);
            Assert.Equal(new[] { "AwsSolutions-EC29" }, result.FindingRuleIds);
        }

        [Theory]
        [InlineData("")]
        [InlineData("it is fine, trust me")]
        public void An_acknowledgement_without_a_real_reason_fails_the_check(string reason)
        {
            var s = _stacks.Default;
            var template = Load(s);
            var instance = s.Id(s.Stack.Bastion.Instance);
            template["Resources"]![instance]!["Metadata"]!["cdk_nag"]!["rules_to_suppress"]![0]!["reason"] = reason;
            var result = Check(Write("short-reason", template.ToJsonString()));
            Assert.Equal(1, result.ExitCode);
            Assert.Contains(result.Problems, p => p.Contains(instance, StringComparison.Ordinal) && p.Contains("reason", StringComparison.Ordinal));
        }

        [Fact]
        public void A_stale_acknowledgement_fails_the_check()
        {
            var s = _stacks.Default;
            var template = Load(s);
            var sg = s.Id(s.Stack.Bastion.SecurityGroup);
            var resource = (JsonObject)template["Resources"]![sg]!;
            if (resource["Metadata"] is not JsonObject) resource["Metadata"] = new JsonObject();
            resource["Metadata"]!["cdk_nag"] = JsonNode.Parse("""
                {"rules_to_suppress": [{"id": "AwsSolutions-EC23", "reason": "Nothing here is open to the world, so this acknowledges nothing at all."}]}
                """);
            var result = Check(Write("stale", template.ToJsonString()));
            Assert.Equal(1, result.ExitCode);
            Assert.Contains(result.Problems, p => p.Contains(sg, StringComparison.Ordinal) && p.Contains("stale", StringComparison.Ordinal));
        }

        private static JsonNode Load(Synthesized s) => JsonNode.Parse(File.ReadAllText(s.TemplatePath))!;

        private static string Write(string name, string json)
        {
            var dir = Path.Combine(Synthesized.RunDirectory, "nag");
            Directory.CreateDirectory(dir);
            var path = Path.Combine(dir, name + "-" + Guid.NewGuid().ToString("n")[..8] + ".template.json");
            File.WriteAllText(path, json);
            return path;
        }
    }
}
