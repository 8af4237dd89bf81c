using System;
using System.Collections.Generic;
using System.Security.Cryptography;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Postgres;
using BastionTools.Sandbox;
using Npgsql;
using Xunit;

namespace BastionTools.Tests.Postgres
{
    /// <summary>
    /// One real PostgreSQL cluster for the grant-engine tests (both classes of the collection), with rds_iam NOLOGIN and
    /// rds_superuser NOLOGIN as RDS has them. Tests use their own role and schema names, so they do not interfere.
    /// </summary>
    public sealed class GrantClusterFixture : IAsyncLifetime
    {
        private PostgresCluster? _cluster;

        public PostgresCluster Cluster => _cluster ?? throw new InvalidOperationException("The cluster has not started.");

        public async Task InitializeAsync()
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(90));
            _cluster = await PostgresCluster.StartAsync(new PostgresClusterOptions(), cts.Token);
            await using var admin = await OpenAdminAsync();
            await ExecAsync(admin, "CREATE ROLE rds_iam NOLOGIN");
            await ExecAsync(admin, "CREATE ROLE rds_superuser NOLOGIN");
        }

        public async Task DisposeAsync()
        {
            if (_cluster != null) await _cluster.StopAsync();
        }

        /// <summary>An unpooled connection to appdb as the superuser (the "admin").</summary>
        public Task<NpgsqlConnection> OpenAdminAsync() => OpenAsync(Cluster.ConnectionString());

        /// <summary>An unpooled connection to appdb as the non-superuser owner of appdb.</summary>
        public Task<NpgsqlConnection> OpenAppAsync() => OpenAsync(Cluster.ConnectionString(user: Cluster.AppUser, password: Cluster.AppPassword));

        private static async Task<NpgsqlConnection> OpenAsync(string connectionString)
        {
            var connection = new NpgsqlConnection(connectionString + ";Pooling=false");
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                await connection.OpenAsync(cts.Token);
                return connection;
            }
            catch
            {
                await connection.DisposeAsync();
                throw;
            }
        }

        /// <summary>A fresh lower-case name: prefix_ and 8 hex digits.</summary>
        public static string NewName(string prefix) => prefix + "_" + Convert.ToHexString(RandomNumberGenerator.GetBytes(4)).ToLowerInvariant();

        public static async Task ExecAsync(NpgsqlConnection connection, string sql, params object[] parameters)
        {
            await using var cmd = new NpgsqlCommand(sql, connection) { CommandTimeout = 30 };
            foreach (var p in parameters) cmd.Parameters.Add(new NpgsqlParameter { Value = p });
            await cmd.ExecuteNonQueryAsync();
        }

        public static async Task<T> ScalarAsync<T>(NpgsqlConnection connection, string sql, params object[] parameters)
        {
            await using var cmd = new NpgsqlCommand(sql, connection) { CommandTimeout = 30 };
            foreach (var p in parameters) cmd.Parameters.Add(new NpgsqlParameter { Value = p });
            var value = await cmd.ExecuteScalarAsync();
            return (T)value!;
        }

        public static async Task<List<string>> StringsAsync(NpgsqlConnection connection, string sql, params object[] parameters)
        {
            await using var cmd = new NpgsqlCommand(sql, connection) { CommandTimeout = 30 };
            foreach (var p in parameters) cmd.Parameters.Add(new NpgsqlParameter { Value = p });
            var list = new List<string>();
            await using var reader = await cmd.ExecuteReaderAsync();
            while (await reader.ReadAsync()) list.Add(reader.IsDBNull(0) ? "<null>" : reader.GetValue(0).ToString()!);
            return list;
        }

        /// <summary>
        /// Runs <paramref name="sql"/> with the privileges of <paramref name="role"/> (SET ROLE from the superuser
        /// connection) inside a transaction that is rolled back. Null when it worked, else the SQLSTATE.
        /// </summary>
        public static async Task<string?> TryAsAsync(NpgsqlConnection admin, string role, string sql)
        {
            await using var tx = await admin.BeginTransactionAsync();
            try
            {
                await using (var set = new NpgsqlCommand("SET LOCAL ROLE " + PgIdentifier.Quote(role), admin, tx)) await set.ExecuteNonQueryAsync();
                await using var cmd = new NpgsqlCommand(sql, admin, tx) { CommandTimeout = 30 };
                await cmd.ExecuteNonQueryAsync();
                return null;
            }
            catch (PostgresException ex)
            {
                return ex.SqlState;
            }
            finally
            {
                await tx.RollbackAsync();
            }
        }

        /// <summary>A snapshot of everything a grant can touch for a role: existence, memberships, ACL entries naming it anywhere in the database, default ACLs.</summary>
        public static async Task<string> CatalogFootprintAsync(NpgsqlConnection admin, string role)
        {
            var rows = await StringsAsync(admin,
                "select 'role ' || rolname || ' login=' || rolcanlogin from pg_roles where rolname = $1 "
                + "union all select 'member of ' || g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid join pg_roles u on u.oid = m.member where u.rolname = $1 "
                + "union all select 'schema ' || n.nspname || ' ' || a.privilege_type from pg_namespace n, aclexplode(n.nspacl) a join pg_roles r on r.oid = a.grantee where r.rolname = $1 "
                + "union all select 'rel ' || c.oid::regclass::text || ' ' || a.privilege_type from pg_class c, aclexplode(c.relacl) a join pg_roles r on r.oid = a.grantee where r.rolname = $1 "
                + "union all select 'default ' || d.defaclrole::regrole::text || ' ' || d.defaclnamespace::regnamespace::text || ' ' || d.defaclobjtype::text || ' ' || a.privilege_type "
                + "from pg_default_acl d, aclexplode(d.defaclacl) a join pg_roles r on r.oid = a.grantee where r.rolname = $1 "
                + "order by 1", role);
            return string.Join("\n", rows);
        }
    }

    [CollectionDefinition(Name)]
    public sealed class GrantClusterCollection : ICollectionFixture<GrantClusterFixture>
    {
        public const string Name = "Postgres grant engine cluster";
    }
}
