using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Npgsql;

namespace BastionTools.Postgres
{
    internal enum GrantStepKind
    {
        CreateRole,
        EnableLogin,
        GrantIamRole,
        GrantSchema,
        GrantTables,
        GrantSequences,
        GrantDefaultPrivileges,
        RevokeDefaultPrivileges,
        RevokeSequences,
        RevokeTables,
        RevokeSchema,
        RevokeIamRole,
        DropRole,
    }

    /// <summary>One statement of a plan: what it does, for people, and the exact SQL that does it.</summary>
    internal sealed class GrantStep
    {
        public GrantStep(GrantStepKind kind, string description, string sql, string? schema = null, string? forRole = null,
            IReadOnlyList<string>? privileges = null, int objectCount = 0)
        {
            Kind = kind;
            Description = description;
            Sql = sql;
            Schema = schema;
            ForRole = forRole;
            Privileges = privileges ?? Array.Empty<string>();
            ObjectCount = objectCount;
        }

        public GrantStepKind Kind { get; }

        /// <summary>E.g. "grant SELECT on 3 tables in public".</summary>
        public string Description { get; }

        /// <summary>The statement, exactly as executed (no trailing semicolon).</summary>
        public string Sql { get; }

        /// <summary>The schema the step is about (unquoted), or null.</summary>
        public string? Schema { get; }

        /// <summary>The role of an ALTER DEFAULT PRIVILEGES step (unquoted), or null.</summary>
        public string? ForRole { get; }

        public IReadOnlyList<string> Privileges { get; }

        /// <summary>How many tables or sequences lacked (grant) or held (revoke) the privileges; 0 for other steps.</summary>
        public int ObjectCount { get; }

        public override string ToString() => Description;
    }

    /// <summary>
    /// What a grant or revoke would change, computed from the catalog: only the missing (grant) or present (revoke)
    /// pieces, in execution order. An empty plan means there is nothing to do. Planning changes nothing (-WhatIf shows
    /// <see cref="Script"/>); <see cref="ExecuteAsync"/> applies the steps in one transaction.
    /// </summary>
    internal sealed class GrantPlan
    {
        /// <summary>The warning for the cmdlet: rds_iam turns password authentication off for its members.</summary>
        public const string RdsIamPasswordWarning =
            "Members of rds_iam can only log in with an IAM authentication token: password login stops working for this user.";

        private readonly Func<NpgsqlConnection, CancellationToken, Task<GrantPlan>> _replan;

        internal GrantPlan(bool isRevoke, string userName, string connectedUser, IReadOnlyList<GrantStep> steps, bool roleExists,
            bool targetIsSuperuser, bool targetIsConnectedUser, bool targetIsRdsSuperuser, IReadOnlyList<string> missingSchemas,
            Func<NpgsqlConnection, CancellationToken, Task<GrantPlan>> replan, IReadOnlyList<string>? targetMembers = null, string iamRoleName = "rds_iam")
        {
            TargetMembers = targetMembers ?? Array.Empty<string>();
            IamRoleName = iamRoleName;
            IsRevoke = isRevoke;
            UserName = userName;
            ConnectedUser = connectedUser;
            Steps = steps;
            RoleExists = roleExists;
            TargetIsSuperuser = targetIsSuperuser;
            TargetIsConnectedUser = targetIsConnectedUser;
            TargetIsRdsSuperuser = targetIsRdsSuperuser;
            MissingSchemas = missingSchemas;
            _replan = replan;
        }

        public bool IsRevoke { get; }
        public string UserName { get; }

        /// <summary>current_user of the planning connection (the admin).</summary>
        public string ConnectedUser { get; }

        public IReadOnlyList<GrantStep> Steps { get; }
        public bool IsEmpty => Steps.Count == 0;

        /// <summary>The role existed when planned.</summary>
        public bool RoleExists { get; }

        /// <summary>The target role is a superuser (rolsuper).</summary>
        public bool TargetIsSuperuser { get; }

        /// <summary>The target role is the connected role (current_user or session_user): on RDS, typically the master user.</summary>
        public bool TargetIsConnectedUser { get; }

        /// <summary>The target role is a member of rds_superuser (the RDS master user is).</summary>
        public bool TargetIsRdsSuperuser { get; }

        /// <summary>The roles that are direct members of the target role (they inherit what it is granted); empty for a new role and for revokes.</summary>
        public IReadOnlyList<string> TargetMembers { get; }

        /// <summary>The role whose membership means IAM login (rds_iam).</summary>
        public string IamRoleName { get; }

        /// <summary>The plan adds an existing role to rds_iam: its password login stops working.</summary>
        public bool ExistingRoleJoinsIamRole => !IsRevoke && RoleExists && Steps.Any(s => s.Kind == GrantStepKind.GrantIamRole);

        /// <summary>The plan gives an existing NOLOGIN role (typically a group role) LOGIN.</summary>
        public bool ExistingRoleGainsLogin => !IsRevoke && RoleExists && Steps.Any(s => s.Kind == GrantStepKind.EnableLogin);

        /// <summary>
        /// A grant that changes what an existing role is: it joins rds_iam, gains LOGIN, or has members that inherit
        /// what is granted. Re-granting to a role already in rds_iam with LOGIN and no members is not such a change.
        /// </summary>
        public bool ChangesExistingRole => !IsRevoke && !IsEmpty && RoleExists && (ExistingRoleJoinsIamRole || ExistingRoleGainsLogin || TargetMembers.Count > 0);

        /// <summary>
        /// True when the plan changes something and the target is a superuser, rds_superuser member or the connected
        /// role, or (for a grant) an existing role whose nature changes (<see cref="ChangesExistingRole"/>): the cmdlet
        /// refuses without -Force and warns with <see cref="ForceReason"/> (granting rds_iam to the master user or to
        /// an application role that logs in with a password locks its password login out).
        /// </summary>
        public bool RequiresForce => !IsEmpty && (TargetIsSuperuser || TargetIsConnectedUser || TargetIsRdsSuperuser || ChangesExistingRole);

        /// <summary>Why <see cref="RequiresForce"/> is set, saying exactly what the plan would change; null when it is not.</summary>
        public string? ForceReason
        {
            get
            {
                if (!RequiresForce) return null;
                var user = PgIdentifier.Quote(UserName);
                var sentences = new List<string>();
                var reasons = new List<string>();
                if (TargetIsConnectedUser) reasons.Add("is the connected role (the master user?)");
                if (TargetIsSuperuser) reasons.Add("is a superuser");
                if (TargetIsRdsSuperuser) reasons.Add("is a member of rds_superuser");
                if (reasons.Count > 0) sentences.Add("The role " + user + " " + string.Join(" and ", reasons) + ".");
                if (ChangesExistingRole)
                {
                    var iam = PgIdentifier.Quote(IamRoleName);
                    var changes = new List<string>();
                    if (ExistingRoleJoinsIamRole)
                    {
                        changes.Add("it joins " + iam + ", so its password login stops working (only IAM authentication tokens are accepted)");
                    }

                    if (ExistingRoleGainsLogin) changes.Add("it gains LOGIN (it could not log in before)");
                    if (TargetMembers.Count > 0)
                    {
                        const int shown = 10;
                        var names = string.Join(", ", TargetMembers.Take(shown).Select(PgIdentifier.Quote))
                            + (TargetMembers.Count > shown ? " and " + (TargetMembers.Count - shown) + " more" : "");
                        changes.Add("its " + TargetMembers.Count + (TargetMembers.Count == 1 ? " member role (" : " member roles (") + names
                            + ") inherit" + (TargetMembers.Count == 1 ? "s" : "") + " every privilege granted here"
                            + (ExistingRoleJoinsIamRole ? " and become" + (TargetMembers.Count == 1 ? "s an indirect member" : " indirect members") + " of " + iam : ""));
                    }

                    sentences.Add((reasons.Count > 0 ? "It" : "The role " + user) + " already exists, and this grant changes it: " + string.Join("; ", changes) + ".");
                }

                return string.Join(" ", sentences);
            }
        }

        /// <summary>Schemas named in the request that do not exist; executing a grant plan fails on them (SQLSTATE 3F000), a revoke skips them.</summary>
        public IReadOnlyList<string> MissingSchemas { get; }

        /// <summary>
        /// The whole plan as the script that runs: BEGIN, each statement followed by ";", COMMIT, one a line; empty when
        /// there is nothing to do. <see cref="ExecuteAsync"/> runs exactly these statements in one transaction. Every
        /// name is written by <see cref="PgIdentifier.Quote"/>, so a name with a control, bidi or other invisible
        /// character appears as a U&amp;"..." escape: the script is plain printable text.
        /// </summary>
        public string Script
        {
            get
            {
                if (IsEmpty) return "";
                var sb = new StringBuilder();
                sb.Append("BEGIN;\n");
                foreach (var step in Steps) sb.Append(step.Sql).Append(';').Append('\n');
                sb.Append("COMMIT;\n");
                return sb.ToString();
            }
        }

        /// <summary>
        /// Runs every step in one transaction: on an error (or a warning that PostgreSQL did not grant or revoke
        /// everything, SQLSTATE 01007/01006) everything is rolled back and <see cref="GrantException"/> names the step
        /// and the SQLSTATE. Before committing, the catalog is inspected again in the same transaction; anything that did
        /// not take effect (e.g. a privilege granted by another role, which REVOKE does not remove) also rolls back.
        /// </summary>
        public async Task<GrantResult> ExecuteAsync(NpgsqlConnection connection, CancellationToken cancellationToken = default)
        {
            if (connection is null) throw new ArgumentNullException(nameof(connection));
            if (IsEmpty) return new GrantResult(this, Array.Empty<GrantStep>());

            var notices = new List<PostgresNotice>();
            NoticeEventHandler onNotice = (_, e) =>
            {
                lock (notices) notices.Add(e.Notice);
            };
            connection.Notice += onNotice;
            try
            {
                using var transaction = connection.BeginTransaction();
                foreach (var step in Steps)
                {
                    lock (notices) notices.Clear();
                    try
                    {
                        using var command = new NpgsqlCommand(step.Sql, connection, transaction);
                        await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                    }
                    catch (PostgresException ex)
                    {
                        await RollbackQuietly(transaction).ConfigureAwait(false);
                        var detail = ex.Detail;
                        // Npgsql replaces the detail with a notice unless the connection string has Include Error Detail.
                        var showDetail = !string.IsNullOrEmpty(detail) && !detail!.StartsWith("Detail redacted", StringComparison.Ordinal);
                        // The server's text quotes names raw: make it printable like the SQL.
                        var text = PgIdentifier.Printable(ex.MessageText + (showDetail ? " (" + detail!.Replace("\n", "; ") + ")" : ""));
                        throw new GrantException("The step '" + step.Description + "' failed with SQLSTATE " + ex.SqlState + ": " + text
                            + ". Nothing was changed: the transaction was rolled back.", ex.SqlState, step, ex);
                    }

                    PostgresNotice? incomplete;
                    lock (notices) incomplete = notices.FirstOrDefault(n => n.SqlState == "01007" || n.SqlState == "01006");
                    if (incomplete != null)
                    {
                        await RollbackQuietly(transaction).ConfigureAwait(false);
                        throw new GrantException("The step '" + step.Description + "' was not fully applied (SQLSTATE " + incomplete.SqlState + "): "
                            + PgIdentifier.Printable(incomplete.MessageText) + ". The connected role " + PgIdentifier.Quote(ConnectedUser)
                            + " must own the objects or hold the privileges WITH GRANT OPTION. Nothing was changed: the transaction was rolled back.",
                            incomplete.SqlState, step, null);
                    }
                }

                var residual = await _replan(connection, cancellationToken).ConfigureAwait(false);
                if (!residual.IsEmpty)
                {
                    await RollbackQuietly(transaction).ConfigureAwait(false);
                    var why = IsRevoke
                        ? " REVOKE only removes what the connected role granted (or, for a superuser, what the owner granted); connect as the role that granted these."
                        : " Check that the connected role may grant them.";
                    throw new GrantException("After executing, the catalog still needs: " + string.Join("; ", residual.Steps.Select(s => s.Description)) + "." + why
                        + " Nothing was changed: the transaction was rolled back.", null, residual.Steps[0], null);
                }

                await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                connection.Notice -= onNotice;
            }

            return new GrantResult(this, Steps);
        }

        private static async Task RollbackQuietly(NpgsqlTransaction transaction)
        {
            try
            {
                await transaction.RollbackAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is NpgsqlException || ex is InvalidOperationException)
            {
                // A broken connection has already lost the transaction: nothing was committed.
            }
        }
    }

    /// <summary>What an executed plan changed.</summary>
    internal sealed class GrantResult
    {
        internal GrantResult(GrantPlan plan, IReadOnlyList<GrantStep> changed)
        {
            Plan = plan;
            Changed = changed;
        }

        public GrantPlan Plan { get; }

        /// <summary>The steps that ran (all of the plan's, committed together); empty when there was nothing to do.</summary>
        public IReadOnlyList<GrantStep> Changed { get; }

        public bool HasChanges => Changed.Count > 0;

        /// <summary>One line for people: "no changes: ..." or "n changes: ...".</summary>
        public string Summary
        {
            get
            {
                var user = PgIdentifier.Quote(Plan.UserName);
                if (!HasChanges)
                {
                    if (Plan.IsRevoke) return "No changes: " + user + " has nothing to revoke" + (Plan.RoleExists ? "." : " (the role does not exist).");
                    return "No changes: " + user + " already has everything requested.";
                }

                return Changed.Count + (Changed.Count == 1 ? " change: " : " changes: ") + string.Join("; ", Changed.Select(s => s.Description)) + ".";
            }
        }
    }

    /// <summary>A grant or revoke that cannot be planned or failed while executing (then rolled back).</summary>
    internal sealed class GrantException : Exception
    {
        public GrantException(string message, string? sqlState, GrantStep? step, Exception? inner)
            : base(message, inner)
        {
            SqlState = sqlState;
            Step = step;
        }

        /// <summary>PostgreSQL's SQLSTATE (e.g. 3F000 for a missing schema), or null when not from the server.</summary>
        public string? SqlState { get; }

        /// <summary>The step that failed, or null.</summary>
        public GrantStep? Step { get; }
    }
}
