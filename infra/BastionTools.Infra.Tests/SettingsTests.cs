using System;
using System.Collections.Generic;
using Xunit;

namespace BastionTools.Infra.Tests
{
    /// <summary>Context parsing: values arrive as JSON types from cdk.json and as strings from '-c key=value'.</summary>
    public sealed class SettingsTests
    {
        private static BastionSettings From(Dictionary<string, object?> context) =>
            BastionSettings.FromContext(k => context.TryGetValue(k, out var v) ? v : null);

        [Fact]
        public void Defaults_apply_when_the_context_is_empty()
        {
            var s = From(new Dictionary<string, object?>());
            Assert.Equal(new BastionSettings().DbUsers, s.DbUsers);
            Assert.False(s.UseNat);
            Assert.False(s.MultiAz);
            Assert.False(s.EnableShell);
            Assert.Equal("/ssm/ec2/session", s.LogGroupName);
            Assert.Equal(365, s.LogRetentionDays);
            Assert.Null(s.GithubRepo);
            Assert.True(s.SessionDataKms);
            Assert.False(From(new Dictionary<string, object?> { ["sessionDataKms"] = "false" }).SessionDataKms);
        }

        [Fact]
        public void Command_line_strings_and_cdk_json_values_both_parse()
        {
            var fromCli = From(new Dictionary<string, object?>
            {
                ["useNat"] = "true", ["multiAz"] = "True", ["logRetentionDays"] = "90", ["dbUsers"] = "app_reader, app_writer",
                ["githubRepo"] = "octo-org/octo-repo", ["instanceType"] = "t3.micro",
            });
            Assert.True(fromCli.UseNat);
            Assert.True(fromCli.MultiAz);
            Assert.Equal(90, fromCli.LogRetentionDays);
            Assert.Equal(new[] { "app_reader", "app_writer" }, fromCli.DbUsers);
            Assert.Equal("octo-org/octo-repo", fromCli.GithubRepo);
            Assert.Equal("t3.micro", fromCli.InstanceType);

            var fromJson = From(new Dictionary<string, object?>
            {
                ["enableShell"] = true, ["idleTimeoutMinutes"] = 15d, ["dbUsers"] = new object[] { "a_user", "b_user" },
            });
            Assert.True(fromJson.EnableShell);
            Assert.Equal(15, fromJson.IdleTimeoutMinutes);
            Assert.Equal(new[] { "a_user", "b_user" }, fromJson.DbUsers);
        }

        [Theory]
        [InlineData("logRetentionDays", "42", "logRetentionDays")]
        [InlineData("idleTimeoutMinutes", "0", "idleTimeoutMinutes")]
        [InlineData("dbUsers", "app-reader", "dbUsers")]
        [InlineData("dbUsers", "", "dbUsers")]
        [InlineData("githubRepo", "not a repo", "githubRepo")]
        [InlineData("useNat", "maybe", "useNat")]
        [InlineData("dbInstanceIdentifier", "Upper_Case", "dbInstanceIdentifier")]
        [InlineData("allowedOperatorPrincipals", "ops-admins", "allowedOperatorPrincipals")]
        public void Bad_values_are_refused_naming_the_key(string key, string value, string named)
        {
            var ex = Assert.Throws<ArgumentException>(() => From(new Dictionary<string, object?> { [key] = value }));
            Assert.StartsWith(named + ":", ex.Message);
        }

        [Fact]
        public void An_acknowledgement_without_a_real_reason_is_refused_at_synthesis()
        {
            var app = new Amazon.CDK.App();
            var stack = new Amazon.CDK.Stack(app, "S");
            var topic = new Amazon.CDK.CfnResource(stack, "R", new Amazon.CDK.CfnResourceProps { Type = "AWS::SNS::Topic" });
            Assert.Throws<ArgumentException>(() => NagAcknowledgements.Acknowledge(topic, "AwsSolutions-SNS2", "because"));
            Assert.Throws<ArgumentException>(() => NagAcknowledgements.Acknowledge(topic, "AwsSolutions-SNS2", "   "));
        }
    }
}
