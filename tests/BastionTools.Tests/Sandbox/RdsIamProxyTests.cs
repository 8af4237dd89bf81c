using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Npgsql;
using Xunit;
using Xunit.Abstractions;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>One sandbox host with its PostgreSQL cluster and the RDS-IAM front, plus test roles, shared by the RDS-IAM tests.</summary>
    public sealed class RdsIamFixture : IAsyncLifetime
    {
        public const string IamUser = "iam_alice";
        public const string OtherIamUser = "iam_bob";
        public const string PlainUser = "plain_carol";
        public const string PlainPassword = "carol-Pw-7f3a9e21";
        /// <summary>A second name on the certificate (as a cluster's reader endpoint); psql sends it as SNI.</summary>
        public const string ReaderEndpoint = "demo.cluster-ro-c0ffee123456.us-west-2.rds.amazonaws.com";
        private readonly ConcurrentQueue<string> _log = new();
        private SandboxHost? _host;

        public SandboxHost Host => _host ?? throw new InvalidOperationException("The sandbox has not started.");
        public RdsIamProxy Proxy => Host.RdsProxy!;
        public PostgresCluster Postgres => Host.Postgres!;
        public TimeSpan StartupTime { get; private set; }
        public IReadOnlyList<string> Log => _log.ToArray();

        public async Task InitializeAsync()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            var sw = Stopwatch.StartNew();
            _host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions
            {
                StartPostgres = true,
                StartRdsProxy = true,
                RdsProxyOptions = new RdsIamProxyOptions { AdditionalNames = { ReaderEndpoint } },
                Log = _log.Enqueue,
            });
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
            await _host.StartAsync().WaitAsync(cts.Token);
            StartupTime = sw.Elapsed;
            await Postgres.ExecuteSqlAsync(
                "CREATE ROLE " + IamUser + " LOGIN; GRANT rds_iam TO " + IamUser + ";\n"
                + "CREATE ROLE " + OtherIamUser + " LOGIN; GRANT rds_iam TO " + OtherIamUser + ";\n"
                + "CREATE ROLE " + PlainUser + " LOGIN PASSWORD '" + PlainPassword + "';\n"
                + "GRANT SELECT ON " + PostgresCluster.SeedTable + " TO " + IamUser + ", " + PlainUser + ";\n",
                timeout: TimeSpan.FromSeconds(30));
        }

        public async Task DisposeAsync()
        {
            if (_host != null) await _host.DisposeAsync();
        }
    }

    [CollectionDefinition(Name)]
    public sealed class RdsIamCollection : ICollectionFixture<RdsIamFixture>
    {
        public const string Name = "RDS-IAM front";
    }

    /// <summary>
    /// The sandbox's RDS-IAM front: TLS with the sandbox CA, tokens from the product's <see cref="RdsAuthToken"/>, the
    /// RDS error text for every token failure, pass-through for password users, psql verify-full, and the agent double
    /// reaching the front for endpoint:5432.
    /// </summary>
    [Collection(RdsIamCollection.Name)]
    public sealed class RdsIamProxyTests
    {
        private const string Endpoint = RdsIamProxyOptions.DefaultEndpointName;
        private readonly RdsIamFixture _f;
        private readonly ITestOutputHelper _output;

        public RdsIamProxyTests(RdsIamFixture fixture, ITestOutputHelper output)
        {
            _f = fixture;
            _output = output;
        }

        private SandboxCredential Credential => _f.Host.World.Credentials[0];

        private string Token(string user, string host = Endpoint, int port = 5432, string? region = null, string? secret = null, DateTime? at = null) =>
            RdsAuthToken.Generate(host, port, user, region ?? _f.Host.World.Region,
                new AwsKeys(Credential.AccessKeyId, secret ?? Credential.SecretAccessKey, Credential.SessionToken), at ?? _f.Host.Clock.UtcNow);

        /// <summary>What the client-side certificate check saw (the chain must end in the sandbox CA; the name must be the endpoint).</summary>
        private sealed class CertificateCheck
        {
            public int Calls;
            public bool ChainOk;
            public bool NameOk;
            public string? Subject;
        }

        private NpgsqlDataSource DataSource(string user, string password, CertificateCheck check, SslMode sslMode = SslMode.Require, int port = 0)
        {
            var builder = new NpgsqlDataSourceBuilder(new NpgsqlConnectionStringBuilder
            {
                Host = "127.0.0.1",
                Port = port == 0 ? _f.Proxy.Port : port,
                Username = user,
                Password = password,
                Database = _f.Postgres.Database,
                SslMode = sslMode,
                Pooling = false,
                Timeout = 15,
                CommandTimeout = 20,
            }.ConnectionString);
            // 127.0.0.1 is not the name in the certificate (clients reach RDS through a tunnel): check chain and name by hand.
            builder.UseUserCertificateValidationCallback((_, certificate, _, _) =>
            {
                Interlocked.Increment(ref check.Calls);
                if (certificate == null) return false;
                using var cert = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
                check.Subject = cert.Subject;
                check.ChainOk = SandboxCertificates.ChainsTo(cert, _f.Proxy.Certificates.CaCertificate, out var detail);
                check.NameOk = cert.MatchesHostname(Endpoint);
                if (!check.ChainOk) _output.WriteLine("chain: " + detail);
                return check.ChainOk && check.NameOk;
            });
            return builder.Build();
        }

        private async Task<object?> QueryAsync(string user, string password, string sql, CertificateCheck? check = null, int port = 0)
        {
            check ??= new CertificateCheck();
            await using var dataSource = DataSource(user, password, check, port: port);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await using var connection = await dataSource.OpenConnectionAsync(cts.Token);
            await using var command = new NpgsqlCommand(sql, connection);
            return await command.ExecuteScalarAsync(cts.Token);
        }

        private async Task<PostgresException> FailsAsync(string user, string password, SslMode sslMode = SslMode.Require)
        {
            await using var dataSource = DataSource(user, password, new CertificateCheck(), sslMode);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            return await Assert.ThrowsAsync<PostgresException>(async () =>
            {
                await using var connection = await dataSource.OpenConnectionAsync(cts.Token);
            });
        }

        private RdsIamAttempt LastAttempt(string user) => _f.Proxy.Attempts.Last(a => a.User == user);

        [Fact(Timeout = 60_000)]
        public async Task Aurora_TokensForEveryClusterEndpoint_AreAuthorizedAgainstTheClusterResourceId()
        {
            var aurora = _f.Proxy.Aurora!;
            // Without SNI (a client through a tunnel), a token signed for any of the cluster's names is taken as meant for it.
            foreach (var name in aurora.Names)
            {
                Assert.Equal(RdsIamFixture.IamUser, await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser, host: name), "SELECT current_user"));
                Assert.Equal(("127.0.0.1", _f.Proxy.Port), _f.Host.World.ResolveEndpoint(name, 5432));
            }

            // rds-db:connect on the instance's DbiResourceId does not cover the cluster's endpoints, and the reverse.
            var saved = Credential.Policy;
            try
            {
                Credential.Policy = SandboxIamPolicy.Parse("{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"rds-db:connect\",\"Resource\":\"arn:aws:rds-db:us-west-2:123456789012:dbuser:"
                    + _f.Proxy.DbiResourceId + "/" + RdsIamFixture.IamUser + "\"}]}");
                Assert.Equal(RdsIamFixture.IamUser, await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), "SELECT current_user"));
                var refused = await FailsAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser, host: aurora.WriterEndpoint));
                Assert.Equal("28P01", refused.SqlState);
                Assert.Contains("dbuser:" + aurora.ClusterResourceId + "/" + RdsIamFixture.IamUser, LastAttempt(RdsIamFixture.IamUser).Reason, StringComparison.Ordinal);

                Credential.Policy = SandboxIamPolicy.Parse("{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"rds-db:connect\",\"Resource\":\"arn:aws:rds-db:us-west-2:123456789012:dbuser:"
                    + aurora.ClusterResourceId + "/" + RdsIamFixture.IamUser + "\"}]}");
                Assert.Equal(RdsIamFixture.IamUser, await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser, host: aurora.ReaderEndpoint), "SELECT current_user"));
                Assert.Equal("28P01", (await FailsAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser))).SqlState);
            }
            finally
            {
                Credential.Policy = saved;
            }
        }

        [Fact(Timeout = 60_000)]
        public async Task ValidToken_ForAnIamMember_Queries_OverTls_WithTheSandboxCaCertificate()
        {
            var check = new CertificateCheck();
            var sw = Stopwatch.StartNew();
            var result = await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser),
                "SELECT current_user || ':' || count(*)::text FROM " + PostgresCluster.SeedTable, check);
            _output.WriteLine("connect + query through the front: " + sw.ElapsedMilliseconds.ToString(CultureInfo.InvariantCulture) + " ms; sandbox start " + _f.StartupTime.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms");
            Assert.Equal(RdsIamFixture.IamUser + ":3", result);
            Assert.Equal(1, check.Calls);
            Assert.True(check.ChainOk);
            Assert.True(check.NameOk);
            Assert.Contains(Endpoint, check.Subject, StringComparison.Ordinal);
            var attempt = LastAttempt(RdsIamFixture.IamUser);
            Assert.True(attempt.Succeeded);
            Assert.True(attempt.IamUser);
        }

        public static IEnumerable<object[]> TokenFailures() => new[]
        {
            new object[] { "expired", "expired at" },
            new object[] { "tampered", "signature does not match" },
            new object[] { "other-user", "the token is for DBUser \"iam_bob\"" },
            new object[] { "other-host", "signed for other.c0ffee123456.us-west-2.rds.amazonaws.com:5432" },
            new object[] { "other-port", "signed for " + Endpoint + ":5433" },
            new object[] { "wrong-region", "region us-east-1" },
            new object[] { "wrong-secret", "signature does not match" },
            new object[] { "future", "more than 5 minutes" },
            new object[] { "not-a-token", "not a presigned token" },
            new object[] { "not-member", "not a member of rds_iam" },
        };

        [Theory(Timeout = 60_000)]
        [MemberData(nameof(TokenFailures))]
        public async Task EveryTokenFailure_ReadsLikeRds_PamAuthenticationFailed_AndLogsThePreciseReason(string kind, string reasonFragment)
        {
            var user = kind == "not-member" ? RdsIamFixture.PlainUser : RdsIamFixture.IamUser;
            string token = kind switch
            {
                "expired" => Token(user),
                "tampered" => Tamper(Token(user)),
                "other-user" => Token(RdsIamFixture.OtherIamUser),
                "other-host" => Token(user, host: "other.c0ffee123456.us-west-2.rds.amazonaws.com"),
                "other-port" => Token(user, port: 5433),
                "wrong-region" => Token(user, region: "us-east-1"),
                "wrong-secret" => Token(user, secret: "not/the/sandbox/secret/000000000000000000"),
                "future" => Token(user, at: _f.Host.Clock.UtcNow.AddMinutes(10)),
                "not-a-token" => "hunter2",
                "not-member" => Token(user),
                _ => throw new ArgumentOutOfRangeException(nameof(kind)),
            };
            if (kind == "expired") _f.Host.Clock.Advance(TimeSpan.FromMinutes(16));
            PostgresException error;
            try
            {
                error = await FailsAsync(user, token);
            }
            finally
            {
                if (kind == "expired") _f.Host.Clock.Advance(TimeSpan.FromMinutes(-16));
            }
            Assert.Equal("28P01", error.SqlState);
            Assert.Equal("FATAL", error.Severity);
            Assert.Equal("PAM authentication failed for user \"" + user + "\"", error.MessageText);
            var attempt = LastAttempt(user);
            Assert.False(attempt.Succeeded);
            Assert.Contains(reasonFragment, attempt.Reason, StringComparison.Ordinal);
            // The log says why, never what the token was.
            var signature = token.Contains("X-Amz-Signature=", StringComparison.Ordinal) ? token.Substring(token.LastIndexOf('=') + 1) : token;
            Assert.DoesNotContain(_f.Log, line => line.Contains(signature, StringComparison.Ordinal));
            Assert.Contains(_f.Log, line => line.Contains(reasonFragment, StringComparison.Ordinal));
        }

        private static string Tamper(string token)
        {
            var i = token.LastIndexOf('=') + 1;
            var c = token[i] == 'a' ? 'b' : 'a';
            return token.Substring(0, i) + c + token.Substring(i + 1);
        }

        [Fact(Timeout = 60_000)]
        public async Task AToken_FromTheLastSecondsOfItsLife_StillWorks_AndExpiresAfter900Seconds()
        {
            var signedAt = _f.Host.Clock.UtcNow.AddSeconds(-890);
            Assert.Equal(RdsIamFixture.IamUser, await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser, at: signedAt), "SELECT current_user"));
            var error = await FailsAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser, at: signedAt.AddSeconds(-20)));
            Assert.Equal("PAM authentication failed for user \"" + RdsIamFixture.IamUser + "\"", error.MessageText);
        }

        [Fact(Timeout = 60_000)]
        public async Task AStartupWithoutTls_IsRejectedAsRdsWithForceSsl()
        {
            var error = await FailsAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), SslMode.Disable);
            Assert.Equal("28000", error.SqlState);
            Assert.Equal("FATAL", error.Severity);
            Assert.StartsWith("no pg_hba.conf entry for host \"127.0.0.1\", user \"" + RdsIamFixture.IamUser + "\", database \"" + _f.Postgres.Database + "\", ", error.MessageText, StringComparison.Ordinal);
        }

        [Fact(Timeout = 60_000)]
        public async Task ANonIamUser_WithItsRealPassword_PassesThrough_AndAWrongPasswordFailsAsPostgresSaysIt()
        {
            Assert.Equal(RdsIamFixture.PlainUser + ":3", await QueryAsync(RdsIamFixture.PlainUser, RdsIamFixture.PlainPassword,
                "SELECT current_user || ':' || count(*)::text FROM " + PostgresCluster.SeedTable));
            Assert.True(LastAttempt(RdsIamFixture.PlainUser).Succeeded);
            Assert.False(LastAttempt(RdsIamFixture.PlainUser).IamUser);

            var error = await FailsAsync(RdsIamFixture.PlainUser, "not-the-password");
            Assert.Equal("28P01", error.SqlState);
            Assert.Equal("password authentication failed for user \"" + RdsIamFixture.PlainUser + "\"", error.MessageText);

            // The master user too (as on RDS, where the master user keeps its password).
            Assert.Equal(_f.Postgres.SuperUser, await QueryAsync(_f.Postgres.SuperUser, _f.Postgres.SuperPassword, "SELECT current_user"));
        }

        [Fact(Timeout = 60_000)]
        public async Task AnIamMember_CannotUseAPassword_AndTheBackendsOwnErrorsAreRelayed()
        {
            var error = await FailsAsync(RdsIamFixture.OtherIamUser, "some-password");
            Assert.Equal("PAM authentication failed for user \"" + RdsIamFixture.OtherIamUser + "\"", error.MessageText);

            // Authenticated, but the database does not exist: PostgreSQL's own FATAL reaches the client unchanged.
            var check = new CertificateCheck();
            var builder = new NpgsqlConnectionStringBuilder
            {
                Host = "127.0.0.1", Port = _f.Proxy.Port, Username = RdsIamFixture.IamUser, Password = Token(RdsIamFixture.IamUser),
                Database = "no_such_db", SslMode = SslMode.Require, Pooling = false, Timeout = 15,
            };
            var dsb = new NpgsqlDataSourceBuilder(builder.ConnectionString);
            dsb.UseUserCertificateValidationCallback((_, _, _, _) => { check.Calls++; return true; });
            await using var dataSource = dsb.Build();
            var missing = await Assert.ThrowsAsync<PostgresException>(async () => { await using var c = await dataSource.OpenConnectionAsync(); });
            Assert.Equal("3D000", missing.SqlState);
            Assert.Equal("database \"no_such_db\" does not exist", missing.MessageText);
        }

        [Fact(Timeout = 60_000)]
        public async Task GrantingRdsIam_TakesEffect_AfterTheCacheIsInvalidated()
        {
            await _f.Postgres.ExecuteSqlAsync("DROP ROLE IF EXISTS iam_dave; CREATE ROLE iam_dave LOGIN PASSWORD 'dave-Pw-1234';", timeout: TimeSpan.FromSeconds(20));
            Assert.Equal("iam_dave", await QueryAsync("iam_dave", "dave-Pw-1234", "SELECT current_user"));
            await _f.Postgres.ExecuteSqlAsync("GRANT rds_iam TO iam_dave;", timeout: TimeSpan.FromSeconds(20));
            _f.Proxy.InvalidateMembershipCache();
            var error = await FailsAsync("iam_dave", "dave-Pw-1234");
            Assert.Equal("PAM authentication failed for user \"iam_dave\"", error.MessageText);
            Assert.Equal("iam_dave", await QueryAsync("iam_dave", Token("iam_dave"), "SELECT current_user"));
        }

        [Fact(Timeout = 90_000)]
        public async Task ManyConcurrentConnections_AndACancelRequest_AreRelayed()
        {
            var sw = Stopwatch.StartNew();
            var tasks = Enumerable.Range(1, 24).Select(i => QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser),
                "SELECT name FROM " + PostgresCluster.SeedTable + " WHERE id = " + (((i - 1) % 3) + 1).ToString(CultureInfo.InvariantCulture))).ToList();
            var names = await Task.WhenAll(tasks);
            _output.WriteLine("24 concurrent connections through the front: " + sw.ElapsedMilliseconds.ToString(CultureInfo.InvariantCulture) + " ms");
            Assert.All(names, n => Assert.Contains((string)n!, new[] { "alpha", "bravo", "charlie" }));

            // A large result both ways through TLS and the relay.
            Assert.Equal(20000 * 32, ((string)(await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 20000) g"))!).Length);

            var cancelsBefore = _f.Proxy.CancelRequests;
            await using var dataSource = DataSource(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), new CertificateCheck());
            await using var connection = await dataSource.OpenConnectionAsync();
            await using var command = new NpgsqlCommand("SELECT pg_sleep(30)", connection);
            var run = command.ExecuteNonQueryAsync();
            await Task.Delay(300);
            sw.Restart();
            command.Cancel();
            // Npgsql reports a cancelled command as OperationCanceledException wrapping the server's 57014.
            var cancelled = await Assert.ThrowsAsync<OperationCanceledException>(() => run.WaitAsync(TimeSpan.FromSeconds(20)));
            Assert.Equal("57014", Assert.IsType<PostgresException>(cancelled.InnerException).SqlState);
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), "the cancel took " + sw.Elapsed);
            Assert.True(_f.Proxy.CancelRequests > cancelsBefore);
        }

        private async Task<(int ExitCode, string Stdout, string Stderr)> PsqlAsync(string user, string password, string sql, string host = Endpoint)
        {
            var psi = new ProcessStartInfo(_f.Postgres.PsqlPath)
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("PG", StringComparison.Ordinal)).ToList()) psi.Environment.Remove(key);
            psi.Environment["PGPASSWORD"] = password;
            psi.Environment["PGCONNECT_TIMEOUT"] = "10";
            psi.Environment["LC_ALL"] = "C";
            foreach (var a in new[]
            {
                "-X", "-A", "-t", "-w", "-c", sql,
                "host=" + host + " hostaddr=127.0.0.1 port=" + _f.Proxy.Port.ToString(CultureInfo.InvariantCulture)
                    + " user=" + user + " dbname=" + _f.Postgres.Database + " sslmode=verify-full sslrootcert=" + _f.Proxy.CaBundlePath,
            })
            {
                psi.ArgumentList.Add(a);
            }
            using var process = Process.Start(psi)!;
            process.StandardInput.Close();
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            try
            {
                await process.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException("psql did not finish within 30 s");
            }
            return (process.ExitCode, (await stdout).Trim(), (await stderr).Trim());
        }

        [Fact(Timeout = 60_000)]
        public async Task Psql_VerifyFull_WithTheSandboxCa_AndAToken_Works()
        {
            var (exit, stdout, stderr) = await PsqlAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), "SELECT current_user || ':' || count(*) FROM " + PostgresCluster.SeedTable);
            Assert.True(exit == 0, "psql failed: " + stderr);
            Assert.Equal(RdsIamFixture.IamUser + ":3", stdout);

            (exit, _, stderr) = await PsqlAsync(RdsIamFixture.IamUser, Tamper(Token(RdsIamFixture.IamUser)), "SELECT 1");
            Assert.NotEqual(0, exit);
            Assert.Contains("FATAL:  PAM authentication failed for user \"" + RdsIamFixture.IamUser + "\"", stderr, StringComparison.Ordinal);
        }

        [Fact(Timeout = 60_000)]
        public async Task TheEndpointTheClientMeant_IsItsSni_WhenItIsOneOfTheFrontsNames()
        {
            // psql sends the reader name as SNI: a token for the reader name works there, the writer's token does not.
            var (exit, stdout, stderr) = await PsqlAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser, host: RdsIamFixture.ReaderEndpoint), "SELECT current_user", RdsIamFixture.ReaderEndpoint);
            Assert.True(exit == 0, "psql failed: " + stderr);
            Assert.Equal(RdsIamFixture.IamUser, stdout);
            (exit, _, stderr) = await PsqlAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), "SELECT 1", RdsIamFixture.ReaderEndpoint);
            Assert.NotEqual(0, exit);
            Assert.Contains("PAM authentication failed for user \"" + RdsIamFixture.IamUser + "\"", stderr, StringComparison.Ordinal);
            Assert.Contains("but the client connected to " + RdsIamFixture.ReaderEndpoint + ":5432", LastAttempt(RdsIamFixture.IamUser).Reason, StringComparison.Ordinal);
            // Both names lead to the front through the agent double's host map.
            Assert.Equal(("127.0.0.1", _f.Proxy.Port), _f.Host.World.ResolveEndpoint(RdsIamFixture.ReaderEndpoint, 5432));
        }

        [Fact]
        public void TheWorldFile_HostMap_TakesHostPortEntries()
        {
            var world = SandboxWorld.Load("{\"hostMap\":{\"db.corp.example\":\"127.0.0.1\",\"pg.corp.example:5432\":\"127.0.0.1:15432\"}}");
            Assert.Equal(("127.0.0.1", 15432), world.ResolveEndpoint("pg.corp.example", 5432));
            Assert.Equal(("127.0.0.1", 5433), world.ResolveEndpoint("db.corp.example", 5433));
            Assert.Null(world.ResolveEndpoint("pg.corp.example", 5433));
            Assert.Equal("127.0.0.1:15432", world.HostPortMap["pg.corp.example:5432"]);
            Assert.True(world.UnmapHostPort("pg.corp.example", 5432));
            Assert.Null(world.ResolveEndpoint("pg.corp.example", 5432));
            Assert.Throws<InvalidDataException>(() => SandboxWorld.Load("{\"hostMap\":{\"pg.corp.example:5432\":\"127.0.0.1\"}}"));
        }

        [Theory(Timeout = 60_000)]
        [InlineData(RdsCertificateChoice.UntrustedCa, "certificate verify failed")]
        [InlineData(RdsCertificateChoice.WrongHost, "does not match host name")]
        public async Task Psql_VerifyFull_Refuses_ACertificateFromAnotherCa_OrForAnotherHost(RdsCertificateChoice choice, string expected)
        {
            _f.Proxy.Certificate = choice;
            try
            {
                var (exit, _, stderr) = await PsqlAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), "SELECT 1");
                _output.WriteLine(stderr);
                Assert.NotEqual(0, exit);
                Assert.Contains(expected, stderr, StringComparison.Ordinal);

                // The manual check a tunnel client does (chain to the bundle + the endpoint's name) refuses it too.
                var check = new CertificateCheck();
                await using var dataSource = DataSource(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), check);
                await Assert.ThrowsAnyAsync<Exception>(async () => { await using var c = await dataSource.OpenConnectionAsync(); });
                Assert.Equal(1, check.Calls);
                Assert.Equal(choice == RdsCertificateChoice.WrongHost, check.ChainOk);
                Assert.Equal(choice == RdsCertificateChoice.UntrustedCa, check.NameOk);
            }
            finally
            {
                _f.Proxy.Certificate = RdsCertificateChoice.Valid;
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task APortForwardingSession_ToTheEndpointOn5432_ReachesTheFront_ThroughTheAgentDouble()
        {
            var resolved = _f.Host.World.ResolveEndpoint(Endpoint, 5432);
            Assert.Equal(("127.0.0.1", _f.Proxy.Port), resolved);
            Assert.Equal(("127.0.0.1", 6543), _f.Host.World.ResolveEndpoint(Endpoint, 6543));

            var c = Credential;
            using var api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), _f.Host.World.Region, _f.Host.SsmEndpoint.ToString());
            var session = new PortForwardingSession(api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Endpoint, RemotePort = 5432 }, new DataChannelOptions());
            using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
            {
                await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), cts.Token);
            }
            try
            {
                var relayedBefore = _f.Proxy.RelayedConnections;
                var check = new CertificateCheck();
                Assert.Equal(RdsIamFixture.IamUser, await QueryAsync(RdsIamFixture.IamUser, Token(RdsIamFixture.IamUser), "SELECT current_user", check, session.LocalEndPoint!.Port));
                Assert.True(check.ChainOk && check.NameOk);
                Assert.True(_f.Proxy.RelayedConnections > relayedBefore);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact]
        public void TheSandboxJson_DescribesTheFront_AndTheCaBundleIsThePem()
        {
            var json = JsonNode.Parse(_f.Host.DescribeJson())!;
            var rds = json["rds"]!;
            Assert.Equal(Endpoint, (string?)rds["endpoint"]);
            Assert.Equal(5432, (int)rds["port"]!);
            Assert.Equal(_f.Proxy.Port, (int)rds["proxyPort"]!);
            Assert.Equal("rds_iam", (string?)rds["iamRole"]);
            var bundle = (string)rds["caBundle"]!;
            Assert.Equal(bundle, (string?)json["rdsCaBundle"]);
            var pem = File.ReadAllText(bundle);
            Assert.StartsWith("-----BEGIN CERTIFICATE-----", pem, StringComparison.Ordinal);
            using var ca = X509Certificate2.CreateFromPem(pem);
            Assert.Equal(_f.Proxy.Certificates.CaCertificate.Thumbprint, ca.Thumbprint);
            var basic = ca.Extensions.OfType<X509BasicConstraintsExtension>().Single();
            Assert.True(basic.CertificateAuthority);
            Assert.True(SandboxCertificates.ChainsTo(_f.Proxy.Certificates.ServerCertificate, ca, out _));
            Assert.False(SandboxCertificates.ChainsTo(_f.Proxy.Certificates.OtherCaServerCertificate, ca, out _));
            Assert.True(_f.Proxy.Certificates.OtherCaServerCertificate.MatchesHostname(Endpoint));
            Assert.False(_f.Proxy.Certificates.WrongHostCertificate.MatchesHostname(Endpoint));
        }
    }
}
