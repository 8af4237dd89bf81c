using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// A deliberately small data-channel client for driving the sandbox agent: raw ClientWebSocket + the codec. It records
    /// every frame, acknowledges output_stream_data unless told not to, delivers stream messages in order (deduplicated),
    /// and can resend its own unacknowledged messages. State (sequence numbers) survives <see cref="ConnectAsync"/> calls.
    /// </summary>
    internal sealed class AgentTestClient : IAsyncDisposable
    {
        public static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
        private readonly object _gate = new();
        private readonly List<AgentMessage> _received = new();
        private readonly List<byte[]> _rawFrames = new();
        private readonly List<byte[]> _undecodable = new();
        private long _partialBytes;
        private readonly List<AgentMessage> _delivered = new();
        private readonly Dictionary<long, AgentMessage> _early = new();
        private readonly Dictionary<long, (byte[] Frame, DateTime SentAt)> _unacked = new();
        private readonly SemaphoreSlim _sendLock = new(1, 1);
        private readonly CancellationTokenSource _life = new();
        private ClientWebSocket? _socket;
        private Task? _reader;
        private long _nextSequence;
        private long _expected;
        private SmuxDecoder _smux = new();
        private readonly Dictionary<uint, MemoryStream> _streamData = new();
        private readonly HashSet<uint> _streamFins = new();
        private readonly List<SmuxFrame> _smuxFrames = new();

        public AgentTestClient(string clientVersion = "1.2.0.0")
        {
            ClientVersion = clientVersion;
            _ = Task.Run(ResendLoopAsync);
        }

        public string ClientVersion { get; }
        public bool AutoAck { get; set; } = true;
        /// <summary>Resend own unacknowledged input_stream_data after this long (null: never).</summary>
        public TimeSpan? ResendAfter { get; set; } = TimeSpan.FromMilliseconds(300);
        public WebSocketCloseStatus? CloseStatus { get; private set; }
        public string? CloseDescription { get; private set; }
        /// <summary>Set when the socket ended without a close frame.</summary>
        public Exception? ReceiveError { get; private set; }
        public Task Reader => _reader ?? Task.CompletedTask;

        public async Task ConnectAsync(string streamUrl, string token)
        {
            var socket = new ClientWebSocket();
            using var timeout = new CancellationTokenSource(Wait);
            await socket.ConnectAsync(new Uri(streamUrl), timeout.Token);
            var open = ClientMessages.OpenDataChannel(token, ClientVersion, Guid.NewGuid(), Guid.NewGuid());
            await socket.SendAsync(Encoding.UTF8.GetBytes(open), WebSocketMessageType.Text, true, timeout.Token);
            lock (_gate)
            {
                _socket = socket;
                CloseStatus = null;
                CloseDescription = null;
                ReceiveError = null;
            }
            _reader = Task.Run(() => ReadLoopAsync(socket));
        }

        public WebSocketState State => _socket?.State ?? WebSocketState.None;

        /// <summary>While true the client does not read its WebSocket (the server's writes back up).</summary>
        public bool ReadPaused { get; set; }

        /// <summary>Bytes of the binary message being received that has not ended yet (fragments so far).</summary>
        public long PartialMessageBytes => Interlocked.Read(ref _partialBytes);

        /// <summary>Every complete binary message as received, decodable or not.</summary>
        public IReadOnlyList<byte[]> RawFrames
        {
            get { lock (_gate) return _rawFrames.ToList(); }
        }

        /// <summary>Complete binary messages the codec rejected (kept raw; the client goes on).</summary>
        public IReadOnlyList<byte[]> Undecodable
        {
            get { lock (_gate) return _undecodable.ToList(); }
        }

        private async Task ReadLoopAsync(ClientWebSocket socket)
        {
            var buffer = new byte[128 * 1024];
            var message = new MemoryStream();
            try
            {
                while (true)
                {
                    while (ReadPaused && !_life.IsCancellationRequested) await Task.Delay(10, _life.Token);
                    var r = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), _life.Token);
                    if (r.MessageType == WebSocketMessageType.Close)
                    {
                        lock (_gate)
                        {
                            CloseStatus = r.CloseStatus;
                            CloseDescription = r.CloseStatusDescription;
                        }
                        try
                        {
                            using var t = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                            await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", t.Token);
                        }
                        catch (Exception)
                        {
                        }
                        return;
                    }
                    message.Write(buffer, 0, r.Count);
                    Interlocked.Exchange(ref _partialBytes, r.EndOfMessage ? 0 : message.Length);
                    if (!r.EndOfMessage) continue;
                    var bytes = message.ToArray();
                    message.SetLength(0);
                    AgentMessage decoded;
                    lock (_gate) _rawFrames.Add(bytes);
                    try
                    {
                        decoded = AgentMessageCodec.Decode(bytes);
                    }
                    catch (SsmProtocolException)
                    {
                        lock (_gate) _undecodable.Add(bytes);
                        continue;
                    }
                    await OnMessageAsync(decoded);
                }
            }
            catch (Exception ex) when (ex is WebSocketException || ex is OperationCanceledException || ex is IOException || ex is ObjectDisposedException)
            {
                lock (_gate) ReceiveError = ex;
            }
        }

        private async Task OnMessageAsync(AgentMessage m)
        {
            lock (_gate) _received.Add(m);
            if (m.MessageType == MessageTypes.Acknowledge)
            {
                var content = SsmJson.Deserialize<AcknowledgeContent>(m.Payload);
                lock (_gate) _unacked.Remove(content.AcknowledgedMessageSequenceNumber);
                return;
            }
            if (m.MessageType != MessageTypes.OutputStreamData) return;
            if (AutoAck) await SendFrameAsync(AgentMessageCodec.Encode(ClientMessages.Acknowledge(m)));
            lock (_gate)
            {
                if (m.SequenceNumber < _expected) return;
                _early[m.SequenceNumber] = m;
                while (_early.Remove(_expected, out var next))
                {
                    _delivered.Add(next);
                    if (next.PayloadType == PayloadType.Output) FeedSmux(next.Payload);
                    _expected++;
                }
            }
        }

        private void FeedSmux(byte[] payload)
        {
            if (!_muxMode) return;
            foreach (var f in _smux.Feed(payload))
            {
                _smuxFrames.Add(f);
                if (f.Command == SmuxCommand.Psh)
                {
                    if (!_streamData.TryGetValue(f.StreamId, out var s)) _streamData[f.StreamId] = s = new MemoryStream();
                    s.Write(f.Payload, 0, f.Payload.Length);
                }
                else if (f.Command == SmuxCommand.Fin)
                {
                    _streamFins.Add(f.StreamId);
                }
            }
        }

        /// <summary>
        /// Interpret Output payloads as an smux byte stream. Turning it on also reads the Output already delivered, so a
        /// frame the agent sent between the handshake and this setter (its first keepalive NOP, on a loaded machine) is
        /// not lost.
        /// </summary>
        public bool MuxMode
        {
            get { lock (_gate) return _muxMode; }
            set
            {
                lock (_gate)
                {
                    if (value == _muxMode) return;
                    _muxMode = value;
                    if (!value) return;
                    foreach (var m in _delivered)
                        if (m.PayloadType == PayloadType.Output) FeedSmux(m.Payload);
                }
            }
        }

        private bool _muxMode;

        public IReadOnlyList<AgentMessage> Received
        {
            get { lock (_gate) return _received.ToList(); }
        }

        public IReadOnlyList<AgentMessage> Delivered
        {
            get { lock (_gate) return _delivered.ToList(); }
        }

        public IReadOnlyList<SmuxFrame> SmuxFrames
        {
            get { lock (_gate) return _smuxFrames.ToList(); }
        }

        public int UnackedCount
        {
            get { lock (_gate) return _unacked.Count; }
        }

        public byte[] StreamBytes(uint id)
        {
            lock (_gate) return _streamData.TryGetValue(id, out var s) ? s.ToArray() : Array.Empty<byte>();
        }

        public bool StreamFinished(uint id)
        {
            lock (_gate) return _streamFins.Contains(id);
        }

        /// <summary>All delivered PayloadType 1 bytes as text.</summary>
        public string OutputText(PayloadType type = PayloadType.Output) =>
            Encoding.UTF8.GetString(Delivered.Where(m => m.PayloadType == type).SelectMany(m => m.Payload).ToArray());

        public async Task<T> WaitForAsync<T>(Func<AgentTestClient, T?> probe, string what, TimeSpan? timeout = null)
            where T : class
        {
            var deadline = DateTime.UtcNow + (timeout ?? Wait);
            while (DateTime.UtcNow < deadline)
            {
                var value = probe(this);
                if (value != null) return value;
                await Task.Delay(10);
            }
            throw new TimeoutException("Timed out waiting for " + what + ". Received: " + string.Join(" | ", Received.Select(m => m.ToString())));
        }

        public Task WaitUntilAsync(Func<AgentTestClient, bool> condition, string what, TimeSpan? timeout = null) =>
            WaitForAsync(c => condition(c) ? "" : null, what, timeout);

        public Task<AgentMessage> WaitForDeliveredAsync(PayloadType type, string what) =>
            WaitForAsync(c => c.Delivered.FirstOrDefault(m => m.PayloadType == type), what);

        // ---- sending -----------------------------------------------------------------------------------------------

        public async Task SendFrameAsync(byte[] frame)
        {
            var socket = _socket;
            if (socket == null || socket.State != WebSocketState.Open) return;
            await _sendLock.WaitAsync();
            try
            {
                using var timeout = new CancellationTokenSource(Wait);
                await socket.SendAsync(frame, WebSocketMessageType.Binary, true, timeout.Token);
            }
            catch (Exception ex) when (ex is WebSocketException || ex is OperationCanceledException || ex is ObjectDisposedException || ex is IOException)
            {
            }
            finally
            {
                _sendLock.Release();
            }
        }

        /// <summary>A new input_stream_data with the next sequence number (kept for resending until acknowledged).</summary>
        public Task<AgentMessage> SendInputAsync(PayloadType type, byte[] payload) => SendInputAsync(NextSequence(), type, payload);

        public long NextSequence()
        {
            lock (_gate) return _nextSequence++;
        }

        public async Task<AgentMessage> SendInputAsync(long sequence, PayloadType type, byte[] payload)
        {
            var message = ClientMessages.InputStreamData(sequence, type, payload);
            var frame = AgentMessageCodec.Encode(message);
            lock (_gate) _unacked[sequence] = (frame, DateTime.UtcNow);
            await SendFrameAsync(frame);
            return message;
        }

        public Task SendTextAsync(string text) => SendInputAsync(PayloadType.Output, Encoding.UTF8.GetBytes(text));

        public Task SendFlagAsync(PayloadTypeFlag flag)
        {
            var payload = new byte[4];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)flag);
            return SendInputAsync(PayloadType.Flag, payload);
        }

        public Task SendHandshakeResponseAsync() =>
            SendInputAsync(PayloadType.HandshakeResponse, SsmJson.SerializeToUtf8(new HandshakeResponsePayload
            {
                ClientVersion = ClientVersion,
                ProcessedClientActions = new List<ProcessedClientAction> { ClientMessages.SessionTypeAccepted() },
                Errors = null,
            }));

        /// <summary>Waits for the HandshakeRequest, answers it and waits for HandshakeComplete.</summary>
        public async Task<HandshakeRequestPayload> HandshakeAsync()
        {
            var request = await WaitForDeliveredAsync(PayloadType.HandshakeRequest, "HandshakeRequest");
            await SendHandshakeResponseAsync();
            await WaitForDeliveredAsync(PayloadType.HandshakeComplete, "HandshakeComplete");
            return SsmJson.Deserialize<HandshakeRequestPayload>(request.Payload);
        }

        public Task SmuxAsync(SmuxCommand command, uint streamId, byte[]? data = null) =>
            SendInputAsync(PayloadType.Output, SmuxCodec.Encode(new SmuxFrame(command, streamId, data)));

        private async Task ResendLoopAsync()
        {
            while (!_life.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(50, _life.Token);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                var after = ResendAfter;
                if (after == null) continue;
                List<byte[]> due;
                lock (_gate)
                {
                    due = _unacked.Where(u => DateTime.UtcNow - u.Value.SentAt > after.Value).OrderBy(u => u.Key).Select(u => u.Value.Frame).ToList();
                    foreach (var key in _unacked.Keys.ToList())
                    {
                        if (DateTime.UtcNow - _unacked[key].SentAt > after.Value) _unacked[key] = (_unacked[key].Frame, DateTime.UtcNow);
                    }
                }
                foreach (var frame in due) await SendFrameAsync(frame);
            }
        }

        public void Abort() => _socket?.Abort();

        public async ValueTask DisposeAsync()
        {
            _life.Cancel();
            var socket = _socket;
            if (socket != null)
            {
                try
                {
                    if (socket.State == WebSocketState.Open)
                    {
                        using var t = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", t.Token);
                    }
                }
                catch (Exception)
                {
                }
                socket.Abort();
                socket.Dispose();
            }
        }
    }

    /// <summary>A TCP echo server on 127.0.0.1:0 that counts its connections; can stop accepting.</summary>
    internal sealed class EchoServer : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly List<TcpClient> _clients = new();
        private int _accepted;
        private int _closedByPeer;

        public EchoServer()
        {
            _listener.Start();
            Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
            _ = Task.Run(AcceptLoopAsync);
        }

        public int Port { get; }
        public int Accepted => Volatile.Read(ref _accepted);
        /// <summary>Connections the agent closed (read returned 0).</summary>
        public int ClosedByPeer => Volatile.Read(ref _closedByPeer);
        /// <summary>When set, each accepted connection is handed here instead of echoing.</summary>
        public Action<TcpClient>? OnAccept { get; set; }

        private async Task AcceptLoopAsync()
        {
            while (true)
            {
                TcpClient client;
                try
                {
                    client = await _listener.AcceptTcpClientAsync();
                }
                catch (Exception)
                {
                    return;
                }
                Interlocked.Increment(ref _accepted);
                lock (_clients) _clients.Add(client);
                if (OnAccept is { } handler)
                {
                    handler(client);
                    continue;
                }
                _ = Task.Run(async () =>
                {
                    var buffer = new byte[65536];
                    try
                    {
                        var stream = client.GetStream();
                        while (true)
                        {
                            var n = await stream.ReadAsync(buffer);
                            if (n == 0) break;
                            await stream.WriteAsync(buffer.AsMemory(0, n));
                        }
                        Interlocked.Increment(ref _closedByPeer);
                    }
                    catch (Exception)
                    {
                        Interlocked.Increment(ref _closedByPeer);
                    }
                    client.Dispose();
                });
            }
        }

        public void StopAccepting() => _listener.Stop();

        public void Dispose()
        {
            _listener.Stop();
            lock (_clients)
            {
                foreach (var c in _clients) c.Dispose();
            }
        }
    }
}
