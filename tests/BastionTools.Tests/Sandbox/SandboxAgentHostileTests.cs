using System;
using System.Buffers.Binary;
using System.Linq;
using System.Net.Http;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading.Tasks;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxAgentTests;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>Hostile injections reach a raw client as specified; a timed-out session resumes without a token.</summary>
    public class SandboxAgentHostileTests
    {
        private const string QuietClient = "1.2.497.0";

        private static async Task<JsonNode> PostAsync(SandboxHost host, string path, string? json = null)
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
            var response = await http.PostAsync(new Uri(host.ControlEndpoint, path), json == null ? null : new StringContent(json));
            var body = await response.Content.ReadAsStringAsync();
            Assert.True(response.IsSuccessStatusCode, path + ": " + (int)response.StatusCode + " " + body);
            return JsonNode.Parse(body)!;
        }

        private static async Task<long> NextSequenceAsync(SandboxHost host, string sessionId)
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            return (long)JsonNode.Parse(await http.GetStringAsync(new Uri(host.ControlEndpoint, "sessions/" + sessionId)))!["nextSequenceNumber"]!;
        }

        // ---- far-ahead ---------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task FarAhead_SendsValidMessagesAMillionSequenceNumbersAhead()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, QuietClient);
            await using var _ = client;
            var next = await NextSequenceAsync(host, session.SessionId);

            Assert.Equal(25, await host.Agent.InjectFarAheadAsync(session.SessionId, 25));
            await client.WaitUntilAsync(c => c.Received.Count(m => m.SequenceNumber >= next + 1_000_000) == 25, "25 far-ahead messages");
            var far = client.Received.Where(m => m.SequenceNumber >= next + 1_000_000).ToList();
            Assert.Equal(Enumerable.Range(0, 25).Select(i => next + 1_000_000 + i), far.Select(m => m.SequenceNumber));
            Assert.All(far, m =>
            {
                Assert.Equal(MessageTypes.OutputStreamData, m.MessageType);
                Assert.Equal(PayloadType.Output, m.PayloadType);
                Assert.Equal(MessageFlags.Data, m.Flags);
                Assert.True(m.IsDigestValid);
                Assert.True(m.Payload.Length > 0);
            });
            // The agent's own numbering is untouched, and the default over HTTP is 1000 of them.
            Assert.Equal(next, await NextSequenceAsync(host, session.SessionId));
            var answer = await PostAsync(host, "sessions/" + session.SessionId + "/inject/far-ahead");
            Assert.Equal(1000, (int)answer["sent"]!);
            await client.WaitUntilAsync(c => c.Received.Count(m => m.SequenceNumber >= next + 1_000_000) == 1025, "1000 more");
            Assert.Equal(1025, host.Agent.Counters(session.SessionId)!.Injected);
        }

        // ---- endless fragments -------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task EndlessFragments_OneUnfinishedMessage_ThenNothingMoreOnThatConnection()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, QuietClient);
            await using var _ = client;
            var id = session.SessionId;
            var counters = host.Agent.Counters(id)!;
            await client.WaitUntilAsync(c => c.UnackedCount == 0 && host.Agent.UnackedCount(id) == 0, "a quiet channel");
            var complete = client.RawFrames.Count;

            const long size = 1024 * 1024 + 123;
            Assert.Equal(size, await host.Agent.InjectEndlessFragmentsAsync(id, size));
            await client.WaitUntilAsync(c => c.PartialMessageBytes == size, "the fragments");

            // The agent goes on (it acknowledges this), but nothing more is written on the stalled connection.
            await client.SmuxAsync(SmuxCommand.Nop, 0);
            await client.WaitUntilAsync(_ => counters.DiscardedAfterStall >= 1, "the acknowledgement to be held back");
            Assert.Equal(complete, client.RawFrames.Count);
            Assert.Equal(size, client.PartialMessageBytes);

            // The client gives up; a resumed connection works normally.
            client.Abort();
            await client.WaitUntilAsync(_ => host.Sessions.TryGet(id, out var s) && s.State == SandboxSessionState.Disconnected, "the stalled connection to end");
            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = id });
            await using var again = new AgentTestClient(QuietClient) { MuxMode = true };
            await again.ConnectAsync(resumed.StreamUrl, resumed.TokenValue);
            await again.WaitUntilAsync(_ => counters.Connections == 2 && host.Sessions.TryGet(id, out var s) && s.State == SandboxSessionState.Connected, "the new connection");
            var answer = await PostAsync(host, "sessions/" + id + "/inject/endless-fragments", "{\"bytes\":65536}");
            Assert.Equal(65536, (long)answer["sent"]!);
            await again.WaitUntilAsync(c => c.PartialMessageBytes == 65536, "the fragments over HTTP");
        }

        // ---- smux --------------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Smux_RawBytesGoIntoTheMuxStreamAsOrdinaryOutputMessages()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, QuietClient);
            await using var _ = client;
            client.MuxMode = true;
            var id = session.SessionId;
            var next = await NextSequenceAsync(host, id);

            // A PSH header announcing 65535 bytes for stream 3 (which the client never opened), followed by them.
            await host.Agent.InjectSmuxPshAsync(id, 3, 65535);
            await client.WaitUntilAsync(c => c.SmuxFrames.Any(f => f.Command == SmuxCommand.Psh && f.StreamId == 3), "the injected PSH");
            var psh = client.SmuxFrames.Single(f => f.StreamId == 3);
            Assert.Equal(65535, psh.Payload.Length);
            var outputs = client.Delivered.Where(m => m.SequenceNumber >= next).ToList();
            Assert.Equal(Enumerable.Range(0, outputs.Count).Select(i => next + i), outputs.Select(m => m.SequenceNumber));
            Assert.All(outputs, m => Assert.Equal(PayloadType.Output, m.PayloadType));
            Assert.All(outputs, m => Assert.InRange(m.Payload.Length, 1, 1024));
            Assert.Equal(65535 + 8, outputs.Sum(m => m.Payload.Length));

            // Arbitrary bytes over HTTP: here a FIN for stream 7.
            var fin = Convert.ToBase64String(SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Fin, 7)));
            await PostAsync(host, "sessions/" + id + "/inject/smux", "{\"base64\":\"" + fin + "\"}");
            await client.WaitUntilAsync(c => c.StreamFinished(7), "the injected FIN");
            await PostAsync(host, "sessions/" + id + "/inject/smux", "{\"psh\":{\"streamId\":5,\"length\":10}}");
            await client.WaitUntilAsync(c => c.StreamBytes(5).Length == 10, "the PSH over HTTP");

            // The agent's own traffic still works.
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.SmuxAsync(SmuxCommand.Psh, 1, Encoding.ASCII.GetBytes("still"));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 5, "echo");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Smux_OnANonMuxSessionIsAConflict()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, QuietClient, Legacy);
            await using var _ = client;
            await client.WaitUntilAsync(_ => host.Agent.PluginKind(session.SessionId) == "basic", "basic mode");
            await Assert.ThrowsAsync<InvalidOperationException>(() => host.Agent.InjectSmuxAsync(session.SessionId, new byte[] { 1 }));
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var response = await http.PostAsync(new Uri(host.ControlEndpoint, "sessions/" + session.SessionId + "/inject/smux"), new StringContent("{\"base64\":\"AQ==\"}"));
            Assert.Equal(409, (int)response.StatusCode);
        }

        // ---- bare publication messages ----------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task BarePublication_IsTheOfficialClientsUnitTestMessage()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, QuietClient);
            await using var _ = client;
            host.Agent.InjectBarePublication(session.SessionId, pause: false);
            await PostAsync(host, "sessions/" + session.SessionId + "/inject/pause-publication-bare");
            await client.WaitUntilAsync(c => c.Undecodable.Count == 2, "two bare publication messages");

            var types = new[] { MessageTypes.StartPublication, MessageTypes.PausePublication };
            for (var i = 0; i < 2; i++)
            {
                var frame = client.Undecodable[i];
                Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(frame)); // HeaderLength 0
                Assert.Equal(types[i], Encoding.ASCII.GetString(frame, 4, 32).TrimEnd(' ', '\0'));
                Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(frame.AsSpan(36))); // SchemaVersion
                Assert.Equal(0ul, BinaryPrimitives.ReadUInt64BigEndian(frame.AsSpan(40))); // CreatedDate 0
                Assert.Equal(1L, BinaryPrimitives.ReadInt64BigEndian(frame.AsSpan(48))); // SequenceNumber 1
                Assert.Equal(2ul, BinaryPrimitives.ReadUInt64BigEndian(frame.AsSpan(56))); // Flags 2
                Assert.All(frame.AsSpan(80, 32).ToArray(), b => Assert.Equal(0, b)); // no digest
                Assert.Equal(7u, BinaryPrimitives.ReadUInt32BigEndian(frame.AsSpan(116))); // PayloadLength
                Assert.Equal("payload", Encoding.ASCII.GetString(frame, 120, 7));
                Assert.Equal(127, frame.Length);
            }
        }

        // ---- timed-out sessions ------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task TimedOut_DropsTheConnection_ResumeHasNoToken_OldTokenIsRejected()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, QuietClient);
            await using var _ = client;
            var id = session.SessionId;

            var answer = await PostAsync(host, "sessions/" + id + "/timeout");
            Assert.Equal("TimedOut", (string?)answer["state"]);
            // No channel_closed, no close frame: the connection is just gone.
            await client.WaitUntilAsync(c => c.ReceiveError != null, "the connection to drop");
            Assert.Null(client.CloseStatus);
            Assert.DoesNotContain(client.Received, m => m.MessageType == MessageTypes.ChannelClosed);
            Assert.True(host.Sessions.TryGet(id, out var s));
            Assert.Equal(SandboxSessionState.TimedOut, s.State);
            Assert.NotNull(s.EndedUtc);

            // ResumeSession: 200 with the id and no token or URL (the official client then says "timed out").
            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = id });
            Assert.Equal(id, resumed.SessionId);
            Assert.True(string.IsNullOrEmpty(resumed.TokenValue));
            Assert.True(string.IsNullOrEmpty(resumed.StreamUrl));
            var (status, body, _) = await SendSignedSsmAsync(host, "ResumeSession", "{\"SessionId\":\"" + id + "\"}", DateTime.UtcNow);
            Assert.Equal(200, status);
            var json = JsonNode.Parse(body)!.AsObject();
            Assert.Equal(new[] { "SessionId" }, json.Select(p => p.Key));

            // The old token: 1008, as for a terminated session.
            await using (var stale = new AgentTestClient(QuietClient))
            {
                await stale.ConnectAsync(session.StreamUrl, session.TokenValue);
                await stale.WaitUntilAsync(c => c.CloseStatus != null, "the old token to be rejected");
                Assert.Equal(WebSocketCloseStatus.PolicyViolation, stale.CloseStatus);
            }

            // TerminateSession afterwards: terminated, and ResumeSession says DoesNotExist as for any terminated session.
            await ssm.TerminateSessionAsync(new TerminateSessionRequest { SessionId = id });
            Assert.Equal(SandboxSessionState.Terminated, s.State);
            await Assert.ThrowsAsync<Amazon.SimpleSystemsManagement.Model.DoesNotExistException>(() => ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = id }));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task TimedOut_WhileDisconnected_AndATerminatedSessionDoesNotTimeOut()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var idle = await StartAsync(host, SsmDocuments.PortForwarding, Ports(echo.Port));
            Assert.True(host.Sessions.TimeOut(idle.SessionId, DateTime.UtcNow));
            Assert.False(host.Sessions.TimeOut("nope", DateTime.UtcNow));
            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = idle.SessionId });
            Assert.True(string.IsNullOrEmpty(resumed.TokenValue));

            var ended = await StartAsync(host, SsmDocuments.PortForwarding, Ports(echo.Port));
            await ssm.TerminateSessionAsync(new TerminateSessionRequest { SessionId = ended.SessionId });
            Assert.True(host.Sessions.TimeOut(ended.SessionId, DateTime.UtcNow));
            Assert.True(host.Sessions.TryGet(ended.SessionId, out var s));
            Assert.Equal(SandboxSessionState.Terminated, s.State);
            await Assert.ThrowsAsync<Amazon.SimpleSystemsManagement.Model.DoesNotExistException>(() => ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = ended.SessionId }));
        }

        // ---- the agent's pause flag --------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AgentPause_StopsOutputUntilTheClientSendsSomething()
        {
            await using var host = Start();
            using var trigger = new System.Threading.SemaphoreSlim(0);
            using var server = new ScriptedServer(async (c, stop) =>
            {
                await trigger.WaitAsync(stop);
                await c.GetStream().WriteAsync(Encoding.ASCII.GetBytes("late"), stop);
                await Task.Delay(System.Threading.Timeout.Infinite, stop);
            });
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            await using var _ = client;
            client.MuxMode = true;
            var id = session.SessionId;
            var counters = host.Agent.Counters(id)!;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(c => server.Accepted == 1 && c.UnackedCount == 0, "the destination connection");

            // Paused (pause_publication from MGS to the agent): the pump, already waiting in its read, takes the data
            // and the message is kept but not sent; nothing is resent while paused.
            await PostAsync(host, "sessions/" + id + "/agent-pause");
            var created = counters.StreamMessagesCreated;
            var sent = counters.MessagesSent;
            var resent = counters.Retransmitted;
            trigger.Release();
            await client.WaitUntilAsync(_ => counters.StreamMessagesCreated == created + 1 && host.Agent.UnackedCount(id) == 1, "the message to be kept");
            await Task.Delay(500); // several resend rounds
            Assert.Equal(sent, counters.MessagesSent);
            Assert.Equal(resent, counters.Retransmitted);
            Assert.Empty(client.StreamBytes(1));

            // Any input clears Pause (handleStreamDataMessage): the kept message is resent.
            await client.SmuxAsync(SmuxCommand.Nop, 0);
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 4, "the output after the pause");
            Assert.Equal("late", Encoding.ASCII.GetString(client.StreamBytes(1)));
            Assert.True(host.Agent.SetAgentPaused(id, false));
        }
    }
}
