using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Globalization;
using System.Management.Automation;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;

namespace BastionTools.Ssm
{
    /// <summary>The stages of starting a session, for progress reporting.</summary>
    internal enum SessionStage
    {
        Listener,
        StartSession,
        WebSocket,
        Handshake,
        Ready,
    }

    internal enum SessionState
    {
        Starting,
        Connected,
        Reconnecting,
        Closed,
        Failed,
    }

    /// <summary>What a port-forwarding session is asked to do.</summary>
    internal sealed class PortForwardingRequest
    {
        public string Target { get; set; } = "";

        /// <summary>The destination host as the bastion resolves it (an RDS endpoint); null forwards to the bastion itself.</summary>
        public string? RemoteHost { get; set; }

        public int RemotePort { get; set; }

        /// <summary>0 = an ephemeral port.</summary>
        public int LocalPort { get; set; }

        public IPAddress BindAddress { get; set; } = IPAddress.Loopback;

        public string? Reason { get; set; }

        public string DocumentName => RemoteHost == null ? "AWS-StartPortForwardingSession" : "AWS-StartPortForwardingSessionToRemoteHost";

        public Dictionary<string, List<string>> DocumentParameters()
        {
            var p = new Dictionary<string, List<string>>
            {
                ["portNumber"] = new() { RemotePort.ToString(CultureInfo.InvariantCulture) },
                ["localPortNumber"] = new() { LocalPort.ToString(CultureInfo.InvariantCulture) },
            };
            if (RemoteHost != null) p["host"] = new() { RemoteHost };
            return p;
        }
    }

    /// <summary>Events of a running session, kept for Get-BastionSession and narrated while a cmdlet waits.</summary>
    internal sealed class SessionEventLog
    {
        private readonly object _gate = new();
        private readonly Queue<string> _lines = new();
        private readonly int _capacity;

        public SessionEventLog(int capacity = 200) => _capacity = capacity;

        public event Action<string>? Written;

        public void Write(string line)
        {
            var text = DateTime.UtcNow.ToString("HH:mm:ss.fff", CultureInfo.InvariantCulture) + " " + Redactor.RedactPatterns(line);
            lock (_gate)
            {
                _lines.Enqueue(text);
                while (_lines.Count > _capacity) _lines.Dequeue();
            }
            Written?.Invoke(line);
        }

        public string[] Snapshot()
        {
            lock (_gate) return _lines.ToArray();
        }
    }

    /// <summary>
    /// A port-forwarding session: a listener on 127.0.0.1, StartSession, the data channel, the handshake, then every
    /// accepted connection carried through smux (or basic mode for old agents) until the session is stopped.
    /// </summary>
    internal sealed class PortForwardingSession : IDisposable
    {
        private static readonly Version MuxMinimumAgent = new(3, 0, 196, 0);
        private static readonly Version TerminateFlagMinimumAgent = new(2, 3, 722, 0);
        private const string LocalPortForwardingType = "LocalPortForwarding";

        private readonly IAwsApi _api;
        private readonly PortForwardingRequest _request;
        private readonly DataChannelOptions _channelOptions;
        private readonly CancellationTokenSource _lifetime = new();
        private readonly TaskCompletionSource<HandshakeRequestPayload> _handshakeRequested = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource<bool> _handshakeCompleted = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly List<Task> _connections = new();
        private readonly InlineSocketGroup _inlineSockets;
        private volatile bool _readerThread;
        private TcpListener? _listener;
        private TcpListener? _twin;
        private DataChannel? _channel;
        private IPortForwarder? _forwarder;
        private Task? _acceptLoop;
        private int _stopped;
        private Handshake.Answer? _handshake;

        public PortForwardingSession(IAwsApi api, PortForwardingRequest request, DataChannelOptions channelOptions)
        {
            _api = api;
            _request = request;
            _channelOptions = channelOptions;
            _inlineSockets = new InlineSocketGroup(channelOptions.InlineSocketCompletions);
            _inlineSockets.InlineChanged += inline => _channel?.SetInlineCompletions(inline || _readerThread);
        }

        public SessionEventLog Events { get; } = new();
        public ConnectionStatistics Connections { get; } = new();
        public string? SessionId { get; private set; }
        public string Target => _request.Target;
        public string? RemoteHost => _request.RemoteHost;
        public int RemotePort => _request.RemotePort;
        public IPEndPoint? LocalEndPoint { get; private set; }
        public DateTime StartedAtUtc { get; private set; }
        public string? AgentVersion { get; private set; }
        public PortForwardingMode Mode => _forwarder?.Mode ?? PortForwardingMode.Unknown;
        public SessionState State { get; private set; } = SessionState.Starting;
        public string? ClosedReason { get; private set; }

        /// <summary>The ErrorId that says why the session ended, when it did not end because it was asked to.</summary>
        public string? ClosedErrorId { get; private set; }

        /// <summary>Why TerminateSession failed when the session was stopped (null when it succeeded or was not called).</summary>
        public Exception? TerminateFailure { get; private set; }

        public DataChannelStatistics? Channel => _channel?.Statistics;

        /// <summary>The agent's HandshakeComplete CustomerMessage, when it sent one (the official client prints it).</summary>
        public string? CustomerMessage { get; private set; }

        /// <summary>True when the session was ended by the TerminateSession flag the agent acknowledged (no TerminateSession call needed).</summary>
        public bool TerminatedByFlag { get; private set; }

        internal DataChannel? DataChannel => _channel;

        /// <summary>Whether the session's local sockets run their completions inline now (at most one local connection open; <see cref="InlineSocketGroup"/>).</summary>
        internal bool InlineCompletions => _inlineSockets.Inline;

        /// <summary>
        /// Whether the local connections are read by the session's reader thread (<see cref="LocalReadReactor"/>): a
        /// multiplexed session with inline completions where the runtime has them. The data channel's WebSocket is then
        /// handled on the socket engine's thread whatever the number of connections, since no local read competes for it.
        /// </summary>
        internal bool ReadsOnReaderThread => _readerThread;

        internal IPortForwarder? Forwarder => _forwarder;

        /// <summary>Completes when the session has ended (stopped, closed by the service, or broken).</summary>
        public Task Completion => _completion.Task;

        private readonly TaskCompletionSource<bool> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public async Task StartAsync(Action<SessionStage> progress, TimeSpan handshakeTimeout, CancellationToken cancellationToken)
        {
            progress(SessionStage.Listener);
            OpenListeners();
            LocalEndPoint = (IPEndPoint)_listener!.LocalEndpoint;
            Events.Write($"Listening on {LocalEndPoint}{(_twin == null ? "" : " and " + _twin.LocalEndpoint)}.");

            try
            {
                progress(SessionStage.StartSession);
                var endpoint = await _api.StartSessionAsync(_request.Target, _request.DocumentName, _request.DocumentParameters(), _request.Reason, cancellationToken).ConfigureAwait(false);
                SessionId = endpoint.SessionId;
                Events.Write($"Session {SessionId} started on {_request.Target} ({_request.DocumentName}).");

                progress(SessionStage.WebSocket);
                _channel = new DataChannel(endpoint, _channelOptions, OnStreamMessage, ct => SessionResumer.ResumeAsync(_api, SessionId!, ct), Events.Write,
                    () => _forwarder?.WriteHeldOutput(), OnOutputInPlace, handlersNeverBlock: true);
                _channel.StateChanged += OnChannelStateChanged;
                _channel.SetInlineCompletions(_inlineSockets.Inline);
                await _channel.OpenAsync(cancellationToken).ConfigureAwait(false);

                progress(SessionStage.Handshake);
                using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
                {
                    timeout.CancelAfter(handshakeTimeout);
                    var done = await Task.WhenAny(_handshakeCompleted.Task, _channel.Completion, Task.Delay(Timeout.Infinite, timeout.Token)).ConfigureAwait(false);
                    if (done != _handshakeCompleted.Task)
                    {
                        var closure = _channel.Completion.IsCompleted ? _channel.Completion.Result : null;
                        cancellationToken.ThrowIfCancellationRequested();
                        throw new BastionToolsException(ErrorIds.BastionHandshakeFailed, ErrorCategory.ProtocolError,
                            closure != null
                                ? $"The session ended during the handshake: {closure.Error?.Message ?? closure.Output ?? "closed by the service"}"
                                : $"The bastion's agent did not complete the handshake within {handshakeTimeout.TotalSeconds:0} s.",
                            SessionId, "Check the agent on the bastion (Get-BastionInstance) and try again.");
                    }
                }
                StartedAtUtc = DateTime.UtcNow;
                State = SessionState.Connected;
                progress(SessionStage.Ready);
                Events.Write($"Ready: {Mode} mode, agent {AgentVersion}.");
                var primary = _listener!;
                var twinListener = _twin;
                _acceptLoop = twinListener == null
                    ? Task.Run(() => AcceptLoopAsync(primary))
                    : Task.WhenAll(Task.Run(() => AcceptLoopAsync(primary)), Task.Run(() => AcceptLoopAsync(twinListener)));
                _ = _channel.Completion.ContinueWith(t => OnChannelClosed(t.Result), TaskScheduler.Default);
            }
            catch
            {
                await StopAsync(terminate: SessionId != null).ConfigureAwait(false);
                throw;
            }
        }

        /// <summary>How many automatic ports are tried for one that is free on both loopbacks.</summary>
        private const int AutomaticPortAttempts = 16;

        /// <summary>
        /// Listens on the requested address and port and, for a loopback address, on the other loopback (127.0.0.1 and
        /// [::1]) with the same port: "localhost" is ::1 first for many clients, and a [::1]:port left free could be taken
        /// by another local user, who would then receive what was meant for the tunnel (a password, a token). A machine
        /// without the other loopback (IPv6 disabled) has nothing there for anyone to take: the tunnel listens on one.
        /// A -LocalPort held on the other loopback is LocalPortUnavailable; an automatic port (0) is chosen again.
        /// </summary>
        private void OpenListeners()
        {
            var twinAddress = IPAddress.Loopback.Equals(_request.BindAddress) ? IPAddress.IPv6Loopback
                : IPAddress.IPv6Loopback.Equals(_request.BindAddress) ? IPAddress.Loopback
                : null;
            for (var attempt = 1; ; attempt++)
            {
                TcpListener listener;
                try
                {
                    listener = new TcpListener(_request.BindAddress, _request.LocalPort);
                    listener.Start(512);
                }
                catch (SocketException ex)
                {
                    throw new BastionToolsException(ErrorIds.LocalPortUnavailable, ErrorCategory.ResourceUnavailable,
                        $"The local port {_request.LocalPort} on {_request.BindAddress} can't be used: {ex.Message}", _request.LocalPort,
                        "Choose another -LocalPort, or 0 for any free port.", ex);
                }
                var port = ((IPEndPoint)listener.LocalEndpoint).Port;
                if (twinAddress == null)
                {
                    _listener = listener;
                    return;
                }
                var twinEndPoint = new IPEndPoint(twinAddress, port);
                TcpListener? twin = null;
                try
                {
                    twin = new TcpListener(twinEndPoint);
                    twin.Start(512);
                    _listener = listener;
                    _twin = twin;
                    return;
                }
                catch (SocketException ex) when (ex.SocketErrorCode == SocketError.AddressNotAvailable || ex.SocketErrorCode == SocketError.AddressFamilyNotSupported || ex.SocketErrorCode == SocketError.ProtocolNotSupported)
                {
                    twin?.Stop();
                    Events.Write($"Not listening on {twinEndPoint}: this machine has no such address ({ex.Message}).");
                    _listener = listener;
                    return;
                }
                catch (SocketException ex)
                {
                    twin?.Stop();
                    listener.Stop();
                    if (_request.LocalPort != 0 || attempt >= AutomaticPortAttempts)
                    {
                        throw new BastionToolsException(ErrorIds.LocalPortUnavailable, ErrorCategory.ResourceUnavailable,
                            $"The local port {port} is free on {_request.BindAddress} but not on {twinEndPoint}: {ex.Message}. Another program holds {twinEndPoint}, where clients that connect to \"localhost\" could reach it instead of the tunnel.",
                            port, _request.LocalPort != 0 ? "Choose another -LocalPort, or 0 for any free port." : "Find the program that holds many loopback ports, or choose a -LocalPort.", ex);
                    }
                    Events.Write($"Port {port} is taken on {twinEndPoint}: choosing another.");
                }
            }
        }

        private void OnChannelStateChanged(ChannelState state)
        {
            if (State == SessionState.Starting || State == SessionState.Closed || State == SessionState.Failed) return;
            if (state == ChannelState.Reconnecting) State = SessionState.Reconnecting;
            else if (state == ChannelState.Connected) State = SessionState.Connected;
        }

        /// <summary>Output read in place (the data channel's receive buffer, valid during the call): the forwarder copies what it keeps.</summary>
        private void OnOutputInPlace(byte[] buffer, int offset, int count)
        {
            if (_forwarder == null) CreateForwarder(null);
            _forwarder!.OnOutput(buffer, offset, count);
        }

        /// <summary>Runs on the data channel's receive loop: nothing here waits.</summary>
        private void OnStreamMessage(AgentMessage message)
        {
            switch (message.PayloadType)
            {
                case PayloadType.HandshakeRequest:
                    OnHandshakeRequest(message);
                    break;
                case PayloadType.EncChallengeRequest:
                    var answer = _handshake;
                    _ = Task.Run(async () =>
                    {
                        var failure = await Handshake.AnswerChallengeAsync(_channel!, answer?.Cipher, message, Events.Write).ConfigureAwait(false);
                        if (failure != null) await _channel!.FailAsync(failure).ConfigureAwait(false);
                    });
                    break;
                case PayloadType.HandshakeComplete:
                    CustomerMessage = Handshake.ReadCustomerMessage(message, Events.Write);
                    if (_forwarder == null) CreateForwarder(null);
                    _handshakeCompleted.TrySetResult(true);
                    break;
                case PayloadType.Output:
                    if (_forwarder == null) CreateForwarder(null);
                    _forwarder!.OnOutput(message.Payload, 0, message.Payload.Length);
                    break;
                case PayloadType.Flag:
                    if (message.Payload.Length >= 4)
                    {
                        var flag = (PayloadTypeFlag)BinaryPrimitives.ReadUInt32BigEndian(message.Payload);
                        Events.Write("Flag from the agent: " + flag + ".");
                        if (flag == PayloadTypeFlag.TerminateSession)
                        {
                            if (Volatile.Read(ref _stopped) == 0 && ClosedErrorId == null)
                            {
                                ClosedReason = "The bastion's agent ended the session (TerminateSession).";
                                ClosedErrorId = ErrorIds.BastionSessionTerminated;
                                Events.Write("Session ended: " + ClosedReason);
                            }
                            _ = Task.Run(() => StopAsync(terminate: false));
                        }
                        else
                        {
                            _forwarder?.OnFlag(flag);
                        }
                    }
                    break;
                case PayloadType.Error:
                case PayloadType.StdErr:
                    Events.Write("Agent: " + System.Text.Encoding.UTF8.GetString(message.Payload));
                    break;
            }
        }

        private void OnHandshakeRequest(AgentMessage message)
        {
            var answer = Handshake.Read(message, Events.Write);
            if (answer == null || _handshakeRequested.Task.IsCompleted) return;
            AgentVersion = answer.Request.AgentVersion;
            CreateForwarder(answer.PortType);
            _handshakeRequested.TrySetResult(answer.Request);
            // The reply goes out from its own task: the receive loop never waits on the send window.
            _ = Task.Run(async () =>
            {
                try
                {
                    // The agent never asks for KMS on port sessions (sessionplugin.go isEncryptionEnabled), but if one did,
                    // it is answered as for a shell, and a refusal ends the session.
                    _handshake = answer;
                    var failure = await Handshake.RespondAsync(_channel!, _channelOptions.ClientVersion, answer, _api, _request.Target, Events.Write).ConfigureAwait(false);
                    if (failure != null)
                    {
                        await _channel!.FlushAsync(TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(false);
                        await _channel.FailAsync(failure).ConfigureAwait(false);
                        return;
                    }
                    Events.Write($"Handshake: agent {answer.Request.AgentVersion}, {answer.PortType ?? "port"} session.");
                }
                catch (Exception ex) when (ex is System.IO.IOException || ex is OperationCanceledException)
                {
                    Events.Write("The handshake response could not be sent: " + ex.Message);
                }
            });
        }

        private void CreateForwarder(string? portType)
        {
            if (_forwarder != null) return;
            // The agent multiplexes only a LocalPortForwarding session (port.go GetSession); any other type (none, as in
            // documents without it) is a basic session there, and must be here.
            var mux = Version.TryParse(AgentVersion ?? "", out var v) && v > MuxMinimumAgent
                && string.Equals(portType, LocalPortForwardingType, StringComparison.Ordinal);
            var sender = new DataChannelSender(_channel!);
            if (mux)
            {
                var forwarder = new MuxPortForwarder(sender, Connections, Events.Write, _channelOptions.ConnectionQueues, MuxKeepAlive(), OnForwarderBroken,
                    holdOutput: true, readerThread: _channelOptions.InlineSocketCompletions && SocketCompletions.Supported);
                _readerThread = forwarder.ReadsOnReaderThread;
                _forwarder = forwarder;
                if (_readerThread)
                {
                    _channel!.SetInlineCompletions(true);
                    Events.Write("Local connections are read by the tunnel's reader thread; the WebSocket is handled on the socket engine's thread.");
                }
            }
            else
            {
                _forwarder = new BasicPortForwarder(sender, Connections, Events.Write, _channelOptions.ConnectionQueues);
            }
            if (!mux && _channelOptions.IdleKeepAlive > TimeSpan.Zero)
            {
                Events.Write($"Keepalive: agent {AgentVersion ?? "?"} forwards in basic mode, which has no frame that reaches the agent without reaching the destination: nothing is sent, and the idle session timeout applies.");
            }
        }

        /// <summary>
        /// How often the multiplexed session sends a NOP when idle: every <see cref="DataChannelOptions.AgentKeepAliveInterval"/>
        /// for an agent that closes idle mux sessions (smux keepalive), every <see cref="DataChannelOptions.IdleKeepAlive"/>
        /// with -KeepAlive, the shorter of the two when both apply; otherwise never, so the administrator's idle session
        /// timeout ends an idle tunnel.
        /// </summary>
        private TimeSpan MuxKeepAlive()
        {
            var interval = TimeSpan.Zero;
            if (SmuxKeepAlive.AgentRequiresKeepAlive(AgentVersion, _channelOptions.ClientVersion) && _channelOptions.AgentKeepAliveInterval > TimeSpan.Zero)
            {
                interval = _channelOptions.AgentKeepAliveInterval;
                Events.Write($"Keepalive: agent {AgentVersion} runs smux keepalive, which closes a multiplexed session after {SmuxKeepAlive.AgentTimeout.TotalSeconds:0} s without a frame from the client: a NOP goes out after {interval.TotalSeconds:0.#} s without traffic.");
            }
            if (_channelOptions.IdleKeepAlive > TimeSpan.Zero)
            {
                if (interval == TimeSpan.Zero || _channelOptions.IdleKeepAlive < interval) interval = _channelOptions.IdleKeepAlive;
                Events.Write($"Keepalive (-KeepAlive): a NOP goes out after {_channelOptions.IdleKeepAlive.TotalSeconds:0.#} s without traffic, so the idle session timeout does not end this tunnel.");
            }
            return interval;
        }

        /// <summary>The agent's multiplexed stream can no longer be read: the tunnel is unusable, so the session ends with the reason.</summary>
        private void OnForwarderBroken(string reason)
        {
            if (Volatile.Read(ref _stopped) == 1) return;
            ClosedReason = "The session was ended: " + reason + ".";
            ClosedErrorId = ErrorIds.BastionSessionFailed;
            State = SessionState.Failed;
            Events.Write(ClosedReason);
            _ = Task.Run(() => StopAsync(terminate: true));
        }

        private async Task AcceptLoopAsync(TcpListener listener)
        {
            while (!_lifetime.IsCancellationRequested)
            {
                TcpClient client;
                try
                {
                    client = await listener.AcceptTcpClientAsync().ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is ObjectDisposedException || ex is SocketException || ex is InvalidOperationException)
                {
                    return;
                }
                // Before the connection's first read: it takes the session's mode (inline completions while it is the only
                // one: the forwarders' reads hand frames to the data channel and their writes never block).
                var socket = client.Client;
                _inlineSockets.Add(socket);
                var task = Task.Run(async () =>
                {
                    try
                    {
                        await _forwarder!.HandleConnectionAsync(client, _lifetime.Token).ConfigureAwait(false);
                    }
                    finally
                    {
                        _inlineSockets.Remove(socket);
                    }
                });
                lock (_connections)
                {
                    _connections.RemoveAll(t => t.IsCompleted);
                    _connections.Add(task);
                }
            }
        }

        private void OnChannelClosed(DataChannelClosure closure)
        {
            if (Volatile.Read(ref _stopped) == 1) return;
            var output = closure.Output?.Trim();
            switch (closure.End)
            {
                case ChannelEnd.SessionExpired:
                    ClosedErrorId = ErrorIds.BastionSessionTimedOut;
                    State = SessionState.Failed;
                    break;
                case ChannelEnd.Failed:
                    // A resume the caller may not make (ssm:ResumeSession denied), or to an insecure StreamUrl, says so with its own ErrorId.
                    ClosedErrorId = closure.Error is SessionResumeRefusedException { InnerException: BastionToolsException { ErrorId: ErrorIds.AwsAccessDenied or ErrorIds.StreamUrlInsecure } refused }
                        ? refused.ErrorId
                        : ErrorIds.BastionSessionFailed;
                    State = SessionState.Failed;
                    break;
                case ChannelEnd.ClosedByService:
                    // channel_closed: the service ended the session. Its Output says why; the idle session timeout's is
                    // "Your session timed out due to inactivity and has been terminated." (what the official client prints
                    // after "SessionId: <id> : "), a TerminateSession or the agent ending the session says "Exiting session".
                    ClosedErrorId = IsIdleTimeout(output) ? ErrorIds.BastionSessionTimedOut : ErrorIds.BastionSessionTerminated;
                    State = SessionState.Closed;
                    break;
                default:
                    State = SessionState.Closed;
                    break;
            }
            ClosedReason = closure.Error?.Message
                ?? (string.IsNullOrEmpty(output) ? "The service closed the session." : "The service closed the session: " + output);
            Events.Write("Session ended: " + ClosedReason);
            _ = Task.Run(() => StopAsync(terminate: false));
        }

        /// <summary>The channel_closed Output of Session Manager's idle session timeout.</summary>
        internal static bool IsIdleTimeout(string? output) =>
            output != null && output.IndexOf("timed out due to inactivity", StringComparison.OrdinalIgnoreCase) >= 0;

        /// <summary>
        /// True while the local listener is open and the session is up (Connected, or Reconnecting: the port is still
        /// held). False from the moment the session starts stopping: the listener closes first, and the port may then be
        /// taken by anybody, so nothing may connect to it on the tunnel's behalf any more.
        /// </summary>
        public bool IsServing => Volatile.Read(ref _stopped) == 0 && (State == SessionState.Connected || State == SessionState.Reconnecting);

        /// <summary>True once <see cref="StopAsync"/> has begun (the listener is closed or closing).</summary>
        public bool IsStopping => Volatile.Read(ref _stopped) == 1;

        /// <summary>True when the session ended on its own (timed out, terminated by the service or the agent, failed), not because it was stopped here.</summary>
        public bool EndedOnItsOwn => Completion.IsCompleted && ClosedErrorId != null;

        /// <summary>Stops accepting, ends every connection, terminates the session with the service and closes the channel.</summary>
        public async Task StopAsync(bool terminate = true)
        {
            if (Interlocked.Exchange(ref _stopped, 1) == 1)
            {
                await _completion.Task.ConfigureAwait(false);
                return;
            }
            try
            {
                _lifetime.Cancel();
                foreach (var listener in new[] { _listener, _twin })
                {
                    try
                    {
                        listener?.Stop();
                    }
                    catch (SocketException)
                    {
                    }
                }
                _forwarder?.Dispose();
                Task[] pending;
                lock (_connections) pending = _connections.ToArray();
                await Task.WhenAny(Task.WhenAll(pending), Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
                if (_acceptLoop != null) await Task.WhenAny(_acceptLoop, Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
                if (terminate && SessionId != null && await TryTerminateByFlagAsync().ConfigureAwait(false))
                {
                    TerminatedByFlag = true;
                    Events.Write($"Session {SessionId} ended by the TerminateSession flag.");
                }
                else if (terminate && SessionId != null)
                {
                    try
                    {
                        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                        await _api.TerminateSessionAsync(SessionId, cts.Token).ConfigureAwait(false);
                        Events.Write($"Session {SessionId} terminated.");
                    }
                    catch (Exception ex)
                    {
                        TerminateFailure = ex;
                        Events.Write("TerminateSession failed: " + ex.Message);
                    }
                }
                if (_channel != null) await _channel.CloseAsync().ConfigureAwait(false);
                if (State != SessionState.Failed) State = SessionState.Closed;
                ClosedReason ??= "Stopped.";
            }
            finally
            {
                _completion.TrySetResult(true);
            }
        }

        /// <summary>
        /// Ends the session as the official client does on Ctrl-C (muxportforwarding.go, basicportforwarding.go
        /// handleControlSignals): Flag TerminateSession (PayloadType 10, uint32 2) to an agent newer than 2.3.722.0, which
        /// ends its plugin on it (port_mux.go / port_basic.go HandleStreamMessage) — no ssm:TerminateSession needed. True
        /// once the agent acknowledged it (it acknowledges after handling) or closed the channel, after waiting up to 5 s
        /// for the channel_closed that follows; false (the caller then calls TerminateSession) for an older agent, a
        /// channel that is not connected, or no acknowledgement within 5 s.
        /// </summary>
        private async Task<bool> TryTerminateByFlagAsync()
        {
            var channel = _channel;
            if (channel == null || channel.IsClosed || channel.State != ChannelState.Connected) return false;
            if (!Version.TryParse(AgentVersion ?? "", out var agent) || agent <= TerminateFlagMinimumAgent) return false;
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await channel.SendFlagAsync(PayloadTypeFlag.TerminateSession, cts.Token).ConfigureAwait(false);
                await channel.FlushAsync(TimeSpan.FromSeconds(5), cts.Token).ConfigureAwait(false);
                if (channel.UnacknowledgedCount != 0 && !channel.IsClosed) return false;
                // Acknowledged, so handled: the agent ends its plugin and the service closes the channel (channel_closed).
                // Wait briefly for that, so the session is over on the service's side too when Stop returns.
                await Task.WhenAny(channel.Completion, Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
                return true;
            }
            catch (Exception ex) when (ex is OperationCanceledException || ex is System.IO.IOException || ex is ObjectDisposedException || ex is InvalidOperationException)
            {
                Events.Write("The TerminateSession flag could not be delivered: " + ex.Message);
                return false;
            }
        }

        public void Dispose()
        {
            StopAsync().GetAwaiter().GetResult();
            _channel?.Dispose();
            _lifetime.Dispose();
        }
    }
}
