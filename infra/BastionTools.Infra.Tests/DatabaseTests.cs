using System.Collections.Generic;
using System.Linq;
using System.Text.Json;
using Amazon.CDK.Assertions;
using Xunit;

namespace BastionTools.Infra.Tests
{
    [Collection(InfraCollection.Name)]
    public sealed class DatabaseTests
    {
        private readonly Stacks _stacks;

        public DatabaseTests(Stacks stacks) => _stacks = stacks;

        private static JsonElement Db(Synthesized s) => s.Properties(s.Id(s.Stack.Database.Instance));

        [Fact]
        public void Postgres_uses_iam_authentication_encrypted_storage_and_is_private()
        {
            var db = Db(_stacks.Default);
            Assert.Equal("postgres", db.GetProperty("Engine").GetString());
            Assert.Equal("16", db.GetProperty("EngineVersion").GetString());
            Assert.True(db.GetProperty("EnableIAMDatabaseAuthentication").GetBoolean());
            Assert.True(db.GetProperty("StorageEncrypted").GetBoolean());
            Assert.False(db.GetProperty("PubliclyAccessible").GetBoolean());
            Assert.Equal("db.t4g.micro", db.GetProperty("DBInstanceClass").GetString());
            Assert.Equal("app", db.GetProperty("DBName").GetString());
        }

        [Fact]
        public void Postgres_is_protected_backed_up_snapshotted_on_delete_and_exports_logs()
        {
            var s = _stacks.Default;
            var id = s.Id(s.Stack.Database.Instance);
            var db = Db(s);
            Assert.True(db.GetProperty("DeletionProtection").GetBoolean());
            Assert.Equal(7, db.GetProperty("BackupRetentionPeriod").GetInt32());
            Assert.True(db.GetProperty("CopyTagsToSnapshot").GetBoolean());
            Assert.Equal(new[] { "postgresql", "upgrade" }, db.GetProperty("EnableCloudwatchLogsExports").EnumerateArray().Select(e => e.GetString()).ToArray());
            Assert.Equal("Snapshot", s.Resource(id).GetProperty("DeletionPolicy").GetString());
            Assert.Equal("Snapshot", s.Resource(id).GetProperty("UpdateReplacePolicy").GetString());
            Assert.False(db.GetProperty("MultiAZ").GetBoolean());
        }

        [Fact]
        public void Master_password_is_kept_by_rds_in_secrets_manager_never_in_the_template()
        {
            var s = _stacks.Default;
            var db = Db(s);
            Assert.True(db.GetProperty("ManageMasterUserPassword").GetBoolean());
            Assert.Equal("postgres", db.GetProperty("MasterUsername").GetString());
            Assert.False(db.TryGetProperty("MasterUserPassword", out _));
            s.Template.ResourceCountIs("AWS::SecretsManager::Secret", 0);
            s.Template.HasOutput("MasterSecretArn", Match.ObjectLike(new Dictionary<string, object>
            {
                ["Value"] = new Dictionary<string, object> { ["Fn::GetAtt"] = new[] { s.Id(s.Stack.Database.Instance), "MasterUserSecret.SecretArn" } },
            }));
        }

        [Fact]
        public void Parameter_group_forces_ssl()
        {
            var s = _stacks.Default;
            var pg = s.Properties(s.Id(s.Stack.Database.ParameterGroup));
            Assert.Equal("postgres16", pg.GetProperty("Family").GetString());
            Assert.Equal("1", pg.GetProperty("Parameters").GetProperty("rds.force_ssl").GetString());
            Assert.Equal("{" + s.Id(s.Stack.Database.ParameterGroup) + "}", Synthesized.Render(Db(s).GetProperty("DBParameterGroupName")));
        }

        [Fact]
        public void Database_ingress_is_the_db_port_from_the_bastion_security_group_only()
        {
            var s = _stacks.Default;
            var dbSg = s.Id(s.Stack.Database.SecurityGroup);
            Assert.Equal(new[] { "{" + dbSg + ".GroupId}" }, Db(s).GetProperty("VPCSecurityGroups").EnumerateArray().Select(Synthesized.Render).ToArray());
            Assert.False(s.Properties(dbSg).TryGetProperty("SecurityGroupIngress", out _));
            var rules = s.Resources("AWS::EC2::SecurityGroupIngress").Select(r => r.Resource.GetProperty("Properties"))
                .Where(p => Synthesized.Render(p.GetProperty("GroupId")) == "{" + dbSg + ".GroupId}").ToArray();
            var rule = Assert.Single(rules);
            Assert.Equal("{" + s.Id(s.Stack.Bastion.SecurityGroup) + ".GroupId}", Synthesized.Render(rule.GetProperty("SourceSecurityGroupId")));
            Assert.Equal("tcp", rule.GetProperty("IpProtocol").GetString());
            Assert.Equal(5432, rule.GetProperty("FromPort").GetInt32());
            Assert.Equal(5432, rule.GetProperty("ToPort").GetInt32());
        }

        [Fact]
        public void Database_lives_in_the_isolated_database_subnets()
        {
            var s = _stacks.Default;
            var group = s.Properties(s.Id(s.Stack.Database.SubnetGroup));
            var expected = s.Stack.Network.Vpc.SelectSubnets(s.Stack.Network.DatabaseSubnets).Subnets
                .Select(sub => "{" + s.Id(sub.Node.DefaultChild!) + "}").OrderBy(x => x).ToArray();
            Assert.Equal(2, expected.Length);
            Assert.Equal(expected, group.GetProperty("SubnetIds").EnumerateArray().Select(Synthesized.Render).OrderBy(x => x).ToArray());
            Assert.All(s.Stack.Network.Vpc.SelectSubnets(s.Stack.Network.DatabaseSubnets).Subnets,
                sub => Assert.Contains(s.Stack.Network.Vpc.IsolatedSubnets, i => i.SubnetId == sub.SubnetId));
        }

        [Fact]
        public void Exported_logs_go_to_precreated_encrypted_log_groups_with_retention()
        {
            var s = _stacks.Default;
            var dbId = s.Id(s.Stack.Database.Instance);
            var dependsOn = s.Resource(dbId).GetProperty("DependsOn").EnumerateArray().Select(d => d.GetString()).ToArray();
            foreach (var log in new[] { "postgresql", "upgrade" })
            {
                var (id, group) = Assert.Single(s.Resources("AWS::Logs::LogGroup"),
                    r => r.Resource.GetProperty("Properties").TryGetProperty("LogGroupName", out var n) && n.GetString() == "/aws/rds/instance/bastiontools-db/" + log);
                Assert.Equal(365, group.GetProperty("Properties").GetProperty("RetentionInDays").GetInt32());
                Assert.Equal("{" + s.Id(s.Stack.Logging.Key) + ".Arn}", Synthesized.Render(group.GetProperty("Properties").GetProperty("KmsKeyId")));
                Assert.Contains(id, dependsOn);
            }
            Assert.Equal("bastiontools-db", Db(s).GetProperty("DBInstanceIdentifier").GetString());
        }

        [Fact]
        public void Multi_az_and_port_follow_the_settings()
        {
            var s = _stacks.Shell;
            var db = Db(s);
            Assert.True(db.GetProperty("MultiAZ").GetBoolean());
            Assert.Equal("6543", db.GetProperty("Port").GetString());
            var dbSg = s.Id(s.Stack.Database.SecurityGroup);
            var rule = Assert.Single(s.Resources("AWS::EC2::SecurityGroupIngress").Select(r => r.Resource.GetProperty("Properties")),
                p => Synthesized.Render(p.GetProperty("GroupId")) == "{" + dbSg + ".GroupId}");
            Assert.Equal(6543, rule.GetProperty("FromPort").GetInt32());
        }

        [Fact]
        public void Default_profile_has_no_enhanced_monitoring()
        {
            var s = _stacks.Default;
            Assert.Equal(0, Db(s).GetProperty("MonitoringInterval").GetInt32());
            Assert.False(Db(s).TryGetProperty("MonitoringRoleArn", out _));
            Assert.Null(s.Stack.Database.MonitoringRole);
            Assert.DoesNotContain("AmazonRDSEnhancedMonitoringRole", s.Json.GetRawText());
        }

        [Fact]
        public void Production_profile_is_multi_az_with_enhanced_monitoring_through_a_role_only_rds_of_this_account_assumes()
        {
            var s = _stacks.Production;
            var db = Db(s);
            Assert.True(db.GetProperty("MultiAZ").GetBoolean());
            Assert.Equal(60, db.GetProperty("MonitoringInterval").GetInt32());
            Assert.Equal(14, db.GetProperty("BackupRetentionPeriod").GetInt32());
            Assert.True(db.GetProperty("DeletionProtection").GetBoolean());
            var roleId = s.Id(s.Stack.Database.MonitoringRole!);
            Assert.Equal("{" + roleId + ".Arn}", Synthesized.Render(db.GetProperty("MonitoringRoleArn")));
            var role = s.Properties(roleId);
            var trust = Assert.Single(Synthesized.Many(role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")));
            Assert.Equal("monitoring.rds.amazonaws.com", trust.GetProperty("Principal").GetProperty("Service").GetString());
            Assert.Equal("{AWS::AccountId}", Synthesized.Render(trust.GetProperty("Condition").GetProperty("StringEquals").GetProperty("aws:SourceAccount")));
            Assert.Equal(new[] { "arn:{AWS::Partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole" },
                role.GetProperty("ManagedPolicyArns").EnumerateArray().Select(Synthesized.Render).ToArray());
            Assert.False(role.TryGetProperty("Policies", out _));
        }
    }
}
