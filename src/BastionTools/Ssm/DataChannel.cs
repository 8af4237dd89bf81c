using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net.WebSockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>Where a data channel connects: the StreamUrl and TokenValue from StartSession or ResumeSession.</summary>
    internal sealed class StreamEndpoint
    {
        public StreamEndpoint(string sessionId, Uri streamUrl, string tokenValue)
        {
            SessionId = sessionId;
            StreamUrl = streamUrl;
            TokenValue = tokenValue;
        }

        public string SessionId { get; }
        public Uri StreamUrl { get; }

        /// <summary>A secret: never logged.</summary>
        public string TokenValue { get; }

        public override string ToString() => $"StreamEndpoint({SessionId})";
    }

    internal sealed class DataChannelOptions
    {
        /// <summary>
        /// The client version announced in OpenDataChannel and the handshake. The agent multiplexes port sessions with
        /// smux only for clients ≥ 1.1.70 and turns smux keepalive off for clients &gt; 1.2.331.0.
        /// </summary>
        public string ClientVersion { get; set; } = "1.2.707.0";

        /// <summary>Largest payload of one input_stream_data message (the official client and agent use 1024).</summary>
        public int MaxPayloadSize { get; set; } = 1024;

        /// <summary>Stream messages sent and not yet acknowledged before senders wait.</summary>
        public int SendWindow { get; set; } = 1024;

        public TimeSpan InitialRetransmitTimeout { get; set; } = TimeSpan.FromMilliseconds(200);
        public TimeSpan MinRetransmitTimeout { get; set; } = TimeSpan.FromMilliseconds(200);
        public TimeSpan MaxRetransmitTimeout { get; set; } = TimeSpan.FromSeconds(2);
        public TimeSpan RetransmitCheckInterval { get; set; } = TimeSpan.FromMilliseconds(50);

        /// <summary>Resends of one message before the channel is declared broken.</summary>
        public int MaxResendAttempts { get; set; } = 300;

        /// <summary>Consecutive ResumeSession + reconnect attempts after the WebSocket drops, before giving up.</summary>
        public int MaxReconnectAttempts { get; set; } = 6;

        public TimeSpan ReconnectBaseDelay { get; set; } = TimeSpan.FromMilliseconds(250);

        /// <summary>WebSocket keepalive (unsolicited pong frames keep proxies and the service from idling the socket out).</summary>
        public TimeSpan WebSocketKeepAlive { get; set; } = TimeSpan.FromSeconds(30);

        public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(30);

        /// <summary>
        /// Multiplexed port sessions send a smux NOP when they have sent nothing for this long, so that an idle tunnel is
        /// not ended by the Session Manager idle timeout (20 minutes by default). Zero turns it off.
        /// </summary>
        public TimeSpan IdleKeepAlive { get; set; } = TimeSpan.FromMinutes(5);

        /// <summary>Opens the WebSocket (tests may substitute their own; the default is ClientWebSocket with TLS verified).</summary>
        public Func<Uri, TimeSpan, CancellationToken, Task<WebSocket>>? WebSocketFactory { get; set; }
    }

    /// <summary>Why a data channel ended.</summary>
    internal sealed class DataChannelClosure
    {
        public DataChannelClosure(bool byRemote, string? output, Exception? error)
        {
            ByRemote = byRemote;
            Output = output;
            Error = error;
        }

        /// <summary>The service or agent closed the channel (channel_closed).</summary>
        public bool ByRemote { get; }

        /// <summary>The Output of channel_closed, shown to the user.</summary>
        public string? Output { get; }

        /// <summary>Set when the channel broke (reconnect exhausted, resends exhausted, protocol failure).</summary>
        public Exception? Error { get; }
    }

    /// <summary>Counters of a data channel, read by Get-BastionSession and the benchmarks.</summary>
    internal sealed class DataChannelStatistics
    {
        private long _messagesSent;
        private long _messagesReceived;
        private long _payloadBytesSent;
        private long _payloadBytesReceived;
        private long _retransmissions;
        private long _duplicatesReceived;
        private long _outOfOrderReceived;
        private long _reconnects;

        public long MessagesSent => Interlocked.Read(ref _messagesSent);
        public long MessagesReceived => Interlocked.Read(ref _messagesReceived);
        public long PayloadBytesSent => Interlocked.Read(ref _payloadBytesSent);
        public long PayloadBytesReceived => Interlocked.Read(ref _payloadBytesReceived);
        public long Retransmissions => Interlocked.Read(ref _retransmissions);
        public long DuplicatesReceived => Interlocked.Read(ref _duplicatesReceived);
        public long OutOfOrderReceived => Interlocked.Read(ref _outOfOrderReceived);
        public long Reconnects => Interlocked.Read(ref _reconnects);

        internal void Sent(int payload)
        {
            Interlocked.Increment(ref _messagesSent);
            Interlocked.Add(ref _payloadBytesSent, payload);
        }

        internal void Received(int payload)
        {
            Interlocked.Increment(ref _messagesReceived);
            Interlocked.Add(ref _payloadBytesReceived, payload);
        }

        internal void Retransmitted() => Interlocked.Increment(ref _retransmissions);
        internal void Duplicate() => Interlocked.Increment(ref _duplicatesReceived);
        internal void OutOfOrder() => Interlocked.Increment(ref _outOfOrderReceived);
        internal void Reconnected() => Interlocked.Increment(ref _reconnects);
    }

    /// <summary>
    /// The Session Manager data channel over a WebSocket: OpenDataChannel, per-message acknowledgement, in-order
    /// delivery with a reordering buffer, duplicate re-acks, retransmission with an adaptive timeout (RFC 6298
    /// smoothing, Karn's rule), a send window for back-pressure, pause/start publication, channel_closed, and
    /// reconnection through ResumeSession that keeps both directions' sequence state, so no byte is lost or
    /// duplicated across a dropped WebSocket or the service's hourly close.
    /// </summary>
    internal sealed class DataChannel : IDisposable
    {
        private sealed class Outgoing
        {
            public Outgoing(AgentMessage message, byte[] frame)
            {
                Message = message;
                Frame = frame;
            }

            public AgentMessage Message { get; }
            public byte[] Frame { get; }
            public long LastSentTicks { get; set; }
            public long FirstSentTicks { get; set; }
            public int Attempts { get; set; }
        }

        private readonly DataChannelOptions _options;
        private readonly Func<AgentMessage, Task> _onStreamMessage;
        private readonly Func<CancellationToken, Task<StreamEndpoint>> _resume;
        private readonly Action<string> _log;
        private readonly CancellationTokenSource _lifetime = new();
        private readonly TaskCompletionSource<DataChannelClosure> _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly SemaphoreSlim _sendLock = new(1, 1);
        private readonly SemaphoreSlim _window;
        private readonly object _gate = new();
        private readonly SortedDictionary<long, Outgoing> _unacked = new();
        private readonly SortedDictionary<long, AgentMessage> _reorder = new();
        private readonly Guid _clientId = Guid.NewGuid();
        private readonly System.Threading.Channels.Channel<byte[]> _acks = System.Threading.Channels.Channel.CreateUnbounded<byte[]>(
            new System.Threading.Channels.UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        private Task? _ackWriter;

        private StreamEndpoint _endpoint;
        private WebSocket? _socket;
        private int _connectionGeneration;
        private long _nextOutgoingSequence;
        private long _expectedIncomingSequence;
        private bool _paused;
        private TaskCompletionSource<bool> _resumed = NewSignal(completed: true);
        private double _srttMs = -1;
        private double _rttvarMs;
        private double _rtoMs;
        private Task? _retransmitLoop;
        private int _closing;

        public DataChannel(StreamEndpoint endpoint, DataChannelOptions options, Func<AgentMessage, Task> onStreamMessage,
            Func<CancellationToken, Task<StreamEndpoint>> resume, Action<string>? log = null)
        {
            _endpoint = endpoint;
            _options = options;
            _onStreamMessage = onStreamMessage;
            _resume = resume;
            _log = log ?? (_ => { });
            _window = new SemaphoreSlim(options.SendWindow, options.SendWindow);
            _rtoMs = options.InitialRetransmitTimeout.TotalMilliseconds;
        }

        public string SessionId => _endpoint.SessionId;

        public DataChannelStatistics Statistics { get; } = new();

        /// <summary>Completes when the channel has ended, with the reason.</summary>
        public Task<DataChannelClosure> Completion => _closed.Task;

        public bool IsClosed => _closed.Task.IsCompleted;

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

        /// <summary>Opens the WebSocket, sends OpenDataChannel and starts receiving.</summary>
        public async Task OpenAsync(CancellationToken cancellationToken)
        {
            await ConnectAsync(_endpoint, cancellationToken).ConfigureAwait(false);
            _retransmitLoop = Task.Run(RetransmitLoopAsync);
            _ackWriter = Task.Run(AckWriterLoopAsync);
        }

        private static TaskCompletionSource<bool> NewSignal(bool completed)
        {
            var tcs = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            if (completed) tcs.TrySetResult(true);
            return tcs;
        }

        private async Task ConnectAsync(StreamEndpoint endpoint, CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            var factory = _options.WebSocketFactory ?? ((url, timeout, ct) => DefaultWebSocketFactory(url, timeout, _options.WebSocketKeepAlive, ct));
            var socket = await factory(endpoint.StreamUrl, _options.ConnectTimeout, linked.Token).ConfigureAwait(false);
            var open = ClientMessages.OpenDataChannel(endpoint.TokenValue, _options.ClientVersion, Guid.NewGuid(), _clientId);
            var bytes = System.Text.Encoding.UTF8.GetBytes(open);
            await socket.SendAsync(new ArraySegment<byte>(bytes), WebSocketMessageType.Text, true, linked.Token).ConfigureAwait(false);

            int generation;
            lock (_gate)
            {
                _endpoint = endpoint;
                _socket = socket;
                generation = ++_connectionGeneration;
            }
            _log($"Data channel connected to {endpoint.StreamUrl.Scheme}://{endpoint.StreamUrl.Authority} (session {endpoint.SessionId}, connection {generation}).");
            _ = Task.Run(() => ReceiveLoopAsync(socket, generation));
        }

        private static async Task<WebSocket> DefaultWebSocketFactory(Uri url, TimeSpan timeout, TimeSpan keepAlive, CancellationToken cancellationToken)
        {
            var socket = new ClientWebSocket();
            socket.Options.KeepAliveInterval = keepAlive;
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            cts.CancelAfter(timeout);
            try
            {
                await socket.ConnectAsync(url, cts.Token).ConfigureAwait(false);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
            return socket;
        }

        /// <summary>
        /// Sends a payload as one or more input_stream_data messages (split at <see cref="DataChannelOptions.MaxPayloadSize"/>),
        /// each numbered, kept until acknowledged and resent when needed. Waits while the send window is full or
        /// publication is paused.
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
                var chunk = new byte[size];
                Buffer.BlockCopy(payload, position, chunk, 0, size);
                await SendOneAsync(payloadType, chunk, cancellationToken).ConfigureAwait(false);
                position += size;
            }
            while (position < end);
        }

        public Task SendAsync(PayloadType payloadType, byte[] payload, CancellationToken cancellationToken)
            => SendAsync(payloadType, payload, 0, payload.Length, cancellationToken);

        public Task SendFlagAsync(PayloadTypeFlag flag, CancellationToken cancellationToken)
        {
            var payload = new byte[4];
            payload[3] = (byte)flag;
            payload[2] = (byte)((uint)flag >> 8);
            return SendOneAsync(PayloadType.Flag, payload, cancellationToken);
        }

        private async Task SendOneAsync(PayloadType payloadType, byte[] chunk, CancellationToken cancellationToken)
        {
            ThrowIfClosed();
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            await _window.WaitAsync(linked.Token).ConfigureAwait(false);
            Task pause;
            lock (_gate) pause = _resumed.Task;
            if (!pause.IsCompleted) await WaitOrCancel(pause, linked.Token).ConfigureAwait(false);

            Outgoing outgoing;
            lock (_gate)
            {
                var message = ClientMessages.InputStreamData(_nextOutgoingSequence++, payloadType, chunk);
                outgoing = new Outgoing(message, AgentMessageCodec.Encode(message));
                _unacked.Add(message.SequenceNumber, outgoing);
            }
            Statistics.Sent(chunk.Length);
            await TransmitAsync(outgoing, retransmission: false).ConfigureAwait(false);
        }

        private static async Task WaitOrCancel(Task task, CancellationToken cancellationToken)
        {
            var cancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            using (cancellationToken.Register(() => cancelled.TrySetResult(true)))
            {
                await Task.WhenAny(task, cancelled.Task).ConfigureAwait(false);
            }
            cancellationToken.ThrowIfCancellationRequested();
        }

        private void ThrowIfClosed()
        {
            if (_closed.Task.IsCompleted)
            {
                var c = _closed.Task.Result;
                throw new IOException(c.Error?.Message ?? ("The session's data channel is closed." + (string.IsNullOrEmpty(c.Output) ? "" : " " + c.Output)), c.Error);
            }
        }

        /// <summary>Writes a frame on the current WebSocket; a failure is left to the receive loop's reconnect (the message stays unacknowledged and is resent).</summary>
        private async Task TransmitAsync(Outgoing outgoing, bool retransmission)
        {
            var now = Stopwatch.GetTimestamp();
            lock (_gate)
            {
                if (retransmission && !_unacked.ContainsKey(outgoing.Message.SequenceNumber)) return;
                if (outgoing.Attempts == 0) outgoing.FirstSentTicks = now;
                outgoing.LastSentTicks = now;
                outgoing.Attempts++;
            }
            if (retransmission) Statistics.Retransmitted();
            await SendFrameAsync(outgoing.Frame).ConfigureAwait(false);
        }

        private async Task SendFrameAsync(byte[] frame)
        {
            WebSocket? socket;
            lock (_gate) socket = _socket;
            if (socket == null || socket.State != WebSocketState.Open) return;
            await _sendLock.WaitAsync().ConfigureAwait(false);
            try
            {
                if (socket.State != WebSocketState.Open) return;
                await socket.SendAsync(new ArraySegment<byte>(frame), WebSocketMessageType.Binary, true, _lifetime.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is WebSocketException || ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException)
            {
                // The receive loop sees the broken socket and reconnects; unacknowledged messages are resent then.
            }
            finally
            {
                _sendLock.Release();
            }
        }

        private async Task ReceiveLoopAsync(WebSocket socket, int generation)
        {
            var buffer = new byte[64 * 1024];
            var message = new MemoryStream();
            Exception? failure = null;
            try
            {
                while (!_lifetime.IsCancellationRequested)
                {
                    message.SetLength(0);
                    WebSocketReceiveResult result;
                    do
                    {
                        result = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), _lifetime.Token).ConfigureAwait(false);
                        if (result.MessageType == WebSocketMessageType.Close)
                        {
                            _log($"The service closed the WebSocket ({(int?)result.CloseStatus} {result.CloseStatusDescription}).");
                            goto dropped;
                        }
                        message.Write(buffer, 0, result.Count);
                    }
                    while (!result.EndOfMessage);

                    if (result.MessageType != WebSocketMessageType.Binary) continue;
                    AgentMessage received;
                    try
                    {
                        received = AgentMessageCodec.Decode(message.ToArray());
                    }
                    catch (SsmProtocolException ex)
                    {
                        _log("Dropped a malformed frame: " + ex.Message);
                        continue;
                    }
                    if (!received.IsDigestValid)
                    {
                        _log($"Dropped {received.MessageType} #{received.SequenceNumber}: payload digest mismatch (it will be resent).");
                        continue;
                    }
                    await HandleAsync(received).ConfigureAwait(false);
                    if (_closed.Task.IsCompleted) return;
                }
            }
            catch (OperationCanceledException) when (_lifetime.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (ex is WebSocketException || ex is IOException || ex is ObjectDisposedException)
            {
                failure = ex;
                _log("The WebSocket failed: " + ex.Message);
            }
            catch (Exception ex)
            {
                Close(new DataChannelClosure(false, null, ex));
                return;
            }

        dropped:
            try
            {
                socket.Abort();
                socket.Dispose();
            }
            catch (Exception)
            {
                // Already gone.
            }
            if (_lifetime.IsCancellationRequested || _closed.Task.IsCompleted) return;
            lock (_gate)
            {
                if (generation != _connectionGeneration) return;
                _socket = null;
            }
            await ReconnectAsync(failure).ConfigureAwait(false);
        }

        private async Task ReconnectAsync(Exception? cause)
        {
            Exception? last = cause;
            for (var attempt = 1; attempt <= _options.MaxReconnectAttempts && !_lifetime.IsCancellationRequested; attempt++)
            {
                var delay = attempt == 1 ? TimeSpan.Zero : TimeSpan.FromMilliseconds(_options.ReconnectBaseDelay.TotalMilliseconds * Math.Pow(2, attempt - 2));
                try
                {
                    if (delay > TimeSpan.Zero) await Task.Delay(delay, _lifetime.Token).ConfigureAwait(false);
                    _log($"Resuming session {_endpoint.SessionId} (attempt {attempt} of {_options.MaxReconnectAttempts}).");
                    var endpoint = await _resume(_lifetime.Token).ConfigureAwait(false);
                    await ConnectAsync(endpoint, _lifetime.Token).ConfigureAwait(false);
                    Statistics.Reconnected();
                    List<Outgoing> pending;
                    lock (_gate) pending = new List<Outgoing>(_unacked.Values);
                    foreach (var o in pending) await TransmitAsync(o, retransmission: true).ConfigureAwait(false);
                    _log($"Session {_endpoint.SessionId} resumed; {pending.Count} unacknowledged message(s) resent.");
                    return;
                }
                catch (OperationCanceledException) when (_lifetime.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception ex)
                {
                    last = ex;
                    _log($"Resume attempt {attempt} failed: {Redactor.RedactPatterns(ex.Message)}");
                }
            }
            Close(new DataChannelClosure(false, null,
                new IOException($"The connection to session {_endpoint.SessionId} was lost and could not be resumed after {_options.MaxReconnectAttempts} attempts: {Redactor.RedactPatterns(last?.Message ?? "unknown error")}", last)));
        }

        private async Task HandleAsync(AgentMessage received)
        {
            switch (received.MessageType)
            {
                case MessageTypes.Acknowledge:
                    HandleAcknowledge(received);
                    break;
                case MessageTypes.OutputStreamData:
                    await HandleStreamMessageAsync(received).ConfigureAwait(false);
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
                    _log("The service closed the channel" + (string.IsNullOrEmpty(closed?.Output) ? "." : ": " + closed!.Output));
                    Close(new DataChannelClosure(true, closed?.Output, null));
                    break;
                case MessageTypes.PausePublication:
                    lock (_gate)
                    {
                        if (!_paused)
                        {
                            _paused = true;
                            _resumed = NewSignal(completed: false);
                        }
                    }
                    _log("The service paused publication.");
                    break;
                case MessageTypes.StartPublication:
                    TaskCompletionSource<bool> signal;
                    lock (_gate)
                    {
                        _paused = false;
                        signal = _resumed;
                    }
                    signal.TrySetResult(true);
                    _log("The service resumed publication.");
                    break;
                default:
                    _log("Ignored a message of type " + received.MessageType + ".");
                    break;
            }
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
            var now = Stopwatch.GetTimestamp();
            lock (_gate)
            {
                if (!_unacked.TryGetValue(ack.AcknowledgedMessageSequenceNumber, out var o)) return;
                if (!string.Equals(o.Message.MessageId.ToString("D"), ack.AcknowledgedMessageId, StringComparison.OrdinalIgnoreCase)) return;
                _unacked.Remove(ack.AcknowledgedMessageSequenceNumber);
                if (o.Attempts == 1) UpdateRtt((now - o.FirstSentTicks) * 1000.0 / Stopwatch.Frequency);
            }
            _window.Release();
        }

        /// <summary>RFC 6298: SRTT/RTTVAR smoothing, RTO = SRTT + 4·RTTVAR, clamped. Only first transmissions are sampled (Karn).</summary>
        private void UpdateRtt(double sampleMs)
        {
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

        private async Task HandleStreamMessageAsync(AgentMessage received)
        {
            // Every stream message is acknowledged, duplicates included (their first ack may have been lost).
            // The acknowledgement goes out from the ack writer, so that receiving the next message does not wait for
            // this send to finish.
            _acks.Writer.TryWrite(AgentMessageCodec.Encode(ClientMessages.Acknowledge(received)));

            List<AgentMessage>? ready = null;
            lock (_gate)
            {
                if (received.SequenceNumber < _expectedIncomingSequence || _reorder.ContainsKey(received.SequenceNumber))
                {
                    Statistics.Duplicate();
                    return;
                }
                if (received.SequenceNumber > _expectedIncomingSequence)
                {
                    Statistics.OutOfOrder();
                    _reorder[received.SequenceNumber] = received;
                    return;
                }
                ready = new List<AgentMessage> { received };
                _expectedIncomingSequence++;
                while (_reorder.TryGetValue(_expectedIncomingSequence, out var next))
                {
                    _reorder.Remove(_expectedIncomingSequence);
                    ready.Add(next);
                    _expectedIncomingSequence++;
                }
            }
            foreach (var m in ready)
            {
                Statistics.Received(m.Payload.Length);
                await _onStreamMessage(m).ConfigureAwait(false);
            }
        }

        /// <summary>Sends queued acknowledgements in order. One lost with a broken socket is made good by the agent's resend, which is acknowledged again.</summary>
        private async Task AckWriterLoopAsync()
        {
            var reader = _acks.Reader;
            try
            {
                while (await reader.WaitToReadAsync(_lifetime.Token).ConfigureAwait(false))
                {
                    while (reader.TryRead(out var frame)) await SendFrameAsync(frame).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        private async Task RetransmitLoopAsync()
        {
            var due = new List<Outgoing>();
            while (!_lifetime.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(_options.RetransmitCheckInterval, _lifetime.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                due.Clear();
                Outgoing? exhausted = null;
                lock (_gate)
                {
                    if (_paused || _socket == null) continue;
                    var now = Stopwatch.GetTimestamp();
                    foreach (var o in _unacked.Values)
                    {
                        // Exponential back-off per message on top of the adaptive timeout.
                        var timeoutMs = _rtoMs * Math.Pow(2, Math.Min(o.Attempts - 1, 4));
                        timeoutMs = Math.Min(timeoutMs, _options.MaxRetransmitTimeout.TotalMilliseconds * 4);
                        if ((now - o.LastSentTicks) * 1000.0 / Stopwatch.Frequency < timeoutMs) continue;
                        if (o.Attempts > _options.MaxResendAttempts)
                        {
                            exhausted = o;
                            break;
                        }
                        due.Add(o);
                        if (due.Count >= 256) break;
                    }
                }
                if (exhausted != null)
                {
                    Close(new DataChannelClosure(false, null, new IOException(
                        $"Message {exhausted.Message.SequenceNumber} of session {_endpoint.SessionId} was not acknowledged after {exhausted.Attempts} attempts.")));
                    return;
                }
                foreach (var o in due) await TransmitAsync(o, retransmission: true).ConfigureAwait(false);
            }
        }

        /// <summary>Waits until every message sent so far has been acknowledged (or the channel closes).</summary>
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
            WebSocket? socket;
            lock (_gate) socket = _socket;
            Close(new DataChannelClosure(false, "Closed by the client.", null));
            if (socket != null)
            {
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                    if (socket.State == WebSocketState.Open)
                        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "Bye", cts.Token).ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The socket is going away anyway.
                }
                socket.Abort();
                socket.Dispose();
            }
        }

        private void Close(DataChannelClosure closure)
        {
            if (!_closed.TrySetResult(closure)) return;
            _acks.Writer.TryComplete();
            _lifetime.Cancel();
            TaskCompletionSource<bool> signal;
            lock (_gate) signal = _resumed;
            signal.TrySetResult(true);
        }

        public void Dispose()
        {
            CloseAsync().GetAwaiter().GetResult();
            _lifetime.Dispose();
        }
    }
}
