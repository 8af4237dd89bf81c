using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Net.Http;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Tasks;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxAgentTests;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class SandboxAgentShellAndFaultTests
    {
        private static byte[] Bytes(string s) => Encoding.UTF8.GetBytes(s);

        // ---- shell -------------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Shell_NoHandshake_RunsCommandsOnAPty_ResizesCtrlC_AndExitSendsChannelClosed()
        {
            await using var host = Start();
            host.Agent.Options.ShellInitialOutputDelay = TimeSpan.FromMilliseconds(100);
            var session = await StartAsync(host, null);
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.SendInputAsync(PayloadType.Size, Bytes("{\"cols\":100,\"rows\":40}"));
            await client.SendTextAsync("echo hel''lo\r");
            await client.WaitUntilAsync(c => c.OutputText().Contains("hello\r\n"), "hello");
            var first = client.Delivered[0];
            Assert.Equal(0, first.SequenceNumber);
            Assert.Equal(MessageFlags.Syn, first.Flags);
            Assert.Equal(PayloadType.Output, first.PayloadType);
            Assert.DoesNotContain(client.Delivered, m => m.PayloadType == PayloadType.HandshakeRequest);
            Assert.Contains("echo hel''lo", client.OutputText()); // the terminal echoes what was typed

            await client.SendTextAsync("stty size\r");
            await client.WaitUntilAsync(c => c.OutputText().Contains("40 100"), "the terminal size");

            // Ctrl-C once the job to interrupt is running, not after a guessed delay. The marker comes from the job itself
            // (a child shell that then becomes the sleep), so when it shows, the job is the terminal's foreground and the
            // Ctrl-C reaches it. (With the marker printed by the interactive shell before it started the sleep, a Ctrl-C
            // arriving in between was lost and the sleep ran its 30 s: seen once in CI on a loaded machine.)
            await client.SendTextAsync("sh -c 'echo start-$((2+3)); exec sleep 30'\r");
            await client.WaitUntilAsync(c => c.OutputText().Contains("start-5"), "the sleep to start");
            var sw = Stopwatch.StartNew();
            await client.SendTextAsync("\u0003");
            await client.SendTextAsync("echo after-$((1+1))\r");
            await client.WaitUntilAsync(c => c.OutputText().Contains("after-2"), "Ctrl-C interrupts sleep");
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10));

            await client.SendTextAsync("exit\r");
            var closed = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            var payload = SsmJson.Deserialize<ChannelClosedPayload>(closed.Payload);
            Assert.Equal("\n\nExiting session with sessionId: " + session.SessionId + ".\n\n", payload.Output);
            await client.WaitUntilAsync(c => c.CloseStatus != null, "close");
            Assert.Equal(WebSocketCloseStatus.NormalClosure, client.CloseStatus);
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.Equal(SandboxSessionState.Terminated, s.State);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Shell_TerminateSession_KillsTheShell()
        {
            await using var host = Start();
            host.Agent.Options.ShellInitialOutputDelay = TimeSpan.Zero;
            var session = await StartAsync(host, SsmDocuments.Shell);
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.SendTextAsync("echo $$ > /dev/null; echo ready\r");
            await client.WaitUntilAsync(c => c.OutputText().Contains("ready\r\n"), "ready");
            using var ssm = SsmClient(host);
            await ssm.TerminateSessionAsync(new Amazon.SimpleSystemsManagement.Model.TerminateSessionRequest { SessionId = session.SessionId });
            await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            await client.WaitUntilAsync(c => c.CloseStatus != null, "close");
        }

        // ---- non-interactive command --------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_HandshakeThenCombinedOutputThenChannelClosed()
        {
            await using var host = Start();
            var session = await StartAsync(host, SsmDocuments.NonInteractiveCommand, new Dictionary<string, List<string>> { ["command"] = new() { "sh -c 'echo hello; echo oops >&2'" } });
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            var request = await client.HandshakeAsync();
            var sessionType = request.RequestedClientActions.Single().GetSessionTypeRequest();
            Assert.Equal("NonInteractiveCommands", sessionType.SessionType);
            Assert.Equal("sh -c 'echo hello; echo oops >&2'", sessionType.Properties.GetProperty("linux").GetProperty("commands").GetString());

            await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            Assert.Equal("hello\noops\n", client.OutputText());
            Assert.DoesNotContain(client.Delivered, m => m.PayloadType == PayloadType.ExitCode);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task NonInteractiveCommand_SeparateOutputStream_SendsStdErrAndExitCode()
        {
            await using var host = Start();
            var session = await StartAsync(host, SsmDocuments.NonInteractiveCommand, new Dictionary<string, List<string>>
            {
                ["command"] = new() { "sh -c \"echo out; echo err >&2; exit 3\"" },
                ["separateOutputStream"] = new() { "true" },
            });
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            Assert.Equal("out\n", client.OutputText(PayloadType.Output));
            Assert.Equal("err\n", client.OutputText(PayloadType.StdErr));
            Assert.Equal("EXIT_CODE: 3", client.OutputText(PayloadType.ExitCode));
            Assert.Equal(PayloadType.ExitCode, client.Delivered.Last().PayloadType);
        }

        [Fact]
        public void ShellWords_SplitsLikeShlex()
        {
            Assert.Equal(new[] { "sh", "-c", "echo a b; exit 2" }, ShellWords.Split("sh -c 'echo a b; exit 2'"));
            Assert.Equal(new[] { "echo", "a\"b", "c d" }, ShellWords.Split("echo \"a\\\"b\" c\\ d # comment"));
            Assert.Throws<FormatException>(() => ShellWords.Split("echo 'open"));
        }

        // ---- faults ------------------------------------------------------------------------------------------------

        private static async Task<(AgentTestClient Client, string SessionId, EchoServer Echo)> MuxWithFaultsAsync(SandboxHost host, SandboxFaultOptions faults)
        {
            var echo = new EchoServer();
            var session = await StartAsync(host, SsmDocuments.PortForwarding, Ports(echo.Port));
            host.Agent.SetSessionFaults(session.SessionId, faults);
            var client = new AgentTestClient { MuxMode = true };
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            return (client, session.SessionId, echo);
        }

        private static async Task EchoManyAsync(AgentTestClient client, int count)
        {
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            var expected = new StringBuilder();
            for (var i = 0; i < count; i++)
            {
                var text = "message-" + i + ";";
                expected.Append(text);
                await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes(text));
                // One round trip at a time, so each echo is its own output message.
                await client.WaitUntilAsync(c => c.StreamBytes(1).Length >= expected.Length, "echo " + i, TimeSpan.FromSeconds(20));
            }
            Assert.Equal(expected.ToString(), Encoding.UTF8.GetString(client.StreamBytes(1)));
        }

        [Theory(Timeout = TestTimeoutMs)]
        [InlineData(0.3, 0.0, 0.0)]
        [InlineData(0.0, 0.5, 0.0)]
        [InlineData(0.15, 0.15, 0.15)]
        public async Task MessageFaults_AreSurvivedByAReliableClient_AndCounted(double drop, double duplicate, double reorder)
        {
            await using var host = Start();
            var faults = new SandboxFaultOptions { DropRate = drop, DuplicateRate = duplicate, ReorderRate = reorder, Seed = 1234 };
            var (client, id, echo) = await MuxWithFaultsAsync(host, faults);
            using var _ = echo;
            await using var __ = client;
            await EchoManyAsync(client, 30);
            var counters = host.Agent.Counters(id)!;
            if (drop > 0)
            {
                Assert.True(counters.Dropped > 0);
                Assert.True(counters.Retransmitted > 0);
            }
            if (duplicate > 0)
            {
                Assert.True(counters.Duplicated > 0);
                var seqs = client.Received.Where(m => m.MessageType == MessageTypes.OutputStreamData).Select(m => m.SequenceNumber).ToList();
                Assert.True(seqs.Count > seqs.Distinct().Count(), "the client saw a sequence number twice");
            }
            if (reorder > 0)
            {
                Assert.True(counters.Reordered > 0);
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Reorder_BothDirections_ClientSeesSequenceInversions_AgentReassembles()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            // The destination writes 40 pieces a few ms apart: each becomes its own output_stream_data.
            echo.OnAccept = c => _ = Task.Run(async () =>
            {
                var stream = c.GetStream();
                var buffer = new byte[64];
                var n = await stream.ReadAsync(buffer);
                for (var i = 0; i < 40; i++)
                {
                    await stream.WriteAsync(Bytes("piece-" + i.ToString("00", System.Globalization.CultureInfo.InvariantCulture) + ";"));
                    await Task.Delay(5);
                }
            });
            var session = await StartAsync(host, SsmDocuments.PortForwarding, Ports(echo.Port));
            await using var client = new AgentTestClient { MuxMode = true };
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            host.Agent.SetSessionFaults(session.SessionId, new SandboxFaultOptions { ReorderRate = 0.5, Seed = 5 });

            // Client to agent: a burst of messages, some of which the sandbox delivers late.
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            for (var i = 0; i < 20; i++) await client.SmuxAsync(SmuxCommand.Nop, 0);
            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("go"));
            var expected = string.Concat(Enumerable.Range(0, 40).Select(i => "piece-" + i.ToString("00", System.Globalization.CultureInfo.InvariantCulture) + ";"));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length >= expected.Length, "all pieces");
            Assert.Equal(expected, Encoding.UTF8.GetString(client.StreamBytes(1)));

            var counters = host.Agent.Counters(session.SessionId)!;
            Assert.True(counters.Reordered > 0);
            Assert.True(counters.OutOfOrderReceived > 0, "the agent buffered early client messages");
            var seqs = client.Received.Where(m => m.MessageType == MessageTypes.OutputStreamData).Select(m => m.SequenceNumber).ToList();
            Assert.Contains(Enumerable.Range(1, seqs.Count - 1), i => seqs[i] < seqs[i - 1]);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task SameSeed_SameFaults()
        {
            await using var host = Start();
            var results = new List<string>();
            for (var round = 0; round < 2; round++)
            {
                var (client, id, echo) = await MuxWithFaultsAsync(host, new SandboxFaultOptions { DropRate = 0.2, Direction = FaultDirection.ClientToAgent, Seed = 99 });
                using var _ = echo;
                await using var __ = client;
                client.ResendAfter = null;
                var sent = new List<long>();
                for (var i = 0; i < 20; i++) sent.Add((await client.SendInputAsync(PayloadType.Output, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Nop, 0)))).SequenceNumber);
                // No resends: each of the 20 is either acknowledged or dropped. Wait for that, not for a time.
                IEnumerable<long> Acked() => client.Received.Where(m => m.MessageType == MessageTypes.Acknowledge)
                    .Select(m => SsmJson.Deserialize<AcknowledgeContent>(m.Payload).AcknowledgedMessageSequenceNumber);
                await client.WaitUntilAsync(
                    _ => sent.All(n => Acked().Contains(n) || host.Agent.Counters(id)!.DroppedInputSequenceNumbers.Contains(n)),
                    "every message acknowledged or dropped");
                var dropped = host.Agent.Counters(id)!.DroppedInputSequenceNumbers.Where(sent.Contains).OrderBy(x => x).ToList();
                var acked = Acked().Where(sent.Contains).OrderBy(x => x).ToList();
                Assert.NotEmpty(dropped);
                Assert.Empty(acked.Intersect(dropped));
                results.Add(string.Join(",", acked) + " | dropped " + string.Join(",", dropped));
            }
            Assert.Equal(results[0], results[1]);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AckDelay_DelaysTheAgentsAcknowledgements()
        {
            await using var host = Start();
            var (client, _, echo) = await MuxWithFaultsAsync(host, new SandboxFaultOptions { AckDelayMs = 400 });
            using var __ = echo;
            await using var ___ = client;
            client.ResendAfter = null;
            var sw = Stopwatch.StartNew();
            var sent = await client.SendInputAsync(PayloadType.Output, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Nop, 0)));
            await client.WaitUntilAsync(c => c.UnackedCount == 0, "the ack");
            Assert.True(sw.ElapsedMilliseconds >= 350, "ack after " + sw.ElapsedMilliseconds + " ms");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ByeAfter_ClosesEachConnectionWith1000Bye_TheSessionLivesOn()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var session = await StartAsync(host, SsmDocuments.PortForwarding, Ports(echo.Port));
            host.Agent.Faults = new SandboxFaultOptions { ByeAfterMs = 700 };
            await using var client = new AgentTestClient { MuxMode = true };
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            await client.WaitUntilAsync(c => c.CloseStatus != null, "Bye");
            Assert.Equal(WebSocketCloseStatus.NormalClosure, client.CloseStatus);
            Assert.Equal("Bye", client.CloseDescription);
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.NotEqual(SandboxSessionState.Terminated, s.State);

            host.Agent.Faults = new SandboxFaultOptions();
            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new Amazon.SimpleSystemsManagement.Model.ResumeSessionRequest { SessionId = session.SessionId });
            await client.ConnectAsync(resumed.StreamUrl, resumed.TokenValue);
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("still here"));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 10, "echo after the reconnect");
            Assert.Equal(1, host.Agent.Counters(session.SessionId)!.Byes);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task KillAfterBytes_AbortsWithoutCloseFrame()
        {
            await using var host = Start();
            var (client, id, echo) = await MuxWithFaultsAsync(host, new SandboxFaultOptions { KillAfterBytes = 3000 });
            using var _ = echo;
            await using var __ = client;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.SmuxAsync(SmuxCommand.Psh, 1, new byte[4000]);
            await client.WaitUntilAsync(c => c.ReceiveError != null, "the socket to be aborted");
            Assert.Null(client.CloseStatus);
            Assert.Equal(1, host.Agent.Counters(id)!.Kills);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ControlEndpoint_SetsFaults_ReadsCounters_KillsAndSendsPublication()
        {
            await using var host = Start();
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var set = await http.PostAsync(new Uri(host.ControlEndpoint, "faults"), new StringContent("{\"dropRate\":0.25,\"ackDelayMs\":5,\"seed\":7,\"direction\":\"AgentToClient\"}"));
            Assert.Equal(200, (int)set.StatusCode);
            Assert.Equal(0.25, host.Agent.Faults.DropRate);
            Assert.Equal(FaultDirection.AgentToClient, host.Agent.Faults.Direction);
            var read = JsonNode.Parse(await http.GetStringAsync(new Uri(host.ControlEndpoint, "faults")))!;
            Assert.Equal(7, (int)read["seed"]!);
            var rejected = await http.PostAsync(new Uri(host.ControlEndpoint, "faults"), new StringContent("{\"dropRate\":2}"));
            Assert.Equal(400, (int)rejected.StatusCode);
            await http.DeleteAsync(new Uri(host.ControlEndpoint, "faults"));
            Assert.Equal(0, host.Agent.Faults.DropRate);

            using var echo = new EchoServer();
            var session = await StartAsync(host, SsmDocuments.PortForwarding, Ports(echo.Port));
            var perSession = await http.PostAsync(new Uri(host.ControlEndpoint, "sessions/" + session.SessionId + "/faults"), new StringContent("{\"duplicateRate\":1}"));
            Assert.Equal(200, (int)perSession.StatusCode);
            Assert.Equal(1, host.Agent.GetSessionFaults(session.SessionId)!.DuplicateRate);
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            Assert.True(client.Received.Count(m => m.PayloadType == PayloadType.HandshakeRequest) >= 2);

            var pause = JsonNode.Parse(await (await http.PostAsync(new Uri(host.ControlEndpoint, "sessions/" + session.SessionId + "/pause"), null)).Content.ReadAsStringAsync())!;
            Assert.True((bool)pause["sent"]!);
            await client.WaitUntilAsync(c => c.Received.Any(m => m.MessageType == MessageTypes.PausePublication), "pause_publication");

            var counters = JsonNode.Parse(await http.GetStringAsync(new Uri(host.ControlEndpoint, "sessions/" + session.SessionId)))!;
            Assert.Equal(1, (long)counters["connections"]!);
            Assert.True((long)counters["duplicated"]! >= 2);
            Assert.Equal("mux", (string?)counters["plugin"]);
            var all = JsonNode.Parse(await http.GetStringAsync(new Uri(host.ControlEndpoint, "sessions")))!.AsArray();
            Assert.Single(all);

            var kill = JsonNode.Parse(await (await http.PostAsync(new Uri(host.ControlEndpoint, "sessions/" + session.SessionId + "/kill"), null)).Content.ReadAsStringAsync())!;
            Assert.True((bool)kill["killed"]!);
            await client.WaitUntilAsync(c => c.ReceiveError != null, "killed socket");
            Assert.Null(client.CloseStatus);
            Assert.Equal(404, (int)(await http.GetAsync(new Uri(host.ControlEndpoint, "sessions/nope"))).StatusCode);
        }
    }
}
