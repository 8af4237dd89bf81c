using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Channels;
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
        private long _bytesIn;
        private long _bytesOut;

        public long Opened => Interlocked.Read(ref _opened);
        public long Active => Interlocked.Read(ref _active);
        public long Failed => Interlocked.Read(ref _failed);

        /// <summary>Bytes from the remote destination to local clients.</summary>
        public long BytesIn => Interlocked.Read(ref _bytesIn);

        /// <summary>Bytes from local clients to the remote destination.</summary>
        public long BytesOut => Interlocked.Read(ref _bytesOut);

        internal void Open()
        {
            Interlocked.Increment(ref _opened);
            Interlocked.Increment(ref _active);
        }

        internal void Close() => Interlocked.Decrement(ref _active);
        internal void Fail() => Interlocked.Increment(ref _failed);
        internal void In(int n) => Interlocked.Add(ref _bytesIn, n);
        internal void Out(int n) => Interlocked.Add(ref _bytesOut, n);
    }

    /// <summary>The part of a port session that moves local TCP connections over the data channel.</summary>
    internal interface IPortForwarder : IDisposable
    {
        PortForwardingMode Mode { get; }

        /// <summary>Serves one accepted local connection until it ends.</summary>
        Task HandleConnectionAsync(TcpClient client, CancellationToken cancellationToken);

        /// <summary>An Output payload from the agent, in order.</summary>
        Task OnOutputAsync(byte[] payload);

        /// <summary>A Flag from the agent.</summary>
        void OnFlag(PayloadTypeFlag flag);
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

    /// <summary>
    /// Client side of smux v1 over the data channel: one stream per local TCP connection (odd ids from 3, as the
    /// official client numbers them), frames written whole and in order, reassembled across messages on receipt,
    /// FIN in both directions as half-close, NOP ignored, and a ConnectToPortError from the agent failing the
    /// stream(s) still waiting for their first byte — the tunnel stays up for the others.
    /// </summary>
    internal sealed class MuxPortForwarder : IPortForwarder
    {
        /// <summary>Largest smux payload written (the agent's smux reads frames up to 32 KiB by default).</summary>
        public const int MaxFramePayload = 16 * 1024;

        private const int StreamBufferedBytesLimit = 4 * 1024 * 1024;

        /// <summary>How long the destination must be quiet after the local client's EOF before the stream is closed.</summary>
        internal static readonly TimeSpan HalfCloseQuietPeriod = TimeSpan.FromSeconds(2);

        private sealed class MuxStream
        {
            public MuxStream(uint id, TcpClient client)
            {
                Id = id;
                Client = client;
                Incoming = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            }

            public uint Id { get; }
            public TcpClient Client { get; }
            public Channel<byte[]> Incoming { get; }
            public long BufferedBytes;
            public SemaphoreSlim Drained { get; } = new(0, int.MaxValue);
            public volatile bool ReceivedData;
            public volatile bool RemoteFinished;
            public long LastRemoteDataTicks = DateTime.UtcNow.Ticks;
            public string? Failure;
        }

        private readonly IStreamSender _sender;
        private readonly Action<string> _log;
        private readonly ConnectionStatistics _stats;
        private readonly SmuxDecoder _decoder = new();
        private readonly ConcurrentDictionary<uint, MuxStream> _streams = new();
        private readonly SemaphoreSlim _frameLock = new(1, 1);
        private readonly CancellationTokenSource _lifetime = new();
        private int _lastStreamId = 1;
        private int _connectErrorsPending;

        public MuxPortForwarder(IStreamSender sender, ConnectionStatistics stats, Action<string> log, TimeSpan keepAlive = default)
        {
            _sender = sender;
            _stats = stats;
            _log = log;
            if (keepAlive > TimeSpan.Zero) _ = Task.Run(() => KeepAliveLoopAsync(keepAlive));
        }

        private long _lastSentTicks = DateTime.UtcNow.Ticks;

        /// <summary>Frames sent so far, NOPs included (for tests and statistics).</summary>
        public long FramesSent => Interlocked.Read(ref _framesSent);

        private long _framesSent;

        /// <summary>
        /// A smux NOP frame whenever nothing has been sent for <paramref name="interval"/>: input the agent reads and
        /// discards, which keeps an idle tunnel's data channel active (Session Manager ends idle sessions) without
        /// touching any connection.
        /// </summary>
        private async Task KeepAliveLoopAsync(TimeSpan interval)
        {
            var tick = TimeSpan.FromTicks(Math.Max(interval.Ticks / 4, TimeSpan.FromMilliseconds(10).Ticks));
            while (!_lifetime.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(tick, _lifetime.Token).ConfigureAwait(false);
                    if (DateTime.UtcNow.Ticks - Interlocked.Read(ref _lastSentTicks) < interval.Ticks) continue;
                    await SendFrameAsync(SmuxCommand.Nop, 0, null, 0, _lifetime.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException)
                {
                    return;
                }
            }
        }

        public PortForwardingMode Mode => PortForwardingMode.Multiplexed;

        public int OpenStreams => _streams.Count;

        private async Task SendFrameAsync(SmuxCommand command, uint streamId, byte[]? data, int count, CancellationToken cancellationToken)
        {
            var frame = new byte[SmuxCodec.HeaderLength + count];
            SmuxCodec.WriteHeader(frame, 0, command, streamId, count);
            if (count > 0) Buffer.BlockCopy(data!, 0, frame, SmuxCodec.HeaderLength, count);
            // A frame's messages must not interleave with another stream's frame.
            await _frameLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                await _sender.SendAsync(PayloadType.Output, frame, 0, frame.Length, cancellationToken).ConfigureAwait(false);
                Interlocked.Exchange(ref _lastSentTicks, DateTime.UtcNow.Ticks);
                Interlocked.Increment(ref _framesSent);
            }
            finally
            {
                _frameLock.Release();
            }
        }

        public async Task HandleConnectionAsync(TcpClient client, CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            var id = (uint)Interlocked.Add(ref _lastStreamId, 2);
            var stream = new MuxStream(id, client);
            _streams[id] = stream;
            _stats.Open();
            client.NoDelay = true;
            var network = client.GetStream();
            try
            {
                await SendFrameAsync(SmuxCommand.Syn, id, null, 0, linked.Token).ConfigureAwait(false);
                var upload = PumpLocalToRemoteAsync(stream, network, linked.Token);
                var download = PumpRemoteToLocalAsync(stream, network, linked.Token);
                var first = await Task.WhenAny(upload, download).ConfigureAwait(false);
                if (first == download || first.IsFaulted)
                {
                    // The remote side is done (FIN or failure), or the local socket broke: nothing more to send.
                    await Task.WhenAny(upload, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None)).ConfigureAwait(false);
                }
                else
                {
                    await download.ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is OperationCanceledException || ex is ObjectDisposedException)
            {
                _log($"Connection {id}: {ex.Message}");
            }
            finally
            {
                _streams.TryRemove(id, out _);
                if (stream.Failure != null) _stats.Fail();
                _stats.Close();
                client.Dispose();
            }
        }

        private async Task PumpLocalToRemoteAsync(MuxStream stream, NetworkStream network, CancellationToken cancellationToken)
        {
            var buffer = new byte[MaxFramePayload];
            try
            {
                while (true)
                {
                    var n = await network.ReadAsync(buffer, 0, buffer.Length, cancellationToken).ConfigureAwait(false);
                    if (n == 0) break;
                    _stats.Out(n);
                    await SendFrameAsync(SmuxCommand.Psh, stream.Id, buffer, n, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException)
            {
                // The local client went away: tell the agent below.
            }
            if (!cancellationToken.IsCancellationRequested)
            {
                // The agent has no half-close: a FIN makes it close the destination connection at once, losing any
                // response still on its way. So after the local client's EOF, wait until the destination has finished
                // or has been quiet for a moment before sending FIN.
                // The quiet period counts from the EOF (or the last data after it), not from the stream's start.
                var eofTicks = DateTime.UtcNow.Ticks;
                while (!stream.RemoteFinished && stream.Failure == null &&
                       DateTime.UtcNow.Ticks - Math.Max(eofTicks, Interlocked.Read(ref stream.LastRemoteDataTicks)) < HalfCloseQuietPeriod.Ticks)
                {
                    await Task.Delay(50, cancellationToken).ConfigureAwait(false);
                }
                await SendFrameAsync(SmuxCommand.Fin, stream.Id, null, 0, cancellationToken).ConfigureAwait(false);
            }
        }

        private async Task PumpRemoteToLocalAsync(MuxStream stream, NetworkStream network, CancellationToken cancellationToken)
        {
            var reader = stream.Incoming.Reader;
            while (await reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
            {
                while (reader.TryRead(out var data))
                {
                    await network.WriteAsync(data, 0, data.Length, cancellationToken).ConfigureAwait(false);
                    _stats.In(data.Length);
                    if (Interlocked.Add(ref stream.BufferedBytes, -data.Length) < StreamBufferedBytesLimit) stream.Drained.Release();
                }
            }
            if (stream.Failure != null)
            {
                _log($"Connection {stream.Id} failed: {stream.Failure}");
                return;
            }
            // The agent finished its side: finish ours towards the local client.
            try
            {
                stream.Client.Client.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
            {
            }
        }

        public async Task OnOutputAsync(byte[] payload)
        {
            IReadOnlyList<SmuxFrame> frames;
            try
            {
                frames = _decoder.Feed(payload);
            }
            catch (SsmProtocolException ex)
            {
                _log("The multiplexed stream is corrupt: " + ex.Message);
                foreach (var s in _streams.Values) Fail(s, "the multiplexed stream from the agent is corrupt");
                return;
            }
            foreach (var frame in frames)
            {
                if (!_streams.TryGetValue(frame.StreamId, out var stream)) continue;
                switch (frame.Command)
                {
                    case SmuxCommand.Psh:
                        if (frame.Payload.Length == 0) break;
                        stream.ReceivedData = true;
                        Interlocked.Exchange(ref stream.LastRemoteDataTicks, DateTime.UtcNow.Ticks);
                        var buffered = Interlocked.Add(ref stream.BufferedBytes, frame.Payload.Length);
                        stream.Incoming.Writer.TryWrite(frame.Payload);
                        // Back-pressure: a slow local reader holds the data channel (and so the agent) rather than memory.
                        while (buffered > StreamBufferedBytesLimit && !stream.Incoming.Reader.Completion.IsCompleted)
                        {
                            await stream.Drained.WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
                            buffered = Interlocked.Read(ref stream.BufferedBytes);
                        }
                        break;
                    case SmuxCommand.Fin:
                        if (!stream.ReceivedData && Interlocked.CompareExchange(ref _connectErrorsPending, 0, 0) > 0)
                        {
                            // The agent follows a ConnectToPortError flag with a FIN for the stream it could not dial.
                            Interlocked.Decrement(ref _connectErrorsPending);
                            Fail(stream, "the bastion could not connect to the destination port");
                            break;
                        }
                        stream.RemoteFinished = true;
                        stream.Incoming.Writer.TryComplete();
                        _log($"Connection {stream.Id}: the destination finished.");
                        break;
                }
            }
        }

        public void OnFlag(PayloadTypeFlag flag)
        {
            if (flag != PayloadTypeFlag.ConnectToPortError) return;
            // The flag names no stream; the agent sends a FIN for the stream it could not dial right after it. That FIN,
            // on a stream that has had no data, fails the local connection (a reset, not a clean end); others go on.
            Interlocked.Increment(ref _connectErrorsPending);
            _log("The bastion could not connect to the destination port for a new connection.");
        }

        private static void Fail(MuxStream stream, string reason)
        {
            stream.Failure ??= reason;
            stream.Incoming.Writer.TryComplete();
            try
            {
                // Reset rather than a clean FIN, so the local client sees a failed connection.
                stream.Client.Client.LingerState = new LingerOption(true, 0);
                stream.Client.Client.Close();
            }
            catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            _lifetime.Cancel();
            foreach (var s in _streams.Values)
            {
                s.Incoming.Writer.TryComplete();
                s.Client.Dispose();
            }
        }
    }

    /// <summary>
    /// Basic port forwarding for agents without smux: one local connection at a time carried as raw bytes; when it
    /// ends the client sends DisconnectToPort and the next connection's first bytes make the agent dial again.
    /// Further local connections wait their turn.
    /// </summary>
    internal sealed class BasicPortForwarder : IPortForwarder
    {
        private readonly IStreamSender _sender;
        private readonly ConnectionStatistics _stats;
        private readonly Action<string> _log;
        private readonly SemaphoreSlim _turn = new(1, 1);
        private readonly CancellationTokenSource _lifetime = new();
        private volatile NetworkStream? _current;
        private volatile TcpClient? _currentClient;

        public BasicPortForwarder(IStreamSender sender, ConnectionStatistics stats, Action<string> log)
        {
            _sender = sender;
            _stats = stats;
            _log = log;
        }

        public PortForwardingMode Mode => PortForwardingMode.Basic;

        public async Task HandleConnectionAsync(TcpClient client, CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            await _turn.WaitAsync(linked.Token).ConfigureAwait(false);
            _stats.Open();
            try
            {
                client.NoDelay = true;
                var network = client.GetStream();
                _currentClient = client;
                _current = network;
                var buffer = new byte[16 * 1024];
                try
                {
                    while (true)
                    {
                        var n = await network.ReadAsync(buffer, 0, buffer.Length, linked.Token).ConfigureAwait(false);
                        if (n == 0) break;
                        _stats.Out(n);
                        await _sender.SendAsync(PayloadType.Output, buffer, 0, n, linked.Token).ConfigureAwait(false);
                    }
                }
                catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException)
                {
                    _log("Local connection ended: " + ex.Message);
                }
                _current = null;
                _currentClient = null;
                if (!linked.IsCancellationRequested)
                {
                    await _sender.SendFlagAsync(PayloadTypeFlag.DisconnectToPort, linked.Token).ConfigureAwait(false);
                }
            }
            finally
            {
                _stats.Close();
                client.Dispose();
                _turn.Release();
            }
        }

        public async Task OnOutputAsync(byte[] payload)
        {
            var current = _current;
            if (current == null)
            {
                _log($"Dropped {payload.Length} byte(s) from the agent: no local connection is open.");
                return;
            }
            try
            {
                await current.WriteAsync(payload, 0, payload.Length).ConfigureAwait(false);
                _stats.In(payload.Length);
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException)
            {
                _log("Could not write to the local connection: " + ex.Message);
            }
        }

        public void OnFlag(PayloadTypeFlag flag)
        {
            if (flag != PayloadTypeFlag.ConnectToPortError) return;
            var client = _currentClient;
            if (client == null) return;
            _stats.Fail();
            _log("The bastion could not connect to the destination port.");
            try
            {
                client.Client.LingerState = new LingerOption(true, 0);
                client.Client.Close();
            }
            catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            _lifetime.Cancel();
            _currentClient?.Dispose();
        }
    }
}
