using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;

namespace BastionTools.Infra.Tests
{
    /// <summary>
    /// The operator policy the stack deploys grants exactly the union of the README's "Permissions" table (the table the
    /// module's least-privilege tests run each cmdlet with): no action or resource more, none less.
    /// </summary>
    [Collection(InfraCollection.Name)]
    public sealed class ReadmePermissionsTests
    {
        private readonly Stacks _stacks;

        public ReadmePermissionsTests(Stacks stacks) => _stacks = stacks;

        /// <summary>One row of the table: the command and its (action, resource) grants, resources as written (placeholders kept).</summary>
        internal sealed record Row(string Command, IReadOnlyList<(string Action, string Resource)> Grants);

        /// <summary>
        /// Reads the table between &lt;!-- permissions-table --&gt; markers: the first cell is the command in backticks, the
        /// second "`a`, `b` on `r1`, `r2`; `c` on `r3`" or "nothing".
        /// </summary>
        internal static IReadOnlyList<Row> ReadTable()
        {
            var readme = File.ReadAllText(Path.Combine(RepositoryRoot(), "README.md"));
            var table = Regex.Match(readme, "<!-- permissions-table -->(.*?)<!-- /permissions-table -->", RegexOptions.Singleline);
            Assert.True(table.Success, "README.md has no <!-- permissions-table --> section.");
            var rows = new List<Row>();
            foreach (var line in table.Groups[1].Value.Split('\n'))
            {
                var m = Regex.Match(line, @"^\|\s*`([^`]+)`[^|]*\|([^|]*)\|");
                if (!m.Success) continue;
                var needs = m.Groups[2].Value.Trim();
                var grants = new List<(string, string)>();
                if (needs != "nothing")
                {
                    foreach (var group in needs.Split(';'))
                    {
                        var parts = Regex.Split(group, @"\s+on\s+");
                        Assert.True(parts.Length == 2, $"README permissions row '{m.Groups[1].Value}': '{group.Trim()}' is not \"`action`, ... on `resource`, ...\".");
                        var actions = Regex.Matches(parts[0], "`([^`]+)`").Select(x => x.Groups[1].Value).ToList();
                        var resources = Regex.Matches(parts[1], "`([^`]+)`").Select(x => x.Groups[1].Value).ToList();
                        Assert.NotEmpty(actions);
                        Assert.NotEmpty(resources);
                        grants.AddRange(actions.SelectMany(a => resources.Select(r => (a, r))));
                    }
                }
                rows.Add(new Row(m.Groups[1].Value, grants));
            }
            // Every line of the table but the header and its separator is a row: none may be skipped unread.
            Assert.Equal(table.Groups[1].Value.Split('\n').Count(l => l.TrimStart().StartsWith('|')) - 2, rows.Count);
            return rows;
        }

        private static string RepositoryRoot()
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "README.md")) && Directory.Exists(Path.Combine(dir.FullName, "infra"))) return dir.FullName;
            }
            throw new InvalidOperationException("The repository root (README.md next to infra/) was not found above " + AppContext.BaseDirectory);
        }

        /// <summary>The README's placeholders, for both sides: database users of either kind are "a listed database user".</summary>
        private static string NormalizeReadme(string resource) => resource.Replace("<admin-user>", "<db-user>", StringComparison.Ordinal);

        /// <summary>The template's pseudo parameters and references, written as the README's placeholders.</summary>
        private static string NormalizeTemplate(string resource, Synthesized? s = null)
        {
            var sessionDataKey = s?.Stack.Logging.SessionDataKey;
            if (sessionDataKey != null && resource == "{" + s!.Id(sessionDataKey) + ".Arn}") return "arn:aws:kms:<region>:<account>:key/<key-id>";
            var r = resource
                .Replace("{AWS::Partition}", "aws", StringComparison.Ordinal)
                .Replace("{AWS::Region}", "<region>", StringComparison.Ordinal)
                .Replace("{AWS::AccountId}", "<account>", StringComparison.Ordinal);
            r = Regex.Replace(r, @":instance/\{[^}]+\}$", ":instance/<instance-id>");
            r = Regex.Replace(r, @":dbuser:\{[^}]+\.DbiResourceId\}/[^/]+$", ":dbuser:<dbi-resource-id>/<db-user>");
            return r;
        }

        /// <summary>(action, resource) pairs of the operator policy, except the ones the README states in prose (named by Sid).</summary>
        private static HashSet<(string, string)> Granted(Synthesized s, params string[] exceptSids)
        {
            var statements = Synthesized.Many(s.Properties(s.Id(s.Stack.Access.Policy)).GetProperty("PolicyDocument").GetProperty("Statement"));
            var set = new HashSet<(string, string)>();
            foreach (var st in statements)
            {
                Assert.Equal("Allow", st.GetProperty("Effect").GetString());
                if (exceptSids.Contains(st.GetProperty("Sid").GetString())) continue;
                foreach (var action in Synthesized.Many(st.GetProperty("Action")).Select(a => a.GetString()!))
                {
                    foreach (var resource in Synthesized.Many(st.GetProperty("Resource")).Select(Synthesized.Render)) set.Add((action, NormalizeTemplate(resource, s)));
                }
            }
            return set;
        }

        /// <summary>The shell rows are in the policy only with enableShell.</summary>
        private static bool IsShellRow(Row row) => row.Command == "Start-BastionSession -Target" || row.Command == "Start-BastionSession -Target -Command";

        private static HashSet<(string, string)> Documented(bool shell) =>
            ReadTable().Where(r => shell || !IsShellRow(r)).SelectMany(r => r.Grants).Select(g => (g.Action, NormalizeReadme(g.Resource))).ToHashSet();

        [Fact]
        public void The_table_is_there_and_names_every_cmdlet_the_module_exports()
        {
            var rows = ReadTable();
            Assert.Equal(rows.Count, rows.Select(r => r.Command).Distinct().Count());
            var manifest = File.ReadAllText(Path.Combine(RepositoryRoot(), "BastionTools.psd1"));
            var exported = Regex.Match(manifest, @"CmdletsToExport\s*=\s*@\(([^)]*)\)", RegexOptions.Singleline);
            Assert.True(exported.Success, "CmdletsToExport not found in BastionTools.psd1");
            foreach (var cmdlet in Regex.Matches(exported.Groups[1].Value, "'([^']+)'").Select(m => m.Groups[1].Value))
            {
                Assert.True(rows.Any(r => r.Command == cmdlet || r.Command.StartsWith(cmdlet + " ", StringComparison.Ordinal)), $"The README permissions table has no row for {cmdlet}.");
            }
        }

        [Fact]
        public void Without_the_shell_the_policy_is_exactly_the_union_of_the_rows()
        {
            var granted = Granted(_stacks.Default, "OwnSessionsAssumedRoles");
            var documented = Documented(shell: false);
            Assert.Equal(documented.OrderBy(x => x).ToArray(), granted.OrderBy(x => x).ToArray());
        }

        [Fact]
        public void With_the_shell_the_shell_rows_join_and_the_default_document_is_checked_as_the_notes_say()
        {
            var s = _stacks.Shell;
            // EncryptSessionData (kms:GenerateDataKey on the session-data key, with sessionDataKms) is the shell rows'
            // kms:GenerateDataKey on arn:aws:kms:<region>:<account>:key/<key-id>.
            Assert.NotNull(s.Stack.Logging.SessionDataKey);
            var granted = Granted(s, "OwnSessionsAssumedRoles");
            Assert.Contains(("kms:GenerateDataKey", "arn:aws:kms:<region>:<account>:key/<key-id>"), granted);
            var documented = Documented(shell: true);
            // The interactive shell's row names no document; its note says ssm:SessionDocumentAccessCheck (which the
            // policy sets) makes Session Manager check SSM-SessionManagerRunShell, so the policy allows that document too.
            documented.Add(("ssm:StartSession", "arn:aws:ssm:<region>:<account>:document/SSM-SessionManagerRunShell"));
            Assert.Contains("`ssm:SessionDocumentAccessCheck`", string.Join("\n", File.ReadAllLines(Path.Combine(RepositoryRoot(), "README.md"))), StringComparison.Ordinal);
            Assert.Equal(documented.OrderBy(x => x).ToArray(), granted.OrderBy(x => x).ToArray());

            // The condition the notes describe: data keys only for sessions on the bastion.
            var readme = File.ReadAllText(Path.Combine(RepositoryRoot(), "README.md"));
            Assert.Contains("`StringEquals` `kms:EncryptionContext:aws:ssm:TargetId` = `<instance-id>`", Regex.Replace(readme, @"\s+", " "), StringComparison.Ordinal);
            var st = Assert.Single(Synthesized.Many(s.Properties(s.Id(s.Stack.Access.Policy)).GetProperty("PolicyDocument").GetProperty("Statement")),
                x => x.GetProperty("Sid").GetString() == "EncryptSessionData");
            var condition = Assert.Single(st.GetProperty("Condition").EnumerateObject());
            Assert.Equal("StringEquals", condition.Name);
            var key = Assert.Single(condition.Value.EnumerateObject());
            Assert.Equal("kms:EncryptionContext:aws:ssm:TargetId", key.Name);
            Assert.Equal("{" + s.Id(s.Stack.Bastion.Instance) + "}", Synthesized.Render(key.Value));
        }

        [Fact]
        public void Without_the_shell_no_kms_permission_is_granted_though_session_data_is_encrypted()
        {
            // Only shell and command sessions are encrypted: the default stack encrypts them (sessionDataKms) but lets
            // operators start neither, so its policy grants no kms action (the rows that need one are the shell rows).
            var s = _stacks.Default;
            Assert.NotNull(s.Stack.Logging.SessionDataKey);
            Assert.DoesNotContain(Granted(s), g => g.Item1.StartsWith("kms:", StringComparison.Ordinal));
            Assert.All(ReadTable().Where(r => r.Grants.Any(g => g.Action.StartsWith("kms:", StringComparison.Ordinal))), r => Assert.True(IsShellRow(r), r.Command));
        }

        [Fact]
        public void The_assumed_role_variant_of_own_sessions_is_the_one_the_readme_describes()
        {
            var readme = File.ReadAllText(Path.Combine(RepositoryRoot(), "README.md"));
            Assert.Contains("`ssm:resourceTag/aws:ssmmessages:session-id` = `${aws:userid}`", readme, StringComparison.Ordinal);
            var s = _stacks.Default;
            var st = Assert.Single(Synthesized.Many(s.Properties(s.Id(s.Stack.Access.Policy)).GetProperty("PolicyDocument").GetProperty("Statement")),
                x => x.GetProperty("Sid").GetString() == "OwnSessionsAssumedRoles");
            Assert.Equal(new[] { "ssm:ResumeSession", "ssm:TerminateSession" }, Synthesized.Many(st.GetProperty("Action")).Select(a => a.GetString()).ToArray());
            Assert.Equal("arn:aws:ssm:<region>:<account>:session/*", NormalizeTemplate(Synthesized.Render(Assert.Single(Synthesized.Many(st.GetProperty("Resource"))))));
            Assert.Equal("${aws:userid}", st.GetProperty("Condition").GetProperty("StringLike").GetProperty("ssm:resourceTag/aws:ssmmessages:session-id").GetString());
        }
    }
}
