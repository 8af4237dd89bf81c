using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading.Tasks;
using BastionTools.Postgres;
using Npgsql;
using Xunit;
using static BastionTools.Tests.Postgres.GrantClusterFixture;

namespace BastionTools.Tests.Postgres
{
    [Collection(GrantClusterCollection.Name)]
    public sealed class PgIdentifierTests
    {
        private readonly GrantClusterFixture _fixture;

        public PgIdentifierTests(GrantClusterFixture fixture)
        {
            _fixture = fixture;
        }

        /// <summary>Names PostgreSQL keeps exactly (≤ 63 UTF-8 bytes, no NUL): quoted, never refused.</summary>
        public static IEnumerable<object[]> AcceptedNames() => new[]
        {
            "simple", "app_reader", "_leading_underscore", "a1", "x_9_y", "abort", "owner", "public",
            "a$b", "$dollar", "1starts_with_digit", "Order", "order", "user", "select", "table", "current_user", "session_user",
            "between", "authorization", "none", "pg_x", "PUBLIC", "MixedCase", "UPPER",
            "with space", " leading", "trailing ", "semi;colon", "; DROP TABLE x; --", "x\"; DROP ROLE sandbox_admin; --",
            "quote'single", "o'; drop table seed_items; --", "dq\"inside", "\"", "\"\"", "\"quoted\"", "back\\slash", "dash-name", "dot.name",
            "tab\tname", "new\nline", "ünïcödé", "Ünïcödé", "日本語", "emoji😀", "🎉", "zero\u200Bwidth", "é", "ß",
            "esc\u001B[31mred", "rtl\u202Eevil", "bell\u0007", "nb\u00A0sp", "nel\u0085", "bom\uFEFF", "line\u2028sep", "private\uE000",
            "back\\slash\nnewline", "\"\n\"", "\r\n", "\\", "\u0001", "del\u007F", "lri\u2066x\u2069", "U&\"x\"", "u&x",
            new string('a', 63), string.Concat(Enumerable.Repeat("日", 21)), new string('a', 59) + "😀", new string('a', 61) + "é",
        }.Select(n => new object[] { n });

        /// <summary>Names PostgreSQL would change or cannot hold: refused with ArgumentException.</summary>
        public static IEnumerable<object[]> RefusedNames() => new[]
        {
            "", "\0", "a\0b", new string('a', 64), string.Concat(Enumerable.Repeat("日", 22)), new string('a', 62) + "é",
            new string('a', 60) + "😀",
        }.Select(n => new object[] { n });

        [Theory]
        [MemberData(nameof(AcceptedNames))]
        public async Task Quote_EqualsTheServersQuoteIdent_AndARoleCreatedWithItReadsBackExactly(string name)
        {
            Assert.True(Encoding.UTF8.GetByteCount(name) <= 63);
            var quoted = PgIdentifier.Quote(name);
            await using var admin = await _fixture.OpenAdminAsync();
            if (HasInvisibleOrControl(name))
            {
                // Shown as it runs: a U&"..." identifier whose text holds no control, format or separator character.
                Assert.StartsWith("U&\"", quoted);
                Assert.False(HasInvisibleOrControl(quoted), quoted);
            }
            else
            {
                Assert.Equal(await ScalarAsync<string>(admin, "select quote_ident($1)", name), quoted);
            }

            // pg_ names and "public"/"none" are reserved as role names: round-trip those as a table name instead.
            var asRole = !(name.StartsWith("pg_", StringComparison.Ordinal) || name == "public" || name == "none");
            await using var tx = await admin.BeginTransactionAsync();
            var sql = asRole ? "CREATE ROLE " + quoted : "CREATE TABLE public." + quoted + " ()";
            await using (var create = new NpgsqlCommand(sql, admin, tx)) await create.ExecuteNonQueryAsync();
            var catalogSql = asRole
                ? "select rolname::text from pg_roles where oid = (select max(oid) from pg_roles)"
                : "select relname::text from pg_class where oid = (select max(oid) from pg_class where relkind = 'r')";
            await using (var read = new NpgsqlCommand(catalogSql, admin, tx))
            {
                Assert.Equal(name, (string)(await read.ExecuteScalarAsync())!);
            }

            await tx.RollbackAsync();
        }

        /// <summary>Independent of the implementation: C0/C1 controls, format characters (bidi controls, zero-width), line and paragraph separators, spaces other than U+0020, private use.</summary>
        private static bool HasInvisibleOrControl(string s)
        {
            for (var i = 0; i < s.Length; i++)
            {
                var c = s[i];
                if (char.IsControl(c) || (char.IsWhiteSpace(c) && c != ' ')) return true;
                var cat = System.Globalization.CharUnicodeInfo.GetUnicodeCategory(s, i);
                if (cat is System.Globalization.UnicodeCategory.Format or System.Globalization.UnicodeCategory.LineSeparator
                    or System.Globalization.UnicodeCategory.ParagraphSeparator or System.Globalization.UnicodeCategory.PrivateUse
                    or System.Globalization.UnicodeCategory.SpaceSeparator && c != ' ') return true;
            }

            return false;
        }

        [Theory]
        [InlineData("new\nline", "U&\"new\\000Aline\"")]
        [InlineData("esc\u001B[31mred", "U&\"esc\\001B[31mred\"")]
        [InlineData("rtl\u202Eevil", "U&\"rtl\\202Eevil\"")]
        [InlineData("back\\slash\n", "U&\"back\\\\slash\\000A\"")]
        [InlineData("q\"\t", "U&\"q\"\"\\0009\"")]
        [InlineData("Ünï\u200B", "U&\"Ünï\\200B\"")]
        [InlineData("\U0010FFFD", "U&\"\\+10FFFD\"")]
        public async Task UnusualNames_AreWrittenAsUnicodeEscapes_ThatTheServerReadsBackExactly(string name, string expected)
        {
            Assert.Equal(expected, PgIdentifier.Quote(name));
            await using var admin = await _fixture.OpenAdminAsync();
            await using var tx = await admin.BeginTransactionAsync();
            // Unicode-escaped identifiers do not depend on standard_conforming_strings (only U&'' strings do).
            await using (var scs = new NpgsqlCommand("SET LOCAL standard_conforming_strings = off", admin, tx)) await scs.ExecuteNonQueryAsync();
            await using (var create = new NpgsqlCommand("CREATE TABLE public." + expected + " (); CREATE ROLE " + expected, admin, tx)) await create.ExecuteNonQueryAsync();
            await using (var read = new NpgsqlCommand("select count(*) from pg_class c join pg_roles r on r.rolname = c.relname where c.relname = $1", admin, tx))
            {
                read.Parameters.Add(new NpgsqlParameter { Value = name });
                Assert.Equal(1L, (long)(await read.ExecuteScalarAsync())!);
            }

            await tx.RollbackAsync();
        }

        [Theory]
        [MemberData(nameof(RefusedNames))]
        public void Quote_RefusesNamesPostgresWouldNotKeep(string name)
        {
            var ex = Assert.Throws<ArgumentException>(() => PgIdentifier.Quote(name));
            Assert.Matches("empty|NUL|bytes|surrogate", ex.Message);
            Assert.Throws<ArgumentException>(() => new GrantRequest(name).Validate());
            Assert.Throws<ArgumentException>(() => new GrantRequest("ok_user") { Schemas = new[] { name } }.Validate());
        }

        [Fact]
        public async Task SixtyFourBytes_WouldBeTruncatedByTheServer_WhichIsWhyItIsRefused()
        {
            var name = new string('b', 64);
            await using var admin = await _fixture.OpenAdminAsync();
            await using (var tx = await admin.BeginTransactionAsync())
            {
                await using (var create = new NpgsqlCommand("CREATE ROLE \"" + name + "\"", admin, tx)) await create.ExecuteNonQueryAsync();
                await using (var read = new NpgsqlCommand("select rolname::text from pg_roles where oid = (select max(oid) from pg_roles)", admin, tx))
                {
                    Assert.Equal(new string('b', 63), (string)(await read.ExecuteScalarAsync())!);
                }

                await tx.RollbackAsync();
            }

            var ex = Assert.Throws<ArgumentException>(() => PgIdentifier.Quote(name));
            Assert.Contains("64 bytes", ex.Message);
            Assert.Contains("truncate", ex.Message);
        }

        [Fact]
        public void Quote_RefusesUnpairedSurrogates()
        {
            // Not in the theory data: xUnit's serialization would turn them into U+FFFD.
            foreach (var name in new[] { "bad\uD800surrogate", "\uDC00", "x\uD83D" })
            {
                var ex = Assert.Throws<ArgumentException>(() => PgIdentifier.Quote(name));
                Assert.Contains("surrogate", ex.Message);
            }

            Assert.Equal("\"😀\"", PgIdentifier.Quote("\uD83D\uDE00"));
        }

        [Fact]
        public void Quote_Null_Throws()
        {
            Assert.Throws<ArgumentNullException>(() => PgIdentifier.Quote(null!));
        }

        [Fact]
        public async Task EmbeddedKeywords_AreExactlyTheServersNonUnreservedKeywords()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            var server = await StringsAsync(admin, "select word || ':' || catcode::text from pg_get_keywords() where catcode <> 'U' order by word");
            var embedded = PgIdentifier.NonUnreservedKeywords.OrderBy(k => k.Key, StringComparer.Ordinal).Select(k => k.Key + ":" + k.Value).ToList();
            Assert.Equal(server, embedded);
        }

        [Fact]
        public async Task EveryKeyword_QuotesAsTheServerDoes()
        {
            await using var admin = await _fixture.OpenAdminAsync();
            await using var cmd = new NpgsqlCommand("select word, quote_ident(word), quote_ident(upper(word)) from pg_get_keywords()", admin);
            await using var reader = await cmd.ExecuteReaderAsync();
            var count = 0;
            while (await reader.ReadAsync())
            {
                var word = reader.GetString(0);
                Assert.Equal(reader.GetString(1), PgIdentifier.Quote(word));
                Assert.Equal(reader.GetString(2), PgIdentifier.Quote(word.ToUpperInvariant()));
                count++;
            }

            Assert.True(count > 400, "pg_get_keywords returned " + count);
        }

        [Theory]
        [InlineData("public")]
        [InlineData("none")]
        [InlineData("pg_monitor_me")]
        public void RoleNames_ThatPostgresReadsAsSomethingElse_AreRefused(string name)
        {
            var ex = Assert.Throws<ArgumentException>(() => new GrantRequest(name).Validate());
            Assert.Contains(name, ex.Message);
            Assert.Throws<ArgumentException>(() => new RevokeRequest(name).Validate());
            Assert.Throws<ArgumentException>(() => new GrantRequest("ok_user") { ForRoles = new[] { "public" } }.Validate());
        }

        [Fact]
        public void RefusalMessages_ShowTheNameEscaped()
        {
            var ex = Assert.Throws<ArgumentException>(() => new GrantRequest("pg_\u202Eevil\n").Validate());
            Assert.Contains("'pg_\\u202Eevil\\u000A' starts with pg_", ex.Message);
            Assert.DoesNotContain("\u202E", ex.Message, StringComparison.Ordinal);
            var schema = Assert.ThrowsAny<ArgumentException>(() => new GrantRequest("ok_user") { Schemas = new[] { "pg_\u001B[31m" } }.Validate());
            Assert.Contains("U&\"pg_\\001B[31m\"", schema.Message);
            Assert.DoesNotContain("\u001B", schema.Message, StringComparison.Ordinal);
        }

        [Theory]
        [InlineData("plain text", "plain text")]
        [InlineData("schema \"a\u202Eb\"\n", "schema \"a\\u202Eb\"\\u000A")]
        [InlineData("\u001B[31mred\u001B[0m", "\\u001B[31mred\\u001B[0m")]
        [InlineData("tag\U000E0001 😀 é", "tag\\U000E0001 😀 é")]
        [InlineData("e\u0301 \u0301x", "e\u0301 \\u0301x")]
        public void Printable_EscapesWhatDoesNotShowAsItself(string text, string expected)
        {
            Assert.Equal(expected, PgIdentifier.Printable(text));
        }

        [Theory]
        [InlineData("pg_catalog")]
        [InlineData("information_schema")]
        [InlineData("pg_toast")]
        [InlineData("pg_temp")]
        [InlineData("pg_temp_3")]
        [InlineData("pg_toast_temp_3")]
        [InlineData("pg_anything")]
        public void SystemSchemas_AreRefused_ForGrantAndRevoke(string schema)
        {
            var ex = Assert.ThrowsAny<ArgumentException>(() => new GrantRequest("ok_user") { Schemas = new[] { "public", schema } }.Validate());
            Assert.Contains("system schema", ex.Message);
            Assert.Contains(schema, ex.Message);
            Assert.ThrowsAny<ArgumentException>(() => new RevokeRequest("ok_user") { Schemas = new[] { schema } }.Validate());
        }

        [Theory]
        [InlineData("PG_CATALOG")]
        [InlineData("Information_Schema")]
        [InlineData("pgcatalog")]
        [InlineData("my_pg_catalog")]
        public void UserSchemas_ThatOnlyLookLikeSystemSchemas_AreAccepted(string schema)
        {
            // Identifiers are case-sensitive here: "PG_CATALOG" is an ordinary schema PostgreSQL lets anyone create.
            new GrantRequest("ok_user") { Schemas = new[] { schema } }.Validate();
            new RevokeRequest("ok_user") { Schemas = new[] { schema } }.Validate();
        }

        [Theory]
        [InlineData("plain", "'plain'")]
        [InlineData("it's", "'it''s'")]
        [InlineData("back\\slash", "E'back\\\\slash'")]
        [InlineData("", "''")]
        public async Task Literal_MatchesTheServersQuoteLiteral_AndRoundTrips(string value, string expected)
        {
            Assert.Equal(expected, PgLiteral.Quote(value));
            await using var admin = await _fixture.OpenAdminAsync();
            Assert.Equal(expected, await ScalarAsync<string>(admin, "select quote_literal($1)", value));
            Assert.Equal(value, await ScalarAsync<string>(admin, "select " + PgLiteral.Quote(value)));
        }
    }
}
