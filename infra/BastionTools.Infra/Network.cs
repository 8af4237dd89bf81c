using System.Linq;
using Amazon.CDK;
using Amazon.CDK.AWS.EC2;
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
                        new SubnetConfiguration { Name = PublicSubnetGroup, SubnetType = SubnetType.PUBLIC, CidrMask = 26 },
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
            Vpc.AddFlowLog("FlowLog", new FlowLogOptions
            {
                Destination = FlowLogDestination.ToCloudWatchLogs(FlowLogGroup),
                TrafficType = FlowLogTrafficType.ALL,
            });

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
        public SubnetSelection BastionSubnets { get; }
        public SubnetSelection DatabaseSubnets { get; }

        /// <summary>The endpoints' security group; null with NAT.</summary>
        public SecurityGroup? EndpointSecurityGroup { get; }
    }
}
