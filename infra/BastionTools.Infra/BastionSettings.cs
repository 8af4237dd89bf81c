using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text.RegularExpressions;

namespace BastionTools.Infra
{
    /// <summary>
    /// Everything the stack can be told, with its defaults. <see cref="FromContext"/> reads the CDK context
    /// (cdk.json, <c>-c key=value</c>); the tests build it directly.
    /// </summary>
    public sealed record BastionSettings
    {
        /// <summary>The tag <c>Get-BastionInstance</c> looks for when called without parameters.</summary>
        public const string RoleTagKey = "bastiontools:role";
        public const string RoleTagValue = "bastion";

        /// <summary>Log retention values CloudWatch Logs accepts.</summary>
        public static readonly IReadOnlyList<int> AllowedRetentionDays = new[]
        {
            1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
        };

        /// <summary>The profiles <c>-c profile=...</c> accepts: <c>default</c> (alias <c>dev</c>) and <c>production</c>.</summary>
        public static readonly IReadOnlyList<string> Profiles = new[] { "default", "dev", "production" };

        /// <summary>Enhanced monitoring intervals RDS accepts (seconds; 0 = off).</summary>
        public static readonly IReadOnlyList<int> AllowedMonitoringIntervals = new[] { 0, 1, 5, 10, 15, 30, 60 };

        /// <summary>
        /// The profile whose defaults the other settings start from: <c>default</c> (cheap: single-AZ, no enhanced
        /// monitoring, no AWS Backup plan) or <c>production</c> (see <see cref="ForProfile"/>). Informational here: the
        /// settings themselves decide what is built.
        /// </summary>
        public string Profile { get; init; } = "default";

        /// <summary>NAT gateway (and a public subnet) instead of interface endpoints for the bastion's AWS calls.</summary>
        public bool UseNat { get; init; }

        public string VpcCidr { get; init; } = "10.40.0.0/16";

        /// <summary>Flow log retention (days).</summary>
        public int FlowLogRetentionDays { get; init; } = 90;

        public string InstanceType { get; init; } = "t4g.nano";

        /// <summary>The bastion's Name tag (so <c>-Name bastion</c> finds it too).</summary>
        public string BastionName { get; init; } = "bastion";

        /// <summary>Shell sessions (SSM-SessionManagerRunShell, AWS-StartNonInteractiveCommand) for operators.</summary>
        public bool EnableShell { get; init; }

        public string LogGroupName { get; init; } = "/ssm/ec2/session";
        public int LogRetentionDays { get; init; } = 365;
        public int IdleTimeoutMinutes { get; init; } = 20;
        public string ShellProfile { get; init; } = "cd ~";

        /// <summary>Create the account/region-wide SSM-SessionManagerRunShell preferences document.</summary>
        public bool ManageSessionPreferences { get; init; } = true;

        /// <summary>
        /// KMS encryption of the session data stream itself (the preferences' kmsKeyId), on by default: a key with
        /// rotation, kms:GenerateDataKey for operators, kms:Decrypt for the bastion. The BastionTools module and the
        /// session-manager-plugin both speak the KMSEncryption handshake. Shell and command sessions are encrypted;
        /// Session Manager never encrypts port-forwarding sessions this way.
        /// </summary>
        public bool SessionDataKms { get; init; } = true;

        public string DbInstanceIdentifier { get; init; } = "bastiontools-db";
        public string DbInstanceClass { get; init; } = "db.t4g.micro";
        public string PostgresVersion { get; init; } = "16";
        public string DatabaseName { get; init; } = "app";
        public string MasterUserName { get; init; } = "postgres";
        public int DbPort { get; init; } = 5432;
        public int AllocatedStorageGiB { get; init; } = 20;
        public bool MultiAz { get; init; }
        public int BackupRetentionDays { get; init; } = 7;

        /// <summary>RDS enhanced monitoring interval in seconds (0: off; then no monitoring role either).</summary>
        public int MonitoringIntervalSeconds { get; init; }

        /// <summary>An AWS Backup plan (daily, KMS-encrypted vault of its own) that selects the database.</summary>
        public bool BackupPlan { get; init; }

        /// <summary>How long the AWS Backup plan keeps each daily recovery point (days).</summary>
        public int BackupPlanRetentionDays { get; init; } = 35;

        /// <summary>Database users operators may log in as with IAM (rds-db:connect).</summary>
        public IReadOnlyList<string> DbUsers { get; init; } = new[] { "app_reader" };

        /// <summary>IAM principals (ARNs) allowed to assume the operator role; none: no role, only the managed policy.</summary>
        public IReadOnlyList<string> AllowedOperatorPrincipals { get; init; } = Array.Empty<string>();

        /// <summary>owner/name of a GitHub repository whose Actions may assume an operator role through OIDC.</summary>
        public string? GithubRepo { get; init; }

        /// <summary>An existing token.actions.githubusercontent.com provider (one per account); empty: the stack creates one.</summary>
        public string? GithubOidcProviderArn { get; init; }

        /// <summary>
        /// The defaults of a profile. <c>production</c>: Multi-AZ, enhanced monitoring every 60 s, an AWS Backup plan
        /// (35 days), automated backups kept 14 days: what the NIST 800-53 rev 5 pack asks of the database.
        /// </summary>
        public static BastionSettings ForProfile(string profile)
        {
            switch (profile.Trim().ToLowerInvariant())
            {
                case "default":
                case "dev":
                    return new BastionSettings { Profile = profile.Trim().ToLowerInvariant() };
                case "production":
                    return new BastionSettings
                    {
                        Profile = "production",
                        MultiAz = true,
                        MonitoringIntervalSeconds = 60,
                        BackupPlan = true,
                        BackupRetentionDays = 14,
                    };
                default:
                    throw new ArgumentException($"profile: '{profile}' is not a profile ({string.Join(", ", Profiles)}).");
            }
        }

        public static BastionSettings FromContext(Func<string, object?> context)
        {
            // The profile gives the defaults; each setting given in the context still overrides its profile default.
            var d = ForProfile(Str(context, "profile", "default"));
            var s = new BastionSettings
            {
                Profile = d.Profile,
                UseNat = Bool(context, "useNat", d.UseNat),
                VpcCidr = Str(context, "vpcCidr", d.VpcCidr),
                FlowLogRetentionDays = Int(context, "flowLogRetentionDays", d.FlowLogRetentionDays),
                InstanceType = Str(context, "instanceType", d.InstanceType),
                BastionName = Str(context, "bastionName", d.BastionName),
                EnableShell = Bool(context, "enableShell", d.EnableShell),
                LogGroupName = Str(context, "logGroupName", d.LogGroupName),
                LogRetentionDays = Int(context, "logRetentionDays", d.LogRetentionDays),
                IdleTimeoutMinutes = Int(context, "idleTimeoutMinutes", d.IdleTimeoutMinutes),
                ShellProfile = Str(context, "shellProfile", d.ShellProfile),
                ManageSessionPreferences = Bool(context, "manageSessionPreferences", d.ManageSessionPreferences),
                SessionDataKms = Bool(context, "sessionDataKms", d.SessionDataKms),
                DbInstanceIdentifier = Str(context, "dbInstanceIdentifier", d.DbInstanceIdentifier),
                DbInstanceClass = Str(context, "dbInstanceClass", d.DbInstanceClass),
                PostgresVersion = Str(context, "postgresVersion", d.PostgresVersion),
                DatabaseName = Str(context, "databaseName", d.DatabaseName),
                MasterUserName = Str(context, "masterUserName", d.MasterUserName),
                DbPort = Int(context, "dbPort", d.DbPort),
                AllocatedStorageGiB = Int(context, "allocatedStorageGiB", d.AllocatedStorageGiB),
                MultiAz = Bool(context, "multiAz", d.MultiAz),
                BackupRetentionDays = Int(context, "backupRetentionDays", d.BackupRetentionDays),
                MonitoringIntervalSeconds = Int(context, "monitoringInterval", d.MonitoringIntervalSeconds),
                BackupPlan = Bool(context, "backupPlan", d.BackupPlan),
                BackupPlanRetentionDays = Int(context, "backupPlanRetentionDays", d.BackupPlanRetentionDays),
                DbUsers = List(context, "dbUsers") ?? d.DbUsers,
                AllowedOperatorPrincipals = List(context, "allowedOperatorPrincipals") ?? d.AllowedOperatorPrincipals,
                GithubRepo = NullIfEmpty(Str(context, "githubRepo", "")),
                GithubOidcProviderArn = NullIfEmpty(Str(context, "githubOidcProviderArn", "")),
            };
            s.Validate();
            return s;
        }

        /// <summary>Throws <see cref="ArgumentException"/> naming the context key of the first bad value.</summary>
        public void Validate()
        {
            if (!AllowedRetentionDays.Contains(LogRetentionDays))
                throw new ArgumentException($"logRetentionDays: {LogRetentionDays} is not a CloudWatch Logs retention ({string.Join(", ", AllowedRetentionDays)}).");
            if (!AllowedRetentionDays.Contains(FlowLogRetentionDays))
                throw new ArgumentException($"flowLogRetentionDays: {FlowLogRetentionDays} is not a CloudWatch Logs retention.");
            if (IdleTimeoutMinutes < 1 || IdleTimeoutMinutes > 60)
                throw new ArgumentException("idleTimeoutMinutes: Session Manager accepts 1 to 60.");
            if (!Regex.IsMatch(LogGroupName, @"^[\.\-_/#A-Za-z0-9]{1,512}$"))
                throw new ArgumentException($"logGroupName: '{LogGroupName}' is not a valid log group name.");
            if (DbUsers.Count == 0)
                throw new ArgumentException("dbUsers: at least one database user is needed (rds-db:connect has nothing to allow otherwise).");
            foreach (var u in DbUsers)
            {
                if (!Regex.IsMatch(u, "^[A-Za-z_][A-Za-z0-9_]{0,62}$"))
                    throw new ArgumentException($"dbUsers: '{u}' is not a plain PostgreSQL role name.");
            }
            if (!Regex.IsMatch(DbInstanceIdentifier, "^[a-z][a-z0-9-]{0,62}$") || DbInstanceIdentifier.EndsWith('-') || DbInstanceIdentifier.Contains("--"))
                throw new ArgumentException($"dbInstanceIdentifier: '{DbInstanceIdentifier}' is not a valid lower-case RDS identifier.");
            if (!Regex.IsMatch(PostgresVersion, @"^\d{2}(\.\d+)?$"))
                throw new ArgumentException($"postgresVersion: '{PostgresVersion}' is not a PostgreSQL version such as 16 or 16.4.");
            if (!Regex.IsMatch(DatabaseName, "^[A-Za-z][A-Za-z0-9_]{0,62}$"))
                throw new ArgumentException($"databaseName: '{DatabaseName}' is not a valid database name.");
            if (DbPort < 1150 || DbPort > 65535)
                throw new ArgumentException("dbPort: RDS accepts 1150 to 65535.");
            if (BackupRetentionDays < 1 || BackupRetentionDays > 35)
                throw new ArgumentException("backupRetentionDays: 1 to 35 (automated backups stay on).");
            if (!Profiles.Contains(Profile))
                throw new ArgumentException($"profile: '{Profile}' is not a profile ({string.Join(", ", Profiles)}).");
            if (!AllowedMonitoringIntervals.Contains(MonitoringIntervalSeconds))
                throw new ArgumentException($"monitoringInterval: {MonitoringIntervalSeconds} is not an RDS enhanced monitoring interval ({string.Join(", ", AllowedMonitoringIntervals)}).");
            if (BackupPlanRetentionDays < 1 || BackupPlanRetentionDays > 36500)
                throw new ArgumentException("backupPlanRetentionDays: 1 to 36500.");
            if (AllocatedStorageGiB < 20)
                throw new ArgumentException("allocatedStorageGiB: at least 20.");
            if (GithubRepo != null && !Regex.IsMatch(GithubRepo, @"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))
                throw new ArgumentException($"githubRepo: '{GithubRepo}' is not owner/name.");
            foreach (var p in AllowedOperatorPrincipals)
            {
                if (!p.StartsWith("arn:", StringComparison.Ordinal))
                    throw new ArgumentException($"allowedOperatorPrincipals: '{p}' is not an ARN.");
            }
        }

        /// <summary>The parameter group family: postgres16 for 16 or 16.4.</summary>
        public string ParameterGroupFamily => "postgres" + PostgresVersion.Split('.')[0];

        private static string? NullIfEmpty(string s) => string.IsNullOrWhiteSpace(s) ? null : s.Trim();

        private static string Str(Func<string, object?> context, string key, string fallback)
        {
            var v = context(key);
            return v == null ? fallback : Convert.ToString(v, CultureInfo.InvariantCulture) ?? fallback;
        }

        private static bool Bool(Func<string, object?> context, string key, bool fallback)
        {
            var v = context(key);
            switch (v)
            {
                case null: return fallback;
                case bool b: return b;
                case string s when bool.TryParse(s.Trim(), out var parsed): return parsed;
                default: throw new ArgumentException($"{key}: '{v}' is not true or false.");
            }
        }

        private static int Int(Func<string, object?> context, string key, int fallback)
        {
            var v = context(key);
            switch (v)
            {
                case null: return fallback;
                case string s when int.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var parsed): return parsed;
                case double dbl when dbl == Math.Floor(dbl): return (int)dbl;
                case int i: return i;
                case long l: return (int)l;
                default: throw new ArgumentException($"{key}: '{v}' is not a whole number.");
            }
        }

        /// <summary>A JSON array from cdk.json, or a comma-separated string from <c>-c key=a,b</c>.</summary>
        private static IReadOnlyList<string>? List(Func<string, object?> context, string key)
        {
            var v = context(key);
            switch (v)
            {
                case null: return null;
                case string s:
                    return s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                case IEnumerable e:
                    return e.Cast<object?>().Select(x => Convert.ToString(x, CultureInfo.InvariantCulture)?.Trim() ?? "")
                        .Where(x => x.Length > 0).ToArray();
                default: throw new ArgumentException($"{key}: '{v}' is not a list.");
            }
        }
    }
}
