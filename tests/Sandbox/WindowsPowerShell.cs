using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The "powershell" a Windows agent runs for AWS-StartNonInteractiveCommand. On Windows the agent
    /// (agent/session/shell/shell_windows.go startExecCmd) splits the command with shlex and runs
    /// exec.Command(appconfig.PowerShellPluginCommandName, words...), where PowerShellPluginCommandName is
    /// %SystemRoot%\System32\WindowsPowerShell\v1.0\powershell.exe (agent/appconfig/constants_windows.go): the words are
    /// arguments of Windows PowerShell 5.1, never a program of their own. Go joins them into a command line that
    /// powershell.exe splits back into the same words (syscall.EscapeArg and the C runtime's rules are inverses), so the
    /// sandbox hands them over as an argument list.
    /// <para>
    /// The sandbox runs a real PowerShell 7 in its place (Windows PowerShell 5.1 does not run here), after reading the
    /// words as 5.1's command line does (<see cref="ToPowerShell7Arguments"/>): 5.1 treats the first word that is not one
    /// of its switches as the start of -Command (7 would take it as -File), and -Command joins all remaining words with
    /// spaces into the script text. What differs, so tests must not depend on it: the engine is 7.x (5.1-only syntax or
    /// cmdlets are not checked, 7-only ones are not rejected), errors use 7's concise view, and no output encoding
    /// quirks of a Windows console (5.1 writes redirected output in the OEM code page unless told otherwise).
    /// </para>
    /// </summary>
    public static class WindowsPowerShell
    {
        /// <summary>The program a Windows agent runs (for messages).</summary>
        public const string AgentProgram = @"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe";

        // Windows PowerShell 5.1's switches (powershell.exe -?): full name, shortest accepted prefix, whether a value
        // follows, and whether PowerShell 7 on Linux accepts it (the others are read and dropped: -Version would start
        // another engine, -WindowStyle and -PSConsoleFile do not exist there).
        private static readonly (string Name, string Min, string Canonical, bool TakesValue, bool Pass)[] Switches =
        {
            ("help", "h", "help", false, true),
            ("?", "?", "help", false, true),
            ("noexit", "noe", "noexit", false, true),
            ("noprofile", "nop", "noprofile", false, true),
            ("nologo", "nol", "nologo", false, true),
            ("noninteractive", "noni", "noninteractive", false, true),
            ("sta", "s", "sta", false, true),
            ("mta", "mta", "mta", false, true),
            ("windowstyle", "w", "windowstyle", true, false),
            ("version", "v", "version", true, false),
            ("psconsolefile", "psc", "psconsolefile", true, false),
            ("outputformat", "o", "outputformat", true, true),
            ("of", "o", "outputformat", true, true),
            ("inputformat", "i", "inputformat", true, true),
            ("if", "i", "inputformat", true, true),
            ("executionpolicy", "ex", "executionpolicy", true, true),
            ("ep", "ep", "executionpolicy", true, true),
            ("encodedcommand", "e", "encodedcommand", true, true),
            ("ec", "e", "encodedcommand", true, true),
            ("configurationname", "config", "configurationname", true, true),
        };

        /// <summary>
        /// The arguments for PowerShell 7 that make it do what Windows PowerShell 5.1 does with <paramref name="words"/>:
        /// leading switches (prefix or full name, "-" or "/", case-insensitive) are kept, the first word that is not a
        /// switch 5.1 knows begins the command (as if -Command stood before it), -Command and -File take every word after
        /// them. Empty words before the command are skipped, as 5.1 does.
        /// </summary>
        public static List<string> ToPowerShell7Arguments(IReadOnlyList<string> words)
        {
            var result = new List<string>();
            for (var i = 0; i < words.Count; i++)
            {
                var key = words[i].Trim().ToLowerInvariant();
                if (key.Length == 0) continue;
                if (key[0] != '-' && key[0] != '/')
                {
                    result.Add("-Command");
                    result.AddRange(words.Skip(i));
                    return result;
                }
                key = key.Substring(1);
                if (key.StartsWith('-')) key = key.Substring(1);
                if (Matches(key, "command", "c"))
                {
                    result.Add("-Command");
                    result.AddRange(words.Skip(i + 1));
                    return result;
                }
                if (Matches(key, "file", "f"))
                {
                    result.Add("-File");
                    result.AddRange(words.Skip(i + 1));
                    return result;
                }
                var known = Switches.FirstOrDefault(s => Matches(key, s.Name, s.Min));
                if (known.Name == null)
                {
                    // "The first parameter we fail to recognize marks the beginning of the command string."
                    result.Add("-Command");
                    result.AddRange(words.Skip(i));
                    return result;
                }
                var value = known.TakesValue && i + 1 < words.Count ? words[++i] : null;
                if (!known.Pass) continue;
                result.Add("-" + known.Canonical);
                if (value != null) result.Add(value);
            }
            return result;
        }

        private static bool Matches(string key, string name, string min) =>
            name.StartsWith(key, StringComparison.Ordinal) && key.Length >= min.Length;

        private static readonly Lazy<string[]?> s_located = new(Locate);

        /// <summary><see cref="Locate"/>'s answer, looked up once per process.</summary>
        public static string[]? Located => s_located.Value;

        /// <summary>
        /// A PowerShell to stand in for powershell.exe: program and leading arguments, or null when none is found.
        /// BASTIONTOOLS_SANDBOX_POWERSHELL (a pwsh executable or pwsh.dll), then pwsh on PATH, then the PowerShell .NET
        /// tool in the NuGet package cache (the repository's pinned `dotnet pwsh`), run with the dotnet host.
        /// </summary>
        public static string[]? Locate()
        {
            var configured = Environment.GetEnvironmentVariable("BASTIONTOOLS_SANDBOX_POWERSHELL");
            if (!string.IsNullOrWhiteSpace(configured)) return FromPath(configured!);
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
            {
                var candidate = Path.Combine(dir, OperatingSystem.IsWindows() ? "pwsh.exe" : "pwsh");
                if (File.Exists(candidate)) return new[] { candidate };
            }
            var packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
            if (string.IsNullOrEmpty(packages)) packages = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            var tool = Path.Combine(packages!, "powershell");
            if (!Directory.Exists(tool)) return null;
            var flavour = OperatingSystem.IsWindows() ? "win" : "unix";
            var dll = Directory.EnumerateDirectories(tool)
                .Select(d => (Version: Version.TryParse(Path.GetFileName(d), out var v) ? v : null, Dir: d))
                .Where(d => d.Version != null)
                .OrderByDescending(d => d.Version)
                .SelectMany(d => Directory.Exists(Path.Combine(d.Dir, "tools"))
                    ? Directory.EnumerateFiles(Path.Combine(d.Dir, "tools"), "pwsh.dll", SearchOption.AllDirectories).Where(f => f.Contains(Path.DirectorySeparatorChar + flavour + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    : Enumerable.Empty<string>())
                .FirstOrDefault();
            return dll == null ? null : FromPath(dll);
        }

        /// <summary>The program and leading arguments that run the PowerShell at <paramref name="path"/> (pwsh.dll through the dotnet host).</summary>
        public static string[] FromPath(string path) =>
            path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) ? new[] { DotnetHost(), path } : new[] { path };

        private static string DotnetHost()
        {
            var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (!string.IsNullOrEmpty(host) && File.Exists(host)) return host!;
            var self = Environment.ProcessPath;
            if (self != null && Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase)) return self;
            return "dotnet";
        }
    }
}
