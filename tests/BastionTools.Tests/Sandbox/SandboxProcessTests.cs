using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class SandboxProcessTests
    {
        private static string DotnetHost()
        {
            var fromCli = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (!string.IsNullOrEmpty(fromCli) && File.Exists(fromCli)) return fromCli;
            var self = Environment.ProcessPath;
            if (self != null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
            return "dotnet";
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Executable_PrintsOneJsonLine_Serves_AndStopsWhenStdinCloses()
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "BastionTools.Sandbox.dll");
            Assert.True(File.Exists(dll), "The sandbox was not built next to the tests: " + dll);
            var config = Path.Combine(Path.GetTempPath(), "sandbox-world-" + Guid.NewGuid().ToString("N") + ".json");
            File.WriteAllText(config, """
                {
                  // comments are allowed
                  "region": "eu-central-1",
                  "credentials": [ { "accessKeyId": "AKIAPROCESSTEST00001", "secretAccessKey": "process/test/secret/0000000000000000000", "userName": "proc" } ],
                  "instances": [
                    { "instanceId": "i-0123456789abcdef0", "name": "jump", "tags": { "Team": "db" }, "pingStatus": "Online", "agentVersion": "3.3.2299.0", "privateIpAddress": "10.9.0.5" },
                    { "instanceId": "i-0123456789abcdef1", "name": "jump-2", "pingStatus": "ConnectionLost" }
                  ]
                }
                """);
            var psi = new ProcessStartInfo(DotnetHost())
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            psi.ArgumentList.Add(dll);
            psi.ArgumentList.Add("--config");
            psi.ArgumentList.Add(config);
            psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
            using var process = Process.Start(psi)!;
            var stderr = process.StandardError.ReadToEndAsync();
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                var line = await process.StandardOutput.ReadLineAsync(cts.Token);
                Assert.False(string.IsNullOrEmpty(line), "no JSON line; stderr: " + (process.HasExited ? await stderr : ""));

                using var doc = JsonDocument.Parse(line!);
                var root = doc.RootElement;
                var ssmUrl = root.GetProperty("ssm").GetString()!;
                Assert.Matches(@"^http://127\.0\.0\.1:\d+/ssm$", ssmUrl);
                Assert.Matches(@"^http://127\.0\.0\.1:\d+/ec2$", root.GetProperty("ec2").GetString()!);
                Assert.Matches(@"^ws://127\.0\.0\.1:\d+/streams$", root.GetProperty("streamUrlBase").GetString()!);
                Assert.Equal("eu-central-1", root.GetProperty("region").GetString());
                Assert.Equal("AKIAPROCESSTEST00001", root.GetProperty("accessKeyId").GetString());
                var instances = root.GetProperty("instances").EnumerateArray().ToList();
                Assert.Equal(new[] { "i-0123456789abcdef0", "i-0123456789abcdef1" }, instances.Select(i => i.GetProperty("instanceId").GetString()));
                Assert.Equal("db", instances[0].GetProperty("tags").GetProperty("Team").GetString());

                // The printed endpoint and credentials work with the real SDK.
                var client = new AmazonSimpleSystemsManagementClient(
                    new BasicAWSCredentials(root.GetProperty("accessKeyId").GetString(), root.GetProperty("secretAccessKey").GetString()),
                    new AmazonSimpleSystemsManagementConfig { ServiceURL = ssmUrl, AuthenticationRegion = root.GetProperty("region").GetString(), MaxErrorRetry = 0, Timeout = TimeSpan.FromSeconds(15) });
                using (client)
                {
                    var online = await client.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
                    {
                        Filters = new() { new() { Key = "PingStatus", Values = new() { "Online" } } },
                    });
                    Assert.Equal("10.9.0.5", Assert.Single(online.InstanceInformationList).IPAddress);
                    var session = await client.StartSessionAsync(new StartSessionRequest { Target = "i-0123456789abcdef0" });
                    Assert.StartsWith("proc-", session.SessionId);
                }

                Assert.Null(await ReadLineOrNull(process, TimeSpan.FromMilliseconds(200)));
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

        private static async Task<string?> ReadLineOrNull(Process process, TimeSpan wait)
        {
            using var cts = new CancellationTokenSource(wait);
            try
            {
                return await process.StandardOutput.ReadLineAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                return null;
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task StreamUrl_AcceptsAWebSocket_AndTheHandlerChecksTheTokenAgainstTheRegistry()
        {
            await using var host = Start();
            host.StreamHandler = async ctx =>
            {
                var ws = (await ctx.HttpContext.AcceptWebSocketAsync(null)).WebSocket;
                var buffer = new byte[8192];
                var received = await ws.ReceiveAsync(buffer, ctx.Stopping);
                using var open = JsonDocument.Parse(Encoding.UTF8.GetString(buffer, 0, received.Count));
                var valid = host.Sessions.TryValidateToken(ctx.SessionId, open.RootElement.GetProperty("TokenValue").GetString()!, out _);
                if (valid) host.Sessions.MarkConnected(ctx.SessionId);
                await ws.SendAsync(Encoding.UTF8.GetBytes(valid ? "ok " + ctx.SessionId : "bad"), WebSocketMessageType.Text, true, ctx.Stopping);
                await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "Bye", ctx.Stopping);
            };
            using var ssm = SsmClient(host);
            var started = await ssm.StartSessionAsync(new StartSessionRequest { Target = "i-0a1b2c3d4e5f60001", DocumentName = "AWS-StartPortForwardingSession" });

            Assert.Equal("ok " + started.SessionId, await OpenDataChannel(started.StreamUrl, started.TokenValue));
            Assert.True(host.Sessions.TryGet(started.SessionId, out var session));
            Assert.Equal(SandboxSessionState.Connected, session.State);
            Assert.Equal("bad", await OpenDataChannel(started.StreamUrl, "forged-token"));
        }

        private static async Task<string> OpenDataChannel(string streamUrl, string token)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            using var ws = new ClientWebSocket();
            await ws.ConnectAsync(new Uri(streamUrl), cts.Token);
            var open = JsonSerializer.Serialize(new { MessageSchemaVersion = "1.0", RequestId = Guid.NewGuid().ToString(), TokenValue = token, ClientId = Guid.NewGuid().ToString(), ClientVersion = "1.2.0.0" });
            await ws.SendAsync(Encoding.UTF8.GetBytes(open), WebSocketMessageType.Text, true, cts.Token);
            var buffer = new byte[1024];
            var r = await ws.ReceiveAsync(buffer, cts.Token);
            var text = Encoding.UTF8.GetString(buffer, 0, r.Count);
            var close = await ws.ReceiveAsync(buffer, cts.Token);
            Assert.Equal(WebSocketMessageType.Close, close.MessageType);
            Assert.Equal("Bye", ws.CloseStatusDescription);
            return text;
        }

        [Fact]
        public void WorldJson_FallsBackToDefaults_AndRejectsDuplicates()
        {
            var world = SandboxWorld.Load("""{ "clockOffsetSeconds": -60 }""");
            Assert.Equal("us-west-2", world.Region);
            Assert.Equal(SandboxWorld.DefaultAccessKeyId, world.Credentials.Single().AccessKeyId);
            Assert.Equal(3, world.Instances.Count);
            Assert.Equal(TimeSpan.FromMinutes(-1), world.Clock.Offset);
            Assert.Throws<ArgumentException>(() => SandboxWorld.Load("""{ "instances": [ { "instanceId": "i-1" }, { "instanceId": "i-1" } ] }"""));
        }

        [Fact]
        public void Clock_FreezeAndAdvance()
        {
            var clock = new SandboxClock();
            var t = new DateTime(2030, 5, 6, 7, 8, 9, DateTimeKind.Utc);
            clock.Freeze(t);
            Assert.Equal(t, clock.UtcNow);
            clock.Advance(TimeSpan.FromMinutes(20));
            Assert.Equal(t.AddMinutes(20), clock.UtcNow);
            clock.Offset = TimeSpan.FromSeconds(5);
            Assert.Equal(t.AddMinutes(20).AddSeconds(5), clock.UtcNow);
            clock.Unfreeze();
            clock.Offset = TimeSpan.Zero;
            Assert.InRange(clock.UtcNow, DateTime.UtcNow.AddSeconds(-5), DateTime.UtcNow.AddSeconds(5));
        }
    }
}
