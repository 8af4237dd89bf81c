using System.Collections.Generic;
using Amazon.CDK;
using Amazon.CDK.AWS.Backup;
using Amazon.CDK.AWS.IAM;
using Amazon.CDK.AWS.KMS;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// An AWS Backup plan for the database (<see cref="BastionSettings.BackupPlan"/>, on in the production profile): a
    /// vault of its own encrypted with a customer-managed key (rotation on), a daily rule kept
    /// <see cref="BastionSettings.BackupPlanRetentionDays"/> days, and a selection of the database instance, run by a
    /// role AWS Backup assumes. Recovery points outlive the instance and its automated backups (a deleted instance's
    /// automated backups go with it unless retained), and live in a vault whose key and policy this stack controls.
    /// </summary>
    public sealed class Backup : Construct
    {
        public Backup(Construct scope, string id, BastionSettings settings, Database database) : base(scope, id)
        {
            Key = new Key(this, "VaultKey", new KeyProps
            {
                Description = "BastionTools: AWS Backup vault encryption",
                EnableKeyRotation = true,
                RemovalPolicy = RemovalPolicy.RETAIN,
            });

            Vault = new CfnBackupVault(this, "Vault", new CfnBackupVaultProps
            {
                // 2 to 50 letters, digits, hyphens, underscores; unique per account and region.
                BackupVaultName = VaultName(settings.DbInstanceIdentifier),
                EncryptionKeyArn = Key.KeyArn,
            });
            // A vault holding recovery points cannot be deleted; keeping it keeps them.
            Vault.ApplyRemovalPolicy(RemovalPolicy.RETAIN);

            Plan = new CfnBackupPlan(this, "Plan", new CfnBackupPlanProps
            {
                BackupPlan = new CfnBackupPlan.BackupPlanResourceTypeProperty
                {
                    BackupPlanName = settings.DbInstanceIdentifier + "-daily",
                    BackupPlanRule = new object[]
                    {
                        new CfnBackupPlan.BackupRuleResourceTypeProperty
                        {
                            RuleName = "Daily",
                            TargetBackupVault = Vault.AttrBackupVaultName,
                            // 03:00 UTC, outside the usual working day; RDS's own backup window is separate.
                            ScheduleExpression = "cron(0 3 * * ? *)",
                            StartWindowMinutes = 60,
                            CompletionWindowMinutes = 480,
                            Lifecycle = new CfnBackupPlan.LifecycleResourceTypeProperty { DeleteAfterDays = settings.BackupPlanRetentionDays },
                        },
                    },
                },
            });

            Role = new Role(this, "Role", new RoleProps
            {
                Description = "BastionTools: AWS Backup takes the database's recovery points",
                AssumedBy = new ServicePrincipal("backup.amazonaws.com"),
                ManagedPolicies = new[] { ManagedPolicy.FromAwsManagedPolicyName("service-role/AWSBackupServiceRolePolicyForBackup") },
            });
            NagAcknowledgements.Acknowledge(Role, "AwsSolutions-IAM4",
                "AWSBackupServiceRolePolicyForBackup is the AWS-maintained policy AWS Backup documents for taking backups of the services it supports; the role is assumable only by backup.amazonaws.com and selected for this database only, and a copy would drift as AWS Backup changes.",
                "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup");

            Selection = new CfnBackupSelection(this, "Selection", new CfnBackupSelectionProps
            {
                BackupPlanId = Plan.AttrBackupPlanId,
                BackupSelection = new CfnBackupSelection.BackupSelectionResourceTypeProperty
                {
                    SelectionName = "Database",
                    IamRoleArn = Role.RoleArn,
                    // The instance's ARN (its Ref is the DB instance identifier).
                    Resources = new[] { Arns.Regional("rds", "db:" + database.Instance.Ref) },
                },
            });
        }

        public Key Key { get; }
        public CfnBackupVault Vault { get; }
        public CfnBackupPlan Plan { get; }
        public Role Role { get; }
        public CfnBackupSelection Selection { get; }

        internal static string VaultName(string dbInstanceIdentifier)
        {
            var name = dbInstanceIdentifier + "-backup";
            return name.Length <= 50 ? name : name.Substring(0, 50);
        }
    }
}
