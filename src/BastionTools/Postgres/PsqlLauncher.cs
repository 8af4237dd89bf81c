using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace BastionTools.Postgres
{
    /// <summary>
    /// Command lines by the Windows rules (the Microsoft C runtime's and CommandLineToArgvW's, documented in "Parsing C
    /// command-line arguments"): a program started with ProcessStartInfo.Arguments gets back exactly the strings given.
    /// .NET on Linux and macOS splits ProcessStartInfo.Arguments by the same rules, so one quoting serves everywhere
    /// (ProcessStartInfo.ArgumentList would too, but Windows PowerShell 5.1's .NET Framework does not have it).
    /// </summary>
    internal static class WindowsCommandLine
    {
        /// <summary>
        /// One argument, quoted only when it must be: empty, or with a space, tab, newline or double quote. Inside quotes,
        /// backslashes are literal except before a double quote: a run of n backslashes before a quote (or before the
        /// closing quote) becomes 2n, and the quote itself is escaped. Backslashes elsewhere are kept as they are.
        /// </summary>
        public static string QuoteArgument(string arg)
        {
            if (arg == null) throw new ArgumentNullException(nameof(arg));
            if (arg.Length > 0 && arg.IndexOfAny(new[] { ' ', '\t', '\n', '\v', '"' }) < 0) return arg;
            var sb = new StringBuilder(arg.Length + 2);
            sb.Append('"');
            var backslashes = 0;
            foreach (var c in arg)
            {
                if (c == '\\')
                {
                    backslashes++;
                    continue;
                }
                if (c == '"')
                {
                    sb.Append('\\', backslashes * 2 + 1);
                }
                else
                {
                    sb.Append('\\', backslashes);
                }
                backslashes = 0;
                sb.Append(c);
            }
            // Before the closing quote every backslash is doubled, so none of them escapes it.
            sb.Append('\\', backslashes * 2);
            sb.Append('"');
            return sb.ToString();
        }

        /// <summary>The arguments joined into one command-line tail (after the program name).</summary>
        public static string Join(IEnumerable<string> args)
        {
            var sb = new StringBuilder();
            foreach (var a in args)
            {
                if (sb.Length > 0) sb.Append(' ');
                sb.Append(QuoteArgument(a));
            }
            return sb.ToString();
        }
    }

    /// <summary>Which psql may be started: an executable only, never a script that would go through a shell.</summary>
    internal static class PsqlLauncher
    {
        /// <summary>
        /// Why <paramref name="path"/> cannot be started as psql, or null when it can. On Windows only an .exe is started
        /// directly: a .cmd or .bat runs through cmd.exe, which reads the command line by its own rules (&amp;, |, %VAR%),
        /// so no quoting makes arguments safe there; a .ps1 or any other extension is not an executable at all.
        /// </summary>
        public static string? RefusalReason(string path, bool windows)
        {
            if (!windows) return null;
            var ext = Path.GetExtension(path);
            if (string.Equals(ext, ".exe", StringComparison.OrdinalIgnoreCase)) return null;
            return $"'{path}' is not an executable (.exe): psql is started directly, never through cmd.exe or another shell, so batch files and scripts are refused.";
        }

        /// <summary>The names searched on PATH for psql: only psql.exe on Windows, only psql elsewhere.</summary>
        public static string ExecutableName(bool windows) => windows ? "psql.exe" : "psql";
    }
}
