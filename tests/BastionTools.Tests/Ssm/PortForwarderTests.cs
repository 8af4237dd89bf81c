using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The forwarders with real local sockets and a recording sender in place of the data channel: a client that does
    /// not read is reset alone, what was queued for it is released, the others go on, and OnOutput never waits.
    /// </summary>
    public sealed class PortForwarderTests
    {
        private sealed class RecordingSender : IStreamSender
        {
            private readonly SmuxDecoder _decoder = new();

            public ConcurrentQueue<SmuxFrame> Frames { get; } = new();
            public ConcurrentQueue<PayloadTypeFlag> Flags { get; } = new();
            public ConcurrentQueue<byte[]> Raw { get; } = new();
            public bool Mux { get; set; } = true;

            public Task SendAsync(PayloadType payloadType, byte[] payload, int offset, int count, CancellationToken cancellationToken)
            {
                var copy = new byte[count];
                Buffer.BlockCopy(payload, offset, copy, 0, count);
                if (!Mux)
                {
                    Raw.Enqueue(copy);
                    return Task.CompletedTask;
                }
                lock (_decoder)
                {
                    foreach (var f in _decoder.Feed(copy)) Frames.Enqueue(f);
                }
                return Task.CompletedTask;
            }

            public Task SendFlagAsync(PayloadTypeFlag flag, CancellationToken cancellationToken)
            {
                Flags.Enqueue(flag);
                return Task.CompletedTask;
            }
        }

        private static async Task Until(Func<bool> condition, string what, int timeoutMs = 30_000)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!condition())
            {
                if (clock.ElapsedMilliseconds > timeoutMs) throw new TimeoutException("Timed out waiting for: " + what);
                await Task.Delay(10);
            }
        }

        private static byte[] Psh(uint stream, int length, byte fill)
        {
            var frame = new byte[SmuxCodec.HeaderLength + length];
            SmuxCodec.WriteHeader(frame, 0, SmuxCommand.Psh, stream, length);
            frame.AsSpan(SmuxCodec.HeaderLength).Fill(fill);
            return frame;
        }

        private static byte[] Fin(uint stream)
        {
            var frame = new byte[SmuxCodec.HeaderLength];
            SmuxCodec.WriteHeader(frame, 0, SmuxCommand.Fin, stream, 0);
            return frame;
        }

        /// <summary>A loopback pair: the client end (the local application) and the accepted end (what the forwarder serves).</summary>
        private static async Task<(TcpClient App, TcpClient Served)> PairAsync(TcpListener listener, bool tinyBuffers)
        {
            var app = new TcpClient();
            if (tinyBuffers) app.ReceiveBufferSize = 4096;
            var accept = listener.AcceptTcpClientAsync();
            await app.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port);
            var served = await accept;
            if (tinyBuffers) served.SendBufferSize = 4096;
            return (app, served);
        }

        [Fact(Timeout = 120_000)]
        public async Task Mux_AClientThatStopsReading_IsResetAlone_AndTheOthersGoOn()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var sender = new RecordingSender();
            var stats = new ConnectionStatistics();
            var log = new ConcurrentQueue<string>();
            const int limit = 256 * 1024;
            var policy = new ConnectionQueuePolicy { ConnectionBytes = limit, SessionBytes = 4 * limit, StallTime = TimeSpan.FromMilliseconds(200) };
            using var forwarder = new MuxPortForwarder(sender, stats, log.Enqueue, policy);

            var (stalledApp, stalledServed) = await PairAsync(listener, tinyBuffers: true);
            var stalledTask = forwarder.HandleConnectionAsync(stalledServed, CancellationToken.None);
            await Until(() => sender.Frames.Count(f => f.Command == SmuxCommand.Syn) == 1, "SYN of the first connection");
            var (liveApp, liveServed) = await PairAsync(listener, tinyBuffers: false);
            var liveTask = forwarder.HandleConnectionAsync(liveServed, CancellationToken.None);
            await Until(() => sender.Frames.Count(f => f.Command == SmuxCommand.Syn) == 2, "SYN of the second connection");
            var ids = sender.Frames.Where(f => f.Command == SmuxCommand.Syn).Select(f => f.StreamId).ToList();
            uint stalled = ids[0], live = ids[1];
            Assert.Equal(new uint[] { 3, 5 }, ids);

            // The agent pours data for the stalled connection, interleaved with data for the live one.
            var liveReceived = 0L;
            var liveReader = Task.Run(async () =>
            {
                var buffer = new byte[64 * 1024];
                var s = liveApp.GetStream();
                int n;
                while ((n = await s.ReadAsync(buffer)) > 0) Interlocked.Add(ref liveReceived, n);
            });
            long fed = 0;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (stats.Reset == 0)
            {
                forwarder.OnOutput(Psh(stalled, 16 * 1024, 0xAA));
                forwarder.OnOutput(Psh(live, 1024, 0x55));
                fed += 16 * 1024;
                Assert.True(fed < 64L * 1024 * 1024, "64 MiB were fed and the stalled connection was never reset");
                if (fed % (1024 * 1024) == 0) await Task.Delay(1); // let the live reader and the pumps run
            }
            var peak = stats.QueuedBytesPeak;
            // What the forwarder held never passed the session bound (the stalled connection may pass its own bound for the
            // stall time, not more).
            Assert.True(peak <= policy.SessionBytes + 2 * 16 * 1024, $"peak queued {peak} bytes");
            // The stalled connection was reset (RST), and the agent was told (FIN for its stream).
            await Until(() => sender.Frames.Any(f => f.Command == SmuxCommand.Fin && f.StreamId == stalled), "FIN for the reset stream");
            Assert.Contains(log, l => l.Contains($"Connection {stalled} (from ") && l.Contains("was reset"));
            var reset = await Assert.ThrowsAnyAsync<Exception>(async () =>
            {
                var buffer = new byte[64 * 1024];
                var s = stalledApp.GetStream();
                while (true)
                {
                    if (await s.ReadAsync(buffer) == 0) throw new EndOfStreamException("clean EOF instead of a reset");
                }
            });
            Assert.True(reset is IOException || reset is SocketException, reset.ToString());
            Assert.IsNotType<EndOfStreamException>(reset);
            await stalledTask;

            // More data for the dead stream is released at once; the live one goes on, to the last byte.
            var droppedBefore = stats.BytesDropped;
            for (var i = 0; i < 100; i++) forwarder.OnOutput(Psh(stalled, 16 * 1024, 0xAA));
            Assert.Equal(droppedBefore + 100 * 16 * 1024, stats.BytesDropped);
            var liveSent = fed / 16;
            forwarder.OnOutput(Psh(live, 1024, 0x55));
            liveSent += 1024;
            await Until(() => Interlocked.Read(ref liveReceived) == liveSent, "all data of the live connection");
            Assert.Equal(1, stats.Reset);
            forwarder.OnOutput(Fin(live));
            await liveReader;
            liveApp.Dispose();
            await liveTask;
            Assert.Equal(0, stats.QueuedBytes);
            Assert.Equal(0, stats.Active);
        }

        [Fact(Timeout = 120_000)]
        public async Task Mux_ASlowReaderThatKeepsReading_IsNotReset_PastTheConnectionBound()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var sender = new RecordingSender();
            var stats = new ConnectionStatistics();
            const int limit = 64 * 1024;
            // The stall time is long enough for any scheduler: what is tested is that reading resets the clock.
            var policy = new ConnectionQueuePolicy { ConnectionBytes = limit, SessionBytes = 64 * limit, StallTime = TimeSpan.FromSeconds(5) };
            using var forwarder = new MuxPortForwarder(sender, stats, _ => { }, policy);
            var (app, served) = await PairAsync(listener, tinyBuffers: true);
            var task = forwarder.HandleConnectionAsync(served, CancellationToken.None);
            await Until(() => sender.Frames.Any(f => f.Command == SmuxCommand.Syn), "SYN");
            // 1 MiB arrives at once: 16 times the connection bound, within the session bound.
            for (var i = 0; i < 64; i++) forwarder.OnOutput(Psh(3, 16 * 1024, (byte)i));
            Assert.True(stats.QueuedBytesPeak > limit, "the queue never passed the connection bound");
            // The client reads it all, slowly.
            var received = 0L;
            var buffer = new byte[4096];
            var s = app.GetStream();
            while (received < 64 * 16 * 1024)
            {
                var n = await s.ReadAsync(buffer);
                Assert.True(n > 0, "the connection ended");
                received += n;
                if (received % (64 * 1024) < 4096) await Task.Delay(5);
            }
            Assert.Equal(0, stats.Reset);
            forwarder.OnOutput(Fin(3));
            Assert.Equal(0, await s.ReadAsync(buffer));
            app.Dispose();
            await task;
        }

        [Fact(Timeout = 60_000)]
        public async Task Mux_HeldOutput_IsWrittenOncePerConnection_AtTheEndOfTheRun_AndBeforeItsFin()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var sender = new RecordingSender();
            var stats = new ConnectionStatistics();
            using var forwarder = new MuxPortForwarder(sender, stats, _ => { }, holdOutput: true);
            var (appA, servedA) = await PairAsync(listener, tinyBuffers: false);
            var taskA = forwarder.HandleConnectionAsync(servedA, CancellationToken.None);
            await Until(() => sender.Frames.Count(f => f.Command == SmuxCommand.Syn) == 1, "SYN of the first connection");
            var (appB, servedB) = await PairAsync(listener, tinyBuffers: false);
            var taskB = forwarder.HandleConnectionAsync(servedB, CancellationToken.None);
            await Until(() => sender.Frames.Count(f => f.Command == SmuxCommand.Syn) == 2, "SYN of the second connection");

            // A run: three messages for connection 3 and two for connection 5, interleaved. Nothing is written during it.
            forwarder.OnOutput(Psh(3, 1000, 1));
            forwarder.OnOutput(Psh(5, 500, 2));
            forwarder.OnOutput(Psh(3, 1000, 3));
            forwarder.OnOutput(Psh(5, 500, 4));
            forwarder.OnOutput(Psh(3, 1000, 5));
            Assert.Equal(0, forwarder.LocalSends);
            Assert.Equal(0, stats.BytesIn);

            // Its end: one write per connection, each with its bytes in order.
            forwarder.WriteHeldOutput();
            Assert.Equal(2, forwarder.LocalSends);
            Assert.Equal(4000, stats.BytesIn);
            var a = await ReadExactlyAsync(appA, 3000);
            var b = await ReadExactlyAsync(appB, 1000);
            Assert.Equal(Enumerable.Repeat((byte)1, 1000).Concat(Enumerable.Repeat((byte)3, 1000)).Concat(Enumerable.Repeat((byte)5, 1000)), a);
            Assert.Equal(Enumerable.Repeat((byte)2, 500).Concat(Enumerable.Repeat((byte)4, 500)), b);

            // More than a connection's hold room (32 KiB) in one run: what is held is written first, nothing is lost.
            // (A socket that takes only part of a write queues the rest, and the next write waits behind it in the queue:
            // so at most, not exactly, two writes.)
            for (var i = 0; i < 40; i++) forwarder.OnOutput(Psh(5, 1000, (byte)(10 + i)));
            Assert.Equal(3, forwarder.LocalSends);
            forwarder.WriteHeldOutput();
            Assert.InRange(forwarder.LocalSends, 3, 4);
            var more = await ReadExactlyAsync(appB, 40_000);
            for (var i = 0; i < 40; i++) Assert.True(more.AsSpan(i * 1000, 1000).IndexOfAnyExcept((byte)(10 + i)) < 0, $"block {i}");

            // The agent's FIN for a connection with held output: the output goes first, then the end.
            var sends = forwarder.LocalSends;
            forwarder.OnOutput(Psh(3, 700, 9));
            forwarder.OnOutput(Fin(3));
            Assert.Equal(sends + 1, forwarder.LocalSends);
            var last = new MemoryStream();
            await appA.GetStream().CopyToAsync(last);
            Assert.Equal(Enumerable.Repeat((byte)9, 700), last.ToArray());
            forwarder.WriteHeldOutput();
            Assert.Equal(sends + 1, forwarder.LocalSends);
            Assert.Equal(0, stats.BytesDropped);

            forwarder.OnOutput(Fin(5));
            forwarder.WriteHeldOutput();
            appA.Dispose();
            appB.Dispose();
            await Task.WhenAll(taskA, taskB);
        }

        private static async Task<byte[]> ReadExactlyAsync(TcpClient client, int count)
        {
            var buffer = new byte[count];
            var s = client.GetStream();
            for (var read = 0; read < count;)
            {
                var n = await s.ReadAsync(buffer.AsMemory(read));
                Assert.True(n > 0, $"the connection ended after {read} of {count} bytes");
                read += n;
            }
            return buffer;
        }

        [Fact(Timeout = 60_000)]
        public async Task Mux_DataBeforeTheAgentsFin_ArrivesWhole_ThenTheClientSeesEof()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var sender = new RecordingSender();
            var stats = new ConnectionStatistics();
            using var forwarder = new MuxPortForwarder(sender, stats, _ => { });
            var (app, served) = await PairAsync(listener, tinyBuffers: false);
            var task = forwarder.HandleConnectionAsync(served, CancellationToken.None);
            await Until(() => sender.Frames.Any(f => f.Command == SmuxCommand.Syn), "SYN");
            // One byte stream split across messages at odd places: frames span messages.
            var stream = new MemoryStream();
            for (var i = 0; i < 50; i++) stream.Write(Psh(3, 3000, (byte)i));
            stream.Write(Fin(3));
            var bytes = stream.ToArray();
            for (var off = 0; off < bytes.Length; off += 1000) forwarder.OnOutput(bytes.AsSpan(off, Math.Min(1000, bytes.Length - off)).ToArray());
            var received = new MemoryStream();
            await app.GetStream().CopyToAsync(received);
            var got = received.ToArray();
            Assert.Equal(50 * 3000, got.Length);
            for (var i = 0; i < 50; i++) Assert.True(got.AsSpan(i * 3000, 3000).IndexOfAnyExcept((byte)i) < 0);
            app.Dispose();
            await task;
        }

        [Fact(Timeout = 60_000)]
        public async Task Mux_ACorruptStreamFromTheAgent_IsReportedAsFatal()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            string? fatal = null;
            using var forwarder = new MuxPortForwarder(new RecordingSender(), new ConnectionStatistics(), _ => { }, fatal: r => fatal = r);
            var (app, served) = await PairAsync(listener, tinyBuffers: false);
            var task = forwarder.HandleConnectionAsync(served, CancellationToken.None);
            forwarder.OnOutput(new byte[] { 9, 9, 9, 9, 9, 9, 9, 9 });
            Assert.NotNull(fatal);
            Assert.Contains("corrupt", fatal);
            await Assert.ThrowsAnyAsync<Exception>(async () =>
            {
                var buffer = new byte[100];
                if (await app.GetStream().ReadAsync(buffer) == 0) throw new EndOfStreamException();
            });
            await task;
        }

        [Fact(Timeout = 120_000)]
        public async Task Basic_AClientThatStopsReading_IsReset_AndTheAgentIsToldToDisconnect()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var sender = new RecordingSender { Mux = false };
            var stats = new ConnectionStatistics();
            const int limit = 128 * 1024;
            var policy = new ConnectionQueuePolicy { ConnectionBytes = limit, SessionBytes = 4 * limit, StallTime = TimeSpan.FromMilliseconds(200) };
            using var forwarder = new BasicPortForwarder(sender, stats, _ => { }, policy);
            var (app, served) = await PairAsync(listener, tinyBuffers: true);
            var task = forwarder.HandleConnectionAsync(served, CancellationToken.None);
            await Until(() => stats.Active == 1, "the connection's turn");
            long fed = 0;
            while (stats.Reset == 0)
            {
                forwarder.OnOutput(new byte[1024]);
                fed += 1024;
                Assert.True(fed < 64L * 1024 * 1024, "never reset");
                if (fed % (256 * 1024) == 0) await Task.Delay(1);
            }
            Assert.True(stats.QueuedBytesPeak <= policy.SessionBytes, $"peak {stats.QueuedBytesPeak}");
            await Until(() => sender.Flags.Contains(PayloadTypeFlag.DisconnectToPort), "DisconnectToPort");
            await task;
            Assert.Equal(0, stats.QueuedBytes);

            // The next connection is served normally once it has sent its first bytes (the agent dials on them).
            var (next, nextServed) = await PairAsync(listener, tinyBuffers: false);
            var nextTask = forwarder.HandleConnectionAsync(nextServed, CancellationToken.None);
            await Until(() => stats.Active == 1, "the next connection's turn");
            await next.GetStream().WriteAsync(new byte[] { 9 });
            await Until(() => sender.Raw.Count == 1, "the next connection's first bytes");
            forwarder.OnOutput(new byte[] { 1, 2, 3 });
            var buffer = new byte[3];
            var read = 0;
            while (read < 3) read += await next.GetStream().ReadAsync(buffer.AsMemory(read));
            Assert.Equal(new byte[] { 1, 2, 3 }, buffer);
            next.Dispose();
            await nextTask;
            app.Dispose();
        }

        /// <summary>
        /// Basic mode has no connection ids: the agent closes its destination connection on DisconnectToPort, but what it
        /// read before may still arrive, and it dials again only on the next connection's first bytes (port_basic.go). So
        /// output that arrives before the next connection has sent anything is the previous one's: dropped, not written.
        /// </summary>
        [Fact(Timeout = 120_000)]
        public async Task Basic_LateOutputOfAClosedConnection_IsDropped_NotWrittenToTheNextConnection()
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var sender = new RecordingSender { Mux = false };
            var stats = new ConnectionStatistics();
            using var forwarder = new BasicPortForwarder(sender, stats, _ => { });

            var (first, firstServed) = await PairAsync(listener, tinyBuffers: false);
            var firstTask = forwarder.HandleConnectionAsync(firstServed, CancellationToken.None);
            await Until(() => stats.Active == 1, "the first connection's turn");
            await first.GetStream().WriteAsync(Encoding.ASCII.GetBytes("1"));
            await Until(() => sender.Raw.Count == 1, "the first connection's bytes");
            forwarder.OnOutput(Encoding.ASCII.GetBytes("FIRST"));
            var got = new byte[5];
            await first.GetStream().ReadExactlyAsync(got);
            Assert.Equal("FIRST", Encoding.ASCII.GetString(got));
            first.Dispose();
            await Until(() => sender.Flags.Contains(PayloadTypeFlag.DisconnectToPort), "DisconnectToPort");
            await firstTask;

            var (next, nextServed) = await PairAsync(listener, tinyBuffers: false);
            var nextTask = forwarder.HandleConnectionAsync(nextServed, CancellationToken.None);
            await Until(() => stats.Active == 1, "the next connection's turn");
            // The first connection's answer, still on its way when the next connection took its turn.
            var dropped = stats.BytesDropped;
            forwarder.OnOutput(Encoding.ASCII.GetBytes("LATE-FOR-THE-FIRST"));
            Assert.Equal(dropped + 18, stats.BytesDropped);

            await next.GetStream().WriteAsync(Encoding.ASCII.GetBytes("2"));
            await Until(() => sender.Raw.Count == 2, "the next connection's first bytes");
            forwarder.OnOutput(Encoding.ASCII.GetBytes("SECOND"));
            var answer = new byte[6];
            await next.GetStream().ReadExactlyAsync(answer);
            Assert.Equal("SECOND", Encoding.ASCII.GetString(answer));
            Assert.Equal(dropped + 18, stats.BytesDropped);
            next.Dispose();
            await nextTask;
        }
    }
}
