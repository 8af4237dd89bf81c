using System.Collections.Generic;
using Amazon.CDK;
using Amazon.CDK.AWS.EC2;
using Amazon.CDK.AWS.IAM;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// The bastion: Amazon Linux 2023 in a private subnet, no key pair, no inbound rule, IMDSv2 only, encrypted root
    /// volume, detailed monitoring, tagged for Get-BastionInstance. Its role can be a Session Manager node and write
    /// to its own session log group, nothing more.
    /// </summary>
    public sealed class Bastion : Construct
    {
        public Bastion(Construct scope, string id, BastionSettings settings, Network network, SessionLogging logging) : base(scope, id)
        {
            SecurityGroup = new SecurityGroup(this, "SecurityGroup", new SecurityGroupProps
            {
                Vpc = network.Vpc,
                Description = "BastionTools bastion: no inbound rules; outbound only to the endpoints (or HTTPS) and the database",
                AllowAllOutbound = false,
            });
            if (network.EndpointSecurityGroup != null)
            {
                network.EndpointSecurityGroup.Connections.AllowFrom(SecurityGroup, Port.Tcp(443), "HTTPS from the bastion to the Session Manager endpoints");
            }
            else
            {
                // Through the NAT gateway to the public Session Manager and CloudWatch Logs endpoints.
                SecurityGroup.AddEgressRule(Peer.AnyIpv4(), Port.Tcp(443), "HTTPS to the AWS endpoints through the NAT gateway");
            }

            Role = new Role(this, "Role", new RoleProps
            {
                AssumedBy = new ServicePrincipal("ec2.amazonaws.com"),
                Description = "BastionTools bastion: Session Manager node, writes its own session logs",
                ManagedPolicies = new[] { ManagedPolicy.FromAwsManagedPolicyName("AmazonSSMManagedInstanceCore") },
            });
            NagAcknowledgements.Acknowledge(Role, "AwsSolutions-IAM4",
                "AmazonSSMManagedInstanceCore is the AWS-maintained minimum for a Session Manager node (ssm/ssmmessages/ec2messages); a copy would drift from what the agent needs.",
                "Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore");

            var statements = new List<PolicyStatement>
            {
                new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "WriteOwnSessionLogs",
                    Actions = new[] { "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams" },
                    Resources = new[] { logging.LogGroup.LogGroupArn },
                }),
                new PolicyStatement(new PolicyStatementProps
                {
                    // The agent checks the log group's encryption before it streams (cloudWatchEncryptionEnabled).
                    Sid = "CheckSessionLogGroupEncryption",
                    Actions = new[] { "logs:DescribeLogGroups" },
                    Resources = new[] { Arns.Regional("logs", "log-group:*") },
                }),
            };
            if (logging.SessionDataKey != null)
            {
                // The agent decrypts each session's data key (blockcipher.go UpdateEncryptionKey → kms:Decrypt).
                statements.Add(new PolicyStatement(new PolicyStatementProps
                {
                    Sid = "DecryptSessionData",
                    Actions = new[] { "kms:Decrypt" },
                    Resources = new[] { logging.SessionDataKey.KeyArn },
                }));
            }
            // A customer-managed policy rather than an inline one (NIST 800-53 rev 5 IAMNoInlinePolicy: a managed
            // policy is a resource of its own, versioned, and visible to IAM Access Analyzer and policy reviews).
            Policy = new ManagedPolicy(this, "Policy", new ManagedPolicyProps
            {
                Description = "BastionTools bastion: write its own session logs" + (logging.SessionDataKey != null ? ", decrypt session data keys" : ""),
                Statements = statements.ToArray(),
                Roles = new IRole[] { Role },
            });
            NagAcknowledgements.Acknowledge(Policy, "AwsSolutions-IAM5",
                "logs:DescribeLogGroups has no resource narrower than log-group:* in this account and region; it is read-only and the agent needs it to verify the session log group is encrypted.",
                "Resource::" + Arns.NagRegional("logs", "log-group:*"));

            var instanceType = new InstanceType(settings.InstanceType);
            var arm = instanceType.Architecture == InstanceArchitecture.ARM_64;
            Instance = new Instance_(this, "Instance", new InstanceProps
            {
                Vpc = network.Vpc,
                VpcSubnets = network.BastionSubnets,
                InstanceType = instanceType,
                MachineImage = MachineImage.LatestAmazonLinux2023(new AmazonLinux2023ImageSsmParameterProps
                {
                    CpuType = arm ? AmazonLinuxCpuType.ARM_64 : AmazonLinuxCpuType.X86_64,
                }),
                SecurityGroup = SecurityGroup,
                Role = Role,
                DetailedMonitoring = true,
                BlockDevices = new IBlockDevice[]
                {
                    new BlockDevice
                    {
                        DeviceName = "/dev/xvda",
                        Volume = BlockDeviceVolume.Ebs(8, new EbsDeviceOptions { Encrypted = true, VolumeType = EbsDeviceVolumeType.GP3, DeleteOnTermination = true }),
                    },
                },
            });
            // IMDSv2 only, through a launch template of our own: the one RequireImdsv2 makes has a fixed
            // account-wide name ("InstanceLaunchTemplate"), so two stacks in a region would collide.
            LaunchTemplate = new CfnLaunchTemplate(this, "LaunchTemplate", new CfnLaunchTemplateProps
            {
                LaunchTemplateData = new CfnLaunchTemplate.LaunchTemplateDataProperty
                {
                    MetadataOptions = new CfnLaunchTemplate.MetadataOptionsProperty
                    {
                        HttpEndpoint = "enabled",
                        HttpTokens = "required",
                        HttpPutResponseHopLimit = 1,
                        InstanceMetadataTags = "disabled",
                    },
                },
            });
            var cfnInstance = (CfnInstance)Instance.Node.DefaultChild!;
            cfnInstance.LaunchTemplate = new CfnInstance.LaunchTemplateSpecificationProperty
            {
                LaunchTemplateId = LaunchTemplate.Ref,
                Version = LaunchTemplate.AttrLatestVersionNumber,
            };

            Tags.Of(Instance).Add(BastionSettings.RoleTagKey, BastionSettings.RoleTagValue);
            Tags.Of(Instance).Add("Name", settings.BastionName);
            NagAcknowledgements.Acknowledge(Instance, "AwsSolutions-EC29",
                "The bastion is stateless (no key pair, no data, configuration in this stack): a terminated one is replaced by redeploying, and termination protection would block cdk destroy.");
        }

        public SecurityGroup SecurityGroup { get; }
        public Role Role { get; }

        /// <summary>The bastion's own permissions (customer-managed, attached to <see cref="Role"/>).</summary>
        public ManagedPolicy Policy { get; }
        public Instance_ Instance { get; }
        public CfnLaunchTemplate LaunchTemplate { get; }
    }
}
