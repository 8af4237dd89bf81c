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

        /// <summary>
        /// Go ahead when the user is the master user or a superuser, or (Grant) an existing role that would join rds_iam
        /// (its password login stops), gain LOGIN, or pass what it is granted on to member roles.
        /// </summary>
        [Parameter]
        public SwitchParameter Force { get; set; }

        internal abstract string ActionName { get; }

        internal abstract GrantPlan Plan(Npgsql.NpgsqlConnection admin, System.Threading.CancellationToken ct);

        /// <summary>Checks the names (and refuses system schemas) before a tunnel is opened; throws <see cref="BastionToolsException"/>.</summary>
        internal abstract void ValidateRequest();

        /// <summary>The ConfirmImpact of the cmdlet's attribute.</summary>
        internal abstract ConfirmImpact Impact { get; }

        internal static BastionToolsException Refused(ArgumentException ex, string target) => ex is SystemSchemaException
            ? new BastionToolsException(ErrorIds.RdsIamSystemSchema, ErrorCategory.InvalidArgument, ex.Message, target,
                "Name the application schemas that hold your tables with -Schema (default: public).")
            : new BastionToolsException(ErrorIds.SqlIdentifierInvalid, ErrorCategory.InvalidArgument, ex.Message, target);

        /// <summary>-WhatIf is on (the switch or $WhatIfPreference).</summary>
        private bool WhatIfRequested()
        {
            if (MyInvocation.BoundParameters.TryGetValue("WhatIf", out var w)) return w is SwitchParameter sw ? sw.IsPresent : LanguagePrimitives.IsTrue(w);
            return LanguagePrimitives.IsTrue(SessionState.PSVariable.GetValue("WhatIfPreference"));
        }

        /// <summary>ShouldProcess will ask: -Confirm, or the cmdlet's impact reaches $ConfirmPreference.</summary>
        private bool ConfirmWillAsk()
        {
            if (MyInvocation.BoundParameters.TryGetValue("Confirm", out var c)) return c is SwitchParameter sw ? sw.IsPresent : LanguagePrimitives.IsTrue(c);
            var preference = SessionState.PSVariable.GetValue("ConfirmPreference");
            if (preference == null || !LanguagePrimitives.TryConvertTo<ConfirmImpact>(preference, out var level)) level = ConfirmImpact.High;
            return level != ConfirmImpact.None && Impact >= level;
        }

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
            ValidateRequest();
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

                var qUser = PgIdentifier.Quote(UserName);
                if (plan.MissingSchemas.Count > 0 && ActionName == "Grant")
                {
                    WriteWarningSafe("These schemas do not exist, so the grant will fail: " + PgIdentifier.QuoteList(plan.MissingSchemas));
                }
                if (plan.RequiresForce)
                {
                    WriteWarningSafe(plan.ForceReason!);
                    if (!Force && !WhatIfRequested())
                    {
                        ThrowTerminatingError(new BastionToolsException(ErrorIds.RdsIamGrantNeedsForce, ErrorCategory.SecurityError,
                            $"{ActionName}-RdsIamUser changed nothing: {plan.ForceReason} Pass -Force to make these changes.", UserName,
                            "Use a new, dedicated database user for IAM login, or pass -Force if these changes are meant.").ToErrorRecord());
                    }
                }

                var grant = new RdsIamGrant { UserName = UserName, Database = Database, Endpoint = DbHost, Action = ActionName };
                Decorate(grant);
                if (plan.IsEmpty)
                {
                    grant.Summary = new GrantResult(plan, Array.Empty<GrantStep>()).Summary;
                    WriteVerboseSafe(grant.Summary);
                    WriteObject(grant);
                    return;
                }

                // What runs is the script, printed on its own (names with control or bidi characters as U&"..." escapes), not
                // inside the ShouldProcess text: to the host (the Information stream, tag PSHOST, like Write-Host) when
                // -WhatIf or a confirmation prompt shows it, else to Verbose.
                var script = plan.Script;
                if (WhatIfRequested() || ConfirmWillAsk())
                {
                    WriteInformation(new HostInformationMessage { Message = script.TrimEnd('\n'), NoNewLine = false }, new[] { "PSHOST", "BastionTools.Script" });
                }
                else
                {
                    WriteVerboseSafe("The script (run in one transaction):" + System.Environment.NewLine + script.TrimEnd('\n'));
                }

                var where = PgIdentifier.Printable(DbHost) + "/" + PgIdentifier.Printable(Database);
                var action = $"{ActionName}: run the script above ({plan.Steps.Count} statement{(plan.Steps.Count == 1 ? "" : "s")} in one transaction)";
                if (!ShouldProcess($"{qUser} in {where}", action)) return;

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

        internal override ConfirmImpact Impact => ConfirmImpact.Medium;

        private GrantRequest Request() => new GrantRequest(UserName) { Schemas = Schema, Access = Access, Privileges = Privilege, ForRoles = ForRole };

        internal override void ValidateRequest()
        {
            try
            {
                Request().Validate();
            }
            catch (ArgumentException ex)
            {
                ThrowTerminatingError(Refused(ex, UserName).ToErrorRecord());
            }
        }

        internal override GrantPlan Plan(Npgsql.NpgsqlConnection admin, System.Threading.CancellationToken ct)
        {
            var request = Request();
            try
            {
                return GrantPlanner.PlanAsync(admin, request, ct).GetAwaiter().GetResult();
            }
            catch (ArgumentException ex)
            {
                throw Refused(ex, UserName);
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

        internal override ConfirmImpact Impact => ConfirmImpact.High;

        private RevokeRequest Request() => new RevokeRequest(UserName) { Schemas = Schema, ForRoles = ForRole, Drop = Drop };

        internal override void ValidateRequest()
        {
            try
            {
                Request().Validate();
            }
            catch (ArgumentException ex)
            {
                ThrowTerminatingError(Refused(ex, UserName).ToErrorRecord());
            }
        }

        internal override GrantPlan Plan(Npgsql.NpgsqlConnection admin, System.Threading.CancellationToken ct)
        {
            var request = Request();
            try
            {
                return GrantPlanner.PlanAsync(admin, request, ct).GetAwaiter().GetResult();
            }
            catch (ArgumentException ex)
            {
                throw Refused(ex, UserName);
            }
            catch (GrantException ex)
            {
                throw new BastionToolsException(ErrorIds.RdsIamGrantFailed, ErrorCategory.InvalidOperation, ex.Message, UserName);
            }
        }
    }
}
