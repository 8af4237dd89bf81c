using System;
using BastionTools.Postgres;

namespace BastionTools
{
    /// <summary>
    /// A pooled connection to an RDS PostgreSQL database through a bastion, logging in with IAM tokens
    /// (Connect-IamPostgres). Usable for hours: every new physical connection gets a fresh token.
    /// </summary>
    public sealed class IamPostgresConnection
    {
        internal IamPostgresConnection(IamDataSource dataSource, BastionSession session, bool ownsSession, string serverVersion)
        {
            Source = dataSource;
            Session = session;
            OwnsSession = ownsSession;
            ServerVersion = serverVersion;
            OpenedTime = DateTime.Now;
        }

        internal IamDataSource Source { get; }
        internal bool OwnsSession { get; }

        /// <summary>The RDS endpoint (what the token is signed for and the certificate names).</summary>
        public string Endpoint => Source.Options.Endpoint;

        public int Port => Source.Options.EndpointPort;
        public string UserName => Source.Options.UserName;
        public string Database => Source.Options.Database;

        /// <summary>The local end of the tunnel the connections go through.</summary>
        public int LocalPort => Source.Options.ConnectPort;

        public string SessionId => Session.SessionId;

        /// <summary>The tunnel (a BastionSession, also listed by Get-BastionSession).</summary>
        public BastionSession Session { get; }

        public string ServerVersion { get; }
        public RdsSslMode SslMode => Source.Options.SslMode;
        public DateTime OpenedTime { get; }
        public bool IsOpen { get; internal set; } = true;
        public string State => IsOpen && Session.State == "Connected" ? "Open" : IsOpen ? Session.State : "Closed";
        public int TokensIssued => Source.TokensIssued;

        public override string ToString() => $"{UserName}@{Endpoint}:{Port}/{Database} via {Session.Target} (127.0.0.1:{LocalPort})";
    }
}
