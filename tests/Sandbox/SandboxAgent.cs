using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// Timing and behaviour of the sandbox agent. Defaults are the real agent's (see AGENT.md); the "kinder modes"
    /// (<see cref="ResendAllDue"/>, <see cref="OutputReadPause"/> = 0) are explicit choices of a test. Read live: a change
    /// applies to running sessions from their next use of the value (capacities and the smux bucket: from the next session).
    /// </summary>
    public sealed class SandboxAgentOptions
    {
        /// <summary>The agent's OutgoingMessageBufferCapacity / IncomingMessageBufferCapacity (config.go; 10000 before 7640b5ad, Aug 2018).</summary>
        public const int AgentMessageBufferCapacity = 100000;
        /// <summary>xtaci/smux v1.5.15 DefaultConfig MaxReceiveBuffer.</summary>
        public const int AgentSmuxMaxReceiveBuffer = 4194304;

        /// <summary>handshakeTimeout: the agent gives up waiting for a HandshakeResponse after this.</summary>
        public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(15);
        /// <summary>ResendSleepInterval: how often the oldest unacknowledged message is considered for a resend.</summary>
        public TimeSpan ResendInterval { get; set; } = TimeSpan.FromMilliseconds(100);
        /// <summary>
        /// Not the agent's behaviour, off by default: resend the unacknowledged messages older than the timeout at each
        /// interval, oldest first, at most <see cref="ResendAllDueBurst"/> of them, instead of only the oldest. The real
        /// agent drains a backlog of lost messages at about ten a second, which makes bulk-transfer tests under heavy loss
        /// (thousands of drops) take many minutes; tests that measure the client's correctness under loss, not the
        /// agent's pace, turn this on (AGENT.md lists them).
        /// </summary>
        public bool ResendAllDue { get; set; }
        /// <summary>With <see cref="ResendAllDue"/>: the most messages resent per interval (bounded, so a backlog never queues without limit).</summary>
        public int ResendAllDueBurst { get; set; } = 256;
        /// <summary>
        /// OutgoingMessageBufferCapacity: how many unacknowledged stream messages the agent keeps for resending. A new
        /// message that finds the list full is still sent once but not kept, so it is never resent.
        /// </summary>
        public int OutgoingMessageBufferCapacity { get; set; } = AgentMessageBufferCapacity;
        /// <summary>IncomingMessageBufferCapacity: how many early (out-of-order) client messages are kept; beyond it they are neither kept nor acknowledged.</summary>
        public int IncomingMessageBufferCapacity { get; set; } = AgentMessageBufferCapacity;
        /// <summary>
        /// Bytes of frames the sandbox queues for one WebSocket before producers (output pumps, acknowledgements,
        /// resends) wait for room: stands for the agent's blocking WebSocket write (1 MiB).
        /// </summary>
        public int ConnectionQueueBytes { get; set; } = 1024 * 1024;
        /// <summary>smux MaxReceiveBuffer: bytes delivered to mux streams and not yet read by their destination writers before the receive loop stops.</summary>
        public int SmuxMaxReceiveBuffer { get; set; } = AgentSmuxMaxReceiveBuffer;
        /// <summary>
        /// The sleep after each read of at most 1024 bytes in port_mux.go transferDataToMgs, port_basic.go WritePump and
        /// shell.go writePump (time.Sleep(time.Millisecond)), which caps the agent-to-client rate. TimeSpan.Zero is the
        /// named faster mode that bulk-transfer tests and benchmarks choose explicitly.
        /// </summary>
        public TimeSpan OutputReadPause { get; set; } = TimeSpan.FromMilliseconds(1);
        /// <summary>
        /// Not the default: each new WebSocket first gets pause_publication, as MGS sends it while the agent's side of the
        /// session is not connected; the agent's next message (the HandshakeRequest on a first connection) then arrives
        /// while the client is paused. For the test that the client's handshake reply is never held behind a pause.
        /// </summary>
        public bool PausePublicationOnConnect { get; set; }
        /// <summary>DefaultTransmissionTimeout.</summary>
        public TimeSpan InitialRetransmissionTimeout { get; set; } = TimeSpan.FromMilliseconds(200);
        /// <summary>DefaultRoundTripTime.</summary>
        public TimeSpan InitialRoundTripTime { get; set; } = TimeSpan.FromMilliseconds(100);
        /// <summary>MaxTransmissionTimeout.</summary>
        public TimeSpan MaxRetransmissionTimeout { get; set; } = TimeSpan.FromSeconds(1);
        /// <summary>
        /// smux KeepAliveInterval (NOP frames) where the agent runs keepalive (<see cref="PortPlugin.AgentRunsKeepAlive"/>:
        /// agents 3.0.222.0 to 3.1.1374.0 for every client, 3.1.1575.0 on for clients up to 1.2.331.0). Read when a mux session starts.
        /// </summary>
        public TimeSpan SmuxKeepAliveInterval { get; set; } = TimeSpan.FromSeconds(10);
        /// <summary>smux KeepAliveTimeout: the mux session closes when nothing arrived for this long (checked once per timeout). Read when a mux session starts.</summary>
        public TimeSpan SmuxKeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(30);
        /// <summary>
        /// Session Manager's idle session timeout (the preferences document's idleSessionTimeout, 1 to 60 minutes, default 20):
        /// a session with no stream data either way (input_stream_data from the client, new output_stream_data from the
        /// agent; acknowledgements, pings and publication messages do not count) for this long is ended by the service:
        /// channel_closed with <see cref="IdleTimeoutOutput"/>, close 1000, state TimedOut. Zero turns it off (not real).
        /// Read live.
        /// </summary>
        public TimeSpan IdleSessionTimeout { get; set; } = TimeSpan.FromMinutes(20);
        /// <summary>The shell writePump waits this long before its first read (initialWaitSecond = 1).</summary>
        public TimeSpan ShellInitialOutputDelay { get; set; } = TimeSpan.FromSeconds(1);
        /// <summary>PrepareToCloseChannel: how long the end of a session waits for outstanding acknowledgements.</summary>
        public TimeSpan CloseDrainTimeout { get; set; } = TimeSpan.FromSeconds(2);
        /// <summary>The shell the shell plugin runs (the agent runs "sh").</summary>
        public string ShellPath { get; set; } = "sh";
        /// <summary>
        /// What a Windows instance (PlatformType "Windows") runs as powershell.exe for AWS-StartNonInteractiveCommand: a
        /// program and its leading arguments (a real PowerShell 7, see <see cref="WindowsPowerShell"/>). Defaults to
        /// <see cref="WindowsPowerShell.Locate"/> (looked up once per process); null when none is found (the command then fails to start, as the agent's
        /// exec would). Command line: --windows-powershell PATH.
        /// </summary>
        public IReadOnlyList<string>? WindowsPowerShell { get; set; } = BastionTools.Sandbox.WindowsPowerShell.Located;
        /// <summary>
        /// The "type" property of port sessions' handshake (the document's properties): "LocalPortForwarding" as in
        /// AWS-StartPortForwardingSession[ToRemoteHost]. Null omits it, as a custom Session document of sessionType Port may
        /// (the session-document schema makes it optional): the agent then runs a basic session (port.go GetSession).
        /// </summary>
        public string? PortDocumentType { get; set; } = "LocalPortForwarding";
        /// <summary>
        /// Tests only: a basic port session awaits this before its first dial (port_basic.go InitializeSession), so a test
        /// can have input arrive before the destination connection exists. Null: dial at once.
        /// </summary>
        public Func<Task>? BasicInitialDialGate { get; set; }
        /// <summary>PS1 for the shell.</summary>
        public string ShellPrompt { get; set; } = "$ ";
        /// <summary>The Output of channel_closed when the idle session timeout ends a session (what the official client prints after "SessionId: &lt;id&gt; : ").</summary>
        public const string IdleTimeoutOutput = "Your session timed out due to inactivity and has been terminated.";
        /// <summary>
        /// appconfig Kms.RequireKMSChallengeResponse (default false): refuse a client whose KMSEncryption result does not
        /// acknowledge the random challenge (the challenge then must be in the data key's encryption context).
        /// </summary>
        public bool RequireKmsChallengeResponse { get; set; }
        /// <summary>Not the agent's behaviour: a fault in its session encryption, for the client's rejection tests.</summary>
        public SandboxEncryptionFault EncryptionFault { get; set; }
        /// <summary>The Output of channel_closed when the session ends normally or by TerminateSession.</summary>
        public Func<SandboxSession, string> ChannelClosedOutput { get; set; } =
            s => "\n\nExiting session with sessionId: " + s.SessionId + ".\n\n";
    }

    /// <summary>
    /// The MGS WebSocket with the SSM agent's behaviour behind it, one <see cref="AgentChannel"/> per session.
    /// <see cref="SandboxHost"/> creates one and routes /streams/&lt;id&gt; and /control/... to it.
    /// </summary>
    public sealed class SandboxAgent
    {
        internal const int MaxMessageBytes = 1 << 20;
        private readonly ConcurrentDictionary<string, AgentChannel> _channels = new(StringComparer.Ordinal);
        private readonly Action<string>? _log;
        private SandboxFaultOptions _faults = new();

        internal SandboxAgent(SandboxHost host, Action<string>? log)
        {
            Host = host;
            _log = log;
            host.Sessions.SessionTerminated += OnSessionTerminated;
            host.Sessions.SessionTimedOut += OnSessionTimedOut;
        }

        internal SandboxHost Host { get; }
        public SandboxAgentOptions Options { get; } = new();

        /// <summary>Faults for every session without its own (<see cref="SetSessionFaults"/>).</summary>
        public SandboxFaultOptions Faults
        {
            get => Volatile.Read(ref _faults);
            set
            {
                if (value == null) throw new ArgumentNullException(nameof(value));
                value.Validate();
                Volatile.Write(ref _faults, value.Clone());
                foreach (var c in _channels.Values) c.ResetRandom();
            }
        }

        /// <summary>Faults for one session (null: back to the global ones). The session need not have connected yet.</summary>
        public void SetSessionFaults(string sessionId, SandboxFaultOptions? faults)
        {
            faults?.Validate();
            var channel = ChannelFor(sessionId) ?? throw new KeyNotFoundException("No session " + sessionId);
            channel.SessionFaults = faults?.Clone();
            channel.ResetRandom();
        }

        public SandboxFaultOptions? GetSessionFaults(string sessionId) => _channels.TryGetValue(sessionId, out var c) ? c.SessionFaults?.Clone() : null;

        /// <summary>Counters of a session's data channel, or null when it never had one.</summary>
        public SandboxChannelCounters? Counters(string sessionId) => _channels.TryGetValue(sessionId, out var c) ? c.Counters : null;

        /// <summary>"mux", "basic", "shell", "command" once the session's plugin runs; null before.</summary>
        public string? PluginKind(string sessionId) => _channels.TryGetValue(sessionId, out var c) ? c.PluginKind : null;

        /// <summary>Whether the session's mux plugin runs smux keepalive; null when it is not a mux session (yet).</summary>
        public bool? SmuxKeepAlive(string sessionId) => _channels.TryGetValue(sessionId, out var c) ? c.SmuxKeepAlive : null;

        /// <summary>Aborts the session's current WebSocket without a close frame. False when none is open.</summary>
        public bool Kill(string sessionId) => _channels.TryGetValue(sessionId, out var c) && c.Kill();

        /// <summary>Closes the session's current WebSocket with 1000 "Bye". False when none is open.</summary>
        public bool Bye(string sessionId) => _channels.TryGetValue(sessionId, out var c) && c.Bye();

        /// <summary>Sends pause_publication / start_publication to the client. False when no WebSocket is open.</summary>
        public bool SendPublication(string sessionId, bool pause) => _channels.TryGetValue(sessionId, out var c) && c.SendPublication(pause);

        /// <summary>
        /// Sets the agent's own Pause flag, as pause_publication / start_publication from MGS to the agent do (the agent
        /// then sends and resends nothing and its output pumps do not read; any acknowledge or input from the client
        /// clears it). False when the session never had a data channel.
        /// </summary>
        public bool SetAgentPaused(string sessionId, bool paused)
        {
            if (!_channels.TryGetValue(sessionId, out var c)) return false;
            c.SetPaused(paused);
            return true;
        }

        /// <summary>
        /// The session times out now (<see cref="SessionRegistry.TimeOut"/> at the world's clock): the channel ends without
        /// channel_closed, a current connection is dropped without a close frame, ResumeSession answers without a token.
        /// False for an unknown session.
        /// </summary>
        public bool TimeOut(string sessionId) => Host.Sessions.TimeOut(sessionId, Host.World.Clock.UtcNow);

        /// <summary>
        /// The agent on <paramref name="instanceId"/> restarts: every session on it that has not ended is ended by the agent
        /// (its plugins are cancelled, the data channel drains and closes, the service sends channel_closed and the session
        /// is Terminated), as when the agent stops (sessionplugin.go: PrepareToCloseChannel and Close after the plugin).
        /// Returns how many sessions ended.
        /// </summary>
        public int RestartAgent(string instanceId)
        {
            var ended = 0;
            foreach (var c in _channels.Values)
            {
                if (c.IsEnded || !string.Equals(c.Session.Target, instanceId, StringComparison.Ordinal)) continue;
                ended++;
                _ = c.EndAsync(null, drain: true);
            }
            return ended;
        }

        /// <summary>Bytes queued for the session's current WebSocket and the producers waiting for room.</summary>
        public (long QueuedBytes, int Waiters) ConnectionQueue(string sessionId) =>
            _channels.TryGetValue(sessionId, out var c) ? c.ConnectionQueue : (0, 0);

        /// <summary>The number of unacknowledged stream messages the agent keeps for the session.</summary>
        public int UnackedCount(string sessionId) => _channels.TryGetValue(sessionId, out var c) ? c.UnackedCount : 0;

        // ---- hostile injections (each through the session's current WebSocket) ------------------------------------

        /// <summary>far-ahead: <paramref name="count"/> valid output_stream_data numbered next + 1,000,000 + i. Returns how many went out.</summary>
        /// <exception cref="InvalidOperationException">No open WebSocket.</exception>
        public Task<int> InjectFarAheadAsync(string sessionId, int count = 1000) => Require(sessionId).InjectFarAheadAsync(count);

        /// <summary>endless-fragments: one binary message of <paramref name="bytes"/> as continuation fragments, never finished; then the connection writes nothing more.</summary>
        /// <exception cref="InvalidOperationException">No open WebSocket.</exception>
        public Task<long> InjectEndlessFragmentsAsync(string sessionId, long bytes = 16L * 1024 * 1024) => Require(sessionId).InjectEndlessFragmentsAsync(bytes);

        /// <summary>smux: raw bytes appended to the mux output stream (sent as ordinary numbered Output messages).</summary>
        /// <exception cref="InvalidOperationException">No open WebSocket, or not a mux session.</exception>
        public Task InjectSmuxAsync(string sessionId, byte[] bytes) => Require(sessionId).InjectSmuxAsync(bytes);

        /// <summary>smux: a v1 PSH header for <paramref name="streamId"/> announcing <paramref name="length"/> bytes, followed by that many bytes.</summary>
        public Task InjectSmuxPshAsync(string sessionId, uint streamId, int length = 65535) => InjectSmuxAsync(sessionId, SmuxPsh(streamId, length));

        /// <summary>start-publication-bare / pause-publication-bare (HeaderLength 0, CreatedDate 0, no digest).</summary>
        /// <exception cref="InvalidOperationException">No open WebSocket.</exception>
        public void InjectBarePublication(string sessionId, bool pause) => Require(sessionId).InjectBarePublication(pause);

        internal static byte[] SmuxPsh(uint streamId, int length)
        {
            if (length < 0 || length > ushort.MaxValue) throw new ArgumentException("An smux v1 length is 0..65535.");
            var bytes = new byte[SmuxCodec.HeaderLength + length];
            SmuxCodec.WriteHeader(bytes, 0, SmuxCommand.Psh, streamId, length);
            for (var i = 0; i < length; i++) bytes[SmuxCodec.HeaderLength + i] = (byte)('a' + (i % 26));
            return bytes;
        }

        private AgentChannel Require(string sessionId) =>
            _channels.TryGetValue(sessionId, out var c) ? c : throw new InvalidOperationException("The session " + sessionId + " has no data channel.");

        internal void Log(string line) => _log?.Invoke(line);

        private AgentChannel? ChannelFor(string sessionId)
        {
            if (_channels.TryGetValue(sessionId, out var existing)) return existing;
            if (!Host.Sessions.TryGet(sessionId, out var session)) return null;
            return _channels.GetOrAdd(sessionId, _ => new AgentChannel(this, session));
        }

        private void OnSessionTerminated(SandboxSession session)
        {
            if (_channels.TryGetValue(session.SessionId, out var channel)) _ = channel.TerminateAsync();
        }

        private void OnSessionTimedOut(SandboxSession session)
        {
            if (_channels.TryGetValue(session.SessionId, out var channel)) channel.TimeOut();
        }

        internal void Shutdown()
        {
            foreach (var c in _channels.Values) c.Shutdown();
        }

        // ---- WebSocket ---------------------------------------------------------------------------------------------

        /// <summary>The <see cref="SandboxHost.StreamHandler"/>: OpenDataChannel token check, then the agent's data channel.</summary>
        public async Task HandleStreamAsync(SandboxStreamContext context)
        {
            if (!context.HttpContext.Request.IsWebSocketRequest)
            {
                context.HttpContext.Response.StatusCode = 400;
                context.HttpContext.Response.Close();
                return;
            }
            var accepted = await context.HttpContext.AcceptWebSocketAsync(null, 64 * 1024, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            var socket = accepted.WebSocket;
            try
            {
                var open = await ReadOpenDataChannelAsync(socket, context.Stopping).ConfigureAwait(false);
                if (open == null || !Host.Sessions.TryValidateToken(context.SessionId, open.TokenValue, out var session))
                {
                    Log("stream " + context.SessionId + ": OpenDataChannel rejected");
                    await CloseQuietlyAsync(socket, WebSocketCloseStatus.PolicyViolation, "Authentication failed").ConfigureAwait(false);
                    return;
                }
                var channel = ChannelFor(session.SessionId)!;
                if (channel.IsEnded)
                {
                    await CloseQuietlyAsync(socket, WebSocketCloseStatus.PolicyViolation, "Session is already terminated").ConfigureAwait(false);
                    return;
                }
                var http = context.HttpContext;
                await channel.RunConnectionAsync(socket, () => http.Response.Abort(), open, context.Stopping, accepted.WriteBatching).ConfigureAwait(false);
            }
            finally
            {
                socket.Dispose();
            }
        }

        private static async Task<OpenDataChannelInput?> ReadOpenDataChannelAsync(WebSocket socket, CancellationToken stopping)
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stopping);
            timeout.CancelAfter(TimeSpan.FromSeconds(10));
            var buffer = new byte[16 * 1024];
            using var text = new MemoryStream();
            try
            {
                while (true)
                {
                    var result = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), timeout.Token).ConfigureAwait(false);
                    if (result.MessageType != WebSocketMessageType.Text) return null;
                    text.Write(buffer, 0, result.Count);
                    if (text.Length > 64 * 1024) return null;
                    if (result.EndOfMessage) break;
                }
                return SsmJson.Deserialize<OpenDataChannelInput>(text.ToArray());
            }
            catch (Exception ex) when (ex is WebSocketException || ex is OperationCanceledException || ex is SsmProtocolException || ex is IOException)
            {
                return null;
            }
        }

        private static async Task CloseQuietlyAsync(WebSocket socket, WebSocketCloseStatus status, string description)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                if (socket.State == WebSocketState.Open || socket.State == WebSocketState.CloseReceived)
                {
                    await socket.CloseOutputAsync(status, description, timeout.Token).ConfigureAwait(false);
                }
                // Wait briefly for the client's close so the close handshake completes.
                var buffer = new byte[1024];
                while (socket.State == WebSocketState.CloseSent)
                {
                    var r = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), timeout.Token).ConfigureAwait(false);
                    if (r.MessageType == WebSocketMessageType.Close) break;
                }
            }
            catch (Exception ex) when (ex is WebSocketException || ex is OperationCanceledException || ex is IOException || ex is ObjectDisposedException)
            {
            }
        }

        // ---- control endpoint --------------------------------------------------------------------------------------

        /// <summary>
        /// GET|POST /control/faults; GET|PUT|POST /control/agent (options: outputReadPauseMs, resendAllDue, ...);
        /// GET /control/sessions; GET /control/sessions/&lt;id&gt;; GET|POST|DELETE /control/sessions/&lt;id&gt;/faults;
        /// POST /control/sessions/&lt;id&gt;/kill | bye | pause | start | agent-pause | agent-start | timeout | terminate;
        /// POST /control/instances/&lt;id&gt;/restart-agent;
        /// POST /control/sessions/&lt;id&gt;/inject/far-ahead | endless-fragments | smux | start-publication-bare | pause-publication-bare.
        /// Returns (status, JSON body).
        /// </summary>
        internal (int Status, string Body) HandleControl(string method, string path, string body)
        {
            var parts = path.Trim('/').Split('/');
            try
            {
                if (parts.Length == 2 && parts[1] == "agent")
                {
                    if (method == "POST" || method == "PUT") ApplyOptions(body);
                    else if (method != "GET") return (405, Error("Method not allowed."));
                    return (200, DescribeOptions().ToJsonString());
                }
                if (parts.Length == 2 && parts[1] == "preferences")
                {
                    // The Session Manager preferences (SSM-SessionManagerRunShell inputs) for sessions started from now on.
                    if (method == "POST" || method == "PUT")
                    {
                        var input = ParseObject(body);
                        foreach (var kv in input)
                        {
                            if (kv.Key != "kmsKeyId") throw new ArgumentException("Unknown preference " + kv.Key + ".");
                        }
                        Host.World.Preferences.KmsKeyId = input["kmsKeyId"] is JsonValue k && k.TryGetValue<string>(out var keyId) ? keyId : null;
                    }
                    else if (method != "GET") return (405, Error("Method not allowed."));
                    return (200, new JsonObject { ["kmsKeyId"] = Host.World.Preferences.KmsKeyId }.ToJsonString());
                }
                if (parts.Length == 2 && parts[1] == "kms" && method == "GET") return (200, Host.World.Kms.Describe().ToJsonString());
                if (parts.Length == 2 && parts[1] == "process" && method == "GET")
                {
                    // For benchmarks: the sandbox process's own cost (bytes allocated so far, collections, CPU time).
                    using var self = System.Diagnostics.Process.GetCurrentProcess();
                    return (200, new JsonObject
                    {
                        ["allocatedBytes"] = GC.GetTotalAllocatedBytes(false),
                        ["gen0Collections"] = GC.CollectionCount(0),
                        ["gen1Collections"] = GC.CollectionCount(1),
                        ["gen2Collections"] = GC.CollectionCount(2),
                        ["cpuMs"] = self.TotalProcessorTime.TotalMilliseconds,
                    }.ToJsonString());
                }
                if (parts.Length == 3 && parts[1] == "kms" && parts[2] == "issued-data-keys" && method == "GET")
                {
                    // For leak checks only: what GenerateDataKey handed out.
                    var issued = new JsonArray();
                    foreach (var (plaintext, blob) in Host.World.Kms.IssuedDataKeys)
                    {
                        issued.Add(new JsonObject { ["plaintext"] = Convert.ToBase64String(plaintext), ["ciphertextBlob"] = Convert.ToBase64String(blob) });
                    }
                    return (200, issued.ToJsonString());
                }
                if (parts.Length == 2 && parts[1] == "faults")
                {
                    if (method == "POST" || method == "PUT") Faults = SandboxFaultOptions.FromJson(body);
                    else if (method == "DELETE") Faults = new SandboxFaultOptions();
                    else if (method != "GET") return (405, Error("Method not allowed."));
                    return (200, Faults.ToJson());
                }
                if (parts.Length == 4 && parts[1] == "instances" && parts[3] == "restart-agent" && method == "POST")
                {
                    var instanceId = Uri.UnescapeDataString(parts[2]);
                    if (Host.World.FindInstance(instanceId) == null) return (404, Error("No instance " + instanceId + "."));
                    return (200, new JsonObject { ["endedSessions"] = RestartAgent(instanceId) }.ToJsonString());
                }
                if (parts.Length == 2 && parts[1] == "sessions" && method == "GET")
                {
                    var list = new JsonArray();
                    foreach (var c in _channels.Values.OrderBy(c => c.Session.StartedUtc)) list.Add(c.Describe());
                    return (200, list.ToJsonString());
                }
                if (parts.Length >= 3 && parts[1] == "sessions")
                {
                    var id = Uri.UnescapeDataString(parts[2]);
                    var channel = ChannelFor(id);
                    if (channel == null) return (404, Error("No session " + id + "."));
                    if (parts.Length == 3 && method == "GET") return (200, channel.Describe().ToJsonString());
                    if (parts.Length == 4)
                    {
                        switch (parts[3])
                        {
                            case "faults":
                                if (method == "POST" || method == "PUT") SetSessionFaults(id, SandboxFaultOptions.FromJson(body));
                                else if (method == "DELETE") SetSessionFaults(id, null);
                                else if (method != "GET") return (405, Error("Method not allowed."));
                                return (200, channel.SessionFaults?.ToJson() ?? "null");
                            case "kill" when method == "POST":
                                return (200, new JsonObject { ["killed"] = channel.Kill() }.ToJsonString());
                            case "bye" when method == "POST":
                                return (200, new JsonObject { ["closed"] = channel.Bye() }.ToJsonString());
                            case "pause" when method == "POST":
                                return (200, new JsonObject { ["sent"] = channel.SendPublication(true) }.ToJsonString());
                            case "start" when method == "POST":
                                return (200, new JsonObject { ["sent"] = channel.SendPublication(false) }.ToJsonString());
                            case "agent-pause" when method == "POST":
                                channel.SetPaused(true);
                                return (200, new JsonObject { ["paused"] = true }.ToJsonString());
                            case "agent-start" when method == "POST":
                                channel.SetPaused(false);
                                return (200, new JsonObject { ["paused"] = false }.ToJsonString());
                            case "terminate" when method == "POST":
                                // What an administrator's TerminateSession API call does (SsmApi TerminateSession).
                                Host.Sessions.Terminate(id, Host.World.Clock.UtcNow);
                                Host.Sessions.TryGet(id, out var terminated);
                                return (200, new JsonObject { ["state"] = terminated?.State.ToString() }.ToJsonString());
                            case "timeout" when method == "POST":
                                TimeOut(id);
                                Host.Sessions.TryGet(id, out var timedOut);
                                return (200, new JsonObject { ["state"] = timedOut?.State.ToString() }.ToJsonString());
                        }
                    }
                    if (parts.Length == 5 && parts[3] == "inject" && method == "POST") return Inject(id, parts[4], body);
                }
                return (404, Error("Unknown control path " + path + "."));
            }
            catch (ArgumentException ex)
            {
                return (400, Error(ex.Message));
            }
            catch (InvalidOperationException ex)
            {
                return (409, Error(ex.Message));
            }
        }

        /// <summary>How long an HTTP injection request waits for the injection to be written (it goes on afterwards).</summary>
        private static readonly TimeSpan InjectWait = TimeSpan.FromSeconds(10);

        private (int Status, string Body) Inject(string sessionId, string kind, string body)
        {
            var input = ParseObject(body);
            switch (kind)
            {
                case "far-ahead":
                {
                    var count = (int)ReadLong(input, "count", 1000, 0, 10_000_000);
                    var task = InjectFarAheadAsync(sessionId, count);
                    var done = Wait(task);
                    return (200, new JsonObject { ["kind"] = kind, ["count"] = count, ["sent"] = done ? task.Result : null, ["completed"] = done }.ToJsonString());
                }
                case "endless-fragments":
                {
                    var bytes = ReadLong(input, "bytes", 16L * 1024 * 1024, 0, long.MaxValue);
                    var task = InjectEndlessFragmentsAsync(sessionId, bytes);
                    bool done;
                    try
                    {
                        done = Wait(task);
                    }
                    catch (AggregateException ex) when (ex.InnerException is System.IO.IOException || ex.InnerException is WebSocketException || ex.InnerException is OperationCanceledException)
                    {
                        // The client gave up on the message and dropped the connection: what the injection is for.
                        return (200, new JsonObject { ["kind"] = kind, ["bytes"] = bytes, ["sent"] = null, ["completed"] = false, ["connectionDropped"] = true }.ToJsonString());
                    }
                    return (200, new JsonObject { ["kind"] = kind, ["bytes"] = bytes, ["sent"] = done ? task.Result : null, ["completed"] = done }.ToJsonString());
                }
                case "smux":
                {
                    byte[] bytes;
                    if (input["psh"] is JsonObject psh)
                    {
                        var streamId = (uint)ReadLong(psh, "streamId", 1, 0, uint.MaxValue);
                        var length = (int)ReadLong(psh, "length", 65535, 0, ushort.MaxValue);
                        bytes = SmuxPsh(streamId, length);
                    }
                    else if (input["base64"] is JsonValue b64 && b64.TryGetValue<string>(out var text))
                    {
                        try
                        {
                            bytes = Convert.FromBase64String(text);
                        }
                        catch (FormatException)
                        {
                            throw new ArgumentException("base64 is not valid Base64.");
                        }
                    }
                    else
                    {
                        throw new ArgumentException("smux injection needs {\"base64\":\"...\"} or {\"psh\":{\"streamId\":3,\"length\":65535}}.");
                    }
                    var task = InjectSmuxAsync(sessionId, bytes);
                    var done = Wait(task);
                    return (200, new JsonObject { ["kind"] = kind, ["bytes"] = bytes.Length, ["completed"] = done }.ToJsonString());
                }
                case "start-publication-bare":
                case "pause-publication-bare":
                    InjectBarePublication(sessionId, kind.StartsWith("pause", StringComparison.Ordinal));
                    return (200, new JsonObject { ["kind"] = kind, ["completed"] = true }.ToJsonString());
                default:
                    return (404, Error("Unknown injection " + kind + " (far-ahead, endless-fragments, smux, start-publication-bare, pause-publication-bare)."));
            }
        }

        /// <summary>Waits (bounded) for an injection; its failure (no connection, not mux) surfaces as InvalidOperationException.</summary>
        private static bool Wait(Task task)
        {
            try
            {
                return task.Wait(InjectWait);
            }
            catch (AggregateException ex) when (ex.InnerException is InvalidOperationException inner)
            {
                throw inner;
            }
        }

        private static JsonObject ParseObject(string body)
        {
            if (string.IsNullOrWhiteSpace(body)) return new JsonObject();
            try
            {
                return JsonNode.Parse(body) as JsonObject ?? throw new ArgumentException("Expected a JSON object.");
            }
            catch (System.Text.Json.JsonException ex)
            {
                throw new ArgumentException("Invalid JSON: " + ex.Message);
            }
        }

        private static long ReadLong(JsonObject o, string name, long fallback, long min, long max)
        {
            if (o[name] is not JsonNode node) return fallback;
            long n;
            if (node is JsonValue v && v.TryGetValue<long>(out var whole)) n = whole;
            else if (node is JsonValue w && w.TryGetValue<double>(out var d) && d == Math.Floor(d) && Math.Abs(d) < 9e18) n = (long)d;
            else throw new ArgumentException(name + " must be a whole number.");
            if (n < min || n > max) throw new ArgumentException(name + " must be between " + min.ToString(CultureInfo.InvariantCulture) + " and " + max.ToString(CultureInfo.InvariantCulture) + ".");
            return n;
        }

        private static bool ReadBool(JsonObject o, string name, bool fallback)
        {
            if (o[name] is not JsonNode node) return fallback;
            if (node is JsonValue v && v.TryGetValue<bool>(out var b)) return b;
            throw new ArgumentException(name + " must be true or false.");
        }

        /// <summary>The options /control/agent shows and changes (camelCase JSON).</summary>
        public JsonObject DescribeOptions() => new()
        {
            ["outputReadPauseMs"] = Options.OutputReadPause.TotalMilliseconds,
            ["resendAllDue"] = Options.ResendAllDue,
            ["resendAllDueBurst"] = Options.ResendAllDueBurst,
            ["resendIntervalMs"] = Options.ResendInterval.TotalMilliseconds,
            ["outgoingMessageBufferCapacity"] = Options.OutgoingMessageBufferCapacity,
            ["incomingMessageBufferCapacity"] = Options.IncomingMessageBufferCapacity,
            ["connectionQueueBytes"] = Options.ConnectionQueueBytes,
            ["smuxMaxReceiveBuffer"] = Options.SmuxMaxReceiveBuffer,
            ["smuxKeepAliveIntervalMs"] = Options.SmuxKeepAliveInterval.TotalMilliseconds,
            ["smuxKeepAliveTimeoutMs"] = Options.SmuxKeepAliveTimeout.TotalMilliseconds,
            ["idleSessionTimeoutMs"] = Options.IdleSessionTimeout.TotalMilliseconds,
            ["requireKmsChallengeResponse"] = Options.RequireKmsChallengeResponse,
            ["encryptionFault"] = Options.EncryptionFault.ToString(),
        };

        /// <summary>Applies the fields present in a /control/agent body (all are checked before any is applied).</summary>
        /// <exception cref="ArgumentException">Unknown field or value out of range.</exception>
        public void ApplyOptions(string json)
        {
            var input = ParseObject(json);
            foreach (var kv in input)
            {
                if (!DescribeOptions().ContainsKey(kv.Key)) throw new ArgumentException("Unknown agent option " + kv.Key + ".");
            }
            var pause = ReadLong(input, "outputReadPauseMs", (long)Options.OutputReadPause.TotalMilliseconds, 0, 1000);
            var resendAllDue = ReadBool(input, "resendAllDue", Options.ResendAllDue);
            var burst = ReadLong(input, "resendAllDueBurst", Options.ResendAllDueBurst, 1, 1_000_000);
            var interval = ReadLong(input, "resendIntervalMs", (long)Options.ResendInterval.TotalMilliseconds, 1, 60_000);
            var outgoing = ReadLong(input, "outgoingMessageBufferCapacity", Options.OutgoingMessageBufferCapacity, 0, int.MaxValue);
            var incoming = ReadLong(input, "incomingMessageBufferCapacity", Options.IncomingMessageBufferCapacity, 0, int.MaxValue);
            var queue = ReadLong(input, "connectionQueueBytes", Options.ConnectionQueueBytes, 1, int.MaxValue);
            var smux = ReadLong(input, "smuxMaxReceiveBuffer", Options.SmuxMaxReceiveBuffer, 1, int.MaxValue);
            var keepAliveInterval = ReadLong(input, "smuxKeepAliveIntervalMs", (long)Options.SmuxKeepAliveInterval.TotalMilliseconds, 1, 3_600_000);
            var keepAliveTimeout = ReadLong(input, "smuxKeepAliveTimeoutMs", (long)Options.SmuxKeepAliveTimeout.TotalMilliseconds, 1, 3_600_000);
            var idle = ReadLong(input, "idleSessionTimeoutMs", (long)Options.IdleSessionTimeout.TotalMilliseconds, 0, 24L * 3_600_000);
            if (keepAliveTimeout < keepAliveInterval) throw new ArgumentException("smuxKeepAliveTimeoutMs must not be less than smuxKeepAliveIntervalMs (smux VerifyConfig).");
            var requireChallenge = ReadBool(input, "requireKmsChallengeResponse", Options.RequireKmsChallengeResponse);
            var fault = Options.EncryptionFault;
            if (input["encryptionFault"] is JsonNode f && (f is not JsonValue fv || !fv.TryGetValue<string>(out var fs) || !Enum.TryParse(fs, ignoreCase: true, out fault)))
            {
                throw new ArgumentException("encryptionFault is one of " + string.Join(", ", Enum.GetNames<SandboxEncryptionFault>()) + ".");
            }
            if (input.ContainsKey("outputReadPauseMs")) Options.OutputReadPause = TimeSpan.FromMilliseconds(pause);
            Options.ResendAllDue = resendAllDue;
            Options.ResendAllDueBurst = (int)burst;
            if (input.ContainsKey("resendIntervalMs")) Options.ResendInterval = TimeSpan.FromMilliseconds(interval);
            Options.OutgoingMessageBufferCapacity = (int)outgoing;
            Options.IncomingMessageBufferCapacity = (int)incoming;
            Options.ConnectionQueueBytes = (int)queue;
            Options.SmuxMaxReceiveBuffer = (int)smux;
            if (input.ContainsKey("smuxKeepAliveIntervalMs")) Options.SmuxKeepAliveInterval = TimeSpan.FromMilliseconds(keepAliveInterval);
            if (input.ContainsKey("smuxKeepAliveTimeoutMs")) Options.SmuxKeepAliveTimeout = TimeSpan.FromMilliseconds(keepAliveTimeout);
            if (input.ContainsKey("idleSessionTimeoutMs")) Options.IdleSessionTimeout = TimeSpan.FromMilliseconds(idle);
            Options.RequireKmsChallengeResponse = requireChallenge;
            Options.EncryptionFault = fault;
        }

        private static string Error(string message) => new JsonObject { ["error"] = message }.ToJsonString();
    }
}
