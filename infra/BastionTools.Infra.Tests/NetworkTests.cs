using System.Linq;
using System.Text.Json;
using Amazon.CDK.Assertions;
using Xunit;

namespace BastionTools.Infra.Tests
{
    [Collection(InfraCollection.Name)]
    public sealed class NetworkTests
    {
        private readonly Stacks _stacks;

        public NetworkTests(Stacks stacks) => _stacks = stacks;

        [Theory]
        [MemberData(nameof(Stacks.Names), MemberType = typeof(Stacks))]
        public void No_security_group_admits_the_internet(string config)
        {
            var s = _stacks[config];
            var ingress = s.Resources("AWS::EC2::SecurityGroup")
                .SelectMany(r => r.Resource.GetProperty("Properties").TryGetProperty("SecurityGroupIngress", out var i) ? i.EnumerateArray().ToArray() : new JsonElement[0])
                .Concat(s.Resources("AWS::EC2::SecurityGroupIngress").Select(r => r.Resource.GetProperty("Properties")))
                .ToArray();
            Assert.NotEmpty(ingress);
            foreach (var rule in ingress)
            {
                Assert.False(rule.TryGetProperty("CidrIp", out var cidr) && cidr.GetString() == "0.0.0.0/0", "ingress from 0.0.0.0/0: " + rule);
                Assert.False(rule.TryGetProperty("CidrIpv6", out var cidr6) && cidr6.GetString() == "::/0", "ingress from ::/0: " + rule);
                // Every ingress rule here names a source security group, never an address range.
                Assert.True(rule.TryGetProperty("SourceSecurityGroupId", out _), "ingress without a source security group: " + rule);
            }
        }

        [Theory]
        [MemberData(nameof(Stacks.Names), MemberType = typeof(Stacks))]
        public void No_lambda_or_custom_resource_is_needed(string config)
        {
            var types = _stacks[config].Json.GetProperty("Resources").EnumerateObject().Select(r => r.Value.GetProperty("Type").GetString()!).ToArray();
            Assert.Contains("AWS::RDS::DBInstance", types);
            Assert.DoesNotContain(types, t => t.StartsWith("AWS::Lambda::", System.StringComparison.Ordinal)
                || t.StartsWith("Custom::", System.StringComparison.Ordinal) || t == "AWS::CloudFormation::CustomResource");
        }

        [Fact]
        public void Default_network_has_no_internet_path_and_only_isolated_subnets()
        {
            var s = _stacks.Default;
            s.Template.ResourceCountIs("AWS::EC2::NatGateway", 0);
            s.Template.ResourceCountIs("AWS::EC2::InternetGateway", 0);
            s.Template.ResourceCountIs("AWS::EC2::Route", 0);
            s.Template.ResourceCountIs("AWS::EC2::Subnet", 4);
            s.Template.AllResourcesProperties("AWS::EC2::Subnet", new System.Collections.Generic.Dictionary<string, object> { ["MapPublicIpOnLaunch"] = false });
        }

        [Fact]
        public void Default_network_has_the_session_manager_interface_endpoints_next_to_the_bastion()
        {
            var s = _stacks.Default;
            var endpoints = s.Resources("AWS::EC2::VPCEndpoint").Select(e => e.Resource.GetProperty("Properties")).ToArray();
            var services = endpoints.Select(p => Synthesized.Render(p.GetProperty("ServiceName"))).OrderBy(x => x).ToArray();
            // kms: the agent decrypts each encrypted session's data key (session data encryption is on by default).
            Assert.Equal(new[] { "com.amazonaws.eu-west-1.ec2messages", "com.amazonaws.eu-west-1.kms", "com.amazonaws.eu-west-1.logs", "com.amazonaws.eu-west-1.ssm", "com.amazonaws.eu-west-1.ssmmessages" }, services);

            var endpointSg = s.Id(s.Stack.Network.EndpointSecurityGroup!);
            var bastionSubnet = s.Id(s.Stack.Network.Vpc.SelectSubnets(s.Stack.Network.BastionSubnets).Subnets[0].Node.DefaultChild!);
            foreach (var p in endpoints)
            {
                Assert.Equal("Interface", p.GetProperty("VpcEndpointType").GetString());
                Assert.True(p.GetProperty("PrivateDnsEnabled").GetBoolean());
                Assert.Equal("{" + endpointSg + ".GroupId}", Synthesized.Render(p.GetProperty("SecurityGroupIds")[0]));
                Assert.Equal(new[] { "{" + bastionSubnet + "}" }, p.GetProperty("SubnetIds").EnumerateArray().Select(Synthesized.Render).ToArray());
            }

            // The endpoints admit HTTPS from the bastion's security group and nothing else.
            var bastionSg = s.Id(s.Stack.Bastion.SecurityGroup);
            var ingress = s.Resources("AWS::EC2::SecurityGroupIngress").Select(r => r.Resource.GetProperty("Properties"))
                .Where(p => Synthesized.Render(p.GetProperty("GroupId")) == "{" + endpointSg + ".GroupId}").ToArray();
            var rule = Assert.Single(ingress);
            Assert.Equal("{" + bastionSg + ".GroupId}", Synthesized.Render(rule.GetProperty("SourceSecurityGroupId")));
            Assert.Equal(443, rule.GetProperty("FromPort").GetInt32());
            Assert.Equal(443, rule.GetProperty("ToPort").GetInt32());
            Assert.False(s.Properties(endpointSg).TryGetProperty("SecurityGroupIngress", out _));
        }

        [Fact]
        public void Vpc_flow_logs_capture_all_traffic_into_an_encrypted_log_group_with_retention()
        {
            var s = _stacks.Default;
            var vpc = s.Id(s.Stack.Network.Vpc);
            var group = s.Id(s.Stack.Network.FlowLogGroup);
            s.Template.HasResourceProperties("AWS::EC2::FlowLog", Match.ObjectLike(new System.Collections.Generic.Dictionary<string, object>
            {
                ["ResourceId"] = new System.Collections.Generic.Dictionary<string, object> { ["Ref"] = vpc },
                ["ResourceType"] = "VPC",
                ["TrafficType"] = "ALL",
                ["LogDestinationType"] = "cloud-watch-logs",
                ["LogGroupName"] = new System.Collections.Generic.Dictionary<string, object> { ["Ref"] = group },
            }));
            var props = s.Properties(group);
            Assert.Equal(90, props.GetProperty("RetentionInDays").GetInt32());
            Assert.Equal("{" + s.Id(s.Stack.Logging.Key) + ".Arn}", Synthesized.Render(props.GetProperty("KmsKeyId")));
        }

        [Fact]
        public void Flow_log_role_writes_only_to_the_flow_log_group_through_a_customer_managed_policy()
        {
            var s = _stacks.Default;
            var network = s.Stack.Network;
            var roleId = s.Id(network.FlowLogRole);
            var flowLog = s.Resource(s.Id(network.FlowLog));
            Assert.Equal("{" + roleId + ".Arn}", Synthesized.Render(flowLog.GetProperty("Properties").GetProperty("DeliverLogsPermissionArn")));
            // Created after its permissions.
            Assert.Contains(s.Id(network.FlowLogPolicy), flowLog.GetProperty("DependsOn").EnumerateArray().Select(d => d.GetString()));

            var role = s.Properties(roleId);
            Assert.False(role.TryGetProperty("Policies", out _));
            var trust = Assert.Single(Synthesized.Many(role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")));
            Assert.Equal("vpc-flow-logs.amazonaws.com", trust.GetProperty("Principal").GetProperty("Service").GetString());
            Assert.Equal("{AWS::AccountId}", Synthesized.Render(trust.GetProperty("Condition").GetProperty("StringEquals").GetProperty("aws:SourceAccount")));

            var policy = s.Properties(s.Id(network.FlowLogPolicy));
            Assert.Equal(new[] { "{" + roleId + "}" }, policy.GetProperty("Roles").EnumerateArray().Select(Synthesized.Render).ToArray());
            var st = Assert.Single(Synthesized.Many(policy.GetProperty("PolicyDocument").GetProperty("Statement")));
            Assert.Equal(new[] { "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents" },
                Synthesized.Many(st.GetProperty("Action")).Select(a => a.GetString()!).OrderBy(a => a).ToArray());
            Assert.Equal("{" + s.Id(network.FlowLogGroup) + ".Arn}", Synthesized.Render(st.GetProperty("Resource")));
        }

        [Fact]
        public void Nat_variant_has_one_nat_gateway_no_endpoints_and_keeps_the_database_isolated()
        {
            var s = _stacks.Nat;
            s.Template.ResourceCountIs("AWS::EC2::NatGateway", 1);
            s.Template.ResourceCountIs("AWS::EC2::VPCEndpoint", 0);
            // The public subnets hold the NAT gateway (with its Elastic IP) only: nothing there gets a public address on launch.
            var publicSubnets = s.Stack.Network.Vpc.PublicSubnets.Select(sub => s.Id(sub.Node.DefaultChild!)).ToArray();
            Assert.Equal(2, publicSubnets.Length);
            Assert.All(publicSubnets, id => Assert.False(s.Properties(id).GetProperty("MapPublicIpOnLaunch").GetBoolean()));

            // The bastion's subnet routes to the NAT gateway; the database's subnets have no route at all.
            var routes = s.Resources("AWS::EC2::Route").Select(r => r.Resource.GetProperty("Properties")).ToArray();
            var bastionSubnet = s.Stack.Network.Vpc.SelectSubnets(s.Stack.Network.BastionSubnets).Subnets[0];
            var bastionRouteTable = s.Id((Amazon.CDK.CfnElement)bastionSubnet.Node.FindChild("RouteTable"));
            Assert.Contains(routes, r => Synthesized.Render(r.GetProperty("RouteTableId")) == "{" + bastionRouteTable + "}"
                && r.TryGetProperty("NatGatewayId", out _) && r.GetProperty("DestinationCidrBlock").GetString() == "0.0.0.0/0");
            foreach (var dbSubnet in s.Stack.Network.Vpc.SelectSubnets(s.Stack.Network.DatabaseSubnets).Subnets)
            {
                var table = "{" + s.Id((Amazon.CDK.CfnElement)dbSubnet.Node.FindChild("RouteTable")) + "}";
                Assert.DoesNotContain(routes, r => Synthesized.Render(r.GetProperty("RouteTableId")) == table);
            }

            // Without endpoints, the bastion may reach HTTPS anywhere (through the NAT gateway), and still nothing comes in.
            var bastionSg = s.Properties(s.Id(s.Stack.Bastion.SecurityGroup));
            Assert.Contains(bastionSg.GetProperty("SecurityGroupEgress").EnumerateArray(),
                e => e.GetProperty("CidrIp").GetString() == "0.0.0.0/0" && e.GetProperty("FromPort").GetInt32() == 443 && e.GetProperty("ToPort").GetInt32() == 443);
            Assert.False(bastionSg.TryGetProperty("SecurityGroupIngress", out _));
        }

        [Fact]
        public void Kms_endpoint_is_added_when_session_data_is_kms_encrypted()
        {
            var services = _stacks.Shell.Resources("AWS::EC2::VPCEndpoint")
                .Select(e => Synthesized.Render(e.Resource.GetProperty("Properties").GetProperty("ServiceName"))).ToArray();
            Assert.Contains("com.amazonaws.eu-west-1.kms", services);
            Assert.Contains(_stacks.Default.Resources("AWS::EC2::VPCEndpoint"),
                e => Synthesized.Render(e.Resource.GetProperty("Properties").GetProperty("ServiceName")).EndsWith(".kms", System.StringComparison.Ordinal));
            Assert.DoesNotContain(_stacks.Github.Resources("AWS::EC2::VPCEndpoint"),
                e => Synthesized.Render(e.Resource.GetProperty("Properties").GetProperty("ServiceName")).EndsWith(".kms", System.StringComparison.Ordinal));
        }
    }
}
