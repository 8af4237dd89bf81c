using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>How the agent carries TCP connections for a port session.</summary>
    public enum PortForwardingMode
    {
        /// <summary>Not known yet (before the handshake).</summary>
        Unknown = 0,

        /// <summary>smux v1 streams, one per local connection, all at once (agents newer than 3.0.196.0).</summary>
        Multiplexed = 1,

        /// <summary>One connection at a time (older agents).</summary>
        Basic = 2,
    }

    /// <summary>Counters of local connections through a port session.</summary>
    internal sealed class ConnectionStatistics
    {
        private long _opened;
        private long _active;
        private long _failed;
        private long _reset;
        private long _bytesIn;
        private long _bytesOut;
        private long _queued;
        private long _queuedPeak;
        private long _dropped;

        public long Opened => Interlocked.Read(ref _opened);
        public long Active => Interlocked.Read(ref _active);
        public long Failed => Interlocked.Read(ref _failed);

        /// <summary>Connections reset because their client did not read what arrived for them (the queue bound was reached).</summary>
        public long Reset => Interlocked.Read(ref _reset);

        /// <summary>Bytes from the remote destination to local clients.</summary>
        public long BytesIn => Interlocked.Read(ref _bytesIn);

        /// <summary>Bytes from local clients to the remote destination.</summary>
        public long BytesOut => Interlocked.Read(ref _bytesOut);

        /// <summary>Bytes received for local connections and not yet taken by their clients, now (all connections).</summary>
        public long QueuedBytes => Interlocked.Read(ref _queued);

        /// <summary>The most <see cref="QueuedBytes"/> ever was.</summary>
        public long QueuedBytesPeak => Interlocked.Read(ref _queuedPeak);

        /// <summary>Bytes from the agent for connections that had already ended (released at once).</summary>
        public long BytesDropped => Interlocked.Read(ref _dropped);

        internal void Open()
        {
            Interlocked.Increment(ref _opened);
            Interlocked.Increment(ref _active);
        }

        internal void Close() => Interlocked.Decrement(ref _active);
        internal void Fail() => Interlocked.Increment(ref _failed);
        internal void ResetOne() => Interlocked.Increment(ref _reset);
        internal void In(int n) => Interlocked.Add(ref _bytesIn, n);
        internal void Out(int n) => Interlocked.Add(ref _bytesOut, n);
        internal void Dropped(int n) => Interlocked.Add(ref _dropped, n);

        internal void Queue(long delta)
        {
            var now = Interlocked.Add(ref _queued, delta);
            var peak = Interlocked.Read(ref _queuedPeak);
            while (now > peak)
            {
                var seen = Interlocked.CompareExchange(ref _queuedPeak, now, peak);
                if (seen == peak) break;
                peak = seen;
            }
        }
    }

    /// <summary>The part of a port session that moves local TCP connections over the data channel.</summary>
    internal interface IPortForwarder : System.IDisposable
    {
        PortForwardingMode Mode { get; }

        /// <summary>Serves one accepted local connection until it ends.</summary>
        Task HandleConnectionAsync(TcpClient client, CancellationToken cancellationToken);

        /// <summary>
        /// An Output payload from the agent, in order: <paramref name="count"/> bytes of <paramref name="buffer"/>, which
        /// are the caller's again when this returns (often the WebSocket's receive buffer): whatever is kept is copied.
        /// Called on the data channel's receive loop: it must not block (data is queued for its connection; a connection
        /// whose queue is full is reset).
        /// </summary>
        void OnOutput(byte[] buffer, int offset, int count);

        /// <summary>
        /// The end of a run of messages the data channel read together (called on its receive loop after their
        /// Output): a forwarder that holds output during a run writes it now.
        /// </summary>
        void WriteHeldOutput();

        /// <summary>A Flag from the agent.</summary>
        void OnFlag(PayloadTypeFlag flag);
    }

    internal static class PortForwarderExtensions
    {
        /// <summary>A whole Output payload (see <see cref="IPortForwarder.OnOutput(byte[], int, int)"/>).</summary>
        public static void OnOutput(this IPortForwarder forwarder, byte[] payload) => forwarder.OnOutput(payload, 0, payload.Length);
    }

    /// <summary>Sends bytes to the agent (the data channel, or a test double).</summary>
    internal interface IStreamSender
    {
        Task SendAsync(PayloadType payloadType, byte[] payload, int offset, int count, CancellationToken cancellationToken);

        Task SendFlagAsync(PayloadTypeFlag flag, CancellationToken cancellationToken);
    }

    internal sealed class DataChannelSender : IStreamSender
    {
        private readonly DataChannel _channel;

        public DataChannelSender(DataChannel channel) => _channel = channel;

        public Task SendAsync(PayloadType payloadType, byte[] payload, int offset, int count, CancellationToken cancellationToken)
            => _channel.SendAsync(payloadType, payload, offset, count, cancellationToken);

        public Task SendFlagAsync(PayloadTypeFlag flag, CancellationToken cancellationToken) => _channel.SendFlagAsync(flag, cancellationToken);
    }
}
