using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
using BastionTools.Postgres;
using Xunit;

namespace BastionTools.Tests.Postgres
{
    /// <summary>
    /// psql's command line: arguments quoted by the Windows rules (what the Microsoft C runtime and CommandLineToArgvW
    /// read back, and what .NET on Unix splits ProcessStartInfo.Arguments by), and only executables started.
    /// </summary>
    public sealed class PsqlLauncherTests
    {
        public static IEnumerable<object[]> QuotingTable() => new[]
        {
            // The issue's examples: a cmd.exe metacharacter payload stays one literal argument; a psql meta-command keeps its one backslash.
            new[] { "x\" & calc & \"", "\"x\\\" & calc & \\\"\"" },
            new[] { "\\d foo", "\"\\d foo\"" },
            new[] { "\\conninfo", "\\conninfo" },
            new[] { "select 1", "\"select 1\"" },
            new[] { "plain", "plain" },
            new[] { "", "\"\"" },
            new[] { "a\tb", "\"a\tb\"" },
            new[] { "line\nbreak", "\"line\nbreak\"" },
            new[] { "\"", "\"\\\"\"" },
            new[] { "say \"hi\"", "\"say \\\"hi\\\"\"" },
            new[] { "no\"space", "\"no\\\"space\"" },
            // Backslashes are literal unless a quote follows them (an escaped one, or the closing one).
            new[] { "C:\\Program Files\\PostgreSQL\\", "\"C:\\Program Files\\PostgreSQL\\\\\"" },
            new[] { "C:\\dir\\", "C:\\dir\\" },
            new[] { "trail \\\\", "\"trail \\\\\\\\\"" },
            new[] { "a\\\"b c", "\"a\\\\\\\"b c\"" },
            new[] { "\\\\server\\share x", "\"\\\\server\\share x\"" },
            new[] { "ünïcödé 日本語 😀", "\"ünïcödé 日本語 😀\"" },
            new[] { "ünïcödé", "ünïcödé" },
            new[] { "'single quoted'", "\"'single quoted'\"" },
            new[] { "%PATH%&|<>^", "%PATH%&|<>^" },
        }.Select(r => new object[] { r[0], r[1] });

        [Theory]
        [MemberData(nameof(QuotingTable))]
        public void QuoteArgument_FollowsTheWindowsRules(string argument, string expected)
        {
            var quoted = WindowsCommandLine.QuoteArgument(argument);
            Assert.Equal(expected, quoted);
            Assert.Equal(new[] { argument }, ParseMsvcrt(quoted));
        }

        [Theory]
        [MemberData(nameof(QuotingTable))]
        public void Join_ThenParse_GivesBackEveryArgument(string argument, string expected)
        {
            _ = expected;
            var args = new[] { "first", argument, "", argument + "\\", "last" };
            Assert.Equal(args, ParseMsvcrt(WindowsCommandLine.Join(args)));
        }

        [Fact]
        public void QuoteThenParse_IsTheIdentity_ForRandomStrings()
        {
            // Characters that matter to the rules, weighted, plus ordinary and non-ASCII ones.
            var alphabet = new[] { "\\", "\\", "\\", "\"", "\"", " ", "\t", "\n", "a", "b", "&", "|", "%", "^", "'", "é", "日", "😀", "\\\"", "\"\"" };
            var random = new Random(20261130);
            for (var i = 0; i < 5000; i++)
            {
                var args = Enumerable.Range(0, random.Next(1, 5)).Select(_ =>
                {
                    var sb = new StringBuilder();
                    var length = random.Next(0, 12);
                    for (var k = 0; k < length; k++) sb.Append(alphabet[random.Next(alphabet.Length)]);
                    return sb.ToString();
                }).ToArray();
                var line = WindowsCommandLine.Join(args);
                Assert.True(args.SequenceEqual(ParseMsvcrt(line)), $"'{line}' does not parse back to [{string.Join("|", args)}]");
            }
        }

        /// <summary>
        /// The real splitter: .NET on Linux and macOS splits ProcessStartInfo.Arguments by the same rules, so a process
        /// started with the quoted line gets exactly the strings (printf prints each argument followed by NUL).
        /// On Windows the C runtime of the started program does this, and the reference parser above stands for it.
        /// </summary>
        [Fact]
        public void AProcessStartedWithTheQuotedLine_GetsTheArgumentsExactly()
        {
            if (RuntimeInformation.IsOSPlatform(OSPlatform.Windows)) return;
            var args = QuotingTable().Select(r => (string)r[0]).Concat(new[] { "", "end\\" }).ToArray();
            var psi = new ProcessStartInfo("printf")
            {
                Arguments = WindowsCommandLine.Join(new[] { "%s\\0" }.Concat(args)),
                UseShellExecute = false,
                RedirectStandardOutput = true,
                StandardOutputEncoding = new UTF8Encoding(false),
            };
            using var p = Process.Start(psi)!;
            var output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.Equal(0, p.ExitCode);
            Assert.Equal(args, output.Split('\0').Take(args.Length).ToArray());
            Assert.Equal(args.Length, output.Count(c => c == '\0'));
        }

        [Theory]
        [InlineData("C:\\PostgreSQL\\bin\\psql.exe", true, true)]
        [InlineData("C:\\PostgreSQL\\bin\\PSQL.EXE", true, true)]
        [InlineData("C:\\tools\\psql.cmd", true, false)]
        [InlineData("C:\\tools\\psql.bat", true, false)]
        [InlineData("C:\\tools\\psql.BAT", true, false)]
        [InlineData("C:\\tools\\psql.ps1", true, false)]
        [InlineData("C:\\tools\\psql", true, false)]
        [InlineData("/usr/bin/psql", false, true)]
        [InlineData("/opt/pg/bin/psql.sh", false, true)]
        public void OnlyExecutablesAreStarted_OnWindowsOnlyExe(string path, bool windows, bool accepted)
        {
            var reason = PsqlLauncher.RefusalReason(path, windows);
            Assert.Equal(accepted, reason == null);
            if (!accepted) Assert.Contains(path, reason);
        }

        [Fact]
        public void PathSearch_LooksForPsqlExeOnly_OnWindows()
        {
            Assert.Equal("psql.exe", PsqlLauncher.ExecutableName(windows: true));
            Assert.Equal("psql", PsqlLauncher.ExecutableName(windows: false));
        }

        /// <summary>
        /// A reference parser of the documented Microsoft C runtime rules ("Parsing C command-line arguments"): arguments
        /// are separated by spaces or tabs; a double quote starts or ends a quoted part; inside a quoted part "" is a
        /// literal quote; 2n backslashes before a quote give n backslashes and the quote acts as a delimiter; 2n+1
        /// backslashes before a quote give n backslashes and a literal quote; other backslashes are literal.
        /// </summary>
        internal static List<string> ParseMsvcrt(string line)
        {
            var result = new List<string>();
            var i = 0;
            while (true)
            {
                while (i < line.Length && (line[i] == ' ' || line[i] == '\t')) i++;
                if (i >= line.Length) return result;
                var arg = new StringBuilder();
                var quoted = false;
                while (i < line.Length && (quoted || (line[i] != ' ' && line[i] != '\t')))
                {
                    if (line[i] == '\\')
                    {
                        var start = i;
                        while (i < line.Length && line[i] == '\\') i++;
                        var n = i - start;
                        if (i < line.Length && line[i] == '"')
                        {
                            arg.Append('\\', n / 2);
                            if (n % 2 == 1)
                            {
                                arg.Append('"');
                                i++;
                            }
                        }
                        else
                        {
                            arg.Append('\\', n);
                        }
                        continue;
                    }
                    if (line[i] == '"')
                    {
                        if (quoted && i + 1 < line.Length && line[i + 1] == '"')
                        {
                            arg.Append('"');
                            i += 2;
                            continue;
                        }
                        quoted = !quoted;
                        i++;
                        continue;
                    }
                    arg.Append(line[i]);
                    i++;
                }
                result.Add(arg.ToString());
            }
        }
    }
}
