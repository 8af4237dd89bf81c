using Amazon.CDK;
using Constructs;

namespace BastionTools.Infra
{
    public sealed class BastionStackProps : StackProps
    {
        public BastionSettings Settings { get; init; } = new BastionSettings();
    }

    /// <summary>
    /// The whole BastionTools architecture. Its outputs are named after the cmdlet parameters they feed.
    /// </summary>
    public sealed class BastionStack : Stack
    {
        public BastionStack(Construct scope, string id, BastionStackProps props) : base(scope, id, props)
        {
            var settings = props.Settings;
            settings.Validate();
            Settings = settings;

            Logging = new SessionLogging(this, "SessionLogging", settings);
            Network = new Network(this, "Network", settings, Logging.Key);
            Bastion = new Bastion(this, "Bastion", settings, Network, Logging);
            Database = new Database(this, "Postgres", settings, Network, Bastion, Logging.Key);
            Access = new OperatorAccess(this, "OperatorAccess", settings, Bastion, Database, Logging);
            if (settings.BackupPlan) Backup = new Backup(this, "Backup", settings, Database);

            Output("Target", Bastion.Instance.InstanceId, "Bastion instance id: -Target of Start-BastionSession, Grant-RdsIamUser, Connect-IamPostgres");
            Output("BastionTag", $"{BastionSettings.RoleTagKey}={BastionSettings.RoleTagValue}", "The tag Get-BastionInstance finds by default (-Tag @{ 'bastiontools:role' = 'bastion' })");
            Output("BastionName", settings.BastionName, "The bastion's Name tag: -Name");
            Output("DbHost", Database.Instance.AttrEndpointAddress, "Database endpoint: -DbHost (Grant-RdsIamUser, Connect-IamPostgres), -RemoteHost (Start-BastionSession)");
            Output("DbPort", Database.Instance.AttrEndpointPort, "Database port: -DbPort, -RemotePort");
            Output("Database", settings.DatabaseName, "Database name: -Database");
            Output("DbiResourceId", Database.Instance.AttrDbiResourceId, "-DbiResourceId of Grant-RdsIamUser");
            Output("AccountId", Aws.ACCOUNT_ID, "-AccountId of Grant-RdsIamUser");
            Output("MasterUserName", settings.MasterUserName, "The master user for the one-time Grant-RdsIamUser");
            Output("MasterSecretArn", Database.Instance.AttrMasterUserSecretSecretArn, "Secrets Manager secret with the master password (RDS-managed)");
            Output("SessionLogGroup", Logging.LogGroup.LogGroupName, "CloudWatch log group of Session Manager sessions");
            Output("OperatorPolicyArn", Access.Policy.ManagedPolicyArn, "Managed policy to attach to operators");
            if (Access.OperatorRole != null) Output("OperatorRoleArn", Access.OperatorRole.RoleArn, "Role for the principals in allowedOperatorPrincipals");
            if (Backup != null) Output("BackupVaultName", Backup.Vault.AttrBackupVaultName, "AWS Backup vault with the database's recovery points");
            if (Access.GithubRole != null) Output("GithubRoleArn", Access.GithubRole.RoleArn, "Role for GitHub Actions (aws-actions/configure-aws-credentials role-to-assume)");
        }

        public BastionSettings Settings { get; }
        public SessionLogging Logging { get; }
        public Network Network { get; }
        public Bastion Bastion { get; }
        public Database Database { get; }
        public OperatorAccess Access { get; }

        /// <summary>The AWS Backup plan for the database; null unless <see cref="BastionSettings.BackupPlan"/>.</summary>
        public Backup? Backup { get; }

        private void Output(string id, string value, string description)
        {
            _ = new CfnOutput(this, id, new CfnOutputProps { Value = value, Description = description });
        }
    }
}
