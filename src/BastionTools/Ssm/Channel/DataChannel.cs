using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;
using System.Threading.Channels;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>
    /// The reliable channel of a Session Manager session, above one WebSocket transport at a time: OpenDataChannel,
    /// sequence numbers, per-message acknowledgement, in-order delivery through a bounded reorder window, duplicate
    /// re-acknowledgement, paced retransmission (oldest first, a bounded burst per interval, exponential back-off per
    /// message, the oldest alone once congested), pause/start publication as the agent treats them, detection of a
    /// silently dead WebSocket (a ping that nothing answers), and resumption through ResumeSession with both directions'
    /// sequence state kept, for as long as the service accepts it and <see cref="DataChannelOptions.ReconnectTimeout"/> allows.
    /// <para>
    /// Threads: one receive loop per transport (it never waits on anything but the socket: delivery to the
    /// <c>onStreamMessage</c> handler is synchronous and the handler must not block), one writer loop that owns the
    /// socket's send side and writes queued frames in batches, and one timer loop (resends, liveness). Senders wait only
    /// for the send window.
    /// </para>
    /// </summary>
    internal sealed class DataChannel : IDisposable
    {
        private sealed class Outgoing
        {
            public Outgoing(long sequenceNumber, Guid messageId, byte[] frame)
            {
                SequenceNumber = sequenceNumber;
                MessageId = messageId;
                Frame = frame;
            }

            public long SequenceNumber { get; }
            public Guid MessageId { get; }
            public byte[] Frame { get; }

            /// <summary>Transmissions so far (0: held back by a pause or a lost connection).</summary>
            public int Attempts { get; set; }

            public long LastSentTicks { get; set; }

            /// <summary>First transmission on the current connection.</summary>
            public long FirstSentTicks { get; set; }

            public LinkedListNode<Outgoing>? Node { get; set; }
        }

        private readonly struct OutFrame
        {
            public OutFrame(byte[] frame, bool isAcknowledgement)
            {
                Frame = frame;
                IsAcknowledgement = isAcknowledgement;
            }

            public byte[] Frame { get; }
            public bool IsAcknowledgement { get; }
        }

        private const int MaxBatchBytes = 64 * 1024;
        private const int MaxBatchMessages = 256;
        private const int MaxAcknowledgementsPerKick = 32;

        private readonly DataChannelOptions _options;
        private readonly Action<AgentMessage> _onStreamMessage;
        private readonly Action? _onRunDelivered;

        /// <summary>
        /// Optional: takes an Output payload where it lies in the receive buffer (valid only during the call), for a message
        /// that arrives in order, unencrypted, with the standard header; every other message goes to _onStreamMessage.
        /// </summary>
        private readonly Action<byte[], int, int>? _onOutputInPlace;
        private readonly Func<CancellationToken, Task<StreamEndpoint?>> _resume;
        private readonly Action<string> _log;
        private readonly CancellationTokenSource _lifetime = new();
        private readonly TaskCompletionSource<DataChannelClosure> _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly SemaphoreSlim _window;
        private readonly object _gate = new();
        private readonly LinkedList<Outgoing> _unacked = new();
        private readonly Dictionary<long, Outgoing> _unackedBySequence = new();
        private readonly Dictionary<long, AgentMessage> _reorder = new();
        private readonly Channel<OutFrame> _outbox = Channel.CreateUnbounded<OutFrame>(new UnboundedChannelOptions { SingleReader = false });
        private readonly Guid _clientId = Guid.NewGuid();
        private readonly double _ticksPerMs = Stopwatch.Frequency / 1000.0;

        private StreamEndpoint _endpoint;
        private IMessageTransport? _transport;
        private int _generation;
        private long _nextOutgoingSequence;
        private long _expectedIncomingSequence;
        private bool _paused;
        private double _srttMs = -1;
        private double _rttvarMs;
        private double _rtoMs;
        // The send window (guarded by _gate): its size now, the permits still to be withheld after it shrank, and what
        // sizes it: the least round trip seen and the acknowledgement rate of the last intervals (each at least that long).
        private int _windowSize;
        private int _windowDebt;
        private double _minRttMs = double.MaxValue;
        private long _rateIntervalStart;
        private int _rateAcknowledged;
        private readonly double[] _rates = new double[RateIntervals];
        private int _rateNext;
        private long _pingSentTicks;
        private long _lastAckTicks;
        private long _pausedTicks;
        private long _connectedTicks;
        private int _pendingAcknowledgements;
        private int _outboxCount;
        private int _closing;
        private ChannelState _state = ChannelState.Connecting;
        private Task? _timerLoop;
        // The tick dozes while nothing is outstanding (until a liveness ping is due) instead of waking every interval:
        // 1 while it does. Whoever queues a frame or pauses the channel takes it to 0 and sets _tickWake.
        private int _tickDozing;
        // The connection (its _generation) the tick declared dead: counted and aborted once, not on every tick until the
        // receive loop has seen the abort and the reconnection begins.
        private int _deadGeneration;
        private readonly AutoResetEvent _tickWake = new(false);
        private long _ticks;
        private long _tickWakeups;
        // The longest doze: a tick a minute costs nothing, and a wait's timeout must fit in an int of milliseconds.
        private const double MaxDozeMs = 60_000;
        // The tick dozes only once nothing has arrived for this many intervals (a second by default).
        private const int DozeAfterIntervals = 10;
        // One writer of the socket at a time: the writer loop, or a sender writing what it has just queued.
        private readonly SemaphoreSlim _writeLock = new(1, 1);
        // The session's handlers never block and it asked for them: the WebSocket's completions may run on the socket
        // engine's thread; _inlineNow: they do now (SetInlineCompletions), on this connection and the next ones.
        private readonly bool _inlineSocketCompletions;
        private volatile bool _inlineNow;
        private readonly List<ArraySegment<byte>> _batch = new(MaxBatchMessages);
        private SessionCipher? _cipher;

        /// <param name="onRunDelivered">
        /// Called on the receive loop after the stream messages of a run read together (a burst already in the WebSocket's
        /// buffer, at most 32 messages) were handed to <paramref name="onStreamMessage"/>, and when the loop ends: a
        /// consumer may hold what it was given during the run and write it then.
        /// </param>
        /// <param name="handlersNeverBlock">
        /// The owner's handlers and log never wait synchronously (a port forwarding session's do not; a shell session's
        /// terminal writes do): with <see cref="DataChannelOptions.InlineSocketCompletions"/>, the WebSocket's completions
        /// then run on the socket engine's thread (<see cref="SocketCompletions"/>).
        /// </param>
        public DataChannel(StreamEndpoint endpoint, DataChannelOptions options, Action<AgentMessage> onStreamMessage,
            Func<CancellationToken, Task<StreamEndpoint?>> resume, Action<string>? log = null, Action? onRunDelivered = null,
            Action<byte[], int, int>? onOutputInPlace = null, bool handlersNeverBlock = false)
        {
            _endpoint = endpoint;
            _inlineSocketCompletions = handlersNeverBlock && options.InlineSocketCompletions;
            _inlineNow = _inlineSocketCompletions;
            _options = options;
            _onStreamMessage = onStreamMessage;
            _onOutputInPlace = onOutputInPlace;
            _onRunDelivered = onRunDelivered;
            _resume = resume;
            _log = log ?? (_ => { });
            if (options.SendWindow < 1) throw new ArgumentOutOfRangeException(nameof(options), "SendWindow must be at least 1.");
            _windowSize = options.SendWindow;
            _window = new SemaphoreSlim(options.SendWindow, Math.Max(options.SendWindow, options.MaxSendWindow));
            Statistics.SendWindowIs(_windowSize);
            _rtoMs = options.InitialRetransmitTimeout.TotalMilliseconds;
        }

        public string SessionId => _endpoint.SessionId;

        public DataChannelStatistics Statistics { get; } = new();

        /// <summary>
        /// The WebSocket's completions run on the socket engine's thread (true) or on the thread pool, from now on and on
        /// every later connection; nothing for an owner that did not say its handlers never block.
        /// </summary>
        internal void SetInlineCompletions(bool inline)
        {
            if (!_inlineSocketCompletions) return;
            _inlineNow = inline;
            if (_transport is WebSocketTransport webSocket) webSocket.SetCompletionsInline(inline);
        }

        /// <summary>Completes when the channel has ended, with the reason.</summary>
        public Task<DataChannelClosure> Completion => _closed.Task;

        public bool IsClosed => _closed.Task.IsCompleted;

        /// <summary>True once <see cref="EnableEncryption"/> was called: Output is encrypted, Output/StdErr/ExitCode decrypted.</summary>
        public bool IsEncrypted => Volatile.Read(ref _cipher) != null;

        /// <summary>
        /// Turns on session data encryption (KMSEncryption accepted in the handshake). From now on the Output payloads
        /// this side sends are encrypted (session-manager-plugin streaming.go SendInputDataMessage encrypts PayloadType
        /// Output only), and the Output, StdErr and ExitCode payloads the agent sends are decrypted (streaming.go
        /// HandleOutputMessage; the agent's SendStreamDataMessage encrypts exactly those three). Handshake, challenge,
        /// Size and Flag payloads stay clear in both directions. Call it before the HandshakeResponse goes out: the
        /// agent encrypts only after it has read that response. A payload that does not decrypt ends the channel with
        /// SessionDecryptionFailed. The channel owns the cipher from then on.
        /// </summary>
        public void EnableEncryption(SessionCipher cipher)
        {
            if (cipher == null) throw new ArgumentNullException(nameof(cipher));
            if (Interlocked.CompareExchange(ref _cipher, cipher, null) != null) throw new InvalidOperationException("Encryption is already on for this channel.");
        }

        /// <summary>Ends the channel from this side because of <paramref name="error"/> (it becomes the closure's Error).</summary>
        public async Task FailAsync(Exception error)
        {
            IMessageTransport? transport;
            lock (_gate) transport = _transport;
            Close(new DataChannelClosure(ChannelEnd.Failed, null, error), abort: false);
            if (transport != null && Interlocked.Exchange(ref _closing, 1) == 0)
            {
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                    await transport.CloseAsync(1000, "Bye", cts.Token).ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The socket is going away anyway.
                }
                transport.Abort();
                transport.Dispose();
            }
        }

        private static bool IsEncryptedFromAgent(PayloadType type) =>
            type == PayloadType.Output || type == PayloadType.StdErr || type == PayloadType.ExitCode;

        /// <summary>Raised (on a pool thread) when the channel loses or regains its connection, or closes.</summary>
        public event Action<ChannelState>? StateChanged;

        public ChannelState State
        {
            get
            {
                lock (_gate) return _state;
            }
        }

        /// <summary>The current retransmission timeout.</summary>
        public TimeSpan RetransmitTimeout
        {
            get
            {
                lock (_gate) return TimeSpan.FromMilliseconds(_rtoMs);
            }
        }

        /// <summary>Messages sent and not acknowledged yet.</summary>
        public int UnacknowledgedCount
        {
            get
            {
                lock (_gate) return _unacked.Count;
            }
        }

        /// <summary>Messages that arrived ahead of the expected one and wait in the reorder buffer.</summary>
        public int ReorderBufferCount
        {
            get
            {
                lock (_gate) return _reorder.Count;
            }
        }

        public bool IsPaused
        {
            get
            {
                lock (_gate) return _paused;
            }
        }

        /// <summary>Opens the WebSocket, sends OpenDataChannel and starts receiving.</summary>
        public async Task OpenAsync(CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            var transport = await ConnectTransportAsync(_endpoint, linked.Token).ConfigureAwait(false);
            _timerLoop = Task.Factory.StartNew(TimerLoop, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            Install(transport, _endpoint, resumed: false);
        }

        private async Task<IMessageTransport> ConnectTransportAsync(StreamEndpoint endpoint, CancellationToken cancellationToken)
        {
            IMessageTransport transport;
            if (_options.TransportFactory != null)
            {
                transport = await _options.TransportFactory(endpoint.StreamUrl, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                var webSocket = await WebSocketTransport.ConnectAsync(endpoint.StreamUrl, _options.Transport, cancellationToken).ConfigureAwait(false);
                // After the TLS handshake and the upgrade (certificate validation is not held to the engine's thread).
                if (_inlineNow) webSocket.SetCompletionsInline(true);
                transport = webSocket;
            }
            try
            {
                var open = ClientMessages.OpenDataChannel(endpoint.TokenValue, _options.ClientVersion, Guid.NewGuid(), _clientId);
                await transport.SendTextAsync(open, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                transport.Abort();
                throw;
            }
            return transport;
        }

        /// <summary>
        /// Makes <paramref name="transport"/> the connection: pause cleared (as the agent does on a reconnect), and every
        /// message still unacknowledged (or held) transmitted on it, in order.
        /// </summary>
        private void Install(IMessageTransport transport, StreamEndpoint endpoint, bool resumed)
        {
            int generation;
            int resent = 0;
            lock (_gate)
            {
                if (_closed.Task.IsCompleted)
                {
                    transport.Abort();
                    return;
                }
                _endpoint = endpoint;
                _transport = transport;
                generation = ++_generation;
                _paused = false;
                _pingSentTicks = 0;
                var now = Stopwatch.GetTimestamp();
                _connectedTicks = now;
                _lastAckTicks = now;
                _state = ChannelState.Connected;
                foreach (var o in _unacked)
                {
                    if (o.Attempts > 0) resent++;
                    o.Attempts++;
                    _options.TransmitObserver?.Invoke(o.SequenceNumber, o.Attempts, now);
                    o.LastSentTicks = now;
                    o.FirstSentTicks = now;
                    EnqueueLocked(o.Frame, isAcknowledgement: false);
                }
            }
            if (resent > 0) Statistics.Retransmitted(resent);
            Kick();
            _log($"Data channel connected to {endpoint.StreamUrl.Scheme}://{endpoint.StreamUrl.Authority} (session {endpoint.SessionId}, connection {generation})" +
                 (resumed ? $"; {resent} unacknowledged message(s) sent again." : "."));
            _ = Task.Run(() => ReceiveLoopAsync(transport, generation));
            StateChanged?.Invoke(ChannelState.Connected);
        }

        // ---- sending ------------------------------------------------------------------------------------------------

        /// <summary>
        /// Sends a payload as one or more input_stream_data messages (split at <see cref="DataChannelOptions.MaxPayloadSize"/>),
        /// each numbered, kept until acknowledged and resent when needed. Waits only while the send window is full; while
        /// publication is paused or the connection is being resumed, messages are numbered and held, and go out then.
        /// </summary>
        public async Task SendAsync(PayloadType payloadType, byte[] payload, int offset, int count, CancellationToken cancellationToken)
        {
            if (count == 0 && payloadType == PayloadType.Output) return;
            var max = _options.MaxPayloadSize;
            var position = offset;
            var end = offset + count;
            do
            {
                var size = Math.Min(max, end - position);
                await SendOneAsync(payloadType, payload, position, size, cancellationToken).ConfigureAwait(false);
                position += size;
            }
            while (position < end);
            await WriteInlineAsync().ConfigureAwait(false);
        }

        public Task SendAsync(PayloadType payloadType, byte[] payload, CancellationToken cancellationToken)
            => SendAsync(payloadType, payload, 0, payload.Length, cancellationToken);

        /// <summary>
        /// Sends a control payload (HandshakeResponse, EncChallengeResponse) as one message whatever its size: the agent
        /// parses each message's payload as a whole JSON document (the official client sends these unsplit too).
        /// </summary>
        public async Task SendWholeAsync(PayloadType payloadType, byte[] payload, CancellationToken cancellationToken)
        {
            if (payloadType == PayloadType.Output) throw new ArgumentException("Output is a byte stream: use SendAsync.", nameof(payloadType));
            await SendOneAsync(payloadType, payload, 0, payload.Length, cancellationToken).ConfigureAwait(false);
            await WriteInlineAsync().ConfigureAwait(false);
        }

        public async Task SendFlagAsync(PayloadTypeFlag flag, CancellationToken cancellationToken)
        {
            var payload = new byte[4];
            payload[3] = (byte)flag;
            payload[2] = (byte)((uint)flag >> 8);
            await SendOneAsync(PayloadType.Flag, payload, 0, payload.Length, cancellationToken).ConfigureAwait(false);
            await WriteInlineAsync().ConfigureAwait(false);
        }

        /// <summary>
        /// Numbers and queues one message of <paramref name="count"/> bytes from <paramref name="buffer"/> (encoded, and
        /// encrypted when the session is, before this returns: the caller's buffer is not kept).
        /// </summary>
        private async Task SendOneAsync(PayloadType payloadType, byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            ThrowIfClosed();
            // The window is almost always open: take it without a linked token source (an allocation and two
            // registrations per message otherwise).
            if (!_window.Wait(0))
            {
                using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
                try
                {
                    await _window.WaitAsync(linked.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    ThrowIfClosed();
                    throw;
                }
            }

            int unacked;
            lock (_gate)
            {
                if (_closed.Task.IsCompleted)
                {
                    _window.Release();
                    ThrowIfClosed();
                }
                var cipher = _cipher;
                var sequence = _nextOutgoingSequence++;
                byte[] frame;
                Guid id;
                if (cipher != null && payloadType == PayloadType.Output)
                {
                    var sealedPayload = cipher.Encrypt(buffer, offset, count);
                    frame = AgentMessageCodec.EncodeInputStreamData(sequence, payloadType, sealedPayload, 0, sealedPayload.Length, out id);
                }
                else
                {
                    frame = AgentMessageCodec.EncodeInputStreamData(sequence, payloadType, buffer, offset, count, out id);
                }
                var outgoing = new Outgoing(sequence, id, frame);
                outgoing.Node = _unacked.AddLast(outgoing);
                _unackedBySequence.Add(sequence, outgoing);
                unacked = _unacked.Count;
                if (_transport != null && !_paused)
                {
                    var now = Stopwatch.GetTimestamp();
                    outgoing.Attempts = 1;
                    _options.TransmitObserver?.Invoke(outgoing.SequenceNumber, outgoing.Attempts, now);
                    outgoing.LastSentTicks = now;
                    outgoing.FirstSentTicks = now;
                    EnqueueLocked(outgoing.Frame, isAcknowledgement: false);
                }
            }
            Statistics.UnackedHeld(unacked);
            Statistics.Sent(count);
        }

        // Called with _gate held, so frames enter the outbox in sequence order.
        private void EnqueueLocked(byte[] frame, bool isAcknowledgement)
        {
            Interlocked.Increment(ref _outboxCount);
            WakeTick();
            if (!_outbox.Writer.TryWrite(new OutFrame(frame, isAcknowledgement))) Interlocked.Decrement(ref _outboxCount);
        }

        private void EnqueueAcknowledgement(AgentMessage received) =>
            EnqueueAcknowledgement(received.MessageType, received.MessageId, received.SequenceNumber);

        private void EnqueueAcknowledgement(string messageType, Guid messageId, long sequenceNumber)
        {
            if (Interlocked.Increment(ref _pendingAcknowledgements) > _options.MaxPendingAcknowledgements)
            {
                // The socket is not keeping up (or is dead): the agent resends the message later and it is acknowledged then.
                Interlocked.Decrement(ref _pendingAcknowledgements);
                Statistics.AcknowledgementDropped();
                return;
            }
            var frame = AgentMessageCodec.EncodeAcknowledgement(messageType, messageId, sequenceNumber);
            Interlocked.Increment(ref _outboxCount);
            WakeTick();
            if (!_outbox.Writer.TryWrite(new OutFrame(frame, isAcknowledgement: true)))
            {
                Interlocked.Decrement(ref _outboxCount);
                Interlocked.Decrement(ref _pendingAcknowledgements);
            }
        }

        private void ThrowIfClosed()
        {
            if (_closed.Task.IsCompleted)
            {
                var c = _closed.Task.Result;
                throw new IOException(c.Error?.Message ?? ("The session's data channel is closed." + (string.IsNullOrEmpty(c.Output) ? "" : " " + c.Output)), c.Error);
            }
        }

        /// <summary>
        /// Starts writing what is queued when no write is under way, without waiting for it: the write runs on the caller's
        /// thread as far as the socket takes it at once (no hop to another thread), and the rest continues in the background
        /// while the caller goes on. Whoever holds the write lock writes everything queued before it lets go, and looks again
        /// after letting go, so a frame queued meanwhile is never left behind. Called after frames are queued, outside
        /// <see cref="_gate"/>: by senders, by the receive loop once it has no whole message left to read (so the
        /// acknowledgements of a burst go out in one write), on (re)connection, on resume and by the timer.
        /// </summary>
        private void Kick() => _ = WriteInlineAsync();

        /// <summary>
        /// Writes what is queued on the caller's thread when no write is under way and waits for it (senders: a sender
        /// whose socket is full waits for it, which is its back-pressure); otherwise leaves it to the writer that is busy.
        /// </summary>
        private Task WriteInlineAsync()
        {
            if (Volatile.Read(ref _outboxCount) == 0 || !_writeLock.Wait(0)) return Task.CompletedTask;
            return DrainAsync();
        }

        /// <summary>Entered holding <see cref="_writeLock"/>; writes until nothing is queued, lets go, and takes over again when a frame was queued meanwhile.</summary>
        private async Task DrainAsync()
        {
            while (true)
            {
                bool open;
                try
                {
                    open = await WriteQueuedAsync(_batch).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    open = false;
                    if (!_lifetime.IsCancellationRequested) _log("The channel's writer failed: " + Redactor.RedactPatterns(ex.Message));
                }
                finally
                {
                    _writeLock.Release();
                }
                if (!open || Volatile.Read(ref _outboxCount) == 0 || !_writeLock.Wait(0)) return;
            }
        }

        /// <summary>Takes queued frames and writes them in batches until none is left; false once the channel is ending. Holds <see cref="_writeLock"/>.</summary>
        private async Task<bool> WriteQueuedAsync(List<ArraySegment<byte>> batch)
        {
            var reader = _outbox.Reader;
            while (true)
            {
                batch.Clear();
                var bytes = 0;
                while (bytes < MaxBatchBytes && batch.Count < MaxBatchMessages && reader.TryRead(out var item))
                {
                    Interlocked.Decrement(ref _outboxCount);
                    if (item.IsAcknowledgement) Interlocked.Decrement(ref _pendingAcknowledgements);
                    batch.Add(new ArraySegment<byte>(item.Frame));
                    bytes += item.Frame.Length;
                }
                if (batch.Count == 0) return true;
                IMessageTransport? transport;
                lock (_gate) transport = _transport;
                if (transport == null) continue;
                try
                {
                    await transport.SendBinaryAsync(batch, _lifetime.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (_lifetime.IsCancellationRequested)
                {
                    return false;
                }
                catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is InvalidOperationException || ex is System.Net.Sockets.SocketException)
                {
                    // The receive loop (or the liveness check) sees the broken connection and resumes it.
                    transport.Abort();
                }
            }
        }

        // ---- receiving ----------------------------------------------------------------------------------------------

        private async Task ReceiveLoopAsync(IMessageTransport transport, int generation)
        {
            (bool Lost, Exception? Failure) end = (false, null);
            try
            {
                end = await ReceiveRunsAsync(transport).ConfigureAwait(false);
            }
            finally
            {
                // A run cut short (the connection broke, the channel closed) is still handed on, before any reconnection
                // starts another loop.
                _onRunDelivered?.Invoke();
            }
            if (end.Lost) OnTransportLost(transport, generation, end.Failure);
        }

        /// <summary>Reads until the connection ends: (true, cause) when it was lost and may be resumed.</summary>
        private async Task<(bool Lost, Exception? Failure)> ReceiveRunsAsync(IMessageTransport transport)
        {
            Exception? failure = null;
            var sinceKick = 0;
            var engineTurn = 0;
            try
            {
                while (!_lifetime.IsCancellationRequested)
                {
                    var receiving = transport.ReceiveAsync(_lifetime.Token);
                    var atOnce = receiving.IsCompleted;
                    var message = await receiving.ConfigureAwait(false);
                    if (message.Kind == TransportMessageKind.Close)
                    {
                        _log($"The service closed the WebSocket ({message.CloseStatus} {message.CloseDescription}).");
                        break;
                    }
                    if (message.Kind != TransportMessageKind.Binary) continue;
                    if (!Thread.CurrentThread.IsThreadPoolThread) Statistics.HandledOffPool();
                    // On the socket engine's thread (inline completions), messages that were already there keep the loop
                    // on the thread that every other socket of the process waits on: after a run of them, give it back
                    // (the loop goes on on a pool thread until a read has to wait).
                    if (SocketCompletions.TakeTurn(ref engineTurn, atOnce)) await Task.Yield();
                    Handle(message.Data);
                    if (_closed.Task.IsCompleted) return (false, null);
                    // Acknowledgements wait while whole messages are still buffered (a burst read at once), then go out
                    // in one write: one write per burst instead of one per message, and no hop to another thread. The
                    // consumer writes what it held during the run after them.
                    if (++sinceKick >= MaxAcknowledgementsPerKick || !transport.HasBufferedMessage)
                    {
                        sinceKick = 0;
                        Kick();
                        _onRunDelivered?.Invoke();
                    }
                }
            }
            catch (OperationCanceledException) when (_lifetime.IsCancellationRequested)
            {
                return (false, null);
            }
            catch (TransportMessageTooLargeException ex)
            {
                Close(new DataChannelClosure(ChannelEnd.Failed, null, new IOException(
                    $"The data channel of session {SessionId} was closed: the service side sent a message larger than the " +
                    $"{_options.Transport.MaxMessageBytes / 1024} KiB any Session Manager message needs ({ex.Message}).", ex)));
                transport.Abort();
                return (false, null);
            }
            catch (Exception ex)
            {
                failure = ex;
                _log("The WebSocket failed: " + Redactor.RedactPatterns(ex.Message));
            }
            return (true, failure);
        }

        private void Handle(ArraySegment<byte> data)
        {
            // pause/start publication are taken without validation, as the official client does (messageparser.go Validate).
            var type = AgentMessageCodec.PeekMessageType(data);
            if (type == MessageTypes.PausePublication)
            {
                Pause();
                return;
            }
            if (type == MessageTypes.StartPublication)
            {
                Resume("start_publication");
                return;
            }

            if (type == MessageTypes.Acknowledge && TryHandleAcknowledgeInPlace(data)) return;
            if (type == MessageTypes.OutputStreamData && _onOutputInPlace != null && TryDeliverOutputInPlace(data)) return;

            AgentMessage received;
            try
            {
                received = AgentMessageCodec.Decode(data);
            }
            catch (SsmProtocolException ex)
            {
                Statistics.Malformed();
                _log("Dropped a malformed frame: " + ex.Message);
                return;
            }
            if (!received.IsDigestValid)
            {
                Statistics.Malformed();
                _log($"Dropped {received.MessageType} #{received.SequenceNumber}: payload digest mismatch (it will be resent).");
                return;
            }
            switch (received.MessageType)
            {
                case MessageTypes.Acknowledge:
                    HandleAcknowledge(received);
                    Resume(null);
                    break;
                case MessageTypes.OutputStreamData:
                    Resume(null);
                    HandleStreamMessage(received);
                    break;
                case MessageTypes.ChannelClosed:
                    ChannelClosedPayload? closed = null;
                    try
                    {
                        closed = SsmJson.Deserialize<ChannelClosedPayload>(received.Payload);
                    }
                    catch (SsmProtocolException)
                    {
                        // Close anyway, without the output.
                    }
                    _log("The service closed the channel" + (string.IsNullOrEmpty(closed?.Output) ? "." : ": " + closed!.Output!.Trim()));
                    Close(new DataChannelClosure(ChannelEnd.ClosedByService, closed?.Output, null));
                    break;
                default:
                    _log("Ignored a message of type " + received.MessageType + ".");
                    break;
            }
        }

        /// <summary>
        /// The usual output_stream_data — in order, nothing waiting to be reordered, unencrypted Output, standard header,
        /// digest holding — handed to <see cref="_onOutputInPlace"/> straight from the receive buffer: no payload copy and
        /// no message object per message. False, with nothing done, for anything else: the general path takes it then.
        /// </summary>
        private bool TryDeliverOutputInPlace(ArraySegment<byte> data)
        {
            if (!AgentMessageCodec.TryLocateStandardPayload(data, out var offset, out var count)) return false;
            var span = data.AsSpan();
            if ((PayloadType)BinaryPrimitives.ReadUInt32BigEndian(span.Slice(AgentMessageCodec.PayloadTypeOffset)) != PayloadType.Output) return false;
            if (Volatile.Read(ref _cipher) != null) return false;
            if (count > 0 && !AgentMessageCodec.DigestHolds(span.Slice(AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength),
                    data.Array!, offset, count))
            {
                return false;
            }
            var sequence = BinaryPrimitives.ReadInt64BigEndian(span.Slice(AgentMessageCodec.SequenceNumberOffset));
            lock (_gate)
            {
                if (sequence != _expectedIncomingSequence || _reorder.Count != 0) return false;
                _expectedIncomingSequence++;
            }
            Resume(null);
            EnqueueAcknowledgement(MessageTypes.OutputStreamData, MessageIdCodec.Read(data.Array!, data.Offset + AgentMessageCodec.MessageIdOffset), sequence);
            try
            {
                _onOutputInPlace!(data.Array!, offset, count);
            }
            catch (Exception ex)
            {
                _log($"The handler of Output #{sequence} failed: {Redactor.RedactPatterns(ex.Message)}");
            }
            finally
            {
                Statistics.Received(count);
            }
            return true;
        }

        private void Pause()
        {
            lock (_gate)
            {
                if (_paused) return;
                _paused = true;
                _pausedTicks = Stopwatch.GetTimestamp();
            }
            WakeTick();
            Statistics.Paused();
            _log("The service paused publication.");
        }

        /// <summary>
        /// Ends a pause: on start_publication, and — as the agent's data channel does (datachannel.go handleStreamDataMessage,
        /// handleAcknowledgeMessage) — on any acknowledgement or stream data. Messages held meanwhile go out in order.
        /// </summary>
        private void Resume(string? why)
        {
            var held = 0;
            lock (_gate)
            {
                if (!_paused) return;
                _paused = false;
                if (_transport != null)
                {
                    var now = Stopwatch.GetTimestamp();
                    foreach (var o in _unacked)
                    {
                        if (o.Attempts != 0) continue;
                        o.Attempts = 1;
                        _options.TransmitObserver?.Invoke(o.SequenceNumber, o.Attempts, now);
                        o.LastSentTicks = now;
                        o.FirstSentTicks = now;
                        EnqueueLocked(o.Frame, isAcknowledgement: false);
                        held++;
                    }
                }
            }
            if (held > 0) Kick();
            _log("Publication resumed" + (why == null ? " (the service sent data)" : " (" + why + ")") + (held > 0 ? $"; {held} held message(s) sent." : "."));
        }

        private void HandleAcknowledge(AgentMessage received)
        {
            AcknowledgeContent ack;
            try
            {
                ack = SsmJson.Deserialize<AcknowledgeContent>(received.Payload);
            }
            catch (SsmProtocolException ex)
            {
                _log("Ignored a malformed acknowledgement: " + ex.Message);
                return;
            }
            Acknowledged(ack.AcknowledgedMessageSequenceNumber, Guid.TryParse(ack.AcknowledgedMessageId, out var id) ? id : (Guid?)null);
        }

        /// <summary>
        /// An acknowledgement of the plain shape (<see cref="AcknowledgeReader"/>) in a standard frame whose digest holds,
        /// taken where it lies: no decoded message, no payload copy, no serializer. False leaves the message to the general
        /// path (<see cref="Handle"/>), which decides everything else (and logs what it drops) as before.
        /// </summary>
        private bool TryHandleAcknowledgeInPlace(ArraySegment<byte> data)
        {
            if (!AcknowledgeReader.TryReadFrame(data, out var sequence, out var id)) return false;
            Acknowledged(sequence, id);
            Resume(null);
            return true;
        }

        /// <summary>The agent acknowledged message <paramref name="sequence"/>; it counts only when the id is that message's.</summary>
        private void Acknowledged(long sequence, Guid? acknowledgedId)
        {
            var now = Stopwatch.GetTimestamp();
            int release = 1, grow;
            lock (_gate)
            {
                _lastAckTicks = now;
                if (!_unackedBySequence.TryGetValue(sequence, out var o)) return;
                if (acknowledgedId != o.MessageId) return;
                _unackedBySequence.Remove(sequence);
                _unacked.Remove(o.Node!);
                o.Node = null;
                // Karn: only a message sent once gives a round-trip sample.
                if (o.Attempts == 1) UpdateRtt((now - o.LastSentTicks) / _ticksPerMs);
                grow = SizeWindowLocked(now);
                if (_windowDebt > 0)
                {
                    // The window shrank: this message's permit is withheld.
                    _windowDebt--;
                    release = 0;
                }
            }
            release += grow;
            if (release > 0) _window.Release(release);
        }

        private const int RateIntervals = 8;

        /// <summary>
        /// Counts an acknowledgement and, once per interval (at least the least round trip, and 10 ms), sizes the send window
        /// to twice the bandwidth-delay product (the highest acknowledgement rate of the last <see cref="RateIntervals"/>
        /// intervals times the least round trip), within <see cref="DataChannelOptions.SendWindow"/> and
        /// <see cref="DataChannelOptions.MaxSendWindow"/>. While the window is full, the rate is the window over the round
        /// trip, so the window doubles each interval as long as the round trip stays near its least (nothing queues on the
        /// path) and stops growing at twice what the path holds. Returns the permits to add (it grew); a shrink is paid by
        /// withholding the permits of the next acknowledgements.
        /// </summary>
        private int SizeWindowLocked(long now)
        {
            _rateAcknowledged++;
            if (_options.MaxSendWindow <= _options.SendWindow || _minRttMs == double.MaxValue) return 0;
            if (_rateIntervalStart == 0)
            {
                _rateIntervalStart = now;
                _rateAcknowledged = 0;
                return 0;
            }
            var elapsedMs = (now - _rateIntervalStart) / _ticksPerMs;
            if (elapsedMs < Math.Max(_minRttMs, 10)) return 0;
            _rates[_rateNext] = _rateAcknowledged / elapsedMs;
            _rateNext = (_rateNext + 1) % RateIntervals;
            _rateIntervalStart = now;
            _rateAcknowledged = 0;
            var rate = 0.0;
            foreach (var r in _rates) rate = Math.Max(rate, r);
            var target = (int)Math.Min(_options.MaxSendWindow, Math.Max(_options.SendWindow, Math.Ceiling(2 * rate * _minRttMs)));
            var change = target - _windowSize;
            _windowSize = target;
            Statistics.SendWindowIs(target);
            if (change < 0)
            {
                _windowDebt -= change;
                return 0;
            }
            // A debt left from a shrink is forgiven first.
            var forgiven = Math.Min(_windowDebt, change);
            _windowDebt -= forgiven;
            return change - forgiven;
        }

        /// <summary>RFC 6298: SRTT/RTTVAR smoothing, RTO = SRTT + max(4·RTTVAR, 10 ms), clamped.</summary>
        private void UpdateRtt(double sampleMs)
        {
            _minRttMs = Math.Min(_minRttMs, sampleMs);
            if (_srttMs < 0)
            {
                _srttMs = sampleMs;
                _rttvarMs = sampleMs / 2;
            }
            else
            {
                _rttvarMs = 0.75 * _rttvarMs + 0.25 * Math.Abs(_srttMs - sampleMs);
                _srttMs = 0.875 * _srttMs + 0.125 * sampleMs;
            }
            var rto = _srttMs + Math.Max(4 * _rttvarMs, 10);
            _rtoMs = Math.Min(_options.MaxRetransmitTimeout.TotalMilliseconds, Math.Max(_options.MinRetransmitTimeout.TotalMilliseconds, rto));
        }

        private void HandleStreamMessage(AgentMessage received)
        {
            List<AgentMessage>? ready = null;
            AgentMessage? single = null;
            bool acknowledge;
            int held = 0;
            lock (_gate)
            {
                var seq = received.SequenceNumber;
                if (seq < _expectedIncomingSequence)
                {
                    // Its first acknowledgement may have been lost: acknowledge again.
                    Statistics.Duplicate();
                    acknowledge = true;
                }
                else if (seq == _expectedIncomingSequence)
                {
                    acknowledge = true;
                    single = received;
                    _expectedIncomingSequence++;
                    while (_reorder.TryGetValue(_expectedIncomingSequence, out var next))
                    {
                        _reorder.Remove(_expectedIncomingSequence);
                        ready ??= new List<AgentMessage> { received };
                        ready.Add(next);
                        _expectedIncomingSequence++;
                    }
                }
                else if (seq - _expectedIncomingSequence < _options.ReorderWindow)
                {
                    acknowledge = true;
                    if (_reorder.ContainsKey(seq))
                    {
                        Statistics.Duplicate();
                    }
                    else
                    {
                        Statistics.OutOfOrder();
                        _reorder[seq] = received;
                        held = _reorder.Count;
                    }
                }
                else
                {
                    // Beyond the window: neither kept nor acknowledged, so the agent sends it again later.
                    acknowledge = false;
                    Statistics.IgnoredAhead();
                }
            }
            if (held > 0) Statistics.ReorderHeld(held);
            if (acknowledge) EnqueueAcknowledgement(received);
            if (ready != null)
            {
                foreach (var m in ready) Deliver(m);
            }
            else if (single != null)
            {
                Deliver(single);
            }
        }

        private void Deliver(AgentMessage message)
        {
            // Counted once its handler has run: whoever sees the count sees what the handler did with the message.
            var length = message.Payload.Length;
            try
            {
                DecryptAndHandle(message);
            }
            finally
            {
                Statistics.Received(length);
            }
        }

        private void DecryptAndHandle(AgentMessage message)
        {
            var cipher = Volatile.Read(ref _cipher);
            if (cipher != null && IsEncryptedFromAgent(message.PayloadType))
            {
                try
                {
                    message = message.WithPayload(cipher.Decrypt(message.Payload));
                }
                catch (Exception ex) when (ex is SessionDecryptionException || ex is ObjectDisposedException)
                {
                    if (IsClosed) return;
                    _log($"{message.PayloadType} #{message.SequenceNumber} did not decrypt: the session is closed.");
                    Close(new DataChannelClosure(ChannelEnd.Failed, null, new BastionToolsException(ErrorIds.SessionDecryptionFailed,
                        System.Management.Automation.ErrorCategory.SecurityError,
                        $"An encrypted {message.PayloadType} message (#{message.SequenceNumber}) of session {SessionId} failed AES-GCM authentication: it was altered on the way, or encrypted with another key. The session was closed.",
                        SessionId, "Start a new session; if it happens again, report it: the session data did not come from the agent unchanged.")));
                    return;
                }
            }
            try
            {
                _onStreamMessage(message);
            }
            catch (Exception ex)
            {
                _log($"The handler of {message.PayloadType} #{message.SequenceNumber} failed: {Redactor.RedactPatterns(ex.Message)}");
            }
        }

        // ---- resends and liveness -----------------------------------------------------------------------------------

        /// <summary>
        /// The channel's tick (every <see cref="DataChannelOptions.ResendInterval"/>, as the official client's resend
        /// scheduler, while anything is outstanding) on a background thread of its own, which sleeps in a timed wait on the
        /// channel's lifetime and ends with it. A Task.Delay loop cost two wake-ups per tick (the runtime's timer thread, then
        /// a thread-pool worker, which then spins before it sleeps again): about 10 ms of CPU a second and 80 context
        /// switches with nothing flowing, for as long as a session stays open.
        /// <para>
        /// With nothing outstanding (nothing unacknowledged or queued, no acknowledgement owed, no pause, no ping awaiting
        /// its answer, a connection in place) a tick has nothing to do until the liveness ping is due. Once that has lasted
        /// ten intervals with nothing arriving, the thread dozes until the ping is due instead of waking ten times a
        /// second; queuing a frame (<see cref="EnqueueLocked"/>, an acknowledgement) or a pause wakes it at once
        /// (<see cref="WakeTick"/>), and from then on it ticks every interval again until the channel has been idle that
        /// long once more. Traffic that trickles (a message a second or more) keeps the cadence, so it never wakes the tick.
        /// </para>
        /// </summary>
        private void TimerLoop()
        {
            var handles = new WaitHandle[] { _lifetime.Token.WaitHandle, _tickWake };
            var wait = _options.ResendInterval;
            try
            {
                while (true)
                {
                    var woken = WaitHandle.WaitAny(handles, wait);
                    if (woken == 0) return;
                    if (woken == 1) Interlocked.Increment(ref _tickWakeups);
                    try
                    {
                        Interlocked.Increment(ref _ticks);
                        wait = Tick();
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                    catch (Exception ex)
                    {
                        wait = _options.ResendInterval;
                        _log("The channel's timer failed: " + ex.Message);
                    }
                }
            }
            finally
            {
                // A waker that saw the doze before this still sets the event: it may find it disposed.
                Volatile.Write(ref _tickDozing, 0);
                _tickWake.Dispose();
            }
        }

        /// <summary>Ends the tick's doze (see <see cref="TimerLoop"/>): called after a frame was queued or the channel paused.</summary>
        private void WakeTick()
        {
            // Interlocked on both sides (here after the caller's Interlocked increment, there before it reads the state):
            // either the tick sees what was queued, or this sees it dozing.
            if (Volatile.Read(ref _tickDozing) == 0 || Interlocked.Exchange(ref _tickDozing, 0) == 0) return;
            try
            {
                _tickWake.Set();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        /// <summary>The tick's thread: completes when it has ended (for tests).</summary>
        internal Task? TimerLoopCompletion => _timerLoop;

        /// <summary>Ticks run so far, and how many of them were started early by <see cref="WakeTick"/> (for tests).</summary>
        internal long TickCount => Interlocked.Read(ref _ticks);

        internal long TickWakeups => Interlocked.Read(ref _tickWakeups);

        /// <summary>Whether the tick is dozing until a ping is due (for tests).</summary>
        internal bool TickDozing => Volatile.Read(ref _tickDozing) != 0;

        /// <returns>How long to wait before the next tick.</returns>
        private TimeSpan Tick()
        {
            var now = Stopwatch.GetTimestamp();
            IMessageTransport? transport;
            string? stuck = null;
            var resent = 0;
            var dead = false;
            var newlyDead = false;
            var ping = false;
            var pauseExpired = false;
            var doze = TimeSpan.Zero;
            // Awake now (a doze that ran out is not withdrawn by anyone else); announced again below if still idle.
            Interlocked.Exchange(ref _tickDozing, 0);
            lock (_gate)
            {
                transport = _transport;
                if (transport == null) return _options.ResendInterval;
                pauseExpired = _paused && now - _pausedTicks > _options.PauseTimeout.TotalMilliseconds * _ticksPerMs;

                // Liveness: a ping when nothing has arrived for a while, and the connection is dead when nothing at all
                // arrives within PongTimeout of it (unless bytes are already waiting to be read: after a freeze, say).
                var lastReceived = Math.Max(transport.LastReceivedTimestamp, _connectedTicks);
                if (_pingSentTicks != 0 && lastReceived >= _pingSentTicks) _pingSentTicks = 0;
                var outstanding = _unacked.Count > 0 || Volatile.Read(ref _pendingAcknowledgements) > 0;
                if (_pingSentTicks != 0)
                {
                    if (now - _pingSentTicks > _options.PongTimeout.TotalMilliseconds * _ticksPerMs && !transport.HasPendingInput)
                    {
                        // Counted and logged once; aborted again on each tick (a no-op once it took) until the receive
                        // loop has seen it (OnTransportLost) and the reconnection begins.
                        dead = true;
                        newlyDead = _deadGeneration != _generation;
                        _deadGeneration = _generation;
                    }
                }
                else
                {
                    var quiet = outstanding ? _options.ProbeInterval : _options.PingInterval;
                    if (now - lastReceived > quiet.TotalMilliseconds * _ticksPerMs)
                    {
                        _pingSentTicks = now;
                        ping = true;
                    }
                    else if (!outstanding && !_paused && Volatile.Read(ref _outboxCount) == 0 &&
                             now - lastReceived >= DozeAfterIntervals * _options.ResendInterval.TotalMilliseconds * _ticksPerMs)
                    {
                        // Idle, and nothing has arrived for a while (so traffic that merely trickles keeps the cadence
                        // rather than waking the tick for each message).
                        doze = DozeLocked(now, lastReceived, quiet);
                    }
                }

                if (!dead && !_paused && Volatile.Read(ref _outboxCount) < 2 * _options.SendWindow)
                {
                    resent = ResendLocked(now, out stuck);
                }
            }

            if (resent > 0) Statistics.Retransmitted(resent);
            // Also a safety net: whatever is queued goes out at least once per tick.
            Kick();
            if (pauseExpired) Resume($"nothing ended the pause for {_options.PauseTimeout.TotalSeconds:0} s");
            if (stuck != null)
            {
                Close(new DataChannelClosure(ChannelEnd.Failed, null, new IOException(stuck)));
                return _options.ResendInterval;
            }
            if (dead)
            {
                if (newlyDead)
                {
                    Statistics.DeadConnection();
                    _log($"Nothing arrived from the service for {_options.PongTimeout.TotalSeconds:0} s after a ping: the connection is dead; resuming.");
                }
                transport.Abort();
                return _options.ResendInterval;
            }
            if (ping)
            {
                Statistics.PingSent();
                _ = PingAsync(transport);
            }
            return Volatile.Read(ref _tickDozing) != 0 ? doze : _options.ResendInterval;
        }

        /// <summary>
        /// With _gate held, on an idle channel: how long the tick may doze (until just past <paramref name="quiet"/>
        /// after the last arrival, when the ping is due), announced in _tickDozing when longer than an interval.
        /// </summary>
        private TimeSpan DozeLocked(long now, long lastReceived, TimeSpan quiet)
        {
            var doze = TimeSpan.FromMilliseconds(Math.Min(MaxDozeMs, (lastReceived - now) / _ticksPerMs + 1 + quiet.TotalMilliseconds));
            if (doze <= _options.ResendInterval) return doze;
            // Announced, then the state read again (see WakeTick): unacknowledged messages and pauses change under
            // _gate, held here; acknowledgements are queued without it.
            Interlocked.Exchange(ref _tickDozing, 1);
            if (Volatile.Read(ref _outboxCount) != 0 || Volatile.Read(ref _pendingAcknowledgements) != 0) Volatile.Write(ref _tickDozing, 0);
            return doze;
        }

        private async Task PingAsync(IMessageTransport transport)
        {
            try
            {
                await transport.PingAsync(_lifetime.Token).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // A ping that cannot be written is answered by the liveness check: nothing arrives, the connection is dropped.
            }
        }

        /// <summary>
        /// Oldest first: overdue messages (RTO × 2^(attempts−1), capped) are resent, at most <see cref="DataChannelOptions.ResendBurst"/>
        /// per interval; once no acknowledgement has arrived for <see cref="DataChannelOptions.CongestionTimeout"/>, only the
        /// oldest is resent, so a congested channel is probed, not flooded.
        /// </summary>
        private int ResendLocked(long now, out string? stuck)
        {
            stuck = null;
            var first = _unacked.First;
            if (first == null) return 0;
            var oldest = first.Value;
            if (oldest.Attempts > 0 && now - oldest.FirstSentTicks > _options.UnacknowledgedTimeout.TotalMilliseconds * _ticksPerMs)
            {
                stuck = $"The agent has not acknowledged message {oldest.SequenceNumber} of session {SessionId} for " +
                        $"{_options.UnacknowledgedTimeout.TotalMinutes:0.#} minute(s) although the connection is alive: the session is stuck.";
                return 0;
            }
            var congested = now - Math.Max(_lastAckTicks, oldest.FirstSentTicks) > _options.CongestionTimeout.TotalMilliseconds * _ticksPerMs;
            var budget = congested ? 1 : _options.ResendBurst;
            var resent = 0;
            for (var node = first; node != null && budget > 0; node = node.Next)
            {
                var o = node.Value;
                if (o.Attempts == 0) break; // held (paused): goes out when the pause ends
                var backoff = Math.Min(_options.MaxResendBackoff.TotalMilliseconds, _rtoMs * Math.Pow(2, Math.Min(o.Attempts - 1, 16)));
                if (now - o.LastSentTicks < backoff * _ticksPerMs)
                {
                    if (congested) break;
                    continue;
                }
                o.Attempts++;
                _options.TransmitObserver?.Invoke(o.SequenceNumber, o.Attempts, now);
                o.LastSentTicks = now;
                EnqueueLocked(o.Frame, isAcknowledgement: false);
                resent++;
                budget--;
            }
            return resent;
        }

        // ---- losing and resuming the connection ---------------------------------------------------------------------

        private void OnTransportLost(IMessageTransport transport, int generation, Exception? cause)
        {
            lock (_gate)
            {
                if (generation != _generation || _closed.Task.IsCompleted) return;
                _transport = null;
                _state = ChannelState.Reconnecting;
            }
            transport.Abort();
            transport.Dispose();
            if (_lifetime.IsCancellationRequested) return;
            StateChanged?.Invoke(ChannelState.Reconnecting);
            _ = Task.Run(() => ReconnectLoopAsync(cause));
        }

        private async Task ReconnectLoopAsync(Exception? cause)
        {
            var stopwatch = Stopwatch.StartNew();
            var clock = _options.ReconnectElapsed;
            TimeSpan Lost() => clock == null ? stopwatch.Elapsed : clock(stopwatch.Elapsed);
            var budget = _options.ReconnectTimeout;
            var random = new Random();
            var last = cause;
            var attempt = 0;
            while (!_lifetime.IsCancellationRequested)
            {
                attempt++;
                if (attempt > 1)
                {
                    var baseMs = Math.Min(_options.ReconnectMaxDelay.TotalMilliseconds,
                        _options.ReconnectInitialDelay.TotalMilliseconds * Math.Pow(2, Math.Min(attempt - 2, 20)));
                    var delay = TimeSpan.FromMilliseconds(baseMs * (0.75 + 0.5 * random.NextDouble()));
                    if (Lost() + delay >= budget) break;
                    try
                    {
                        await Task.Delay(delay, _lifetime.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
                var remaining = budget - Lost();
                if (remaining <= TimeSpan.Zero) break;
                Statistics.ResumeAttempted();
                var limit = TimeSpan.FromTicks(Math.Min(_options.ResumeAttemptTimeout.Ticks, _options.FirstResumeAttemptTimeout.Ticks * attempt));
                using var attemptCts = CancellationTokenSource.CreateLinkedTokenSource(_lifetime.Token);
                attemptCts.CancelAfter(remaining < limit ? remaining : limit);
                try
                {
                    _log($"Resuming session {SessionId} (attempt {attempt}, {Lost().TotalSeconds:0} s since the connection was lost).");
                    var endpoint = await _resume(attemptCts.Token).ConfigureAwait(false);
                    if (endpoint == null)
                    {
                        Close(new DataChannelClosure(ChannelEnd.SessionExpired, null, new IOException(
                            $"Session {SessionId} timed out while its connection was lost: the service no longer resumes it.")));
                        return;
                    }
                    var transport = await ConnectTransportAsync(endpoint, attemptCts.Token).ConfigureAwait(false);
                    Statistics.Reconnected();
                    Install(transport, endpoint, resumed: true);
                    _log($"Session {SessionId} resumed after {Lost().TotalSeconds:0.0} s ({attempt} attempt(s)).");
                    return;
                }
                catch (OperationCanceledException) when (_lifetime.IsCancellationRequested)
                {
                    return;
                }
                catch (SessionResumeRefusedException ex)
                {
                    Close(new DataChannelClosure(ex.SessionGone ? ChannelEnd.SessionExpired : ChannelEnd.Failed, null, ex));
                    return;
                }
                catch (OperationCanceledException ex)
                {
                    last = new TimeoutException($"the attempt took longer than {limit.TotalSeconds:0} s", ex);
                    _log($"Resume attempt {attempt} failed: {last.Message}.");
                }
                catch (Exception ex)
                {
                    last = ex;
                    _log($"Resume attempt {attempt} failed: {Redactor.RedactPatterns(ex.Message)}");
                }
            }
            if (_lifetime.IsCancellationRequested) return;
            Close(new DataChannelClosure(ChannelEnd.Failed, null, new IOException(
                $"The connection to session {SessionId} was lost and could not be resumed within {Describe(budget)} ({attempt} attempt(s)): " +
                Redactor.RedactPatterns(last?.Message ?? "unknown error"), last)));
        }

        private static string Describe(TimeSpan span) =>
            span.TotalMinutes >= 1 ? $"{span.TotalMinutes:0.#} minute(s)" : $"{span.TotalSeconds:0.#} s";

        // ---- ending -------------------------------------------------------------------------------------------------

        /// <summary>Waits until every message sent so far has been acknowledged, the channel closes, or the timeout passes.</summary>
        public async Task FlushAsync(TimeSpan timeout, CancellationToken cancellationToken)
        {
            var deadline = Stopwatch.StartNew();
            while (UnacknowledgedCount > 0 && !IsClosed && deadline.Elapsed < timeout)
            {
                await Task.Delay(10, cancellationToken).ConfigureAwait(false);
            }
        }

        /// <summary>Ends the channel from this side: the WebSocket is closed politely and all waiters released.</summary>
        public async Task CloseAsync()
        {
            if (Interlocked.Exchange(ref _closing, 1) == 1) return;
            IMessageTransport? transport;
            lock (_gate) transport = _transport;
            Close(new DataChannelClosure(ChannelEnd.ClosedByClient, "Closed by the client.", null), abort: false);
            if (transport != null)
            {
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                    await transport.CloseAsync(1000, "Bye", cts.Token).ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The socket is going away anyway.
                }
                transport.Abort();
                transport.Dispose();
            }
        }

        private void Close(DataChannelClosure closure, bool abort = true)
        {
            if (!_closed.TrySetResult(closure)) return;
            IMessageTransport? transport;
            lock (_gate)
            {
                transport = _transport;
                _transport = null;
                _state = ChannelState.Closed;
                _reorder.Clear();
                // Senders encrypt under this lock after checking the channel is open: the keys go only after them.
                Interlocked.Exchange(ref _cipher, null)?.Dispose();
            }
            _outbox.Writer.TryComplete();
            _lifetime.Cancel();
            if (abort) transport?.Abort();
            StateChanged?.Invoke(ChannelState.Closed);
        }

        public void Dispose()
        {
            // The lifetime source is not disposed: loops still finishing may read its token.
            CloseAsync().GetAwaiter().GetResult();
        }
    }
}
