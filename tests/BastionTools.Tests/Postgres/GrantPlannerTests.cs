using System;
using System.Linq;
using System.Threading.Tasks;
using BastionTools.Postgres;
using Npgsql;
using Xunit;
using static BastionTools.Tests.Postgres.GrantClusterFixture;

namespace BastionTools.Tests.Postgres
{
    [Collection(GrantClusterCollection.Name)]
    public sealed class GrantPlannerTests
    {
        private const string InsufficientPrivilege = "42501";
        private readonly GrantClusterFixture _fixture;

        public GrantPlannerTests(GrantClusterFixture fixture)
        {
            _fixture = fixture;
        }

        private string Admin => _fixture.Cluster.SuperUser;

        /// <summary>A schema with three tables (one with a serial column, so one sequence), owned by the superuser.</summary>
        private static async Task<string> NewSchemaAsync(NpgsqlConnection admin, string? name = null)
        {
            name ??= NewName("s");
            var q = PgIdentifier.Quote(name);
            await ExecAsync(admin, "CREATE SCHEMA " + q);
            await ExecAsync(admin, "CREATE TABLE " + q + ".items (id serial PRIMARY KEY, name text)");
            await ExecAsync(admin, "CREATE TABLE " + q + ".plain (v int)");
            await ExecAsync(admin, "CREATE VIEW " + q + ".items_view AS SELECT id, name FROM " + q + ".items");
            await ExecAsync(admin, "INSERT INTO " + q + ".items (name) VALUES ('one')");
            return name;
        }

        [Fact]
        public async Task ReadOnly_FreshUser_PlansEveryStep_ExecutesThem_AndASecondPlanIsEmpty()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("reader");
            var request = new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.ReadOnly };

            var plan = await GrantPlanner.PlanAsync(admin, request);
            Assert.False(plan.IsRevoke);
            Assert.False(plan.RoleExists);
            Assert.False(plan.RequiresForce);
            Assert.Equal(Admin, plan.ConnectedUser);
            Assert.Equal(new[]
            {
                "create role " + user + " (LOGIN)",
                "grant rds_iam",
                "grant USAGE on schema " + schema,
                "grant SELECT on 3 tables in " + schema,
                "default privileges for role " + Admin + " in " + schema + ": SELECT on tables",
            }, plan.Steps.Select(s => s.Description));
            Assert.Equal(new[]
            {
                "CREATE ROLE " + user + " LOGIN",
                "GRANT rds_iam TO " + user,
                "GRANT USAGE ON SCHEMA " + schema + " TO " + user,
                "GRANT SELECT ON ALL TABLES IN SCHEMA " + schema + " TO " + user,
                "ALTER DEFAULT PRIVILEGES FOR ROLE " + Admin + " IN SCHEMA " + schema + " GRANT SELECT ON TABLES TO " + user,
            }, plan.Steps.Select(s => s.Sql));
            Assert.Equal("BEGIN;\n" + string.Join("", plan.Steps.Select(s => s.Sql + ";\n")) + "COMMIT;\n", plan.Script);

            var result = await plan.ExecuteAsync(admin);
            Assert.True(result.HasChanges);
            Assert.Equal(5, result.Changed.Count);
            Assert.StartsWith("5 changes: create role", result.Summary);

            var again = await GrantPlanner.PlanAsync(admin, request);
            Assert.True(again.IsEmpty, "second plan: " + again.Script);
            Assert.True(again.RoleExists);
            Assert.Equal("", again.Script);
            var noop = await again.ExecuteAsync(admin);
            Assert.False(noop.HasChanges);
            Assert.Equal("No changes: " + user + " already has everything requested.", noop.Summary);

            // End to end: reads work, writes and DDL do not.
            var q = PgIdentifier.Quote(schema) + ".";
            Assert.Null(await TryAsAsync(admin, user, "SELECT * FROM " + q + "items"));
            Assert.Null(await TryAsAsync(admin, user, "SELECT * FROM " + q + "items_view"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "INSERT INTO " + q + "items (name) VALUES ('x')"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "UPDATE " + q + "items SET name = 'y'"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "DELETE FROM " + q + "items"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "CREATE TABLE " + q + "mine (v int)"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "SELECT nextval('" + schema + ".items_id_seq')"));
            Assert.True(await ScalarAsync<bool>(admin, "select rolcanlogin from pg_roles where rolname = $1", user));
            Assert.True(await ScalarAsync<bool>(admin, "select pg_has_role($1, 'rds_iam', 'MEMBER')", user));
        }

        [Fact]
        public async Task Planning_ChangesNothing_InTheCatalog()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("whatif");
            var before = await CatalogFootprintAsync(admin, user);
            var defaultAclsBefore = await ScalarAsync<long>(admin, "select count(*) from pg_default_acl");
            var rolesBefore = await ScalarAsync<long>(admin, "select count(*) from pg_roles");

            foreach (var access in new[] { GrantAccess.ReadOnly, GrantAccess.ReadWrite, GrantAccess.Owner })
            {
                var plan = await GrantPlanner.PlanAsync(admin, new GrantRequest(user) { Schemas = new[] { schema, "public" }, Access = access });
                Assert.NotEmpty(plan.Steps);
                Assert.Contains("CREATE ROLE " + user + " LOGIN;", plan.Script);
            }

            Assert.Equal("", before);
            Assert.Equal(before, await CatalogFootprintAsync(admin, user));
            Assert.Equal(defaultAclsBefore, await ScalarAsync<long>(admin, "select count(*) from pg_default_acl"));
            Assert.Equal(rolesBefore, await ScalarAsync<long>(admin, "select count(*) from pg_roles"));
            Assert.Equal(0L, await ScalarAsync<long>(admin, "select count(*) from pg_roles where rolname = $1", user));
        }

        [Fact]
        public async Task ReadWrite_CanWriteAndUseSequences_ButNotCreateOrTruncate()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("writer");
            var request = new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite };
            var plan = await GrantPlanner.PlanAsync(admin, request);
            Assert.Equal(new[]
            {
                "create role " + user + " (LOGIN)",
                "grant rds_iam",
                "grant USAGE on schema " + schema,
                "grant SELECT, INSERT, UPDATE, DELETE on 3 tables in " + schema,
                "grant USAGE, SELECT on 1 sequence in " + schema,
                "default privileges for role " + Admin + " in " + schema + ": SELECT, INSERT, UPDATE, DELETE on tables",
                "default privileges for role " + Admin + " in " + schema + ": USAGE, SELECT on sequences",
            }, plan.Steps.Select(s => s.Description));
            Assert.Contains("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA " + schema + " TO " + user, plan.Steps.Select(s => s.Sql));
            Assert.Contains("ALTER DEFAULT PRIVILEGES FOR ROLE " + Admin + " IN SCHEMA " + schema + " GRANT USAGE, SELECT ON SEQUENCES TO " + user, plan.Steps.Select(s => s.Sql));
            await plan.ExecuteAsync(admin);
            Assert.True((await GrantPlanner.PlanAsync(admin, request)).IsEmpty);

            var q = schema + ".";
            Assert.Null(await TryAsAsync(admin, user, "INSERT INTO " + q + "items (name) VALUES ('serial insert')"));
            Assert.Null(await TryAsAsync(admin, user, "UPDATE " + q + "items SET name = 'changed'"));
            Assert.Null(await TryAsAsync(admin, user, "DELETE FROM " + q + "items"));
            Assert.Null(await TryAsAsync(admin, user, "INSERT INTO " + q + "plain VALUES (1)"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "CREATE TABLE " + q + "mine (v int)"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "TRUNCATE " + q + "plain"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "SELECT setval('" + q + "items_id_seq', 100)"));
        }

        [Fact]
        public async Task Owner_CanCreateTablesAndTruncate_AndGetsAllSequencePrivileges()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("owner");
            var request = new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.Owner };
            var plan = await GrantPlanner.PlanAsync(admin, request);
            Assert.Contains("GRANT USAGE, CREATE ON SCHEMA " + schema + " TO " + user, plan.Steps.Select(s => s.Sql));
            Assert.Contains("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA " + schema + " TO " + user, plan.Steps.Select(s => s.Sql));
            Assert.Contains("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA " + schema + " TO " + user, plan.Steps.Select(s => s.Sql));
            await plan.ExecuteAsync(admin);
            Assert.True((await GrantPlanner.PlanAsync(admin, request)).IsEmpty);

            var q = schema + ".";
            Assert.Null(await TryAsAsync(admin, user, "CREATE TABLE " + q + "mine (v int)"));
            Assert.Null(await TryAsAsync(admin, user, "TRUNCATE " + q + "plain"));
            Assert.Null(await TryAsAsync(admin, user, "SELECT setval('" + q + "items_id_seq', 100)"));
            // Not ownership: existing tables stay the admin's.
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "DROP TABLE " + q + "plain"));
        }

        [Fact]
        public async Task DefaultPrivileges_TablesCreatedLaterByTheForRole_AreUsable()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var app = _fixture.Cluster.AppUser!;
            await ExecAsync(admin, "GRANT USAGE, CREATE ON SCHEMA " + schema + " TO " + app);
            var user = NewName("later");
            var request = new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite, ForRoles = new[] { Admin, app } };
            var plan = await GrantPlanner.PlanAsync(admin, request);
            Assert.Contains("default privileges for role " + app + " in " + schema + ": SELECT, INSERT, UPDATE, DELETE on tables", plan.Steps.Select(s => s.Description));
            await plan.ExecuteAsync(admin);

            // Created after the grant, by each ForRole.
            await ExecAsync(admin, "CREATE TABLE " + schema + ".by_admin (id serial, v text)");
            await using (var appConnection = await _fixture.OpenAppAsync())
            {
                await ExecAsync(appConnection, "CREATE TABLE " + schema + ".by_app (id bigserial, v text)");
            }

            foreach (var table in new[] { "by_admin", "by_app" })
            {
                Assert.Null(await TryAsAsync(admin, user, "SELECT * FROM " + schema + "." + table));
                Assert.Null(await TryAsAsync(admin, user, "INSERT INTO " + schema + "." + table + " (v) VALUES ('new')"));
            }

            // The catalog already covers the new tables: nothing more to grant.
            Assert.True((await GrantPlanner.PlanAsync(admin, request)).IsEmpty);

            // Without default privileges (another creator), a later table is not readable.
            await ExecAsync(admin, "CREATE ROLE " + user + "_other NOLOGIN");
            await ExecAsync(admin, "GRANT CREATE, USAGE ON SCHEMA " + schema + " TO " + user + "_other");
            await ExecAsync(admin, "SET ROLE " + user + "_other; CREATE TABLE " + schema + ".by_other (v int); RESET ROLE");
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "SELECT * FROM " + schema + ".by_other"));
        }

        [Fact]
        public async Task ExplicitPrivilegeList_GrantsExactlyThose_PlusSequencesForInsert()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("explicit");
            var request = new GrantRequest(user) { Schemas = new[] { schema }, Privileges = new[] { "insert", " Select ", "INSERT" } };
            var plan = await GrantPlanner.PlanAsync(admin, request);
            Assert.Contains("GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA " + schema + " TO " + user, plan.Steps.Select(s => s.Sql));
            Assert.Contains("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA " + schema + " TO " + user, plan.Steps.Select(s => s.Sql));
            Assert.Contains("ALTER DEFAULT PRIVILEGES FOR ROLE " + Admin + " IN SCHEMA " + schema + " GRANT SELECT, INSERT ON TABLES TO " + user, plan.Steps.Select(s => s.Sql));
            await plan.ExecuteAsync(admin);
            Assert.True((await GrantPlanner.PlanAsync(admin, request)).IsEmpty);
            Assert.Null(await TryAsAsync(admin, user, "INSERT INTO " + schema + ".items (name) VALUES ('x')"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "UPDATE " + schema + ".items SET name = 'y'"));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "DELETE FROM " + schema + ".items"));

            // A narrower list later adds nothing; a wider one adds only the difference.
            Assert.True((await GrantPlanner.PlanAsync(admin, new GrantRequest(user) { Schemas = new[] { schema }, Privileges = new[] { "SELECT" } })).IsEmpty);
            var wider = await GrantPlanner.PlanAsync(admin, new GrantRequest(user) { Schemas = new[] { schema }, Privileges = new[] { "SELECT", "INSERT", "TRIGGER" } });
            Assert.Equal(new[] { "grant TRIGGER on 3 tables in " + schema, "default privileges for role " + Admin + " in " + schema + ": TRIGGER on tables" },
                wider.Steps.Select(s => s.Description));

            var bad = Assert.Throws<ArgumentException>(() => new GrantRequest(user) { Privileges = new[] { "SELECT", "DROP" } }.Validate());
            Assert.Contains("'DROP' is not a PostgreSQL table privilege", bad.Message);
            Assert.Throws<ArgumentException>(() => new GrantRequest(user) { Privileges = Array.Empty<string>() }.Validate());
            Assert.Throws<ArgumentException>(() => new GrantRequest(user) { Privileges = new[] { "SELECT; DROP TABLE x" } }.Validate());
        }

        [Fact]
        public async Task MultipleSchemas_IncludingHostileNames_AreQuotedEverywhere()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var plainSchema = await NewSchemaAsync(admin);
            var hostileSchema = "we\"ird; DROP TABLE seed_items; --" + NewName("");
            var unicodeSchema = "Ünï Schéma 😀" + NewName("");
            await NewSchemaAsync(admin, hostileSchema);
            await NewSchemaAsync(admin, unicodeSchema);
            var user = "App\"User; DROP ROLE " + Admin + "; --" + NewName("");
            var request = new GrantRequest(user) { Schemas = new[] { plainSchema, hostileSchema, unicodeSchema, plainSchema }, Access = GrantAccess.ReadWrite };

            var plan = await GrantPlanner.PlanAsync(admin, request);
            var qUser = "\"" + user.Replace("\"", "\"\"") + "\"";
            var qHostile = "\"" + hostileSchema.Replace("\"", "\"\"") + "\"";
            var qUnicode = "\"" + unicodeSchema + "\"";
            Assert.Equal(qUser, PgIdentifier.Quote(user));
            Assert.Equal("CREATE ROLE " + qUser + " LOGIN", plan.Steps[0].Sql);
            Assert.Contains("GRANT USAGE ON SCHEMA " + qHostile + " TO " + qUser, plan.Steps.Select(s => s.Sql));
            Assert.Contains("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA " + qUnicode + " TO " + qUser, plan.Steps.Select(s => s.Sql));
            Assert.Contains("ALTER DEFAULT PRIVILEGES FOR ROLE " + Admin + " IN SCHEMA " + qHostile + " GRANT USAGE, SELECT ON SEQUENCES TO " + qUser, plan.Steps.Select(s => s.Sql));
            // The duplicate schema is planned once; every statement names the schemas only in quoted form.
            Assert.Equal(3, plan.Steps.Count(s => s.Kind == GrantStepKind.GrantSchema));
            foreach (var step in plan.Steps)
            {
                var withoutQuoted = step.Sql.Replace(qUser, "U").Replace(qHostile, "H").Replace(qUnicode, "N");
                Assert.DoesNotContain("\"", withoutQuoted);
                Assert.DoesNotContain(";", withoutQuoted);
            }

            await plan.ExecuteAsync(admin);
            Assert.True((await GrantPlanner.PlanAsync(admin, request)).IsEmpty);
            Assert.Equal(1L, await ScalarAsync<long>(admin, "select count(*) from pg_roles where rolname = $1", user));
            Assert.Equal(1L, await ScalarAsync<long>(admin, "select count(*) from pg_roles where rolname = $1", Admin));
            Assert.Equal(3L, await ScalarAsync<long>(admin, "select count(*) from seed_items"));
            foreach (var schema in new[] { plainSchema, hostileSchema, unicodeSchema })
            {
                Assert.Null(await TryAsAsync(admin, user, "INSERT INTO " + PgIdentifier.Quote(schema) + ".items (name) VALUES ('x')"));
            }

            // And back out.
            var revoke = new RevokeRequest(user) { Schemas = new[] { plainSchema, hostileSchema, unicodeSchema }, Drop = true };
            var revokePlan = await GrantPlanner.PlanAsync(admin, revoke);
            Assert.Contains("REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLE " + qHostile + ".items, " + qHostile + ".items_view, " + qHostile + ".plain FROM " + qUser,
                revokePlan.Steps.Select(s => s.Sql));
            await revokePlan.ExecuteAsync(admin);
            Assert.Equal(0L, await ScalarAsync<long>(admin, "select count(*) from pg_roles where rolname = $1", user));
        }

        [Fact]
        public async Task Flags_SuperuserAndConnectedRole_AndRdsSuperuserMember()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var self = await GrantPlanner.PlanAsync(admin, new GrantRequest(Admin));
            Assert.True(self.TargetIsSuperuser);
            Assert.True(self.TargetIsConnectedUser);
            Assert.True(self.RequiresForce);
            Assert.Contains("superuser", self.ForceReason);
            Assert.Contains("connected role", self.ForceReason);
            Assert.Equal("grant rds_iam", self.Steps[0].Description);
            Assert.Contains("password login", GrantPlan.RdsIamPasswordWarning);

            var master = NewName("master");
            await ExecAsync(admin, "CREATE ROLE " + master + " LOGIN CREATEROLE IN ROLE rds_superuser");
            var masterPlan = await GrantPlanner.PlanAsync(admin, new GrantRequest(master));
            Assert.True(masterPlan.TargetIsRdsSuperuser);
            Assert.False(masterPlan.TargetIsSuperuser);
            Assert.False(masterPlan.TargetIsConnectedUser);
            Assert.True(masterPlan.RequiresForce);
            Assert.Contains("rds_superuser", masterPlan.ForceReason);

            var fresh = await GrantPlanner.PlanAsync(admin, new GrantRequest(NewName("nobody")));
            Assert.False(fresh.TargetIsSuperuser || fresh.TargetIsConnectedUser || fresh.TargetIsRdsSuperuser || fresh.RequiresForce);
            Assert.Null(fresh.ForceReason);

            // An existing NOLOGIN role gets LOGIN, not CREATE ROLE.
            var nologin = NewName("nologin");
            await ExecAsync(admin, "CREATE ROLE " + nologin + " NOLOGIN");
            var enable = await GrantPlanner.PlanAsync(admin, new GrantRequest(nologin));
            Assert.Equal("enable LOGIN for role " + nologin, enable.Steps[0].Description);
            Assert.Equal("ALTER ROLE " + nologin + " LOGIN", enable.Steps[0].Sql);
        }

        [Fact]
        public async Task ExistingRoles_NeedForce_AndTheReasonSaysExactlyWhatChanges()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);

            // An application role that logs in with a password: rds_iam would turn that off.
            var app = NewName("pwapp");
            await ExecAsync(admin, "CREATE ROLE " + app + " LOGIN PASSWORD 'app-secret-1'");
            var plan = await GrantPlanner.PlanAsync(admin, new GrantRequest(app) { Schemas = new[] { schema } });
            Assert.True(plan.RoleExists);
            Assert.False(plan.TargetIsSuperuser || plan.TargetIsConnectedUser || plan.TargetIsRdsSuperuser);
            Assert.True(plan.RequiresForce);
            Assert.Contains("already exists", plan.ForceReason);
            Assert.Contains("joins rds_iam", plan.ForceReason);
            Assert.Contains("password login stops working", plan.ForceReason);
            Assert.DoesNotContain("gains LOGIN", plan.ForceReason);
            Assert.DoesNotContain("member", plan.ForceReason);
            Assert.Equal("role " + app + " login=true", await CatalogFootprintAsync(admin, app));

            // A group role: NOLOGIN, with members that inherit whatever it gets.
            var group = NewName("grp");
            var members = new[] { NewName("m"), NewName("m") }.OrderBy(m => m, StringComparer.Ordinal).ToArray();
            await ExecAsync(admin, "CREATE ROLE " + group + " NOLOGIN");
            await ExecAsync(admin, "CREATE ROLE " + members[0] + " LOGIN IN ROLE " + group);
            await ExecAsync(admin, "CREATE ROLE " + members[1] + " NOLOGIN IN ROLE " + group);
            var groupPlan = await GrantPlanner.PlanAsync(admin, new GrantRequest(group) { Schemas = new[] { schema } });
            Assert.True(groupPlan.RequiresForce);
            Assert.Contains("gains LOGIN", groupPlan.ForceReason);
            Assert.Contains("joins rds_iam", groupPlan.ForceReason);
            Assert.Contains("its 2 member roles (" + members[0] + ", " + members[1] + ") inherit", groupPlan.ForceReason);
            Assert.Equal(new[] { "role " + group + " login=false" }, (await CatalogFootprintAsync(admin, group)).Split('\n'));

            // What the reason says is what happens (the cmdlet only executes with -Force).
            Assert.False(await ScalarAsync<bool>(admin, "select has_table_privilege($1, $2, 'SELECT')", members[0], schema + ".plain"));
            await groupPlan.ExecuteAsync(admin);
            Assert.True(await ScalarAsync<bool>(admin, "select rolcanlogin from pg_roles where rolname = $1", group));
            foreach (var member in members)
            {
                Assert.True(await ScalarAsync<bool>(admin, "select pg_has_role($1, 'rds_iam', 'MEMBER')", member));
                Assert.True(await ScalarAsync<bool>(admin, "select has_table_privilege($1, $2, 'SELECT')", member, schema + ".plain"));
            }

            // The group, now in rds_iam with LOGIN: more privileges still need -Force (its members inherit them); nothing to do needs none.
            var more = await GrantPlanner.PlanAsync(admin, new GrantRequest(group) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite });
            Assert.True(more.RequiresForce);
            Assert.Contains("2 member roles", more.ForceReason);
            Assert.DoesNotContain("joins rds_iam", more.ForceReason);
            Assert.DoesNotContain("gains LOGIN", more.ForceReason);
            var same = await GrantPlanner.PlanAsync(admin, new GrantRequest(group) { Schemas = new[] { schema } });
            Assert.True(same.IsEmpty);
            Assert.False(same.RequiresForce);

            // A role already set up for IAM (LOGIN, in rds_iam, no members): a re-grant, even a wider one, is idempotent and needs no -Force.
            var iamUser = NewName("iamuser");
            await (await GrantPlanner.PlanAsync(admin, new GrantRequest(iamUser) { Schemas = new[] { schema } })).ExecuteAsync(admin);
            var wider = await GrantPlanner.PlanAsync(admin, new GrantRequest(iamUser) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite });
            Assert.False(wider.IsEmpty);
            Assert.False(wider.RequiresForce, wider.ForceReason);
            Assert.Null(wider.ForceReason);
        }

        [Fact]
        public async Task Script_IsWrappedInATransaction_WithUnusualNamesEscaped_AndIsExactlyWhatRuns()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = "odd\u202E" + NewName("s");
            var tables = new[] { "new\nline", "\u001B[31mred", "rtl\u202Eevil" };
            await ExecAsync(admin, "CREATE SCHEMA \"" + schema + "\"");
            foreach (var t in tables) await ExecAsync(admin, "CREATE TABLE \"" + schema + "\".\"" + t + "\" (v int)");
            var user = NewName("oddreader");
            var request = new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite };

            var plan = await GrantPlanner.PlanAsync(admin, request);
            Assert.Equal("BEGIN;\n" + string.Join("", plan.Steps.Select(s => s.Sql + ";\n")) + "COMMIT;\n", plan.Script);
            AssertPrintable(plan.Script);
            foreach (var step in plan.Steps) AssertPrintable(step.Description);
            Assert.Contains("GRANT USAGE ON SCHEMA U&\"odd\\202E", plan.Script);

            // The printed script, run as it is, grants on those tables.
            await ExecAsync(admin, plan.Script);
            foreach (var t in tables)
            {
                Assert.True(await ScalarAsync<bool>(admin, "select has_table_privilege($1, c.oid, 'SELECT, INSERT, UPDATE, DELETE') from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $2 and c.relname = $3",
                    user, schema, t), t);
            }

            Assert.True((await GrantPlanner.PlanAsync(admin, request)).IsEmpty);

            // ExecuteAsync runs the same statements (another user, same result).
            var other = NewName("oddwriter");
            var otherPlan = await GrantPlanner.PlanAsync(admin, new GrantRequest(other) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite });
            Assert.Equal(plan.Script.Replace(user, other), otherPlan.Script);
            await otherPlan.ExecuteAsync(admin);
            Assert.Equal((await CatalogFootprintAsync(admin, user)).Replace(user, other), await CatalogFootprintAsync(admin, other));

            // The revoke names the tables themselves: escaped too, and it removes everything.
            var revoke = await GrantPlanner.PlanAsync(admin, new RevokeRequest(user) { Schemas = new[] { schema }, Drop = true });
            AssertPrintable(revoke.Script);
            Assert.Contains(".U&\"new\\000Aline\"", revoke.Script);
            Assert.Contains(".U&\"\\001B[31mred\"", revoke.Script);
            Assert.Contains(".U&\"rtl\\202Eevil\"", revoke.Script);
            await ExecAsync(admin, revoke.Script);
            Assert.Equal("", await CatalogFootprintAsync(admin, user));
        }

        [Fact]
        public async Task ServerMessages_AndForceReasons_ShowUnusualNamesEscaped()
        {
            await using var admin = await _fixture.OpenAdminAsync();

            // PostgreSQL's own message quotes the missing schema raw; the error shows it escaped.
            var missing = "gone\u202E\n" + NewName("s");
            var plan = await GrantPlanner.PlanAsync(admin, new GrantRequest(NewName("printable")) { Schemas = new[] { missing } });
            Assert.Equal(new[] { missing }, plan.MissingSchemas);
            var ex = await Assert.ThrowsAsync<GrantException>(() => plan.ExecuteAsync(admin));
            Assert.Equal("3F000", ex.SqlState);
            Assert.DoesNotContain("\n", ex.Message);
            AssertPrintable(ex.Message);
            Assert.Contains("gone\\u202E\\u000A", ex.Message);

            // A member role with an ANSI escape in its name: the -Force reason names it as SQL would, U&"...".
            var group = NewName("grp");
            var member = "m\u001B[2J" + NewName("");
            await ExecAsync(admin, "CREATE ROLE " + group + " NOLOGIN");
            await ExecAsync(admin, "CREATE ROLE " + PgIdentifier.Quote(member) + " IN ROLE " + group);
            var groupPlan = await GrantPlanner.PlanAsync(admin, new GrantRequest(group));
            Assert.True(groupPlan.RequiresForce);
            AssertPrintable(groupPlan.ForceReason!);
            Assert.Contains("its 1 member role (U&\"m\\001B[2J", groupPlan.ForceReason);
        }

        /// <summary>No control character other than the line feeds that end statements, no format (bidi, zero-width) or separator characters.</summary>
        private static void AssertPrintable(string text)
        {
            for (var i = 0; i < text.Length; i++)
            {
                var c = text[i];
                var cat = System.Globalization.CharUnicodeInfo.GetUnicodeCategory(text, i);
                var bad = (char.IsControl(c) && c != '\n') || cat == System.Globalization.UnicodeCategory.Format
                    || cat == System.Globalization.UnicodeCategory.LineSeparator || cat == System.Globalization.UnicodeCategory.ParagraphSeparator;
                Assert.False(bad, "U+" + ((int)c).ToString("X4") + " at " + i + " in: " + text.Replace("\u001B", "<ESC>"));
            }
        }

        [Fact]
        public async Task FailingStep_RollsBackEverything_WithTheSqlState()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var user = NewName("rollback");
            var missing = NewName("no_such_schema");
            var plan = await GrantPlanner.PlanAsync(admin, new GrantRequest(user) { Schemas = new[] { "public", missing }, Access = GrantAccess.ReadWrite });
            Assert.Equal(new[] { missing }, plan.MissingSchemas);
            Assert.Equal("CREATE ROLE " + user + " LOGIN", plan.Steps[0].Sql);

            var ex = await Assert.ThrowsAsync<GrantException>(() => plan.ExecuteAsync(admin));
            Assert.Equal("3F000", ex.SqlState);
            Assert.NotNull(ex.Step);
            Assert.Equal("grant USAGE on schema " + missing, ex.Step!.Description);
            Assert.Contains("SQLSTATE 3F000", ex.Message);
            Assert.Contains("rolled back", ex.Message);
            Assert.IsType<PostgresException>(ex.InnerException);

            // Nothing of the earlier steps survived, and the connection is usable.
            Assert.Equal("", await CatalogFootprintAsync(admin, user));
            Assert.Equal(1, await ScalarAsync<int>(admin, "select 1"));
        }

        [Fact]
        public async Task Revoke_UndoesEverything_SecondRevokeIsEmpty_ThenDrop()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("revoked");
            var grant = new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.Owner };
            await (await GrantPlanner.PlanAsync(admin, grant)).ExecuteAsync(admin);
            Assert.NotEqual("", await CatalogFootprintAsync(admin, user));

            var revoke = new RevokeRequest(user) { Schemas = new[] { schema } };
            var plan = await GrantPlanner.PlanAsync(admin, revoke);
            Assert.True(plan.IsRevoke);
            Assert.Equal(new[]
            {
                "revoke default privileges for role " + Admin + " in " + schema + ": SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER on tables",
                "revoke default privileges for role " + Admin + " in " + schema + ": USAGE, SELECT, UPDATE on sequences",
                "revoke USAGE, SELECT, UPDATE on 1 sequence in " + schema,
                "revoke SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER on 3 tables in " + schema,
                "revoke USAGE, CREATE on schema " + schema,
                "revoke rds_iam",
            }, plan.Steps.Select(s => s.Description));
            Assert.Equal(new[]
            {
                "ALTER DEFAULT PRIVILEGES FOR ROLE " + Admin + " IN SCHEMA " + schema + " REVOKE SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLES FROM " + user,
                "ALTER DEFAULT PRIVILEGES FOR ROLE " + Admin + " IN SCHEMA " + schema + " REVOKE USAGE, SELECT, UPDATE ON SEQUENCES FROM " + user,
                "REVOKE USAGE, SELECT, UPDATE ON SEQUENCE " + schema + ".items_id_seq FROM " + user,
                "REVOKE SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLE " + schema + ".items, " + schema + ".items_view, " + schema + ".plain FROM " + user,
                "REVOKE USAGE, CREATE ON SCHEMA " + schema + " FROM " + user,
                "REVOKE rds_iam FROM " + user,
            }, plan.Steps.Select(s => s.Sql));
            var result = await plan.ExecuteAsync(admin);
            Assert.Equal(6, result.Changed.Count);

            // Only the role itself (with LOGIN) is left.
            Assert.Equal("role " + user + " login=true", await CatalogFootprintAsync(admin, user));
            Assert.Equal(InsufficientPrivilege, await TryAsAsync(admin, user, "SELECT * FROM " + schema + ".items"));
            var second = await GrantPlanner.PlanAsync(admin, revoke);
            Assert.True(second.IsEmpty, second.Script);
            Assert.Equal("No changes: " + user + " has nothing to revoke.", (await second.ExecuteAsync(admin)).Summary);

            var drop = await GrantPlanner.PlanAsync(admin, new RevokeRequest(user) { Schemas = new[] { schema }, Drop = true });
            Assert.Equal(new[] { "DROP ROLE " + user }, drop.Steps.Select(s => s.Sql));
            await drop.ExecuteAsync(admin);
            Assert.Equal("", await CatalogFootprintAsync(admin, user));
            var gone = await GrantPlanner.PlanAsync(admin, new RevokeRequest(user) { Schemas = new[] { schema }, Drop = true });
            Assert.True(gone.IsEmpty);
            Assert.False(gone.RoleExists);
            Assert.Equal("No changes: " + user + " has nothing to revoke (the role does not exist).", (await gone.ExecuteAsync(admin)).Summary);
        }

        [Fact]
        public async Task Revoke_WithDrop_InOneGo_AndRefusedWhenTheRoleOwnsObjects()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var user = NewName("dropme");
            await (await GrantPlanner.PlanAsync(admin, new GrantRequest(user) { Schemas = new[] { schema }, Access = GrantAccess.ReadWrite })).ExecuteAsync(admin);
            var plan = await GrantPlanner.PlanAsync(admin, new RevokeRequest(user) { Schemas = new[] { schema }, Drop = true });
            Assert.Equal("drop role " + user, plan.Steps[^1].Description);
            await plan.ExecuteAsync(admin);
            Assert.Equal("", await CatalogFootprintAsync(admin, user));

            var owner = NewName("owns");
            await (await GrantPlanner.PlanAsync(admin, new GrantRequest(owner) { Schemas = new[] { schema } })).ExecuteAsync(admin);
            await ExecAsync(admin, "ALTER TABLE " + schema + ".plain OWNER TO " + owner);
            var ex = await Assert.ThrowsAsync<GrantException>(() => GrantPlanner.PlanAsync(admin, new RevokeRequest(owner) { Schemas = new[] { schema }, Drop = true }));
            Assert.Contains("owns objects (1 in database appdb)", ex.Message);
            Assert.Contains("REASSIGN OWNED BY " + owner, ex.Message);

            // Without Drop the revoke still works, and leaves the owned table alone.
            var keep = await GrantPlanner.PlanAsync(admin, new RevokeRequest(owner) { Schemas = new[] { schema } });
            Assert.DoesNotContain(keep.Steps, s => s.Kind == GrantStepKind.DropRole);
            Assert.DoesNotContain(keep.Steps, s => s.Sql.Contains(".plain", StringComparison.Ordinal));
            await keep.ExecuteAsync(admin);
            Assert.True((await GrantPlanner.PlanAsync(admin, new RevokeRequest(owner) { Schemas = new[] { schema } })).IsEmpty);
            Assert.Equal(owner, await ScalarAsync<string>(admin, "select tableowner::text from pg_tables where schemaname = $1 and tablename = 'plain'", schema));
            Assert.True(await ScalarAsync<bool>(admin, "select has_table_privilege($1, $2, 'SELECT, INSERT, TRUNCATE')", owner, schema + ".plain"));
        }

        [Fact]
        public async Task NonSuperuserAdmin_ThatCannotGrantEverything_FailsAndRollsBack()
        {
            // RDS-like: the admin is not a superuser; one table in the schema belongs to someone else.
            await using var admin = await _fixture.OpenAdminAsync();
            var app = _fixture.Cluster.AppUser!;
            var schema = NewName("mixed");
            await ExecAsync(admin, "ALTER ROLE " + app + " CREATEROLE");
            await ExecAsync(admin, "CREATE SCHEMA " + schema + " AUTHORIZATION " + app);
            await ExecAsync(admin, "CREATE TABLE " + schema + ".theirs (v int)");
            var user = NewName("partial");
            await using var appConnection = await _fixture.OpenAppAsync();
            await ExecAsync(appConnection, "CREATE TABLE " + schema + ".mine (v int)");

            // No privilege at all on the other table: PostgreSQL refuses (42501).
            var plan = await GrantPlanner.PlanAsync(appConnection, new GrantRequest(user) { Schemas = new[] { schema } });
            Assert.Equal(app, plan.ConnectedUser);
            var ex = await Assert.ThrowsAsync<GrantException>(() => plan.ExecuteAsync(appConnection));
            Assert.Equal("42501", ex.SqlState);
            Assert.Contains("theirs", ex.Message);
            Assert.Contains("rolled back", ex.Message);
            Assert.Equal("", await CatalogFootprintAsync(admin, user));

            // The privilege without GRANT OPTION: PostgreSQL only warns (01007) and grants nothing; that fails too.
            await ExecAsync(admin, "GRANT SELECT ON " + schema + ".theirs TO " + app);
            plan = await GrantPlanner.PlanAsync(appConnection, new GrantRequest(user) { Schemas = new[] { schema } });
            ex = await Assert.ThrowsAsync<GrantException>(() => plan.ExecuteAsync(appConnection));
            Assert.Equal("01007", ex.SqlState);
            Assert.Contains("theirs", ex.Message);
            Assert.Contains("WITH GRANT OPTION", ex.Message);
            Assert.Equal("", await CatalogFootprintAsync(admin, user));

            // Once the admin owns everything in the schema the same request goes through, as the non-superuser.
            await ExecAsync(admin, "ALTER TABLE " + schema + ".theirs OWNER TO " + app);
            var retry = await GrantPlanner.PlanAsync(appConnection, new GrantRequest(user) { Schemas = new[] { schema } });
            await retry.ExecuteAsync(appConnection);
            Assert.True((await GrantPlanner.PlanAsync(appConnection, new GrantRequest(user) { Schemas = new[] { schema } })).IsEmpty);
            Assert.Null(await TryAsAsync(admin, user, "SELECT * FROM " + schema + ".theirs"));
        }

        [Fact]
        public async Task Revoke_OfAPrivilegeGrantedByAnotherRole_IsVerifiedAndRolledBack()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var schema = await NewSchemaAsync(admin);
            var app = _fixture.Cluster.AppUser!;
            var user = NewName("othergrantor");
            await (await GrantPlanner.PlanAsync(admin, new GrantRequest(user) { Schemas = new[] { schema } })).ExecuteAsync(admin);
            // A second grantor: REVOKE by the admin (acting as the owner) does not remove its grant.
            await ExecAsync(admin, "GRANT USAGE ON SCHEMA " + schema + " TO " + app);
            await ExecAsync(admin, "GRANT SELECT, INSERT ON " + schema + ".plain TO " + app + " WITH GRANT OPTION");
            await using (var appConnection = await _fixture.OpenAppAsync())
            {
                await ExecAsync(appConnection, "GRANT INSERT ON " + schema + ".plain TO " + user);
            }

            var before = await CatalogFootprintAsync(admin, user);
            var plan = await GrantPlanner.PlanAsync(admin, new RevokeRequest(user) { Schemas = new[] { schema } });
            Assert.Contains(plan.Steps, s => s.Sql.StartsWith("REVOKE SELECT, INSERT ON TABLE", StringComparison.Ordinal));
            var ex = await Assert.ThrowsAsync<GrantException>(() => plan.ExecuteAsync(admin));
            Assert.Contains("still needs: revoke INSERT on 1 table in " + schema, ex.Message);
            Assert.Contains("connect as the role that granted", ex.Message);
            Assert.Equal(before, await CatalogFootprintAsync(admin, user));
        }

        [Fact]
        public async Task MissingIamRole_IsAClearError()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var ex = await Assert.ThrowsAsync<GrantException>(() => GrantPlanner.PlanAsync(admin, new GrantRequest(NewName("x")) { IamRoleName = "no_such_iam_role" }));
            Assert.Contains("no_such_iam_role", ex.Message);
            Assert.Contains("does not exist", ex.Message);
        }
    }
}
