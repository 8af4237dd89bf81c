using System;
using System.Globalization;

namespace BastionTools.Ssm
{
    /// <summary>
    /// AWS-StartNonInteractiveCommand runs its "command" parameter split into words (shlex), without a shell, and
    /// returns stdout and stderr together when it ends, with no exit code. To give scripts shell syntax and an exit
    /// code, the command is wrapped in the platform's shell, which prints a marker line with the exit status last;
    /// the marker (random per run, so remote output can't forge it) is removed from the output.
    /// </summary>
    internal sealed class NonInteractiveCommand
    {
        public NonInteractiveCommand(string command, string? platformType)
        {
            Marker = "__BASTIONTOOLS_EXIT_" + Guid.NewGuid().ToString("N") + "__";
            Windows = string.Equals(platformType, "Windows", StringComparison.OrdinalIgnoreCase);
            Wrapped = Windows
                ? "powershell.exe -NoProfile -NonInteractive -Command \"& { " + command.Replace("\"", "\\\"") + " }; Write-Output ('" + Marker + "' + $LASTEXITCODE)\""
                : "sh -c " + ShellQuote("(\n" + command + "\n)\nprintf '\\n" + Marker + "%s\\n' \"$?\"");
        }

        public string Marker { get; }
        public bool Windows { get; }

        /// <summary>The command parameter sent to StartSession.</summary>
        public string Wrapped { get; }

        /// <summary>Single-quotes a string for a POSIX shell (and for shlex, which reads it the same way).</summary>
        public static string ShellQuote(string s) => "'" + s.Replace("'", "'\\''") + "'";

        /// <summary>True (with the exit code) when the line is this run's marker.</summary>
        public bool TryReadExitCode(string line, out int exitCode)
        {
            exitCode = 0;
            var i = line.IndexOf(Marker, StringComparison.Ordinal);
            if (i < 0) return false;
            return int.TryParse(line.Substring(i + Marker.Length).Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out exitCode);
        }
    }
}
