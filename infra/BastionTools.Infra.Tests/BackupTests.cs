using System.Linq;
using System.Text.Json;
using Xunit;

namespace BastionTools.Infra.Tests
{
    /// <summary>The AWS Backup plan of the production profile (backupPlan): vault, key, plan, selection of the database, role.</summary>
    [Collection(InfraCollection.Name)]
    public sealed class BackupTests
    {
        private readonly Stacks _stacks;

        public BackupTests(Stacks stacks) => _stacks = stacks;

        [Fact]
        public void Default_profile_has_no_aws_backup_resources()
        {
            var s = _stacks.Default;
            Assert.Null(s.Stack.Backup);
            Assert.DoesNotContain(s.Json.GetProperty("Resources").EnumerateObject(), r => r.Value.GetProperty("Type").GetString()!.StartsWith("AWS::Backup::", System.StringComparison.Ordinal));
            Assert.False(s.Json.GetProperty("Outputs").TryGetProperty("BackupVaultName", out _));
        }

        [Fact]
        public void Production_vault_is_encrypted_with_its_own_rotating_key_and_retained()
        {
            var s = _stacks.Production;
            var backup = s.Stack.Backup!;
            var vaultId = s.Id(backup.Vault);
            var vault = s.Resource(vaultId);
            Assert.Equal("bastiontools-db-backup", vault.GetProperty("Properties").GetProperty("BackupVaultName").GetString());
            Assert.Equal("{" + s.Id(backup.Key) + ".Arn}", Synthesized.Render(vault.GetProperty("Properties").GetProperty("EncryptionKeyArn")));
            Assert.Equal("Retain", vault.GetProperty("DeletionPolicy").GetString());
            Assert.True(s.Properties(s.Id(backup.Key)).GetProperty("EnableKeyRotation").GetBoolean());
            Assert.NotEqual(s.Id(backup.Key), s.Id(s.Stack.Logging.Key));
            Assert.Equal("{" + vaultId + ".BackupVaultName}",
                Synthesized.Render(s.Json.GetProperty("Outputs").GetProperty("BackupVaultName").GetProperty("Value")));
        }

        [Fact]
        public void Production_plan_backs_up_daily_into_the_vault_and_keeps_35_days()
        {
            var s = _stacks.Production;
            var backup = s.Stack.Backup!;
            var plan = s.Properties(s.Id(backup.Plan)).GetProperty("BackupPlan");
            var rule = Assert.Single(plan.GetProperty("BackupPlanRule").EnumerateArray());
            Assert.Equal("{" + s.Id(backup.Vault) + ".BackupVaultName}", Synthesized.Render(rule.GetProperty("TargetBackupVault")));
            Assert.Equal("cron(0 3 * * ? *)", rule.GetProperty("ScheduleExpression").GetString());
            Assert.Equal(35, rule.GetProperty("Lifecycle").GetProperty("DeleteAfterDays").GetInt32());
        }

        [Fact]
        public void Production_selection_is_the_database_instance_taken_by_a_role_only_aws_backup_assumes()
        {
            var s = _stacks.Production;
            var backup = s.Stack.Backup!;
            var props = s.Properties(s.Id(backup.Selection));
            Assert.Equal("{" + s.Id(backup.Plan) + ".BackupPlanId}", Synthesized.Render(props.GetProperty("BackupPlanId")));
            var selection = props.GetProperty("BackupSelection");
            Assert.Equal(new[] { "arn:{AWS::Partition}:rds:{AWS::Region}:{AWS::AccountId}:db:{" + s.Id(s.Stack.Database.Instance) + "}" },
                selection.GetProperty("Resources").EnumerateArray().Select(Synthesized.Render).ToArray());
            Assert.False(selection.TryGetProperty("ListOfTags", out _));
            var roleId = s.Id(backup.Role);
            Assert.Equal("{" + roleId + ".Arn}", Synthesized.Render(selection.GetProperty("IamRoleArn")));
            var role = s.Properties(roleId);
            Assert.Equal("backup.amazonaws.com", Assert.Single(Synthesized.Many(role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")))
                .GetProperty("Principal").GetProperty("Service").GetString());
            Assert.Equal(new[] { "arn:{AWS::Partition}:iam::aws:policy/service-role/AWSBackupServiceRolePolicyForBackup" },
                role.GetProperty("ManagedPolicyArns").EnumerateArray().Select(Synthesized.Render).ToArray());
        }
    }
}
