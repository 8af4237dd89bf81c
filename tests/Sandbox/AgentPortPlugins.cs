using System;
using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Channels;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Sandbox
{
    /// <summary>A session plugin of the agent (port, shell, command), driven by <see cref="AgentChannel"/>.</summary>
    internal abstract class AgentPlugin
    {
        /// <summary>StreamDataPayloadSize: the agent reads at most this much per output_stream_data message.</summary>
        public const int StreamDataPayloadSize = 1024;

        protected AgentPlugin(AgentChannel channel)
        {
            Channel = channel;
        }

        protected AgentChannel Channel { get; }
        public abstract string Kind { get; }
        /// <summary>The SessionType of the handshake (the agent's plugin name).</summary>
        public abstract string SessionType { get; }
        public abstract bool RequiresHandshake { get; }
        public virtual JsonNode? HandshakeProperties() => new JsonObject();
        public virtual string HandshakeCustomerMessage() => "";
        public virtual void OnHandshakeResponse(HandshakeResponsePayload response)
        {
        }

        /// <summary>Runs until the plugin is done; returns the channel_closed Output to use (null: the default).</summary>
        public abstract Task<string?> RunAsync(CancellationToken cancellation);

        /// <summary>Handles one in-order input_stream_data message; false means not ready (the agent does not acknowledge it).</summary>
        public abstract Task<bool> HandleInputAsync(AgentMessage message);

        public abstract void Stop();

        public static AgentPlugin Create(AgentChannel channel)
        {
            var session = channel.Session;
            if (session.IsPortForwarding)
            {
                // An agent newer than 3.0.196.0 has the mux implementation; it picks it for LocalPortForwarding when the
                // client's HandshakeResponse version is >= 1.1.70 (decided after the handshake, see PortPlugin).
                return new PortPlugin(channel);
            }
            if (session.IsNonInteractiveCommand) return new CommandPlugin(channel);
            if (session.IsShell) return new ShellPlugin(channel);
            throw new InvalidOperationException("The sandbox agent has no plugin for document " + session.DocumentName + ".");
        }

        protected static uint ReadFlag(AgentMessage message) =>
            message.Payload.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(message.Payload) : 0;

        protected Task SendFlagAsync(PayloadTypeFlag flag)
        {
            var payload = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)flag);
            return Channel.SendStreamDataAsync(PayloadType.Flag, payload);
        }

        /// <summary>Dials the destination as DialCall does: an empty host is the instance itself, else the resolved addresses.</summary>
        protected static async Task<TcpClient> DialAsync(SandboxWorld world, string? host, string portNumber, CancellationToken cancellation)
        {
            if (!int.TryParse(portNumber, NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port < 1 || port > 65535)
                throw new IOException("dial tcp: address " + portNumber + ": invalid port");
            var (address, targetPort) = world.ResolveEndpoint(host, port) ?? throw new IOException("missing address");
            var client = new TcpClient(AddressFamily.InterNetwork) { NoDelay = true };
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
                timeout.CancelAfter(TimeSpan.FromSeconds(10));
                await client.ConnectAsync(IPAddress.Parse(address), targetPort, timeout.Token).ConfigureAwait(false);
                return client;
            }
            catch (Exception ex) when (ex is SocketException || ex is OperationCanceledException)
            {
                client.Dispose();
                throw new IOException("dial tcp " + address + ":" + port.ToString(CultureInfo.InvariantCulture) + ": " + ex.Message, ex);
            }
        }
    }

    /// <summary>
    /// The port plugin (AWS-StartPortForwardingSession[ToRemoteHost]). Mux mode (smux v1 server over the Output byte
    /// stream) when the agent version is above 3.0.196.0, the type is LocalPortForwarding and the client's
    /// HandshakeResponse ClientVersion is at least 1.1.70; basic mode (one TCP connection at a time) otherwise.
    /// </summary>
    internal sealed class PortPlugin : AgentPlugin
    {
        public const string MuxSupportedAfterAgentVersion = "3.0.196.0";
        public const string MuxSupportedClientVersion = "1.1.70";
        public const string KeepAliveDisabledAfterClientVersion = "1.2.331.0";
        public const string TerminateSessionFlagSupportedAfterAgentVersion = "2.3.722.0";
        /// <summary>
        /// The first release of commit 5bdad830 (port_mux.go: <c>config.KeepAliveDisabled = true</c> for every client). Before
        /// it (3.0.222.0 to 3.1.1374.0) the smux server was <c>smux.Server(conn, nil)</c>: DefaultConfig, keepalive on.
        /// </summary>
        public const string KeepAliveOffFromAgentVersion = "3.1.1446.0";
        /// <summary>The first release of commit 4426b37d: keepalive off only for clients above 1.2.331.0 (port.go muxKeepAliveDisabledAfterThisClientVersion).</summary>
        public const string KeepAliveByClientVersionFromAgentVersion = "3.1.1575.0";

        /// <summary>Whether an agent of <paramref name="agentVersion"/> runs smux keepalive for a client of <paramref name="clientVersion"/>.</summary>
        public static bool AgentRunsKeepAlive(string agentVersion, string clientVersion)
        {
            if (SandboxVersion.Compare(agentVersion, KeepAliveOffFromAgentVersion) < 0) return true;
            if (SandboxVersion.Compare(agentVersion, KeepAliveByClientVersionFromAgentVersion) < 0) return false;
            return SandboxVersion.Compare(clientVersion, KeepAliveDisabledAfterClientVersion) <= 0;
        }

        private AgentPlugin? _mode;

        public PortPlugin(AgentChannel channel)
            : base(channel)
        {
        }

        public override string Kind => _mode?.Kind ?? "port";
        /// <summary>The mux or basic session once the handshake chose one.</summary>
        public AgentPlugin? Mode => _mode;
        public override string SessionType => "Port";
        public override bool RequiresHandshake => true;
        private string? Host => Channel.Session.DocumentName == SsmDocuments.PortForwardingToRemoteHost ? Channel.Session.Parameter("host") : null;
        private string PortNumber => Channel.Session.Parameter("portNumber") ?? "80";

        // Order as recorded from the agent double the golden vectors came from: portNumber, localPortNumber, type, host.
        public override JsonNode HandshakeProperties()
        {
            var properties = new JsonObject
            {
                ["portNumber"] = PortNumber,
                ["localPortNumber"] = Channel.Session.Parameter("localPortNumber") ?? "0",
            };
            if (Channel.Options.PortDocumentType is { } type) properties["type"] = type;
            if (Host != null) properties["host"] = Host;
            return properties;
        }

        public override void OnHandshakeResponse(HandshakeResponsePayload response)
        {
            var agentHasMux = SandboxVersion.Compare(Channel.AgentVersion, MuxSupportedAfterAgentVersion) > 0;
            var clientVersion = response.ClientVersion ?? "";
            // port.go GetSession: mux only for type LocalPortForwarding and a client of at least 1.1.70; basic otherwise.
            var localPortForwarding = string.Equals(Channel.Options.PortDocumentType, "LocalPortForwarding", StringComparison.Ordinal);
            if (agentHasMux && localPortForwarding && SandboxVersion.Compare(clientVersion, MuxSupportedClientVersion) >= 0)
            {
                _mode = new MuxPortSession(Channel, Host, PortNumber, AgentRunsKeepAlive(Channel.AgentVersion, clientVersion));
            }
            else
            {
                _mode = new BasicPortSession(Channel, Host, PortNumber);
            }
        }

        public override Task<string?> RunAsync(CancellationToken cancellation) =>
            (_mode ?? throw new InvalidOperationException("The port session has no mode before the handshake.")).RunAsync(cancellation);

        public override Task<bool> HandleInputAsync(AgentMessage message) => _mode == null ? Task.FromResult(false) : _mode.HandleInputAsync(message);

        public override void Stop() => _mode?.Stop();
    }

    /// <summary>Basic port mode (port_basic.go): one destination connection, dialled at start and again on the first data after it closed.</summary>
    internal sealed class BasicPortSession : AgentPlugin
    {
        private readonly string? _host;
        private readonly string _portNumber;
        private readonly Channel<TcpClient> _connections = System.Threading.Channels.Channel.CreateUnbounded<TcpClient>();
        private readonly TaskCompletionSource<string?> _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly object _gate = new();
        private TcpClient? _current;
        private bool _stopped;

        // port_basic.go IsConnectionAvailable (p.conn != nil): false until InitializeSession's first dial has succeeded.
        // A closed connection stays assigned there, so after a disconnect input is taken (and dials again).
        private bool _initialized;

        public BasicPortSession(AgentChannel channel, string? host, string portNumber)
            : base(channel)
        {
            _host = host;
            _portNumber = portNumber;
        }

        public override string Kind => "basic";
        public override string SessionType => "Port";
        public override bool RequiresHandshake => true;

        public override async Task<string?> RunAsync(CancellationToken cancellation)
        {
            TcpClient first;
            try
            {
                if (Channel.Options.BasicInitialDialGate is { } gate) await gate().WaitAsync(cancellation).ConfigureAwait(false);
                first = await DialAsync(Channel.World, _host, _portNumber, cancellation).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                return "Unable to connect to specified port: " + ex.Message;
            }
            lock (_gate)
            {
                _current = first;
                _initialized = true;
            }
            _connections.Writer.TryWrite(first);
            var pump = Task.Run(() => WritePumpAsync(cancellation));
            var finished = await Task.WhenAny(pump, _done.Task).ConfigureAwait(false);
            return await finished.ConfigureAwait(false);
        }

        // WritePump: while the channel is active, read at most 1024 bytes from the destination, send them as one message
        // (a blocking write), sleep 1 ms; on EOF/error close the connection and wait for a redial.
        private async Task<string?> WritePumpAsync(CancellationToken cancellation)
        {
            var buffer = new byte[StreamDataPayloadSize];
            var pacer = Channel.NewOutputReadPacer();
            while (await _connections.Reader.WaitToReadAsync(cancellation).ConfigureAwait(false))
            {
                if (!_connections.Reader.TryRead(out var connection)) continue;
                try
                {
                    var stream = connection.GetStream();
                    while (true)
                    {
                        await Channel.WaitActiveAsync(cancellation).ConfigureAwait(false);
                        var read = await stream.ReadAsync(buffer.AsMemory(), cancellation).ConfigureAwait(false);
                        if (read == 0) break;
                        // SendStreamDataAsync has copied the bytes into the message when it completes: the buffer is reused.
                        await Channel.SendStreamDataAsync(PayloadType.Output, buffer.AsMemory(0, read)).ConfigureAwait(false);
                        await pacer.PauseAsync(cancellation).ConfigureAwait(false);
                    }
                }
                catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException || ex is InvalidOperationException)
                {
                    // Closed by DisconnectToPort or by the destination.
                }
                lock (_gate)
                {
                    if (ReferenceEquals(_current, connection)) _current = null;
                }
                connection.Dispose();
                Interlocked.Increment(ref Channel.Counters._destinationReadsEnded);
            }
            return null;
        }

        public override async Task<bool> HandleInputAsync(AgentMessage message)
        {
            lock (_gate)
            {
                if (!_initialized)
                {
                    // port.go InputStreamMessageHandler: "TCP connection unavailable. Reject incoming message packet"
                    // (ErrHandlerNotReady): not acknowledged, the client resends it once the first dial has succeeded.
                    Interlocked.Increment(ref Channel.Counters._inputNotReady);
                    return false;
                }
            }
            switch (message.PayloadType)
            {
                case PayloadType.Output:
                {
                    TcpClient? connection;
                    lock (_gate) connection = _current;
                    if (connection == null)
                    {
                        // reconnectToPort: the first data after a disconnect dials again; a failed dial ends the session.
                        try
                        {
                            connection = await DialAsync(Channel.World, _host, _portNumber, Channel.Lifetime).ConfigureAwait(false);
                        }
                        catch (IOException ex)
                        {
                            _done.TrySetResult("Unable to connect to specified port: " + ex.Message);
                            return false;
                        }
                        lock (_gate)
                        {
                            if (_stopped)
                            {
                                connection.Dispose();
                                return false;
                            }
                            _current = connection;
                        }
                        _connections.Writer.TryWrite(connection);
                    }
                    try
                    {
                        await connection.GetStream().WriteAsync(message.Payload, 0, message.Payload.Length).ConfigureAwait(false);
                        return true;
                    }
                    catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is InvalidOperationException)
                    {
                        // "Unable to write to port": not acknowledged, the client's resend finds the reconnect pending.
                        Disconnect(connection);
                        return false;
                    }
                }
                case PayloadType.Flag:
                    switch ((PayloadTypeFlag)ReadFlag(message))
                    {
                        case PayloadTypeFlag.DisconnectToPort:
                            TcpClient? current;
                            lock (_gate) current = _current;
                            if (current != null) Disconnect(current);
                            break;
                        case PayloadTypeFlag.TerminateSession:
                            // Handled by agents after 2.3.722.0 (session-manager-plugin config.go
                            // TerminateSessionFlagSupportedAfterThisAgentVersion); older ones ignore the flag.
                            if (SandboxVersion.Compare(Channel.AgentVersion, PortPlugin.TerminateSessionFlagSupportedAfterAgentVersion) > 0) _done.TrySetResult(null);
                            else Channel.Log("TerminateSession flag ignored (agent " + Channel.AgentVersion + ")");
                            break;
                    }
                    return true;
                default:
                    return true;
            }
        }

        private void Disconnect(TcpClient connection)
        {
            lock (_gate)
            {
                if (ReferenceEquals(_current, connection)) _current = null;
            }
            connection.Dispose();
        }

        public override void Stop()
        {
            TcpClient? current;
            lock (_gate)
            {
                _stopped = true;
                current = _current;
                _current = null;
            }
            current?.Dispose();
            _connections.Writer.TryComplete();
            _done.TrySetResult(null);
        }
    }

    /// <summary>
    /// Mux port mode (port_mux.go with xtaci/smux v1.5.15 DefaultConfig: version 1, MaxFrameSize 32768, MaxReceiveBuffer
    /// 4194304, keepalive NOP every 10 s and a 30 s receive timeout where <see cref="PortPlugin.AgentRunsKeepAlive"/>). The smux
    /// server's output is read in pieces of at most 1024 bytes, one output_stream_data each, so frames span messages.
    /// <para>
    /// Flow control as smux v1: data delivered to streams and not yet read by their destination writers takes tokens
    /// from the session's bucket; while the bucket is empty the receive loop reads no further frame, and since the agent
    /// handles input in its WebSocket read goroutine, the data channel then reads and acknowledges nothing. The smux
    /// output (the unix socket to transferDataToMgs) is bounded too: stream writers wait while it is full.
    /// </para>
    /// </summary>
    internal sealed class MuxPortSession : AgentPlugin
    {
        public const int MaxFrameSize = 32768;
        /// <summary>What the unix socket between the smux server and transferDataToMgs holds before smux writes block.</summary>
        public const int OutputBufferBytes = 256 * 1024;
        private readonly string? _host;
        private readonly string _portNumber;
        private readonly bool _keepAlive;
        private readonly SmuxDecoder _decoder = new();
        private readonly Dictionary<uint, MuxStream> _streams = new();
        private readonly object _gate = new();
        private readonly Pipe _output = new(new PipeOptions(pauseWriterThreshold: OutputBufferBytes, resumeWriterThreshold: OutputBufferBytes / 2, useSynchronizationContext: false));
        private readonly SemaphoreSlim _outputLock = new(1, 1);
        private readonly CancellationTokenSource _stop = new();
        private readonly TaskCompletionSource<string?> _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly object _bucketGate = new();
        private long _bucket;
        private TaskCompletionSource _tokensReturned = new(TaskCreationOptions.RunContinuationsAsynchronously);
        // Whether WaitForTokensAsync took _tokensReturned's task since it was made: only then is there anyone to wake
        // (a fresh one per return of tokens cost an allocation per smux frame read).
        private bool _tokensAwaited;
        private int _dataReady;
        private bool _closed;

        public MuxPortSession(AgentChannel channel, string? host, string portNumber, bool keepAlive)
            : base(channel)
        {
            _host = host;
            _portNumber = portNumber;
            _keepAlive = keepAlive;
            _bucket = Math.Max(1, channel.Options.SmuxMaxReceiveBuffer);
        }

        public override string Kind => "mux";
        public override string SessionType => "Port";
        public override bool RequiresHandshake => true;
        public bool KeepAliveEnabled => _keepAlive;

        /// <summary>Tokens left in the smux bucket (may be negative: a frame is taken whole once the bucket is above 0).</summary>
        public long BucketTokens
        {
            get { lock (_bucketGate) return _bucket; }
        }

        public override async Task<string?> RunAsync(CancellationToken cancellation)
        {
            var transfer = Task.Run(() => TransferToMgsAsync(cancellation));
            var keepAlive = _keepAlive ? Task.Run(() => KeepAliveAsync(cancellation)) : Task.CompletedTask;
            var finished = await Task.WhenAny(transfer, _done.Task).ConfigureAwait(false);
            return await finished.ConfigureAwait(false);
        }

        // transferDataToMgs: while the channel is active, each read of the smux connection (<= 1024 bytes of whatever
        // frames are waiting) is one message, sent with a blocking write; then sleep 1 ms.
        private async Task<string?> TransferToMgsAsync(CancellationToken cancellation)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellation, _stop.Token);
            var token = linked.Token;
            var reader = _output.Reader;
            var pacer = Channel.NewOutputReadPacer();
            var payload = new byte[StreamDataPayloadSize];
            try
            {
                while (true)
                {
                    await Channel.WaitActiveAsync(token).ConfigureAwait(false);
                    var result = await reader.ReadAsync(token).ConfigureAwait(false);
                    var buffer = result.Buffer;
                    if (buffer.IsEmpty)
                    {
                        reader.AdvanceTo(buffer.End);
                        if (result.IsCompleted || result.IsCanceled) return null;
                        continue;
                    }
                    var piece = buffer.Slice(0, Math.Min(StreamDataPayloadSize, buffer.Length));
                    var length = (int)piece.Length;
                    piece.CopyTo(payload);
                    reader.AdvanceTo(piece.End);
                    // SendStreamDataAsync has copied the bytes into the message when it completes: the buffer is reused.
                    await Channel.SendStreamDataAsync(PayloadType.Output, payload.AsMemory(0, length)).ConfigureAwait(false);
                    await pacer.PauseAsync(token).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException || ex is InvalidOperationException)
            {
                return null;
            }
        }

        private async Task KeepAliveAsync(CancellationToken cancellation)
        {
            var interval = Channel.Options.SmuxKeepAliveInterval;
            var timeout = Channel.Options.SmuxKeepAliveTimeout;
            var nextPing = interval;
            var nextCheck = timeout;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                while (!cancellation.IsCancellationRequested && !_done.Task.IsCompleted)
                {
                    var wait = (nextPing < nextCheck ? nextPing : nextCheck) - clock.Elapsed;
                    if (wait > TimeSpan.Zero) await Task.Delay(wait, cancellation).ConfigureAwait(false);
                    if (clock.Elapsed >= nextPing)
                    {
                        if (await WriteFrameAsync(SmuxCommand.Nop, 0, null, 0, 0).ConfigureAwait(false)) Interlocked.Increment(ref Channel.Counters._smuxNopsSent);
                        nextPing += interval;
                    }
                    if (clock.Elapsed >= nextCheck)
                    {
                        nextCheck += timeout;
                        // recvLoop may be blocked on an empty bucket: then the session is not closed.
                        if (Interlocked.Exchange(ref _dataReady, 0) == 0 && BucketTokens > 0)
                        {
                            Channel.Log("smux keepalive timeout: nothing received for " + timeout.TotalSeconds.ToString(CultureInfo.InvariantCulture) + " s, closing the mux session");
                            Interlocked.Exchange(ref Channel.Counters._smuxKeepAliveCloses, 1);
                            _done.TrySetResult(null);
                            return;
                        }
                        Interlocked.Increment(ref Channel.Counters._smuxKeepAliveChecks);
                    }
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        /// <summary>Writes one smux frame to the output (whole, never interleaved), waiting while the output is full. False once stopped.</summary>
        private Task<bool> WriteFrameAsync(SmuxCommand command, uint streamId, byte[]? data, int offset, int count) =>
            WriteOutputAsync(null, command, streamId, data, offset, count);

        /// <summary>
        /// Writes <paramref name="raw"/> or else one smux frame (header and data written straight into the pipe) as one
        /// write, then waits while the output is full, as Pipe.WriteAsync does.
        /// </summary>
        private async Task<bool> WriteOutputAsync(byte[]? raw, SmuxCommand command = SmuxCommand.Nop, uint streamId = 0, byte[]? data = null, int offset = 0, int count = 0)
        {
            try
            {
                await _outputLock.WaitAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return false;
            }
            try
            {
                if (_stop.IsCancellationRequested) return false;
                var writer = _output.Writer;
                if (raw != null)
                {
                    await writer.WriteAsync(raw, _stop.Token).ConfigureAwait(false);
                    return true;
                }
                WriteFrame(writer, command, streamId, data, offset, count);
                await writer.FlushAsync(_stop.Token).ConfigureAwait(false);
                return true;
            }
            catch (Exception ex) when (ex is OperationCanceledException || ex is InvalidOperationException)
            {
                return false;
            }
            finally
            {
                _outputLock.Release();
            }
        }

        /// <summary>Hostile injection: raw bytes into the smux output, between whole frames.</summary>
        public async Task InjectAsync(byte[] bytes)
        {
            if (!await WriteOutputAsync(bytes).ConfigureAwait(false)) throw new InvalidOperationException("The mux session has stopped.");
        }

        private static void WriteFrame(PipeWriter writer, SmuxCommand command, uint streamId, byte[]? data, int offset, int count)
        {
            var span = writer.GetSpan(SmuxCodec.HeaderLength + count);
            // SmuxCodec.WriteHeader's layout: version 1, command, payload length (uint16 LE), stream id (uint32 LE).
            span[0] = SmuxCodec.Version1;
            span[1] = (byte)command;
            BinaryPrimitives.WriteUInt16LittleEndian(span.Slice(2), checked((ushort)count));
            BinaryPrimitives.WriteUInt32LittleEndian(span.Slice(4), streamId);
            if (count > 0) data.AsSpan(offset, count).CopyTo(span.Slice(SmuxCodec.HeaderLength));
            writer.Advance(SmuxCodec.HeaderLength + count);
        }

        // ---- the smux bucket (session.go bucket / returnTokens / recvLoop) -------------------------------------------

        private void TakeTokens(int count)
        {
            lock (_bucketGate) _bucket -= count;
            Interlocked.Add(ref Channel.Counters._smuxBufferedBytes, count);
        }

        private void ReturnTokens(int count)
        {
            if (count == 0) return;
            TaskCompletionSource? signal = null;
            lock (_bucketGate)
            {
                _bucket += count;
                if (_bucket > 0 && _tokensAwaited)
                {
                    _tokensAwaited = false;
                    signal = _tokensReturned;
                    _tokensReturned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }
            Interlocked.Add(ref Channel.Counters._smuxBufferedBytes, -count);
            signal?.TrySetResult();
        }

        /// <summary>recvLoop: before each frame header, wait while the bucket is used up (or until the mux session stops).</summary>
        private async Task WaitForTokensAsync()
        {
            var counted = false;
            try
            {
                while (true)
                {
                    Task wait;
                    lock (_bucketGate)
                    {
                        if (_bucket > 0 || _stop.IsCancellationRequested) return;
                        wait = _tokensReturned.Task;
                        _tokensAwaited = true;
                    }
                    if (!counted)
                    {
                        counted = true;
                        Interlocked.Increment(ref Channel.Counters._smuxReceiveStalls);
                        Interlocked.Exchange(ref Channel.Counters._smuxReceiveWaiting, 1);
                    }
                    try
                    {
                        await wait.WaitAsync(_stop.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }
            }
            finally
            {
                if (counted) Interlocked.Exchange(ref Channel.Counters._smuxReceiveWaiting, 0);
            }
        }

        public override async Task<bool> HandleInputAsync(AgentMessage message)
        {
            switch (message.PayloadType)
            {
                case PayloadType.Output:
                    IReadOnlyList<SmuxFrame> frames;
                    try
                    {
                        frames = _decoder.Feed(message.Payload);
                    }
                    catch (SsmProtocolException ex)
                    {
                        // smux recvLoop: a protocol error kills the mux session, which ends the plugin.
                        Channel.Log("smux protocol error: " + ex.Message);
                        _done.TrySetResult(null);
                        return true;
                    }
                    if (message.Payload.Length > 0) Interlocked.Exchange(ref _dataReady, 1);
                    foreach (var frame in frames)
                    {
                        // The agent writes the payload to the smux server's connection and the recvLoop reads it only while
                        // the bucket has tokens: the data channel's read loop (which acknowledges) waits here meanwhile.
                        await WaitForTokensAsync().ConfigureAwait(false);
                        if (_stop.IsCancellationRequested) break;
                        Interlocked.Exchange(ref _dataReady, 1);
                        HandleFrame(frame);
                    }
                    return true;
                case PayloadType.Flag:
                    if ((PayloadTypeFlag)ReadFlag(message) == PayloadTypeFlag.TerminateSession) _done.TrySetResult(null);
                    return true;
                default:
                    return true;
            }
        }

        private void HandleFrame(SmuxFrame frame)
        {
            MuxStream? stream;
            switch (frame.Command)
            {
                case SmuxCommand.Nop:
                    Interlocked.Increment(ref Channel.Counters._smuxNopsReceived);
                    return;
                case SmuxCommand.Syn:
                    lock (_gate)
                    {
                        if (_closed || _streams.ContainsKey(frame.StreamId)) return;
                        stream = new MuxStream(this, frame.StreamId);
                        _streams.Add(frame.StreamId, stream);
                    }
                    _ = stream.RunAsync();
                    return;
                case SmuxCommand.Psh:
                    // A PSH for a stream the session does not know is read and dropped (no tokens taken).
                    lock (_gate) _streams.TryGetValue(frame.StreamId, out stream);
                    stream?.FromClient(frame.Payload);
                    return;
                case SmuxCommand.Fin:
                    lock (_gate) _streams.TryGetValue(frame.StreamId, out stream);
                    stream?.FinFromClient();
                    return;
            }
        }

        private void Remove(MuxStream stream)
        {
            lock (_gate)
            {
                if (_streams.TryGetValue(stream.Id, out var s) && ReferenceEquals(s, stream)) _streams.Remove(stream.Id);
            }
        }

        /// <summary>Open streams (for tests).</summary>
        public int StreamCount
        {
            get { lock (_gate) return _streams.Count; }
        }

        public override void Stop()
        {
            List<MuxStream> streams;
            lock (_gate)
            {
                _closed = true;
                streams = new List<MuxStream>(_streams.Values);
                _streams.Clear();
            }
            foreach (var s in streams) s.Abort();
            _stop.Cancel();
            TaskCompletionSource signal;
            lock (_bucketGate) signal = _tokensReturned;
            signal.TrySetResult();
            _output.Reader.CancelPendingRead();
            _output.Writer.CancelPendingFlush();
            _done.TrySetResult(null);
        }

        /// <summary>
        /// One smux stream: dial per stream (a failed dial sends Flag ConnectToPortError, then FIN for the stream; the
        /// session and other streams go on). Data relays both ways; when either side ends, the agent closes the
        /// destination connection completely and sends FIN (handleDataTransfer: no half-close). Data from the client
        /// waits in the stream's buffer (taking smux tokens) until the destination writer reads it; closing the stream
        /// returns the tokens of what it still held (streamClosed / recycleTokens).
        /// </summary>
        private sealed class MuxStream
        {
            private readonly MuxPortSession _owner;
            private readonly object _gate = new();
            private readonly Queue<byte[]> _buffer = new();
            private readonly CancellationTokenSource _abort = new();
            private TaskCompletionSource _dataAvailable = new(TaskCreationOptions.RunContinuationsAsynchronously);
            private int _buffered;
            private bool _fin;
            private bool _closed;
            private int _finSent;
            private TcpClient? _client;

            public MuxStream(MuxPortSession owner, uint id)
            {
                _owner = owner;
                Id = id;
            }

            public uint Id { get; }

            /// <summary>pushBytes: the data joins the stream's buffer and takes tokens from the session's bucket.</summary>
            public void FromClient(byte[] data)
            {
                if (data.Length == 0) return;
                TaskCompletionSource signal;
                lock (_gate)
                {
                    if (_closed || _fin) return;
                    _buffer.Enqueue(data);
                    _buffered += data.Length;
                    _owner.TakeTokens(data.Length);
                    signal = _dataAvailable;
                }
                signal.TrySetResult();
            }

            public void FinFromClient()
            {
                TaskCompletionSource signal;
                lock (_gate)
                {
                    _fin = true;
                    signal = _dataAvailable;
                }
                signal.TrySetResult();
            }

            /// <summary>stream.Read: the next buffered piece (its tokens go back to the bucket), or null at FIN / close.</summary>
            private async Task<byte[]?> ReadAsync()
            {
                while (true)
                {
                    Task wait;
                    lock (_gate)
                    {
                        if (_buffer.TryDequeue(out var data))
                        {
                            _buffered -= data.Length;
                            _owner.ReturnTokens(data.Length);
                            return data;
                        }
                        if (_fin || _closed) return null;
                        if (_dataAvailable.Task.IsCompleted) _dataAvailable = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                        wait = _dataAvailable.Task;
                    }
                    await wait.WaitAsync(_abort.Token).ConfigureAwait(false);
                }
            }

            /// <summary>The stream is closed: what it still holds is dropped and its tokens go back to the bucket.</summary>
            private void CloseReceive()
            {
                int recycled;
                TaskCompletionSource signal;
                lock (_gate)
                {
                    _closed = true;
                    recycled = _buffered;
                    _buffered = 0;
                    _buffer.Clear();
                    signal = _dataAvailable;
                }
                _owner.ReturnTokens(recycled);
                signal.TrySetResult();
            }

            public async Task RunAsync()
            {
                TcpClient client;
                try
                {
                    client = await DialAsync(_owner.Channel.World, _owner._host, _owner._portNumber, _abort.Token).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is IOException || ex is OperationCanceledException)
                {
                    _owner.Channel.Log("mux stream " + Id.ToString(CultureInfo.InvariantCulture) + ": unable to dial: " + ex.Message);
                    CloseReceive();
                    _owner.Remove(this);
                    if (_abort.IsCancellationRequested) return;
                    await _owner.SendFlagAsync(PayloadTypeFlag.ConnectToPortError).ConfigureAwait(false);
                    await SendFinAsync().ConfigureAwait(false);
                    return;
                }
                _client = client;
                if (_abort.IsCancellationRequested)
                {
                    client.Dispose();
                    return;
                }
                var toDestination = Task.Run(() => CopyToDestinationAsync(client));
                var fromDestination = Task.Run(() => CopyFromDestinationAsync(client));
                await Task.WhenAll(toDestination, fromDestination).ConfigureAwait(false);
                _owner.Remove(this);
            }

            // io.Copy(conn, stream) then conn.Close().
            private async Task CopyToDestinationAsync(TcpClient client)
            {
                try
                {
                    var stream = client.GetStream();
                    while (await ReadAsync().ConfigureAwait(false) is { } data)
                    {
                        await stream.WriteAsync(data, 0, data.Length, _abort.Token).ConfigureAwait(false);
                    }
                }
                catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException || ex is SocketException)
                {
                }
                client.Dispose();
            }

            // io.Copy(stream, conn) then stream.Close() (FIN, tokens recycled); the stream then takes no more client data.
            private async Task CopyFromDestinationAsync(TcpClient client)
            {
                var buffer = new byte[MaxFrameSize];
                try
                {
                    var stream = client.GetStream();
                    while (true)
                    {
                        var read = await stream.ReadAsync(buffer.AsMemory(), _abort.Token).ConfigureAwait(false);
                        if (read == 0) break;
                        if (Volatile.Read(ref _finSent) != 0) break;
                        if (!await _owner.WriteFrameAsync(SmuxCommand.Psh, Id, buffer, 0, read).ConfigureAwait(false)) break;
                    }
                }
                catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException || ex is SocketException)
                {
                }
                CloseReceive();
                _owner.Remove(this);
                await SendFinAsync().ConfigureAwait(false);
                client.Dispose();
            }

            private async Task SendFinAsync()
            {
                if (Interlocked.Exchange(ref _finSent, 1) != 0) return;
                await _owner.WriteFrameAsync(SmuxCommand.Fin, Id, null, 0, 0).ConfigureAwait(false);
            }

            public void Abort()
            {
                _abort.Cancel();
                CloseReceive();
                _client?.Dispose();
            }
        }
    }

    /// <summary>Version comparison as the agent's versionutil.Compare (numeric, dot-separated, missing parts are 0).</summary>
    public static class SandboxVersion
    {
        public static int Compare(string? a, string? b)
        {
            var left = (a ?? "").Split('.');
            var right = (b ?? "").Split('.');
            for (var i = 0; i < Math.Max(left.Length, right.Length); i++)
            {
                var x = i < left.Length && long.TryParse(left[i], NumberStyles.None, CultureInfo.InvariantCulture, out var lx) ? lx : 0;
                var y = i < right.Length && long.TryParse(right[i], NumberStyles.None, CultureInfo.InvariantCulture, out var ly) ? ly : 0;
                if (x != y) return x < y ? -1 : 1;
            }
            return 0;
        }

        /// <summary>
        /// versionutil.Compare(a, b, strictSort: true) for numeric versions: component by component, then the one with
        /// fewer components is the lesser ("1.2.295" &lt; "1.2.295.0").
        /// </summary>
        public static int CompareStrict(string? a, string? b)
        {
            var left = (a ?? "").Split('.');
            var right = (b ?? "").Split('.');
            for (var i = 0; i < left.Length && i < right.Length; i++)
            {
                var x = long.TryParse(left[i], NumberStyles.None, CultureInfo.InvariantCulture, out var lx) ? lx : 0;
                var y = long.TryParse(right[i], NumberStyles.None, CultureInfo.InvariantCulture, out var ly) ? ly : 0;
                if (x != y) return x < y ? -1 : 1;
            }
            return left.Length.CompareTo(right.Length);
        }
    }
}
