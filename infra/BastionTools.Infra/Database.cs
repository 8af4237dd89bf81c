using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using Amazon.CDK;
using Amazon.CDK.AWS.EC2;
using Amazon.CDK.AWS.IAM;
using Amazon.CDK.AWS.KMS;
using Amazon.CDK.AWS.Logs;
using Amazon.CDK.AWS.RDS;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// RDS PostgreSQL: IAM authentication, isolated subnets, encrypted storage, rds.force_ssl=1, ingress on the port
    /// only from the bastion's security group, deletion protection, automated backups, log exports to pre-created
    /// encrypted log groups with retention, and a master password RDS keeps (and rotates) in Secrets Manager.
    /// </summary>
    public sealed class Database : Construct
    {
        public static readonly string[] LogExports = { "postgresql", "upgrade" };

        public Database(Construct scope, string id, BastionSettings settings, Network network, Bastion bastion, IKey logsKey) : base(scope, id)
        {
            SecurityGroup = new SecurityGroup(this, "SecurityGroup", new SecurityGroupProps
            {
                Vpc = network.Vpc,
                Description = "BastionTools database: PostgreSQL from the bastion security group only",
                AllowAllOutbound = false,
            });
            // An ingress rule on this group whose source is the bastion's group, and the matching egress on the bastion's.
            SecurityGroup.Connections.AllowFrom(bastion.SecurityGroup, Port.Tcp(settings.DbPort), "PostgreSQL from the bastion");

            var subnetIds = network.Vpc.SelectSubnets(network.DatabaseSubnets).SubnetIds;
            SubnetGroup = new CfnDBSubnetGroup(this, "SubnetGroup", new CfnDBSubnetGroupProps
            {
                DbSubnetGroupDescription = "BastionTools database: isolated subnets",
                SubnetIds = subnetIds,
            });

            ParameterGroup = new CfnDBParameterGroup(this, "ParameterGroup", new CfnDBParameterGroupProps
            {
                Family = settings.ParameterGroupFamily,
                Description = "BastionTools: TLS required, connections logged",
                Parameters = new Dictionary<string, object>
                {
                    ["rds.force_ssl"] = "1",
                    ["log_connections"] = "1",
                    ["log_disconnections"] = "1",
                },
            });

            if (settings.MonitoringIntervalSeconds > 0)
            {
                // Enhanced monitoring: RDS's agent publishes OS metrics to CloudWatch Logs (RDSOSMetrics) with this role.
                MonitoringRole = new Role(this, "MonitoringRole", new RoleProps
                {
                    Description = "BastionTools database: RDS enhanced monitoring publishes OS metrics to CloudWatch Logs",
                    // Only RDS acting for this account may assume it (confused-deputy protection).
                    AssumedBy = new ServicePrincipal("monitoring.rds.amazonaws.com").WithConditions(new Dictionary<string, object>
                    {
                        ["StringEquals"] = new Dictionary<string, object> { ["aws:SourceAccount"] = Aws.ACCOUNT_ID },
                    }),
                    ManagedPolicies = new[] { ManagedPolicy.FromAwsManagedPolicyName("service-role/AmazonRDSEnhancedMonitoringRole") },
                });
                NagAcknowledgements.Acknowledge(MonitoringRole, "AwsSolutions-IAM4",
                    "AmazonRDSEnhancedMonitoringRole is the AWS-maintained policy RDS documents for enhanced monitoring (the RDSOSMetrics log group RDS creates and writes); the role is assumable only by monitoring.rds.amazonaws.com for this account, and a copy would drift from what the RDS agent needs.",
                    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole");
            }

            Instance = new CfnDBInstance(this, "Instance", new CfnDBInstanceProps
            {
                DbInstanceIdentifier = settings.DbInstanceIdentifier,
                Engine = "postgres",
                EngineVersion = settings.PostgresVersion,
                AutoMinorVersionUpgrade = true,
                DbInstanceClass = settings.DbInstanceClass,
                AllocatedStorage = settings.AllocatedStorageGiB.ToString(CultureInfo.InvariantCulture),
                StorageType = "gp3",
                StorageEncrypted = true,
                DbName = settings.DatabaseName,
                Port = settings.DbPort.ToString(CultureInfo.InvariantCulture),
                MasterUsername = settings.MasterUserName,
                ManageMasterUserPassword = true,
                EnableIamDatabaseAuthentication = true,
                PubliclyAccessible = false,
                MultiAz = settings.MultiAz,
                DbSubnetGroupName = SubnetGroup.Ref,
                VpcSecurityGroups = new[] { SecurityGroup.SecurityGroupId },
                DbParameterGroupName = ParameterGroup.Ref,
                DeletionProtection = true,
                BackupRetentionPeriod = settings.BackupRetentionDays,
                CopyTagsToSnapshot = true,
                EnableCloudwatchLogsExports = LogExports,
                MonitoringInterval = settings.MonitoringIntervalSeconds,
                MonitoringRoleArn = MonitoringRole?.RoleArn,
            });
            Instance.ApplyRemovalPolicy(RemovalPolicy.SNAPSHOT);

            // RDS writes its exports to /aws/rds/instance/<id>/<log>; created first, they get retention and the key.
            LogGroups = LogExports.Select(log =>
            {
                var group = new LogGroup(this, "LogGroup-" + log, new LogGroupProps
                {
                    LogGroupName = $"/aws/rds/instance/{settings.DbInstanceIdentifier}/{log}",
                    EncryptionKey = logsKey,
                    RemovalPolicy = RemovalPolicy.RETAIN,
                });
                ((CfnLogGroup)group.Node.DefaultChild!).RetentionInDays = settings.LogRetentionDays;
                Instance.AddDependency((CfnResource)group.Node.DefaultChild!);
                return group;
            }).ToArray();

            if (!settings.MultiAz)
            {
                NagAcknowledgements.Acknowledge(Instance, "AwsSolutions-RDS3",
                    "Single-AZ by the multiAz=false setting (the default, for cost); automated backups and a final snapshot protect the data. Deploy with -c multiAz=true where a standby is required.");
            }
            if (!settings.MultiAz)
            {
                NagAcknowledgements.Acknowledge(Instance, "NIST.800.53.R5-RDSMultiAZSupport",
                    "Single-AZ by the multiAz=false setting (the default profile, for cost: a standby doubles the instance price); automated backups and a final snapshot protect the data. profile=production (or -c multiAz=true) deploys a Multi-AZ standby.");
            }
            if (settings.MonitoringIntervalSeconds == 0)
            {
                NagAcknowledgements.Acknowledge(Instance, "NIST.800.53.R5-RDSEnhancedMonitoringEnabled",
                    "Enhanced monitoring is off in the default profile (monitoringInterval=0: no RDSOSMetrics ingestion cost); basic CloudWatch metrics and the exported postgresql logs remain. profile=production (or -c monitoringInterval=60) turns it on.");
            }
            if (!settings.BackupPlan)
            {
                NagAcknowledgements.Acknowledge(Instance, "NIST.800.53.R5-RDSInBackupPlan",
                    "No AWS Backup plan in the default profile (backupPlan=false, for cost): RDS automated backups (backupRetentionDays) with point-in-time recovery and a final snapshot on delete protect the data. profile=production (or -c backupPlan=true) adds a plan with its own encrypted vault.");
            }
            if (settings.DbPort == 5432)
            {
                NagAcknowledgements.Acknowledge(Instance, "AwsSolutions-RDS11",
                    "The database is in isolated subnets and admits only the bastion's security group, so an unusual port hides nothing; 5432 is what the BastionTools cmdlets and psql expect (dbPort changes it).");
            }
        }

        public SecurityGroup SecurityGroup { get; }
        public CfnDBSubnetGroup SubnetGroup { get; }
        public CfnDBParameterGroup ParameterGroup { get; }
        public CfnDBInstance Instance { get; }

        /// <summary>The enhanced monitoring role; null when <see cref="BastionSettings.MonitoringIntervalSeconds"/> is 0.</summary>
        public Role? MonitoringRole { get; }
        public LogGroup[] LogGroups { get; }
    }
}
