using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading.Tasks;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxAgentTests;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// The sandbox agent's command splitting (the agent's vendored google/shlex) and its Windows mode: on an instance
    /// whose PlatformType is Windows the words are arguments of "powershell.exe", played by a real PowerShell 7 that reads
    /// them as Windows PowerShell 5.1's command line does.
    /// </summary>
    public class SandboxAgentWindowsTests
    {
        internal const string WindowsBastion = "i-0a1b2c3d4e5f60010";

        internal static SandboxInstance WindowsInstance(string id = WindowsBastion) => new()
        {
            InstanceId = id, Name = "bastion-windows", PlatformType = "Windows", PlatformName = "Microsoft Windows Server 2022 Datacenter",
            PlatformVersion = "10.0.20348", PlatformDetails = "Windows", AgentVersion = "3.3.2299.0", PrivateIpAddress = "10.0.1.20",
        };

        internal static SandboxHost StartWithWindows()
        {
            var world = SandboxWorld.CreateDefault();
            world.AddInstance(WindowsInstance());
            var host = Start(world);
            Assert.True(host.Agent.Options.WindowsPowerShell is { Count: > 0 }, "No PowerShell found to play powershell.exe (BASTIONTOOLS_SANDBOX_POWERSHELL, pwsh on PATH, or the dotnet tool: dotnet tool restore).");
            return host;
        }

        private static async Task<AgentTestClient> RunCommandAsync(SandboxHost host, string command, string target, Dictionary<string, List<string>>? extra = null)
        {
            var parameters = new Dictionary<string, List<string>> { ["command"] = new() { command } };
            foreach (var e in extra ?? new()) parameters[e.Key] = e.Value;
            var session = await StartAsync(host, SsmDocuments.NonInteractiveCommand, parameters, target);
            var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed", TimeSpan.FromSeconds(45));
            return client;
        }

        [Fact]
        public void ShellWords_SplitsAsTheAgentsVendoredShlex()
        {
            Assert.Equal(new[] { "sh", "-c", "echo a b; exit 2" }, ShellWords.Split("sh -c 'echo a b; exit 2'"));
            Assert.Equal(new[] { "echo", "a\"b", "c d" }, ShellWords.Split("echo \"a\\\"b\" c\\ d # comment"));
            // In double quotes a backslash takes any next character literally (POSIX would keep "\b").
            Assert.Equal(new[] { "ab", "c\\d" }, ShellWords.Split("\"a\\b\" \"c\\\\d\""));
            // A comment ends at the line feed; the words after it are read.
            Assert.Equal(new[] { "ls", "-l" }, ShellWords.Split("# list\nls -l"));
            // '#' inside a word is kept; only space, tab, CR and LF separate words.
            Assert.Equal(new[] { "a#b", "c\u00a0d\ve" }, ShellWords.Split("a#b\tc\u00a0d\ve"));
            Assert.Equal(new[] { "", "x" }, ShellWords.Split("'' x"));
            Assert.Equal("EOF found when expecting closing quote", Assert.Throws<FormatException>(() => ShellWords.Split("echo 'open")).Message);
            Assert.Equal("EOF found after escape character", Assert.Throws<FormatException>(() => ShellWords.Split("echo \"a\\")).Message);
        }

        [Fact]
        public void WindowsPowerShell_ReadsTheWordsAsWindowsPowerShell51()
        {
            // The first word that is not a switch begins -Command (PowerShell 7 would take it as -File).
            Assert.Equal(new[] { "-Command", "Write-Output", "a b" }, WindowsPowerShell.ToPowerShell7Arguments(new[] { "Write-Output", "a b" }));
            // Prefixes, "/" and case as 5.1 reads them; -Version and -WindowStyle (with their values) do not exist in 7 here.
            Assert.Equal(new[] { "-noprofile", "-noninteractive", "-executionpolicy", "Bypass", "-Command", "x" },
                WindowsPowerShell.ToPowerShell7Arguments(new[] { "-NoP", "/NONI", "-Version", "5.1", "-ep", "Bypass", "-WindowStyle", "Hidden", "-c", "x" }));
            // An unknown switch begins the command, as 5.1's "first parameter we fail to recognize".
            Assert.Equal(new[] { "-noprofile", "-Command", "-Foo", "bar" }, WindowsPowerShell.ToPowerShell7Arguments(new[] { "-noprofile", "-Foo", "bar" }));
            Assert.Equal(new[] { "-File", "C:\\x.ps1", "-a" }, WindowsPowerShell.ToPowerShell7Arguments(new[] { "-f", "C:\\x.ps1", "-a" }));
            Assert.Equal(new[] { "-encodedcommand", "AAAA" }, WindowsPowerShell.ToPowerShell7Arguments(new[] { "-e", "AAAA" }));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_OnWindows_TheWordsArePowerShellsArguments_JoinedIntoOneScript()
        {
            await using var host = StartWithWindows();
            // shlex gives ["Write-Output", "a  b", "c;", …]; powershell.exe joins the words with spaces: the quotes are gone,
            // so Write-Output gets three arguments. Stderr is in the same stream; no exit code comes back.
            await using var client = await RunCommandAsync(host, "Write-Output 'a  b' c; [Console]::Error.WriteLine(\\\"oops\\\"); exit 3", WindowsBastion);
            Assert.Equal("a\nb\nc\noops\n", client.OutputText().Replace("\r\n", "\n"));
            Assert.DoesNotContain(client.Delivered, m => m.PayloadType == PayloadType.ExitCode);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_OnWindows_SeparateStreams_SendPowerShellsExitCode()
        {
            await using var host = StartWithWindows();
            await using var client = await RunCommandAsync(host, "-NoProfile -Command \"Write-Output out; [Console]::Error.WriteLine('err'); exit 7\"", WindowsBastion,
                new() { ["separateOutputStream"] = new() { "true" } });
            Assert.Equal("out\n", client.OutputText(PayloadType.Output).Replace("\r\n", "\n"));
            Assert.Equal("err\n", client.OutputText(PayloadType.StdErr).Replace("\r\n", "\n"));
            Assert.Equal("EXIT_CODE: 7", client.OutputText(PayloadType.ExitCode));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_TheModulesFormerWindowsWrapper_DoesNotRunTheCommand()
        {
            // What BastionTools sent to Windows bastions before: a second powershell.exe inside the one the agent starts,
            // so 5.1 reads "powershell.exe -NoProfile ... -Command & { ... }; ..." as the script text of the outer one.
            await using var host = StartWithWindows();
            const string marker = "__BASTIONTOOLS_EXIT_0123456789abcdef0123456789abcdef__";
            var former = "powershell.exe -NoProfile -NonInteractive -Command \"& { Write-Output ran-the-command }; Write-Output ('" + marker + "' + $LASTEXITCODE)\"";
            await using var client = await RunCommandAsync(host, former, WindowsBastion);
            var lines = client.OutputText().Replace("\r\n", "\n").Split('\n');
            Assert.DoesNotContain("ran-the-command", lines);
            Assert.DoesNotContain(lines, l => l.StartsWith(marker, StringComparison.Ordinal) && int.TryParse(l.Substring(marker.Length), out _));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_OnLinux_TheSameWordsAreAProgramAndItsArguments()
        {
            await using var host = Start();
            await using var client = await RunCommandAsync(host, "printf '%s|' 'a  b' c", Bastion);
            Assert.Equal("a  b|c|", client.OutputText());
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_WithoutAPowerShell_FailsToStartAsTheAgentsExecWould()
        {
            await using var host = StartWithWindows();
            host.Agent.Options.WindowsPowerShell = null;
            await using var client = await RunCommandAsync(host, "Write-Output x", WindowsBastion);
            Assert.StartsWith("Error occurred starting the command: exec: \"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe\"", client.OutputText(PayloadType.StdErr));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task HandshakeComplete_AsksAnOldClientToUpdate_WhenOutputStreamsAreSeparate()
        {
            await using var host = Start();
            var parameters = new Dictionary<string, List<string>> { ["command"] = new() { "true" }, ["separateOutputStream"] = new() { "true" } };
            foreach (var (version, expected) in new[] { ("1.2.295", true), ("1.2.295.0", false), ("1.2.0.0", true), ("1.2.707.0", false) })
            {
                var session = await StartAsync(host, SsmDocuments.NonInteractiveCommand, parameters);
                await using var client = new AgentTestClient(version);
                await client.ConnectAsync(session.StreamUrl, session.TokenValue);
                await client.HandshakeAsync();
                var complete = SsmJson.Deserialize<HandshakeCompletePayload>(client.Delivered.First(m => m.PayloadType == PayloadType.HandshakeComplete).Payload);
                Assert.Equal(expected
                    ? "Please update session manager plugin version (minimum required version 1.2.312.0) for fully support of separate StdOut/StdErr output.\r\n"
                    : "", complete.CustomerMessage);
            }
        }
    }
}
