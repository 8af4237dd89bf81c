using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxAgentTests;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// The sandbox agent is as strict as the real one: bounded buffers (OutgoingMessageBufferCapacity, the WebSocket
    /// queue, the smux bucket), the agent's resend pace, the 1 ms read pause. Conditions are waited for; the few
    /// windows are only ever upper bounds that the sandbox cannot exceed by construction.
    /// </summary>
    public class SandboxAgentStrictnessTests
    {
        /// <summary>A client newer than 1.2.331.0: mux without smux keepalive NOPs, so only the test's data is on the stream.</summary>
        private const string QuietClient = "1.2.497.0";
        /// <summary>The largest output_stream_data frame: 116-byte header, 4-byte length, 1024-byte payload.</summary>
        private const int MaxOutputFrame = 116 + 4 + 1024;

        private static long[] OutputSequences(AgentTestClient c) =>
            c.Received.Where(m => m.MessageType == MessageTypes.OutputStreamData).Select(m => m.SequenceNumber).ToArray();

        // ---- capacity ----------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task OutgoingCapacity_MessagesBeyondItAreSentOnce_AndNeverResentAfterADrop()
        {
            await using var host = Start();
            const int capacity = 5;
            const int pieces = 10;
            host.Agent.Options.OutgoingMessageBufferCapacity = capacity;
            using var trigger = new SemaphoreSlim(0);
            using var server = new ScriptedServer(async (client, stop) =>
            {
                var stream = client.GetStream();
                for (var i = 0; i < pieces; i++)
                {
                    await trigger.WaitAsync(stop);
                    // 1016 bytes + the 8-byte smux header = exactly one 1024-byte output message per piece.
                    await stream.WriteAsync(Enumerable.Repeat((byte)('a' + i), 1016).ToArray(), stop);
                }
                await Task.Delay(Timeout.Infinite, stop);
            });
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            await using var _ = client;
            client.MuxMode = true;
            var id = session.SessionId;
            var counters = host.Agent.Counters(id)!;
            await client.WaitUntilAsync(_ => host.Agent.UnackedCount(id) == 0, "the handshake messages to be acknowledged");
            var first = counters.StreamMessagesCreated; // HandshakeRequest and HandshakeComplete: 0 and 1

            // Every agent-to-client message is lost while the destination talks.
            host.Agent.SetSessionFaults(id, new SandboxFaultOptions { DropRate = 1, Direction = FaultDirection.AgentToClient });
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(_ => server.Accepted == 1, "the destination connection");
            for (var i = 0; i < pieces; i++)
            {
                trigger.Release();
                var expected = first + i + 1;
                await client.WaitUntilAsync(_ => counters.StreamMessagesCreated >= expected, "output message " + i);
            }
            Assert.Equal(first + pieces, counters.StreamMessagesCreated);
            Assert.Equal(pieces - capacity, counters.Unbuffered);
            Assert.Equal(capacity, host.Agent.UnackedCount(id));
            Assert.DoesNotContain(OutputSequences(client), s => s >= first);

            // The loss ends: the kept messages come back (oldest first, one per round), the others never.
            host.Agent.SetSessionFaults(id, new SandboxFaultOptions());
            var kept = Enumerable.Range((int)first, capacity).Select(i => (long)i).ToArray();
            await client.WaitUntilAsync(c => kept.All(k => OutputSequences(c).Contains(k)), "the kept messages to be resent");
            await client.WaitUntilAsync(_ => host.Agent.UnackedCount(id) == 0, "the resent messages to be acknowledged");
            await Task.Delay(500); // several resend rounds with nothing left to resend
            var seen = OutputSequences(client);
            Assert.DoesNotContain(seen, s => s >= first + capacity);
            Assert.True(counters.Retransmitted >= capacity, "retransmitted " + counters.Retransmitted);
            Assert.Equal(pieces - capacity, counters.Unbuffered);
            // The client got the kept pieces, in order, and nothing after the gap.
            Assert.Equal(capacity * 1016, client.StreamBytes(1).Length);
        }

        // ---- resend pacing -----------------------------------------------------------------------------------------

        /// <summary>
        /// A mux session whose client stopped acknowledging after the handshake, with about 40 unacknowledged output
        /// messages. Returns the first unacknowledged sequence number (the oldest).
        /// </summary>
        private static async Task<(AgentTestClient Client, string SessionId, ScriptedServer Server, long Oldest)> UnacknowledgedBacklogAsync(SandboxHost host, int backlog)
        {
            // The destination writes 40 KB at once: about 40 output messages, none of which the client acknowledges.
            var server = new ScriptedServer(async (c, stop) =>
            {
                await c.GetStream().WriteAsync(new byte[40 * 1024], stop);
                await Task.Delay(Timeout.Infinite, stop);
            });
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            await client.WaitUntilAsync(_ => host.Agent.UnackedCount(session.SessionId) == 0, "the handshake messages to be acknowledged");
            var oldest = host.Agent.Counters(session.SessionId)!.StreamMessagesCreated;
            client.AutoAck = false;
            client.MuxMode = true;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(_ => host.Agent.UnackedCount(session.SessionId) >= backlog, backlog + " unacknowledged messages");
            return (client, session.SessionId, server, oldest);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DefaultResend_IsOnlyTheOldestMessage_AtMostOncePerInterval()
        {
            await using var host = Start();
            Assert.False(host.Agent.Options.ResendAllDue);
            var clock = Stopwatch.StartNew();
            var (client, id, server, oldest) = await UnacknowledgedBacklogAsync(host, 30);
            using var _ = server;
            await using var __ = client;
            var counters = host.Agent.Counters(id)!;

            // Nothing is acknowledged: the agent resends its oldest message again and again, and never anything else,
            // however many messages are overdue.
            await client.WaitUntilAsync(c => OutputSequences(c).Count(s => s == oldest) >= 4, "the oldest message resent three times");
            var elapsed = clock.Elapsed;
            var resent = counters.Retransmitted;
            Assert.Equal(1, counters.MaxResendBurst);
            var sequences = OutputSequences(client);
            Assert.All(sequences.Where(s => s != oldest).GroupBy(s => s), g => Assert.Single(g));
            // One resend per 100 ms round at most (a loose, one-sided bound: the scheduler cannot go faster).
            Assert.True(resent <= elapsed.TotalMilliseconds / 100 + 2, resent + " resends in " + elapsed.TotalMilliseconds + " ms");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ResendAllDue_ResendsOldestFirst_BoundedByTheBurst()
        {
            await using var host = Start();
            host.Agent.Options.ResendAllDue = true;
            host.Agent.Options.ResendAllDueBurst = 8;
            var (client, id, server, oldest) = await UnacknowledgedBacklogAsync(host, 30);
            using var _ = server;
            await using var __ = client;
            var counters = host.Agent.Counters(id)!;

            await client.WaitUntilAsync(_ => counters.Retransmitted >= 40, "40 resends");
            // More than the oldest per round, never more than the burst.
            Assert.Equal(8, counters.MaxResendBurst);
            // Oldest first: the first resends are of the oldest sequence numbers, in order.
            var firstResends = new List<long>();
            var seen = new Dictionary<long, int>();
            foreach (var s in OutputSequences(client))
            {
                seen[s] = seen.TryGetValue(s, out var n) ? n + 1 : 1;
                if (seen[s] == 2) firstResends.Add(s);
            }
            Assert.Equal(Enumerable.Range(0, 8).Select(i => oldest + i), firstResends.Take(8));
        }

        // ---- back-pressure -----------------------------------------------------------------------------------------

        private static ScriptedServer EndlessWriter() => new(async (c, stop) =>
        {
            var stream = c.GetStream();
            var chunk = Enumerable.Range(0, 64 * 1024).Select(i => (byte)i).ToArray();
            while (!stop.IsCancellationRequested) await stream.WriteAsync(chunk, stop);
        });

        /// <summary>A mux session whose destination writes without end, and a client that stopped reading once data flowed.</summary>
        private static async Task<(AgentTestClient Client, StartSessionResponse Session, ScriptedServer Server)> BlockedWriterAsync(SandboxHost host)
        {
            host.Agent.Options.OutputReadPause = TimeSpan.Zero; // fill the queue quickly
            var server = EndlessWriter();
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            client.MuxMode = true;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(c => c.StreamBytes(1).Length > 0, "data from the destination");
            client.ReadPaused = true;
            var counters = host.Agent.Counters(session.SessionId)!;
            await client.WaitUntilAsync(_ => counters.SendWaiters >= 1, "the output pump to wait for room", TimeSpan.FromSeconds(40));
            return (client, session, server);
        }

        [Fact(Timeout = 90_000)]
        public async Task ClientThatStopsReading_QueueStaysWithinTheBound_AndAKillReleasesEveryWaiter()
        {
            await using var host = Start();
            var bound = host.Agent.Options.ConnectionQueueBytes;
            Assert.Equal(1024 * 1024, bound);
            host.Agent.Options.OutgoingMessageBufferCapacity = 5000; // after the kill the pump runs free; keep that small
            var (client, session, server) = await BlockedWriterAsync(host);
            using var _ = server;
            await using var __ = client;
            var id = session.SessionId;
            var counters = host.Agent.Counters(id)!;

            // The read loop's acknowledgements wait for room too.
            for (var i = 0; i < 3; i++) await client.SmuxAsync(SmuxCommand.Nop, 0);
            await client.WaitUntilAsync(_ => counters.SendWaiters >= 2, "an acknowledgement to wait for room as well");

            // Blocked: the queue stays within its bound, and the agent produces no more than the socket takes (the kernel's
            // buffers may still be taking some on a loaded machine; once they are full, that is nothing): what was created
            // in a window is what was written plus what the queue grew. The reads are ordered so that a race can only make
            // the check laxer, by a frame or so: queue, written, created at the start; created, written, queue at the end.
            var queuedBefore = counters.QueuedBytes;
            var sentBefore = counters.BytesSent;
            var createdBefore = counters.StreamBytesCreated;
            for (var i = 0; i < 5; i++)
            {
                Assert.InRange(counters.QueuedBytes, 0, bound + MaxOutputFrame);
                await Task.Delay(100);
            }
            var createdAfter = counters.StreamBytesCreated;
            var sentAfter = counters.BytesSent;
            var queuedAfter = counters.QueuedBytes;
            Assert.True(createdAfter - createdBefore <= sentAfter - sentBefore + (queuedAfter - queuedBefore) + 4 * MaxOutputFrame,
                $"{createdAfter - createdBefore} bytes produced while {sentAfter - sentBefore} were written and the queue went from {queuedBefore} to {queuedAfter}");
            Assert.InRange(counters.QueuedBytesPeak, bound - MaxOutputFrame, bound + MaxOutputFrame);
            await client.WaitUntilAsync(_ => host.Agent.ConnectionQueue(id).QueuedBytes >= bound - 2 * MaxOutputFrame, "the queue full");
            Assert.InRange(host.Agent.ConnectionQueue(id).QueuedBytes, bound - 2 * MaxOutputFrame, bound + MaxOutputFrame);
            var created = counters.StreamMessagesCreated;

            // The connection is killed: every waiter is released and, with no connection, nothing waits any more.
            Assert.True(host.Agent.Kill(id));
            await client.WaitUntilAsync(_ => counters.SendWaiters == 0 && counters.QueuedBytes == 0, "the waiters to be released");
            await client.WaitUntilAsync(_ => counters.StreamMessagesCreated > created + 100, "the pump to go on without a connection");
            Assert.Equal(0, host.Agent.ConnectionQueue(id).Waiters);
        }

        [Fact(Timeout = 90_000)]
        public async Task ClientThatStopsReading_IsReplacedByANewConnection_WhichGetsTheData()
        {
            await using var host = Start();
            var (client, session, server) = await BlockedWriterAsync(host);
            using var _ = server;
            await using var __ = client;
            var id = session.SessionId;
            var counters = host.Agent.Counters(id)!;
            var created = counters.StreamMessagesCreated;

            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = id });
            await using var replacement = new AgentTestClient(QuietClient);
            await replacement.ConnectAsync(resumed.StreamUrl, resumed.TokenValue);
            // The old connection is dropped and its waiters released; the pump's frames now go to the new one.
            await replacement.WaitUntilAsync(c => c.Received.Count(m => m.MessageType == MessageTypes.OutputStreamData && m.SequenceNumber > created) >= 100,
                "new output on the replacing connection");
            client.ReadPaused = false;
            await client.WaitUntilAsync(c => c.ReceiveError != null || c.CloseStatus != null, "the replaced connection to end");
            Assert.Equal(2, counters.Connections);
        }

        // ---- the smux bucket ---------------------------------------------------------------------------------------

        [Fact(Timeout = 90_000)]
        public async Task SmuxBucket_StopsAcknowledgementsWhileTheDestinationDoesNotRead_AndResumesWhenItDoes()
        {
            await using var host = Start();
            Assert.Equal(4194304, host.Agent.Options.SmuxMaxReceiveBuffer);
            host.Agent.Options.SmuxMaxReceiveBuffer = SmallBucket;
            var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            long received = 0;
            using var server = new ScriptedServer(async (c, stop) =>
            {
                await release.Task.WaitAsync(stop);
                var buffer = new byte[64 * 1024];
                var stream = c.GetStream();
                int n;
                while ((n = await stream.ReadAsync(buffer, stop)) > 0) Interlocked.Add(ref received, n);
            }, receiveBufferSize: 4096);
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            await using var _ = client;
            client.MuxMode = true;
            client.ResendAfter = null;
            var counters = host.Agent.Counters(session.SessionId)!;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(_ => server.Accepted == 1, "the destination connection");

            // Push until the agent's smux receive loop waits for its bucket and its acknowledgements stop for a while.
            long pushed = 0;
            var stalled = false;
            for (var attempt = 0; attempt < 20 && !stalled; attempt++)
            {
                pushed += (await PushUntilTheBucketIsUsedUpAsync(client, counters, 1)).Pushed;
                var acks = counters.AcksSent;
                await Task.Delay(300);
                stalled = counters.SmuxReceiveWaiting == 1 && counters.AcksSent == acks;
            }
            Assert.True(stalled, "the agent never stopped acknowledging (pushed " + pushed + " bytes)");
            Assert.True(counters.SmuxReceiveStalls >= 1);
            Assert.True(counters.SmuxBufferedBytes >= SmallBucket, "buffered " + counters.SmuxBufferedBytes);
            Assert.True(client.UnackedCount > 0);
            var frozen = counters.AcksSent;
            await Task.Delay(300);
            Assert.Equal(frozen, counters.AcksSent);

            // The destination reads: tokens come back, the agent reads and acknowledges everything.
            release.TrySetResult();
            try
            {
                await client.WaitUntilAsync(c => c.UnackedCount == 0, "every message to be acknowledged", TimeSpan.FromSeconds(60));
            }
            catch (TimeoutException)
            {
                throw new Xunit.Sdk.XunitException("Not every message was acknowledged after the destination drained: unacked " + client.UnackedCount + " state " + client.State + " error " + client.ReceiveError?.Message
                    + " pushed " + pushed + " received " + Interlocked.Read(ref received) + " counters " + counters.ToJson().ToJsonString()
                    + " describe " + host.Agent.ConnectionQueue(session.SessionId));
            }
            await client.WaitUntilAsync(_ => Interlocked.Read(ref received) == pushed, "the destination to receive everything", TimeSpan.FromSeconds(60));
            await client.WaitUntilAsync(_ => counters.SmuxBufferedBytes == 0 && counters.SmuxReceiveWaiting == 0, "the bucket to be full again");
        }

        /// <summary>The smux bucket the bucket tests give the agent (SmuxMaxReceiveBuffer), instead of its 4 MiB.</summary>
        private const int SmallBucket = 64 * 1024;

        /// <summary>
        /// Sends 1000-byte PSH frames on <paramref name="streamId"/> until the agent's smux receive loop waits for its
        /// bucket of <see cref="SmallBucket"/> bytes and the bucket is used up (both at once: the destination writer may
        /// still be taking pieces into the socket's buffers, returning their tokens, when the loop first waits; the loop
        /// then goes on once it is scheduled, and a loaded machine can show the wait flag with 22,000 bytes buffered in
        /// between). At most 64 messages are unacknowledged at a time, so what is in flight when the agent stops reading
        /// never fills the TCP buffers (a send that blocks for long would make the test client abort its socket).
        /// </summary>
        private static async Task<(long Pushed, long Buffered)> PushUntilTheBucketIsUsedUpAsync(AgentTestClient client, SandboxChannelCounters counters, uint streamId)
        {
            var piece = new byte[1000];
            long pushed = 0;
            long buffered;
            while (counters.SmuxReceiveWaiting == 0 || (buffered = counters.SmuxBufferedBytes) < SmallBucket)
            {
                if (client.UnackedCount >= 64)
                {
                    await Task.Delay(1);
                    continue;
                }
                Assert.True(pushed < 64L * 1024 * 1024, "the agent took 64 MB without its receive loop ever waiting");
                await client.SmuxAsync(SmuxCommand.Psh, streamId, piece);
                pushed += piece.Length;
            }
            return (pushed, buffered);
        }

        [Fact(Timeout = 90_000)]
        public async Task SmuxBucket_ClosingOrAbortingAStreamReturnsItsTokens()
        {
            await using var host = Start();
            host.Agent.Options.SmuxMaxReceiveBuffer = SmallBucket;
            var accepted = new System.Collections.Concurrent.ConcurrentQueue<TcpClient>();
            using var server = new ScriptedServer(async (c, stop) =>
            {
                accepted.Enqueue(c);
                await Task.Delay(Timeout.Infinite, stop); // never reads
            }, receiveBufferSize: 4096);
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            await using var _ = client;
            client.MuxMode = true;
            client.ResendAfter = null;
            var counters = host.Agent.Counters(session.SessionId)!;

            // The destination closes while the stream holds a full bucket: the stream closes (FIN), its tokens return,
            // the receive loop goes on and the agent acknowledges everything (later data for the stream is dropped).
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(_ => server.Accepted == 1, "the first destination connection");
            // As the helper saw it: a moment later the writer may have taken one more piece into the socket's buffers.
            var usedUp = await PushUntilTheBucketIsUsedUpAsync(client, counters, 1);
            Assert.True(usedUp.Buffered >= SmallBucket, "buffered " + usedUp.Buffered);
            Assert.True(accepted.TryDequeue(out var first));
            first.Client.Close();
            await client.WaitUntilAsync(c => c.StreamFinished(1), "FIN for stream 1", TimeSpan.FromSeconds(40));
            await client.WaitUntilAsync(c => c.UnackedCount == 0, "everything to be acknowledged", TimeSpan.FromSeconds(40));
            await client.WaitUntilAsync(_ => counters.SmuxBufferedBytes == 0 && counters.SmuxReceiveWaiting == 0, "the tokens of stream 1 to return");

            // A second stream fills the bucket again; ending the session aborts it and returns its tokens.
            await client.SmuxAsync(SmuxCommand.Syn, 3);
            await client.WaitUntilAsync(_ => server.Accepted == 2, "the second destination connection");
            await PushUntilTheBucketIsUsedUpAsync(client, counters, 3);
            host.Sessions.Terminate(session.SessionId, DateTime.UtcNow);
            await client.WaitUntilAsync(_ => counters.SmuxBufferedBytes == 0 && counters.SmuxReceiveWaiting == 0, "the tokens of stream 3 to return");
        }

        // ---- read pause --------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ReadPause_DefaultIsTheAgentsOneMillisecond_WhichCapsTheMessageRate()
        {
            await using var host = Start();
            Assert.Equal(TimeSpan.FromMilliseconds(1), host.Agent.Options.OutputReadPause);
            using var server = EndlessWriter();
            var (client, session) = await ConnectPortAsync(host, server.Port, QuietClient);
            await using var _ = client;
            client.MuxMode = true;
            var counters = host.Agent.Counters(session.SessionId)!;
            await client.SmuxAsync(SmuxCommand.Syn, 1);
            await client.WaitUntilAsync(_ => counters.StreamMessagesCreated > 50, "output to flow");
            var before = counters.StreamMessagesCreated;
            var clock = Stopwatch.StartNew();
            await Task.Delay(1000);
            var perSecond = (counters.StreamMessagesCreated - before) / clock.Elapsed.TotalSeconds;
            Assert.True(perSecond > 0, "no output");
            Assert.True(perSecond < 5000, perSecond + " messages per second with a 1 ms pause after each read");
        }

        // ---- control -----------------------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ControlAgent_ShowsAndChangesTheOptions()
        {
            await using var host = Start();
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var read = JsonNode.Parse(await http.GetStringAsync(new Uri(host.ControlEndpoint, "agent")))!;
            Assert.Equal(1.0, (double)read["outputReadPauseMs"]!);
            Assert.False((bool)read["resendAllDue"]!);
            Assert.Equal(256, (int)read["resendAllDueBurst"]!);
            Assert.Equal(100000, (int)read["outgoingMessageBufferCapacity"]!);
            Assert.Equal(100000, (int)read["incomingMessageBufferCapacity"]!);
            Assert.Equal(4194304, (int)read["smuxMaxReceiveBuffer"]!);

            var put = await http.PutAsync(new Uri(host.ControlEndpoint, "agent"), new StringContent("{\"outputReadPauseMs\":0,\"resendAllDue\":true,\"resendAllDueBurst\":32}"));
            Assert.Equal(200, (int)put.StatusCode);
            Assert.Equal(TimeSpan.Zero, host.Agent.Options.OutputReadPause);
            Assert.True(host.Agent.Options.ResendAllDue);
            Assert.Equal(32, host.Agent.Options.ResendAllDueBurst);
            Assert.Equal(0.0, (double)JsonNode.Parse(await put.Content.ReadAsStringAsync())!["outputReadPauseMs"]!);

            Assert.Equal(400, (int)(await http.PostAsync(new Uri(host.ControlEndpoint, "agent"), new StringContent("{\"outputReadPauseMs\":-1}"))).StatusCode);
            Assert.Equal(400, (int)(await http.PostAsync(new Uri(host.ControlEndpoint, "agent"), new StringContent("{\"nope\":1}"))).StatusCode);
            Assert.Equal(TimeSpan.Zero, host.Agent.Options.OutputReadPause);
            await http.PostAsync(new Uri(host.ControlEndpoint, "agent"), new StringContent("{\"outputReadPauseMs\":1,\"resendAllDue\":false}"));
            Assert.Equal(TimeSpan.FromMilliseconds(1), host.Agent.Options.OutputReadPause);
            Assert.False(host.Agent.Options.ResendAllDue);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Executable_TakesOutputReadPauseOnTheCommandLine()
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "BastionTools.Sandbox.dll");
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
                : Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet" ? self : "dotnet";
            var psi = new ProcessStartInfo(dotnet) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(dll);
            psi.ArgumentList.Add("--output-read-pause-ms");
            psi.ArgumentList.Add("0");
            psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
            using var process = Process.Start(psi)!;
            _ = process.StandardError.ReadToEndAsync();
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                var line = await process.StandardOutput.ReadLineAsync(cts.Token);
                var control = new Uri((string)JsonNode.Parse(line!)!["control"]!);
                using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
                var options = JsonNode.Parse(await http.GetStringAsync(new Uri(control, "agent")))!;
                Assert.Equal(0.0, (double)options["outputReadPauseMs"]!);
                process.StandardInput.Close();
                using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                await process.WaitForExitAsync(exit.Token);
                Assert.Equal(0, process.ExitCode);
            }
            finally
            {
                if (!process.HasExited) process.Kill(entireProcessTree: true);
            }
        }
    }

    /// <summary>A TCP destination on 127.0.0.1:0 that runs a script per accepted connection (cancelled on dispose).</summary>
    internal sealed class ScriptedServer : IDisposable
    {
        private readonly TcpListener _listener;
        private readonly Func<TcpClient, CancellationToken, Task> _script;
        private readonly CancellationTokenSource _stop = new();
        private readonly List<TcpClient> _clients = new();
        private int _accepted;

        public ScriptedServer(Func<TcpClient, CancellationToken, Task> script, int? receiveBufferSize = null)
        {
            _script = script;
            _listener = new TcpListener(IPAddress.Loopback, 0);
            // Set before listening so accepted sockets start with a small window (the kernel then holds little).
            if (receiveBufferSize is { } size) _listener.Server.ReceiveBufferSize = size;
            _listener.Start();
            Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
            _ = Task.Run(AcceptLoopAsync);
        }

        public int Port { get; }
        public int Accepted => Volatile.Read(ref _accepted);

        private async Task AcceptLoopAsync()
        {
            while (true)
            {
                TcpClient client;
                try
                {
                    client = await _listener.AcceptTcpClientAsync(_stop.Token);
                }
                catch (Exception)
                {
                    return;
                }
                lock (_clients) _clients.Add(client);
                Interlocked.Increment(ref _accepted);
                _ = Task.Run(async () =>
                {
                    try
                    {
                        await _script(client, _stop.Token);
                    }
                    catch (Exception)
                    {
                        // Cancelled or the agent closed the connection.
                    }
                });
            }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            lock (_clients)
            {
                foreach (var c in _clients) c.Dispose();
            }
        }
    }
}
