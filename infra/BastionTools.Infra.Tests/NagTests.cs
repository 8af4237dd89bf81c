using System;
using System.IO;
using System.Linq;
using System.Text.Json.Nodes;
using Xunit;
using Xunit.Abstractions;

namespace BastionTools.Infra.Tests
{
    /// <summary>
    /// cdk-nag's AwsSolutions pack (infra/nag/check.mjs) on the real templates, and proof that the check can fail:
    /// an open security group, a removed, reasonless or stale acknowledgement.
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

        private NagResult Check(string templatePath)
        {
            var result = _nag.Check(templatePath);
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
            Assert.True(result.Json.GetProperty("compliant").GetInt32() > 10, "too few rules evaluated: " + result.Output);
        }

        [Fact]
        public void Default_template_has_exactly_the_acknowledgements_written_in_the_code()
        {
            var s = _stacks.Default;
            var result = Check(s.TemplatePath);
            Assert.Equal(0, result.ExitCode);
            string On(Constructs.IConstruct c) => " on " + s.Id(c);
            var expected = new[]
            {
                "AwsSolutions-EC29" + On(s.Stack.Bastion.Instance),
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]" + On(s.Stack.Bastion.Role),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:*]" + On(s.Stack.Bastion.Role),
                "AwsSolutions-IAM5[Resource::*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:db:*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:cluster:*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/<aws:username>-*]" + On(s.Stack.Access.Policy),
                "AwsSolutions-RDS11" + On(s.Stack.Database.Instance),
                "AwsSolutions-RDS3" + On(s.Stack.Database.Instance),
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
