using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Net.Http;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using System.Threading.Tasks;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using BastionTools.Tests.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class SandboxAgentTests
    {
        internal const string Bastion = "i-0a1b2c3d4e5f60001";
        internal const string Legacy = "i-0a1b2c3d4e5f60002";

        internal static async Task<StartSessionResponse> StartAsync(SandboxHost host, string? document, Dictionary<string, List<string>>? parameters = null, string target = Bastion)
        {
            using var ssm = SsmClient(host);
            return await ssm.StartSessionAsync(new StartSessionRequest { Target = target, DocumentName = document, Parameters = parameters ?? new() });
        }

        internal static Dictionary<string, List<string>> Ports(int port, string local = "0", string? remoteHost = null)
        {
            var p = new Dictionary<string, List<string>> { ["portNumber"] = new() { port.ToString(CultureInfo.InvariantCulture) }, ["localPortNumber"] = new() { local } };
            if (remoteHost != null) p["host"] = new() { remoteHost };
            return p;
        }

        internal static async Task<(AgentTestClient Client, StartSessionResponse Session)> ConnectPortAsync(SandboxHost host, int port, string clientVersion = "1.2.0.0", string target = Bastion, string? remoteHost = null)
        {
            var session = await StartAsync(host, remoteHost == null ? SsmDocuments.PortForwarding : SsmDocuments.PortForwardingToRemoteHost, Ports(port, "0", remoteHost), target);
            var client = new AgentTestClient(clientVersion);
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.HandshakeAsync();
            return (client, session);
        }

        private static byte[] Bytes(string s) => Encoding.UTF8.GetBytes(s);

        // ---- OpenDataChannel ---------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task BadToken_IsClosedWithPolicyViolation_AndGoodTokenIsAccepted()
        {
            await using var host = Start();
            var session = await StartAsync(host, SsmDocuments.PortForwarding, Ports(9));
            await using var bad = new AgentTestClient();
            await bad.ConnectAsync(session.StreamUrl, session.TokenValue + "x");
            await bad.WaitUntilAsync(c => c.CloseStatus != null, "close");
            Assert.Equal(WebSocketCloseStatus.PolicyViolation, bad.CloseStatus);
            Assert.Empty(bad.Received);
            Assert.Null(host.Agent.Counters(session.SessionId));

            await using var good = new AgentTestClient();
            await good.ConnectAsync(session.StreamUrl, session.TokenValue);
            await good.WaitForDeliveredAsync(PayloadType.HandshakeRequest, "HandshakeRequest");
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.Equal(SandboxSessionState.Connected, s.State);
        }

        // ---- handshake and golden vectors --------------------------------------------------------------------------

        [Theory(Timeout = TestTimeoutMs)]
        [InlineData(Recording.Mux, Bastion, SsmDocuments.PortForwardingToRemoteHost, "45432")]
        [InlineData(Recording.Basic, Legacy, SsmDocuments.PortForwarding, "45433")]
        public async Task Handshake_IsByteForByteTheRecordedAgent_AndTheOfficialClientsFramesAreAccepted(string file, string target, string document, string localPort)
        {
            await using var host = Start();
            var recorded = Recording.Load(file);
            var parameters = Ports(55432, localPort, document == SsmDocuments.PortForwardingToRemoteHost ? "127.0.0.1" : null);
            var session = await StartAsync(host, document, parameters, target);
            await using var client = new AgentTestClient("1.2.0.0") { AutoAck = false };
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);

            var request = await client.WaitForAsync(c => c.Received.FirstOrDefault(), "first frame");
            var recordedRequest = recorded.First(f => !f.FromClient && !f.IsText);
            Assert.Equal(MessageTypes.OutputStreamData, request.MessageType);
            Assert.Equal(AgentMessageCodec.StandardHeaderLength, request.HeaderLength);
            Assert.Equal(recordedRequest.Seq, request.SequenceNumber);
            Assert.Equal(recordedRequest.Flags, request.Flags);
            Assert.Equal(recordedRequest.PayloadType, (int)request.PayloadType);
            Assert.Equal(recordedRequest.Payload, Encoding.UTF8.GetString(request.Payload));
            Assert.True(request.IsDigestValid);

            // Replay the official client's own frames (ack of the request, HandshakeResponse) byte for byte, with the
            // acknowledged MessageId swapped for the one our agent used.
            var clientFrames = recorded.Where(f => f.FromClient && !f.IsText).Take(2).ToList();
            var ack = AgentMessageCodec.Decode(clientFrames[0].Raw);
            var ackContent = SsmJson.Deserialize<AcknowledgeContent>(ack.Payload);
            Assert.Equal(recordedRequest.Id, ackContent.AcknowledgedMessageId);
            await client.SendFrameAsync(AgentMessageCodec.Encode(ClientMessages.Acknowledge(request, ack.MessageId, ack.CreatedDate)));
            Assert.True(clientFrames[1].IsComplete);
            await client.SendFrameAsync(clientFrames[1].Raw);

            var agentAck = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.Acknowledge), "ack of HandshakeResponse");
            var recordedAgentAck = recorded.First(f => !f.FromClient && f.Type == MessageTypes.Acknowledge);
            Assert.Equal(recordedAgentAck.Seq, agentAck.SequenceNumber);
            Assert.Equal(recordedAgentAck.Flags, agentAck.Flags);
            Assert.Equal(recordedAgentAck.PayloadType, (int)agentAck.PayloadType);
            Assert.Equal(recordedAgentAck.Payload, Encoding.UTF8.GetString(agentAck.Payload)); // acknowledges the recorded client message id

            var complete = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.PayloadType == PayloadType.HandshakeComplete), "HandshakeComplete");
            var recordedComplete = recorded.First(f => !f.FromClient && f.PayloadType == (int)PayloadType.HandshakeComplete);
            Assert.Equal(recordedComplete.Seq, complete.SequenceNumber);
            Assert.Equal(recordedComplete.Flags, complete.Flags);
            using var json = JsonDocument.Parse(complete.Payload);
            Assert.Equal(new[] { "HandshakeTimeToComplete", "CustomerMessage" }, json.RootElement.EnumerateObject().Select(p => p.Name));
            Assert.Equal("", json.RootElement.GetProperty("CustomerMessage").GetString());
            Assert.True(json.RootElement.GetProperty("HandshakeTimeToComplete").GetInt64() > 0);

            // Unacknowledged, the agent sends HandshakeComplete again after its RTO (same MessageId and bytes).
            await client.WaitUntilAsync(c => c.Received.Count(m => m.PayloadType == PayloadType.HandshakeComplete) >= 2, "a retransmission");
            var copies = client.Received.Where(m => m.PayloadType == PayloadType.HandshakeComplete).ToList();
            Assert.All(copies, m => Assert.Equal(complete.MessageId, m.MessageId));
            Assert.True(host.Agent.Counters(session.SessionId)!.Retransmitted >= 1);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ModeFollowsAgentAndClientVersions()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (mux, s1) = await ConnectPortAsync(host, echo.Port, "1.2.0.0");
            var (old, s2) = await ConnectPortAsync(host, echo.Port, "1.1.61.0");
            var (legacy, s3) = await ConnectPortAsync(host, echo.Port, "1.2.0.0", Legacy);
            await using (mux)
            await using (old)
            await using (legacy)
            {
                await mux.WaitUntilAsync(_ => host.Agent.PluginKind(s1.SessionId) != "port" && host.Agent.PluginKind(s1.SessionId) != null, "plugin");
                Assert.Equal("mux", host.Agent.PluginKind(s1.SessionId));
                await old.WaitUntilAsync(_ => host.Agent.PluginKind(s2.SessionId) == "basic", "basic for an old client");
                await legacy.WaitUntilAsync(_ => host.Agent.PluginKind(s3.SessionId) == "basic", "basic for an old agent");
            }
        }

        // ---- mux ---------------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Mux_TwoStreams_RelayThroughTheEchoServer_InMessagesOfAtMost1024Bytes()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, "1.2.497.0", remoteHost: "mydb.cluster-abc.us-west-2.rds.amazonaws.com");
            await using var _ = client;
            client.MuxMode = true;

            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.SmuxAsync(SmuxCommand.Syn, 3);
            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("hello one"));
            await client.SmuxAsync(SmuxCommand.Psh, 3, Bytes("hello three"));
            var big = new byte[50_000];
            new Random(7).NextBytes(big);
            for (var off = 0; off < big.Length; off += 1000) await client.SmuxAsync(SmuxCommand.Psh, 3, big.AsSpan(off, Math.Min(1000, big.Length - off)).ToArray());

            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 9, "stream 1 echo");
            await client.WaitUntilAsync(c => c.StreamBytes(3).Length == 11 + big.Length, "stream 3 echo");
            Assert.Equal("hello one", Encoding.UTF8.GetString(client.StreamBytes(1)));
            Assert.Equal(Bytes("hello three").Concat(big), client.StreamBytes(3));
            Assert.Equal(2, echo.Accepted);

            var outputs = client.Delivered.Where(m => m.PayloadType == PayloadType.Output).ToList();
            Assert.All(outputs, m => Assert.InRange(m.Payload.Length, 1, 1024));
            Assert.Contains(outputs, m => m.Payload.Length == 1024);

            // Client FIN: the agent closes the destination connection and answers with FIN (no half-close).
            await client.SmuxAsync(SmuxCommand.Fin, 1);
            await client.WaitUntilAsync(c => c.StreamFinished(1), "FIN for stream 1");
            await client.WaitUntilAsync(_ => echo.ClosedByPeer >= 1, "destination closed");
            Assert.False(client.StreamFinished(3));
            await client.SmuxAsync(SmuxCommand.Psh, 3, Bytes("!"));
            await client.WaitUntilAsync(c => c.StreamBytes(3).Length == 12 + big.Length, "stream 3 still works");
            // No keepalive NOPs for a client newer than 1.2.331.0.
            Assert.DoesNotContain(client.SmuxFrames, f => f.Command == SmuxCommand.Nop);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Mux_FailedDial_SendsConnectToPortErrorAndFinsThatStream_OthersKeepWorking()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port);
            await using var _ = client;
            client.MuxMode = true;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("a"));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 1, "stream 1 echo");

            echo.StopAccepting(); // the destination port is closed now; stream 1's connection lives on
            await client.SmuxAsync(SmuxCommand.Syn, 3);
            var flag = await client.WaitForDeliveredAsync(PayloadType.Flag, "ConnectToPortError");
            Assert.Equal(new byte[] { 0, 0, 0, 3 }, flag.Payload);
            await client.WaitUntilAsync(c => c.StreamFinished(3), "FIN for the failed stream");
            var flagIndex = client.Delivered.ToList().FindIndex(m => m.PayloadType == PayloadType.Flag);
            Assert.True(flagIndex > 0);

            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("b"));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 2, "stream 1 still echoes");
            Assert.False(client.StreamFinished(1));
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.NotEqual(SandboxSessionState.Terminated, s.State);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Mux_UnknownRemoteHost_IsAConnectToPortError_AndTheHostMapResolvesNames()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            host.World.MapHost("db.internal.example", "127.0.0.1");
            Assert.Equal("127.0.0.1", host.World.ResolveHost("x.cluster-1.eu-west-1.rds.amazonaws.com"));
            Assert.Equal("127.0.0.1", host.World.ResolveHost("localhost"));
            Assert.Equal("127.0.0.1", host.World.ResolveHost(""));
            Assert.Null(host.World.ResolveHost("example.com"));
            Assert.Null(host.World.ResolveHost("10.0.0.1"));

            var (unknown, _) = await ConnectPortAsync(host, echo.Port, remoteHost: "nowhere.example.com");
            await using (unknown)
            {
                unknown.MuxMode = true;
                await unknown.SmuxAsync(SmuxCommand.Syn, 1);
                await unknown.WaitForDeliveredAsync(PayloadType.Flag, "ConnectToPortError");
                await unknown.WaitUntilAsync(c => c.StreamFinished(1), "FIN");
            }
            var (mapped, _) = await ConnectPortAsync(host, echo.Port, remoteHost: "db.internal.example");
            await using (mapped)
            {
                mapped.MuxMode = true;
                await mapped.SmuxAsync(SmuxCommand.Syn, 1);
                await mapped.SmuxAsync(SmuxCommand.Psh, 1, Bytes("mapped"));
                await mapped.WaitUntilAsync(c => c.StreamBytes(1).Length == 6, "echo through the mapped name");
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Mux_OldClient_GetsSmuxKeepAliveNops()
        {
            await using var host = Start();
            host.Agent.Options.SmuxKeepAliveInterval = TimeSpan.FromMilliseconds(100);
            host.Agent.Options.SmuxKeepAliveTimeout = TimeSpan.FromSeconds(30);
            using var echo = new EchoServer();
            var (client, _) = await ConnectPortAsync(host, echo.Port, "1.2.0.0");
            await using var __ = client;
            client.MuxMode = true;
            await client.WaitUntilAsync(c => c.SmuxFrames.Count(f => f.Command == SmuxCommand.Nop) >= 2, "NOP keepalives");
            Assert.All(client.SmuxFrames.Where(f => f.Command == SmuxCommand.Nop), f => Assert.Equal(0u, f.StreamId));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Mux_TerminateSessionFlag_EndsTheSessionWithChannelClosed()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port);
            await using var _ = client;
            await client.SendFlagAsync(PayloadTypeFlag.TerminateSession);
            var closed = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            var payload = SsmJson.Deserialize<ChannelClosedPayload>(closed.Payload);
            Assert.Equal(session.SessionId, payload.SessionId);
            await client.WaitUntilAsync(c => c.CloseStatus != null, "close");
            Assert.Equal(WebSocketCloseStatus.NormalClosure, client.CloseStatus);
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.Equal(SandboxSessionState.Terminated, s.State);
        }

        // ---- basic -------------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Basic_LegacyAgent_RelaysRawBytes_DisconnectToPortClosesAndNextDataRedials()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port, target: Legacy);
            await using var _ = client;
            await client.WaitUntilAsync(_ => echo.Accepted == 1, "the agent dials at start");
            await client.SendTextAsync("SELECT 1;");
            await client.WaitUntilAsync(c => c.OutputText() == "SELECT 1;", "echo");
            Assert.Equal("basic", host.Agent.PluginKind(session.SessionId));

            await client.SendFlagAsync(PayloadTypeFlag.DisconnectToPort);
            await client.WaitUntilAsync(_ => echo.ClosedByPeer == 1, "destination closed");
            Assert.Equal(1, echo.Accepted);
            await client.SendTextAsync("again");
            await client.WaitUntilAsync(c => c.OutputText() == "SELECT 1;again", "echo after redial");
            Assert.Equal(2, echo.Accepted);

            var big = new string('x', 5000);
            await client.SendTextAsync(big);
            await client.WaitUntilAsync(c => c.OutputText().Length == 14 + 5000, "big echo");
            Assert.All(client.Delivered.Where(m => m.PayloadType == PayloadType.Output), m => Assert.InRange(m.Payload.Length, 1, 1024));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Basic_DestinationDownAtStart_EndsTheSession()
        {
            await using var host = Start();
            int port;
            using (var probe = new EchoServer()) port = probe.Port;
            var (client, session) = await ConnectPortAsync(host, port, target: Legacy);
            await using var _ = client;
            var closed = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            Assert.StartsWith("Unable to connect to specified port", SsmJson.Deserialize<ChannelClosedPayload>(closed.Payload).Output);
        }

        // ---- reliability -------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DuplicatesAreAcknowledgedAgain_AndOutOfOrderMessagesAreReassembled()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port);
            await using var _ = client;
            client.MuxMode = true;
            client.ResendAfter = null;

            // Sequence 1 (SYN) and 2 (PSH) sent as 2, then 1: the agent acks both and delivers them in order.
            var syn = client.NextSequence();
            var psh = client.NextSequence();
            var pshMessage = await client.SendInputAsync(psh, PayloadType.Output, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Psh, 1, Bytes("ordered"))));
            await client.WaitUntilAsync(c => AckCount(c, psh) == 1, "ack of the early message");
            await client.SendInputAsync(syn, PayloadType.Output, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Syn, 1)));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 7, "echo of the reassembled stream");
            Assert.Equal("ordered", Encoding.UTF8.GetString(client.StreamBytes(1)));

            // The same message again: acknowledged again, not delivered twice.
            await client.SendFrameAsync(AgentMessageCodec.Encode(pshMessage));
            await client.WaitUntilAsync(c => AckCount(c, psh) == 2, "second ack of the duplicate");
            await Task.Delay(300);
            Assert.Equal("ordered", Encoding.UTF8.GetString(client.StreamBytes(1)));
            var counters = host.Agent.Counters(session.SessionId)!;
            Assert.Equal(1, counters.OutOfOrderReceived);
            Assert.Equal(1, counters.DuplicatesReceived);

            // A message whose digest does not match is ignored (no ack).
            var bad = AgentMessageCodec.Encode(ClientMessages.InputStreamData(client.NextSequence(), PayloadType.Output, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Psh, 1, Bytes("x")))));
            bad[^1] ^= 0xFF;
            await client.SendFrameAsync(bad);
            await client.WaitUntilAsync(_ => counters.DigestFailures == 1, "digest failure counted");
        }

        private static int AckCount(AgentTestClient c, long sequence) =>
            c.Received.Count(m => m.MessageType == MessageTypes.Acknowledge && SsmJson.Deserialize<AcknowledgeContent>(m.Payload).AcknowledgedMessageSequenceNumber == sequence);

        [Fact(Timeout = TestTimeoutMs)]
        public async Task StateSurvivesReconnect_ResumeSessionGivesANewToken_NoByteLost()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            TcpClient? serverSide = null;
            echo.OnAccept = c => serverSide = c;
            var (client, session) = await ConnectPortAsync(host, echo.Port);
            await using var _ = client;
            client.MuxMode = true;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(_ => serverSide != null, "destination connection");
            var stream = serverSide!.GetStream();
            await stream.WriteAsync(Bytes("before "));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 7, "data before the drop");

            Assert.True(host.Agent.Kill(session.SessionId));
            await client.WaitUntilAsync(c => c.ReceiveError != null || c.State != WebSocketState.Open, "the socket to die");
            await client.WaitUntilAsync(_ => host.Sessions.TryGet(session.SessionId, out var s) && s.State == SandboxSessionState.Disconnected, "Disconnected");

            // The destination keeps talking while the client is away: the agent keeps the messages unacknowledged.
            var during = new string('d', 3000);
            await stream.WriteAsync(Bytes(during));
            await client.WaitUntilAsync(_ => host.Agent.Counters(session.SessionId)!.StreamMessagesCreated >= 6, "agent buffering");

            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = session.SessionId });
            Assert.NotEqual(session.TokenValue, resumed.TokenValue);
            await using (var stale = new AgentTestClient())
            {
                await stale.ConnectAsync(session.StreamUrl, session.TokenValue);
                await stale.WaitUntilAsync(c => c.CloseStatus != null, "stale token rejected");
                Assert.Equal(WebSocketCloseStatus.PolicyViolation, stale.CloseStatus);
            }

            await client.ConnectAsync(resumed.StreamUrl, resumed.TokenValue);
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 7 + during.Length, "the buffered data after the reconnect");
            Assert.Equal("before " + during, Encoding.UTF8.GetString(client.StreamBytes(1)));
            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("ping"));
            var buffer = new byte[4];
            var read = 0;
            while (read < 4) read += await stream.ReadAsync(buffer.AsMemory(read));
            Assert.Equal("ping", Encoding.ASCII.GetString(buffer));
            var counters = host.Agent.Counters(session.SessionId)!;
            Assert.Equal(2, counters.Connections);
            Assert.Equal(1, counters.Kills);
            Assert.True(counters.Retransmitted >= 1);
            // The HandshakeRequest is not sent again: sequence numbers continue.
            Assert.Single(client.Delivered, m => m.PayloadType == PayloadType.HandshakeRequest);
        }

        // ---- TerminateSession ---------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task TerminateSession_SendsChannelClosed_ClosesTheSocketAndTheDestination()
        {
            await using var host = Start();
            using var echo = new EchoServer();
            var (client, session) = await ConnectPortAsync(host, echo.Port);
            await using var _ = client;
            client.MuxMode = true;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.SmuxAsync(SmuxCommand.Psh, 1, Bytes("x"));
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length == 1, "echo");

            using var ssm = SsmClient(host);
            await ssm.TerminateSessionAsync(new TerminateSessionRequest { SessionId = session.SessionId });
            var closed = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            Assert.Equal(0, closed.SequenceNumber);
            var payload = SsmJson.Deserialize<ChannelClosedPayload>(closed.Payload);
            Assert.Equal(session.SessionId, payload.SessionId);
            Assert.Equal(session.SessionId, payload.DestinationId);
            Assert.Equal(MessageTypes.ChannelClosed, payload.MessageType);
            Assert.Equal(1, payload.SchemaVersion);
            Assert.Equal(closed.MessageId.ToString("D"), payload.MessageId);
            Assert.True(long.Parse(payload.CreatedDate, CultureInfo.InvariantCulture) > 0);
            Assert.Equal("\n\nExiting session with sessionId: " + session.SessionId + ".\n\n", payload.Output);
            await client.WaitUntilAsync(c => c.CloseStatus != null, "close");
            Assert.Equal(WebSocketCloseStatus.NormalClosure, client.CloseStatus);
            await client.WaitUntilAsync(_ => echo.ClosedByPeer == 1, "destination connection closed");
        }
    }
}
