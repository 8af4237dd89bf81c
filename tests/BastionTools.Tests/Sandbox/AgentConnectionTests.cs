using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net.WebSockets;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Sandbox;
using Xunit;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// The agent double's connection writer: whoever queues a frame on an idle connection writes it on its own thread
    /// (no writer task woken per frame); frames leave whole, once each and in the order queued, whoever writes them.
    /// </summary>
    public class AgentConnectionTests
    {
        /// <summary>The "socket": records each write (writes complete at once, as on loopback with room in the buffer).</summary>
        private sealed class RecordingStream : Stream
        {
            private readonly object _gate = new();
            private readonly MemoryStream _bytes = new();
            private int _writes;

            public int Writes
            {
                get { lock (_gate) return _writes; }
            }

            public byte[] Bytes
            {
                get { lock (_gate) return _bytes.ToArray(); }
            }

            public override bool CanRead => true; // CreateFromStream requires it; nothing reads here
            public override bool CanSeek => false;
            public override bool CanWrite => true;
            public override long Length => throw new NotSupportedException();
            public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
            public override void Flush() { }
            // As a socket's NetworkStream: flushing is a no-op that completes at once (Stream's default runs Flush on the thread pool).
            public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
            public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
            public override void SetLength(long value) => throw new NotSupportedException();

            public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

            public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
            {
                lock (_gate)
                {
                    _writes++;
                    _bytes.Write(buffer.Span);
                }
                return default;
            }
        }

        private static (AgentConnection Connection, RecordingStream Wire, SandboxChannelCounters Counters, WebSocket Socket) NewConnection(long capacity = 1024 * 1024)
        {
            var wire = new RecordingStream();
            var batching = new WriteBatchingStream(wire);
            var socket = WebSocket.CreateFromStream(batching, new WebSocketCreationOptions { IsServer = true, KeepAliveInterval = TimeSpan.Zero });
            var counters = new SandboxChannelCounters();
            var connection = new AgentConnection(socket, null, counters, killAfterBytes: 0, number: 1, capacity, batching);
            return (connection, wire, counters, socket);
        }

        private static byte[] Frame(int index, int length = 300)
        {
            var frame = new byte[length];
            BitConverter.TryWriteBytes(frame, index);
            for (var i = 4; i < frame.Length; i++) frame[i] = (byte)(index + i);
            return frame;
        }

        private static async Task<List<byte[]>> ReadMessagesAsync(byte[] wire, int count)
        {
            using var client = WebSocket.CreateFromStream(new MemoryStream(wire), new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
            var messages = new List<byte[]>();
            var buffer = new byte[64 * 1024];
            for (var i = 0; i < count; i++)
            {
                var result = await client.ReceiveAsync(buffer, CancellationToken.None);
                Assert.True(result.EndOfMessage);
                Assert.Equal(WebSocketMessageType.Binary, result.MessageType);
                messages.Add(buffer.AsSpan(0, result.Count).ToArray());
            }
            return messages;
        }

        private static async Task WaitUntilAsync(Func<bool> condition)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            while (!condition())
            {
                await Task.Delay(5, timeout.Token);
            }
        }

        [Fact]
        public async Task AFrameQueuedOnAnIdleConnection_IsWrittenOnTheCallersThreadBeforeEnqueueReturns()
        {
            var (connection, wire, counters, socket) = NewConnection();
            using var _ = socket;

            var queued = connection.EnqueueAsync(Frame(1), duplicate: false, holdBack: false);

            // No writer task to wake: the write (which completes at once here) was made by the call itself.
            Assert.True(queued.IsCompletedSuccessfully);
            Assert.Equal(1, wire.Writes);
            Assert.Equal(1, counters.MessagesSent);
            Assert.Equal(0, connection.QueuedBytes);
            Assert.True(await queued);
        }

        [Fact]
        public async Task FramesLeftToAPooledWriter_AndTheLastWrittenHere_ArriveWholeOnceAndInOrder()
        {
            var (connection, wire, counters, socket) = NewConnection();
            using var _ = socket;
            const int count = 200;

            for (var i = 0; i < count; i++)
            {
                Assert.True(await connection.EnqueueAsync(Frame(i), duplicate: false, holdBack: false, writeHere: i == count - 1));
            }

            await WaitUntilAsync(() => counters.MessagesSent == count);
            var messages = await ReadMessagesAsync(wire.Bytes, count);
            Assert.Equal(Enumerable.Range(0, count).Select(i => Frame(i)), messages);
            Assert.Equal(0, connection.QueuedBytes);
        }

        [Fact]
        public async Task ProducersOnSeveralThreads_WithABoundThatMakesThemWait_GetEveryFrameOutOnceInTheirOwnOrder()
        {
            // A bound of four frames: producers wait for room (first come, first served) while whoever writes drains.
            var (connection, wire, counters, socket) = NewConnection(capacity: 4 * 300);
            using var _ = socket;
            const int producers = 4;
            const int perProducer = 250;

            var tasks = Enumerable.Range(0, producers).Select(p => Task.Run(async () =>
            {
                for (var i = 0; i < perProducer; i++)
                {
                    Assert.True(await connection.EnqueueAsync(Frame(p * 10_000 + i), duplicate: false, holdBack: false, writeHere: i % 3 != 0));
                }
            })).ToArray();
            await Task.WhenAll(tasks);

            await WaitUntilAsync(() => counters.MessagesSent == producers * perProducer);
            var messages = await ReadMessagesAsync(wire.Bytes, producers * perProducer);
            var ids = messages.Select(m => BitConverter.ToInt32(m, 0)).ToList();
            for (var p = 0; p < producers; p++)
            {
                var own = ids.Where(id => id / 10_000 == p).ToList();
                Assert.Equal(Enumerable.Range(0, perProducer).Select(i => p * 10_000 + i), own);
            }
            Assert.All(messages, m => Assert.Equal(Frame(BitConverter.ToInt32(m, 0)), m));
            Assert.Equal(0, connection.QueuedBytes);
            Assert.True(counters.SendWaits > 0);
        }

        [Fact]
        public async Task AnAbortWhileNothingIsBeingWritten_FinishesTheWriter_AndLaterFramesAreRefused()
        {
            var (connection, _, _, socket) = NewConnection();
            using var __ = socket;
            Assert.True(await connection.EnqueueAsync(Frame(1), duplicate: false, holdBack: false));
            Assert.False(connection.Writer.IsCompleted);

            connection.Abort(isKill: false);

            await connection.Writer.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.False(await connection.EnqueueAsync(Frame(2), duplicate: false, holdBack: false));
        }
    }
}
