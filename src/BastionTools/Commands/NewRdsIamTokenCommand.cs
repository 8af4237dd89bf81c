using System;
using System.Management.Automation;
using BastionTools.Aws;

namespace BastionTools.Commands
{
    /// <summary>
    /// New-RdsIamToken: an IAM authentication token for an RDS database user — the string
    /// <c>aws rds generate-db-auth-token</c> prints, valid 15 minutes. Signing is local: no service is called.
    /// </summary>
    [Cmdlet(VerbsCommon.New, "RdsIamToken")]
    [OutputType(typeof(string))]
    public sealed class NewRdsIamTokenCommand : AwsCmdlet
    {
        /// <summary>The RDS endpoint (the name the database's certificate carries), not 127.0.0.1.</summary>
        [Parameter(Mandatory = true, Position = 0, ValueFromPipelineByPropertyName = true)]
        [Alias("DbHost", "Endpoint", "Address", "DBHostname")]
        [ValidateNotNullOrEmpty]
        public string Hostname { get; set; } = string.Empty;

        /// <summary>The database port the endpoint listens on.</summary>
        [Parameter(Position = 1, ValueFromPipelineByPropertyName = true)]
        [Alias("DbPort")]
        [ValidateRange(1, 65535)]
        public int Port { get; set; } = 5432;

        /// <summary>The database user to log in as (a member of rds_iam).</summary>
        [Parameter(Mandatory = true, Position = 2, ValueFromPipelineByPropertyName = true)]
        [Alias("DbUser", "DBUsername", "User")]
        [ValidateNotNullOrEmpty]
        public string UserName { get; set; } = string.Empty;

        protected override void ProcessRecord()
        {
            var host = Hostname.Trim();
            if (!RdsEndpoint.IsValidHost(host))
            {
                WriteErrorSafe(new BastionToolsException(ErrorIds.RdsHostnameInvalid, ErrorCategory.InvalidArgument,
                    $"'{Hostname}' is not a valid host name.", Hostname,
                    "Pass the RDS endpoint name, such as mydb.abc123xyz.us-east-1.rds.amazonaws.com."));
                return;
            }

            string region;
            if (!string.IsNullOrWhiteSpace(Region))
            {
                ResolvedRegion r;
                try
                {
                    r = AwsCredentialResolver.Checked(Region!, "the -Region parameter");
                }
                catch (BastionToolsException ex)
                {
                    ThrowTerminatingError(ex.ToErrorRecord());
                    return;
                }
                region = r.Name;
                WriteDebugSafe($"Region: {region}, from the -Region parameter.");
                var named = RdsEndpoint.InferRegion(host);
                if (named != null && named != region)
                {
                    WriteWarningSafe($"The endpoint name says region {named} but -Region is {region}: the token is signed for {region}, and RDS in {named} will refuse it.");
                }
            }
            else
            {
                var inferred = RdsEndpoint.InferRegion(host);
                if (inferred == null)
                {
                    WriteErrorSafe(new BastionToolsException(ErrorIds.RdsRegionNotInferred, ErrorCategory.InvalidArgument,
                        $"The region can't be read from '{host}', which is not an RDS endpoint name (<name>.<id>.<region>.rds.amazonaws.com).",
                        Hostname, "Pass -Region with the region of the database, for example -Region us-east-1."));
                    return;
                }
                region = inferred;
                WriteDebugSafe($"Region: {region}, from the endpoint name.");
            }

            var credentials = ResolveCredentials();
            var keys = GetKeys(credentials);
            var now = DateTime.UtcNow;
            string token;
            try
            {
                token = RdsAuthToken.Generate(host, Port, UserName, region, keys, now);
            }
            catch (ArgumentException ex)
            {
                WriteErrorSafe(new BastionToolsException(ErrorIds.RdsTokenFailed, ErrorCategory.InvalidArgument, Redactor.Redact(ex.Message), Hostname));
                return;
            }
            Redactor.Add(token);
            WriteVerboseSafe($"Signed an IAM token for user '{UserName}' at {RdsEndpoint.HostPort(host, Port)} ({region}), valid until {now.Add(RdsAuthToken.Lifetime):HH:mm:ss}Z.");
            WriteObject(token);
        }
    }
}
