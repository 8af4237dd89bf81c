using System;
using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using BastionTools.Tests.Sandbox;
using Npgsql;
using Xunit;
using Xunit.Abstractions;

namespace BastionTools.Tests.Engine
{
    [CollectionDefinition("tunnel")]
    public sealed class TunnelCollection : ICollectionFixture<TunnelFixture>
    {
    }

    /// <summary>The engine's port forwarding end to end: real WebSocket, the sandbox agent, real TCP, real PostgreSQL and Npgsql.</summary>
    [Collection("tunnel")]
    public sealed class TunnelTests
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";
        private readonly TunnelFixture _f;
        private readonly ITestOutputHelper _output;

        public TunnelTests(TunnelFixture fixture, ITestOutputHelper output)
        {
            _f = fixture;
            _output = output;
        }

        private async Task<PortForwardingSession> StartAsync(int remotePort, string target = "i-0a1b2c3d4e5f60001", DataChannelOptions? options = null)
        {
            var session = new PortForwardingSession(_f.Api, new PortForwardingRequest { Target = target, RemoteHost = Endpoint, RemotePort = remotePort }, options ?? new DataChannelOptions());
            session.Events.Written += line => { try { _output.WriteLine(line); } catch (InvalidOperationException) { } };
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), cts.Token);
            return session;
        }

        private void Log(string line)
        {
            try
            {
                _output.WriteLine(line);
            }
            catch (InvalidOperationException)
            {
                // The test has ended.
            }
        }

        private string ConnectionString(int port, bool pooling = false) => _f.ConnectionString(port, pooling);

        [Fact(Timeout = 120_000)]
        public async Task Npgsql_QueriesThroughTheTunnel_ConcurrentlyAndPooled()
        {
            var session = await StartAsync(_f.Postgres.Port);
            try
            {
                Assert.Equal(PortForwardingMode.Multiplexed, session.Mode);
                await using var dataSource = NpgsqlDataSource.Create(ConnectionString(session.LocalEndPoint!.Port, pooling: true));
                var tasks = Enumerable.Range(1, 24).Select(async i =>
                {
                    await using var cmd = dataSource.CreateCommand("select name from seed_items where id = $1");
                    cmd.Parameters.AddWithValue(((i - 1) % 3) + 1);
                    return (string?)await cmd.ExecuteScalarAsync();
                }).ToList();
                var names = await Task.WhenAll(tasks);
                Assert.Equal(24, names.Length);
                Assert.All(names, n => Assert.Contains(n, new[] { "alpha", "bravo", "charlie" }));

                // A result larger than one message in each direction.
                await using var big = dataSource.CreateCommand("select string_agg(md5(g::text), '') from generate_series(1, 20000) g");
                var text = (string?)await big.ExecuteScalarAsync();
                Assert.Equal(20000 * 32, text!.Length);
                await using var echo = dataSource.CreateCommand("select length($1)");
                echo.Parameters.AddWithValue(new string('x', 300_000));
                Assert.Equal(300_000, (int)(await echo.ExecuteScalarAsync())!);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        /// <summary>A destination that, per connection, hashes everything it receives and sends <c>size</c> seeded random bytes back.</summary>
        private sealed class HashingServer : IDisposable
        {
            private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
            private readonly long _size;
            private readonly int _seed;

            public HashingServer(long size, int seed)
            {
                _size = size;
                _seed = seed;
                _listener.Start();
                Result = Task.Run(ServeOneAsync);
            }

            public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
            public Task<(string ReceivedHash, long Received, string SentHash)> Result { get; }

            private async Task<(string, long, string)> ServeOneAsync()
            {
                using var client = await _listener.AcceptTcpClientAsync();
                client.NoDelay = true;
                var stream = client.GetStream();
                // Both ends know the size and close only when done both ways: like the real agent, the sandbox closes a
                // destination completely as soon as either side ends (no half-close through the tunnel).
                var send = Task.Run(() => WriteRandomAsync(stream, _size, _seed));
                var (receivedHash, received) = await ReadExactlyAsync(stream, _size);
                return (receivedHash, received, await send);
            }

            public void Dispose() => _listener.Stop();
        }

        private static async Task<string> WriteRandomAsync(NetworkStream stream, long size, int seed)
        {
            var rnd = new Random(seed);
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[64 * 1024];
            for (long sent = 0; sent < size;)
            {
                var n = (int)Math.Min(buffer.Length, size - sent);
                rnd.NextBytes(buffer.AsSpan(0, n));
                sha.AppendData(buffer, 0, n);
                await stream.WriteAsync(buffer.AsMemory(0, n));
                sent += n;
            }
            return Convert.ToHexString(sha.GetHashAndReset());
        }

        /// <summary>Reads <paramref name="size"/> bytes (or until the peer closes), hashing them.</summary>
        private static async Task<(string Hash, long Count)> ReadExactlyAsync(NetworkStream stream, long size)
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[64 * 1024];
            long total = 0;
            int n;
            while (total < size && (n = await stream.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, size - total)))) > 0)
            {
                sha.AppendData(buffer, 0, n);
                total += n;
            }
            return (Convert.ToHexString(sha.GetHashAndReset()), total);
        }

        [Theory(Timeout = 120_000)]
        [InlineData(true)]
        [InlineData(false)]
        public async Task InlineSocketCompletions_TheAgentsMessagesAndTheLocalReadsAreHandledOnTheSocketEngineThread_OrOnThePoolWhenOff(bool inline)
        {
            const int Queries = 50;
            var session = await StartAsync(_f.Postgres.Port, options: new DataChannelOptions { InlineSocketCompletions = inline });
            try
            {
                await using var connection = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await connection.OpenAsync();
                var (handled, received, reads) = await OffPoolDuringQueriesAsync(session, Queries, connection);
                Log($"inline {inline}: {handled} messages from the agent handled outside the pool ({received} data messages received), {reads} local reads continued outside the pool, over {Queries} queries");
                if (inline)
                {
                    // Each query: at least its answer and the acknowledgement of its request come back, each one read
                    // through the socket engine (a read that completes at once continues on the thread it is on: that one).
                    Assert.True(handled >= received && handled >= Queries, $"{handled} messages handled outside the pool, {received} data messages received");
                    Assert.True(reads >= Queries, $"{reads} of the {Queries} queries' local reads continued outside the pool");
                }
                else
                {
                    Assert.Equal(0, handled);
                    Assert.Equal(0, reads);
                }
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task InlineSocketCompletions_WhileTwoConnectionsAreOpen_TheirReadsStayOnTheReaderThread_AndTheAgentsMessagesOnTheEngineThread()
        {
            const int Queries = 20;
            var session = await StartAsync(_f.Postgres.Port);
            try
            {
                await using var first = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await first.OpenAsync();
                var forwarder = Assert.IsType<MuxPortForwarder>(session.Forwarder);
                Assert.True(session.ReadsOnReaderThread, "a multiplexed session with inline completions reads its connections on its reader thread");
                Assert.True(forwarder.ReadsOnReaderThread);
                var one = await OffPoolDuringQueriesAsync(session, Queries, first);

                var second = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await second.OpenAsync();
                // The local sockets' own completions (a slow client's queued writes) go to the pool with two connections...
                Assert.False(session.InlineCompletions);
                // ...but no read and no message does: the reads are the reader thread's, the WebSocket is the engine's.
                var both = await OffPoolDuringQueriesAsync(session, Queries, first, second);
                Log($"one connection: {one.Handled} messages handled and {one.Reads} local reads outside the pool; two: {both.Handled} and {both.Reads}; over {Queries} queries each");
                Assert.True(one.Handled >= Queries && one.Reads >= Queries, $"one connection: {one.Handled} messages handled, {one.Reads} local reads outside the pool over {Queries} queries");
                Assert.True(both.Handled >= Queries && both.Reads >= Queries, $"two connections: {both.Handled} messages handled, {both.Reads} local reads outside the pool over {Queries} queries");
                await second.DisposeAsync();
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task ReaderThread_ThirtyTwoConnectionsAtOnce_EachGetsItsOwnAnswers_AndTheyShareMessages()
        {
            const int Connections = 32, Queries = 40;
            var session = await StartAsync(_f.Postgres.Port);
            try
            {
                Assert.True(session.ReadsOnReaderThread || !SocketCompletions.Supported);
                var connections = new List<NpgsqlConnection>();
                for (var i = 0; i < Connections; i++)
                {
                    var c = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port) + ";Pooling=false");
                    await c.OpenAsync();
                    connections.Add(c);
                }
                var channel = session.Channel!;
                var sent0 = channel.MessagesSent;
                var forwarder = Assert.IsType<MuxPortForwarder>(session.Forwarder);
                var frames0 = forwarder.FramesSent;
                using var start = new ManualResetEventSlim();
                var work = connections.Select((c, k) => Task.Run(async () =>
                {
                    start.Wait();
                    for (var i = 0; i < Queries; i++)
                    {
                        await using var cmd = new NpgsqlCommand("select $1::int * 1000 + $2::int", c);
                        cmd.Parameters.AddWithValue(k);
                        cmd.Parameters.AddWithValue(i);
                        Assert.Equal(k * 1000 + i, (int)(await cmd.ExecuteScalarAsync())!);
                    }
                })).ToArray();
                start.Set();
                await Task.WhenAll(work);
                var frames = forwarder.FramesSent - frames0;
                var messages = channel.MessagesSent - sent0;
                Log($"{Connections} connections x {Queries} queries: {frames} frames sent in {messages} messages");
                Assert.True(frames >= Connections * Queries, $"{frames} frames for {Connections * Queries} queries");
                // Requests read together go out together: fewer messages than frames (one each when nothing is shared).
                Assert.True(messages < frames, $"{messages} messages for {frames} frames: no frames shared a message");
                foreach (var c in connections) await c.DisposeAsync();
                await SandboxTestSupport.WaitUntilAsync(() => Task.FromResult(session.Connections.Active == 0), "every connection ended", TimeSpan.FromSeconds(30));
            }
            finally
            {
                await session.StopAsync();
            }
        }

        /// <summary>
        /// Runs <paramref name="queries"/> small queries, taking the connections in turn: how many of the agent's messages
        /// the channel handled, how many data messages it received, and how many local reads continued, outside the pool.
        /// </summary>
        private static async Task<(long Handled, long Received, long Reads)> OffPoolDuringQueriesAsync(PortForwardingSession session, int queries, params NpgsqlConnection[] connections)
        {
            var forwarder = Assert.IsType<MuxPortForwarder>(session.Forwarder);
            long handled0 = session.Channel!.MessagesHandledOffPool, received0 = session.Channel.MessagesReceived, reads0 = forwarder.LocalReadsOffPool;
            for (var i = 0; i < queries; i++)
            {
                await using var cmd = new NpgsqlCommand("select $1::int * 2", connections[i % connections.Length]);
                cmd.Parameters.AddWithValue(i);
                Assert.Equal(2 * i, (int)(await cmd.ExecuteScalarAsync())!);
            }
            return (session.Channel.MessagesHandledOffPool - handled0, session.Channel.MessagesReceived - received0, forwarder.LocalReadsOffPool - reads0);
        }

        [Fact(Timeout = 120_000)]
        public async Task TenMegabytesEachWay_WithoutFaults_AreIdentical()
            => await TransferAsync(10L * 1024 * 1024, faults: null, killHalfWay: false);

        [Fact(Timeout = 900_000)]
        public async Task HundredMegabytesEachWay_WithDropDuplicateReorderAndAForcedReconnect_AreIdentical()
        {
            var channel = await TransferAsync(100L * 1024 * 1024,
                new SandboxFaultOptions { DropRate = 0.05, DuplicateRate = 0.05, ReorderRate = 0.05, Seed = 1234 }, killHalfWay: true);
            Assert.True(channel.Reconnects >= 1, "the WebSocket was never re-established");
            Assert.True(channel.Retransmissions > 0, "no message was ever resent, so no drop was exercised");
            Assert.True(channel.DuplicatesReceived > 0, "no duplicate reached the client");
            Assert.True(channel.OutOfOrderReceived > 0, "no message arrived out of order");
        }

        private async Task<DataChannelStatistics> TransferAsync(long size, SandboxFaultOptions? faults, bool killHalfWay)
        {
            using var server = new HashingServer(size, seed: 11);
            var session = await StartAsync(server.Port);
            try
            {
                if (faults != null)
                {
                    // The agent resends lost messages at its own pace (one per 100 ms); what is tested here is that the
                    // client loses and duplicates nothing, so the double resends overdue messages in bursts
                    // (SandboxAgentOptions.ResendAllDue, bounded by ResendAllDueBurst), and reads its destination without
                    // the agent's 1 ms pause (OutputReadPause = 0): more pressure on the client, not less.
                    _f.Host.Agent.Options.ResendAllDue = true;
                    _f.Host.Agent.Options.OutputReadPause = TimeSpan.Zero;
                    _f.Host.Agent.SetSessionFaults(session.SessionId!, faults);
                }
                using var client = new TcpClient();
                client.NoDelay = true;
                await client.ConnectAsync(IPAddress.Loopback, session.LocalEndPoint!.Port);
                var stream = client.GetStream();
                var clock = System.Diagnostics.Stopwatch.StartNew();
                var upload = Task.Run(() => WriteRandomAsync(stream, size, seed: 22));
                var download = Task.Run(() => ReadExactlyAsync(stream, size));
                _ = upload.ContinueWith(t => Log($"upload {t.Status} after {clock.Elapsed.TotalSeconds:F1} s"), TaskScheduler.Default);
                _ = download.ContinueWith(t => Log($"download {t.Status} after {clock.Elapsed.TotalSeconds:F1} s"), TaskScheduler.Default);

                if (killHalfWay)
                {
                    // One forced WebSocket drop (no close frame) half way through: ResumeSession, new socket, go on.
                    while (session.Connections.BytesIn + session.Connections.BytesOut < size && !download.IsCompleted && !upload.IsFaulted)
                    {
                        await Task.Delay(50);
                    }
                    Assert.True(_f.Host.Agent.Kill(session.SessionId!), "the sandbox could not kill the WebSocket");
                }

                var sentHash = await upload;
                var (receivedHash, received) = await download;
                var (serverReceivedHash, serverReceived, serverSentHash) = await server.Result;
                var ch = session.Channel!;
                _output.WriteLine($"{size / 1048576} MB each way in {clock.Elapsed.TotalSeconds:F1} s; reconnects {ch.Reconnects}, retransmissions {ch.Retransmissions}, duplicates {ch.DuplicatesReceived}, out of order {ch.OutOfOrderReceived}");

                Assert.Equal(size, received);
                Assert.Equal(size, serverReceived);
                Assert.Equal(sentHash, serverReceivedHash);
                Assert.Equal(serverSentHash, receivedHash);
                return ch;
            }
            finally
            {
                _f.Host.Agent.Options.ResendAllDue = false;
                _f.Host.Agent.Options.OutputReadPause = TimeSpan.FromMilliseconds(1);
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task HalfClose_TheResponseToAClientThatShutDownItsSendSideStillArrivesWhole()
        {
            // A destination that answers only after the request ends, slowly: the agent has no half-close, so the
            // client must not pass the local EOF on (as FIN) before the answer is through.
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var answer = new byte[1024 * 1024];
            new Random(5).NextBytes(answer);
            var serve = Task.Run(async () =>
            {
                using var c = await listener.AcceptTcpClientAsync();
                var s = c.GetStream();
                var request = new byte[4];
                var got = 0;
                while (got < 4) got += await s.ReadAsync(request.AsMemory(got));
                await Task.Delay(300);
                for (var off = 0; off < answer.Length; off += 64 * 1024)
                {
                    await s.WriteAsync(answer.AsMemory(off, 64 * 1024));
                    await Task.Delay(20);
                }
            });
            var session = await StartAsync(((IPEndPoint)listener.LocalEndpoint).Port);
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, session.LocalEndPoint!.Port);
                var stream = client.GetStream();
                await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes("GET\n"));
                client.Client.Shutdown(SocketShutdown.Send);
                var (hash, count) = await ReadExactlyAsync(stream, long.MaxValue);
                await serve;
                Assert.Equal(answer.Length, count);
                Assert.Equal(Convert.ToHexString(SHA256.HashData(answer)), hash);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task ServiceCloseWithBye_IsResumedWithoutLosingAByte()
        {
            using var server = new HashingServer(8L * 1024 * 1024, seed: 3);
            // Every WebSocket of the session is closed with 1000 "Bye" 400 ms after it opens, as the service does hourly.
            _f.Host.Agent.Faults = new SandboxFaultOptions { ByeAfterMs = 400 };
            var session = await StartAsync(server.Port);
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, session.LocalEndPoint!.Port);
                var stream = client.GetStream();
                var upload = Task.Run(async () =>
                {
                    // Slow enough to span several 400 ms connections.
                    var rnd = new Random(4);
                    using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                    var buffer = new byte[256 * 1024];
                    for (var i = 0; i < 32; i++)
                    {
                        rnd.NextBytes(buffer);
                        sha.AppendData(buffer);
                        await stream.WriteAsync(buffer);
                        await Task.Delay(40);
                    }
                    return Convert.ToHexString(sha.GetHashAndReset());
                });
                var download = Task.Run(() => ReadExactlyAsync(stream, 8L * 1024 * 1024));
                var sent = await upload;
                var (received, count) = await download;
                var (serverReceived, serverCount, serverSent) = await server.Result;
                Assert.Equal(8L * 1024 * 1024, serverCount);
                Assert.Equal(sent, serverReceived);
                Assert.Equal(serverSent, received);
                Assert.True(session.Channel!.Reconnects >= 2, $"expected several resumed connections, saw {session.Channel.Reconnects}");
                // Byes keep coming every 400 ms until the fault is lifted: at any instant the session may be between two
                // connections. Once lifted, it settles on a connection and stays there.
                _f.Host.Agent.Faults = new SandboxFaultOptions();
                var settle = System.Diagnostics.Stopwatch.StartNew();
                while (session.State != SessionState.Connected && settle.Elapsed < TimeSpan.FromSeconds(60)) await Task.Delay(20);
                Assert.Equal(SessionState.Connected, session.State);
            }
            finally
            {
                _f.Host.Agent.Faults = new SandboxFaultOptions();
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task LostConnection_ThatCannotBeResumed_EndsWithAClearErrorWhenTheBudgetIsSpent()
        {
            // The first WebSocket opens; every later one fails to connect (the service is unreachable from here on).
            // The 2 s budget is spent once three reconnects have failed, not by the wall clock: on a loaded machine a real
            // 2 s could pass inside ResumeSession before any WebSocket attempt, and the last error would be a timeout.
            var opened = 0;
            var options = new DataChannelOptions
            {
                ReconnectTimeout = TimeSpan.FromSeconds(2),
                ReconnectElapsed = _ => Volatile.Read(ref opened) >= 4 ? TimeSpan.FromSeconds(2) : TimeSpan.Zero,
                ReconnectInitialDelay = TimeSpan.FromMilliseconds(20),
                ReconnectMaxDelay = TimeSpan.FromMilliseconds(200),
                TransportFactory = async (url, ct) =>
                {
                    if (Interlocked.Increment(ref opened) > 1) throw new System.IO.IOException("Unable to connect to the remote server");
                    return await WebSocketTransport.ConnectAsync(url, new WebSocketTransportOptions(), ct);
                },
            };
            var session = await StartAsync(_f.Postgres.Port, options: options);
            try
            {
                _f.Host.Agent.Kill(session.SessionId!);
                var done = await Task.WhenAny(session.Completion, Task.Delay(30_000));
                Assert.Same(session.Completion, done);
                Assert.Equal(SessionState.Failed, session.State);
                Assert.Equal(ErrorIds.BastionSessionFailed, session.ClosedErrorId);
                Assert.Contains("could not be resumed within 2 s", session.ClosedReason);
                Assert.Contains("Unable to connect to the remote server", session.ClosedReason);
                Assert.Equal(4, Volatile.Read(ref opened)); // the first connection and three failed reconnects, then no more
                Assert.True(await LoopbackProbe.RefusedAsync(IPAddress.Loopback, session.LocalEndPoint!.Port));
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task TerminateSessionElsewhere_ClosesTheSessionWithTheServiceOutput()
        {
            var session = await StartAsync(_f.Postgres.Port);
            try
            {
                await _f.Api.TerminateSessionAsync(session.SessionId!, CancellationToken.None);
                var done = await Task.WhenAny(session.Completion, Task.Delay(30_000));
                Assert.Same(session.Completion, done);
                Assert.Equal(SessionState.Closed, session.State);
                Assert.Contains("Exiting session with sessionId: " + session.SessionId, session.ClosedReason);
                Assert.Equal(ErrorIds.BastionSessionTerminated, session.ClosedErrorId);
                Assert.True(session.EndedOnItsOwn);
                Assert.True(await LoopbackProbe.RefusedAsync(IPAddress.Loopback, session.LocalEndPoint!.Port));
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task PausePublication_HoldsTheClientsSending_UntilStart()
        {
            var session = await StartAsync(_f.Postgres.Port);
            try
            {
                await using var conn = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await conn.OpenAsync();
                Assert.True(_f.Host.Agent.SendPublication(session.SessionId!, pause: true));
                await Task.Delay(200);
                var before = _f.Host.Agent.Counters(session.SessionId!)!.StreamMessagesDelivered;
                await using var cmd = new NpgsqlCommand("select 41 + 1", conn);
                var query = cmd.ExecuteScalarAsync();
                await Task.Delay(700);
                Assert.False(query.IsCompleted, "the query went through while publication was paused");
                Assert.Equal(before, _f.Host.Agent.Counters(session.SessionId!)!.StreamMessagesDelivered);
                Assert.True(_f.Host.Agent.SendPublication(session.SessionId!, pause: false));
                Assert.Equal(42, (int)(await query)!);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task IdleTunnel_SendsKeepAliveNops_ThatTheAgentAccepts()
        {
            var session = await StartAsync(_f.Postgres.Port, options: new DataChannelOptions { IdleKeepAlive = TimeSpan.FromMilliseconds(100) });
            try
            {
                // Nothing else is sent: every message the agent takes from now on is a keepalive NOP.
                var counters = _f.Host.Agent.Counters(session.SessionId!)!;
                var before = counters.StreamMessagesDelivered;
                var forwarder = (MuxPortForwarder)session.Forwarder!;
                var framesBefore = forwarder.FramesSent;
                var clock = System.Diagnostics.Stopwatch.StartNew();
                while (counters.StreamMessagesDelivered - before < 4)
                {
                    Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"the agent took {counters.StreamMessagesDelivered - before} keepalive messages in a minute");
                    await Task.Delay(20);
                }
                Assert.True(forwarder.FramesSent - framesBefore >= 4);
                // The tunnel still works after (NOPs did not disturb the smux stream).
                await using var conn = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await conn.OpenAsync();
                await using var cmd = new NpgsqlCommand("select 5", conn);
                Assert.Equal(5, (int)(await cmd.ExecuteScalarAsync())!);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task Stop_EndsTheListenerTheConnectionsAndTheSession()
        {
            var session = await StartAsync(_f.Postgres.Port);
            var port = session.LocalEndPoint!.Port;
            await using (var conn = new NpgsqlConnection(ConnectionString(port)))
            {
                await conn.OpenAsync();
                var open = new NpgsqlConnection(ConnectionString(port));
                await open.OpenAsync();
                await session.StopAsync();
                Assert.Equal(SessionState.Closed, session.State);
                Assert.Equal(0, session.Connections.Active);
                await Assert.ThrowsAnyAsync<Exception>(async () =>
                {
                    await using var cmd = new NpgsqlCommand("select 1", open);
                    await cmd.ExecuteScalarAsync();
                });
                await open.DisposeAsync();
            }
            Assert.True(await LoopbackProbe.RefusedAsync(IPAddress.Loopback, port));
            Assert.True(_f.Host.Sessions.TryGet(session.SessionId!, out var s));
            Assert.Equal(SandboxSessionState.Terminated, s!.State);
        }

        /// <summary>
        /// "localhost" is ::1 first for many clients: the listener takes the same port on both loopbacks, so nobody else
        /// can hold [::1]:port and receive what was meant for the tunnel.
        /// </summary>
        [Fact(Timeout = 120_000)]
        public async Task Listener_TakesThePortOnBothLoopbacks_AndAClientOfIPv6LoopbackReachesTheTunnel()
        {
            var session = await StartAsync(_f.Postgres.Port);
            var port = session.LocalEndPoint!.Port;
            try
            {
                Assert.Equal(IPAddress.Loopback, session.LocalEndPoint.Address);
                var v6 = new NpgsqlConnectionStringBuilder(ConnectionString(port)) { Host = "::1" }.ConnectionString;
                await using (var conn = new NpgsqlConnection(v6))
                {
                    await conn.OpenAsync();
                    await using var cmd = new NpgsqlCommand("select name from seed_items where id = 2", conn);
                    Assert.Equal("bravo", (string?)await cmd.ExecuteScalarAsync());
                }
                using var squatter = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
                var refused = Assert.Throws<SocketException>(() => squatter.Bind(new IPEndPoint(IPAddress.IPv6Loopback, port)));
                Assert.Equal(SocketError.AddressAlreadyInUse, refused.SocketErrorCode);
            }
            finally
            {
                await session.StopAsync();
            }
            Assert.True(await LoopbackProbe.RefusedAsync(IPAddress.IPv6Loopback, port));
        }

        /// <summary>A -LocalPort whose [::1] side someone else holds is refused before any session starts.</summary>
        [Fact(Timeout = 120_000)]
        public async Task ExplicitLocalPort_HeldOnIPv6LoopbackBySomeoneElse_IsLocalPortUnavailable_BeforeStartSession()
        {
            using var squatter = new TcpListener(IPAddress.IPv6Loopback, 0);
            squatter.Start();
            var port = ((IPEndPoint)squatter.LocalEndpoint).Port;
            var starts = _f.Host.Calls.Count(c => c.Operation == "StartSession");
            var session = new PortForwardingSession(_f.Api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Endpoint, RemotePort = _f.Postgres.Port, LocalPort = port }, new DataChannelOptions());
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None));
            Assert.Equal(ErrorIds.LocalPortUnavailable, ex.ErrorId);
            Assert.Contains("[::1]:" + port.ToString(System.Globalization.CultureInfo.InvariantCulture), ex.Message);
            Assert.Equal(starts, _f.Host.Calls.Count(c => c.Operation == "StartSession"));
            // Its 127.0.0.1 side was given back.
            using var again = new TcpListener(IPAddress.Loopback, port);
            again.Start();
        }
    }
}
