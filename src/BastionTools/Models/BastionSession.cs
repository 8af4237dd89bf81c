using System;
using BastionTools.Ssm;

namespace BastionTools
{
    /// <summary>
    /// A Session Manager session opened by this PowerShell session (Start-BastionSession). The object is live:
    /// State, bytes and connections read the running session each time.
    /// </summary>
    public sealed class BastionSession
    {
        internal BastionSession(PortForwardingSession engine, BastionInstance? instance)
        {
            Engine = engine;
            Instance = instance;
        }

        internal PortForwardingSession Engine { get; }

        internal BastionInstance? Instance { get; }

        public string SessionId => Engine.SessionId ?? "";

        /// <summary>The bastion's instance id.</summary>
        public string Target => Engine.Target;

        public string? TargetName => Instance?.Name;

        public string Type => "PortForwarding";

        /// <summary>What to connect to: the local listener, e.g. 127.0.0.1:54321.</summary>
        public string LocalEndpoint => Engine.LocalEndPoint?.ToString() ?? "";

        public string LocalAddress => Engine.LocalEndPoint?.Address.ToString() ?? "";

        public int LocalPort => Engine.LocalEndPoint?.Port ?? 0;

        /// <summary>The destination as the bastion reaches it, e.g. mydb.abc.eu-west-1.rds.amazonaws.com:5432.</summary>
        public string Remote => (Engine.RemoteHost ?? "localhost") + ":" + Engine.RemotePort.ToString(System.Globalization.CultureInfo.InvariantCulture);

        public string? RemoteHost => Engine.RemoteHost;

        public int RemotePort => Engine.RemotePort;

        public string State => Engine.State.ToString();

        /// <summary>Multiplexed (many connections at once) or Basic (one at a time, old agents).</summary>
        public string Mode => Engine.Mode.ToString();

        public string? AgentVersion => Engine.AgentVersion;

        public DateTime StartTime => Engine.StartedAtUtc.ToLocalTime();

        public TimeSpan Uptime => Engine.State == SessionState.Connected || Engine.State == SessionState.Reconnecting
            ? DateTime.UtcNow - Engine.StartedAtUtc
            : TimeSpan.Zero;

        /// <summary>Bytes from the destination to local clients.</summary>
        public long BytesReceived => Engine.Connections.BytesIn;

        /// <summary>Bytes from local clients to the destination.</summary>
        public long BytesSent => Engine.Connections.BytesOut;

        public long ActiveConnections => Engine.Connections.Active;

        public long TotalConnections => Engine.Connections.Opened;

        public long FailedConnections => Engine.Connections.Failed;

        /// <summary>Connections reset because their program stopped reading what arrived for them (counted in FailedConnections too).</summary>
        public long ResetConnections => Engine.Connections.Reset;

        /// <summary>Why the session ended on its own (BastionSessionFailed, BastionSessionTimedOut), when it did.</summary>
        public string? ClosedErrorId => Engine.ClosedErrorId;

        public long Reconnects => Engine.Channel?.Reconnects ?? 0;

        public long Retransmissions => Engine.Channel?.Retransmissions ?? 0;

        public string? ClosedReason => Engine.ClosedReason;

        /// <summary>
        /// How many sessions this tunnel had before this one: a Connect-IamPostgres connection opens a new session in
        /// place of one that ended on its own (idle timeout, TerminateSession, agent restart). 0 for a first session.
        /// </summary>
        public int Reopens { get; internal set; }

        /// <summary>The session this one replaced, when it replaced one.</summary>
        public string? PreviousSessionId { get; internal set; }

        /// <summary>Why the replaced session ended: its ErrorId (BastionSessionTimedOut, BastionSessionTerminated, BastionSessionFailed).</summary>
        public string? PreviousEndErrorId { get; internal set; }

        /// <summary>Why the replaced session ended, in words.</summary>
        public string? PreviousEndReason { get; internal set; }

        /// <summary>The session's recent events (no secrets).</summary>
        public string[] Events => Engine.Events.Snapshot();

        public override string ToString() => $"{SessionId} {LocalEndpoint} -> {Remote} via {Target} ({State})";
    }
}
