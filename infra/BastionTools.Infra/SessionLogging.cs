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
    /// The KMS key for every log group here, the session log group, the key that encrypts session data (with
    /// <see cref="BastionSettings.SessionDataKms"/>), and the Session Manager preferences (the SSM-SessionManagerRunShell
    /// document) that send session output to the group and name the session-data key: the console step, in code.
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

            if (settings.SessionDataKms)
            {
                // Session data encryption (the preferences' kmsKeyId): operators' clients ask it for data keys
                // (kms:GenerateDataKey), the bastion's agent decrypts them (kms:Decrypt). Its own key, so that the
                // operators' permission reaches nothing else (not the logs key). The default key policy leaves the
                // decisions to IAM policies of this account, which grant exactly those two actions.
                SessionDataKey = new Key(this, "SessionDataKey", new KeyProps
                {
                    Description = "BastionTools: Session Manager session data encryption (KMSEncryption)",
                    EnableKeyRotation = true,
                    RemovalPolicy = RemovalPolicy.RETAIN,
                });
            }

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
                    // Shell and command sessions are then encrypted end to end with a data key per session (the agent
                    // never asks for it on port sessions); the BastionTools module speaks KMSEncryption.
                    ["kmsKeyId"] = SessionDataKey?.KeyArn ?? "",
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

        /// <summary>The session-data key; null when <see cref="BastionSettings.SessionDataKms"/> is off.</summary>
        public Key? SessionDataKey { get; }

        public LogGroup LogGroup { get; }
        public CfnDocument? Preferences { get; }
    }
}
