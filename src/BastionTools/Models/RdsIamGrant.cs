using System;

namespace BastionTools
{
    /// <summary>What Grant-RdsIamUser or Revoke-RdsIamUser changed, and the IAM side to apply in the same runbook.</summary>
    public sealed class RdsIamGrant
    {
        public string UserName { get; internal set; } = "";
        public string Database { get; internal set; } = "";
        public string Endpoint { get; internal set; } = "";

        /// <summary>Grant or Revoke.</summary>
        public string Action { get; internal set; } = "";

        public bool Changed { get; internal set; }

        /// <summary>One line per change ("create role app_reader (LOGIN)", "grant SELECT on 3 tables in public").</summary>
        public string[] Changes { get; internal set; } = Array.Empty<string>();

        /// <summary>The statements that ran, in one transaction.</summary>
        public string[] Sql { get; internal set; } = Array.Empty<string>();

        public string Summary { get; internal set; } = "";

        /// <summary>arn:&lt;partition&gt;:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;DbiResourceId&gt;/&lt;user&gt;, when -DbiResourceId was given.</summary>
        public string? ResourceArn { get; internal set; }

        /// <summary>An IAM policy allowing rds-db:connect as this user, when -DbiResourceId was given.</summary>
        public string? PolicyJson { get; internal set; }

        public override string ToString() => Summary;
    }
}
