using System;
using System.Collections.Generic;
using System.Linq;
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
        [InlineData("profile", "prod", "profile")]
        [InlineData("profile", "", "profile")]
        [InlineData("monitoringInterval", "7", "monitoringInterval")]
        [InlineData("backupPlan", "daily", "backupPlan")]
        [InlineData("backupPlanRetentionDays", "0", "backupPlanRetentionDays")]
        public void Bad_values_are_refused_naming_the_key(string key, string value, string named)
        {
            var ex = Assert.Throws<ArgumentException>(() => From(new Dictionary<string, object?> { [key] = value }));
            Assert.StartsWith(named + ":", ex.Message);
        }

        [Fact]
        public void Default_profile_is_cheap_and_dev_is_its_alias()
        {
            foreach (var context in new[] { new Dictionary<string, object?>(), new Dictionary<string, object?> { ["profile"] = "dev" }, new Dictionary<string, object?> { ["profile"] = "default" } })
            {
                var s = From(context);
                Assert.False(s.MultiAz);
                Assert.Equal(0, s.MonitoringIntervalSeconds);
                Assert.False(s.BackupPlan);
                Assert.Equal(7, s.BackupRetentionDays);
            }
            Assert.Equal("dev", From(new Dictionary<string, object?> { ["profile"] = "dev" }).Profile);
            Assert.Equal("default", From(new Dictionary<string, object?>()).Profile);
        }

        [Fact]
        public void Production_profile_turns_on_multi_az_enhanced_monitoring_and_an_aws_backup_plan()
        {
            var s = From(new Dictionary<string, object?> { ["profile"] = "Production" });
            Assert.Equal("production", s.Profile);
            Assert.True(s.MultiAz);
            Assert.Equal(60, s.MonitoringIntervalSeconds);
            Assert.True(s.BackupPlan);
            Assert.Equal(35, s.BackupPlanRetentionDays);
            Assert.Equal(14, s.BackupRetentionDays);
            // What the profile does not touch keeps its default.
            Assert.Equal(new BastionSettings().DbInstanceClass, s.DbInstanceClass);
            Assert.Equal(BastionSettings.ForProfile("production") with { DbUsers = s.DbUsers }, s);
        }

        [Fact]
        public void Explicit_settings_override_the_profile_defaults()
        {
            var s = From(new Dictionary<string, object?>
            {
                ["profile"] = "production", ["multiAz"] = "false", ["monitoringInterval"] = 15d, ["backupPlan"] = false, ["backupPlanRetentionDays"] = "90",
            });
            Assert.False(s.MultiAz);
            Assert.Equal(15, s.MonitoringIntervalSeconds);
            Assert.False(s.BackupPlan);
            Assert.Equal(90, s.BackupPlanRetentionDays);
            Assert.Equal(14, s.BackupRetentionDays);

            var cheap = From(new Dictionary<string, object?> { ["multiAz"] = true, ["backupPlan"] = "true" });
            Assert.True(cheap.MultiAz);
            Assert.True(cheap.BackupPlan);
            Assert.Equal(0, cheap.MonitoringIntervalSeconds);
        }

        [Fact]
        public void Cdk_json_context_leaves_the_profile_in_charge()
        {
            // cdk.json's context reaches the app as explicit settings; one the production profile changes would win over it.
            string? dir = AppContext.BaseDirectory;
            while (dir != null && !System.IO.File.Exists(System.IO.Path.Combine(dir, "infra", "cdk.json"))) dir = System.IO.Path.GetDirectoryName(dir);
            Assert.NotNull(dir);
            using var json = System.Text.Json.JsonDocument.Parse(System.IO.File.ReadAllText(System.IO.Path.Combine(dir!, "infra", "cdk.json")));
            var context = new Dictionary<string, object?>();
            foreach (var p in json.RootElement.GetProperty("context").EnumerateObject())
            {
                context[p.Name] = p.Value.ValueKind switch
                {
                    System.Text.Json.JsonValueKind.True => true,
                    System.Text.Json.JsonValueKind.False => false,
                    System.Text.Json.JsonValueKind.Number => p.Value.GetDouble(),
                    System.Text.Json.JsonValueKind.Array => p.Value.EnumerateArray().Select(e => (object)e.ToString()).ToArray(),
                    _ => p.Value.ToString(),
                };
            }
            Assert.NotEmpty(context);
            context["profile"] = "production";
            var production = From(context);
            Assert.Equal(new[] { "app_reader" }, production.DbUsers);
            Assert.Equal(BastionSettings.ForProfile("production") with { DbUsers = production.DbUsers }, production);
            context.Remove("profile");
            var cheap = From(context);
            Assert.Equal(new BastionSettings() with { DbUsers = cheap.DbUsers }, cheap);
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
