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
    internal sealed class BufferedReadStream : WrappingStream
    {
        public const int Capacity = 4096;
        private readonly byte[] _buffer;
        private int _start;
        private int _end;

        /// <param name="inner">The socket's stream.</param>
        /// <param name="buffered">Bytes already read from it (past an HTTP upgrade request): they are read first.</param>
        public BufferedReadStream(Stream inner, ReadOnlySpan<byte> buffered = default)
            : base(inner)
        {
            _buffer = new byte[Math.Max(Capacity, buffered.Length)];
            buffered.CopyTo(_buffer);
            _end = buffered.Length;
        }

        /// <summary>Bytes read from the socket and not yet taken by the reader.</summary>
        public int Buffered => _end - _start;

        public override int Read(Span<byte> destination)
        {
            if (_start < _end) return Take(destination);
            if (destination.Length == 0 || destination.Length >= Capacity) return Inner.Read(destination);
            Filled(Inner.Read(_buffer, 0, Capacity));
            return Take(destination);
        }

        public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
        {
            if (_start < _end) return new ValueTask<int>(Take(destination.Span));
            if (destination.Length == 0 || destination.Length >= Capacity) return Inner.ReadAsync(destination, cancellationToken);
            return FillAndTakeAsync(destination, cancellationToken);
        }

        private async ValueTask<int> FillAndTakeAsync(Memory<byte> destination, CancellationToken cancellationToken)
        {
            Filled(await Inner.ReadAsync(_buffer.AsMemory(0, Capacity), cancellationToken).ConfigureAwait(false));
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
    }
}
