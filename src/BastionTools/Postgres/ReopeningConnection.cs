using System;
using System.Management.Automation;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Npgsql;

namespace BastionTools.Postgres
{
    /// <summary>
    /// The engine of an IAM database connection (Connect-IamPostgres): its data source and the tunnel under it. A tunnel
    /// that ended on its own — Session Manager's idle session timeout, an administrator's TerminateSession, the agent
    /// restarting, a connection that could not be resumed — is replaced on the connection's next use by a new session
    /// (when the connection opened the tunnel itself), with a fresh pool, so the caller only sees a line of narration.
    /// A tunnel the caller stopped, or one passed in with -Session, is not replaced: using the connection then fails
    /// with <see cref="ErrorIds.DatabaseConnectionClosed"/>.
    /// </summary>
    internal sealed class ReopeningConnection : IDisposable
    {
        /// <summary>Opens a new session for the tunnel: (the local port to take again, narration, cancellation).</summary>
        internal delegate Task<BastionSession> Reopen(int localPort, Action<string> log, CancellationToken cancellationToken);

        private readonly SemaphoreSlim _gate = new(1, 1);
        private readonly Reopen? _reopen;
        private readonly Func<BastionSession, IamDataSource> _newSource;
        private int _tokensBefore;
        private int _disposed;

        /// <param name="session">The tunnel the connection starts with.</param>
        /// <param name="newSource">Builds the data source for a tunnel (its local port, and the tunnel it must not outlive).</param>
        /// <param name="reopen">Opens a replacement session; null when the tunnel is not the connection's own (-Session).</param>
        public ReopeningConnection(BastionSession session, Func<BastionSession, IamDataSource> newSource, Reopen? reopen)
        {
            Session = session;
            _newSource = newSource;
            _reopen = reopen;
            Source = newSource(session);
        }

        /// <summary>The tunnel in use now.</summary>
        public BastionSession Session { get; private set; }

        /// <summary>The data source in use now (its pool goes through <see cref="Session"/>).</summary>
        public IamDataSource Source { get; private set; }

        /// <summary>True when the connection opened its tunnel (and so may reopen it and stops it when closed).</summary>
        public bool OwnsSession => _reopen != null;

        /// <summary>How many times the tunnel was replaced.</summary>
        public int Reopens { get; private set; }

        /// <summary>The ErrorId of the last tunnel that ended (BastionSessionTimedOut, BastionSessionTerminated, BastionSessionFailed).</summary>
        public string? LastEndErrorId { get; private set; }

        /// <summary>Why the last tunnel that ended did.</summary>
        public string? LastEndReason { get; private set; }

        /// <summary>When the tunnel was last replaced (UTC).</summary>
        public DateTime? LastReopenUtc { get; private set; }

        /// <summary>Tokens signed for the connection so far, through every tunnel.</summary>
        public int TokensIssued => Volatile.Read(ref _tokensBefore) + Source.TokensIssued;

        /// <summary>Raised when a new session has replaced the ended one (old, new): the caller updates its session list.</summary>
        public event Action<BastionSession, BastionSession>? SessionReplaced;

        /// <summary>A physical connection from the pool, after the tunnel is replaced if it had ended.</summary>
        public async Task<NpgsqlConnection> OpenAsync(Action<string> log, CancellationToken cancellationToken)
        {
            await EnsureTunnelAsync(log, cancellationToken).ConfigureAwait(false);
            return await Source.OpenAsync(cancellationToken).ConfigureAwait(false);
        }

        /// <summary>True when the tunnel ended on its own and is the connection's own: the next use opens a new session.</summary>
        public bool WillReopen => OwnsSession && Session.Engine.ClosedErrorId != null && Volatile.Read(ref _disposed) == 0;

        /// <summary>True when the session has ended or is ending (closed, failed, stopped or stopping: its listener is closed first).</summary>
        internal static bool HasEnded(BastionSession session) =>
            session.Engine.Completion.IsCompleted || session.Engine.ClosedErrorId != null || session.Engine.IsStopping;

        /// <summary>
        /// Nothing when the tunnel is up (or resuming); otherwise a new session replaces it and the pool is renewed.
        /// </summary>
        /// <exception cref="BastionToolsException">The tunnel is not the connection's own, was stopped, or the new session could not start.</exception>
        public async Task EnsureTunnelAsync(Action<string> log, CancellationToken cancellationToken)
        {
            if (!HasEnded(Session)) return;
            await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                var old = Session;
                if (!HasEnded(old)) return;
                if (Volatile.Read(ref _disposed) != 0) throw Closed(old, "the connection is closed");
                // A session that is ending finishes first: its listener's port is then free to take again.
                await old.Engine.Completion.ConfigureAwait(false);
                var errorId = old.Engine.ClosedErrorId;
                var reason = old.Engine.ClosedReason ?? "it ended";
                if (errorId == null)
                {
                    throw Closed(old, "it was stopped (Stop-BastionSession)");
                }
                if (_reopen == null)
                {
                    throw Closed(old, errorId + ": " + reason);
                }
                log($"The tunnel's session {old.SessionId} has ended ({errorId}: {reason}). Opening a new session to {old.Remote} in its place.");
                var fresh = await _reopen(old.LocalPort, log, cancellationToken).ConfigureAwait(false);
                fresh.Reopens = old.Reopens + 1;
                fresh.PreviousSessionId = old.SessionId;
                fresh.PreviousEndErrorId = errorId;
                fresh.PreviousEndReason = reason;

                var oldSource = Source;
                Interlocked.Add(ref _tokensBefore, oldSource.TokensIssued);
                Source = _newSource(fresh);
                Session = fresh;
                Reopens++;
                LastEndErrorId = errorId;
                LastEndReason = reason;
                LastReopenUtc = DateTime.UtcNow;
                // The old pool's connections went through the ended tunnel: they are closed, not reused.
                _ = Task.Run(() => DisposeQuietly(oldSource));
                SessionReplaced?.Invoke(old, fresh);
                log($"Session {fresh.SessionId} now carries the connection, on 127.0.0.1:{fresh.LocalPort} (tunnel reopened {Reopens} time(s)).");
            }
            finally
            {
                _gate.Release();
            }
        }

        private static BastionToolsException Closed(BastionSession session, string why) =>
            new(ErrorIds.DatabaseConnectionClosed, ErrorCategory.ResourceUnavailable,
                $"The connection's tunnel (session {session.SessionId}) has ended: {why}.", session.SessionId,
                "Connect again with Connect-IamPostgres (without -Session, a connection reopens a tunnel that ended on its own).");

        private static void DisposeQuietly(IamDataSource source)
        {
            try
            {
                source.Dispose();
            }
            catch (Exception ex) when (ex is NpgsqlException || ex is System.IO.IOException || ex is ObjectDisposedException || ex is InvalidOperationException)
            {
                // Its connections went through a tunnel that is gone.
            }
        }

        /// <summary>Closes the pool, and stops the tunnel when it is the connection's own.</summary>
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            _gate.Wait();
            try
            {
                Source.Dispose();
                if (OwnsSession) Session.Engine.StopAsync().GetAwaiter().GetResult();
            }
            finally
            {
                _gate.Release();
            }
        }
    }
}
