namespace BastionTools
{
    /// <summary>
    /// Every ErrorId BastionTools writes, in one place. They are part of the public contract (scripts match on
    /// them) and each is documented, with its cause and fix, in about_BastionTools.
    /// </summary>
    public static class ErrorIds
    {
        // Credentials and region
        public const string AwsCredentialsNotFound = "AwsCredentialsNotFound";
        public const string AwsCredentialsIncomplete = "AwsCredentialsIncomplete";
        public const string AwsProfileNotFound = "AwsProfileNotFound";
        public const string AwsProfileLocationNotFound = "AwsProfileLocationNotFound";
        public const string AwsCredentialsUnavailable = "AwsCredentialsUnavailable";
        public const string AwsRegionNotFound = "AwsRegionNotFound";
        public const string AwsRegionInvalid = "AwsRegionInvalid";
        public const string AwsEndpointUrlInvalid = "AwsEndpointUrlInvalid";

        // RDS IAM tokens
        public const string RdsRegionNotInferred = "RdsRegionNotInferred";
        public const string RdsHostnameInvalid = "RdsHostnameInvalid";
        public const string RdsTokenFailed = "RdsTokenFailed";

        // RDS look-ups (Get-RdsIamDatabase, -DbInstanceIdentifier/-DbClusterIdentifier)
        public const string RdsDatabaseNotFound = "RdsDatabaseNotFound";
        public const string RdsAccessDenied = "RdsAccessDenied";
        public const string RdsIamAuthenticationDisabled = "RdsIamAuthenticationDisabled";
        public const string RdsEndpointNotFound = "RdsEndpointNotFound";
        public const string RdsDatabaseNotSpecified = "RdsDatabaseNotSpecified";

        // AWS service calls
        public const string AwsServiceUnreachable = "AwsServiceUnreachable";
        public const string AwsAccessDenied = "AwsAccessDenied";
        public const string AwsAuthenticationFailed = "AwsAuthenticationFailed";
        public const string AwsThrottled = "AwsThrottled";
        public const string AwsRequestFailed = "AwsRequestFailed";
        public const string SsmDocumentInvalid = "SsmDocumentInvalid";
        /// <summary>An engine failure of no known kind (its message and inner exceptions redacted).</summary>
        public const string UnexpectedError = "UnexpectedError";

        // Bastions and sessions
        public const string BastionTargetNotFound = "BastionTargetNotFound";
        public const string BastionTargetAmbiguous = "BastionTargetAmbiguous";
        public const string BastionTargetOffline = "BastionTargetOffline";
        public const string BastionSessionNotFound = "BastionSessionNotFound";
        public const string BastionSessionFailed = "BastionSessionFailed";
        public const string BastionSessionTimedOut = "BastionSessionTimedOut";
        public const string BastionSessionTerminated = "BastionSessionTerminated";
        /// <summary>Get-BastionSession -History: the filters cannot match (-After not earlier than -Before).</summary>
        public const string SessionHistoryFilterInvalid = "SessionHistoryFilterInvalid";
        public const string BastionHandshakeFailed = "BastionHandshakeFailed";
        public const string LocalPortUnavailable = "LocalPortUnavailable";
        public const string StreamUrlInsecure = "StreamUrlInsecure";
        public const string ShellNeedsTerminal = "ShellNeedsTerminal";
        public const string RemoteStandardError = "RemoteStandardError";
        public const string RemoteCommandFailed = "RemoteCommandFailed";
        public const string SessionEncryptionDenied = "SessionEncryptionDenied";
        public const string SessionEncryptionFailed = "SessionEncryptionFailed";
        public const string SessionDecryptionFailed = "SessionDecryptionFailed";

        // PostgreSQL
        public const string DatabaseTlsFailed = "DatabaseTlsFailed";
        public const string DatabaseLoginFailed = "DatabaseLoginFailed";
        public const string DatabaseConnectFailed = "DatabaseConnectFailed";
        public const string DatabaseQueryFailed = "DatabaseQueryFailed";
        public const string DatabaseConnectionClosed = "DatabaseConnectionClosed";
        public const string SslRootCertificateInvalid = "SslRootCertificateInvalid";
        public const string PsqlNotFound = "PsqlNotFound";
        public const string PsqlNotExecutable = "PsqlNotExecutable";
        public const string QueryInputInvalid = "QueryInputInvalid";

        // Grant-RdsIamUser / Revoke-RdsIamUser
        public const string RdsIamAdminRequired = "RdsIamAdminRequired";
        public const string RdsIamGrantNeedsForce = "RdsIamGrantNeedsForce";
        public const string RdsIamGrantFailed = "RdsIamGrantFailed";
        public const string SqlIdentifierInvalid = "SqlIdentifierInvalid";
        public const string RdsIamSystemSchema = "RdsIamSystemSchema";
    }
}
