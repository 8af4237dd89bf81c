using System;
using System.IO;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The read side of the agent's WebSocket connection: reads go through a buffer of <see cref="Capacity"/> bytes, as
    /// the agent's gorilla/websocket connection reads through a <c>bufio.Reader</c> of its default 4096 bytes
    /// (websocketutil.go dials with <c>websocket.DefaultDialer</c>, no buffer sizes; conn.go <c>defaultReadBufferSize</c>).
    /// Without it, .NET's WebSocket reads a frame's header and then its payload with a system call each: two or more per
    /// message, where the agent takes every frame that arrived together with one. Writes pass through.
    /// <para>
    /// A read asking for at least <see cref="Capacity"/> bytes with nothing buffered goes straight to the socket (as
    /// <c>bufio.Reader.Read</c> does); a zero-byte read (a wait for data) returns at once when bytes are buffered.
    /// One reader at a time, as a WebSocket reads.
    /// </para>
    /// </summary>
    internal sealed class BufferedReadStream : Stream
    {
        public const int Capacity = 4096;
        private readonly Stream _inner;
        private readonly byte[] _buffer = new byte[Capacity];
        private int _start;
        private int _end;

        public BufferedReadStream(Stream inner) => _inner = inner;

        /// <summary>Bytes read from the socket and not yet taken by the reader.</summary>
        public int Buffered => _end - _start;

        public override bool CanRead => _inner.CanRead;
        public override bool CanSeek => false;
        public override bool CanWrite => _inner.CanWrite;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> destination)
        {
            if (_start < _end) return Take(destination);
            if (destination.Length == 0 || destination.Length >= Capacity) return _inner.Read(destination);
            Filled(_inner.Read(_buffer, 0, Capacity));
            return Take(destination);
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
        {
            if (_start < _end) return new ValueTask<int>(Take(destination.Span));
            if (destination.Length == 0 || destination.Length >= Capacity) return _inner.ReadAsync(destination, cancellationToken);
            return FillAndTakeAsync(destination, cancellationToken);
        }

        private async ValueTask<int> FillAndTakeAsync(Memory<byte> destination, CancellationToken cancellationToken)
        {
            Filled(await _inner.ReadAsync(_buffer.AsMemory(), cancellationToken).ConfigureAwait(false));
            return Take(destination.Span);
        }

        private void Filled(int count)
        {
            _start = 0;
            _end = count;
        }

        private int Take(Span<byte> destination)
        {
            var n = Math.Min(destination.Length, _end - _start);
            _buffer.AsSpan(_start, n).CopyTo(destination);
            _start += n;
            return n;
        }

        public override void Write(byte[] buffer, int offset, int count) => _inner.Write(buffer, offset, count);
        public override void Write(ReadOnlySpan<byte> buffer) => _inner.Write(buffer);
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => _inner.WriteAsync(buffer, offset, count, cancellationToken);
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => _inner.WriteAsync(buffer, cancellationToken);
        public override void Flush() => _inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => _inner.FlushAsync(cancellationToken);

        protected override void Dispose(bool disposing)
        {
            if (disposing) _inner.Dispose();
            base.Dispose(disposing);
        }

        public override ValueTask DisposeAsync() => _inner.DisposeAsync();
    }
}
