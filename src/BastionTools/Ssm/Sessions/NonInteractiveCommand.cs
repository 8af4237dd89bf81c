using System;
using System.Globalization;
using System.Text;
using BastionTools.Aws;

namespace BastionTools.Ssm
{
    /// <summary>The platform a command runs on: decides how <see cref="NonInteractiveCommand"/> wraps it.</summary>
    internal enum CommandPlatform
    {
        Linux,
        Windows,
    }

    /// <summary>
    /// AWS-StartNonInteractiveCommand splits its "command" parameter into words (google/shlex) and runs them without a
    /// shell: on Linux and macOS the first word is the program (shell_unix.go startExecCmd); on Windows every word is an
    /// argument of Windows PowerShell 5.1, powershell.exe (shell_windows.go startExecCmd). It returns stdout and stderr
    /// together when the command ends, with no exit code. To give scripts the platform's shell syntax and an exit code,
    /// the command is wrapped — in sh on Linux, in PowerShell on Windows — and the wrapper prints a marker line with the
    /// exit status last; the marker (random per run, so remote output can't forge it) is removed from the output.
    /// </summary>
    internal sealed class NonInteractiveCommand
    {
        public NonInteractiveCommand(string command, CommandPlatform platform)
        {
            Marker = "__BASTIONTOOLS_EXIT_" + Guid.NewGuid().ToString("N") + "__";
            Platform = platform;
            Wrapped = platform == CommandPlatform.Windows
                ? "-NoProfile -NonInteractive -Command " + ShlexDoubleQuote(PowerShellScript(command, Marker))
                : "sh -c " + ShellQuote("(\n" + command + "\n)\ns=$?\nprintf '\\n" + Marker + "%s\\n' \"$s\"\nexit \"$s\"");
        }

        public string Marker { get; }
        public CommandPlatform Platform { get; }

        /// <summary>The command parameter sent to StartSession.</summary>
        public string Wrapped { get; }

        /// <summary>Single-quotes a string for a POSIX shell (and for shlex, which reads it the same way).</summary>
        public static string ShellQuote(string s) => "'" + s.Replace("'", "'\\''") + "'";

        /// <summary>
        /// Double-quotes a word for the agent's shlex, in which a backslash inside double quotes takes any next character
        /// literally (so only " and \ need one). The PowerShell script has neither; this keeps it exact if it ever does.
        /// </summary>
        public static string ShlexDoubleQuote(string s) => "\"" + s.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";

        /// <summary>
        /// The -Command text for Windows PowerShell 5.1 (and 7): one line of plain characters (no double quote, no
        /// backslash, no line break), so nothing between StartSession and PowerShell can change it — not shlex, not Go's
        /// Windows command-line quoting, not powershell.exe's argument parsing, which joins the words after -Command with
        /// spaces. The user's script travels base64-encoded (UTF-8) and runs as a script of a nested pipeline in the same
        /// runspace, so that <c>exit n</c> ends only the script (and sets $LASTEXITCODE) instead of PowerShell itself.
        /// Its errors are merged into its output; everything goes through Out-Default as at a prompt. The exit status:
        /// <c>exit n</c> or the last failing program's $LASTEXITCODE; else 1 when the script threw or wrote an error; else 0.
        /// Output is UTF-8 (5.1 writes redirected output in the OEM code page otherwise); progress is not shown.
        /// </summary>
        private static string PowerShellScript(string command, string marker)
        {
            var encoded = Convert.ToBase64String(Encoding.UTF8.GetBytes(command));
            return "$ProgressPreference='SilentlyContinue';"
                + "try{[Console]::OutputEncoding=New-Object Text.UTF8Encoding $false}catch{};"
                + "$global:LASTEXITCODE=0;"
                + "$__btP=[PowerShell]::Create('CurrentRunspace');"
                + "[void]$__btP.AddScript([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('" + encoded + "')));"
                + "$__btP.Commands.Commands[0].MergeMyResults('Error','Output');"
                + "[void]$__btP.AddCommand('Out-Default');"
                + "$__btC=0;"
                + "try{[void]$__btP.Invoke();if($global:LASTEXITCODE){$__btC=$global:LASTEXITCODE}elseif($__btP.HadErrors){$__btC=1}}"
                + "catch{$__btC=1;$__btE=$_.Exception.InnerException;if($__btE -is [Management.Automation.IContainsErrorRecord]){$__btE.ErrorRecord|Out-Default}else{$_|Out-Default}};"
                + "([char]10)+'" + marker + "'+$__btC;"
                + "exit $__btC";
        }

        /// <summary>The exit status the wrapper printed, once its marker line was read.</summary>
        public int? MarkedExitCode { get; private set; }

        private bool _heldEmpty;

        /// <summary>
        /// Takes one output line: the marker line sets <see cref="MarkedExitCode"/> and is not passed on; the empty line
        /// the wrapper prints before it (so the marker starts a line even after output without a final newline) is held
        /// back until the next line shows it is not that one. Everything else goes to <paramref name="emit"/>.
        /// </summary>
        public void ReadLine(string line, Action<string> emit)
        {
            if (TryReadExitCode(line, out var code))
            {
                MarkedExitCode = code;
                _heldEmpty = false;
                return;
            }
            if (_heldEmpty) emit(string.Empty);
            _heldEmpty = line.Length == 0;
            if (!_heldEmpty) emit(line);
        }

        /// <summary>At the end of the output: an empty line still held back was the command's own.</summary>
        public void Finish(Action<string> emit)
        {
            if (_heldEmpty) emit(string.Empty);
            _heldEmpty = false;
        }

        /// <summary>True (with the exit code) when the line is this run's marker.</summary>
        public bool TryReadExitCode(string line, out int exitCode)
        {
            exitCode = 0;
            var i = line.IndexOf(Marker, StringComparison.Ordinal);
            if (i < 0) return false;
            return int.TryParse(line.Substring(i + Marker.Length).Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out exitCode);
        }

        /// <summary>
        /// The platform of <paramref name="instance"/>: <paramref name="requested"/> (-Platform) when given, else SSM's
        /// PlatformType (ssm:DescribeInstanceInformation), else EC2's PlatformDetails (ec2:DescribeInstances: "Windows…"),
        /// else Linux, assumed. Nothing in the session itself says: the handshake carries the document's properties for
        /// every platform and the agent's version, not its operating system. <paramref name="source"/> says which one
        /// decided; <paramref name="assumed"/> is true when none did.
        /// </summary>
        public static CommandPlatform Resolve(string? requested, InstanceRecord instance, out string source, out bool assumed)
        {
            assumed = false;
            if (!string.IsNullOrEmpty(requested))
            {
                source = "-Platform " + requested;
                return Parse(requested!);
            }
            if (!string.IsNullOrEmpty(instance.PlatformType))
            {
                source = "PlatformType " + instance.PlatformType + " (ssm:DescribeInstanceInformation)";
                return Parse(instance.PlatformType!);
            }
            if (!string.IsNullOrEmpty(instance.PlatformDetails))
            {
                source = "PlatformDetails " + instance.PlatformDetails + " (ec2:DescribeInstances)";
                return instance.PlatformDetails!.StartsWith("Windows", StringComparison.OrdinalIgnoreCase) ? CommandPlatform.Windows : CommandPlatform.Linux;
            }
            assumed = true;
            source = "assumed: neither ssm:DescribeInstanceInformation nor ec2:DescribeInstances said";
            return CommandPlatform.Linux;
        }

        private static CommandPlatform Parse(string platform) =>
            string.Equals(platform, "Windows", StringComparison.OrdinalIgnoreCase) ? CommandPlatform.Windows : CommandPlatform.Linux;
    }
}
