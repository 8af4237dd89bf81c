using System;
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
    /// <summary>A sandbox with PostgreSQL, the RDS-IAM front, and one tunnel to it through the agent double.</summary>
    public sealed class IamFixture : IAsyncLifetime
    {
        public SandboxHost Host { get; private set; } = null!;
        internal AwsApi Api { get; private set; } = null!;
        internal PortForwardingSession Tunnel { get; private set; } = null!;
        public RdsIamProxy Proxy => Host.RdsProxy!;

        public async Task InitializeAsync()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            Host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions { StartPostgres = true, StartRdsProxy = true });
            await Host.StartAsync();
            var c = Host.World.Credentials[0];
            Api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), Host.World.Region, Host.SsmEndpoint.ToString());
            Tunnel = new PortForwardingSession(Api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Proxy.EndpointName, RemotePort = 5432 }, new DataChannelOptions());
            await Tunnel.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None);
            await Host.Postgres!.ExecuteSqlAsync("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iam_app') THEN CREATE ROLE iam_app LOGIN; END IF; END $$; GRANT rds_iam TO iam_app; GRANT SELECT ON seed_items TO iam_app;");
        }

        public async Task DisposeAsync()
        {
            await Tunnel.StopAsync();
            Api.Dispose();
            await Host.DisposeAsync();
        }
    }

    [CollectionDefinition("iam")]
    public sealed class IamCollection : ICollectionFixture<IamFixture>
    {
    }

    /// <summary>The product's IAM data source (real Npgsql, real TLS, real tokens) through the tunnel to the RDS-IAM double.</summary>
    [Collection("iam")]
    public sealed class IamDataSourceTests
    {
        private readonly IamFixture _f;

        public IamDataSourceTests(IamFixture fixture) => _f = fixture;

        private IamDataSource Source(string user = "iam_app", RdsSslMode mode = RdsSslMode.VerifyFull, Func<DateTime>? clock = null, Redactor? redactor = null)
        {
            var c = _f.Host.World.Credentials[0];
            return new IamDataSource(new IamDataSourceOptions
            {
                Endpoint = _f.Proxy.EndpointName,
                EndpointPort = 5432,
                ConnectPort = _f.Tunnel.LocalEndPoint!.Port,
                UserName = user,
                Database = _f.Host.Postgres!.Database!,
                Region = _f.Host.World.Region,
                SslMode = mode,
                RootCertificatePath = _f.Proxy.CaBundlePath,
            }, () => new AwsKeys(c.AccessKeyId, c.SecretAccessKey, c.SessionToken), redactor ?? new Redactor(), clock);
        }

        [Fact(Timeout = 60_000)]
        public async Task ConnectsWithATokenOverVerifiedTls_AndQueries()
        {
            await using var source = Source();
            await using var conn = await source.OpenAsync(CancellationToken.None);
            await using var cmd = new NpgsqlCommand("select current_user || ':' || count(*) from seed_items", conn);
            Assert.Equal("iam_app:3", (string?)await cmd.ExecuteScalarAsync());
            Assert.Null(source.Validator.LastFailure);
            Assert.Equal(1, source.TokensIssued);
        }

        [Fact(Timeout = 60_000)]
        public async Task APoolThatOutlivesTheTokenLifetime_StillOpensNewConnections()
        {
            // One clock for the signer and the double: 16 minutes pass between the first and the second connection.
            var clock = _f.Host.World.Clock;
            await using var source = Source(clock: () => clock.UtcNow);
            await using var first = await source.OpenAsync(CancellationToken.None);
            var firstToken = source.TokensIssued;
            try
            {
                clock.Advance(TimeSpan.FromMinutes(16));
                await using var second = await source.OpenAsync(CancellationToken.None); // a new physical connection: the first is busy
                await using var cmd = new NpgsqlCommand("select 1", second);
                Assert.Equal(1, (int)(await cmd.ExecuteScalarAsync())!);
                Assert.True(source.TokensIssued > firstToken, "no new token was signed for the new connection");

                // The double does enforce expiry: a token from before the jump is refused now.
                var c = _f.Host.World.Credentials[0];
                var stale = RdsAuthToken.Generate(_f.Proxy.EndpointName, 5432, "iam_app", _f.Host.World.Region, new AwsKeys(c.AccessKeyId, c.SecretAccessKey, null), clock.UtcNow.AddMinutes(-16));
                var csb = new NpgsqlConnectionStringBuilder { Host = "127.0.0.1", Port = _f.Tunnel.LocalEndPoint!.Port, Username = "iam_app", Password = stale, Database = _f.Host.Postgres!.Database, SslMode = SslMode.Require, Pooling = false };
                var builder = new NpgsqlDataSourceBuilder(csb.ConnectionString);
                builder.UseUserCertificateValidationCallback((_, _, _, _) => true);
                await using var raw = builder.Build();
                var ex = await Assert.ThrowsAsync<PostgresException>(async () => await raw.OpenConnectionAsync());
                Assert.Equal("28P01", ex.SqlState);
                Assert.Equal("PAM authentication failed for user \"iam_app\"", ex.MessageText);
            }
            finally
            {
                clock.Advance(TimeSpan.FromMinutes(-16));
            }
        }

        [Theory(Timeout = 60_000)]
        [InlineData(RdsCertificateChoice.UntrustedCa, "does not chain to a root in the trust bundle")]
        [InlineData(RdsCertificateChoice.WrongHost, "does not name")]
        public async Task AServerCertificateThatIsNotTheDatabases_IsRefusedUnderTheDefaultMode(RdsCertificateChoice served, string reason)
        {
            _f.Proxy.Certificate = served;
            try
            {
                var redactor = new Redactor();
                await using var source = Source(redactor: redactor);
                var ex = await Assert.ThrowsAsync<BastionToolsException>(() => source.OpenAsync(CancellationToken.None));
                Assert.Equal(ErrorIds.DatabaseTlsFailed, ex.ErrorId);
                Assert.Contains(reason, ex.Message);
                // The password (token) is only sent after TLS is established: none was signed for a refused server.
                Assert.Equal(0, source.TokensIssued);
            }
            finally
            {
                _f.Proxy.Certificate = RdsCertificateChoice.Valid;
            }
        }

        [Fact(Timeout = 60_000)]
        public async Task VerifyCA_AcceptsAnotherNameFromTheTrustedCa_ButNotAnotherCa()
        {
            _f.Proxy.Certificate = RdsCertificateChoice.WrongHost;
            try
            {
                await using (var source = Source(mode: RdsSslMode.VerifyCA))
                await using (var conn = await source.OpenAsync(CancellationToken.None))
                {
                    Assert.Equal(System.Data.ConnectionState.Open, conn.State);
                }
                _f.Proxy.Certificate = RdsCertificateChoice.UntrustedCa;
                await using var other = Source(mode: RdsSslMode.VerifyCA);
                var ex = await Assert.ThrowsAsync<BastionToolsException>(() => other.OpenAsync(CancellationToken.None));
                Assert.Equal(ErrorIds.DatabaseTlsFailed, ex.ErrorId);
            }
            finally
            {
                _f.Proxy.Certificate = RdsCertificateChoice.Valid;
            }
        }

        [Fact(Timeout = 60_000)]
        public async Task LoginFailure_ReadsLikeRds_AndTheErrorHoldsNoToken()
        {
            var redactor = new Redactor();
            await using var source = Source(user: "nobody_here", redactor: redactor);
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => source.OpenAsync(CancellationToken.None));
            Assert.Equal(ErrorIds.DatabaseLoginFailed, ex.ErrorId);
            Assert.Contains("PAM authentication failed for user \"nobody_here\"", ex.Message);
            Assert.DoesNotContain("X-Amz-Signature", ex.Message);
            Assert.True(source.TokensIssued >= 1);
        }
    }
}
