using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The agent's side of one session's data channel, as amazon-ssm-agent's datachannel.go behaves, plus the bits of
    /// MGS a client sees (channel_closed, the WebSocket). Its state outlives WebSocket connections: the outgoing sequence
    /// number and the unacknowledged messages (resent, oldest first, after the retransmission timeout), the expected
    /// incoming sequence number and the buffer of messages that arrived early.
    /// <para>
    /// Writes wait for room in the connection's bounded queue (the agent writes to its WebSocket synchronously); with no
    /// connection attached nothing waits and stream messages are only kept (up to OutgoingMessageBufferCapacity).
    /// </para>
    /// </summary>
    internal sealed class AgentChannel
    {
        private readonly object _gate = new();
        private readonly SandboxAgent _agent;
        private readonly SemaphoreSlim _inputLock = new(1, 1);
        // datachannel.go StreamDataSequenceNumberMutex: held from taking a sequence number until the (blocking) write is done.
        private readonly SemaphoreSlim _streamSendLock = new(1, 1);
        private readonly LinkedList<Pending> _unacked = new();
        // An index of _unacked by sequence number: the agent walks its list for each acknowledgement (ProcessAcknowledgedMessage);
        // the result is the same, in O(1), so a long list under heavy loss does not make the double CPU-bound.
        private readonly Dictionary<long, LinkedListNode<Pending>> _unackedIndex = new();
        private readonly Dictionary<long, AgentMessage> _early = new();
        private readonly CancellationTokenSource _life = new();
        private readonly TaskCompletionSource<HandshakeResponsePayload> _handshakeResponse = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource<bool> _challengeConfirmed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        // datachannel.go encryptionEnabled / blockCipher: set when the handshake asks for KMSEncryption; the cipher once
        // the client's data key was decrypted.
        private bool _encryptionRequested;
        private AgentBlockCipher? _cipher;
        private byte[]? _challenge;
        private int _tampered;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private long _nextSequence;
        private long _expectedSequence;
        private double _roundTripTime;
        private double _roundTripTimeVariation;
        private TimeSpan _retransmissionTimeout;
        private AgentConnection? _connection;
        private int _connectionCount;
        private AgentPlugin? _plugin;
        private bool _started;
        private int _ended;
        private bool _handshakeComplete;
        private bool _handshakeSkipped;
        private int? _faultSeed;
        private readonly Dictionary<ulong, int> _faultOccurrences = new Dictionary<ulong, int>();
        private (AgentMessage Message, long Token)? _heldIncoming;
        private long _holdToken;
        // datachannel.go Pause (IsActive() == !Pause): set by pause_publication from MGS to the agent.
        private bool _paused;
        private TaskCompletionSource? _resumed;
        // The idle session timeout's clock: the last stream data either way (ticks of _clock).
        private long _lastActivityTicks;

        public AgentChannel(SandboxAgent agent, SandboxSession session)
        {
            _agent = agent;
            Session = session;
            _roundTripTime = agent.Options.InitialRoundTripTime.Ticks;
            _retransmissionTimeout = agent.Options.InitialRetransmissionTimeout;
        }

        public SandboxSession Session { get; }
        public SandboxChannelCounters Counters { get; } = new();
        public SandboxFaultOptions? SessionFaults { get; set; }
        public SandboxFaultOptions Faults => SessionFaults ?? _agent.Faults;
        public CancellationToken Lifetime => _life.Token;
        public bool IsEnded => Volatile.Read(ref _ended) != 0;
        /// <summary>ClientVersion of the latest OpenDataChannel frame (MGS sees it; the agent does not).</summary>
        public string? OpenDataChannelClientVersion { get; private set; }
        /// <summary>ClientVersion of the HandshakeResponse: what the agent bases mux/keepalive decisions on.</summary>
        public string? HandshakeClientVersion { get; private set; }
        public SandboxAgentOptions Options => _agent.Options;
        public SandboxWorld World => _agent.Host.World;
        public SandboxInstance? Instance => World.FindInstance(Session.Target);
        public string AgentVersion => Instance?.AgentVersion ?? "3.3.2299.0";
        /// <summary>The agent runs on Windows (the instance's PlatformType): commands go to powershell.exe.</summary>
        public bool IsWindows => string.Equals(Instance?.PlatformType, "Windows", StringComparison.OrdinalIgnoreCase);
        /// <summary>Whether the mux plugin runs smux keepalive; null when the session is not (yet) a mux session.</summary>
        public bool? SmuxKeepAlive
        {
            get
            {
                AgentPlugin? plugin;
                lock (_gate) plugin = _plugin;
                return ((plugin as PortPlugin)?.Mode as MuxPortSession)?.KeepAliveEnabled;
            }
        }
        /// <summary>A short description of the running plugin ("mux", "basic", "shell", "command"), null before it starts.</summary>
        public string? PluginKind => _plugin?.Kind;
        public int UnackedCount
        {
            get { lock (_gate) return _unacked.Count; }
        }
        public long NextSequenceNumber
        {
            get { lock (_gate) return _nextSequence; }
        }
        public long ExpectedSequenceNumber
        {
            get { lock (_gate) return _expectedSequence; }
        }
        /// <summary>The agent's Pause flag (pause_publication received from MGS, not yet cleared).</summary>
        public bool IsPaused
        {
            get { lock (_gate) return _paused; }
        }

        private sealed class Pending
        {
            public Pending(long sequence, byte[] frame, TimeSpan sentAt)
            {
                Sequence = sequence;
                Frame = frame;
                SentAt = sentAt;
            }

            public long Sequence { get; }
            public byte[] Frame { get; }
            public TimeSpan SentAt { get; set; }
        }

        private TimeSpan Now => _clock.Elapsed;

        // ---- connections -------------------------------------------------------------------------------------------

        /// <summary>Runs one accepted, authenticated WebSocket until it closes. The first connection starts the plugin.</summary>
        public async Task RunConnectionAsync(System.Net.WebSockets.WebSocket socket, Action? abortTransport, OpenDataChannelInput open, CancellationToken stopping, WriteBatchingStream? writeBatching = null)
        {
            var faults = Faults;
            AgentConnection connection;
            AgentConnection? previous;
            bool start;
            lock (_gate)
            {
                previous = _connection;
                connection = new AgentConnection(socket, abortTransport, Counters, faults.KillAfterBytes, ++_connectionCount, Options.ConnectionQueueBytes, writeBatching);
                _connection = connection;
                OpenDataChannelClientVersion = open.ClientVersion;
                start = !_started;
                _started = true;
            }
            previous?.Abort(isKill: false);
            Interlocked.Increment(ref Counters._connections);
            _agent.Host.Sessions.MarkConnected(Session.SessionId);
            _agent.Log("session " + Session.SessionId + ": connection " + connection.Number + " open (client " + open.ClientVersion + ")");
            if (faults.ByeAfterMs > 0) _ = ByeLaterAsync(connection, faults.ByeAfterMs);
            // MGS tells a client to hold its input while the agent's side is not connected: with the option, every new
            // connection starts with pause_publication, before the agent's first message (the HandshakeRequest).
            if (Options.PausePublicationOnConnect) SendPublication(pause: true);
            // On a reconnect nothing special happens: the resend scheduler sends the oldest unacknowledged message again.
            if (start)
            {
                // The plugin and whether it skips the handshake are known before the first input can arrive.
                AgentPlugin? plugin = null;
                string? error = null;
                try
                {
                    plugin = AgentPlugin.Create(this);
                    if (!NeedsHandshake(plugin))
                    {
                        lock (_gate) _handshakeSkipped = true;
                    }
                }
                catch (InvalidOperationException ex)
                {
                    error = ex.Message;
                }
                MarkActivity();
                _ = Task.Run(IdleWatchAsync);
                _ = Task.Run(() => plugin == null ? EndAsync(error, drain: false) : RunSessionAsync(plugin));
            }

            try
            {
                await ReadLoopAsync(connection, stopping).ConfigureAwait(false);
            }
            finally
            {
                lock (_gate)
                {
                    if (ReferenceEquals(_connection, connection)) _connection = null;
                }
                if (!IsEnded) _agent.Host.Sessions.MarkDisconnected(Session.SessionId);
                // Let the writer finish a close handshake in progress, then make sure the socket is gone.
                await Task.WhenAny(connection.Writer, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
                connection.Abort(isKill: false);
                _agent.Log("session " + Session.SessionId + ": connection " + connection.Number + " closed");
            }
        }

        private async Task ByeLaterAsync(AgentConnection connection, int afterMs)
        {
            try
            {
                await Task.Delay(afterMs, _life.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            Bye(connection);
        }

        /// <summary>Closes the current connection with 1000 "Bye", as the service does; the session lives on.</summary>
        public bool Bye() => _connectionSnapshot() is { } c && Bye(c);

        private bool Bye(AgentConnection connection)
        {
            if (connection.IsAborted || connection.IsClosing) return false;
            Interlocked.Increment(ref Counters._byes);
            connection.CloseAfterQueued("Bye", CloseAbortAfter);
            return true;
        }

        /// <summary>Aborts the current connection (no close frame); the session lives on.</summary>
        public bool Kill()
        {
            var c = _connectionSnapshot();
            if (c == null || c.IsAborted) return false;
            c.Abort(isKill: true);
            return true;
        }

        private AgentConnection? _connectionSnapshot()
        {
            lock (_gate) return _connection;
        }

        /// <summary>A close that cannot get out (the client does not read) becomes an abort after this long.</summary>
        private static readonly TimeSpan CloseAbortAfter = TimeSpan.FromSeconds(10);

        /// <summary>Bytes queued for the current connection and producers waiting for room (for tests and the control endpoint).</summary>
        public (long QueuedBytes, int Waiters) ConnectionQueue
        {
            get
            {
                var c = _connectionSnapshot();
                return c == null ? (0, 0) : (c.QueuedBytes, c.WaiterCount);
            }
        }

        private async Task ReadLoopAsync(AgentConnection connection, CancellationToken stopping)
        {
            var socket = connection.Socket;
            var buffer = new byte[64 * 1024];
            using var message = new System.IO.MemoryStream();
            try
            {
                while (!stopping.IsCancellationRequested)
                {
                    var result = await socket.ReceiveAsync(buffer.AsMemory(), stopping).ConfigureAwait(false);
                    if (result.MessageType == System.Net.WebSockets.WebSocketMessageType.Close)
                    {
                        connection.CloseAfterQueued(socket.CloseStatusDescription ?? "");
                        return;
                    }
                    connection.CountBytes(result.Count);
                    Interlocked.Add(ref Counters._bytesReceived, result.Count);
                    ArraySegment<byte> bytes;
                    if (message.Length == 0 && result.EndOfMessage)
                    {
                        // A whole message in one read (the usual case): decoded where it lies.
                        bytes = new ArraySegment<byte>(buffer, 0, result.Count);
                    }
                    else
                    {
                        message.Write(buffer, 0, result.Count);
                        if (message.Length > SandboxAgent.MaxMessageBytes) throw new System.Net.WebSockets.WebSocketException("Message too large.");
                        if (!result.EndOfMessage) continue;
                        bytes = new ArraySegment<byte>(message.ToArray());
                        message.SetLength(0);
                    }
                    if (result.MessageType != System.Net.WebSockets.WebSocketMessageType.Binary) continue;
                    Interlocked.Increment(ref Counters._messagesReceived);
                    if (TryProcessAcknowledgeInPlace(bytes)) continue;
                    AgentMessage decoded;
                    try
                    {
                        decoded = AgentFrames.Decode(bytes);
                    }
                    catch (SsmProtocolException ex)
                    {
                        _agent.Log("session " + Session.SessionId + ": undecodable message: " + ex.Message);
                        continue;
                    }
                    await ReceiveWithFaultsAsync(decoded).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is System.Net.WebSockets.WebSocketException || ex is System.IO.IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is System.Net.HttpListenerException)
            {
                // Closed, aborted or killed.
            }
        }

        // ---- fault injection ---------------------------------------------------------------------------------------

        // Fault draws are keyed by the message, not by arrival order: a draw is a hash of (seed, direction, message
        // type, sequence number, how many times this message was seen before, which fault). The same seed then gives
        // the same faults to the same messages however acknowledgements, handshake replies and resends interleave
        // with them (an RNG drawn in arrival order did not: "same seed" runs dropped different data messages).
        private int FaultSeed()
        {
            lock (_gate)
            {
                _faultSeed ??= Faults.Seed ?? System.Security.Cryptography.RandomNumberGenerator.GetInt32(int.MaxValue);
                return _faultSeed.Value;
            }
        }

        /// <summary>Forgets the seed and the per-message counts so the next draw starts from the (new) seed.</summary>
        public void ResetRandom()
        {
            lock (_gate)
            {
                _faultSeed = null;
                _faultOccurrences.Clear();
            }
        }

        private static ulong Mix(ulong x)
        {
            // SplitMix64 finaliser.
            x += 0x9E3779B97F4A7C15UL;
            x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
            x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
            return x ^ (x >> 31);
        }

        private static double Unit(ulong key, ulong salt) => (Mix(key ^ Mix(salt)) >> 11) * (1.0 / (1UL << 53));

        private (bool Drop, bool Duplicate, bool Hold) Draw(bool outbound, string messageType, long sequenceNumber)
        {
            var f = Faults;
            if (!f.IsMessageFaulting || !f.Applies(outbound)) return (false, false, false);
            var key = Mix((ulong)(uint)FaultSeed());
            key = Mix(key ^ (outbound ? 1UL : 2UL));
            foreach (var c in messageType) key = Mix(key ^ c);
            key = Mix(key ^ (ulong)sequenceNumber);
            int occurrence;
            lock (_gate)
            {
                _faultOccurrences.TryGetValue(key, out occurrence);
                _faultOccurrences[key] = occurrence + 1;
            }
            key = Mix(key ^ (ulong)occurrence);
            if (f.DropRate > 0 && Unit(key, 1) < f.DropRate) return (true, false, false);
            var duplicate = f.DuplicateRate > 0 && Unit(key, 2) < f.DuplicateRate;
            var hold = f.ReorderRate > 0 && Unit(key, 3) < f.ReorderRate;
            return (false, duplicate, hold);
        }

        private static string FrameMessageType(byte[] frame) =>
            frame.Length >= AgentMessageCodec.MessageTypeOffset + AgentMessageCodec.MessageTypeLength
                ? Encoding.ASCII.GetString(frame, AgentMessageCodec.MessageTypeOffset, AgentMessageCodec.MessageTypeLength).TrimEnd(' ', '\0')
                : string.Empty;

        private static long FrameSequenceNumber(byte[] frame) =>
            frame.Length >= AgentMessageCodec.SequenceNumberOffset + 8
                ? System.Buffers.Binary.BinaryPrimitives.ReadInt64BigEndian(frame.AsSpan(AgentMessageCodec.SequenceNumberOffset, 8))
                : -1;

        private async Task ReceiveWithFaultsAsync(AgentMessage message)
        {
            var (drop, duplicate, hold) = Draw(outbound: false, message.MessageType, message.SequenceNumber);
            if (drop)
            {
                Interlocked.Increment(ref Counters._dropped);
                if (message.MessageType == MessageTypes.InputStreamData) Counters.RecordDroppedInput(message.SequenceNumber);
                return;
            }
            if (duplicate) Interlocked.Increment(ref Counters._duplicated);
            (AgentMessage Message, long Token)? release = null;
            lock (_gate)
            {
                if (hold && _heldIncoming == null)
                {
                    Interlocked.Increment(ref Counters._reordered);
                    var token = ++_holdToken;
                    _heldIncoming = (message, token);
                    _ = ReleaseHeldLaterAsync(token);
                    return;
                }
                release = _heldIncoming;
                _heldIncoming = null;
            }
            await ProcessAsync(message).ConfigureAwait(false);
            if (duplicate) await ProcessAsync(message).ConfigureAwait(false);
            if (release != null) await ProcessAsync(release.Value.Message).ConfigureAwait(false);
        }

        private async Task ReleaseHeldLaterAsync(long token)
        {
            await Task.Delay(200).ConfigureAwait(false);
            AgentMessage? message = null;
            lock (_gate)
            {
                if (_heldIncoming is { } held && held.Token == token)
                {
                    message = held.Message;
                    _heldIncoming = null;
                }
            }
            if (message != null) await ProcessAsync(message).ConfigureAwait(false);
        }

        /// <summary>
        /// Puts a frame on the current connection through the outbound faults, waiting for room in its queue (the
        /// agent's blocking WebSocket write). False at once when no connection is attached (SendMessage fails: "Connection
        /// is closed"), and false when the connection is aborted, replaced or closed while waiting.
        /// </summary>
        private async Task<bool> TransmitAsync(byte[] frame, bool faultable)
        {
            var connection = _connectionSnapshot();
            if (connection == null || connection.IsAborted || connection.IsClosing) return false;
            var faults = Faults;
            // The frame's type and number are read only when outbound message faults are on (Draw is a no-op otherwise).
            var (drop, duplicate, hold) = faultable && faults.IsMessageFaulting && faults.Applies(outbound: true)
                ? Draw(outbound: true, FrameMessageType(frame), FrameSequenceNumber(frame))
                : (false, false, false);
            if (drop)
            {
                Interlocked.Increment(ref Counters._dropped);
                return true;
            }
            if (duplicate) Interlocked.Increment(ref Counters._duplicated);
            if (hold) Interlocked.Increment(ref Counters._reordered);
            return await connection.EnqueueAsync(frame, duplicate, hold).ConfigureAwait(false);
        }

        // ---- receiving ---------------------------------------------------------------------------------------------

        private async Task ProcessAsync(AgentMessage message)
        {
            if (!message.IsDigestValid)
            {
                Interlocked.Increment(ref Counters._digestFailures);
                return;
            }
            switch (message.MessageType)
            {
                case MessageTypes.Acknowledge:
                    Interlocked.Increment(ref Counters._acksReceived);
                    SetPaused(false); // handleAcknowledgeMessage: Pause = false
                    HandleAcknowledge(message);
                    return;
                case MessageTypes.InputStreamData:
                    MarkActivity();
                    await _inputLock.WaitAsync().ConfigureAwait(false);
                    try
                    {
                        await HandleStreamDataAsync(message).ConfigureAwait(false);
                    }
                    finally
                    {
                        _inputLock.Release();
                    }
                    return;
                default:
                    // channel_closed, start/pause_publication and anything else from a client mean nothing to the agent here.
                    return;
            }
        }

        /// <summary>
        /// An acknowledge frame with a standard header, while no inbound message fault applies and no message is held
        /// back: what ReceiveWithFaultsAsync and ProcessAsync do with it (digest check, counters, Pause cleared, the
        /// acknowledged message forgotten), read where it lies instead of through a decoded message. False for anything
        /// else, which takes the ordinary path.
        /// </summary>
        private bool TryProcessAcknowledgeInPlace(ArraySegment<byte> frame)
        {
            if (!AgentFrames.TryReadStandardAcknowledge(frame, out var digestValid, out var payload)) return false;
            var faults = Faults;
            if (faults.IsMessageFaulting && faults.Applies(outbound: false)) return false;
            lock (_gate)
            {
                if (_heldIncoming != null) return false;
            }
            if (!digestValid)
            {
                Interlocked.Increment(ref Counters._digestFailures);
                return true;
            }
            Interlocked.Increment(ref Counters._acksReceived);
            SetPaused(false); // handleAcknowledgeMessage: Pause = false
            HandleAcknowledge(payload);
            return true;
        }

        private void HandleAcknowledge(AgentMessage message) => HandleAcknowledge(message.Payload);

        private void HandleAcknowledge(ReadOnlySpan<byte> payload)
        {
            // The exact form clients write is read directly; anything else goes through the JSON serializer as before.
            if (!AgentFrames.TryReadCanonicalAcknowledge(payload, out var acknowledged))
            {
                try
                {
                    acknowledged = SsmJson.Deserialize<AcknowledgeContent>(payload.ToArray()).AcknowledgedMessageSequenceNumber;
                }
                catch (SsmProtocolException)
                {
                    return;
                }
            }
            lock (_gate)
            {
                if (_unackedIndex.TryGetValue(acknowledged, out var node))
                {
                    UpdateRetransmissionTimeout(Now - node.Value.SentAt);
                    _unacked.Remove(node);
                    _unackedIndex.Remove(acknowledged);
                }
            }
        }

        // datachannel.go calculateRetransmissionTimeout: Jacobson/Karels with RTT 1/8, RTTVAR 1/4, floor 10 ms, cap 1 s.
        private void UpdateRetransmissionTimeout(TimeSpan sample)
        {
            double rtt = sample.Ticks;
            _roundTripTimeVariation = 0.75 * _roundTripTimeVariation + 0.25 * Math.Abs(_roundTripTime - rtt);
            _roundTripTime = 0.875 * _roundTripTime + 0.125 * rtt;
            var rto = TimeSpan.FromTicks((long)(_roundTripTime + Math.Max(TimeSpan.FromMilliseconds(10).Ticks, 4 * _roundTripTimeVariation)));
            _retransmissionTimeout = rto > Options.MaxRetransmissionTimeout ? Options.MaxRetransmissionTimeout : rto;
        }

        public TimeSpan RetransmissionTimeout
        {
            get { lock (_gate) return _retransmissionTimeout; }
        }

        private async Task HandleStreamDataAsync(AgentMessage message)
        {
            SetPaused(false); // handleStreamDataMessage: Pause = false
            long expected;
            lock (_gate) expected = _expectedSequence;
            if (message.SequenceNumber == expected)
            {
                if (!await DeliverAsync(message).ConfigureAwait(false)) return; // not ready: no ack, the client resends
                await SendAcknowledgeAsync(message).ConfigureAwait(false);
                lock (_gate) _expectedSequence = expected + 1;
                while (true)
                {
                    AgentMessage? next;
                    lock (_gate)
                    {
                        if (!_early.TryGetValue(_expectedSequence, out next)) break;
                    }
                    if (!await DeliverAsync(next).ConfigureAwait(false)) break;
                    lock (_gate)
                    {
                        _early.Remove(_expectedSequence);
                        _expectedSequence++;
                    }
                }
            }
            else if (message.SequenceNumber > expected)
            {
                Interlocked.Increment(ref Counters._outOfOrderReceived);
                bool keep;
                lock (_gate) keep = _early.Count < Options.IncomingMessageBufferCapacity;
                if (!keep) return;
                await SendAcknowledgeAsync(message).ConfigureAwait(false);
                lock (_gate) _early[message.SequenceNumber] = message;
            }
            else
            {
                Interlocked.Increment(ref Counters._duplicatesReceived);
                await SendAcknowledgeAsync(message).ConfigureAwait(false);
            }
        }

        private async Task SendAcknowledgeAsync(AgentMessage received)
        {
            // The agent's acknowledge is field for field the client's: type acknowledge, seq 0, flags 3, PayloadType 0.
            var frame = AgentFrames.EncodeAcknowledge(received.MessageType, received.MessageId, received.SequenceNumber)
                ?? AgentMessageCodec.Encode(ClientMessages.Acknowledge(received));
            var delay = Faults.AckDelayMs;
            if (delay > 0)
            {
                _ = Task.Run(async () =>
                {
                    await Task.Delay(delay).ConfigureAwait(false);
                    if (await TransmitAsync(frame, faultable: true).ConfigureAwait(false)) Interlocked.Increment(ref Counters._acksSent);
                });
                return;
            }
            // The agent acknowledges from its WebSocket read goroutine with a blocking write: a full socket stops its reading too.
            if (await TransmitAsync(frame, faultable: true).ConfigureAwait(false)) Interlocked.Increment(ref Counters._acksSent);
        }

        /// <summary>Hands an in-order message to the data channel / plugin. False means "not ready": do not acknowledge.</summary>
        private async Task<bool> DeliverAsync(AgentMessage message)
        {
            Interlocked.Increment(ref Counters._dataReceived);
            switch (message.PayloadType)
            {
                case PayloadType.HandshakeResponse:
                    try
                    {
                        _handshakeResponse.TrySetResult(SsmJson.Deserialize<HandshakeResponsePayload>(message.Payload));
                    }
                    catch (SsmProtocolException ex)
                    {
                        _agent.Log("session " + Session.SessionId + ": bad HandshakeResponse: " + ex.Message);
                    }
                    return true;
                case PayloadType.EncChallengeResponse:
                    return HandleChallengeResponse(message);
            }
            bool ready;
            AgentPlugin? plugin;
            AgentBlockCipher? cipher;
            bool encrypted;
            lock (_gate)
            {
                cipher = _cipher;
                encrypted = _encryptionRequested;
            }
            // processStreamDataMessage: with encryption on, Output from the client is decrypted first; one that does not
            // decrypt is an error, so it is not acknowledged (the client resends it). Output before the key exists is
            // taken as stream data during the handshake (acknowledged and ignored; the real agent has no key to use).
            if (encrypted && message.PayloadType == PayloadType.Output)
            {
                if (cipher == null) return true;
                var plain = cipher.Decrypt(message.Payload);
                if (plain == null)
                {
                    Interlocked.Increment(ref Counters._decryptionFailures);
                    Log("Error decrypting stream data message sequence " + message.SequenceNumber.ToString(CultureInfo.InvariantCulture));
                    return false;
                }
                message = message.WithPayload(plain);
            }
            lock (_gate)
            {
                // datachannel.go: stream data that arrives while the handshake is neither complete nor skipped is
                // acknowledged and ignored.
                if (!_handshakeComplete && !_handshakeSkipped) return true;
                plugin = _plugin;
                ready = plugin != null;
            }
            if (!ready) return false;
            return await plugin!.HandleInputAsync(message).ConfigureAwait(false);
        }

        // ---- sending -----------------------------------------------------------------------------------------------

        /// <summary>
        /// SendStreamDataMessage: a new output_stream_data with the next sequence number (flags 1 on sequence 0, else 0),
        /// sent once (unless paused; waiting for room on the connection, not at all without one) and kept until
        /// acknowledged while the unacknowledged list has room (AddDataToOutgoingMessageBuffer: a message that finds it
        /// full is not kept, so it is never resent). Empty payloads are ignored, as the agent does.
        /// </summary>
        public Task SendStreamDataAsync(PayloadType payloadType, byte[] payload) => SendStreamDataAsync(payloadType, payload.AsMemory());

        /// <inheritdoc cref="SendStreamDataAsync(PayloadType, byte[])"/>
        /// <remarks>The payload is copied into the message before the task completes; the caller may reuse its buffer after.</remarks>
        public async Task SendStreamDataAsync(PayloadType payloadType, ReadOnlyMemory<byte> payload)
        {
            if (payload.Length == 0 || IsEnded) return;
            AgentBlockCipher? cipher;
            lock (_gate) cipher = _cipher;
            // SendStreamDataMessage: with encryption on, Output, StdErr and ExitCode are encrypted; nothing else is.
            if (cipher != null && (payloadType == PayloadType.Output || payloadType == PayloadType.StdErr || payloadType == PayloadType.ExitCode))
            {
                var sealedPayload = cipher.Encrypt(payload.ToArray());
                if (payloadType == PayloadType.Output && Options.EncryptionFault == SandboxEncryptionFault.TamperOutput && Interlocked.Exchange(ref _tampered, 1) == 0)
                {
                    sealedPayload[AgentBlockCipher.NonceSize] ^= 0x01;
                }
                payload = sealedPayload;
            }
            await _streamSendLock.WaitAsync().ConfigureAwait(false);
            try
            {
                if (IsEnded) return;
                Pending? pending = null;
                byte[] frame;
                bool paused;
                lock (_gate)
                {
                    var sequence = _nextSequence++;
                    frame = AgentFrames.Encode(MessageTypes.OutputStreamData, sequence, sequence == 0 ? MessageFlags.Syn : MessageFlags.Data, payloadType, payload.Span);
                    if (_unacked.Count < Options.OutgoingMessageBufferCapacity)
                    {
                        pending = new Pending(sequence, frame, Now);
                        _unackedIndex[sequence] = _unacked.AddLast(pending);
                    }
                    else
                    {
                        Interlocked.Increment(ref Counters._unbuffered);
                    }
                    paused = _paused;
                }
                Interlocked.Increment(ref Counters._dataSent);
                Interlocked.Add(ref Counters._streamBytesCreated, payload.Length);
                MarkActivity();
                if (!paused) await TransmitAsync(frame, faultable: true).ConfigureAwait(false);
                if (pending != null)
                {
                    lock (_gate) pending.SentAt = Now; // LastSentTime: after the write
                }
            }
            finally
            {
                _streamSendLock.Release();
            }
        }

        public Task SendJsonAsync(PayloadType payloadType, JsonNode json) =>
            SendStreamDataAsync(payloadType, Encoding.UTF8.GetBytes(json.ToJsonString(SsmJson.Options)));

        /// <summary>
        /// ResendStreamDataMessageScheduler: every 100 ms (unless paused), the oldest unacknowledged message goes again
        /// once it is older than the RTO. With the non-default <see cref="SandboxAgentOptions.ResendAllDue"/>, up to
        /// <see cref="SandboxAgentOptions.ResendAllDueBurst"/> overdue messages go per round, oldest first. Each resend
        /// waits for room on the connection like any write.
        /// </summary>
        private async Task ResendLoopAsync()
        {
            var token = _life.Token;
            var due = new List<Pending>();
            while (!token.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(Options.ResendInterval, token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                due.Clear();
                lock (_gate)
                {
                    if (_paused) continue;
                    var limit = Options.ResendAllDue ? Math.Max(1, Options.ResendAllDueBurst) : 1;
                    for (var node = _unacked.First; node != null && due.Count < limit; node = node.Next)
                    {
                        var m = node.Value;
                        if (Now - m.SentAt <= _retransmissionTimeout)
                        {
                            if (!Options.ResendAllDue) break; // only the oldest is considered
                            continue;
                        }
                        due.Add(m);
                        m.SentAt = Now; // not picked again while its write waits
                    }
                }
                var sent = 0;
                foreach (var m in due)
                {
                    if (token.IsCancellationRequested) return;
                    var transmitted = await TransmitAsync(m.Frame, faultable: true).ConfigureAwait(false);
                    lock (_gate) m.SentAt = Now; // LastSentTime: after the (blocking) write, whether or not it succeeded
                    if (!transmitted) continue;
                    Interlocked.Increment(ref Counters._retransmitted);
                    sent++;
                }
                if (sent > 0) Counters.ObserveResendBurst(sent);
            }
        }

        // ---- pause (datachannel.go) --------------------------------------------------------------------------------

        /// <summary>
        /// Sets the agent's Pause flag, as pause_publication / start_publication from MGS to the agent do. While paused
        /// the agent sends no new stream message (it still keeps them), resends nothing, and its output pumps do not read.
        /// Any acknowledge or input_stream_data from the client clears it.
        /// </summary>
        public void SetPaused(bool paused)
        {
            TaskCompletionSource? resumed = null;
            lock (_gate)
            {
                if (_paused == paused) return;
                _paused = paused;
                if (paused)
                {
                    _resumed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }
                else
                {
                    resumed = _resumed;
                    _resumed = null;
                }
            }
            resumed?.TrySetResult();
        }

        /// <summary>IsActive: completes when the agent is not paused (the output pumps wait here before each read).</summary>
        public Task WaitActiveAsync(CancellationToken cancellation)
        {
            Task wait;
            lock (_gate)
            {
                if (!_paused || _resumed == null) return Task.CompletedTask;
                wait = _resumed.Task;
            }
            return wait.WaitAsync(cancellation);
        }

        /// <summary>A pacer for one output pump: the 1 ms sleep after each read (OutputReadPause).</summary>
        public OutputReadPacer NewOutputReadPacer() => new(Options);

        /// <summary>PrepareToCloseChannel: waits (at most <paramref name="timeout"/>) until every sent message is acknowledged.</summary>
        public async Task DrainAsync(TimeSpan timeout)
        {
            var deadline = Now + timeout;
            while (Now < deadline)
            {
                lock (_gate)
                {
                    if (_unacked.Count == 0) return;
                }
                await Task.Delay(10).ConfigureAwait(false);
            }
        }

        // ---- session life ------------------------------------------------------------------------------------------

        private async Task RunSessionAsync(AgentPlugin plugin)
        {
            _ = Task.Run(ResendLoopAsync);
            string? closedOutput = null;
            try
            {
                if (NeedsHandshake(plugin))
                {
                    var error = await HandshakeAsync(plugin).ConfigureAwait(false);
                    if (error != null)
                    {
                        _agent.Log("session " + Session.SessionId + ": " + error);
                        await EndAsync(error, drain: false).ConfigureAwait(false);
                        return;
                    }
                }
                lock (_gate) _plugin = plugin;
                closedOutput = await plugin.RunAsync(_life.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_life.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                _agent.Log("session " + Session.SessionId + ": plugin failed: " + ex);
                closedOutput = ex.Message;
            }
            finally
            {
                plugin.Stop();
            }
            await EndAsync(closedOutput, drain: true).ConfigureAwait(false);
        }

        /// <summary>
        /// sessionplugin.go isEncryptionEnabled: the session's document names a KMS key and the plugin is not Port.
        /// </summary>
        private bool EncryptionRequestedFor(AgentPlugin plugin) => !string.IsNullOrEmpty(Session.KmsKeyId) && plugin is not PortPlugin;

        /// <summary>sessionplugin.go Execute: a handshake when the plugin requires one or encryption is enabled.</summary>
        private bool NeedsHandshake(AgentPlugin plugin) => plugin.RequiresHandshake || EncryptionRequestedFor(plugin);

        /// <summary>Agents since 3.3.808.0 send a random challenge with KMSEncryption (blockcipher.go NewBlockCipherKMS).</summary>
        private static readonly Version ChallengeAgentVersion = new(3, 3, 808, 0);

        /// <summary>True once the session's data is encrypted (the client's data key was decrypted).</summary>
        public bool IsEncrypted
        {
            get { lock (_gate) return _cipher != null; }
        }

        /// <summary>
        /// PerformHandshake: HandshakeRequest (with KMSEncryption when the session's document names a key), wait (15 s)
        /// for the HandshakeResponse, set up encryption from it (kms:Decrypt of the client's data key with the instance
        /// role), the encryption challenge (15 s), HandshakeComplete. Returns an error text or null.
        /// </summary>
        private async Task<string?> HandshakeAsync(AgentPlugin plugin)
        {
            var started = Stopwatch.StartNew();
            var encryption = EncryptionRequestedFor(plugin);
            string? randomChallenge = null;
            if (encryption && Version.TryParse(AgentVersion, out var agentVersion) && agentVersion >= ChallengeAgentVersion)
            {
                randomChallenge = Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
            }
            if (encryption)
            {
                lock (_gate) _encryptionRequested = true;
            }
            var request = new JsonObject
            {
                ["AgentVersion"] = AgentVersion,
                ["RequestedClientActions"] = new JsonArray
                {
                    new JsonObject
                    {
                        ["ActionType"] = HandshakeActionTypes.SessionType,
                        ["ActionParameters"] = new JsonObject
                        {
                            ["SessionType"] = plugin.SessionType,
                            ["Properties"] = plugin.HandshakeProperties(),
                        },
                    },
                },
            };
            if (encryption)
            {
                var parameters = new JsonObject { ["KMSKeyId"] = Session.KmsKeyId };
                if (randomChallenge != null) parameters["Challenge"] = randomChallenge;
                request["RequestedClientActions"]!.AsArray().Add(new JsonObject
                {
                    ["ActionType"] = HandshakeActionTypes.KmsEncryption,
                    ["ActionParameters"] = parameters,
                });
            }
            await SendJsonAsync(PayloadType.HandshakeRequest, request).ConfigureAwait(false);
            var timeout = Task.Delay(Options.HandshakeTimeout, _life.Token);
            var done = await Task.WhenAny(_handshakeResponse.Task, timeout).ConfigureAwait(false);
            if (done != _handshakeResponse.Task)
            {
                _life.Token.ThrowIfCancellationRequested();
                return "Handshake timed out. Please ensure that you have the latest version of the session manager plugin.";
            }
            var response = await _handshakeResponse.Task.ConfigureAwait(false);
            HandshakeClientVersion = response.ClientVersion;
            foreach (var action in response.ProcessedClientActions ?? new List<ProcessedClientAction>())
            {
                if (action.ActionStatus != ActionStatus.Success)
                {
                    return action.ActionType + " failed on client with status " + ((int)action.ActionStatus).ToString(CultureInfo.InvariantCulture) + " error: " + action.Error;
                }
            }
            if (encryption)
            {
                var kmsAction = (response.ProcessedClientActions ?? new List<ProcessedClientAction>()).Find(a => a.ActionType == HandshakeActionTypes.KmsEncryption);
                if (kmsAction == null) return "KMSEncryption was not processed by the client.";
                var kmsError = FinalizeKmsEncryption(kmsAction.ActionResult, randomChallenge);
                if (kmsError != null) return kmsError;
            }
            plugin.OnHandshakeResponse(response);
            if (encryption)
            {
                var challengeError = await EncryptionChallengeAsync().ConfigureAwait(false);
                if (challengeError != null) return challengeError;
            }
            var complete = new JsonObject
            {
                ["HandshakeTimeToComplete"] = started.Elapsed.Ticks * 100,
                ["CustomerMessage"] = plugin.HandshakeCustomerMessage() + (encryption ? "This session is encrypted using AWS KMS." : ""),
            };
            await SendJsonAsync(PayloadType.HandshakeComplete, complete).ConfigureAwait(false);
            lock (_gate) _handshakeComplete = true;
            return null;
        }

        /// <summary>
        /// finalizeKMSEncryption + BlockCipher.UpdateEncryptionKey: kms:Decrypt of the client's ciphertext blob with the
        /// instance role, KeyId = the session's kmsKeyId, encryption context aws:ssm:SessionId / aws:ssm:TargetId (and
        /// aws:ssm:RandomChallenge when the client acknowledged the challenge); RequireKMSChallengeResponse refuses a
        /// client that did not. Returns the handshake error text or null.
        /// </summary>
        private string? FinalizeKmsEncryption(JsonElement? actionResult, string? randomChallenge)
        {
            KmsEncryptionResponse result;
            try
            {
                result = actionResult is { ValueKind: JsonValueKind.Object } r
                    ? r.Deserialize<KmsEncryptionResponse>(SsmJson.Options) ?? new KmsEncryptionResponse()
                    : throw new JsonException("ActionResult is not an object");
            }
            catch (JsonException ex)
            {
                return ex.Message;
            }
            var acknowledged = result.ChallengeAcknowledgement && randomChallenge != null;
            if (Options.RequireKmsChallengeResponse && !acknowledged)
            {
                return "client does not support required encryption context random challenge";
            }
            var context = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                ["aws:ssm:SessionId"] = Session.SessionId,
                ["aws:ssm:TargetId"] = Session.Target,
            };
            if (acknowledged) context["aws:ssm:RandomChallenge"] = randomChallenge!;
            var instance = Instance;
            if (instance == null) return "Fetching data key failed: the instance is gone";
            byte[] dataKey;
            try
            {
                (dataKey, _) = World.Kms.Decrypt(instance, result.KmsCipherTextKey, context, Session.KmsKeyId);
            }
            catch (SandboxError error)
            {
                return "Fetching data key failed: Unable to retrieve data key, Error when decrypting data key " + error.Code + (error.ErrorMessage == null ? "" : ": " + error.ErrorMessage);
            }
            if (dataKey.Length != 64)
            {
                Array.Clear(dataKey);
                return "Fetching data key failed: the data key has " + dataKey.Length.ToString(CultureInfo.InvariantCulture) + " bytes, not 64";
            }
            var cipher = new AgentBlockCipher(dataKey);
            Array.Clear(dataKey);
            lock (_gate) _cipher = cipher;
            Log("KMS encryption on (" + Session.KmsKeyId + (acknowledged ? ", with the random challenge" : "") + ")");
            return null;
        }

        /// <summary>
        /// sendEncryptionChallenge: 64 random bytes encrypted with the agent's key as EncChallengeRequest; wait (15 s) for
        /// an EncChallengeResponse that decrypts, with the client's key, to the same bytes. A response that does not is
        /// not acknowledged and does not confirm (handleEncryptionChallengeResponse), so the wait ends in the timeout.
        /// </summary>
        private async Task<string?> EncryptionChallengeAsync()
        {
            var challenge = System.Security.Cryptography.RandomNumberGenerator.GetBytes(64);
            AgentBlockCipher cipher;
            lock (_gate)
            {
                _challenge = challenge;
                cipher = _cipher!;
            }
            var encrypted = Options.EncryptionFault == SandboxEncryptionFault.WrongKeyChallenge
                ? AgentBlockCipher.EncryptWithRandomKey(challenge)
                : cipher.Encrypt(challenge);
            await SendJsonAsync(PayloadType.EncChallengeRequest, new JsonObject { ["Challenge"] = Convert.ToBase64String(encrypted) }).ConfigureAwait(false);
            var timeout = Task.Delay(Options.HandshakeTimeout, _life.Token);
            if (await Task.WhenAny(_challengeConfirmed.Task, timeout).ConfigureAwait(false) != _challengeConfirmed.Task)
            {
                _life.Token.ThrowIfCancellationRequested();
                return "Timed out waiting for encryption challenge.";
            }
            Log("Encryption challenge confirmed.");
            return null;
        }

        /// <summary>handleEncryptionChallengeResponse; false (not acknowledged) when it does not verify.</summary>
        private bool HandleChallengeResponse(AgentMessage message)
        {
            AgentBlockCipher? cipher;
            byte[]? expected;
            lock (_gate)
            {
                cipher = _cipher;
                expected = _challenge;
            }
            if (cipher == null || expected == null) return true;
            byte[]? answer = null;
            try
            {
                var response = SsmJson.Deserialize<EncryptionChallengePayload>(message.Payload);
                answer = cipher.Decrypt(response.Challenge);
            }
            catch (SsmProtocolException)
            {
            }
            if (answer == null || !answer.AsSpan().SequenceEqual(expected))
            {
                Interlocked.Increment(ref Counters._decryptionFailures);
                Log(answer == null ? "encryption challenge response: Error decrypting encrypted text" : "Encryption challenge does not match!");
                return false;
            }
            _challengeConfirmed.TrySetResult(true);
            return true;
        }

        /// <summary>TerminateSession from the API: channel_closed, close, stop the plugin.</summary>
        public Task TerminateAsync() => EndAsync(null, drain: false, terminatedByService: true);

        /// <summary>
        /// Ends the session once: the plugin stops, the session is Terminated in the registry, the client gets
        /// channel_closed (when connected) and the WebSocket is closed with 1000.
        /// </summary>
        public async Task EndAsync(string? output, bool drain, bool terminatedByService = false)
        {
            if (drain) await DrainAsync(Options.CloseDrainTimeout).ConfigureAwait(false);
            if (Interlocked.Exchange(ref _ended, 1) != 0) return;
            _agent.Log("session " + Session.SessionId + ": ending" + (output == null ? "" : " (" + output + ")"));
            if (!terminatedByService) _agent.Host.Sessions.Terminate(Session.SessionId, World.Clock.UtcNow);
            var connection = _connectionSnapshot();
            if (connection != null)
            {
                var frame = AgentMessageCodec.Encode(BuildChannelClosed(output));
                connection.EnqueueNow(frame);
                connection.CloseAfterQueued("Bye", CloseAbortAfter);
            }
            _life.Cancel();
            AgentPlugin? plugin;
            lock (_gate) plugin = _plugin;
            plugin?.Stop();
        }

        private AgentMessage BuildChannelClosed(string? output)
        {
            var id = Guid.NewGuid();
            var created = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var payload = new ChannelClosedPayload
            {
                MessageId = id.ToString("D"),
                CreatedDate = created.ToString(CultureInfo.InvariantCulture),
                DestinationId = Session.SessionId,
                SessionId = Session.SessionId,
                MessageType = MessageTypes.ChannelClosed,
                SchemaVersion = 1,
                Output = output ?? Options.ChannelClosedOutput(Session),
            };
            return AgentMessage.Create(MessageTypes.ChannelClosed, 0, MessageFlags.Ack, PayloadType.None, SsmJson.SerializeToUtf8(payload), id, created);
        }

        /// <summary>Sends pause_publication or start_publication (as MGS does around agent reconnects).</summary>
        public bool SendPublication(bool pause)
        {
            var message = AgentMessage.Create(pause ? MessageTypes.PausePublication : MessageTypes.StartPublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>());
            var connection = _connectionSnapshot();
            return connection != null && connection.EnqueueNow(AgentMessageCodec.Encode(message));
        }

        // ---- the idle session timeout (the service's) ---------------------------------------------------------------

        private void MarkActivity() => Interlocked.Exchange(ref _lastActivityTicks, Now.Ticks);

        /// <summary>How long the session has had no stream data either way.</summary>
        public TimeSpan IdleTime => Now - TimeSpan.FromTicks(Interlocked.Read(ref _lastActivityTicks));

        /// <summary>
        /// Session Manager's idle session timeout (<see cref="SandboxAgentOptions.IdleSessionTimeout"/>, read live): once the
        /// session has had no stream data either way for that long, the service ends it (<see cref="IdleTimeOut"/>).
        /// </summary>
        private async Task IdleWatchAsync()
        {
            var token = _life.Token;
            while (!token.IsCancellationRequested)
            {
                var timeout = Options.IdleSessionTimeout;
                var tick = timeout <= TimeSpan.Zero ? TimeSpan.FromSeconds(1)
                    : TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(1).Ticks, Math.Max(TimeSpan.FromMilliseconds(10).Ticks, timeout.Ticks / 10)));
                try
                {
                    await Task.Delay(tick, token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                timeout = Options.IdleSessionTimeout;
                if (timeout > TimeSpan.Zero && IdleTime >= timeout)
                {
                    IdleTimeOut(timeout);
                    return;
                }
            }
        }

        /// <summary>
        /// The idle session timeout ends the session: the client (when connected) gets channel_closed with
        /// <see cref="SandboxAgentOptions.IdleTimeoutOutput"/> and a close 1000, the plugin stops, and the session is TimedOut
        /// in the registry (its token stops working; ResumeSession answers without a token).
        /// </summary>
        private void IdleTimeOut(TimeSpan timeout)
        {
            if (Interlocked.Exchange(ref _ended, 1) != 0) return;
            Interlocked.Exchange(ref Counters._idleTimeouts, 1);
            _agent.Log("session " + Session.SessionId + ": idle session timeout (" + timeout.TotalMilliseconds.ToString(CultureInfo.InvariantCulture) + " ms without stream data)");
            var connection = _connectionSnapshot();
            if (connection != null)
            {
                connection.EnqueueNow(AgentMessageCodec.Encode(BuildChannelClosed(SandboxAgentOptions.IdleTimeoutOutput)));
                connection.CloseAfterQueued("Bye", CloseAbortAfter);
            }
            _life.Cancel();
            AgentPlugin? plugin;
            lock (_gate) plugin = _plugin;
            plugin?.Stop();
            // The registry's TimedOut event finds this channel already ended.
            _agent.Host.Sessions.TimeOut(Session.SessionId, World.Clock.UtcNow);
        }

        /// <summary>
        /// The session timed out (idle timeout): the agent ends the channel without channel_closed (the client is probably
        /// not connected); a current connection is dropped without a close frame. The registry already says TimedOut.
        /// </summary>
        public void TimeOut()
        {
            if (Interlocked.Exchange(ref _ended, 1) != 0) return;
            _agent.Log("session " + Session.SessionId + ": timed out");
            _connectionSnapshot()?.Abort(isKill: false);
            _life.Cancel();
            AgentPlugin? plugin;
            lock (_gate) plugin = _plugin;
            plugin?.Stop();
        }

        // ---- hostile injections ------------------------------------------------------------------------------------

        private AgentConnection RequireConnection() =>
            _connectionSnapshot() is { IsAborted: false, IsClosing: false } c ? c : throw new InvalidOperationException("The session has no open WebSocket.");

        /// <summary>
        /// far-ahead: <paramref name="count"/> valid output_stream_data (correct digests) numbered next + 1,000,000 + i,
        /// sent through the current WebSocket (waiting for room) and not kept. Returns how many went out.
        /// </summary>
        public async Task<int> InjectFarAheadAsync(int count)
        {
            RequireConnection();
            long next;
            lock (_gate) next = _nextSequence;
            var sent = 0;
            for (var i = 0; i < count; i++)
            {
                var payload = Encoding.ASCII.GetBytes("far-ahead " + i.ToString(CultureInfo.InvariantCulture) + "\n");
                var message = AgentMessage.Create(MessageTypes.OutputStreamData, next + 1_000_000 + i, MessageFlags.Data, PayloadType.Output, payload);
                if (!await TransmitAsync(AgentMessageCodec.Encode(message), faultable: false).ConfigureAwait(false)) break;
                Interlocked.Increment(ref Counters._injected);
                sent++;
            }
            return sent;
        }

        /// <summary>
        /// endless-fragments: one binary message of <paramref name="totalBytes"/> sent as continuation fragments and never
        /// finished; the connection writes nothing more. Returns the bytes written.
        /// </summary>
        public async Task<long> InjectEndlessFragmentsAsync(long totalBytes)
        {
            var connection = RequireConnection();
            var sent = await connection.EnqueueEndlessFragments(totalBytes).ConfigureAwait(false);
            Interlocked.Increment(ref Counters._injected);
            return sent;
        }

        /// <summary>smux: raw bytes appended to the mux output stream (ordinary numbered Output messages of at most 1024 bytes).</summary>
        public async Task InjectSmuxAsync(byte[] bytes)
        {
            RequireConnection();
            AgentPlugin? plugin;
            lock (_gate) plugin = _plugin;
            var mux = (plugin as PortPlugin)?.Mode as MuxPortSession ?? throw new InvalidOperationException("The session's plugin is not the mux port plugin.");
            await mux.InjectAsync(bytes).ConfigureAwait(false);
            Interlocked.Increment(ref Counters._injected);
        }

        /// <summary>
        /// start-publication-bare / pause-publication-bare: the message as the official client's unit test builds one
        /// (messageparser_test.go TestClientMessage_ValidateStartPublicationMessage): HeaderLength 0, CreatedDate 0, no
        /// digest, SequenceNumber 1, Flags 2, payload "payload". The official client accepts it without validation.
        /// </summary>
        public void InjectBarePublication(bool pause)
        {
            var connection = RequireConnection();
            if (!connection.EnqueueNow(BarePublicationFrame(pause))) throw new InvalidOperationException("The session has no open WebSocket.");
            Interlocked.Increment(ref Counters._injected);
        }

        internal static byte[] BarePublicationFrame(bool pause)
        {
            var message = AgentMessage.Create(pause ? MessageTypes.PausePublication : MessageTypes.StartPublication, 1, 2, PayloadType.None, Encoding.ASCII.GetBytes("payload"));
            var frame = AgentMessageCodec.Encode(message);
            Array.Clear(frame, 0, 4); // HeaderLength 0
            Array.Clear(frame, AgentMessageCodec.CreatedDateOffset, 8); // CreatedDate 0
            Array.Clear(frame, AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength); // no digest
            return frame;
        }

        /// <summary>Stops everything without a goodbye (host shutdown).</summary>
        public void Shutdown()
        {
            Interlocked.Exchange(ref _ended, 1);
            _life.Cancel();
            AgentPlugin? plugin;
            AgentConnection? connection;
            lock (_gate)
            {
                plugin = _plugin;
                connection = _connection;
            }
            plugin?.Stop();
            connection?.Abort(isKill: false);
        }

        public JsonObject Describe()
        {
            var o = Counters.ToJson();
            o["sessionId"] = Session.SessionId;
            o["target"] = Session.Target;
            o["documentName"] = Session.DocumentName;
            o["state"] = Session.State.ToString();
            o["plugin"] = PluginKind;
            o["smuxKeepAlive"] = SmuxKeepAlive;
            o["idleMs"] = Math.Round(IdleTime.TotalMilliseconds);
            o["nextSequenceNumber"] = NextSequenceNumber;
            o["expectedSequenceNumber"] = ExpectedSequenceNumber;
            o["unacked"] = UnackedCount;
            o["retransmissionTimeoutMs"] = RetransmissionTimeout.TotalMilliseconds;
            o["paused"] = IsPaused;
            o["connectionQueuedBytes"] = ConnectionQueue.QueuedBytes;
            o["clientVersion"] = HandshakeClientVersion ?? OpenDataChannelClientVersion;
            o["kmsKeyId"] = Session.KmsKeyId;
            o["encrypted"] = IsEncrypted;
            o["faults"] = SessionFaults == null ? null : JsonNode.Parse(SessionFaults.ToJson());
            return o;
        }

        internal void Log(string line) => _agent.Log("session " + Session.SessionId + ": " + line);
    }

    /// <summary>
    /// The sleep after each read of port_mux.go transferDataToMgs, port_basic.go WritePump and shell.go writePump
    /// (time.Sleep(time.Millisecond), about 1.06 ms in Go): each read waits <see cref="SandboxAgentOptions.OutputReadPause"/>
    /// after the one before was sent, as the agent's loop does (read, send, sleep), on <see cref="DelayClock.Shared"/>
    /// (Task.Delay's timers tick with the kernel's coarse clock: 2 to 4 ms late). No credit: a pause that ended late is
    /// not made up for by reads without a pause, as the agent does not make up for its own late wake-ups.
    /// </summary>
    internal sealed class OutputReadPacer
    {
        private readonly SandboxAgentOptions _options;

        public OutputReadPacer(SandboxAgentOptions options) => _options = options;

        /// <summary>Call after each read was sent: completes when the next read may happen.</summary>
        public Task PauseAsync(CancellationToken cancellation)
        {
            var pause = _options.OutputReadPause;
            if (pause <= TimeSpan.Zero) return Task.CompletedTask;
            var wait = DelayClock.Shared.WhenDue(DelayClock.DueIn(pause), continueOnThreadPool: true);
            return cancellation.CanBeCanceled && !wait.IsCompleted ? wait.WaitAsync(cancellation) : wait;
        }
    }
}