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
    /// The stream under the agent double's WebSocket gathers frames the connection writer has ready together into one
    /// socket write; the bytes and their order never change.
    /// </summary>
    public class WriteBatchingStreamTests
    {
        /// <summary>Records each write as it reaches the "socket" (the batching stream writes with WriteAsync only).</summary>
        private sealed class RecordingStream : MemoryStream
        {
            public List<byte[]> Writes { get; } = new();

            public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
            {
                Writes.Add(buffer.ToArray());
                return base.WriteAsync(buffer, cancellationToken);
            }
        }

        private static byte[] Bytes(int length, byte seed) => Enumerable.Range(0, length).Select(i => (byte)(seed + i)).ToArray();

        [Fact]
        public async Task WithoutBatchingEveryWriteGoesThroughAtOnce()
        {
            var inner = new RecordingStream();
            var stream = new WriteBatchingStream(inner);

            await stream.WriteAsync(Bytes(10, 1));
            await stream.WriteAsync(Bytes(20, 2));

            Assert.Equal(2, inner.Writes.Count);
            Assert.Equal(Bytes(10, 1).Concat(Bytes(20, 2)), inner.ToArray());
            Assert.Equal(0, stream.Buffered);
        }

        [Fact]
        public async Task WhileBatchingWritesWaitForTheNextWriteWithoutAndGoOutWithItInOneWrite()
        {
            var inner = new RecordingStream();
            var stream = new WriteBatchingStream(inner) { Batching = true };

            await stream.WriteAsync(Bytes(10, 1));
            await stream.WriteAsync(Bytes(20, 2));
            Assert.Empty(inner.Writes);
            Assert.Equal(30, stream.Buffered);

            stream.Batching = false;
            await stream.WriteAsync(Bytes(5, 3));

            var write = Assert.Single(inner.Writes);
            Assert.Equal(Bytes(10, 1).Concat(Bytes(20, 2)).Concat(Bytes(5, 3)), write);
            Assert.Equal(0, stream.Buffered);
        }

        [Fact]
        public async Task AFullBatchIsWrittenBeforeTheWriteThatWouldOverflowIt()
        {
            var inner = new RecordingStream();
            var stream = new WriteBatchingStream(inner) { Batching = true };
            var first = Bytes(WriteBatchingStream.Capacity - 100, 7);
            var second = Bytes(200, 9);

            await stream.WriteAsync(first);
            await stream.WriteAsync(second);

            Assert.Equal(first, Assert.Single(inner.Writes));
            Assert.Equal(200, stream.Buffered);
            stream.Batching = false;
            await stream.WriteAsync(Bytes(1, 0));
            Assert.Equal(first.Concat(second).Concat(Bytes(1, 0)), inner.ToArray());
        }

        [Fact]
        public async Task AWriteLargerThanTheBatchGoesOnItsOwnAfterWhatWasGathered()
        {
            var inner = new RecordingStream();
            var stream = new WriteBatchingStream(inner) { Batching = true };
            var big = Bytes(WriteBatchingStream.Capacity + 1, 5);

            await stream.WriteAsync(Bytes(3, 1));
            stream.Batching = false;
            await stream.WriteAsync(big);

            Assert.Equal(2, inner.Writes.Count);
            Assert.Equal(Bytes(3, 1), inner.Writes[0]);
            Assert.Equal(big, inner.Writes[1]);
        }

        [Fact]
        public async Task WebSocketMessagesWrittenInABatchArriveWholeAndInOrder()
        {
            // A real server WebSocket over the batching stream, read by a real client WebSocket.
            var wire = new RecordingStream();
            var batching = new WriteBatchingStream(wire);
            using var server = WebSocket.CreateFromStream(batching, new WebSocketCreationOptions { IsServer = true, KeepAliveInterval = TimeSpan.Zero });
            var messages = Enumerable.Range(0, 20).Select(i => Bytes(100 + i * 50, (byte)i)).ToList();
            for (var i = 0; i < messages.Count; i++)
            {
                batching.Batching = i < messages.Count - 1;
                await server.SendAsync(messages[i], WebSocketMessageType.Binary, true, CancellationToken.None);
            }

            Assert.Single(wire.Writes);
            wire.Position = 0;
            using var client = WebSocket.CreateFromStream(wire, new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
            var buffer = new byte[4096];
            foreach (var expected in messages)
            {
                var result = await client.ReceiveAsync(buffer, CancellationToken.None);
                Assert.True(result.EndOfMessage);
                Assert.Equal(WebSocketMessageType.Binary, result.MessageType);
                Assert.Equal(expected, buffer.AsSpan(0, result.Count).ToArray());
            }
        }
    }
}
