using System.Linq;
using System.Text.Json;
using Xunit;

namespace BastionTools.Infra.Tests
{
    [Collection(InfraCollection.Name)]
    public sealed class SessionLoggingTests
    {
        private readonly Stacks _stacks;

        public SessionLoggingTests(Stacks stacks) => _stacks = stacks;

        [Fact]
        public void Session_log_group_is_named_kms_encrypted_and_retained_for_a_year()
        {
            var s = _stacks.Default;
            var id = s.Id(s.Stack.Logging.LogGroup);
            var props = s.Properties(id);
            Assert.Equal("/ssm/ec2/session", props.GetProperty("LogGroupName").GetString());
            Assert.Equal(365, props.GetProperty("RetentionInDays").GetInt32());
            Assert.Equal("{" + s.Id(s.Stack.Logging.Key) + ".Arn}", Synthesized.Render(props.GetProperty("KmsKeyId")));
            Assert.Equal("Retain", s.Resource(id).GetProperty("DeletionPolicy").GetString());
        }

        [Fact]
        public void Log_group_name_and_retention_follow_the_settings()
        {
            var s = _stacks.Shell;
            var props = s.Properties(s.Id(s.Stack.Logging.LogGroup));
            Assert.Equal("/ops/bastion-sessions", props.GetProperty("LogGroupName").GetString());
            Assert.Equal(90, props.GetProperty("RetentionInDays").GetInt32());
        }

        [Fact]
        public void Logs_key_rotates_and_lets_cloudwatch_logs_use_it_only_for_this_account_and_region()
        {
            var s = _stacks.Default;
            var key = s.Properties(s.Id(s.Stack.Logging.Key));
            Assert.True(key.GetProperty("EnableKeyRotation").GetBoolean());
            var logs = Synthesized.Many(key.GetProperty("KeyPolicy").GetProperty("Statement"))
                .Single(st => st.TryGetProperty("Sid", out var sid) && sid.GetString() == "CloudWatchLogsInThisAccountAndRegion");
            Assert.Equal("logs.{AWS::Region}.amazonaws.com", Synthesized.Render(logs.GetProperty("Principal").GetProperty("Service")));
            Assert.Equal("arn:{AWS::Partition}:logs:{AWS::Region}:{AWS::AccountId}:log-group:*",
                Synthesized.Render(logs.GetProperty("Condition").GetProperty("ArnLike").GetProperty("kms:EncryptionContext:aws:logs:arn")));
        }

        private static JsonElement PreferencesInputs(Synthesized s)
        {
            var doc = s.Properties(s.Id(s.Stack.Logging.Preferences!));
            Assert.Equal("SSM-SessionManagerRunShell", doc.GetProperty("Name").GetString());
            Assert.Equal("Session", doc.GetProperty("DocumentType").GetString());
            Assert.Equal("NewVersion", doc.GetProperty("UpdateMethod").GetString());
            var content = doc.GetProperty("Content");
            Assert.Equal("Standard_Stream", content.GetProperty("sessionType").GetString());
            return content.GetProperty("inputs");
        }

        [Fact]
        public void Session_manager_preferences_log_to_the_group_with_encryption_idle_timeout_and_shell_profile()
        {
            var s = _stacks.Default;
            var inputs = PreferencesInputs(s);
            Assert.Equal("{" + s.Id(s.Stack.Logging.LogGroup) + "}", Synthesized.Render(inputs.GetProperty("cloudWatchLogGroupName")));
            Assert.True(inputs.GetProperty("cloudWatchEncryptionEnabled").GetBoolean());
            Assert.True(inputs.GetProperty("cloudWatchStreamingEnabled").GetBoolean());
            Assert.Equal("20", inputs.GetProperty("idleSessionTimeout").GetString());
            Assert.Equal("cd ~", inputs.GetProperty("shellProfile").GetProperty("linux").GetString());
            Assert.False(inputs.GetProperty("runAsEnabled").GetBoolean());
            // Session data is KMS-encrypted by default, with its own key (the module speaks KMSEncryption).
            Assert.Equal("{" + s.Id(s.Stack.Logging.SessionDataKey!) + ".Arn}", Synthesized.Render(inputs.GetProperty("kmsKeyId")));
        }

        [Fact]
        public void Session_data_key_rotates_is_retained_and_is_not_the_logs_key()
        {
            var s = _stacks.Default;
            var id = s.Id(s.Stack.Logging.SessionDataKey!);
            Assert.NotEqual(s.Id(s.Stack.Logging.Key), id);
            Assert.True(s.Properties(id).GetProperty("EnableKeyRotation").GetBoolean());
            Assert.Equal(2, s.Resources("AWS::KMS::Key").Count());
            Assert.Single(s.Resources("AWS::KMS::Key"), r => r.Id == id && r.Resource.GetProperty("DeletionPolicy").GetString() == "Retain");
        }

        [Fact]
        public void Session_data_key_policy_is_the_default_one_so_iam_policies_decide()
        {
            // The account root with kms:* and nothing else ("Enable IAM User Permissions"): the operators'
            // kms:GenerateDataKey and the bastion's kms:Decrypt come from their IAM policies. The module's sandbox models
            // this key as alias/bastion-session-data-iam (tests/Sandbox/SandboxKms.cs).
            var s = _stacks.Shell;
            var st = Assert.Single(Synthesized.Many(s.Properties(s.Id(s.Stack.Logging.SessionDataKey!)).GetProperty("KeyPolicy").GetProperty("Statement")));
            Assert.Equal("Allow", st.GetProperty("Effect").GetString());
            Assert.Equal("kms:*", st.GetProperty("Action").GetString());
            Assert.Equal("*", st.GetProperty("Resource").GetString());
            // The synthesis environment is account 123456789012.
            Assert.Equal("arn:{AWS::Partition}:iam::123456789012:root", Synthesized.Render(st.GetProperty("Principal").GetProperty("AWS")));
        }

        [Fact]
        public void Session_data_kms_can_be_turned_off()
        {
            var s = _stacks.Github;
            Assert.Null(s.Stack.Logging.SessionDataKey);
            Assert.Equal("", PreferencesInputs(s).GetProperty("kmsKeyId").GetString());
            Assert.Single(s.Resources("AWS::KMS::Key"));
        }

        [Fact]
        public void Session_data_kms_and_idle_timeout_follow_the_settings()
        {
            var s = _stacks.Shell;
            var inputs = PreferencesInputs(s);
            Assert.Equal("{" + s.Id(s.Stack.Logging.SessionDataKey!) + ".Arn}", Synthesized.Render(inputs.GetProperty("kmsKeyId")));
            Assert.Equal("10", inputs.GetProperty("idleSessionTimeout").GetString());
        }

        [Fact]
        public void Preferences_document_can_be_left_to_an_existing_one()
        {
            var s = Synthesized.Create("no-preferences", new BastionSettings { ManageSessionPreferences = false });
            s.Template.ResourceCountIs("AWS::SSM::Document", 0);
            // The log group stays: an existing preferences document can point at it.
            Assert.Single(s.Resources("AWS::Logs::LogGroup"), r => r.Resource.GetProperty("Properties").TryGetProperty("LogGroupName", out var n) && n.GetString() == "/ssm/ec2/session");
        }
    }
}
