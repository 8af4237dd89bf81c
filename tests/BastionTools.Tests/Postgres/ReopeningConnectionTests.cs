using System;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Postgres;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Npgsql;
using Xunit;

namespace BastionTools.Tests.Postgres
{
    /// <summary>A sandbox with PostgreSQL and the RDS-IAM front, for connections whose tunnels end.</summary>
    public sealed class ReopenFixture : IAsyncLifetime
    {
        public SandboxHost Host { get; private set; } = null!;
        internal AwsApi Api { get; private set; } = null!;
        public RdsIamProxy Proxy => Host.RdsProxy!;

        public async Task InitializeAsync()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            Host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions { StartPostgres = true, StartRdsProxy = true });
            await Host.StartAsync();
            var c = Host.World.Credentials[0];
            Api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), Host.World.Region, Host.SsmEndpoint.ToString());
            await Host.Postgres!.ExecuteSqlAsync("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iam_app') THEN CREATE ROLE iam_app LOGIN; END IF; END $$; GRANT rds_iam TO iam_app; GRANT SELECT ON seed_items TO iam_app;");
        }

        public async Task DisposeAsync()
        {
            Api.Dispose();
            await Host.DisposeAsync();
        }
    }

    [CollectionDefinition("reopen")]
    public sealed class ReopenCollection : ICollectionFixture<ReopenFixture>
    {
    }

    /// <summary>
    /// <see cref="ReopeningConnection"/> with real sessions, real Npgsql and TLS, real tokens: a tunnel that Session
    /// Manager ends (idle timeout, TerminateSession, the agent restarting) is replaced on the next use; one the caller
    /// stopped, or one it does not own, is not.
    /// </summary>
    [Collection("reopen")]
    public sealed class ReopeningConnectionTests
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private readonly ReopenFixture _f;

        public ReopeningConnectionTests(ReopenFixture fixture) => _f = fixture;

        private IamDataSource Source(BastionSession tunnel) => Source(tunnel, RdsSslMode.VerifyFull);

        private IamDataSource Source(BastionSession tunnel, RdsSslMode mode)
        {
            var port = tunnel.LocalPort;
            var c = _f.Host.World.Credentials[0];
            return new IamDataSource(new IamDataSourceOptions
            {
                Endpoint = _f.Proxy.EndpointName,
                EndpointPort = 5432,
                ConnectPort = port,
                UserName = "iam_app",
                Database = _f.Host.Postgres!.Database!,
                Region = _f.Host.World.Region,
                RootCertificatePath = _f.Proxy.CaBundlePath,
                Tunnel = tunnel.Engine,
                SslMode = mode,
            }, () => new AwsKeys(c.AccessKeyId, c.SecretAccessKey, c.SessionToken), new Redactor());
        }

        private TunnelOpener Opener() => new(_f.Api, new TargetSelector { InstanceId = Bastion },
            new PortForwardingRequest { RemoteHost = _f.Proxy.EndpointName, RemotePort = 5432 }, new DataChannelOptions());

        private async Task<(ReopeningConnection Connection, ConcurrentQueue<string> Log, ConcurrentQueue<(BastionSession Old, BastionSession New)> Replaced)> OpenAsync(bool owns = true)
        {
            var opener = Opener();
            var first = await opener.OpenAsync(0, _ => { }, CancellationToken.None);
            var connection = new ReopeningConnection(first, Source, owns ? opener.OpenAsync : null);
            var replaced = new ConcurrentQueue<(BastionSession, BastionSession)>();
            connection.SessionReplaced += (o, n) => replaced.Enqueue((o, n));
            return (connection, new ConcurrentQueue<string>(), replaced);
        }

        private static async Task<string> WhoAsync(ReopeningConnection connection, ConcurrentQueue<string> log)
        {
            await using var conn = await connection.OpenAsync(log.Enqueue, CancellationToken.None);
            await using var cmd = new NpgsqlCommand("select current_user || ':' || count(*) from seed_items", conn);
            return (string)(await cmd.ExecuteScalarAsync())!;
        }

        private static async Task WaitEndedAsync(BastionSession session)
        {
            var done = await Task.WhenAny(session.Engine.Completion, Task.Delay(TimeSpan.FromSeconds(60)));
            Assert.Same(session.Engine.Completion, done);
        }

        /// <summary>
        /// A pool must not outlive its tunnel: once the session is stopped, 127.0.0.1:port may be anybody's. Someone
        /// else listens there now; the pool refuses before it connects and before it signs a token.
        /// </summary>
        [Theory(Timeout = 120_000)]
        [InlineData(RdsSslMode.Require)]
        [InlineData(RdsSslMode.VerifyFull)]
        public async Task AStoppedTunnel_ItsPoolRefuses_BeforeAnyConnectOrToken_EvenWhenSomeoneElseHoldsThePort(RdsSslMode mode)
        {
            var tunnel = await Opener().OpenAsync(0, _ => { }, CancellationToken.None);
            var port = tunnel.LocalPort;
            using var source = Source(tunnel, mode);
            await using (var conn = await source.OpenAsync(CancellationToken.None))
            {
                await using var cmd = new NpgsqlCommand("select current_user", conn);
                Assert.Equal("iam_app", (string)(await cmd.ExecuteScalarAsync())!);
            }
            var tokens = source.TokensIssued;
            Assert.Equal(1, tokens);

            await tunnel.Engine.StopAsync();
            using var other = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
            other.SetSocketOption(System.Net.Sockets.SocketOptionLevel.Socket, System.Net.Sockets.SocketOptionName.ReuseAddress, true);
            other.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port));
            other.Listen(16);

            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => source.OpenAsync(CancellationToken.None));
            Assert.Equal(ErrorIds.DatabaseConnectionClosed, ex.ErrorId);
            Assert.Contains(tunnel.SessionId, ex.Message);
            Assert.Equal(tokens, source.TokensIssued);
            Assert.Throws<BastionToolsException>(() => source.NewToken());
            Assert.Equal(tokens, source.TokensIssued);
            // A connection attempt would be complete (in the backlog) by the time OpenAsync returned.
            Assert.False(other.Poll(0, System.Net.Sockets.SelectMode.SelectRead));
        }

        /// <summary>The same for a tunnel that is stopping: its listener is closed before its session has ended.</summary>
        [Fact(Timeout = 120_000)]
        public async Task ATunnelBeingStopped_IsNotUsedByTheConnection()
        {
            var (connection, log, _) = await OpenAsync(owns: false);
            try
            {
                Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                var stopping = connection.Session.Engine.StopAsync();
                var ex = await Assert.ThrowsAsync<BastionToolsException>(() => WhoAsync(connection, log));
                Assert.Equal(ErrorIds.DatabaseConnectionClosed, ex.ErrorId);
                await stopping;
            }
            finally
            {
                connection.Dispose();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task AfterTheIdleSessionTimeout_TheNextUseOpensANewSession_AndQueries()
        {
            var (connection, log, replaced) = await OpenAsync();
            try
            {
                Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                var first = connection.Session;
                _f.Host.Agent.Options.IdleSessionTimeout = TimeSpan.FromSeconds(2);
                try
                {
                    await WaitEndedAsync(first);
                    Assert.Equal(ErrorIds.BastionSessionTimedOut, first.ClosedErrorId);
                    Assert.True(connection.WillReopen);

                    Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                }
                finally
                {
                    _f.Host.Agent.Options.IdleSessionTimeout = TimeSpan.FromMinutes(20);
                }
                var second = connection.Session;
                Assert.NotEqual(first.SessionId, second.SessionId);
                Assert.Equal("Connected", second.State);
                Assert.False(connection.WillReopen);
                Assert.Equal(1, connection.Reopens);
                Assert.Equal(ErrorIds.BastionSessionTimedOut, connection.LastEndErrorId);
                Assert.Contains("timed out due to inactivity", connection.LastEndReason);
                Assert.NotNull(connection.LastReopenUtc);
                Assert.Equal(1, second.Reopens);
                Assert.Equal(first.SessionId, second.PreviousSessionId);
                Assert.Equal(ErrorIds.BastionSessionTimedOut, second.PreviousEndErrorId);
                Assert.Equal(second.LocalPort, connection.Source.Options.ConnectPort);
                Assert.Equal(2, connection.TokensIssued);
                var swap = Assert.Single(replaced);
                Assert.Same(first, swap.Old);
                Assert.Same(second, swap.New);
                Assert.Contains(log, l => l.Contains("The tunnel's session " + first.SessionId + " has ended (BastionSessionTimedOut", StringComparison.Ordinal));
                Assert.Contains(log, l => l.Contains("Session " + second.SessionId + " now carries the connection", StringComparison.Ordinal));
                Assert.True(_f.Host.Sessions.TryGet(first.SessionId, out var old));
                Assert.Equal(SandboxSessionState.TimedOut, old.State);
            }
            finally
            {
                connection.Dispose();
            }
        }

        [Theory(Timeout = 120_000)]
        [InlineData("terminate")]
        [InlineData("restart-agent")]
        public async Task AfterTerminateSessionOrAnAgentRestart_TheNextUseOpensANewSession(string how)
        {
            var (connection, log, _) = await OpenAsync();
            try
            {
                Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                var first = connection.Session;
                if (how == "terminate") Assert.True(_f.Host.Sessions.Terminate(first.SessionId, DateTime.UtcNow));
                else Assert.Equal(1, _f.Host.Agent.RestartAgent(Bastion));
                await WaitEndedAsync(first);
                Assert.Equal(ErrorIds.BastionSessionTerminated, first.ClosedErrorId);

                Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                Assert.NotEqual(first.SessionId, connection.Session.SessionId);
                Assert.Equal(1, connection.Reopens);
                Assert.Equal(ErrorIds.BastionSessionTerminated, connection.LastEndErrorId);
                // Later uses go through the new session without reopening again.
                Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                Assert.Equal(1, connection.Reopens);
            }
            finally
            {
                connection.Dispose();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task ATunnelTheConnectionDoesNotOwn_IsNotReplaced_AndUseFailsWithDatabaseConnectionClosed()
        {
            var (connection, log, replaced) = await OpenAsync(owns: false);
            var first = connection.Session;
            try
            {
                Assert.False(connection.OwnsSession);
                Assert.True(_f.Host.Sessions.Terminate(first.SessionId, DateTime.UtcNow));
                await WaitEndedAsync(first);
                var sessionsBefore = _f.Host.Sessions.Snapshot().Count;
                var ex = await Assert.ThrowsAsync<BastionToolsException>(() => WhoAsync(connection, log));
                Assert.Equal(ErrorIds.DatabaseConnectionClosed, ex.ErrorId);
                Assert.Contains(first.SessionId, ex.Message);
                Assert.Contains("BastionSessionTerminated", ex.Message);
                Assert.Same(first, connection.Session);
                Assert.Equal(0, connection.Reopens);
                Assert.Empty(replaced);
                Assert.Equal(sessionsBefore, _f.Host.Sessions.Snapshot().Count);
                Assert.False(connection.WillReopen);
            }
            finally
            {
                connection.Dispose();
                await first.Engine.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task ATunnelStoppedByTheCaller_IsNotReplaced()
        {
            var (connection, log, _) = await OpenAsync();
            try
            {
                Assert.Equal("iam_app:3", await WhoAsync(connection, log));
                var first = connection.Session;
                await first.Engine.StopAsync();
                var ex = await Assert.ThrowsAsync<BastionToolsException>(() => WhoAsync(connection, log));
                Assert.Equal(ErrorIds.DatabaseConnectionClosed, ex.ErrorId);
                Assert.Contains("stopped", ex.Message);
                Assert.Same(first, connection.Session);
                Assert.False(connection.WillReopen);
            }
            finally
            {
                connection.Dispose();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task ConcurrentUsesAfterTheEnd_OpenOneNewSession()
        {
            var (connection, log, replaced) = await OpenAsync();
            try
            {
                var first = connection.Session;
                Assert.True(_f.Host.Sessions.Terminate(first.SessionId, DateTime.UtcNow));
                await WaitEndedAsync(first);
                var answers = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => WhoAsync(connection, log)));
                Assert.All(answers, a => Assert.Equal("iam_app:3", a));
                Assert.Single(replaced);
                Assert.Equal(1, connection.Reopens);
            }
            finally
            {
                connection.Dispose();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task Dispose_StopsAnOwnedTunnel()
        {
            var (connection, log, _) = await OpenAsync();
            Assert.Equal("iam_app:3", await WhoAsync(connection, log));
            var session = connection.Session;
            connection.Dispose();
            Assert.True(session.Engine.Completion.IsCompleted);
            Assert.True(_f.Host.Sessions.TryGet(session.SessionId, out var s));
            Assert.Equal(SandboxSessionState.Terminated, s.State);
        }
    }
}
