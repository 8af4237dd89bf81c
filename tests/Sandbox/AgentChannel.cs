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
    /// </summary>
    internal sealed class AgentChannel
    {
        private const int IncomingBufferCapacity = 100000;
        private readonly object _gate = new();
        private readonly SandboxAgent _agent;
        private readonly SemaphoreSlim _inputLock = new(1, 1);
        private readonly LinkedList<Pending> _unacked = new();
        private readonly Dictionary<long, AgentMessage> _early = new();
        private readonly CancellationTokenSource _life = new();
        private readonly TaskCompletionSource<HandshakeResponsePayload> _handshakeResponse = new(TaskCreationOptions.RunContinuationsAsynchronously);
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
        private Random? _random;
        private (AgentMessage Message, long Token)? _heldIncoming;
        private long _holdToken;

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
        public async Task RunConnectionAsync(System.Net.WebSockets.WebSocket socket, Action? abortTransport, OpenDataChannelInput open, CancellationToken stopping)
        {
            var faults = Faults;
            AgentConnection connection;
            AgentConnection? previous;
            bool start;
            lock (_gate)
            {
                previous = _connection;
                connection = new AgentConnection(socket, abortTransport, Counters, faults.KillAfterBytes, ++_connectionCount);
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
            // On a reconnect nothing special happens: the resend scheduler sends the oldest unacknowledged message again.
            if (start)
            {
                // The plugin and whether it skips the handshake are known before the first input can arrive.
                AgentPlugin? plugin = null;
                string? error = null;
                try
                {
                    plugin = AgentPlugin.Create(this);
                    if (!plugin.RequiresHandshake)
                    {
                        lock (_gate) _handshakeSkipped = true;
                    }
                }
                catch (InvalidOperationException ex)
                {
                    error = ex.Message;
                }
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
            connection.CloseAfterQueued("Bye");
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

        private async Task ReadLoopAsync(AgentConnection connection, CancellationToken stopping)
        {
            var socket = connection.Socket;
            var buffer = new byte[64 * 1024];
            using var message = new System.IO.MemoryStream();
            try
            {
                while (!stopping.IsCancellationRequested)
                {
                    var result = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), stopping).ConfigureAwait(false);
                    if (result.MessageType == System.Net.WebSockets.WebSocketMessageType.Close)
                    {
                        connection.CloseAfterQueued(result.CloseStatusDescription ?? "");
                        return;
                    }
                    connection.CountBytes(result.Count);
                    Interlocked.Add(ref Counters._bytesReceived, result.Count);
                    message.Write(buffer, 0, result.Count);
                    if (message.Length > SandboxAgent.MaxMessageBytes) throw new System.Net.WebSockets.WebSocketException("Message too large.");
                    if (!result.EndOfMessage) continue;
                    var bytes = message.ToArray();
                    message.SetLength(0);
                    if (result.MessageType != System.Net.WebSockets.WebSocketMessageType.Binary) continue;
                    Interlocked.Increment(ref Counters._messagesReceived);
                    AgentMessage decoded;
                    try
                    {
                        decoded = AgentMessageCodec.Decode(bytes);
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

        private double NextRandom()
        {
            lock (_gate)
            {
                _random ??= Faults.Seed is int seed ? new Random(seed) : new Random();
                return _random.NextDouble();
            }
        }

        /// <summary>Forgets the RNG so the next draw starts from the (new) seed.</summary>
        public void ResetRandom()
        {
            lock (_gate) _random = null;
        }

        private (bool Drop, bool Duplicate, bool Hold) Draw(bool outbound)
        {
            var f = Faults;
            if (!f.IsMessageFaulting || !f.Applies(outbound)) return (false, false, false);
            if (f.DropRate > 0 && NextRandom() < f.DropRate) return (true, false, false);
            var duplicate = f.DuplicateRate > 0 && NextRandom() < f.DuplicateRate;
            var hold = f.ReorderRate > 0 && NextRandom() < f.ReorderRate;
            return (false, duplicate, hold);
        }

        private async Task ReceiveWithFaultsAsync(AgentMessage message)
        {
            var (drop, duplicate, hold) = Draw(outbound: false);
            if (drop)
            {
                Interlocked.Increment(ref Counters._dropped);
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

        /// <summary>Puts a frame on the current connection through the outbound faults. False when no connection is attached.</summary>
        private bool Transmit(byte[] frame, bool faultable)
        {
            var connection = _connectionSnapshot();
            if (connection == null || connection.IsAborted || connection.IsClosing) return false;
            var (drop, duplicate, hold) = faultable ? Draw(outbound: true) : (false, false, false);
            if (drop)
            {
                Interlocked.Increment(ref Counters._dropped);
                return true;
            }
            if (duplicate) Interlocked.Increment(ref Counters._duplicated);
            if (hold) Interlocked.Increment(ref Counters._reordered);
            connection.Enqueue(frame, duplicate, hold);
            return true;
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
                    HandleAcknowledge(message);
                    return;
                case MessageTypes.InputStreamData:
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

        private void HandleAcknowledge(AgentMessage message)
        {
            AcknowledgeContent content;
            try
            {
                content = SsmJson.Deserialize<AcknowledgeContent>(message.Payload);
            }
            catch (SsmProtocolException)
            {
                return;
            }
            lock (_gate)
            {
                for (var node = _unacked.First; node != null; node = node.Next)
                {
                    if (node.Value.Sequence != content.AcknowledgedMessageSequenceNumber) continue;
                    UpdateRetransmissionTimeout(Now - node.Value.SentAt);
                    _unacked.Remove(node);
                    break;
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
                lock (_gate) keep = _early.Count < IncomingBufferCapacity;
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
            var frame = AgentMessageCodec.Encode(ClientMessages.Acknowledge(received));
            var delay = Faults.AckDelayMs;
            if (delay > 0)
            {
                _ = Task.Run(async () =>
                {
                    await Task.Delay(delay).ConfigureAwait(false);
                    if (Transmit(frame, faultable: true)) Interlocked.Increment(ref Counters._acksSent);
                });
                return;
            }
            if (Transmit(frame, faultable: true)) Interlocked.Increment(ref Counters._acksSent);
            await Task.CompletedTask.ConfigureAwait(false);
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
                    return true;
            }
            bool ready;
            AgentPlugin? plugin;
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
        /// kept until acknowledged, sent at once when a connection is attached. Empty payloads are ignored, as the agent does.
        /// </summary>
        public void SendStreamData(PayloadType payloadType, byte[] payload)
        {
            if (payload.Length == 0 || IsEnded) return;
            lock (_gate)
            {
                var sequence = _nextSequence++;
                var message = AgentMessage.Create(MessageTypes.OutputStreamData, sequence, sequence == 0 ? MessageFlags.Syn : MessageFlags.Data, payloadType, payload);
                var frame = AgentMessageCodec.Encode(message);
                _unacked.AddLast(new Pending(sequence, frame, Now));
                Interlocked.Increment(ref Counters._dataSent);
                Transmit(frame, faultable: true);
            }
        }

        public void SendJson(PayloadType payloadType, JsonNode json) =>
            SendStreamData(payloadType, Encoding.UTF8.GetBytes(json.ToJsonString(SsmJson.Options)));

        /// <summary>ResendStreamDataMessageScheduler: every 100 ms, the oldest unacknowledged message goes again once it is older than the RTO.</summary>
        private async Task ResendLoopAsync()
        {
            var token = _life.Token;
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
                lock (_gate)
                {
                    if (Options.ResendAllDue)
                    {
                        for (var node = _unacked.First; node != null; node = node.Next)
                        {
                            var m = node.Value;
                            if (Now - m.SentAt <= _retransmissionTimeout) continue;
                            if (Transmit(m.Frame, faultable: true)) Interlocked.Increment(ref Counters._retransmitted);
                            m.SentAt = Now;
                        }
                        continue;
                    }
                    var oldest = _unacked.First?.Value;
                    if (oldest == null || Now - oldest.SentAt <= _retransmissionTimeout) continue;
                    if (Transmit(oldest.Frame, faultable: true)) Interlocked.Increment(ref Counters._retransmitted);
                    oldest.SentAt = Now;
                }
            }
        }

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
                if (plugin.RequiresHandshake)
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

        /// <summary>PerformHandshake: HandshakeRequest, wait (15 s) for the HandshakeResponse, HandshakeComplete. Returns an error text or null.</summary>
        private async Task<string?> HandshakeAsync(AgentPlugin plugin)
        {
            var started = Stopwatch.StartNew();
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
            SendJson(PayloadType.HandshakeRequest, request);
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
            plugin.OnHandshakeResponse(response);
            var complete = new JsonObject
            {
                ["HandshakeTimeToComplete"] = started.Elapsed.Ticks * 100,
                ["CustomerMessage"] = plugin.HandshakeCustomerMessage(),
            };
            SendJson(PayloadType.HandshakeComplete, complete);
            lock (_gate) _handshakeComplete = true;
            return null;
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
                connection.Enqueue(frame, duplicate: false, holdBack: false);
                connection.CloseAfterQueued("Bye");
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
            return Transmit(AgentMessageCodec.Encode(message), faultable: false);
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
            o["nextSequenceNumber"] = NextSequenceNumber;
            o["expectedSequenceNumber"] = ExpectedSequenceNumber;
            o["unacked"] = UnackedCount;
            o["retransmissionTimeoutMs"] = RetransmissionTimeout.TotalMilliseconds;
            o["clientVersion"] = HandshakeClientVersion ?? OpenDataChannelClientVersion;
            o["faults"] = SessionFaults == null ? null : JsonNode.Parse(SessionFaults.ToJson());
            return o;
        }

        internal void Log(string line) => _agent.Log("session " + Session.SessionId + ": " + line);
    }
}
