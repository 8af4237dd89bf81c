using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Npgsql;
using NpgsqlTypes;

namespace BastionTools.Postgres
{
    /// <summary>
    /// Plans Grant-RdsIamUser / Revoke-RdsIamUser by reading the catalog of the connected database (parameterized
    /// queries only; nothing is changed). Every name in the generated SQL goes through <see cref="PgIdentifier.Quote"/>.
    /// Privileges are compared with the role's own ACL entries (aclexplode of the object's ACL, or of acldefault when
    /// it has none), not with has_*_privilege: what PUBLIC or another role confers is not counted, so the grant is
    /// explicit and a revoke removes exactly those entries.
    /// </summary>
    internal static class GrantPlanner
    {
        /// <summary>Plans a grant: only what is missing, in order (role, rds_iam, schema, tables, sequences, default privileges).</summary>
        public static async Task<GrantPlan> PlanAsync(NpgsqlConnection admin, GrantRequest request, CancellationToken cancellationToken = default)
        {
            if (admin is null) throw new ArgumentNullException(nameof(admin));
            if (request is null) throw new ArgumentNullException(nameof(request));
            var privileges = request.Validate();
            var schemas = request.Schemas.Distinct(StringComparer.Ordinal).ToList();
            var forRolesRequested = request.ForRoles?.Distinct(StringComparer.Ordinal).ToList();

            async Task<GrantPlan> Plan(NpgsqlConnection connection, CancellationToken ct)
            {
                var catalog = new Catalog(connection);
                var (currentUser, sessionUser) = await catalog.ConnectedAsync(ct).ConfigureAwait(false);
                var user = request.UserName;
                var qUser = PgIdentifier.Quote(user);
                var role = await catalog.RoleAsync(user, ct).ConfigureAwait(false);
                var iam = await catalog.RoleAsync(request.IamRoleName, ct).ConfigureAwait(false);
                if (iam == null)
                {
                    throw new GrantException("The role " + PgIdentifier.Quote(request.IamRoleName) + " does not exist in this cluster. RDS and Aurora PostgreSQL have it; "
                        + "on other servers create it first (CREATE ROLE " + PgIdentifier.Quote(request.IamRoleName) + " NOLOGIN).", null, null, null);
                }

                var steps = new List<GrantStep>();
                if (role == null)
                {
                    steps.Add(new GrantStep(GrantStepKind.CreateRole, "create role " + qUser + " (LOGIN)", "CREATE ROLE " + qUser + " LOGIN"));
                }
                else if (!role.CanLogin)
                {
                    steps.Add(new GrantStep(GrantStepKind.EnableLogin, "enable LOGIN for role " + qUser, "ALTER ROLE " + qUser + " LOGIN"));
                }

                var qIam = PgIdentifier.Quote(request.IamRoleName);
                if (role == null || !await catalog.IsDirectMemberAsync(iam.Oid, role.Oid, ct).ConfigureAwait(false))
                {
                    steps.Add(new GrantStep(GrantStepKind.GrantIamRole, "grant " + qIam, "GRANT " + qIam + " TO " + qUser));
                }

                var forRoles = forRolesRequested ?? new List<string> { currentUser };
                var missingSchemas = new List<string>();
                var schemaSteps = new List<GrantStep>();
                var tableSteps = new List<GrantStep>();
                var sequenceSteps = new List<GrantStep>();
                var defaultSteps = new List<GrantStep>();
                foreach (var schema in schemas)
                {
                    var qSchema = PgIdentifier.Quote(schema);
                    var ns = await catalog.SchemaAsync(schema, role?.Oid, ct).ConfigureAwait(false);
                    if (ns == null) missingSchemas.Add(schema);

                    var missingSchemaPrivileges = Missing(privileges.Schema, ns?.Privileges);
                    if (missingSchemaPrivileges.Count > 0)
                    {
                        var list = string.Join(", ", missingSchemaPrivileges);
                        schemaSteps.Add(new GrantStep(GrantStepKind.GrantSchema, "grant " + list + " on schema " + qSchema,
                            "GRANT " + list + " ON SCHEMA " + qSchema + " TO " + qUser, schema, null, missingSchemaPrivileges));
                    }

                    var relations = ns == null ? new List<Relation>() : await catalog.RelationsAsync(ns.Oid, role?.Oid, ct).ConfigureAwait(false);
                    AddObjectGrant(tableSteps, GrantStepKind.GrantTables, "TABLES", "table", relations.Where(r => !r.IsSequence), privileges.Table, schema, qSchema, qUser);
                    AddObjectGrant(sequenceSteps, GrantStepKind.GrantSequences, "SEQUENCES", "sequence", relations.Where(r => r.IsSequence), privileges.Sequence, schema, qSchema, qUser);

                    var defaults = ns == null || role == null ? new List<DefaultAcl>() : await catalog.DefaultAclsAsync(ns.Oid, role.Oid, ct).ConfigureAwait(false);
                    foreach (var forRole in forRoles)
                    {
                        // The owner of future objects has every privilege on them anyway.
                        if (string.Equals(forRole, user, StringComparison.Ordinal)) continue;
                        var qFor = PgIdentifier.Quote(forRole);
                        var objects = new[] { ("r", "TABLES", "tables", privileges.Table), ("S", "SEQUENCES", "sequences", privileges.Sequence) };
                        foreach (var (objType, keyword, noun, wanted) in objects)
                        {
                            var have = defaults.Where(d => d.ForRole == forRole && d.ObjectType == objType).Select(d => d.Privilege).ToList();
                            var missing = Missing(wanted, have);
                            if (missing.Count == 0) continue;
                            var list = string.Join(", ", missing);
                            defaultSteps.Add(new GrantStep(GrantStepKind.GrantDefaultPrivileges,
                                "default privileges for role " + qFor + " in " + qSchema + ": " + list + " on " + noun,
                                "ALTER DEFAULT PRIVILEGES FOR ROLE " + qFor + " IN SCHEMA " + qSchema + " GRANT " + list + " ON " + keyword + " TO " + qUser,
                                schema, forRole, missing));
                        }
                    }
                }

                steps.AddRange(schemaSteps);
                steps.AddRange(tableSteps);
                steps.AddRange(sequenceSteps);
                steps.AddRange(defaultSteps);
                var rdsSuper = await catalog.IsRdsSuperuserAsync(user, ct).ConfigureAwait(false);
                var members = role == null ? new List<string>() : await catalog.MembersAsync(role.Oid, ct).ConfigureAwait(false);
                return new GrantPlan(false, user, currentUser, steps, role != null, role?.Super ?? false,
                    user == currentUser || user == sessionUser, rdsSuper, missingSchemas, Plan, members, request.IamRoleName);
            }

            return await Plan(admin, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>
        /// Plans a revoke: default privileges, sequence and table privileges, schema privileges, rds_iam membership
        /// held by the role in the given schemas, then DROP ROLE when asked (refused when the role owns objects).
        /// A role that does not exist gives an empty plan.
        /// </summary>
        public static async Task<GrantPlan> PlanAsync(NpgsqlConnection admin, RevokeRequest request, CancellationToken cancellationToken = default)
        {
            if (admin is null) throw new ArgumentNullException(nameof(admin));
            if (request is null) throw new ArgumentNullException(nameof(request));
            request.Validate();
            var schemas = request.Schemas.Distinct(StringComparer.Ordinal).ToList();
            var forRolesRequested = request.ForRoles == null ? null : new HashSet<string>(request.ForRoles, StringComparer.Ordinal);

            async Task<GrantPlan> Plan(NpgsqlConnection connection, CancellationToken ct)
            {
                var catalog = new Catalog(connection);
                var (currentUser, sessionUser) = await catalog.ConnectedAsync(ct).ConfigureAwait(false);
                var user = request.UserName;
                var qUser = PgIdentifier.Quote(user);
                var role = await catalog.RoleAsync(user, ct).ConfigureAwait(false);
                var steps = new List<GrantStep>();
                var missingSchemas = new List<string>();
                var isConnected = user == currentUser || user == sessionUser;
                if (role == null)
                {
                    return new GrantPlan(true, user, currentUser, steps, false, false, isConnected, false, missingSchemas, Plan);
                }

                var defaultSteps = new List<GrantStep>();
                var sequenceSteps = new List<GrantStep>();
                var tableSteps = new List<GrantStep>();
                var schemaSteps = new List<GrantStep>();
                foreach (var schema in schemas)
                {
                    var qSchema = PgIdentifier.Quote(schema);
                    var ns = await catalog.SchemaAsync(schema, role.Oid, ct).ConfigureAwait(false);
                    if (ns == null)
                    {
                        missingSchemas.Add(schema);
                        continue;
                    }

                    var defaults = await catalog.DefaultAclsAsync(ns.Oid, role.Oid, ct).ConfigureAwait(false);
                    foreach (var group in defaults.GroupBy(d => (d.ForRole, d.ObjectType)).OrderBy(g => g.Key.ForRole, StringComparer.Ordinal).ThenByDescending(g => g.Key.ObjectType, StringComparer.Ordinal))
                    {
                        if (forRolesRequested != null && !forRolesRequested.Contains(group.Key.ForRole)) continue;
                        var (keyword, noun, order) = group.Key.ObjectType == "S"
                            ? ("SEQUENCES", "sequences", ResolvedPrivileges.AllSequencePrivileges)
                            : ("TABLES", "tables", ResolvedPrivileges.AllTablePrivileges);
                        var present = Present(order, group.Select(d => d.Privilege));
                        var list = string.Join(", ", present);
                        var qFor = PgIdentifier.Quote(group.Key.ForRole);
                        defaultSteps.Add(new GrantStep(GrantStepKind.RevokeDefaultPrivileges,
                            "revoke default privileges for role " + qFor + " in " + qSchema + ": " + list + " on " + noun,
                            "ALTER DEFAULT PRIVILEGES FOR ROLE " + qFor + " IN SCHEMA " + qSchema + " REVOKE " + list + " ON " + keyword + " FROM " + qUser,
                            schema, group.Key.ForRole, present));
                    }

                    var relations = await catalog.RelationsAsync(ns.Oid, role.Oid, ct).ConfigureAwait(false);
                    AddObjectRevoke(sequenceSteps, GrantStepKind.RevokeSequences, "SEQUENCE", "sequence", relations.Where(r => r.IsSequence), ResolvedPrivileges.AllSequencePrivileges, schema, qSchema, qUser);
                    AddObjectRevoke(tableSteps, GrantStepKind.RevokeTables, "TABLE", "table", relations.Where(r => !r.IsSequence), ResolvedPrivileges.AllTablePrivileges, schema, qSchema, qUser);

                    if (!ns.OwnedByUser)
                    {
                        var present = Present(ResolvedPrivileges.AllSchemaPrivileges, ns.Privileges);
                        if (present.Count > 0)
                        {
                            var list = string.Join(", ", present);
                            schemaSteps.Add(new GrantStep(GrantStepKind.RevokeSchema, "revoke " + list + " on schema " + qSchema,
                                "REVOKE " + list + " ON SCHEMA " + qSchema + " FROM " + qUser, schema, null, present));
                        }
                    }
                }

                steps.AddRange(defaultSteps);
                steps.AddRange(sequenceSteps);
                steps.AddRange(tableSteps);
                steps.AddRange(schemaSteps);
                var iam = await catalog.RoleAsync(request.IamRoleName, ct).ConfigureAwait(false);
                var qIam = PgIdentifier.Quote(request.IamRoleName);
                if (iam != null && await catalog.IsDirectMemberAsync(iam.Oid, role.Oid, ct).ConfigureAwait(false))
                {
                    steps.Add(new GrantStep(GrantStepKind.RevokeIamRole, "revoke " + qIam, "REVOKE " + qIam + " FROM " + qUser));
                }

                if (request.Drop)
                {
                    var owned = await catalog.OwnedObjectsAsync(role.Oid, ct).ConfigureAwait(false);
                    if (owned.Count > 0)
                    {
                        throw new GrantException("The role " + qUser + " owns objects (" + string.Join(", ", owned.Select(o => o.Count + " in " + PgIdentifier.Printable(o.Where))) + "), so it is not dropped. "
                            + "Reassign or drop them first (REASSIGN OWNED BY " + qUser + " TO <role>; DROP OWNED BY " + qUser + " in each database), then run again.", null, null, null);
                    }

                    steps.Add(new GrantStep(GrantStepKind.DropRole, "drop role " + qUser, "DROP ROLE " + qUser));
                }

                var rdsSuper = await catalog.IsRdsSuperuserAsync(user, ct).ConfigureAwait(false);
                return new GrantPlan(true, user, currentUser, steps, true, role.Super, isConnected, rdsSuper, missingSchemas, Plan);
            }

            return await Plan(admin, cancellationToken).ConfigureAwait(false);
        }

        private static void AddObjectGrant(List<GrantStep> steps, GrantStepKind kind, string keyword, string noun, IEnumerable<Relation> relations,
            IReadOnlyList<string> wanted, string schema, string qSchema, string qUser)
        {
            if (wanted.Count == 0) return;
            var lacking = 0;
            var missing = new HashSet<string>(StringComparer.Ordinal);
            foreach (var relation in relations)
            {
                var m = Missing(wanted, relation.Privileges);
                if (m.Count == 0) continue;
                lacking++;
                missing.UnionWith(m);
            }

            if (lacking == 0) return;
            var ordered = wanted.Where(missing.Contains).ToList();
            var list = string.Join(", ", ordered);
            steps.Add(new GrantStep(kind, "grant " + list + " on " + Count(lacking, noun) + " in " + qSchema,
                "GRANT " + list + " ON ALL " + keyword + " IN SCHEMA " + qSchema + " TO " + qUser, schema, null, ordered, lacking));
        }

        /// <summary>Revokes name the objects that hold privileges (not ALL ... IN SCHEMA): objects the user owns are left alone, and so are objects the admin cannot touch.</summary>
        private static void AddObjectRevoke(List<GrantStep> steps, GrantStepKind kind, string keyword, string noun, IEnumerable<Relation> relations,
            IReadOnlyList<string> order, string schema, string qSchema, string qUser)
        {
            var holding = relations.Where(r => !r.OwnedByUser && r.Privileges.Count > 0).ToList();
            if (holding.Count == 0) return;
            var present = Present(order, holding.SelectMany(r => r.Privileges));
            var list = string.Join(", ", present);
            var names = string.Join(", ", holding.Select(r => qSchema + "." + PgIdentifier.Quote(r.Name)));
            steps.Add(new GrantStep(kind, "revoke " + list + " on " + Count(holding.Count, noun) + " in " + qSchema,
                "REVOKE " + list + " ON " + keyword + " " + names + " FROM " + qUser, schema, null, present, holding.Count));
        }

        private static string Count(int n, string noun) => n.ToString(CultureInfo.InvariantCulture) + " " + noun + (n == 1 ? "" : "s");

        private static List<string> Missing(IReadOnlyList<string> wanted, IEnumerable<string>? have)
        {
            var set = new HashSet<string>(have ?? Array.Empty<string>(), StringComparer.Ordinal);
            return wanted.Where(p => !set.Contains(p)).ToList();
        }

        private static List<string> Present(IReadOnlyList<string> order, IEnumerable<string> have)
        {
            var set = new HashSet<string>(have, StringComparer.Ordinal);
            var result = order.Where(set.Contains).ToList();
            // Anything newer than this list (e.g. MAINTAIN on PostgreSQL 17) is revoked too.
            result.AddRange(set.Where(p => !order.Contains(p)).OrderBy(p => p, StringComparer.Ordinal));
            return result;
        }

        private sealed class RoleInfo
        {
            public RoleInfo(uint oid, bool canLogin, bool super)
            {
                Oid = oid;
                CanLogin = canLogin;
                Super = super;
            }

            public uint Oid { get; }
            public bool CanLogin { get; }
            public bool Super { get; }
        }

        private sealed class SchemaInfo
        {
            public SchemaInfo(uint oid, bool ownedByUser, IReadOnlyList<string> privileges)
            {
                Oid = oid;
                OwnedByUser = ownedByUser;
                Privileges = privileges;
            }

            public uint Oid { get; }
            public bool OwnedByUser { get; }
            public IReadOnlyList<string> Privileges { get; }
        }

        private sealed class Relation
        {
            public Relation(string name, bool isSequence, bool ownedByUser, IReadOnlyList<string> privileges)
            {
                Name = name;
                IsSequence = isSequence;
                OwnedByUser = ownedByUser;
                Privileges = privileges;
            }

            public string Name { get; }
            public bool IsSequence { get; }
            public bool OwnedByUser { get; }
            public IReadOnlyList<string> Privileges { get; }
        }

        private sealed class DefaultAcl
        {
            public DefaultAcl(string forRole, string objectType, string privilege)
            {
                ForRole = forRole;
                ObjectType = objectType;
                Privilege = privilege;
            }

            public string ForRole { get; }

            /// <summary>pg_default_acl.defaclobjtype: "r" tables, "S" sequences.</summary>
            public string ObjectType { get; }

            public string Privilege { get; }
        }

        /// <summary>The catalog queries; all parameterized.</summary>
        private sealed class Catalog
        {
            private readonly NpgsqlConnection _connection;

            public Catalog(NpgsqlConnection connection)
            {
                _connection = connection;
            }

            public async Task<(string CurrentUser, string SessionUser)> ConnectedAsync(CancellationToken ct)
            {
                using var cmd = Command("select current_user::text, session_user::text");
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                await reader.ReadAsync(ct).ConfigureAwait(false);
                return (reader.GetString(0), reader.GetString(1));
            }

            public async Task<RoleInfo?> RoleAsync(string name, CancellationToken ct)
            {
                using var cmd = Command("select oid, rolcanlogin, rolsuper from pg_catalog.pg_roles where rolname = $1", Text(name));
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                if (!await reader.ReadAsync(ct).ConfigureAwait(false)) return null;
                return new RoleInfo(reader.GetFieldValue<uint>(0), reader.GetBoolean(1), reader.GetBoolean(2));
            }

            public async Task<bool> IsDirectMemberAsync(uint roleOid, uint memberOid, CancellationToken ct)
            {
                using var cmd = Command("select exists (select 1 from pg_catalog.pg_auth_members where roleid = $1 and member = $2)", Oid(roleOid), Oid(memberOid));
                return (bool)(await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false))!;
            }

            /// <summary>The direct members of the role (they inherit its privileges), ordinal order.</summary>
            public async Task<List<string>> MembersAsync(uint roleOid, CancellationToken ct)
            {
                using var cmd = Command(
                    "select r.rolname::text from pg_catalog.pg_auth_members m join pg_catalog.pg_roles r on r.oid = m.member where m.roleid = $1", Oid(roleOid));
                var list = new List<string>();
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                while (await reader.ReadAsync(ct).ConfigureAwait(false)) list.Add(reader.GetString(0));
                list.Sort(StringComparer.Ordinal);
                return list;
            }

            public async Task<bool> IsRdsSuperuserAsync(string user, CancellationToken ct)
            {
                using var cmd = Command(
                    "select pg_catalog.pg_has_role(u.oid, g.oid, 'MEMBER') from pg_catalog.pg_roles u, pg_catalog.pg_roles g "
                    + "where u.rolname = $1 and g.rolname = 'rds_superuser'", Text(user));
                var value = await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false);
                return value is bool b && b;
            }

            public async Task<SchemaInfo?> SchemaAsync(string name, uint? userOid, CancellationToken ct)
            {
                using var cmd = Command(
                    "select n.oid, coalesce(n.nspowner = $2, false), "
                    + "array(select a.privilege_type from pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a where a.grantee = $2)::text[] "
                    + "from pg_catalog.pg_namespace n where n.nspname = $1", Text(name), Oid(userOid));
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                if (!await reader.ReadAsync(ct).ConfigureAwait(false)) return null;
                return new SchemaInfo(reader.GetFieldValue<uint>(0), reader.GetBoolean(1), reader.GetFieldValue<string[]>(2));
            }

            /// <summary>
            /// What GRANT ... ON ALL TABLES IN SCHEMA covers (tables, partitioned tables, views, materialized views,
            /// foreign tables) plus sequences, with the user's own ACL entries.
            /// </summary>
            public async Task<List<Relation>> RelationsAsync(uint schemaOid, uint? userOid, CancellationToken ct)
            {
                using var cmd = Command(
                    "select c.relname::text, c.relkind = 'S', coalesce(c.relowner = $2, false), "
                    + "array(select a.privilege_type from pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault("
                    + "(case when c.relkind = 'S' then 's' else 'r' end)::\"char\", c.relowner))) a where a.grantee = $2)::text[] "
                    + "from pg_catalog.pg_class c where c.relnamespace = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S') order by c.relname",
                    Oid(schemaOid), Oid(userOid));
                var list = new List<Relation>();
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                while (await reader.ReadAsync(ct).ConfigureAwait(false))
                {
                    list.Add(new Relation(reader.GetString(0), reader.GetBoolean(1), reader.GetBoolean(2), reader.GetFieldValue<string[]>(3)));
                }

                return list;
            }

            public async Task<List<DefaultAcl>> DefaultAclsAsync(uint schemaOid, uint userOid, CancellationToken ct)
            {
                using var cmd = Command(
                    "select r.rolname::text, d.defaclobjtype::text, a.privilege_type "
                    + "from pg_catalog.pg_default_acl d join pg_catalog.pg_roles r on r.oid = d.defaclrole, pg_catalog.aclexplode(d.defaclacl) a "
                    + "where d.defaclnamespace = $1 and a.grantee = $2 and d.defaclobjtype in ('r', 'S')",
                    Oid(schemaOid), Oid(userOid));
                var list = new List<DefaultAcl>();
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                while (await reader.ReadAsync(ct).ConfigureAwait(false))
                {
                    list.Add(new DefaultAcl(reader.GetString(0), reader.GetString(1), reader.GetString(2)));
                }

                return list;
            }

            /// <summary>Objects owned by the role, per database (pg_shdepend covers every database of the cluster).</summary>
            public async Task<List<(string Where, long Count)>> OwnedObjectsAsync(uint userOid, CancellationToken ct)
            {
                using var cmd = Command(
                    "select coalesce('database ' || d.datname::text, 'the cluster (databases, tablespaces)'), count(*) "
                    + "from pg_catalog.pg_shdepend s left join pg_catalog.pg_database d on d.oid = s.dbid "
                    + "where s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass and s.refobjid = $1 and s.deptype = 'o' "
                    + "group by 1 order by 1", Oid(userOid));
                var list = new List<(string, long)>();
                await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                while (await reader.ReadAsync(ct).ConfigureAwait(false)) list.Add((reader.GetString(0), reader.GetInt64(1)));
                return list;
            }

            private NpgsqlCommand Command(string sql, params NpgsqlParameter[] parameters)
            {
                var cmd = new NpgsqlCommand(sql, _connection) { CommandTimeout = 60 };
                foreach (var p in parameters) cmd.Parameters.Add(p);
                return cmd;
            }

            private static NpgsqlParameter Text(string value) => new() { NpgsqlDbType = NpgsqlDbType.Text, Value = value };

            private static NpgsqlParameter Oid(uint? value) => new() { NpgsqlDbType = NpgsqlDbType.Oid, Value = value.HasValue ? value.Value : DBNull.Value };
        }
    }
}
