using System.Collections.Generic;
using Amazon.CDK;
using Amazon.CDK.AWS.IAM;
using Amazon.CDK.AWS.KMS;
using Amazon.CDK.AWS.Logs;
using Amazon.CDK.AWS.SSM;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// The KMS key for every log group here, the session log group, and the Session Manager preferences
    /// (the SSM-SessionManagerRunShell document) that send session output to it: the console step, in code.
    /// </summary>
    public sealed class SessionLogging : Construct
    {
        public const string PreferencesDocumentName = "SSM-SessionManagerRunShell";

        public SessionLogging(Construct scope, string id, BastionSettings settings) : base(scope, id)
        {
            Key = new Key(this, "LogsKey", new KeyProps
            {
                Description = "BastionTools: CloudWatch Logs encryption (session, flow and database logs)",
                EnableKeyRotation = true,
                RemovalPolicy = RemovalPolicy.RETAIN,
            });
            // CloudWatch Logs encrypts with the key on the log groups' behalf, only for log groups of this account and region.
            Key.AddToResourcePolicy(new PolicyStatement(new PolicyStatementProps
            {
                Sid = "CloudWatchLogsInThisAccountAndRegion",
                Principals = new IPrincipal[] { new ServicePrincipal($"logs.{Aws.REGION}.amazonaws.com") },
                Actions = new[] { "kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*" },
                Resources = new[] { "*" },
                Conditions = new Dictionary<string, object>
                {
                    ["ArnLike"] = new Dictionary<string, object>
                    {
                        ["kms:EncryptionContext:aws:logs:arn"] = Arns.Regional("logs", "log-group:*"),
                    },
                },
            }));

            LogGroup = new LogGroup(this, "SessionLogGroup", new LogGroupProps
            {
                LogGroupName = settings.LogGroupName,
                EncryptionKey = Key,
                RemovalPolicy = RemovalPolicy.RETAIN,
            });
            ((CfnLogGroup)LogGroup.Node.DefaultChild!).RetentionInDays = settings.LogRetentionDays;

            if (settings.ManageSessionPreferences)
            {
                var inputs = new Dictionary<string, object>
                {
                    ["s3BucketName"] = "",
                    ["s3KeyPrefix"] = "",
                    ["s3EncryptionEnabled"] = true,
                    ["cloudWatchLogGroupName"] = LogGroup.LogGroupName,
                    // Session Manager refuses to log to this group unless it is encrypted (it is, with the key above).
                    ["cloudWatchEncryptionEnabled"] = true,
                    ["cloudWatchStreamingEnabled"] = true,
                    ["kmsKeyId"] = settings.SessionDataKms ? Key.KeyArn : "",
                    ["runAsEnabled"] = false,
                    ["runAsDefaultUser"] = "",
                    ["idleSessionTimeout"] = settings.IdleTimeoutMinutes.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    ["shellProfile"] = new Dictionary<string, object> { ["linux"] = settings.ShellProfile, ["windows"] = "" },
                };
                Preferences = new CfnDocument(this, "Preferences", new CfnDocumentProps
                {
                    Name = PreferencesDocumentName,
                    DocumentType = "Session",
                    DocumentFormat = "JSON",
                    UpdateMethod = "NewVersion",
                    Content = new Dictionary<string, object>
                    {
                        ["schemaVersion"] = "1.0",
                        ["description"] = "Session Manager preferences (BastionTools): CloudWatch logging, encryption, idle timeout",
                        ["sessionType"] = "Standard_Stream",
                        ["inputs"] = inputs,
                    },
                });
            }
        }

        public Key Key { get; }
        public LogGroup LogGroup { get; }
        public CfnDocument? Preferences { get; }
    }
}
