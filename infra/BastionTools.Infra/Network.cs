using System.Collections.Generic;
using System.Linq;
using Amazon.CDK;
using Amazon.CDK.AWS.EC2;
using Amazon.CDK.AWS.IAM;
using Amazon.CDK.AWS.KMS;
using Amazon.CDK.AWS.Logs;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// The VPC: isolated subnets for the bastion and the database, VPC flow logs to an encrypted log group, and either
    /// interface endpoints for Session Manager (default: no NAT, no internet) or one NAT gateway (useNat).
    /// </summary>
    public sealed class Network : Construct
    {
        public const string BastionSubnetGroup = "bastion";
        public const string DatabaseSubnetGroup = "database";
        public const string PublicSubnetGroup = "public";

        public Network(Construct scope, string id, BastionSettings settings, IKey logsKey) : base(scope, id)
        {
            Vpc = new Vpc(this, "Vpc", new VpcProps
            {
                IpAddresses = IpAddresses.Cidr(settings.VpcCidr),
                MaxAzs = 2,
                NatGateways = settings.UseNat ? 1 : 0,
                EnableDnsHostnames = true,
                EnableDnsSupport = true,
                // Restricting the default security group takes a Lambda-backed custom resource; nothing here uses it.
                RestrictDefaultSecurityGroup = false,
                SubnetConfiguration = settings.UseNat
                    ? new ISubnetConfiguration[]
                    {
                        // Only the NAT gateway (with its Elastic IP) lives here: nothing gets a public address on launch.
                        new SubnetConfiguration { Name = PublicSubnetGroup, SubnetType = SubnetType.PUBLIC, CidrMask = 26, MapPublicIpOnLaunch = false },
                        new SubnetConfiguration { Name = BastionSubnetGroup, SubnetType = SubnetType.PRIVATE_WITH_EGRESS, CidrMask = 24 },
                        new SubnetConfiguration { Name = DatabaseSubnetGroup, SubnetType = SubnetType.PRIVATE_ISOLATED, CidrMask = 24 },
                    }
                    : new ISubnetConfiguration[]
                    {
                        new SubnetConfiguration { Name = BastionSubnetGroup, SubnetType = SubnetType.PRIVATE_ISOLATED, CidrMask = 24 },
                        new SubnetConfiguration { Name = DatabaseSubnetGroup, SubnetType = SubnetType.PRIVATE_ISOLATED, CidrMask = 24 },
                    },
            });

            FlowLogGroup = new LogGroup(this, "FlowLogGroup", new LogGroupProps
            {
                EncryptionKey = logsKey,
                RemovalPolicy = RemovalPolicy.RETAIN,
            });
            ((CfnLogGroup)FlowLogGroup.Node.DefaultChild!).RetentionInDays = settings.FlowLogRetentionDays;
            // The flow log service's role, with a customer-managed policy (NIST 800-53 rev 5 IAMNoInlinePolicy): CDK's
            // own would get an inline DefaultPolicy, so the destination is handed the role without policy updates.
            FlowLogRole = new Role(this, "FlowLogRole", new RoleProps
            {
                Description = "BastionTools: VPC flow logs delivery to the flow log group",
                // Only flow logs of this account may use the role (confused-deputy protection).
                AssumedBy = new ServicePrincipal("vpc-flow-logs.amazonaws.com").WithConditions(new Dictionary<string, object>
                {
                    ["StringEquals"] = new Dictionary<string, object> { ["aws:SourceAccount"] = Aws.ACCOUNT_ID },
                }),
            });
            FlowLogPolicy = new ManagedPolicy(this, "FlowLogPolicy", new ManagedPolicyProps
            {
                Description = "BastionTools: VPC flow logs write to their own log group only",
                Statements = new[]
                {
                    new PolicyStatement(new PolicyStatementProps
                    {
                        Sid = "WriteFlowLogs",
                        Actions = new[] { "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams" },
                        Resources = new[] { FlowLogGroup.LogGroupArn },
                    }),
                },
                Roles = new IRole[] { FlowLogRole },
            });
            FlowLog = Vpc.AddFlowLog("FlowLog", new FlowLogOptions
            {
                Destination = FlowLogDestination.ToCloudWatchLogs(FlowLogGroup, FlowLogRole.WithoutPolicyUpdates()),
                TrafficType = FlowLogTrafficType.ALL,
            });
            FlowLog.Node.AddDependency(FlowLogPolicy);

            // NIST 800-53 rev 5 VPCDefaultSecurityGroupClosed, in every configuration.
            NagAcknowledgements.Acknowledge(Vpc, "NIST.800.53.R5-VPCDefaultSecurityGroupClosed",
                "Nothing in this stack uses the VPC's default security group: the bastion, the endpoints and the database each have their own group with no rule open to an address range (no inbound at all on the bastion). Emptying the default group takes a Lambda-backed custom resource (restrictDefaultSecurityGroup), i.e. a function, its role and their findings, for a group with no members; the rule also reads the CDK construct tree, which CfnInclude does not reproduce.");

            foreach (var subnet in Vpc.PublicSubnets)
            {
                NagAcknowledgements.Acknowledge(subnet.Node.FindChild("DefaultRoute"), "NIST.800.53.R5-VPCNoUnrestrictedRouteToIGW",
                    "With useNat=true the public subnets hold only the NAT gateway, whose route to the internet gateway is what a NAT needs; no instance is placed there and none gets a public address (MapPublicIpOnLaunch false), and the bastion and database subnets have no route to the internet gateway.");
            }

            // The bastion lives in one subnet (the first AZ); the endpoints it uses sit next to it.
            var bastionAz = Vpc.AvailabilityZones.First();
            BastionSubnets = new SubnetSelection { SubnetGroupName = BastionSubnetGroup, AvailabilityZones = new[] { bastionAz } };
            DatabaseSubnets = new SubnetSelection { SubnetGroupName = DatabaseSubnetGroup };

            if (!settings.UseNat)
            {
                EndpointSecurityGroup = new SecurityGroup(this, "EndpointSecurityGroup", new SecurityGroupProps
                {
                    Vpc = Vpc,
                    Description = "Interface endpoints for Session Manager: HTTPS from the bastion only",
                    AllowAllOutbound = false,
                });
                var services = new (string Name, InterfaceVpcEndpointAwsService Service)[]
                {
                    ("Ssm", InterfaceVpcEndpointAwsService.SSM),
                    ("SsmMessages", InterfaceVpcEndpointAwsService.SSM_MESSAGES),
                    ("Ec2Messages", InterfaceVpcEndpointAwsService.EC2_MESSAGES),
                    ("Logs", InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
                };
                if (settings.SessionDataKms) services = services.Append(("Kms", InterfaceVpcEndpointAwsService.KMS)).ToArray();
                foreach (var (name, service) in services)
                {
                    Vpc.AddInterfaceEndpoint(name + "Endpoint", new InterfaceVpcEndpointOptions
                    {
                        Service = service,
                        Subnets = BastionSubnets,
                        SecurityGroups = new ISecurityGroup[] { EndpointSecurityGroup },
                        Open = false,
                        PrivateDnsEnabled = true,
                    });
                }
            }
        }

        public Vpc Vpc { get; }
        public LogGroup FlowLogGroup { get; }
        public Role FlowLogRole { get; }
        public ManagedPolicy FlowLogPolicy { get; }
        public FlowLog FlowLog { get; }
        public SubnetSelection BastionSubnets { get; }
        public SubnetSelection DatabaseSubnets { get; }

        /// <summary>The endpoints' security group; null with NAT.</summary>
        public SecurityGroup? EndpointSecurityGroup { get; }
    }
}
