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
    /// The agent double reads its WebSocket through a 4 KiB buffer, as the agent's gorilla connection does: frames that
    /// arrived together cost one socket read, and the bytes the WebSocket gets never change.
    /// </summary>
    public class BufferedReadStreamTests
    {
        /// <summary>A "socket" holding bytes that have all arrived: each read returns what was asked, up to what is left.</summary>
        private sealed class CountingStream : Stream
        {
            private readonly byte[] _bytes;
            private int _position;

            public CountingStream(byte[] bytes) => _bytes = bytes;

            public List<int> Reads { get; } = new();

            public override int Read(Span<byte> buffer)
            {
                Reads.Add(buffer.Length);
                var n = Math.Min(buffer.Length, _bytes.Length - _position);
                _bytes.AsSpan(_position, n).CopyTo(buffer);
                _position += n;
                return n;
            }

            public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
            public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => new(Read(buffer.Span));
            public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => Task.FromResult(Read(buffer.AsSpan(offset, count)));
            public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
            public override void Flush() { }
            public override bool CanRead => true;
            public override bool CanSeek => false;
            public override bool CanWrite => true;
            public override long Length => throw new NotSupportedException();
            public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
            public override void SetLength(long value) => throw new NotSupportedException();
        }

        private static byte[] Bytes(int length, int seed)
        {
            var random = new Random(seed);
            var bytes = new byte[length];
            random.NextBytes(bytes);
            return bytes;
        }

        /// <summary>What a client WebSocket writes for these messages (masked frames, as a client sends).</summary>
        private static async Task<byte[]> ClientFramesAsync(IReadOnlyList<byte[]> messages)
        {
            var wire = new MemoryStream();
            using var client = WebSocket.CreateFromStream(wire, new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
            foreach (var message in messages) await client.SendAsync(message, WebSocketMessageType.Binary, true, CancellationToken.None);
            return wire.ToArray();
        }

        private static async Task<List<byte[]>> ServerReceivesAsync(Stream stream, int count)
        {
            using var server = WebSocket.CreateFromStream(stream, new WebSocketCreationOptions { IsServer = true, KeepAliveInterval = TimeSpan.Zero });
            var received = new List<byte[]>();
            var buffer = new byte[65536];
            for (var i = 0; i < count; i++)
            {
                var result = await server.ReceiveAsync(buffer, CancellationToken.None);
                Assert.True(result.EndOfMessage);
                received.Add(buffer.AsSpan(0, result.Count).ToArray());
            }
            return received;
        }

        [Fact]
        public async Task FramesThatArrivedTogether_AreReadWithOneSocketReadPerBufferful_Whole_AndInOrder()
        {
            // Acknowledgement-sized messages (an acknowledge frame is about 200 bytes), 40 of them: about 8.5 KB.
            var messages = Enumerable.Range(0, 40).Select(i => Bytes(180 + i, i)).ToList();
            var wire = await ClientFramesAsync(messages);

            var unbuffered = new CountingStream(wire);
            Assert.Equal(messages, await ServerReceivesAsync(unbuffered, messages.Count));

            var socket = new CountingStream(wire);
            var buffered = new BufferedReadStream(socket);
            Assert.Equal(messages, await ServerReceivesAsync(buffered, messages.Count));

            // The WebSocket alone reads each frame's header and then its payload: at least two reads a message.
            Assert.True(unbuffered.Reads.Count >= 2 * messages.Count, $"{unbuffered.Reads.Count} reads without the buffer");
            // Through the buffer: every read asks for a bufferful, and there are only as many as the bytes need.
            Assert.All(socket.Reads, n => Assert.Equal(BufferedReadStream.Capacity, n));
            Assert.True(socket.Reads.Count <= wire.Length / BufferedReadStream.Capacity + 1, $"{socket.Reads.Count} reads of {wire.Length} bytes through the buffer");
            Assert.Equal(0, buffered.Buffered);
        }

        [Fact]
        public async Task AReadOfAtLeastTheCapacity_WithNothingBuffered_GoesStraightToTheSocket()
        {
            var bytes = Bytes(10_000, 1);
            var socket = new CountingStream(bytes);
            var stream = new BufferedReadStream(socket);
            var destination = new byte[6000];

            var n = await stream.ReadAsync(destination.AsMemory());

            Assert.Equal(6000, n);
            Assert.Equal(new[] { 6000 }, socket.Reads);
            Assert.Equal(0, stream.Buffered);
            Assert.Equal(bytes.Take(6000), destination);
        }

        [Fact]
        public async Task AZeroByteRead_ReturnsAtOnceWhenBytesAreBuffered_AndKeepsThem()
        {
            var bytes = Bytes(100, 2);
            var socket = new CountingStream(bytes);
            var stream = new BufferedReadStream(socket);
            var first = new byte[10];
            Assert.Equal(10, await stream.ReadAsync(first.AsMemory()));
            Assert.Equal(90, stream.Buffered);

            Assert.Equal(0, await stream.ReadAsync(Memory<byte>.Empty));

            Assert.Single(socket.Reads);
            Assert.Equal(90, stream.Buffered);
            var rest = new byte[200];
            Assert.Equal(90, await stream.ReadAsync(rest.AsMemory()));
            Assert.Equal(bytes, first.Concat(rest.Take(90)));
        }

        [Theory]
        [InlineData(100)]
        [InlineData(BufferedReadStream.Capacity + 500)]
        public async Task BytesAlreadyRead_AreReadFirst_ThenTheSocketsOwn(int already)
        {
            var earlier = Bytes(already, 5);
            var later = Bytes(3000, 6);
            var socket = new CountingStream(later);
            var stream = new BufferedReadStream(socket, earlier);
            Assert.Equal(already, stream.Buffered);

            var got = new MemoryStream();
            var buffer = new byte[700];
            int n;
            while ((n = await stream.ReadAsync(buffer.AsMemory())) > 0) got.Write(buffer, 0, n);

            Assert.Equal(earlier.Concat(later), got.ToArray());
        }

        [Theory]
        [InlineData(true)]
        [InlineData(false)]
        public async Task ReadsOfAnySize_GiveTheSameBytesInOrder_ThenEndOfStream(bool asynchronous)
        {
            var bytes = Bytes(100_000, 3);
            var stream = new BufferedReadStream(new CountingStream(bytes));
            var random = new Random(4);
            var got = new MemoryStream();
            var buffer = new byte[9000];
            while (true)
            {
                var size = random.Next(1, buffer.Length);
                var n = asynchronous ? await stream.ReadAsync(buffer.AsMemory(0, size)) : stream.Read(buffer, 0, size);
                if (n == 0) break;
                Assert.InRange(n, 1, size);
                got.Write(buffer, 0, n);
            }

            Assert.Equal(bytes, got.ToArray());
            Assert.Equal(0, asynchronous ? await stream.ReadAsync(buffer.AsMemory(0, 10)) : stream.Read(buffer, 0, 10));
        }
    }
}
