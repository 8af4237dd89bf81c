using System;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Which agents run smux keepalive on a multiplexed port session, and so close it after 30 s without a frame from the
    /// client. From the agent's history (aws/amazon-ssm-agent, agent/session/plugins/port/port_mux.go and port.go):
    /// <list type="bullet">
    /// <item>3.0.222.0 (the first release with mux) up to 3.1.1374.0: <c>smux.Server(conn, nil)</c>, i.e. smux's
    /// DefaultConfig with keepalive on (a NOP every 10 s, the session closed when nothing arrived for 30 s), whatever the client.</item>
    /// <item>3.1.1446.0 to 3.1.1511.0 (commit 5bdad830, "Disable smux keep alive or else it breaks idle session timeout"):
    /// keepalive off, whatever the client.</item>
    /// <item>3.1.1575.0 on (commit 4426b37d): off when the client's HandshakeResponse ClientVersion is above 1.2.331.0
    /// (<c>muxKeepAliveDisabledAfterThisClientVersion</c>), on otherwise.</item>
    /// </list>
    /// The official client (aws/session-manager-plugin muxportforwarding.go, config.go
    /// <c>TCPMultiplexingWithSmuxKeepAliveDisabledAfterThisAgentVersion</c> = 3.1.1511.0, since 1.2.339.0) keeps its own
    /// smux keepalive on for agents up to 3.1.1511.0; this module sends NOPs only where the agent needs them.
    /// </summary>
    internal static class SmuxKeepAlive
    {
        /// <summary>The first agent release without smux keepalive (3.1.1374.0 is the last one with it on for every client).</summary>
        public static readonly Version AgentKeepAliveOffFrom = new(3, 1, 1446, 0);

        /// <summary>From this agent release, keepalive depends on the client version again.</summary>
        public static readonly Version AgentChecksClientVersionFrom = new(3, 1, 1575, 0);

        /// <summary>Agents from <see cref="AgentChecksClientVersionFrom"/> turn keepalive off for clients above this version.</summary>
        public static readonly Version KeepAliveDisabledAfterClientVersion = new(1, 2, 331, 0);

        /// <summary>smux DefaultConfig KeepAliveInterval: how often the official client's smux sends a NOP.</summary>
        public static readonly TimeSpan Interval = TimeSpan.FromSeconds(10);

        /// <summary>smux DefaultConfig KeepAliveTimeout: how long an agent with keepalive on waits for a frame before it closes the mux session.</summary>
        public static readonly TimeSpan AgentTimeout = TimeSpan.FromSeconds(30);

        /// <summary>
        /// True when the agent (its handshake AgentVersion) runs smux keepalive for a client announcing
        /// <paramref name="clientVersion"/>, so an idle tunnel needs the client's frames to stay open. False for an
        /// unreadable agent version (such an agent is not multiplexed either).
        /// </summary>
        public static bool AgentRequiresKeepAlive(string? agentVersion, string? clientVersion)
        {
            if (!TryParse(agentVersion, out var agent)) return false;
            if (agent < AgentKeepAliveOffFrom) return true;
            if (agent < AgentChecksClientVersionFrom) return false;
            // versionutil.Compare(clientVersion, "1.2.331.0") > 0 turns it off; an unreadable client version compares as 0.
            return !TryParse(clientVersion, out var client) || client <= KeepAliveDisabledAfterClientVersion;
        }

        /// <summary>Dot-separated numbers, missing parts 0 (as the agent's versionutil compares them).</summary>
        internal static bool TryParse(string? text, out Version version)
        {
            version = new Version(0, 0, 0, 0);
            if (string.IsNullOrWhiteSpace(text)) return false;
            var parts = text!.Trim().Split('.');
            if (parts.Length > 4) return false;
            var numbers = new int[4];
            for (var i = 0; i < parts.Length; i++)
            {
                if (!int.TryParse(parts[i], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out numbers[i])) return false;
            }
            version = new Version(numbers[0], numbers[1], numbers[2], numbers[3]);
            return true;
        }
    }
}
