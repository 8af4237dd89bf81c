using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net.Http;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class SandboxAgentProcessTests
    {
        [Fact]
        public void WorldJson_ReadsTheHostMap()
        {
            var world = SandboxWorld.Load("""{ "hostMap": { "db.corp.example": "127.0.0.1", "alias.example": "localhost" } }""");
            Assert.Equal("127.0.0.1", world.ResolveHost("DB.corp.example"));
            Assert.Equal("127.0.0.1", world.ResolveHost("alias.example"));
            Assert.Null(world.ResolveHost("other.example"));
            Assert.Equal(2, world.HostMap.Count);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Executable_StartedIgnoringSigint_StillGivesItsShellsDefaultCtrlC()
        {
            // A test runner started in the background by a shell without job control ignores SIGINT and SIGQUIT, and its
            // descendants inherit that; no shell can undo it. The agent double's shell must still behave as the real
            // agent's (a service): its commands get SIGINT and SIGQUIT at their defaults, so Ctrl-C ends a command.
            if (!System.OperatingSystem.IsLinux()) return; // /proc; the shell plugin is Unix-only
            var dll = Path.Combine(AppContext.BaseDirectory, "BastionTools.Sandbox.dll");
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
                : Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet" ? self : "dotnet";
            var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add("trap '' INT QUIT; exec \"$0\" \"$@\"");
            psi.ArgumentList.Add(dotnet);
            psi.ArgumentList.Add(dll);
            psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
            using var process = Process.Start(psi)!;
            _ = process.StandardError.ReadToEndAsync();
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                var root = JsonNode.Parse((await process.StandardOutput.ReadLineAsync(cts.Token))!)!;
                // The double itself ignores SIGINT, as started.
                Assert.NotEqual(0UL, IgnoredSignals(process.Id) & 0x6);

                using var ssm = new AmazonSimpleSystemsManagementClient(
                    new BasicAWSCredentials((string)root["accessKeyId"]!, (string)root["secretAccessKey"]!),
                    new AmazonSimpleSystemsManagementConfig { ServiceURL = (string)root["ssm"]!, AuthenticationRegion = (string)root["region"]!, MaxErrorRetry = 0, Timeout = TimeSpan.FromSeconds(15) });
                var session = await ssm.StartSessionAsync(new StartSessionRequest { Target = SandboxAgentTests.Bastion, DocumentName = null, Parameters = new() });
                await using var client = new AgentTestClient();
                await client.ConnectAsync(session.StreamUrl, session.TokenValue);
                // A command of the shell reports its own ignored signals (SigIgn, hex; bit 1 is SIGINT, bit 2 SIGQUIT).
                await client.SendTextAsync("echo ign-$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/self/status)-end\r");
                await client.WaitUntilAsync(c => System.Text.RegularExpressions.Regex.IsMatch(c.OutputText(), "ign-[0-9a-f]+-end"), "the command's SigIgn");
                var hex = System.Text.RegularExpressions.Regex.Match(client.OutputText(), "ign-([0-9a-f]+)-end").Groups[1].Value;
                Assert.Equal(0UL, ulong.Parse(hex, System.Globalization.NumberStyles.HexNumber) & 0x6);
            }
            finally
            {
                if (!process.HasExited) process.Kill(entireProcessTree: true);
            }
        }

        private static ulong IgnoredSignals(int pid)
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("SigIgn:", StringComparison.Ordinal))
                    return ulong.Parse(line.Substring(7).Trim(), System.Globalization.NumberStyles.HexNumber);
            }
            throw new InvalidOperationException("no SigIgn in /proc/" + pid + "/status");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Executable_TakesFaultsOnTheCommandLine_AndForwardsAPortThroughAMappedHost()
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "BastionTools.Sandbox.dll");
            var config = Path.Combine(Path.GetTempPath(), "sandbox-agent-world-" + Guid.NewGuid().ToString("N") + ".json");
            File.WriteAllText(config, """{ "hostMap": { "pg.internal.example": "127.0.0.1" } }""");
            using var echo = new EchoServer();
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
                : Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet" ? self : "dotnet";
            var psi = new ProcessStartInfo(dotnet) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(dll);
            psi.ArgumentList.Add("--config");
            psi.ArgumentList.Add(config);
            psi.ArgumentList.Add("--faults");
            psi.ArgumentList.Add("""{"ackDelayMs":5,"seed":3}""");
            psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
            using var process = Process.Start(psi)!;
            _ = process.StandardError.ReadToEndAsync();
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                var line = await process.StandardOutput.ReadLineAsync(cts.Token);
                var root = JsonNode.Parse(line!)!;
                var control = new Uri((string)root["control"]!);
                using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
                var faults = JsonNode.Parse(await http.GetStringAsync(new Uri(control, "faults")))!;
                Assert.Equal(5, (int)faults["ackDelayMs"]!);
                Assert.Equal(3, (int)faults["seed"]!);

                using var ssm = new AmazonSimpleSystemsManagementClient(
                    new BasicAWSCredentials((string)root["accessKeyId"]!, (string)root["secretAccessKey"]!),
                    new AmazonSimpleSystemsManagementConfig { ServiceURL = (string)root["ssm"]!, AuthenticationRegion = (string)root["region"]!, MaxErrorRetry = 0, Timeout = TimeSpan.FromSeconds(15) });
                var session = await ssm.StartSessionAsync(new StartSessionRequest
                {
                    Target = SandboxAgentTests.Bastion,
                    DocumentName = SsmDocuments.PortForwardingToRemoteHost,
                    Parameters = SandboxAgentTests.Ports(echo.Port, "0", "pg.internal.example"),
                });
                await using var client = new AgentTestClient("1.2.707.0") { MuxMode = true };
                await client.ConnectAsync(session.StreamUrl, session.TokenValue);
                await client.HandshakeAsync();
                await client.SmuxAsync(SmuxCommand.Syn, 1);
                await client.SmuxAsync(SmuxCommand.Psh, 1, Encoding.UTF8.GetBytes("through the process"));
                await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 19, "echo");
                var counters = JsonNode.Parse(await http.GetStringAsync(new Uri(control, "sessions/" + session.SessionId)))!;
                Assert.Equal("mux", (string?)counters["plugin"]);

                process.StandardInput.Close();
                using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                await process.WaitForExitAsync(exit.Token);
                Assert.Equal(0, process.ExitCode);
            }
            finally
            {
                if (!process.HasExited) process.Kill(entireProcessTree: true);
                File.Delete(config);
            }
        }
    }
}
