namespace BastionTools.Ssm
{
    /// <summary>
    /// Every bound on memory the service side can make the client spend, in one place. Each is a default of an option
    /// (<see cref="DataChannelOptions"/>, <see cref="WebSocketTransportOptions"/>); what happens at the bound is the
    /// same everywhere: the excess is refused, never buffered, and either the peer resends it later (reliable channel)
    /// or the one local connection concerned is reset (port forwarding).
    /// <list type="table">
    /// <item><term>WebSocket message</term><description><see cref="MaxServiceMessageBytes"/> (fragments joined). Beyond: the channel fails (the peer is not the service).</description></item>
    /// <item><term>Reorder window</term><description><see cref="ReorderWindow"/> sequence numbers ahead of the next expected one. Beyond: ignored and not acknowledged, so the agent sends it again later. Worst case held: window × (1,024-byte payload + 120-byte header).</description></item>
    /// <item><term>Pending acknowledgements</term><description><see cref="MaxPendingAcknowledgements"/> not yet written to the socket. Beyond: dropped; the agent resends the message and it is acknowledged then.</description></item>
    /// <item><term>Send window</term><description><see cref="SendWindow"/> messages sent and not acknowledged, growing up to <see cref="MaxSendWindow"/> on a long, fast path (twice the measured bandwidth-delay product); senders wait (local TCP back-pressure).</description></item>
    /// <item><term>smux frame reassembly</term><description>65,535 bytes (the smux v1 length field is 16 bits): one partial frame at a time.</description></item>
    /// <item><term>Per local connection</term><description><see cref="ConnectionQueueBytes"/> received for it and not yet taken by its client, once the client has taken nothing for <see cref="ConnectionStallTime"/>: that connection is reset (smux FIN, local RST); the others go on. A client that is slow but reading may hold more, within the session bound.</description></item>
    /// <item><term>All local connections</term><description><see cref="SessionQueueBytes"/> together. Beyond: the connection holding most is reset.</description></item>
    /// </list>
    /// So one session holds at most about ReorderWindow × 1.1 KiB + MaxSendWindow × 1.1 KiB + SessionQueueBytes
    /// (about 12 MiB + 11 MiB + 64 MiB with the defaults), whatever the service sends and however many connections.
    /// </summary>
    internal static class ChannelLimits
    {
        /// <summary>
        /// The largest message accepted from the service. The agent's stream messages carry at most 1,024 bytes
        /// (StreamDataPayloadSize in amazon-ssm-agent agent/session/config/config.go) plus a 120-byte header; channel_closed
        /// and the handshake carry small JSON. 1 MiB leaves room for any legitimate message.
        /// </summary>
        public const int MaxServiceMessageBytes = 1024 * 1024;

        /// <summary>
        /// How far ahead of the next expected sequence number a stream message is kept. The official client keeps at most
        /// 10,000 early messages (IncomingMessageBufferCapacity in session-manager-plugin src/config/config.go) and
        /// ignores, without acknowledging, what does not fit.
        /// </summary>
        public const int ReorderWindow = 10000;

        /// <summary>Acknowledgements queued for the socket at most.</summary>
        public const int MaxPendingAcknowledgements = 10000;

        /// <summary>Stream messages in flight (sent, not acknowledged) at most, to start with and on a short or slow path.</summary>
        public const int SendWindow = 1024;

        /// <summary>
        /// Stream messages in flight at most on a long, fast path: the official client keeps up to 10,000 sent messages for
        /// resending (OutgoingMessageBufferCapacity in session-manager-plugin src/config/config.go) and never waits; the
        /// agent keeps up to 100,000 early ones (IncomingMessageBufferCapacity in amazon-ssm-agent agent/session/config).
        /// </summary>
        public const int MaxSendWindow = 10000;

        /// <summary>
        /// Bytes received for one local connection and not yet read by its client, past which a client that reads nothing
        /// is reset. smux v1 has no per-stream flow control; at the agent's pace (1 KiB per millisecond at most) this is
        /// several seconds of data.
        /// </summary>
        public const int ConnectionQueueBytes = 8 * 1024 * 1024;

        /// <summary>Bytes all the local connections of one session hold together, at most.</summary>
        public const int SessionQueueBytes = 64 * 1024 * 1024;

        /// <summary>How long a client past <see cref="ConnectionQueueBytes"/> may take nothing before it is taken for stopped.</summary>
        public static readonly System.TimeSpan ConnectionStallTime = System.TimeSpan.FromSeconds(2);
    }
}
