using System.Collections.Generic;
using System.Linq;
using System.Text.Json;
using Xunit;

namespace BastionTools.Infra.Tests
{
    [Collection(InfraCollection.Name)]
    public sealed class OperatorAccessTests
    {
        private readonly Stacks _stacks;

        public OperatorAccessTests(Stacks stacks) => _stacks = stacks;

        private static JsonElement[] Statements(Synthesized s) =>
            Synthesized.Many(s.Properties(s.Id(s.Stack.Access.Policy)).GetProperty("PolicyDocument").GetProperty("Statement")).ToArray();

        private static JsonElement Statement(Synthesized s, string sid) => Assert.Single(Statements(s), st => st.GetProperty("Sid").GetString() == sid);

        private static string[] Resources(JsonElement statement) =>
            Synthesized.Many(statement.GetProperty("Resource")).Select(Synthesized.Render).OrderBy(r => r, System.StringComparer.Ordinal).ToArray();

        [Fact]
        public void Start_session_is_scoped_to_the_bastion_and_the_port_forwarding_documents()
        {
            var s = _stacks.Default;
            var st = Statement(s, "StartSessionOnTheBastion");
            Assert.Equal("ssm:StartSession", st.GetProperty("Action").GetString());
            var expected = new[]
            {
                "arn:{AWS::Partition}:ec2:{AWS::Region}:{AWS::AccountId}:instance/{" + s.Id(s.Stack.Bastion.Instance) + "}",
                "arn:{AWS::Partition}:ssm:{AWS::Region}::document/AWS-StartPortForwardingSession",
                "arn:{AWS::Partition}:ssm:{AWS::Region}::document/AWS-StartPortForwardingSessionToRemoteHost",
            }.OrderBy(r => r, System.StringComparer.Ordinal).ToArray();
            Assert.Equal(expected, Resources(st));
            Assert.Equal("true", st.GetProperty("Condition").GetProperty("BoolIfExists").GetProperty("ssm:SessionDocumentAccessCheck").GetString());
        }

        [Theory]
        [MemberData(nameof(Stacks.Names), MemberType = typeof(Stacks))]
        public void No_statement_anywhere_allows_start_session_on_every_resource(string config)
        {
            var s = _stacks[config];
            var startSession = s.PolicyStatements().Where(x => Synthesized.Many(x.Statement.GetProperty("Action")).Any(a => a.GetString() is "ssm:StartSession" or "ssm:*")).ToArray();
            Assert.NotEmpty(startSession);
            Assert.All(startSession, x => Assert.DoesNotContain("*", Resources(x.Statement)));
        }

        [Fact]
        public void Shell_documents_are_allowed_only_when_the_shell_is_enabled()
        {
            var shell = Resources(Statement(_stacks.Shell, "StartSessionOnTheBastion"));
            Assert.Contains("arn:{AWS::Partition}:ssm:{AWS::Region}:{AWS::AccountId}:document/SSM-SessionManagerRunShell", shell);
            Assert.Contains("arn:{AWS::Partition}:ssm:{AWS::Region}::document/AWS-StartNonInteractiveCommand", shell);
            Assert.Equal(5, shell.Length);

            var noShell = Resources(Statement(_stacks.Default, "StartSessionOnTheBastion"));
            Assert.DoesNotContain(noShell, r => r.EndsWith("SSM-SessionManagerRunShell", System.StringComparison.Ordinal));
            Assert.DoesNotContain(noShell, r => r.EndsWith("AWS-StartNonInteractiveCommand", System.StringComparison.Ordinal));
        }

        [Fact]
        public void Resume_and_terminate_only_the_callers_own_sessions()
        {
            var s = _stacks.Default;
            var users = Statement(s, "OwnSessionsIamUsers");
            Assert.Equal(new[] { "ssm:ResumeSession", "ssm:TerminateSession" }, Synthesized.Many(users.GetProperty("Action")).Select(a => a.GetString()).ToArray());
            Assert.Equal(new[] { "arn:{AWS::Partition}:ssm:{AWS::Region}:{AWS::AccountId}:session/${aws:username}-*" }, Resources(users));

            var roles = Statement(s, "OwnSessionsAssumedRoles");
            Assert.Equal(new[] { "ssm:ResumeSession", "ssm:TerminateSession" }, Synthesized.Many(roles.GetProperty("Action")).Select(a => a.GetString()).ToArray());
            Assert.Equal(new[] { "arn:{AWS::Partition}:ssm:{AWS::Region}:{AWS::AccountId}:session/*" }, Resources(roles));
            Assert.Equal("${aws:userid}", roles.GetProperty("Condition").GetProperty("StringLike").GetProperty("ssm:resourceTag/aws:ssmmessages:session-id").GetString());

            // No other statement mentions sessions.
            Assert.Equal(2, Statements(s).Count(st => Synthesized.Many(st.GetProperty("Action")).Any(a => a.GetString()!.EndsWith("Session", System.StringComparison.Ordinal) && a.GetString() != "ssm:StartSession")));
        }

        [Fact]
        public void Rds_db_connect_names_each_listed_user_of_this_database()
        {
            var s = _stacks.Default;
            var st = Statement(s, "ConnectAsListedDatabaseUsers");
            Assert.Equal("rds-db:connect", st.GetProperty("Action").GetString());
            var db = s.Id(s.Stack.Database.Instance);
            Assert.Equal(new[] { "arn:{AWS::Partition}:rds-db:{AWS::Region}:{AWS::AccountId}:dbuser:{" + db + ".DbiResourceId}/app_reader" }, Resources(st));

            var two = _stacks.Shell;
            var db2 = two.Id(two.Stack.Database.Instance);
            Assert.Equal(new[]
            {
                "arn:{AWS::Partition}:rds-db:{AWS::Region}:{AWS::AccountId}:dbuser:{" + db2 + ".DbiResourceId}/app_reader",
                "arn:{AWS::Partition}:rds-db:{AWS::Region}:{AWS::AccountId}:dbuser:{" + db2 + ".DbiResourceId}/app_writer",
            }, Resources(Statement(two, "ConnectAsListedDatabaseUsers")));
        }

        [Fact]
        public void Only_the_describe_calls_the_module_makes_are_unscoped()
        {
            var s = _stacks.Default;
            var unscoped = Statements(s).Where(st => Resources(st).Contains("*")).ToArray();
            var st = Assert.Single(unscoped);
            Assert.Equal(new[] { "ec2:DescribeInstances", "ssm:DescribeInstanceInformation", "ssm:DescribeSessions" },
                Synthesized.Many(st.GetProperty("Action")).Select(a => a.GetString()).OrderBy(a => a).ToArray());
            Assert.Equal(6, Statements(s).Length);
            Assert.All(Statements(s), x => Assert.Equal("Allow", x.GetProperty("Effect").GetString()));
        }

        [Fact]
        public void The_database_look_ups_are_read_only_and_limited_to_rds_instances_and_clusters()
        {
            // Get-RdsIamDatabase and -DbInstanceIdentifier/-DbClusterIdentifier (issue 13); -DbHost needs neither.
            var st = Statement(_stacks.Default, "FindTheDatabase");
            Assert.Equal(new[] { "rds:DescribeDBClusters", "rds:DescribeDBInstances" },
                Synthesized.Many(st.GetProperty("Action")).Select(a => a.GetString()).OrderBy(a => a).ToArray());
            Assert.Equal(new[]
            {
                "arn:{AWS::Partition}:rds:{AWS::Region}:{AWS::AccountId}:cluster:*",
                "arn:{AWS::Partition}:rds:{AWS::Region}:{AWS::AccountId}:db:*",
            }, Resources(st).OrderBy(r => r, System.StringComparer.Ordinal).ToArray());
        }

        [Fact]
        public void Session_data_kms_lets_operators_generate_data_keys()
        {
            var s = _stacks.Shell;
            var st = Statement(s, "EncryptSessionData");
            Assert.Equal("kms:GenerateDataKey", st.GetProperty("Action").GetString());
            // That key only (not the logs key), and only for data keys of sessions on this bastion.
            Assert.Equal(new[] { "{" + s.Id(s.Stack.Logging.SessionDataKey!) + ".Arn}" }, Resources(st));
            Assert.Equal("{" + s.Id(s.Stack.Bastion.Instance) + "}",
                Synthesized.Render(st.GetProperty("Condition").GetProperty("StringEquals").GetProperty("kms:EncryptionContext:aws:ssm:TargetId")));
            // Only with the shell: the default stack (session data KMS on, no shell) allows no session that is encrypted.
            Assert.NotNull(_stacks.Default.Stack.Logging.SessionDataKey);
            Assert.DoesNotContain(Statements(_stacks.Default), x => x.GetProperty("Sid").GetString() == "EncryptSessionData");
            Assert.DoesNotContain(Statements(_stacks.Github), x => x.GetProperty("Sid").GetString() == "EncryptSessionData");
            Assert.DoesNotContain(Statements(s), x => Synthesized.Many(x.GetProperty("Action")).Any(a => a.GetString()!.StartsWith("kms:", System.StringComparison.Ordinal)
                && x.GetProperty("Sid").GetString() != "EncryptSessionData"));
        }

        [Fact]
        public void Github_role_trusts_only_this_repository_through_the_oidc_provider()
        {
            var s = _stacks.Github;
            var provider = Assert.Single(s.Resources("AWS::IAM::OIDCProvider"));
            var pp = provider.Resource.GetProperty("Properties");
            Assert.Equal("https://token.actions.githubusercontent.com", pp.GetProperty("Url").GetString());
            Assert.Equal(new[] { "sts.amazonaws.com" }, pp.GetProperty("ClientIdList").EnumerateArray().Select(x => x.GetString()).ToArray());

            var role = s.Properties(s.Id(s.Stack.Access.GithubRole!));
            var trust = Assert.Single(Synthesized.Many(role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")));
            Assert.Equal("sts:AssumeRoleWithWebIdentity", trust.GetProperty("Action").GetString());
            Assert.Equal("{" + provider.Id + ".Arn}", Synthesized.Render(trust.GetProperty("Principal").GetProperty("Federated")));
            var condition = trust.GetProperty("Condition");
            Assert.Equal("sts.amazonaws.com", condition.GetProperty("StringEquals").GetProperty("token.actions.githubusercontent.com:aud").GetString());
            Assert.Equal("repo:octo-org/octo-repo:*", condition.GetProperty("StringLike").GetProperty("token.actions.githubusercontent.com:sub").GetString());
            Assert.Equal(new[] { "{" + s.Id(s.Stack.Access.Policy) + "}" }, role.GetProperty("ManagedPolicyArns").EnumerateArray().Select(Synthesized.Render).ToArray());
            Assert.Equal(3600, role.GetProperty("MaxSessionDuration").GetInt32());
            Assert.False(role.TryGetProperty("Policies", out _));
        }

        [Fact]
        public void Github_role_can_reuse_the_accounts_existing_oidc_provider()
        {
            var s = _stacks["github-existing-provider"];
            s.Template.ResourceCountIs("AWS::IAM::OIDCProvider", 0);
            var role = s.Properties(s.Id(s.Stack.Access.GithubRole!));
            var trust = Assert.Single(Synthesized.Many(role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")));
            Assert.Equal("arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com", trust.GetProperty("Principal").GetProperty("Federated").GetString());
            Assert.Null(s.Stack.Access.OperatorRole);
        }

        [Fact]
        public void Operator_role_is_assumable_by_the_listed_principals_only_and_carries_the_policy()
        {
            var s = _stacks.Github;
            var role = s.Properties(s.Id(s.Stack.Access.OperatorRole!));
            var trust = Assert.Single(Synthesized.Many(role.GetProperty("AssumeRolePolicyDocument").GetProperty("Statement")));
            Assert.Equal("sts:AssumeRole", trust.GetProperty("Action").GetString());
            Assert.Equal(new[] { "arn:aws:iam::123456789012:role/ops-admins" },
                Synthesized.Many(trust.GetProperty("Principal").GetProperty("AWS")).Select(Synthesized.Render).ToArray());
            Assert.Equal(new[] { "{" + s.Id(s.Stack.Access.Policy) + "}" }, role.GetProperty("ManagedPolicyArns").EnumerateArray().Select(Synthesized.Render).ToArray());

            // Without githubRepo or principals there are no operator roles at all, only the managed policy.
            _stacks.Default.Template.ResourceCountIs("AWS::IAM::OIDCProvider", 0);
            Assert.Null(_stacks.Default.Stack.Access.OperatorRole);
            Assert.Null(_stacks.Default.Stack.Access.GithubRole);
        }
    }
}
