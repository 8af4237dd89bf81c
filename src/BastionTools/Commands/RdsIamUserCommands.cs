using System;
using System.Linq;
using System.Management.Automation;
using BastionTools.Aws;
using BastionTools.Postgres;
using BastionTools.Ssm;

namespace BastionTools.Commands
{
    /// <summary>Shared by Grant-RdsIamUser and Revoke-RdsIamUser: the tunnel, the admin connection, the plan, -WhatIf.</summary>
    public abstract class RdsIamUserCommandBase : DatabaseTunnelCmdlet
    {
        /// <summary>The database user that IAM logs in as.</summary>
        [Parameter(Mandatory = true, ValueFromPipelineByPropertyName = true)]
        [Alias("DbUser", "User")]
        [ValidateNotNullOrEmpty]
        public string UserName { get; set; } = "";

        /// <summary>Schemas to grant on (default public).</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string[] Schema { get; set; } = { "public" };

        /// <summary>The admin to connect as with a password (the master user).</summary>
        [Parameter]
        [Credential]
        public PSCredential? Credential { get; set; }

        /// <summary>Or an admin that itself logs in with IAM (a member of rds_iam with the rights to grant).</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string? AdminUserName { get; set; }

        /// <summary>Go ahead when the user is the master user or a superuser (rds_iam turns its password login off).</summary>
        [Parameter]
        public SwitchParameter Force { get; set; }

        internal abstract string ActionName { get; }

        internal abstract GrantPlan Plan(Npgsql.NpgsqlConnection admin, System.Threading.CancellationToken ct);

        internal virtual void Decorate(RdsIamGrant grant)
        {
        }

        protected override void ProcessRecord()
        {
            if ((Credential == null) == (AdminUserName == null))
            {
                ThrowTerminatingError(new BastionToolsException(ErrorIds.RdsIamAdminRequired, ErrorCategory.InvalidArgument,
                    "Say how to connect as an admin: -Credential (the master user and its password) or -AdminUserName (an admin that logs in with IAM).",
                    UserName).ToErrorRecord());
            }
            ResolveDatabase();
            var bundle = ResolveTrust();
            GetApi();
            var session = OpenTunnel(ActionName + "-RdsIamUser", out var owns);
            if (session == null) return;

            IamDataSource? admin = null;
            try
            {
                var options = DataSourceOptions(session, bundle, Credential?.UserName ?? AdminUserName!);
                options.StaticPassword = Credential?.GetNetworkCredential().Password;
                options.ApplicationName = "BastionTools " + ActionName + "-RdsIamUser";
                admin = new IamDataSource(options, KeySource(), Redactor);

                const int activity = 2;
                Pump.Post(() => WriteProgress(new ProgressRecord(activity, ActionName + "-RdsIamUser", "Reading the catalog") { PercentComplete = 30 }));
                if (!TryRun(async ct =>
                    {
                        using var conn = await admin.OpenAsync(ct).ConfigureAwait(false);
                        return Plan(conn, ct);
                    }, out var plan))
                {
                    return;
                }
                Pump.Drain();

                if (plan.MissingSchemas.Count > 0 && ActionName == "Grant")
                {
                    WriteWarningSafe("These schemas do not exist, so the grant will fail: " + string.Join(", ", plan.MissingSchemas));
                }
                if (plan.RequiresForce)
                {
                    WriteWarningSafe(plan.ForceReason + " " + GrantPlan.RdsIamPasswordWarning);
                    if (!Force && !MyInvocation.BoundParameters.ContainsKey("WhatIf"))
                    {
                        ThrowTerminatingError(new BastionToolsException(ErrorIds.RdsIamGrantNeedsForce, ErrorCategory.SecurityError,
                            $"{ActionName}ing IAM login for {UserName} needs -Force: {plan.ForceReason}", UserName,
                            "Use a dedicated database user for IAM, or pass -Force if this is really meant.").ToErrorRecord());
                    }
                }

                var grant = new RdsIamGrant { UserName = UserName, Database = Database, Endpoint = DbHost, Action = ActionName };
                Decorate(grant);
                if (plan.IsEmpty)
                {
                    grant.Summary = plan.IsRevoke ? $"No changes: {UserName} has nothing to revoke." : $"No changes: {UserName} already has everything requested.";
                    WriteVerboseSafe(grant.Summary);
                    WriteObject(grant);
                    return;
                }
                // -WhatIf shows the exact SQL and runs none of it.
                if (!ShouldProcess($"{UserName} in {DbHost}/{Database}", $"{ActionName} in one transaction:{System.Environment.NewLine}{plan.Script}")) return;

                Pump.Post(() => WriteProgress(new ProgressRecord(activity, ActionName + "-RdsIamUser", $"Running {plan.Steps.Count} statement(s)") { PercentComplete = 70 }));
                if (!TryRun(async ct =>
                    {
                        using var conn = await admin.OpenAsync(ct).ConfigureAwait(false);
                        try
                        {
                            return await plan.ExecuteAsync(conn, ct).ConfigureAwait(false);
                        }
                        catch (GrantException ex)
                        {
                            throw new BastionToolsException(ErrorIds.RdsIamGrantFailed, ErrorCategory.InvalidOperation,
                                Redactor.Redact(ex.Message), UserName, "Nothing was changed: the transaction was rolled back.", ex);
                        }
                    }, out var result))
                {
                    return;
                }
                Pump.Post(() => WriteProgress(new ProgressRecord(activity, ActionName + "-RdsIamUser", "Done") { RecordType = ProgressRecordType.Completed }));
                Pump.Drain();
                grant.Changed = result.HasChanges;
                grant.Changes = result.Changed.Select(s => s.Description).ToArray();
                grant.Sql = result.Changed.Select(s => s.Sql).ToArray();
                grant.Summary = result.Summary;
                foreach (var c in grant.Changes) WriteVerboseSafe(c);
                WriteObject(grant);
            }
            finally
            {
                admin?.Dispose();
                CloseTunnel(session, owns);
            }
        }
    }

    /// <summary>
    /// Grant-RdsIamUser: makes a database user that logs in with IAM — role (LOGIN), rds_iam, schema usage, table and
    /// sequence privileges, default privileges for future tables — in one transaction, idempotently, and gives the IAM
    /// policy that lets it connect.
    /// </summary>
    [Cmdlet(VerbsSecurity.Grant, "RdsIamUser", DefaultParameterSetName = ParameterSets.Target, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
    [OutputType(typeof(RdsIamGrant))]
    public sealed class GrantRdsIamUserCommand : RdsIamUserCommandBase
    {
        [Parameter]
        public GrantAccess Access { get; set; } = GrantAccess.ReadOnly;

        /// <summary>Table privileges instead of -Access (SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER).</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        [ValidateSet("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", IgnoreCase = true)]
        public string[]? Privilege { get; set; }

        /// <summary>Roles whose future tables the user gets (ALTER DEFAULT PRIVILEGES FOR ROLE); default: the admin.</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string[]? ForRole { get; set; }

        /// <summary>The database's DbiResourceId (db-XXXX…) or an Aurora cluster's DbClusterResourceId (cluster-XXXX…), for the IAM policy in the output; looked up with -DbInstanceIdentifier/-DbClusterIdentifier.</summary>
        [Parameter]
        [ValidatePattern("^(db|cluster)-[A-Z0-9]{8,64}$")]
        public string? DbiResourceId { get; set; }

        /// <summary>The AWS account that owns the database, for the IAM policy.</summary>
        [Parameter]
        [ValidatePattern("^[0-9]{12}$")]
        public string? AccountId { get; set; }

        internal override string ActionName => "Grant";

        internal override GrantPlan Plan(Npgsql.NpgsqlConnection admin, System.Threading.CancellationToken ct)
        {
            var request = new GrantRequest(UserName) { Schemas = Schema, Access = Access, Privileges = Privilege, ForRoles = ForRole };
            try
            {
                return GrantPlanner.PlanAsync(admin, request, ct).GetAwaiter().GetResult();
            }
            catch (ArgumentException ex)
            {
                throw new BastionToolsException(ErrorIds.SqlIdentifierInvalid, ErrorCategory.InvalidArgument, ex.Message, UserName);
            }
            catch (GrantException ex)
            {
                throw new BastionToolsException(ErrorIds.RdsIamGrantFailed, ErrorCategory.InvalidOperation, ex.Message, UserName);
            }
        }

        internal override void Decorate(RdsIamGrant grant)
        {
            // The resource id and account: as given, else from the database looked up (its ARN names the owner), else the
            // caller's account (sts:GetCallerIdentity, which needs no permission).
            var resourceId = DbiResourceId ?? ResolvedDatabase?.Database.ResourceId;
            if (resourceId == null) return;
            var account = AccountId ?? ResolvedDatabase?.Database.AccountId;
            if (account == null)
            {
                if (!TryRun(ct => CallerIdentity.AccountAsync(ApiCredentials!, ApiRegion!, EndpointUrl, ct), out var caller))
                {
                    WriteWarningSafe("The IAM policy is left out: pass -AccountId with the account that owns the database.");
                    return;
                }
                account = caller;
                WriteVerboseSafe($"Account {account}, from sts:GetCallerIdentity (the database is assumed to be in the caller's account; pass -AccountId otherwise).");
            }
            var region = RdsEndpoint.InferRegion(DbHost) ?? ApiRegion!;
            grant.ResourceArn = IamPolicy.ConnectResourceArn(null, region, account, resourceId, UserName);
            grant.PolicyJson = IamPolicy.ConnectPolicyJson(null, region, account, resourceId, UserName);
        }
    }

    /// <summary>Revoke-RdsIamUser: undoes Grant-RdsIamUser (privileges, default privileges, rds_iam); drops the role only with -Drop.</summary>
    [Cmdlet(VerbsSecurity.Revoke, "RdsIamUser", DefaultParameterSetName = ParameterSets.Target, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.High)]
    [OutputType(typeof(RdsIamGrant))]
    public sealed class RevokeRdsIamUserCommand : RdsIamUserCommandBase
    {
        /// <summary>Roles whose default privileges to revoke (default: every role with entries for the user).</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string[]? ForRole { get; set; }

        /// <summary>Also drop the role (refused when it owns objects).</summary>
        [Parameter]
        public SwitchParameter Drop { get; set; }

        internal override string ActionName => "Revoke";

        internal override GrantPlan Plan(Npgsql.NpgsqlConnection admin, System.Threading.CancellationToken ct)
        {
            var request = new RevokeRequest(UserName) { Schemas = Schema, ForRoles = ForRole, Drop = Drop };
            try
            {
                return GrantPlanner.PlanAsync(admin, request, ct).GetAwaiter().GetResult();
            }
            catch (ArgumentException ex)
            {
                throw new BastionToolsException(ErrorIds.SqlIdentifierInvalid, ErrorCategory.InvalidArgument, ex.Message, UserName);
            }
            catch (GrantException ex)
            {
                throw new BastionToolsException(ErrorIds.RdsIamGrantFailed, ErrorCategory.InvalidOperation, ex.Message, UserName);
            }
        }
    }
}
