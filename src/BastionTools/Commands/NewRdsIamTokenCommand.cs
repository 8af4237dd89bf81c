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
    public sealed class NewRdsIamTokenCommand : AwsServiceCmdlet
    {
        /// <summary>
        /// The RDS endpoint (the name the database's certificate carries), not 127.0.0.1. Or -DbInstanceIdentifier /
        /// -DbClusterIdentifier, looked up.
        /// </summary>
        [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
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

        /// <summary>An RDS DB instance whose endpoint and port are looked up (rds:DescribeDBInstances).</summary>
        [Parameter(ValueFromPipelineByPropertyName = true)]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string? DbInstanceIdentifier { get; set; }

        /// <summary>An Aurora DB cluster whose endpoint and port are looked up (rds:DescribeDBClusters).</summary>
        [Parameter(ValueFromPipelineByPropertyName = true)]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string? DbClusterIdentifier { get; set; }

        /// <summary>With -DbClusterIdentifier: Writer (default), Reader, or a custom endpoint's identifier.</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(ClusterEndpointCompleter))]
        public string? ClusterEndpoint { get; set; }

        protected override void ProcessRecord()
        {
            var port = Port;
            var hostGiven = !string.IsNullOrWhiteSpace(Hostname);
            var choice = RdsTargetChoice.Check(hostGiven, DbInstanceIdentifier, DbClusterIdentifier, ClusterEndpoint);
            if (choice.Error != null)
            {
                WriteErrorSafe(choice.Error);
                return;
            }
            var hostname = Hostname;
            if (!hostGiven)
            {
                var resolver = new RdsDatabaseResolver(GetRdsClient());
                if (!TryRun(ct => resolver.ResolveAsync(choice, ClusterEndpoint, ct), out var resolved)) return;
                hostname = resolved.Host;
                if (!MyInvocation.BoundParameters.ContainsKey(nameof(Port))) port = resolved.Port;
                WriteVerboseSafe($"{resolved.Database.Kind} {resolved.Database.Identifier}: {resolved.Host}:{port}.");
            }
            var host = hostname.Trim();
            if (!RdsEndpoint.IsValidHost(host))
            {
                WriteErrorSafe(new BastionToolsException(ErrorIds.RdsHostnameInvalid, ErrorCategory.InvalidArgument,
                    $"'{hostname}' is not a valid host name.", hostname,
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
                        hostname, "Pass -Region with the region of the database, for example -Region us-east-1."));
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
                token = RdsAuthToken.Generate(host, port, UserName, region, keys, now);
            }
            catch (ArgumentException ex)
            {
                WriteErrorSafe(new BastionToolsException(ErrorIds.RdsTokenFailed, ErrorCategory.InvalidArgument, Redactor.Redact(ex.Message), hostname));
                return;
            }
            Redactor.Add(token);
            WriteVerboseSafe($"Signed an IAM token for user '{UserName}' at {RdsEndpoint.HostPort(host, port)} ({region}), valid until {now.Add(RdsAuthToken.Lifetime):HH:mm:ss}Z.");
            WriteObject(token);
        }
    }
}
