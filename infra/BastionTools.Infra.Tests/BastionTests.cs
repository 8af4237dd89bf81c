using System.Collections.Generic;
using System.Linq;
using System.Text.Json;
using Amazon.CDK.Assertions;
using Xunit;
using Xunit.Abstractions;

namespace BastionTools.Infra.Tests
{
    [Collection(InfraCollection.Name)]
    public sealed class BastionTests
    {
        private readonly Stacks _stacks;
        private readonly ITestOutputHelper _output;

        public BastionTests(Stacks stacks, ITestOutputHelper output)
        {
            _stacks = stacks;
            _output = output;
        }

        private JsonElement Instance(Synthesized s) => s.Properties(s.Id(s.Stack.Bastion.Instance));

        [Fact]
        public void Bastion_is_amazon_linux_2023_in_a_private_subnet_without_key_pair_or_public_address()
        {
            var s = _stacks.Default;
            _output.WriteLine("synthesis so far: " + _stacks.Timings);
            var instance = Instance(s);
            Assert.False(instance.TryGetProperty("KeyName", out _));
            Assert.False(instance.TryGetProperty("NetworkInterfaces", out _));
            Assert.Equal("t4g.nano", instance.GetProperty("InstanceType").GetString());

            // The image is the latest AL2023 (arm64 for t4g) from the public SSM parameter.
            var imageParameter = instance.GetProperty("ImageId").GetProperty("Ref").GetString()!;
            Assert.Equal("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64",
                s.Json.GetProperty("Parameters").GetProperty(imageParameter).GetProperty("Default").GetString());

            var bastionSubnet = s.Stack.Network.Vpc.SelectSubnets(s.Stack.Network.BastionSubnets).Subnets[0];
            Assert.Equal("{" + s.Id(bastionSubnet.Node.DefaultChild!) + "}", Synthesized.Render(instance.GetProperty("SubnetId")));
            Assert.Contains(s.Stack.Network.Vpc.IsolatedSubnets, sub => sub.SubnetId == bastionSubnet.SubnetId);
        }

        [Fact]
        public void Bastion_requires_imdsv2_through_its_launch_template()
        {
            var s = _stacks.Default;
            var template = s.Id(s.Stack.Bastion.LaunchTemplate);
            s.Template.HasResourceProperties("AWS::EC2::LaunchTemplate", new Dictionary<string, object>
            {
                ["LaunchTemplateData"] = new Dictionary<string, object>
                {
                    ["MetadataOptions"] = new Dictionary<string, object>
                    {
                        ["HttpEndpoint"] = "enabled",
                        ["HttpTokens"] = "required",
                        ["HttpPutResponseHopLimit"] = 1,
                        ["InstanceMetadataTags"] = "disabled",
                    },
                },
            });
            var spec = Instance(s).GetProperty("LaunchTemplate");
            Assert.Equal("{" + template + "}", Synthesized.Render(spec.GetProperty("LaunchTemplateId")));
            Assert.Equal("{" + template + ".LatestVersionNumber}", Synthesized.Render(spec.GetProperty("Version")));
            // No account-wide fixed launch template name (two stacks in one region must not collide).
            Assert.False(s.Properties(template).TryGetProperty("LaunchTemplateName", out _));
        }

        [Fact]
        public void Bastion_has_an_encrypted_root_volume_and_detailed_monitoring()
        {
            var instance = Instance(_stacks.Default);
            Assert.True(instance.GetProperty("Monitoring").GetBoolean());
            var root = Assert.Single(instance.GetProperty("BlockDeviceMappings").EnumerateArray());
            Assert.Equal("/dev/xvda", root.GetProperty("DeviceName").GetString());
            Assert.True(root.GetProperty("Ebs").GetProperty("Encrypted").GetBoolean());
            Assert.Equal("gp3", root.GetProperty("Ebs").GetProperty("VolumeType").GetString());
        }

        [Fact]
        public void Bastion_carries_the_tag_get_bastioninstance_finds_by_default()
        {
            var tags = Instance(_stacks.Default).GetProperty("Tags").EnumerateArray()
                .ToDictionary(t => t.GetProperty("Key").GetString()!, t => t.GetProperty("Value").GetString());
            Assert.Equal("bastion", tags["bastiontools:role"]);
            Assert.Equal("bastion", tags["Name"]);
        }

        [Fact]
        public void Bastion_security_group_has_no_inbound_rule_and_only_the_outbound_rules_it_needs()
        {
            var s = _stacks.Default;
            var sg = s.Id(s.Stack.Bastion.SecurityGroup);
            var props = s.Properties(sg);
            Assert.False(props.TryGetProperty("SecurityGroupIngress", out _));
            Assert.DoesNotContain(s.Resources("AWS::EC2::SecurityGroupIngress"),
                r => Synthesized.Render(r.Resource.GetProperty("Properties").GetProperty("GroupId")) == "{" + sg + ".GroupId}");
            // CDK's placeholder "disallow all" egress is gone because real rules exist; there is no allow-all egress.
            Assert.False(props.TryGetProperty("SecurityGroupEgress", out _));

            var egress = s.Resources("AWS::EC2::SecurityGroupEgress").Select(r => r.Resource.GetProperty("Properties"))
                .Where(p => Synthesized.Render(p.GetProperty("GroupId")) == "{" + sg + ".GroupId}")
                .Select(p => $"{Synthesized.Render(p.GetProperty("DestinationSecurityGroupId"))}:{p.GetProperty("FromPort").GetInt32()}-{p.GetProperty("ToPort").GetInt32()}")
                .OrderBy(x => x).ToArray();
            var expected = new[]
            {
                "{" + s.Id(s.Stack.Network.EndpointSecurityGroup!) + ".GroupId}:443-443",
                "{" + s.Id(s.Stack.Database.SecurityGroup) + ".GroupId}:5432-5432",
            }.OrderBy(x => x).ToArray();
            Assert.Equal(expected, egress);
        }

        [Fact]
        public void Instance_role_is_a_session_manager_node_that_writes_only_its_own_session_logs()
        {
            var s = _stacks.Default;
            var role = s.Properties(s.Id(s.Stack.Bastion.Role));
            var managed = role.GetProperty("ManagedPolicyArns").EnumerateArray().Select(Synthesized.Render).ToArray();
            Assert.Equal(new[] { "arn:{AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore" }, managed);
            Assert.Equal("ec2.amazonaws.com", role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")[0].GetProperty("Principal").GetProperty("Service").GetString());

            // The bastion's own permissions are a customer-managed policy attached to the role, not inline ones.
            Assert.False(role.TryGetProperty("Policies", out _));
            var policy = s.Properties(s.Id(s.Stack.Bastion.Policy));
            Assert.Equal(new[] { "{" + s.Id(s.Stack.Bastion.Role) + "}" }, policy.GetProperty("Roles").EnumerateArray().Select(Synthesized.Render).ToArray());
            var statements = Synthesized.Many(policy.GetProperty("PolicyDocument").GetProperty("Statement")).ToArray();
            var write = Assert.Single(statements, st => st.GetProperty("Sid").GetString() == "WriteOwnSessionLogs");
            Assert.Equal(new[] { "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents" },
                Synthesized.Many(write.GetProperty("Action")).Select(a => a.GetString()!).OrderBy(a => a).ToArray());
            Assert.Equal("{" + s.Id(s.Stack.Logging.LogGroup) + ".Arn}", Synthesized.Render(write.GetProperty("Resource")));
            var describe = Assert.Single(statements, st => st.GetProperty("Sid").GetString() == "CheckSessionLogGroupEncryption");
            Assert.Equal("logs:DescribeLogGroups", describe.GetProperty("Action").GetString());
            // And kms:Decrypt on the session-data key (on by default; see Session_data_kms_lets_the_bastion_decrypt_with_the_key).
            Assert.Single(statements, st => st.GetProperty("Sid").GetString() == "DecryptSessionData");
            Assert.Equal(3, statements.Length);
            // No other policy is attached to the role anywhere in the template.
            var roleRef = "{" + s.Id(s.Stack.Bastion.Role) + "}";
            Assert.Equal(new[] { s.Id(s.Stack.Bastion.Policy) }, s.Resources("AWS::IAM::ManagedPolicy")
                .Where(p => p.Resource.GetProperty("Properties").TryGetProperty("Roles", out var roles) && roles.EnumerateArray().Any(r => Synthesized.Render(r) == roleRef))
                .Select(p => p.Id).ToArray());
        }

        [Theory]
        [MemberData(nameof(Stacks.Names), MemberType = typeof(Stacks))]
        public void No_role_has_an_inline_policy(string config)
        {
            // NIST 800-53 rev 5 IAMNoInlinePolicy: neither AWS::IAM::Policy resources nor a role's Policies property.
            var s = _stacks[config];
            s.Template.ResourceCountIs("AWS::IAM::Policy", 0);
            Assert.All(s.Resources("AWS::IAM::Role"), r => Assert.False(r.Resource.GetProperty("Properties").TryGetProperty("Policies", out _), r.Id + " has inline policies"));
            Assert.NotEmpty(s.Resources("AWS::IAM::Role"));
        }

        [Theory]
        [MemberData(nameof(Stacks.Names), MemberType = typeof(Stacks))]
        public void Nothing_grants_cloudwatch_logs_full_access_or_logs_star(string config)
        {
            var s = _stacks[config];
            Assert.DoesNotContain("CloudWatchLogsFullAccess", s.Json.GetRawText());
            foreach (var (id, st) in s.PolicyStatements())
            {
                if (!st.TryGetProperty("Action", out var actions)) continue;
                foreach (var a in Synthesized.Many(actions))
                {
                    Assert.False(a.GetString() is "logs:*" or "*", $"{id} allows {a.GetString()}");
                }
            }
        }

        [Fact]
        public void Session_data_kms_lets_the_bastion_decrypt_with_the_key()
        {
            var s = _stacks.Shell;
            var st = Synthesized.Many(s.Properties(s.Id(s.Stack.Bastion.Policy)).GetProperty("PolicyDocument").GetProperty("Statement"))
                .Single(x => x.GetProperty("Sid").GetString() == "DecryptSessionData");
            Assert.Equal("kms:Decrypt", st.GetProperty("Action").GetString());
            Assert.Equal("{" + s.Id(s.Stack.Logging.SessionDataKey!) + ".Arn}", Synthesized.Render(st.GetProperty("Resource")));
            // Off: no such permission.
            var off = _stacks.Github;
            Assert.DoesNotContain(Synthesized.Many(off.Properties(off.Id(off.Stack.Bastion.Policy)).GetProperty("PolicyDocument").GetProperty("Statement")),
                x => x.GetProperty("Sid").GetString() == "DecryptSessionData");
        }
    }
}
