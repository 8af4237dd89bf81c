using System;
using BastionTools.Postgres;

namespace BastionTools
{
    /// <summary>
    /// A pooled connection to an RDS PostgreSQL database through a bastion, logging in with IAM tokens
    /// (Connect-IamPostgres). Usable for hours: every new physical connection gets a fresh token, and a tunnel that
    /// Session Manager ended (idle timeout, TerminateSession, agent restart) is replaced by a new session on next use.
    /// </summary>
    public sealed class IamPostgresConnection
    {
        internal IamPostgresConnection(ReopeningConnection engine, string serverVersion)
        {
            Engine = engine;
            ServerVersion = serverVersion;
            OpenedTime = DateTime.Now;
        }

        internal ReopeningConnection Engine { get; }

        internal IamDataSource Source => Engine.Source;

        internal bool OwnsSession => Engine.OwnsSession;

        /// <summary>The RDS endpoint (what the token is signed for and the certificate names).</summary>
        public string Endpoint => Source.Options.Endpoint;

        public int Port => Source.Options.EndpointPort;
        public string UserName => Source.Options.UserName;
        public string Database => Source.Options.Database;

        /// <summary>The local end of the tunnel the connections go through.</summary>
        public int LocalPort => Source.Options.ConnectPort;

        /// <summary>The session of the tunnel in use now.</summary>
        public string SessionId => Session.SessionId;

        /// <summary>The tunnel in use now (a BastionSession, also listed by Get-BastionSession).</summary>
        public BastionSession Session => Engine.Session;

        public string ServerVersion { get; }
        public RdsSslMode SslMode => Source.Options.SslMode;
        public DateTime OpenedTime { get; }
        public bool IsOpen { get; internal set; } = true;
        /// <summary>
        /// Open (usable: also when its own tunnel ended on its own, since the next use reopens it), Closed
        /// (Disconnect-IamPostgres), or the tunnel's state when that is the connection's limit (Reconnecting, or an ended
        /// -Session tunnel).
        /// </summary>
        public string State => !IsOpen ? "Closed" : Session.State == "Connected" || Engine.WillReopen ? "Open" : Session.State;
        public int TokensIssued => Engine.TokensIssued;

        /// <summary>How many times the tunnel was replaced by a new session because the previous one ended on its own.</summary>
        public int TunnelReopens => Engine.Reopens;

        /// <summary>The ErrorId of the last tunnel that ended on its own (BastionSessionTimedOut, BastionSessionTerminated, BastionSessionFailed).</summary>
        public string? LastTunnelEndErrorId => Engine.LastEndErrorId;

        /// <summary>Why the last tunnel that ended on its own did.</summary>
        public string? LastTunnelEndReason => Engine.LastEndReason;

        /// <summary>When the tunnel was last replaced.</summary>
        public DateTime? LastTunnelReopenTime => Engine.LastReopenUtc?.ToLocalTime();

        public override string ToString() => $"{UserName}@{Endpoint}:{Port}/{Database} via {Session.Target} (127.0.0.1:{LocalPort})";
    }
}
