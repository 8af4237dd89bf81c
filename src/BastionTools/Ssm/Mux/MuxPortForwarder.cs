using System;
using System.Buffers;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Client side of smux v1 over the data channel: one stream per local TCP connection (odd ids from 3, as the
    /// official client numbers them), frames written whole and in order, reassembled across messages on receipt, FIN in
    /// both directions, NOP ignored, and a ConnectToPortError from the agent failing the stream still waiting for its
    /// first byte — the tunnel stays up for the others.
    /// <para>
    /// smux v1 has no per-stream flow control, so what arrives for a connection whose client does not read is queued
    /// for it up to a bound (<see cref="DataChannelOptions.ConnectionQueueBytes"/>); past the bound that connection alone
    /// is reset (FIN to the agent, RST to the local client). Nothing here ever makes the data channel's receive loop
    /// wait, so acknowledgements and every other connection go on.
    /// </para>
    /// </summary>
    internal sealed class MuxPortForwarder : IPortForwarder, LocalReadReactor.IReader
    {
        /// <summary>Largest smux payload written (the agent's smux reads frames up to 32 KiB by default).</summary>
        public const int MaxFramePayload = 16 * 1024;

        /// <summary>How long the destination must be quiet after the local client's EOF before the stream is closed.</summary>
        internal static readonly TimeSpan HalfCloseQuietPeriod = TimeSpan.FromSeconds(2);

        private const int WriteBatchBytes = 64 * 1024;

        /// <summary>Room for one connection's output held during a burst (32 full messages; more is written out first).</summary>
        internal const int HoldBytes = 32 * 1024;

        /// <summary>Frames queued for the data channel beyond which a connection waits before queueing more.</summary>
        internal const int OutputBufferBytes = 64 * 1024;

        // Connections are "sending together" (see SendFrameAsync) for 50 ms after two of them queued frames less than 5 ms apart.
        private static readonly long ConcurrentWindowTicks = Stopwatch.Frequency / 200;
        private static readonly long ConcurrentHoldTicks = Stopwatch.Frequency / 20;

        private sealed class MuxStream
        {
            public MuxStream(uint id, TcpClient client, ConnectionQueue queue)
            {
                Id = id;
                Client = client;
                Queue = queue;
                try
                {
                    Peer = client.Client.RemoteEndPoint?.ToString() ?? "?";
                }
                catch (ObjectDisposedException)
                {
                    Peer = "?";
                }
            }

            public uint Id { get; }
            public TcpClient Client { get; }
            public ConnectionQueue Queue { get; }
            public string Peer { get; }
            public volatile bool ReceivedData;
            public volatile bool RemoteFinished;
            public long LastRemoteDataTicks = DateTime.UtcNow.Ticks;
            public volatile string? Failure;
            public bool DirectWrites;
            // Output held for this connection until the end of the burst it came in (receive loop only; see Hold).
            public byte[]? Held;
            public int HeldCount;
            public int Ended;
            public int FinSent;
        }

        private readonly IStreamSender _sender;
        private readonly Action<string> _log;
        private readonly Action<string>? _fatal;
        private readonly ConnectionStatistics _stats;
        private readonly ConnectionQueuePolicy _queues;
        private readonly SmuxDecoder _decoder = new();
        private readonly FrameSink _frameSink;
        private readonly bool _holdOutput;
        private readonly List<MuxStream> _holding = new();   // connections with held output (receive loop only)
        private readonly ConcurrentDictionary<uint, MuxStream> _streams = new();
        // The outgoing smux byte stream (see SendFrameAsync): frames queued and not yet handed to the data channel.
        private readonly object _outGate = new();
        private byte[] _outBuffer = new byte[OutputBufferBytes];
        private byte[] _outSpare = new byte[OutputBufferBytes];
        private int _outCount;
        private uint _lastFrameStream;
        private long _lastFrameTicks;
        private long _concurrentUntil;
        private bool _flushing;
        private TaskCompletionSource<bool>? _roomWaiter;
        private Exception? _outFailure;
        private readonly CancellationTokenSource _lifetime = new();
        private int _lastStreamId = 1;
        private int _connectErrorsPending;
        private long _lastSentTicks = DateTime.UtcNow.Ticks;
        private long _framesSent;
        private long _localSends;
        private long _localReadsOffPool;
        private long _nopsSent;
        private readonly bool _readerThread;
        private readonly object _reactorGate = new();
        private LocalReadReactor? _reactor;

        /// <param name="sender">Where frames go (the data channel).</param>
        /// <param name="stats">Connection counters of the session.</param>
        /// <param name="log">Narration (Verbose).</param>
        /// <param name="queues">How much connections may hold before a client that reads nothing is reset (null: the defaults).</param>
        /// <param name="keepAlive">Time without anything sent after which a NOP is sent; zero for none.</param>
        /// <param name="fatal">Called once if the agent's smux stream can no longer be framed (the tunnel is unusable).</param>
        /// <param name="holdOutput">
        /// Whoever calls <see cref="OnOutput"/> also calls <see cref="WriteHeldOutput"/> at the end of each run of messages read
        /// together (the data channel does): a connection's output of the run is written to it in one write then.
        /// </param>
        /// <param name="readerThread">
        /// Local connections are read by one thread of the session's own (<see cref="LocalReadReactor"/>) instead of
        /// .NET's asynchronous reads, and what one wake-up read is sent together (.NET, where direct writes are supported).
        /// </param>
        public MuxPortForwarder(IStreamSender sender, ConnectionStatistics stats, Action<string> log, ConnectionQueuePolicy? queues = null,
            TimeSpan keepAlive = default, Action<string>? fatal = null, bool holdOutput = false, bool readerThread = false)
        {
            _readerThread = readerThread && DirectWritesSupported;
            _frameSink = new FrameSink(this);
            _holdOutput = holdOutput;
            _sender = sender;
            _stats = stats;
            _log = log;
            _queues = queues ?? new ConnectionQueuePolicy();
            _fatal = fatal;
            KeepAliveInterval = keepAlive > TimeSpan.Zero ? keepAlive : TimeSpan.Zero;
            if (keepAlive > TimeSpan.Zero) _ = Task.Run(() => KeepAliveLoopAsync(keepAlive));
        }

        public PortForwardingMode Mode => PortForwardingMode.Multiplexed;

        public int OpenStreams => _streams.Count;

        /// <summary>Frames sent so far, NOPs included (for tests and statistics).</summary>
        public long FramesSent => Interlocked.Read(ref _framesSent);

        /// <summary>Writes to local connections made on the receive loop (direct writes), for tests.</summary>
        internal long LocalSends => Interlocked.Read(ref _localSends);

        /// <summary>Whether local connections are read by the session's reader thread (<see cref="LocalReadReactor"/>).</summary>
        internal bool ReadsOnReaderThread => _readerThread;

        /// <summary>Reads from local connections handled outside the thread pool (on the reader thread, or on the socket engine's thread when inline).</summary>
        internal long LocalReadsOffPool => Interlocked.Read(ref _localReadsOffPool);

        /// <summary>Keepalive NOP frames sent so far.</summary>
        public long NopsSent => Interlocked.Read(ref _nopsSent);

        /// <summary>The keepalive: a NOP after this long without anything sent; zero when none is sent.</summary>
        public TimeSpan KeepAliveInterval { get; private set; }

        /// <summary>
        /// A smux NOP frame whenever nothing has been sent for <paramref name="interval"/>: input the agent reads and
        /// discards, without touching any connection. It keeps an agent that runs smux keepalive from closing an idle
        /// tunnel, and (with -KeepAlive) keeps the data channel active against the idle session timeout.
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
                    Interlocked.Increment(ref _nopsSent);
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

        /// <summary>
        /// Queues one smux frame on the session's outgoing byte stream and returns once it is queued (waiting only while
        /// the stream holds <see cref="OutputBufferBytes"/> not yet handed to the data channel). Frames of all connections
        /// share that stream in the order they were queued, and whatever is queued when the data channel can take more goes
        /// out together, cut into messages of the largest payload the agent takes: under load, many small frames (a pool of
        /// connections each sending a short query) travel in one message and one acknowledgement instead of one each. The
        /// smux stream is a byte stream to the agent (it reassembles frames across messages), so nothing else changes on
        /// the wire. A frame is never held back on a timer to wait for company: when nothing is being sent, it goes out at
        /// once — on the caller's thread while one connection sends alone (a single client waiting for each answer), and
        /// while several connections are sending together (two queued frames less than 5 ms apart in the last 50 ms) through
        /// a flush queued to the thread pool behind whatever work was already waiting there (the reads that completed at
        /// the same moment), so that they share messages.
        /// </summary>
        private async Task SendFrameAsync(SmuxCommand command, uint streamId, byte[]? data, int count, CancellationToken cancellationToken)
        {
            bool queue;
            while (true)
            {
                Task room;
                lock (_outGate)
                {
                    if (TryAppendLocked(command, streamId, data, count))
                    {
                        var now = Stopwatch.GetTimestamp();
                        if (streamId != _lastFrameStream && now - _lastFrameTicks < ConcurrentWindowTicks) _concurrentUntil = now + ConcurrentHoldTicks;
                        _lastFrameStream = streamId;
                        _lastFrameTicks = now;
                        if (_flushing) return;
                        _flushing = true;
                        queue = Stopwatch.GetTimestamp() < _concurrentUntil;
                        break;
                    }
                    _roomWaiter ??= new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                    room = _roomWaiter.Task;
                }
                var cancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                using (cancellationToken.Register(() => cancelled.TrySetCanceled()))
                {
                    await (await Task.WhenAny(room, cancelled.Task).ConfigureAwait(false)).ConfigureAwait(false);
                }
            }
            if (queue)
            {
                // Connections are sending together: the flush is queued behind the work already waiting for the thread
                // pool (typically other connections' reads that completed at the same moment), so their frames join this
                // one's message.
                ThreadPool.UnsafeQueueUserWorkItem(FlushCallback, this);
                return;
            }
            // One connection sending alone: no hop, it goes out now.
            await FlushOutputAsync().ConfigureAwait(false);
        }

        /// <summary>
        /// Appends one frame to the outgoing stream when it has room (or is empty: a frame larger than the buffer grows it);
        /// false when the frame must wait for room. Holds <see cref="_outGate"/>; throws once the stream has failed.
        /// </summary>
        private bool TryAppendLocked(SmuxCommand command, uint streamId, byte[]? data, int count)
        {
            if (_outFailure != null) throw new IOException(_outFailure.Message, _outFailure);
            var length = SmuxCodec.HeaderLength + count;
            if (_outCount != 0 && _outCount + length > _outBuffer.Length) return false;
            if (_outCount + length > _outBuffer.Length) Array.Resize(ref _outBuffer, _outCount + length);
            SmuxCodec.WriteHeader(_outBuffer, _outCount, command, streamId, count);
            if (count > 0) Buffer.BlockCopy(data!, 0, _outBuffer, _outCount + SmuxCodec.HeaderLength, count);
            _outCount += length;
            Interlocked.Increment(ref _framesSent);
            return true;
        }

        /// <summary>
        /// The reader thread's frame: appended without starting a flush (<see cref="LocalReadReactor.IReader.OnReadsDone"/>
        /// sends what the wake-up read, together). When the stream has no room, a flush is started if none runs, and the
        /// thread waits for the room: every local connection waits then, as each one's frame did on its own before.
        /// </summary>
        void LocalReadReactor.IReader.OnRead(object connection, byte[] buffer, int count)
        {
            var stream = (MuxStream)connection;
            Interlocked.Increment(ref _localReadsOffPool);
            _stats.Out(count);
            while (true)
            {
                Task room;
                var startFlush = false;
                lock (_outGate)
                {
                    if (TryAppendLocked(SmuxCommand.Psh, stream.Id, buffer, count)) return;
                    _roomWaiter ??= new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                    room = _roomWaiter.Task;
                    if (!_flushing)
                    {
                        _flushing = true;
                        startFlush = true;
                    }
                }
                if (startFlush) _ = FlushQuietlyAsync();
                room.Wait(_lifetime.Token);
            }
        }

        /// <summary>The reader thread's reads of one wake-up are queued: they go out now, in as few messages as they fit.</summary>
        void LocalReadReactor.IReader.OnReadsDone()
        {
            lock (_outGate)
            {
                if (_outCount == 0 || _flushing || _outFailure != null) return;
                _flushing = true;
            }
            // Runs on this thread as far as the data channel takes it at once (see FlushOutputAsync).
            _ = FlushQuietlyAsync();
        }

        private LocalReadReactor Reactor()
        {
            lock (_reactorGate)
            {
                if (_lifetime.IsCancellationRequested) throw new ObjectDisposedException(nameof(MuxPortForwarder));
                if (_reactor == null || _reactor.IsStopped)
                {
                    // A reader thread stopped by a failure failed its connections; new ones get a new thread.
                    _reactor?.Dispose();
                    _reactor = new LocalReadReactor(this, MaxFramePayload);
                }
                return _reactor;
            }
        }

        private static readonly WaitCallback FlushCallback = state => _ = ((MuxPortForwarder)state!).FlushQuietlyAsync();

        private async Task FlushQuietlyAsync()
        {
            try
            {
                await FlushOutputAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException)
            {
                // Recorded in _outFailure: the next frame queued gets it.
                if (!_lifetime.IsCancellationRequested) _log("The tunnel could not send: " + Redactor.RedactPatterns(ex.Message));
            }
        }

        /// <summary>
        /// Hands everything queued to the data channel, one batch after another, until nothing is left. Only one runs at a
        /// time (<see cref="_flushing"/>); it uses the forwarder's lifetime, not the token of the connection that started
        /// it, so a connection that ends does not cancel the others' frames.
        /// </summary>
        private async Task FlushOutputAsync()
        {
            while (true)
            {
                byte[] batch;
                int count;
                TaskCompletionSource<bool>? room;
                lock (_outGate)
                {
                    if (_outCount == 0 || _outFailure != null)
                    {
                        _flushing = false;
                        return;
                    }
                    batch = _outBuffer;
                    count = _outCount;
                    _outBuffer = _outSpare.Length >= OutputBufferBytes ? _outSpare : new byte[OutputBufferBytes];
                    _outSpare = batch;
                    _outCount = 0;
                    room = _roomWaiter;
                    _roomWaiter = null;
                }
                room?.TrySetResult(true);
                try
                {
                    await _sender.SendAsync(PayloadType.Output, batch, 0, count, _lifetime.Token).ConfigureAwait(false);
                    Interlocked.Exchange(ref _lastSentTicks, DateTime.UtcNow.Ticks);
                }
                catch (Exception ex)
                {
                    lock (_outGate)
                    {
                        _outFailure = ex is IOException ? ex : new IOException("The data channel no longer takes data: " + ex.Message, ex);
                        _flushing = false;
                        room = _roomWaiter;
                        _roomWaiter = null;
                    }
                    room?.TrySetResult(true);
                    throw;
                }
            }
        }

        private async Task SendFinOnceAsync(MuxStream stream, CancellationToken cancellationToken)
        {
            if (Interlocked.Exchange(ref stream.FinSent, 1) != 0) return;
            await SendFrameAsync(SmuxCommand.Fin, stream.Id, null, 0, cancellationToken).ConfigureAwait(false);
        }

        public async Task HandleConnectionAsync(TcpClient client, CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            var id = (uint)Interlocked.Add(ref _lastStreamId, 2);
            var stream = new MuxStream(id, client, new ConnectionQueue(_queues, _stats));
            _streams[id] = stream;
            _stats.Open();
            client.NoDelay = true;
            try
            {
                var network = client.GetStream();
                if (DirectWritesSupported)
                {
                    // After the NetworkStream is made (it insists on a blocking socket); its async reads and writes do not care.
                    client.Client.Blocking = false;
                    stream.DirectWrites = true;
                }
                await SendFrameAsync(SmuxCommand.Syn, id, null, 0, linked.Token).ConfigureAwait(false);
                var upload = PumpLocalToRemoteAsync(stream, network, linked.Token);
                var download = PumpRemoteToLocalAsync(stream, network, linked.Token);
                var first = await Task.WhenAny(upload, download).ConfigureAwait(false);
                if (first == download || first.IsFaulted)
                {
                    // The remote side is done (FIN, reset or failure), or the local socket broke: nothing more to send.
                    await Task.WhenAny(upload, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None)).ConfigureAwait(false);
                }
                else
                {
                    await download.ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is OperationCanceledException || ex is ObjectDisposedException || ex is InvalidOperationException)
            {
                _log($"Connection {id}: {ex.Message}");
            }
            finally
            {
                EndStream(stream);
                if (stream.Failure != null) _stats.Fail();
                _stats.Close();
                client.Dispose();
            }
        }

        private void EndStream(MuxStream stream)
        {
            if (Interlocked.Exchange(ref stream.Ended, 1) != 0) return;
            if (_streams.TryGetValue(stream.Id, out var s) && ReferenceEquals(s, stream)) _streams.TryRemove(stream.Id, out _);
            // The reader thread lets go of the socket before it is closed.
            _reactor?.Unregister(stream.Client.Client);
            // Whatever was still queued for it is released now.
            stream.Queue.Fail();
        }

        private async Task PumpLocalToRemoteAsync(MuxStream stream, NetworkStream network, CancellationToken cancellationToken)
        {
            try
            {
                if (stream.DirectWrites && _readerThread)
                {
                    // The reader thread reads it and queues its frames; this waits for its end.
                    await Reactor().Register(stream.Client.Client, stream, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ReadLocalAsync(stream, network, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException)
            {
                // The local client went away (or was reset): tell the agent below.
            }
            if (!cancellationToken.IsCancellationRequested && Volatile.Read(ref stream.FinSent) == 0)
            {
                // The agent has no half-close: a FIN makes it close the destination connection at once, losing any
                // response still on its way. So after the local client's EOF, wait until the destination has finished
                // or has been quiet for a moment before sending FIN.
                // The quiet period counts from the EOF (or the last data after it), not from the stream's start.
                var eofTicks = DateTime.UtcNow.Ticks;
                while (!stream.RemoteFinished && stream.Failure == null && Volatile.Read(ref stream.Ended) == 0 &&
                       DateTime.UtcNow.Ticks - Math.Max(eofTicks, Interlocked.Read(ref stream.LastRemoteDataTicks)) < HalfCloseQuietPeriod.Ticks)
                {
                    await Task.Delay(50, cancellationToken).ConfigureAwait(false);
                }
                await SendFinOnceAsync(stream, cancellationToken).ConfigureAwait(false);
            }
        }

        /// <summary>Reads a local connection with .NET's asynchronous reads until its end, queueing a frame per read.</summary>
        private async Task ReadLocalAsync(MuxStream stream, NetworkStream network, CancellationToken cancellationToken)
        {
            var buffer = new byte[MaxFramePayload];
            var engineTurn = 0;
            while (true)
            {
                var reading = network.ReadAsync(buffer, 0, buffer.Length, cancellationToken);
                var atOnce = reading.IsCompleted;
                var n = await reading.ConfigureAwait(false);
                if (n == 0) return;
                if (!Thread.CurrentThread.IsThreadPoolThread) Interlocked.Increment(ref _localReadsOffPool);
                // A client sending in bulk keeps its reads completing at once on the socket engine's thread: after
                // a run of them, give that thread back (see DataChannel's receive loop).
                if (SocketCompletions.TakeTurn(ref engineTurn, atOnce)) await Task.Yield();
                _stats.Out(n);
                await SendFrameAsync(SmuxCommand.Psh, stream.Id, buffer, n, cancellationToken).ConfigureAwait(false);
            }
        }

        private async Task PumpRemoteToLocalAsync(MuxStream stream, NetworkStream network, CancellationToken cancellationToken)
        {
            var batch = new List<byte[]>();
            var joined = new byte[WriteBatchBytes];
            while (await stream.Queue.TakeAsync(batch, WriteBatchBytes, cancellationToken).ConfigureAwait(false))
            {
                if (batch.Count == 1)
                {
                    await network.WriteAsync(batch[0], 0, batch[0].Length, cancellationToken).ConfigureAwait(false);
                    stream.Queue.Progress();
                    _stats.In(batch[0].Length);
                }
                else
                {
                    var n = 0;
                    foreach (var b in batch)
                    {
                        if (n + b.Length > joined.Length)
                        {
                            await network.WriteAsync(joined, 0, n, cancellationToken).ConfigureAwait(false);
                            stream.Queue.Progress();
                            _stats.In(n);
                            n = 0;
                        }
                        if (b.Length > joined.Length)
                        {
                            await network.WriteAsync(b, 0, b.Length, cancellationToken).ConfigureAwait(false);
                            stream.Queue.Progress();
                            _stats.In(b.Length);
                            continue;
                        }
                        Buffer.BlockCopy(b, 0, joined, n, b.Length);
                        n += b.Length;
                    }
                    if (n > 0)
                    {
                        await network.WriteAsync(joined, 0, n, cancellationToken).ConfigureAwait(false);
                        stream.Queue.Progress();
                        _stats.In(n);
                    }
                }
                batch.Clear();
            }
            if (stream.Failure != null || stream.Queue.IsFailed)
            {
                if (stream.Failure != null) _log($"Connection {stream.Id} failed: {stream.Failure}");
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

        /// <summary>
        /// The agent's Output payload: smux frames, decoded as they come without copying the data (an answer's bytes go
        /// from <paramref name="buffer"/> to the local socket, or to the run's held buffer; only what a socket does not
        /// take at once is copied, to its queue).
        /// </summary>
        public void OnOutput(byte[] buffer, int offset, int count)
        {
            try
            {
                _decoder.Feed(buffer, offset, count, _frameSink);
            }
            catch (SsmProtocolException ex)
            {
                _log("The multiplexed stream from the agent is corrupt: " + ex.Message);
                foreach (var s in _streams.Values) Fail(s, "the multiplexed stream from the agent is corrupt");
                _fatal?.Invoke("the multiplexed stream from the agent is corrupt (" + ex.Message + ")");
            }
        }

        /// <summary>Hands the decoded frames to their connections (a separate object: the forwarder's own surface stays IPortForwarder).</summary>
        private sealed class FrameSink : ISmuxFrameSink
        {
            private readonly MuxPortForwarder _owner;

            public FrameSink(MuxPortForwarder owner) => _owner = owner;

            public void OnFrame(SmuxCommand command, uint streamId) => _owner.OnFrame(command, streamId);

            public void OnData(uint streamId, byte[] buffer, int offset, int count, bool endOfFrame) => _owner.OnData(streamId, buffer, offset, count);
        }

        private void OnData(uint streamId, byte[] buffer, int offset, int count)
        {
            if (!_streams.TryGetValue(streamId, out var stream))
            {
                // A stream that has ended (or never was ours): its data is released at once.
                _stats.Dropped(count);
                return;
            }
            stream.ReceivedData = true;
            Interlocked.Exchange(ref stream.LastRemoteDataTicks, DateTime.UtcNow.Ticks);
            if (_holdOutput && stream.DirectWrites)
            {
                Hold(stream, buffer, offset, count);
                return;
            }
            var unwritten = WriteDirect(stream, buffer, offset, count);
            if (unwritten != null) Enqueue(stream, unwritten);
        }

        private void OnFrame(SmuxCommand command, uint streamId)
        {
            if (command != SmuxCommand.Fin || !_streams.TryGetValue(streamId, out var stream)) return;
            if (!stream.ReceivedData && Interlocked.CompareExchange(ref _connectErrorsPending, 0, 0) > 0)
            {
                // The agent follows a ConnectToPortError flag with a FIN for the stream it could not dial.
                Interlocked.Decrement(ref _connectErrorsPending);
                Fail(stream, "the bastion could not connect to the destination port");
                return;
            }
            // What was held for it goes before its end.
            if (stream.HeldCount > 0) WriteHeld(stream);
            stream.RemoteFinished = true;
            stream.Queue.Complete();
            _log($"Connection {stream.Id}: the destination finished.");
        }

        /// <summary>Queues output its connection's socket did not take at once; resets a connection whose client does not read.</summary>
        private void Enqueue(MuxStream stream, byte[] data)
        {
            var refused = stream.Queue.RefusalReason(stream.Queue.TryEnqueue(data));
            if (refused != null) Reset(stream, refused);
            else if (_stats.QueuedBytes > _queues.SessionBytes) ResetLargest();
        }

        /// <summary>
        /// Keeps a connection's output until <see cref="WriteHeldOutput"/>, the end of the run of messages the data channel
        /// read together: an answer of several messages (a result of a few to tens of KiB) reaches a client that keeps up
        /// in one write per run instead of one per 1 KiB message, which saves system calls and wake-ups of the client.
        /// (Output for a client that lags goes through its queue and writer as before; the COPY out bench counts ~45
        /// receive-loop writes per MB either way.) Nothing waits
        /// for more data: the run is what one read of the WebSocket brought (at most 32 messages), and it is written
        /// before the receive loop reads again.
        /// </summary>
        private void Hold(MuxStream stream, byte[] buffer, int offset, int count)
        {
            if (stream.Held != null && stream.HeldCount + count > stream.Held.Length) WriteHeld(stream);
            if (count > HoldBytes)
            {
                var unwritten = WriteDirect(stream, buffer, offset, count);
                if (unwritten != null) Enqueue(stream, unwritten);
                return;
            }
            if (stream.Held == null)
            {
                stream.Held = ArrayPool<byte>.Shared.Rent(HoldBytes);
                _holding.Add(stream);
            }
            Buffer.BlockCopy(buffer, offset, stream.Held, stream.HeldCount, count);
            stream.HeldCount += count;
        }

        /// <summary>Writes what a connection holds (or queues it, as any output), keeping its buffer until <see cref="WriteHeldOutput"/>.</summary>
        private void WriteHeld(MuxStream stream)
        {
            var count = stream.HeldCount;
            if (count == 0) return;
            stream.HeldCount = 0;
            if (stream.Failure != null || stream.Queue.IsFailed)
            {
                // Reset (or gone) meanwhile: its data is released, as data for an ended stream is.
                _stats.Dropped(count);
                return;
            }
            var unwritten = WriteDirect(stream, stream.Held!, 0, count);
            if (unwritten != null) Enqueue(stream, unwritten);
        }

        /// <inheritdoc />
        public void WriteHeldOutput()
        {
            if (_holding.Count == 0) return;
            foreach (var stream in _holding)
            {
                WriteHeld(stream);
                ArrayPool<byte>.Shared.Return(stream.Held!);
                stream.Held = null;
            }
            _holding.Clear();
        }

        /// <summary>
        /// Writes output straight to its local connection when that connection's writer is idle (nothing queued) and
        /// the socket takes it without waiting: the usual case for a request/response client, which saves the hop to the
        /// writer's task. Never waits (the socket does not block: what it does not take at once is returned, to be queued
        /// as before). Null when everything was written; otherwise a new array with the rest (<paramref name="data"/> is
        /// the caller's: never kept).
        /// </summary>
        private byte[]? WriteDirect(MuxStream stream, byte[] data, int offset, int count)
        {
            var sent = 0;
            if (stream.DirectWrites && stream.Queue.IsIdle)
            {
                try
                {
                    Interlocked.Increment(ref _localSends);
                    sent = stream.Client.Client.Send(data, offset, count, SocketFlags.None, out var error);
                    if (error != SocketError.Success && error != SocketError.WouldBlock) sent = 0; // the writer meets the error
                }
                catch (ObjectDisposedException)
                {
                    sent = 0;
                }
            }
            if (sent > 0)
            {
                _stats.In(sent);
                stream.Queue.Progress();
                if (sent == count) return null;
            }
            else
            {
                sent = 0;
            }
            var rest = new byte[count - sent];
            Buffer.BlockCopy(data, offset + sent, rest, 0, rest.Length);
            return rest;
        }

        /// <summary>
        /// Direct writes need a socket that never blocks a synchronous send. On .NET (Core) a socket is non-blocking
        /// underneath and its async operations are unaffected by <see cref="Socket.Blocking"/>; on .NET Framework
        /// (Windows PowerShell 5.1) the writer task alone writes, as before.
        /// </summary>
        private static readonly bool DirectWritesSupported =
            !System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription.StartsWith(".NET Framework", StringComparison.Ordinal);

        public void OnFlag(PayloadTypeFlag flag)
        {
            if (flag != PayloadTypeFlag.ConnectToPortError) return;
            // The flag names no stream; the agent sends a FIN for the stream it could not dial right after it. That FIN,
            // on a stream that has had no data, fails the local connection (a reset, not a clean end); others go on.
            Interlocked.Increment(ref _connectErrorsPending);
            _log("The bastion could not connect to the destination port for a new connection.");
        }

        /// <summary>
        /// Resets one connection whose client stopped reading: its queue is released, the local client gets an RST and
        /// the agent a FIN (so it closes the destination). Runs on the receive loop: the FIN is sent in the background.
        /// </summary>
        private void Reset(MuxStream stream, string reason)
        {
            if (stream.Failure != null) return;
            _stats.ResetOne();
            _log($"Connection {stream.Id} (from {stream.Peer}) was reset: {reason}. The tunnel and the other connections go on.");
            Fail(stream, "reset: " + reason);
            EndStream(stream);
            if (!_lifetime.IsCancellationRequested) _ = Task.Run(() => SendFinQuietlyAsync(stream));
        }

        /// <summary>All connections together hold more than the session bound: the one holding most is reset.</summary>
        private void ResetLargest()
        {
            MuxStream? largest = null;
            foreach (var s in _streams.Values)
            {
                if (largest == null || s.Queue.Bytes > largest.Queue.Bytes) largest = s;
            }
            if (largest != null)
            {
                Reset(largest, $"the tunnel's connections held more than {_queues.SessionBytes / 1048576} MiB their clients had not read, {largest.Queue.Bytes / 1024} KiB of it for this one");
            }
        }

        private async Task SendFinQuietlyAsync(MuxStream stream)
        {
            try
            {
                await SendFinOnceAsync(stream, _lifetime.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException || ex is OperationCanceledException || ex is ObjectDisposedException)
            {
                // The channel is closing: the agent ends the stream with the session.
            }
        }

        private static void Fail(MuxStream stream, string reason)
        {
            stream.Failure ??= reason;
            stream.Queue.Fail();
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
            lock (_reactorGate)
            {
                _lifetime.Cancel();
            }
            _reactor?.Dispose();
            foreach (var s in _streams.Values)
            {
                s.Queue.Fail();
                s.Client.Dispose();
            }
        }
    }
}
