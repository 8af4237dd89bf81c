using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
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
    [CollectionDefinition("resilience")]
    public sealed class ResilienceCollection : ICollectionFixture<ResilienceFixture>
    {
    }

    /// <summary>
    /// The tunnel's promise, "no byte lost, and it keeps going", against what real networks and peers do: a client that
    /// stops reading, silent outages (no FIN, no RST), resets, half-open connections, a session that expires meanwhile,
    /// and a service side that sends what no service sends. Real WebSocket, real TCP, real PostgreSQL and Npgsql.
    /// </summary>
    [Collection("resilience")]
    public sealed class ResilienceTests
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";
        private readonly ResilienceFixture _f;
        private readonly ITestOutputHelper _output;

        public ResilienceTests(ResilienceFixture fixture, ITestOutputHelper output)
        {
            _f = fixture;
            _output = output;
            // The agent's pace (1 ms per 1 KiB read) is kept unless a test says otherwise.
            _f.Host.Agent.Options.OutputReadPause = TimeSpan.FromMilliseconds(1);
        }

        private async Task<PortForwardingSession> StartAsync(DataChannelOptions? options = null, int? remotePort = null)
        {
            var session = new PortForwardingSession(_f.Api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Endpoint, RemotePort = remotePort ?? _f.Postgres.Port },
                options ?? new DataChannelOptions());
            session.Events.Written += line =>
            {
                try
                {
                    _output.WriteLine(DateTime.UtcNow.ToString("HH:mm:ss.fff") + " " + line);
                }
                catch (InvalidOperationException)
                {
                }
            };
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), cts.Token);
            return session;
        }

        private string ConnectionString(int port, bool pooling = false, int commandTimeout = 30) => _f.ConnectionString(port, pooling, commandTimeout, maxPoolSize: 8);

        private static async Task<int> ScalarAsync(NpgsqlConnection conn, string sql)
        {
            await using var cmd = new NpgsqlCommand(sql, conn);
            return Convert.ToInt32(await cmd.ExecuteScalarAsync());
        }

        private static async Task Until(Func<bool> condition, string what, int timeoutMs = 60_000)
        {
            var clock = Stopwatch.StartNew();
            while (!condition())
            {
                if (clock.ElapsedMilliseconds > timeoutMs) throw new TimeoutException("Timed out waiting for: " + what);
                await Task.Delay(20);
            }
        }

        [Fact(Timeout = 300_000)]
        public async Task AClientThatStopsReadingMidCopy_StallsNobody_IsResetAlone_AndTheTunnelGoesOn()
        {
            // The faster agent: the stalled connection's queue fills sooner, which is the harder case for the client. The
            // reset comes from the session bound (data volume), not from the stall time, so the window in which the other
            // connection must be served is set by how much data arrives, which a loaded machine slows down too.
            _f.Host.Agent.Options.OutputReadPause = TimeSpan.Zero;
            var options = new DataChannelOptions
            {
                ConnectionQueues = new ConnectionQueuePolicy { ConnectionBytes = 1024 * 1024, SessionBytes = 24 * 1024 * 1024, StallTime = TimeSpan.FromMinutes(10) },
            };
            var session = await StartAsync(options);
            try
            {
                var port = session.LocalEndPoint!.Port;
                await using var other = new NpgsqlConnection(ConnectionString(port));
                await other.OpenAsync();

                // The stalled client: a COPY of about 400 MB at most ~4 MB/s (one 4 KB row per millisecond at best), of which
                // it reads one line, then nothing (Npgsql buffers 8 KiB, the socket a few hundred; the rest piles up in the
                // tunnel for this connection until the session's bound).
                var stalled = new NpgsqlConnection(ConnectionString(port, commandTimeout: 0));
                await stalled.OpenAsync();
                var export = await stalled.BeginTextExportAsync(
                    "COPY (SELECT g, repeat('x', 4000), pg_sleep(0.001) FROM generate_series(1, 100000) g) TO STDOUT");
                Assert.StartsWith("1\t", await export.ReadLineAsync());

                // Meanwhile the other connection keeps answering. Proof that nothing waits behind the stalled connection:
                // queries that started and finished while it held more than its bound and had not been reset (a tunnel with
                // head-of-line blocking completes none in that window, however fast the machine). Latencies are printed,
                // not asserted: the benchmark measures them.
                var latencies = new List<double>();
                var duringStall = 0;
                var clock = Stopwatch.StartNew();
                while (session.Connections.Reset == 0 && duringStall < 5 && clock.Elapsed < TimeSpan.FromSeconds(120))
                {
                    var stalledBefore = session.Connections.QueuedBytes >= options.ConnectionQueues.ConnectionBytes;
                    var q = Stopwatch.StartNew();
                    Assert.Equal(1, await ScalarAsync(other, "select 1"));
                    latencies.Add(q.Elapsed.TotalMilliseconds);
                    if (stalledBefore && session.Connections.Reset == 0 && session.Connections.QueuedBytes >= options.ConnectionQueues.ConnectionBytes) duringStall++;
                }
                _output.WriteLine($"select 1 while a COPY was stalled: {latencies.Count} queries ({duringStall} entirely while it was over its bound), max {latencies.Max():F1} ms");
                Assert.True(duringStall >= 5, $"{duringStall} queries completed while the stalled connection was over its bound ({latencies.Count} in all)");
                // Then the session bound is reached and the stalled connection (the one holding the most) is reset, alone.
                await Until(() => session.Connections.Reset > 0, "the stalled connection reset at the session bound", 120_000);
                _output.WriteLine($"peak queued {session.Connections.QueuedBytesPeak} bytes");
                Assert.Equal(1, session.Connections.Reset);
                // Bounded: what the tunnel held for its connections never passed the session bound by more than one frame
                // (the stalled connection may pass its own bound while its 2 s stall time runs, not more).
                Assert.True(session.Connections.QueuedBytesPeak <= options.ConnectionQueues.SessionBytes + 64 * 1024, $"peak {session.Connections.QueuedBytesPeak}");
                Assert.Contains(session.Events.Snapshot(), e => e.Contains(" was reset: "));

                // The stalled client finds its connection reset...
                await Assert.ThrowsAnyAsync<Exception>(async () =>
                {
                    while (await export.ReadLineAsync() != null)
                    {
                    }
                });
                await stalled.DisposeAsync();
                // ...and the tunnel carries on: the same other connection, and new ones.
                Assert.Equal(2, await ScalarAsync(other, "select 2"));
                for (var i = 0; i < 5; i++)
                {
                    await using var fresh = new NpgsqlConnection(ConnectionString(port));
                    await fresh.OpenAsync();
                    Assert.Equal(i, await ScalarAsync(fresh, $"select {i}"));
                }
                await Until(() => session.Connections.QueuedBytes < 1024, "the released queue");
                Assert.Equal(SessionState.Connected, session.State);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 300_000)]
        public async Task A60SecondBlackout_TheSameDatabaseConnectionAnswersAfterwards()
        {
            var session = await StartAsync();
            try
            {
                await using var conn = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port, commandTimeout: 120));
                await conn.OpenAsync();
                var pid = await ScalarAsync(conn, "select pg_backend_pid()");
                Assert.Equal(41, await ScalarAsync(conn, "select 41"));

                // Every connection through the proxy goes silent: no FIN, no RST; new ones hang until it ends.
                var clock = Stopwatch.StartNew();
                await _f.Proxy.BlackoutAsync(TimeSpan.FromSeconds(60));
                _output.WriteLine($"blackout over after {clock.Elapsed.TotalSeconds:F1} s; session {session.State}, dead connections found {session.Channel!.DeadConnectionsDetected}, resume attempts {session.Channel.ResumeAttempts}");

                // The same connection (the same server process) answers.
                var q = Stopwatch.StartNew();
                Assert.Equal(42, await ScalarAsync(conn, "select 42"));
                _output.WriteLine($"first answer {q.Elapsed.TotalSeconds:F1} s after the blackout");
                Assert.Equal(pid, await ScalarAsync(conn, "select pg_backend_pid()"));
                Assert.True(session.Channel.DeadConnectionsDetected >= 1, "the dead WebSocket was never detected");
                Assert.True(session.Channel.Reconnects >= 1);
                Assert.Equal(SessionState.Connected, session.State);
            }
            finally
            {
                _f.Proxy.EndBlackout();
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 180_000)]
        public async Task ABlackoutLongerThanTheBudget_EndsTheSessionWithAClearError_AndNothingIsLeftRunning()
        {
            var session = await StartAsync(new DataChannelOptions
            {
                ReconnectTimeout = TimeSpan.FromSeconds(6),
                PingInterval = TimeSpan.FromSeconds(1),
                PongTimeout = TimeSpan.FromSeconds(2),
                ResumeAttemptTimeout = TimeSpan.FromSeconds(3),
            });
            var port = session.LocalEndPoint!.Port;
            try
            {
                await using var conn = new NpgsqlConnection(ConnectionString(port));
                await conn.OpenAsync();
                Assert.Equal(1, await ScalarAsync(conn, "select 1"));
                _f.Proxy.StartBlackout();
                var done = await Task.WhenAny(session.Completion, Task.Delay(TimeSpan.FromSeconds(120)));
                Assert.Same(session.Completion, done);
                Assert.Equal(SessionState.Failed, session.State);
                Assert.Equal(ErrorIds.BastionSessionFailed, session.ClosedErrorId);
                Assert.Contains("could not be resumed within 6 s", session.ClosedReason);
                Assert.Equal(ChannelState.Closed, session.DataChannel!.State);
                Assert.Equal(0, session.Connections.Active);
                // The listener is gone and the open connection was closed.
                Assert.True(await LoopbackProbe.RefusedAsync(IPAddress.Loopback, port));
                await Assert.ThrowsAnyAsync<Exception>(() => ScalarAsync(conn, "select 1"));
                // Nothing retries any more: the attempts counter stays still.
                var attempts = session.Channel!.ResumeAttempts;
                await Task.Delay(1500);
                Assert.Equal(attempts, session.Channel.ResumeAttempts);
            }
            finally
            {
                _f.Proxy.EndBlackout();
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 180_000)]
        public async Task ResetsAndAHalfOpenConnection_AreResumed_WithoutLosingAByte()
        {
            var session = await StartAsync(new DataChannelOptions { PingInterval = TimeSpan.FromSeconds(2), ProbeInterval = TimeSpan.FromSeconds(1), PongTimeout = TimeSpan.FromSeconds(2) });
            try
            {
                await using var conn = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port, commandTimeout: 120));
                await conn.OpenAsync();
                var pid = await ScalarAsync(conn, "select pg_backend_pid()");

                // An RST on the WebSocket's TCP connection (and on the API's): resumed at once.
                _f.Proxy.ResetAll();
                Assert.Equal(1, await ScalarAsync(conn, "select 1"));
                await Until(() => session.Channel!.Reconnects >= 1, "a resumed connection after the reset");

                // Half-open: the service's bytes stop reaching the client, silently; the client's still arrive.
                var before = session.Channel!.Reconnects;
                _f.Proxy.HalfOpen(ProxyDirection.ServerToClient);
                var query = ScalarAsync(conn, "select 2");
                _f.Proxy.Heal();  // new connections are healthy; the half-open one stays broken
                Assert.Equal(2, await query);
                Assert.True(session.Channel.Reconnects > before, "the half-open connection was not replaced");
                Assert.Equal(pid, await ScalarAsync(conn, "select pg_backend_pid()"));
                // A large result through the repaired tunnel arrives whole.
                await using var cmd = new NpgsqlCommand("select string_agg(md5(g::text), '') from generate_series(1, 20000) g", conn);
                Assert.Equal(20000 * 32, ((string)(await cmd.ExecuteScalarAsync())!).Length);
            }
            finally
            {
                _f.Proxy.Heal();
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task ASessionThatTimedOutWhileTheConnectionWasLost_EndsWithSessionTimedOut_AtOnce()
        {
            var session = await StartAsync(new DataChannelOptions { ReconnectInitialDelay = TimeSpan.FromMilliseconds(50) });
            try
            {
                // The service times the session out (its idle timeout) while the client is away; the next resume is answered
                // without a token, as the official client reads it: "Session ... timed out".
                _f.Host.Agent.TimeOut(session.SessionId!);
                var done = await Task.WhenAny(session.Completion, Task.Delay(TimeSpan.FromSeconds(60)));
                Assert.Same(session.Completion, done);
                Assert.Equal(SessionState.Failed, session.State);
                Assert.Equal(ErrorIds.BastionSessionTimedOut, session.ClosedErrorId);
                Assert.Contains("timed out", session.ClosedReason);
                Assert.Equal(1, session.Channel!.ResumeAttempts);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task PausedBeforeTheHandshake_TheReplyStillGoesOut_AndTheTunnelWorks()
        {
            // pause_publication arrives before the agent's HandshakeRequest: the request (stream data) ends the pause, as it
            // does for the agent, so the reply is never held behind it.
            _f.Host.Agent.Options.PausePublicationOnConnect = true;
            PortForwardingSession? session = null;
            try
            {
                session = await StartAsync(new DataChannelOptions { PauseTimeout = TimeSpan.FromMinutes(10) });
                Assert.True(session.Channel!.PausesReceived >= 1, "the sandbox sent no pause");
                await using var conn = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await conn.OpenAsync();
                Assert.Equal(3, await ScalarAsync(conn, "select 3"));
            }
            finally
            {
                _f.Host.Agent.Options.PausePublicationOnConnect = false;
                if (session != null) await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task FarAheadSequenceNumbers_AreIgnored_AndTheTunnelGoesOn()
        {
            var session = await StartAsync();
            try
            {
                await using var conn = new NpgsqlConnection(ConnectionString(session.LocalEndPoint!.Port));
                await conn.OpenAsync();
                var sent = await _f.Host.Agent.InjectFarAheadAsync(session.SessionId!, 20_000);
                Assert.Equal(20_000, sent);
                await Until(() => session.Channel!.IgnoredBeyondWindow >= 20_000, "all far-ahead messages seen");
                Assert.Equal(0, session.DataChannel!.ReorderBufferCount);
                Assert.Equal(7, await ScalarAsync(conn, "select 7"));
                Assert.Equal(SessionState.Connected, session.State);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task AnEndlessFragmentedMessage_EndsTheSessionWithAClearError_WithBoundedMemory()
        {
            var session = await StartAsync();
            try
            {
                var before = GC.GetTotalMemory(forceFullCollection: true);
                var injection = _f.Host.Agent.InjectEndlessFragmentsAsync(session.SessionId!, 64L * 1024 * 1024);
                var done = await Task.WhenAny(session.Completion, Task.Delay(TimeSpan.FromSeconds(60)));
                Assert.Same(session.Completion, done);
                Assert.Equal(SessionState.Failed, session.State);
                Assert.Equal(ErrorIds.BastionSessionFailed, session.ClosedErrorId);
                Assert.Contains("larger than the 1024 KiB", session.ClosedReason);
                // The service side cannot finish sending: the client stopped reading and dropped the connection at the bound.
                long sent = -1;
                try
                {
                    sent = await injection;
                }
                catch (Exception ex) when (ex is IOException || ex is OperationCanceledException || ex is System.Net.WebSockets.WebSocketException)
                {
                    _output.WriteLine("the service side's send failed: " + ex.Message);
                }
                Assert.True(sent < 64L * 1024 * 1024, "the whole 64 MiB message was taken");
                var after = GC.GetTotalMemory(forceFullCollection: true);
                Assert.True(after - before < 32L * 1024 * 1024, $"the managed heap grew by {(after - before) / 1048576} MiB");
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task AHugeSmuxFrame_ForAConnection_IsHeldWithinItsBound_AndTheOthersGoOn()
        {
            _f.Host.Agent.Options.OutputReadPause = TimeSpan.Zero;
            var session = await StartAsync(new DataChannelOptions { ConnectionQueues = new ConnectionQueuePolicy { ConnectionBytes = 256 * 1024, SessionBytes = 1024 * 1024 } });
            try
            {
                var port = session.LocalEndPoint!.Port;
                // A raw local client that never reads: stream 3.
                using var victim = new TcpClient();
                victim.ReceiveBufferSize = 4096;
                await victim.ConnectAsync(IPAddress.Loopback, port);
                await Until(() => session.Connections.Opened >= 1, "stream 3 open");
                await using var conn = new NpgsqlConnection(ConnectionString(port));
                await conn.OpenAsync();
                // The "agent" sends 65,535-byte frames for stream 3 (and one for a stream that never existed).
                await _f.Host.Agent.InjectSmuxPshAsync(session.SessionId!, 99, 65535);
                // More than the kernel's socket buffers can absorb (loopback autotuning reaches several MiB): up to 32 MiB,
                // until the victim is reset.
                for (var i = 0; i < 512 && session.Connections.Reset == 0; i++) await _f.Host.Agent.InjectSmuxPshAsync(session.SessionId!, 3, 65535);
                await Until(() => session.Connections.Reset >= 1, "the victim reset");
                Assert.True(session.Connections.QueuedBytesPeak <= 1024 * 1024 + 65535 + 64 * 1024, $"peak {session.Connections.QueuedBytesPeak}");
                Assert.True(session.Connections.BytesDropped >= 65535, "the frame for an unknown stream was not dropped");
                Assert.Equal(9, await ScalarAsync(conn, "select 9"));
                Assert.Equal(SessionState.Connected, session.State);
            }
            finally
            {
                await session.StopAsync();
            }
        }
    }
}
