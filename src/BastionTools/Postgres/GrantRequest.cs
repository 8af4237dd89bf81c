using System;
using System.Collections.Generic;
using System.Linq;

namespace BastionTools.Postgres
{
    /// <summary>The -Access presets of Grant-RdsIamUser.</summary>
    public enum GrantAccess
    {
        /// <summary>SELECT on tables (and views); USAGE on the schema. No sequence privileges (reading needs none).</summary>
        ReadOnly,

        /// <summary>SELECT, INSERT, UPDATE, DELETE on tables; USAGE, SELECT on sequences (serial/identity inserts); USAGE on the schema. Not CREATE.</summary>
        ReadWrite,

        /// <summary>
        /// Everything short of ownership: ALL table privileges (SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES,
        /// TRIGGER), ALL sequence privileges (USAGE, SELECT, UPDATE), and USAGE, CREATE on the schema, so the user can
        /// create its own tables there. Ownership of existing objects is not transferred: the user cannot ALTER or DROP
        /// tables that other roles own (PostgreSQL has no grantable privilege for that).
        /// </summary>
        Owner,
    }

    /// <summary>What Grant-RdsIamUser asks for. Names are taken verbatim (case and all), as PostgreSQL stores them.</summary>
    internal sealed class GrantRequest
    {
        public GrantRequest(string userName)
        {
            UserName = userName;
        }

        /// <summary>The database role to create or complete (it logs in with an IAM token through rds_iam).</summary>
        public string UserName { get; }

        /// <summary>The schemas to grant on; default: public.</summary>
        public IReadOnlyList<string> Schemas { get; set; } = new[] { "public" };

        /// <summary>The preset used when <see cref="Privileges"/> is null.</summary>
        public GrantAccess Access { get; set; } = GrantAccess.ReadOnly;

        /// <summary>
        /// An explicit list of table privileges (SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER; any case);
        /// overrides <see cref="Access"/>. With INSERT or UPDATE the user also gets USAGE, SELECT on sequences.
        /// </summary>
        public IReadOnlyList<string>? Privileges { get; set; }

        /// <summary>The roles whose future tables and sequences get default privileges (ALTER DEFAULT PRIVILEGES FOR ROLE); null: the connected role.</summary>
        public IReadOnlyList<string>? ForRoles { get; set; }

        /// <summary>The role whose membership lets a user log in with an IAM token; rds_iam on RDS and Aurora.</summary>
        public string IamRoleName { get; set; } = "rds_iam";

        /// <summary>Checks every name and the privilege list; throws <see cref="ArgumentException"/> with a clear message.</summary>
        internal ResolvedPrivileges Validate()
        {
            RoleNames.ValidateTarget(UserName, "user name");
            RoleNames.ValidateRole(IamRoleName, "IAM role name");
            RoleNames.ValidateSchemas(Schemas);
            if (ForRoles != null)
            {
                foreach (var role in ForRoles) RoleNames.ValidateRole(role, "-ForRole name");
            }

            return Privileges == null ? ResolvedPrivileges.For(Access) : ResolvedPrivileges.ForList(Privileges);
        }
    }

    /// <summary>What Revoke-RdsIamUser asks for.</summary>
    internal sealed class RevokeRequest
    {
        public RevokeRequest(string userName)
        {
            UserName = userName;
        }

        public string UserName { get; }

        /// <summary>The schemas whose table, sequence and schema privileges (and default privileges) are revoked; default: public.</summary>
        public IReadOnlyList<string> Schemas { get; set; } = new[] { "public" };

        /// <summary>Whose default privileges to revoke; null: every role that has default privileges for the user in <see cref="Schemas"/>.</summary>
        public IReadOnlyList<string>? ForRoles { get; set; }

        public string IamRoleName { get; set; } = "rds_iam";

        /// <summary>Also DROP ROLE (refused when the role owns objects).</summary>
        public bool Drop { get; set; }

        internal void Validate()
        {
            RoleNames.ValidateTarget(UserName, "user name");
            RoleNames.ValidateRole(IamRoleName, "IAM role name");
            RoleNames.ValidateSchemas(Schemas);
            if (ForRoles != null)
            {
                foreach (var role in ForRoles) RoleNames.ValidateRole(role, "-ForRole name");
            }
        }
    }

    /// <summary>The privileges a request resolves to, in PostgreSQL's canonical order.</summary>
    internal sealed class ResolvedPrivileges
    {
        /// <summary>PostgreSQL's table privileges (PG 15), canonical order.</summary>
        public static readonly IReadOnlyList<string> AllTablePrivileges = new[] { "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER" };

        /// <summary>PostgreSQL's sequence privileges, canonical order.</summary>
        public static readonly IReadOnlyList<string> AllSequencePrivileges = new[] { "USAGE", "SELECT", "UPDATE" };

        /// <summary>Schema privileges, canonical order.</summary>
        public static readonly IReadOnlyList<string> AllSchemaPrivileges = new[] { "USAGE", "CREATE" };

        private ResolvedPrivileges(IReadOnlyList<string> table, IReadOnlyList<string> sequence, IReadOnlyList<string> schema)
        {
            Table = table;
            Sequence = sequence;
            Schema = schema;
        }

        public IReadOnlyList<string> Table { get; }
        public IReadOnlyList<string> Sequence { get; }
        public IReadOnlyList<string> Schema { get; }

        public static ResolvedPrivileges For(GrantAccess access) => access switch
        {
            GrantAccess.ReadOnly => new ResolvedPrivileges(new[] { "SELECT" }, Array.Empty<string>(), new[] { "USAGE" }),
            GrantAccess.ReadWrite => new ResolvedPrivileges(new[] { "SELECT", "INSERT", "UPDATE", "DELETE" }, new[] { "USAGE", "SELECT" }, new[] { "USAGE" }),
            GrantAccess.Owner => new ResolvedPrivileges(AllTablePrivileges, AllSequencePrivileges, AllSchemaPrivileges),
            _ => throw new ArgumentOutOfRangeException(nameof(access), access, "Access must be ReadOnly, ReadWrite or Owner."),
        };

        public static ResolvedPrivileges ForList(IReadOnlyList<string> privileges)
        {
            if (privileges.Count == 0) throw new ArgumentException("The privilege list is empty; name at least one of " + string.Join(", ", AllTablePrivileges) + ".", nameof(privileges));
            var wanted = new HashSet<string>(StringComparer.Ordinal);
            foreach (var raw in privileges)
            {
                var p = (raw ?? "").Trim().ToUpperInvariant();
                if (!AllTablePrivileges.Contains(p))
                {
                    throw new ArgumentException("'" + PgIdentifier.Printable(raw) + "' is not a PostgreSQL table privilege; use any of " + string.Join(", ", AllTablePrivileges) + ".", nameof(privileges));
                }

                wanted.Add(p);
            }

            var table = AllTablePrivileges.Where(wanted.Contains).ToArray();
            var sequence = wanted.Contains("INSERT") || wanted.Contains("UPDATE") ? new[] { "USAGE", "SELECT" } : Array.Empty<string>();
            return new ResolvedPrivileges(table, sequence, new[] { "USAGE" });
        }
    }

    internal static class RoleNames
    {
        /// <summary>A role that will be created or granted to: also refuses names PostgreSQL reserves or reads as something else.</summary>
        public static void ValidateTarget(string name, string what)
        {
            ValidateRole(name, what);
            if (name.StartsWith("pg_", StringComparison.Ordinal))
            {
                throw new ArgumentException("The " + what + " '" + PgIdentifier.Printable(name) + "' starts with pg_, which PostgreSQL reserves for system roles.", what);
            }
        }

        /// <summary>
        /// Any role name in a role position. "public" (even quoted) means the PUBLIC pseudo-role to the grammar, so
        /// GRANT ... TO "public" would grant to everyone; "none" is refused by the grammar. Both are refused here.
        /// </summary>
        public static void ValidateRole(string name, string what)
        {
            PgIdentifier.Validate(name, what);
            if (name == "public" || name == "none")
            {
                throw new ArgumentException("The " + what + " '" + name + "' is reserved by PostgreSQL ('public' means every role in a GRANT); choose another name.", what);
            }
        }

        public static IReadOnlyList<string> ValidateSchemas(IReadOnlyList<string>? schemas)
        {
            if (schemas == null || schemas.Count == 0) throw new ArgumentException("At least one schema is required.", nameof(schemas));
            foreach (var schema in schemas)
            {
                PgIdentifier.Validate(schema, "schema name");
                if (IsSystemSchema(schema))
                {
                    throw new SystemSchemaException(schema);
                }
            }

            return schemas;
        }

        /// <summary>
        /// pg_catalog, information_schema, pg_toast and the per-session pg_temp_N / pg_toast_temp_N (and the pg_temp
        /// alias): every schema whose name starts with pg_ is reserved for the system (CREATE SCHEMA refuses such
        /// names), and information_schema is created by initdb. Names are case-sensitive: "PG_CATALOG" is an
        /// ordinary schema.
        /// </summary>
        public static bool IsSystemSchema(string schema) =>
            schema.StartsWith("pg_", StringComparison.Ordinal) || string.Equals(schema, "information_schema", StringComparison.Ordinal);
    }

    /// <summary>A system schema named in -Schema: granting (or revoking) there would change what every role can see of the catalog.</summary>
    internal sealed class SystemSchemaException : ArgumentException
    {
        public SystemSchemaException(string schema)
            : base("The schema " + PgIdentifier.Quote(schema) + " is a system schema (pg_catalog, information_schema, pg_toast, pg_temp_*, or another pg_* schema); "
                + "Grant-RdsIamUser and Revoke-RdsIamUser only change privileges in application schemas. Name the schemas that hold your tables.", "schema")
        {
            Schema = schema;
        }

        public string Schema { get; }
    }
}
