using System;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>Where a data channel connects: the StreamUrl and TokenValue from StartSession or ResumeSession.</summary>
    internal sealed class StreamEndpoint
    {
        /// <exception cref="BastionToolsException">StreamUrlInsecure: not wss:// (plain ws:// only to a loopback address).</exception>
        public StreamEndpoint(string sessionId, Uri streamUrl, string tokenValue)
        {
            StreamUrlPolicy.Check(streamUrl, sessionId);
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

    /// <summary>
    /// The service refused to resume the session for good (it no longer knows it, or the caller may not resume it):
    /// thrown by the resume callback of a <see cref="DataChannel"/>, which then ends instead of retrying.
    /// </summary>
    internal sealed class SessionResumeRefusedException : Exception
    {
        public SessionResumeRefusedException(string message, bool sessionGone, Exception? inner = null)
            : base(message, inner)
        {
            SessionGone = sessionGone;
        }

        /// <summary>The session timed out or was terminated (as opposed to: the caller is not allowed to resume it).</summary>
        public bool SessionGone { get; }
    }

    /// <summary>Behaviour and bounds of a data channel. Defaults are what a user gets; tests shorten the timings.</summary>
    internal sealed class DataChannelOptions
    {
        /// <summary>
        /// The client version announced in OpenDataChannel and the handshake. The agent multiplexes port sessions with
        /// smux only for clients ≥ 1.1.70 and turns smux keepalive off for clients &gt; 1.2.331.0.
        /// </summary>
        public string ClientVersion { get; set; } = "1.2.707.0";

        /// <summary>Largest payload of one input_stream_data message (the official client and agent use 1024).</summary>
        public int MaxPayloadSize { get; set; } = 1024;

        /// <summary>
        /// Stream messages sent and not yet acknowledged before senders wait: the window to start with, and its least size.
        /// It grows up to <see cref="MaxSendWindow"/> when twice the measured bandwidth-delay product (the rate at which
        /// acknowledgements come times the least round trip) is larger, as on a link to another continent, and shrinks back
        /// when it is not.
        /// </summary>
        public int SendWindow { get; set; } = ChannelLimits.SendWindow;

        /// <summary>The send window's largest size (see <see cref="SendWindow"/>); at most <see cref="SendWindow"/> keeps it fixed.</summary>
        public int MaxSendWindow { get; set; } = ChannelLimits.MaxSendWindow;

        /// <summary>How far ahead of the expected sequence number a message is kept (see <see cref="ChannelLimits.ReorderWindow"/>).</summary>
        public int ReorderWindow { get; set; } = ChannelLimits.ReorderWindow;

        /// <summary>Acknowledgements waiting for the socket at most; more are dropped (the agent resends).</summary>
        public int MaxPendingAcknowledgements { get; set; } = ChannelLimits.MaxPendingAcknowledgements;

        /// <summary>How much the local connections' queues may hold, and when a client is taken for stopped (then reset).</summary>
        public ConnectionQueuePolicy ConnectionQueues { get; set; } = new();

        public TimeSpan InitialRetransmitTimeout { get; set; } = TimeSpan.FromMilliseconds(200);
        public TimeSpan MinRetransmitTimeout { get; set; } = TimeSpan.FromMilliseconds(200);
        public TimeSpan MaxRetransmitTimeout { get; set; } = TimeSpan.FromSeconds(2);

        /// <summary>How often overdue messages are considered for a resend (the agent and the official client: 100 ms).</summary>
        public TimeSpan ResendInterval { get; set; } = TimeSpan.FromMilliseconds(100);

        /// <summary>Overdue messages resent per interval at most, oldest first, while the oldest has been lost at most once.</summary>
        public int ResendBurst { get; set; } = 32;

        /// <summary>
        /// When no acknowledgement at all has arrived for this long while messages are outstanding, the channel is
        /// congested (the agent is not reading: its destination is slow, or a path drops everything): only the oldest
        /// message is resent, once its back-off has passed, so a congested channel is probed, not flooded. Random loss,
        /// where acknowledgements keep coming, keeps the burst.
        /// </summary>
        public TimeSpan CongestionTimeout { get; set; } = TimeSpan.FromSeconds(1);

        /// <summary>
        /// Test observation only: called (under the channel's lock, keep it cheap) each time a stream message is put on
        /// the wire, with its sequence number, the attempt (1 = first transmission) and the <see cref="System.Diagnostics.Stopwatch"/>
        /// timestamp the channel used for its decision, so pacing can be checked on the channel's own clock rather than on
        /// when a loaded machine got round to writing.
        /// </summary>
        internal Action<long, int, long>? TransmitObserver { get; set; }

        /// <summary>
        /// A pause_publication that nothing ends (no start_publication, no data, no acknowledgement) is ended after this
        /// long: held messages go out, and what the service did not take is resent as usual. The agent never ends a pause
        /// on its own; the official client ignores pauses altogether; this keeps the agent's rule without its risk of a
        /// channel that waits for ever.
        /// </summary>
        public TimeSpan PauseTimeout { get; set; } = TimeSpan.FromSeconds(30);

        /// <summary>The per-message back-off (RTO × 2^(attempts-1)) stops growing here.</summary>
        public TimeSpan MaxResendBackoff { get; set; } = TimeSpan.FromSeconds(8);

        /// <summary>
        /// A message still unacknowledged this long after it was first sent on the current connection, while that connection
        /// lives, ends the channel: the agent is stuck (the official client gives up after 3,000 resends, about 5 minutes).
        /// </summary>
        public TimeSpan UnacknowledgedTimeout { get; set; } = TimeSpan.FromMinutes(5);

        /// <summary>
        /// How long a lost connection is resumed for (ResumeSession + a new WebSocket, with capped exponential back-off)
        /// before the session is given up. Open local connections wait meanwhile.
        /// </summary>
        public TimeSpan ReconnectTimeout { get; set; } = TimeSpan.FromMinutes(10);

        /// <summary>
        /// Test hook: maps the real time since the connection was lost to the time the reconnect budget counts, so a test can
        /// spend the budget on a condition (after N failed attempts) instead of racing a short real budget on a loaded
        /// machine. Null in production.
        /// </summary>
        internal Func<TimeSpan, TimeSpan>? ReconnectElapsed { get; set; }

        /// <summary>First back-off between resume attempts (doubled each time, with ±25 % jitter).</summary>
        public TimeSpan ReconnectInitialDelay { get; set; } = TimeSpan.FromMilliseconds(200);

        /// <summary>Longest back-off between resume attempts (the official client's DataChannelRetryMaxIntervalMillis is 5 s).</summary>
        public TimeSpan ReconnectMaxDelay { get; set; } = TimeSpan.FromSeconds(5);

        /// <summary>
        /// One resume attempt (ResumeSession, then the WebSocket) is abandoned after <see cref="FirstResumeAttemptTimeout"/>
        /// times the attempt's number, at most this. The first attempts are short because after a sleep or a network change
        /// the HTTP client's pooled connections are as dead as the WebSocket was, and a request sent on one hangs.
        /// </summary>
        public TimeSpan ResumeAttemptTimeout { get; set; } = TimeSpan.FromSeconds(15);

        /// <summary>The first resume attempt's time limit (see <see cref="ResumeAttemptTimeout"/>).</summary>
        public TimeSpan FirstResumeAttemptTimeout { get; set; } = TimeSpan.FromSeconds(5);

        /// <summary>With nothing outstanding, a WebSocket ping is sent when nothing has been received for this long.</summary>
        public TimeSpan PingInterval { get; set; } = TimeSpan.FromSeconds(20);

        /// <summary>With messages or acknowledgements outstanding, a ping is sent when nothing has been received for this long.</summary>
        public TimeSpan ProbeInterval { get; set; } = TimeSpan.FromSeconds(5);

        /// <summary>A connection on which nothing at all arrives within this time after a ping is dead: it is dropped and resumed.</summary>
        public TimeSpan PongTimeout { get; set; } = TimeSpan.FromSeconds(5);

        /// <summary>
        /// With -KeepAlive: multiplexed port sessions send a smux NOP when they have sent nothing for this long, so that
        /// an idle tunnel is not ended by Session Manager's idle session timeout (1 to 60 minutes, set by the account's
        /// administrator; 20 by default). That timeout is a security control, so this is off (zero) unless asked for.
        /// </summary>
        public TimeSpan IdleKeepAlive { get; set; } = TimeSpan.Zero;

        /// <summary>
        /// <see cref="IdleKeepAlive"/> with -KeepAlive: 30 s, half the shortest idle session timeout an administrator can
        /// set (1 minute), so a NOP always falls within it.
        /// </summary>
        public static readonly TimeSpan RequestedKeepAliveInterval = TimeSpan.FromSeconds(30);

        /// <summary>
        /// For agents that run smux keepalive (<see cref="SmuxKeepAlive.AgentRequiresKeepAlive"/>: 3.0.222.0 to 3.1.1374.0,
        /// and later ones for clients up to 1.2.331.0), which close the mux session after 30 s without a frame from the
        /// client: a NOP is sent when nothing has been sent for this long (smux's KeepAliveInterval, 10 s), as the official
        /// client does. Such an agent sends its own NOP every 10 s too (AWS turned its keepalive off in 3.1.1446.0 because
        /// it "breaks idle session timeout"), so the client's NOPs take nothing from the administrator there.
        /// </summary>
        public TimeSpan AgentKeepAliveInterval { get; set; } = SmuxKeepAlive.Interval;

        /// <summary>
        /// Port forwarding, .NET on Linux and macOS (nothing elsewhere): the tunnel's sockets keep off the thread pool. A
        /// multiplexed session reads its local connections on a reader thread of its own (<see cref="LocalReadReactor"/>)
        /// and handles the data channel's socket on the socket engine's thread (<see cref="SocketCompletions"/>); a basic
        /// session does the latter for its socket and its connection while it carries one (<see cref="InlineSocketGroup"/>).
        /// On by default; off, everything goes through the thread pool. A shell session never does it (its terminal writes block).
        /// </summary>
        public bool InlineSocketCompletions { get; set; } = true;

        /// <summary>How the WebSocket connects (timeout, proxy, message size bound).</summary>
        public WebSocketTransportOptions Transport { get; set; } = new();

        /// <summary>Opens the transport (tests may substitute their own; the default is <see cref="WebSocketTransport"/> with TLS verified).</summary>
        public Func<Uri, CancellationToken, Task<IMessageTransport>>? TransportFactory { get; set; }
    }
}
