using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
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
    /// <summary>Timing and behaviour of the sandbox agent. Defaults are the real agent's.</summary>
    public sealed class SandboxAgentOptions
    {
        /// <summary>handshakeTimeout: the agent gives up waiting for a HandshakeResponse after this.</summary>
        public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(15);
        /// <summary>ResendSleepInterval: how often the oldest unacknowledged message is considered for a resend.</summary>
        public TimeSpan ResendInterval { get; set; } = TimeSpan.FromMilliseconds(100);
        /// <summary>
        /// Not the agent's behaviour, off by default: resend every unacknowledged message older than the timeout at each
        /// interval, instead of only the oldest. The real agent drains a backlog of lost messages at about ten a second,
        /// which makes bulk-transfer tests under heavy loss (thousands of drops) take many minutes; tests that measure
        /// the client's correctness under loss, not the agent's pace, turn this on.
        /// </summary>
        public bool ResendAllDue { get; set; }
        /// <summary>DefaultTransmissionTimeout.</summary>
        public TimeSpan InitialRetransmissionTimeout { get; set; } = TimeSpan.FromMilliseconds(200);
        /// <summary>DefaultRoundTripTime.</summary>
        public TimeSpan InitialRoundTripTime { get; set; } = TimeSpan.FromMilliseconds(100);
        /// <summary>MaxTransmissionTimeout.</summary>
        public TimeSpan MaxRetransmissionTimeout { get; set; } = TimeSpan.FromSeconds(1);
        /// <summary>smux KeepAliveInterval (NOP frames) when keepalive is on (client version &lt;= 1.2.331.0).</summary>
        public TimeSpan SmuxKeepAliveInterval { get; set; } = TimeSpan.FromSeconds(10);
        /// <summary>smux KeepAliveTimeout: the mux session closes when nothing arrived for this long.</summary>
        public TimeSpan SmuxKeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(30);
        /// <summary>The shell writePump waits this long before its first read (initialWaitSecond = 1).</summary>
        public TimeSpan ShellInitialOutputDelay { get; set; } = TimeSpan.FromSeconds(1);
        /// <summary>PrepareToCloseChannel: how long the end of a session waits for outstanding acknowledgements.</summary>
        public TimeSpan CloseDrainTimeout { get; set; } = TimeSpan.FromSeconds(2);
        /// <summary>The shell the shell plugin runs (the agent runs "sh").</summary>
        public string ShellPath { get; set; } = "sh";
        /// <summary>PS1 for the shell.</summary>
        public string ShellPrompt { get; set; } = "$ ";
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

        /// <summary>Aborts the session's current WebSocket without a close frame. False when none is open.</summary>
        public bool Kill(string sessionId) => _channels.TryGetValue(sessionId, out var c) && c.Kill();

        /// <summary>Closes the session's current WebSocket with 1000 "Bye". False when none is open.</summary>
        public bool Bye(string sessionId) => _channels.TryGetValue(sessionId, out var c) && c.Bye();

        /// <summary>Sends pause_publication / start_publication to the client. False when no WebSocket is open.</summary>
        public bool SendPublication(string sessionId, bool pause) => _channels.TryGetValue(sessionId, out var c) && c.SendPublication(pause);

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
                await channel.RunConnectionAsync(socket, () => http.Response.Abort(), open, context.Stopping).ConfigureAwait(false);
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
        /// GET|POST /control/faults; GET /control/sessions; GET /control/sessions/&lt;id&gt;;
        /// GET|POST|DELETE /control/sessions/&lt;id&gt;/faults; POST /control/sessions/&lt;id&gt;/kill | bye | pause | start.
        /// Returns (status, JSON body).
        /// </summary>
        internal (int Status, string Body) HandleControl(string method, string path, string body)
        {
            var parts = path.Trim('/').Split('/');
            try
            {
                if (parts.Length == 2 && parts[1] == "faults")
                {
                    if (method == "POST" || method == "PUT") Faults = SandboxFaultOptions.FromJson(body);
                    else if (method == "DELETE") Faults = new SandboxFaultOptions();
                    else if (method != "GET") return (405, Error("Method not allowed."));
                    return (200, Faults.ToJson());
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
                        }
                    }
                }
                return (404, Error("Unknown control path " + path + "."));
            }
            catch (ArgumentException ex)
            {
                return (400, Error(ex.Message));
            }
        }

        private static string Error(string message) => new JsonObject { ["error"] = message }.ToJsonString();
    }
}
