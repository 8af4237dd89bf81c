using System;
using System.IO;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The stream under an agent WebSocket: reads pass through; writes pass through too, except while
    /// <see cref="Batching"/> is on, when they are gathered (up to <see cref="Capacity"/> bytes) and go out with the next
    /// write made with it off, in one write to the socket. The connection's writer turns it on only for a frame that has
    /// another queued behind it, so nothing waits: the bytes, their order and the WebSocket framing are unchanged, only
    /// the number of socket writes (system calls) falls when several frames are ready.
    /// <para>
    /// Every write comes from the WebSocket under its own send lock, one at a time (data, close and control frames alike);
    /// a control frame written while batching is on joins the batch, which the writer completes at once.
    /// </para>
    /// </summary>
    internal sealed class WriteBatchingStream : WrappingStream
    {
        public const int Capacity = 64 * 1024;
        private byte[]? _buffer;
        private int _count;
        private volatile bool _batching;

        public WriteBatchingStream(Stream inner)
            : base(inner)
        {
        }

        /// <summary>While on, writes are gathered; the first write with it off sends them and itself together.</summary>
        public bool Batching
        {
            get => _batching;
            set => _batching = value;
        }

        /// <summary>Bytes gathered and not yet written.</summary>
        public int Buffered => Volatile.Read(ref _count);

        public override void Write(ReadOnlySpan<byte> buffer) => WriteAsync(buffer.ToArray()).AsTask().GetAwaiter().GetResult();

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
        {
            if (_count == 0 && !_batching) return Inner.WriteAsync(data, cancellationToken);
            if (_count + data.Length <= Capacity)
            {
                data.Span.CopyTo((_buffer ??= new byte[Capacity]).AsSpan(_count));
                _count += data.Length;
                return _batching ? default : WriteBufferAsync(cancellationToken);
            }
            return FlushThenWriteAsync(data, cancellationToken);
        }

        private async ValueTask FlushThenWriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
        {
            await WriteBufferAsync(cancellationToken).ConfigureAwait(false);
            await WriteAsync(data, cancellationToken).ConfigureAwait(false);
        }

        private ValueTask WriteBufferAsync(CancellationToken cancellationToken)
        {
            var count = _count;
            _count = 0;
            return count == 0 ? default : Inner.WriteAsync(_buffer.AsMemory(0, count), cancellationToken);
        }

        public override void Flush() => FlushAsync(CancellationToken.None).GetAwaiter().GetResult();

        /// <summary>
        /// The WebSocket flushes after every frame it writes: while batching that is not yet the end of the batch, so
        /// only the inner stream is flushed (a no-op for a socket); otherwise what was gathered is written first.
        /// </summary>
        public override async Task FlushAsync(CancellationToken cancellationToken)
        {
            if (!_batching) await WriteBufferAsync(cancellationToken).ConfigureAwait(false);
            await Inner.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }
}
