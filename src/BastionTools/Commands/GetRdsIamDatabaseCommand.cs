using System.Management.Automation;
using BastionTools.Aws;

namespace BastionTools.Commands
{
    /// <summary>
    /// Get-RdsIamDatabase: the RDS DB instances and Aurora DB clusters of a region with what IAM database authentication
    /// needs — endpoint and port (an Aurora cluster's writer, reader and custom endpoints), whether IAM authentication is
    /// enabled, the resource id of rds-db:connect's ARN, the owning account, VPC and status.
    /// </summary>
    [Cmdlet(VerbsCommon.Get, "RdsIamDatabase")]
    [OutputType(typeof(RdsIamDatabase))]
    public sealed class GetRdsIamDatabaseCommand : AwsServiceCmdlet
    {
        /// <summary>Identifiers to show (wildcards allowed); default: all.</summary>
        [Parameter(Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
        [Alias("Identifier", "DbInstanceIdentifier", "DbClusterIdentifier")]
        [ValidateNotNullOrEmpty]
        [SupportsWildcards]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string[]? Name { get; set; }

        /// <summary>Only databases with IAM database authentication enabled.</summary>
        [Parameter]
        public SwitchParameter IamEnabled { get; set; }

        protected override void ProcessRecord()
        {
            var client = GetRdsClient();
            if (!TryRun(ct => new RdsDatabaseResolver(client).ListAsync(Name, ct), out var found)) return;
            var any = false;
            foreach (var db in found)
            {
                if (IamEnabled && !db.IamAuthenticationEnabled) continue;
                any = true;
                WriteObject(db);
            }
            if (!any && Name != null)
            {
                foreach (var n in Name)
                {
                    if (WildcardPattern.ContainsWildcardCharacters(n)) continue;
                    WriteErrorSafe(new BastionToolsException(ErrorIds.RdsDatabaseNotFound, ErrorCategory.ObjectNotFound,
                        $"There is no DB instance or Aurora cluster '{n}'{(IamEnabled ? " with IAM authentication enabled" : "")} in {client.Region}.", n,
                        "Run Get-RdsIamDatabase without -Name to list them, or pass -Region."));
                }
            }
        }
    }
}
