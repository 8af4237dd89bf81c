using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Sandbox;
using Npgsql;
using Xunit;
using Xunit.Abstractions;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>One cluster for the whole suite's read-only Postgres tests (started once, stopped at the end).</summary>
    public sealed class PostgresClusterFixture : IAsyncLifetime
    {
        private PostgresCluster? _cluster;

        public PostgresCluster Cluster => _cluster ?? throw new InvalidOperationException("The cluster has not started.");

        public async Task InitializeAsync()
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(90));
            _cluster = await PostgresCluster.StartAsync(new PostgresClusterOptions(), cts.Token);
        }

        public async Task DisposeAsync()
        {
            if (_cluster != null) await _cluster.StopAsync();
        }
    }

    [CollectionDefinition(Name)]
    public sealed class PostgresClusterCollection : ICollectionFixture<PostgresClusterFixture>
    {
        public const string Name = "Postgres cluster";
    }

    internal static class PostgresTestSupport
    {
        /// <summary>Unpooled, so a test's connections end with it (and a stopped cluster leaves no broken pool).</summary>
        public static string Unpooled(string connectionString) => connectionString + ";Pooling=false";

        public static async Task<NpgsqlConnection> OpenAsync(string connectionString)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            var connection = new NpgsqlConnection(Unpooled(connectionString));
            try
            {
                await connection.OpenAsync(cts.Token);
                return connection;
            }
            catch
            {
                await connection.DisposeAsync();
                throw;
            }
        }

        public static async Task<List<object?[]>> QueryAsync(NpgsqlConnection connection, string sql)
        {
            await using var command = new NpgsqlCommand(sql, connection) { CommandTimeout = 20 };
            await using var reader = await command.ExecuteReaderAsync();
            var rows = new List<object?[]>();
            while (await reader.ReadAsync())
            {
                var row = new object?[reader.FieldCount];
                for (var i = 0; i < row.Length; i++) row[i] = reader.IsDBNull(i) ? null : reader.GetValue(i);
                rows.Add(row);
            }
            return rows;
        }

        /// <summary>
        /// A stopped cluster serves no more: nothing accepts connections on its port, or what accepts there now is not it
        /// (a login with its own random password fails). Test classes run in parallel, and another test's listener may
        /// be given the freed port at once; a cluster that still runs passes neither check.
        /// </summary>
        public static async Task<bool> NoLongerServedAsync(int port, string connectionString)
        {
            if (!await PostgresCluster.TcpOpenAsync(port, TimeSpan.FromSeconds(2))) return true;
            try
            {
                await using var connection = await OpenAsync(connectionString);
                return false;
            }
            catch (Exception ex) when (ex is NpgsqlException || ex is IOException || ex is TimeoutException || ex is OperationCanceledException)
            {
                return true;
            }
        }

        /// <summary>Polls (bounded) until the cluster serves no more (<see cref="NoLongerServedAsync"/>) and the directory is gone.</summary>
        public static async Task<bool> WaitGoneAsync(int port, string connectionString, string directory, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            while (true)
            {
                var open = !await NoLongerServedAsync(port, connectionString);
                if (!open && !Directory.Exists(directory)) return true;
                if (DateTime.UtcNow >= deadline) return false;
                await Task.Delay(100);
            }
        }

        public static async Task<(int ExitCode, string Stdout, string Stderr)> RunAsync(ProcessStartInfo psi, TimeSpan timeout)
        {
            psi.RedirectStandardInput = true;
            psi.RedirectStandardOutput = true;
            psi.RedirectStandardError = true;
            psi.UseShellExecute = false;
            using var process = Process.Start(psi)!;
            process.StandardInput.Close();
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var cts = new CancellationTokenSource(timeout);
            try
            {
                await process.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException(psi.FileName + " did not finish in " + timeout);
            }
            return (process.ExitCode, await stdout, await stderr);
        }

        public static bool IsRoot()
        {
            var r = RunAsync(new ProcessStartInfo("id", "-u"), TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
            return r.Stdout.Trim() == "0";
        }
    }

    /// <summary>Tests that share the collection's cluster (read-only use).</summary>
    [Collection(PostgresClusterCollection.Name)]
    public class PostgresClusterTests
    {
        private readonly PostgresCluster _cluster;

        public PostgresClusterTests(PostgresClusterFixture fixture)
        {
            _cluster = fixture.Cluster;
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Npgsql_OverTcpWithThePassword_ReadsTheSeededTable()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_cluster.ConnectionString());
            var who = (await PostgresTestSupport.QueryAsync(connection,
                "SELECT host(inet_server_addr()), current_user, current_database(), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")).Single();
            Assert.Equal("127.0.0.1", who[0]);
            Assert.Equal(_cluster.SuperUser, who[1]);
            Assert.Equal("appdb", who[2]);
            Assert.Equal(true, who[3]);

            var rows = await PostgresTestSupport.QueryAsync(connection, "SELECT id, name, port FROM " + PostgresCluster.SeedTable + " ORDER BY id");
            Assert.Equal(PostgresCluster.SeedRows.Select(r => $"{r.Id}:{r.Name}:{r.Port}"), rows.Select(r => $"{r[0]}:{r[1]}:{r[2]}"));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AppUser_IsNotASuperuser_OwnsTheSeed_AndCannotCreateDatabases()
        {
            Assert.NotNull(_cluster.AppUser);
            await using var connection = await PostgresTestSupport.OpenAsync(_cluster.ConnectionString(user: _cluster.AppUser));
            var row = (await PostgresTestSupport.QueryAsync(connection,
                "SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), (SELECT tableowner FROM pg_tables WHERE tablename = '" + PostgresCluster.SeedTable + "'), (SELECT count(*) FROM " + PostgresCluster.SeedTable + ")")).Single();
            Assert.Equal(_cluster.AppUser, row[0]);
            Assert.Equal(false, row[1]);
            Assert.Equal(_cluster.AppUser, row[2]);
            Assert.Equal(3L, row[3]);

            var denied = await Assert.ThrowsAsync<PostgresException>(() => PostgresTestSupport.QueryAsync(connection, "CREATE DATABASE not_allowed"));
            Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, denied.SqlState);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task WrongPassword_FailsWith28P01()
        {
            var wrong = await Assert.ThrowsAsync<PostgresException>(() => PostgresTestSupport.OpenAsync(_cluster.ConnectionString(password: "not-the-password")));
            Assert.Equal("28P01", wrong.SqlState);
            var wrongApp = await Assert.ThrowsAsync<PostgresException>(() => PostgresTestSupport.OpenAsync(_cluster.ConnectionString(user: _cluster.AppUser, password: _cluster.SuperPassword)));
            Assert.Equal(PostgresErrorCodes.InvalidPassword, wrongApp.SqlState);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Configuration_ScramOnLoopbackOnly_AndTestSpeedSettings()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_cluster.ConnectionString());
            var settings = (await PostgresTestSupport.QueryAsync(connection,
                "SELECT current_setting('listen_addresses'), current_setting('fsync'), current_setting('password_encryption'), current_setting('unix_socket_directories'), current_setting('server_version_num')::int, current_setting('data_directory')")).Single();
            Assert.Equal("127.0.0.1", settings[0]);
            Assert.Equal("off", settings[1]);
            Assert.Equal("scram-sha-256", settings[2]);
            Assert.Equal(_cluster.SocketDirectory ?? "", settings[3]);
            Assert.Equal(_cluster.ServerVersionNum, settings[4]);
            Assert.Equal(_cluster.DataDirectory, settings[5]);
            Assert.StartsWith(PostgresCluster.DirectoryPrefix + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "-", Path.GetFileName(_cluster.ClusterDirectory));
            Assert.Equal(_cluster.ClusterDirectory, Path.GetDirectoryName(_cluster.DataDirectory));

            var hba = await PostgresTestSupport.QueryAsync(connection, "SELECT type, coalesce(address, ''), auth_method FROM pg_hba_file_rules ORDER BY line_number");
            Assert.Equal(new[] { "local::scram-sha-256", "host:127.0.0.1:scram-sha-256" }, hba.Select(r => $"{r[0]}:{r[1]}:{r[2]}"));
            var stored = await PostgresTestSupport.QueryAsync(connection, "SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'");
            Assert.Empty(stored);

            Assert.Matches(@"^\d+\.\d+$", _cluster.ServerVersion);
            Assert.Equal(_cluster.ServerVersionNum / 10000, int.Parse(_cluster.ServerVersion.Split('.')[0], CultureInfo.InvariantCulture));
            Assert.True(File.Exists(Path.Combine(_cluster.BinDirectory, "postgres")));
            if (PostgresTestSupport.IsRoot())
            {
                var owner = await PostgresTestSupport.RunAsync(new ProcessStartInfo("stat", "-c %U " + _cluster.DataDirectory), TimeSpan.FromSeconds(10));
                Assert.Equal("postgres", owner.Stdout.Trim());
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Psql_WithThePasswordOnlyInTheChildEnvironment_AndExecuteSql()
        {
            var psi = new ProcessStartInfo(_cluster.PsqlPath);
            foreach (var a in new[] { "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "SELECT string_agg(name, ',' ORDER BY id) FROM " + PostgresCluster.SeedTable }) psi.ArgumentList.Add(a);
            foreach (var e in _cluster.ClientEnvironmentFor()) psi.Environment[e.Key] = e.Value;
            var result = await PostgresTestSupport.RunAsync(psi, TimeSpan.FromSeconds(30));
            Assert.True(result.ExitCode == 0, "psql failed: " + result.Stderr);
            Assert.Equal("alpha,bravo,charlie", result.Stdout.Trim());
            Assert.Null(Environment.GetEnvironmentVariable("PGPASSWORD"));

            // Without the password psql cannot log in (no trust anywhere).
            var noPassword = new ProcessStartInfo(_cluster.PsqlPath);
            foreach (var a in new[] { "-X", "-w", "-c", "SELECT 1" }) noPassword.ArgumentList.Add(a);
            foreach (var e in _cluster.ClientEnvironmentFor().Where(e => e.Key != "PGPASSWORD")) noPassword.Environment[e.Key] = e.Value;
            noPassword.Environment["PGPASSFILE"] = "/dev/null";
            var refused = await PostgresTestSupport.RunAsync(noPassword, TimeSpan.FromSeconds(30));
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Contains("password", refused.Stderr, StringComparison.OrdinalIgnoreCase);

            Assert.Equal("3", (await _cluster.ExecuteSqlAsync("SELECT count(*) FROM " + PostgresCluster.SeedTable, user: _cluster.AppUser)).Trim());
            var error = await Assert.ThrowsAsync<PostgresClusterException>(() => _cluster.ExecuteSqlAsync("SELECT * FROM no_such_table"));
            Assert.Contains("no_such_table", error.Message);
        }
    }

    /// <summary>Tests with their own clusters (start, stop, failure, stale cleanup, the host option).</summary>
    public class TcpProbeTests
    {
        [Fact]
        public async Task TcpOpen_IsFalse_ForAConnectionThatMetItself_AndTrue_ForAListener()
        {
            // A socket bound to a port and connected to that same port meets itself (TCP simultaneous open): what the
            // probe's own socket can be given, by chance, when nothing listens on a port in the ephemeral range.
            using (var self = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
            {
                self.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                var port = ((IPEndPoint)self.LocalEndPoint!).Port;
                await self.ConnectAsync(IPAddress.Loopback, port);
                Assert.True(self.Connected);
                Assert.True(PostgresCluster.IsSelfConnection(self));
            }

            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            try
            {
                var port = ((IPEndPoint)listener.LocalEndpoint).Port;
                Assert.True(await PostgresCluster.TcpOpenAsync(port, TimeSpan.FromSeconds(5)));
                using var accepted = await listener.AcceptTcpClientAsync();
                Assert.False(PostgresCluster.IsSelfConnection(accepted.Client));
            }
            finally
            {
                listener.Stop();
            }
        }
    }

    public class PostgresClusterLifecycleTests
    {
        private readonly ITestOutputHelper _output;

        public PostgresClusterLifecycleTests(ITestOutputHelper output)
        {
            _output = output;
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Stop_ClosesThePort_RemovesTheDirectory_AndIsIdempotent()
        {
            var log = new ConcurrentQueue<string>();
            var cluster = await PostgresCluster.StartAsync(new PostgresClusterOptions { Log = log.Enqueue });
            _output.WriteLine("startup " + cluster.StartupTime.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms: "
                + string.Join(", ", cluster.StartupSteps.Select(s => s.Key + "=" + s.Value.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture))));
            Assert.InRange(cluster.StartupTime, TimeSpan.Zero, TimeSpan.FromSeconds(15));
            Assert.True(cluster.IsRunning);
            var pid = cluster.PostmasterPid;
            await using (var connection = await PostgresTestSupport.OpenAsync(cluster.ConnectionString()))
            {
                Assert.Equal(1, (await PostgresTestSupport.QueryAsync(connection, "SELECT 1")).Single()[0]);
            }

            var stopwatch = Stopwatch.StartNew();
            await cluster.StopAsync();
            _output.WriteLine("stop " + stopwatch.ElapsedMilliseconds.ToString(CultureInfo.InvariantCulture) + " ms");
            Assert.True(await PostgresTestSupport.NoLongerServedAsync(cluster.Port, cluster.ConnectionString()));
            Assert.False(Directory.Exists(cluster.DataDirectory));
            Assert.False(Directory.Exists(cluster.ClusterDirectory));
            Assert.False(cluster.IsRunning);
            Assert.False(File.Exists("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/cmdline") && File.ReadAllText("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/cmdline").Contains(cluster.DataDirectory, StringComparison.Ordinal));
            await Assert.ThrowsAnyAsync<Exception>(() => PostgresTestSupport.OpenAsync(cluster.ConnectionString()));
            await cluster.StopAsync();
            cluster.Dispose();
            Assert.Contains(log, l => l.Contains("ready on 127.0.0.1:" + cluster.Port.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task SandboxHost_WithStartPostgres_DescribesTheCluster_AndStopsItWithTheHost()
        {
            var host = new SandboxHost(null, new SandboxHostOptions { StartPostgres = true });
            await host.StartAsync();
            var cluster = host.Postgres;
            Assert.NotNull(cluster);
            using (var doc = JsonDocument.Parse(host.DescribeJson()))
            {
                var pg = doc.RootElement.GetProperty("postgres");
                Assert.Equal("127.0.0.1", pg.GetProperty("host").GetString());
                Assert.Equal(cluster!.Port, pg.GetProperty("port").GetInt32());
                Assert.Equal("appdb", pg.GetProperty("database").GetString());
                Assert.Equal(cluster.ServerVersion, pg.GetProperty("serverVersion").GetString());
                var cs = "Host=127.0.0.1;Port=" + pg.GetProperty("port").GetInt32().ToString(CultureInfo.InvariantCulture) + ";Username=" + pg.GetProperty("user").GetString()
                    + ";Password=" + pg.GetProperty("password").GetString() + ";Database=" + pg.GetProperty("database").GetString();
                await using var connection = await PostgresTestSupport.OpenAsync(cs);
                Assert.Equal(3L, (await PostgresTestSupport.QueryAsync(connection, "SELECT count(*) FROM " + PostgresCluster.SeedTable)).Single()[0]);
            }
            await host.DisposeAsync();
            Assert.Null(host.Postgres);
            Assert.True(await PostgresTestSupport.NoLongerServedAsync(cluster.Port, cluster.ConnectionString()));
            Assert.False(Directory.Exists(cluster.ClusterDirectory));

            // Without the option there is no cluster and no "postgres" block.
            await using var plain = Start();
            Assert.Null(plain.Postgres);
            using var plainDoc = JsonDocument.Parse(plain.DescribeJson());
            Assert.False(plainDoc.RootElement.TryGetProperty("postgres", out _));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task FailedStart_ReportsTheServerLogTail_AndLeavesNothingBehind()
        {
            var root = Path.Combine(Path.GetTempPath(), "pg-fail-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(root);
            try
            {
                var options = new PostgresClusterOptions { TempRoot = root, StartTimeout = TimeSpan.FromSeconds(30) };
                options.Settings["shared_buffers"] = "not-a-size";
                var error = await Assert.ThrowsAsync<PostgresClusterException>(() => PostgresCluster.StartAsync(options));
                _output.WriteLine(error.Message);
                Assert.Contains("server log tail", error.Message);
                Assert.Contains("shared_buffers", error.Message);
                Assert.Empty(Directory.GetDirectories(root));
            }
            finally
            {
                Directory.Delete(root, recursive: true);
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task CleanupStaleClusters_RemovesDirectoriesOfDeadOwners_AndKeepsLiveOnes()
        {
            var root = Path.Combine(Path.GetTempPath(), "pg-stale-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(root);
            try
            {
                var finished = await PostgresTestSupport.RunAsync(new ProcessStartInfo("true"), TimeSpan.FromSeconds(10));
                Assert.Equal(0, finished.ExitCode);
                var deadPid = DeadPid();
                var dead = Path.Combine(root, PostgresCluster.DirectoryPrefix + deadPid.ToString(CultureInfo.InvariantCulture) + "-deadbeef");
                Directory.CreateDirectory(Path.Combine(dead, "data"));
                File.WriteAllText(Path.Combine(dead, "data", "postmaster.pid"), deadPid.ToString(CultureInfo.InvariantCulture) + "\n" + Path.Combine(dead, "data") + "\n");
                var live = Path.Combine(root, PostgresCluster.DirectoryPrefix + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "-cafebabe");
                Directory.CreateDirectory(Path.Combine(live, "data"));
                var unrelated = Path.Combine(root, "bastiontools-pg-notapid");
                Directory.CreateDirectory(unrelated);

                var lines = new List<string>();
                Assert.Equal(1, PostgresCluster.CleanupStaleClusters(root, lines.Add));
                Assert.False(Directory.Exists(dead));
                Assert.True(Directory.Exists(live));
                Assert.True(Directory.Exists(unrelated));
                Assert.Contains(lines, l => l.Contains(dead, StringComparison.Ordinal));
            }
            finally
            {
                Directory.Delete(root, recursive: true);
            }
        }

        /// <summary>The pid of a process that has exited (and been reaped).</summary>
        private static int DeadPid()
        {
            using var p = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
            p.WaitForExit(10_000);
            var pid = p.Id;
            Assert.False(File.Exists("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/stat") && !File.ReadAllText("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/stat").Contains(") Z", StringComparison.Ordinal));
            return pid;
        }
    }

    /// <summary>The standalone sandbox with --postgres.</summary>
    public class PostgresSandboxProcessTests
    {
        private static string DotnetHost()
        {
            var fromCli = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (!string.IsNullOrEmpty(fromCli) && File.Exists(fromCli)) return fromCli;
            var self = Environment.ProcessPath;
            if (self != null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
            return "dotnet";
        }

        private static Process StartSandbox()
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "BastionTools.Sandbox.dll");
            Assert.True(File.Exists(dll), "The sandbox was not built next to the tests: " + dll);
            var psi = new ProcessStartInfo(DotnetHost())
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            psi.ArgumentList.Add(dll);
            psi.ArgumentList.Add("--postgres");
            psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
            return Process.Start(psi)!;
        }

        private static async Task<(JsonElement Postgres, JsonDocument Doc)> ReadDescription(Process process, Task<string> stderr)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(45));
            var line = await process.StandardOutput.ReadLineAsync(cts.Token);
            Assert.False(string.IsNullOrEmpty(line), "no JSON line; stderr: " + (process.HasExited ? await stderr : ""));
            var doc = JsonDocument.Parse(line!);
            return (doc.RootElement.GetProperty("postgres"), doc);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Executable_WithPostgres_PrintsTheBlock_AndTheClusterIsGoneAfterStdinCloses()
        {
            using var process = StartSandbox();
            var stderr = process.StandardError.ReadToEndAsync();
            try
            {
                var (pg, doc) = await ReadDescription(process, stderr);
                using (doc)
                {
                    Assert.Equal("127.0.0.1", pg.GetProperty("host").GetString());
                    var port = pg.GetProperty("port").GetInt32();
                    Assert.InRange(port, 1, 65535);
                    Assert.Equal("appdb", pg.GetProperty("database").GetString());
                    Assert.Matches(@"^\d+\.\d+$", pg.GetProperty("serverVersion").GetString()!);
                    var user = pg.GetProperty("user").GetString()!;
                    var password = pg.GetProperty("password").GetString()!;
                    Assert.False(string.IsNullOrEmpty(user));
                    Assert.True(password.Length >= 16);
                    var dataDirectory = pg.GetProperty("dataDirectory").GetString()!;
                    var clusterDirectory = Path.GetDirectoryName(dataDirectory)!;
                    Assert.Contains(PostgresCluster.DirectoryPrefix + process.Id.ToString(CultureInfo.InvariantCulture) + "-", clusterDirectory);

                    var cs = "Host=127.0.0.1;Port=" + port.ToString(CultureInfo.InvariantCulture) + ";Username=" + user + ";Password=" + password + ";Database=appdb";
                    await using (var connection = await PostgresTestSupport.OpenAsync(cs))
                    {
                        var names = await PostgresTestSupport.QueryAsync(connection, "SELECT name FROM " + PostgresCluster.SeedTable + " ORDER BY id");
                        Assert.Equal(new[] { "alpha", "bravo", "charlie" }, names.Select(r => (string)r[0]!));
                    }

                    process.StandardInput.Close();
                    using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                    await process.WaitForExitAsync(exit.Token);
                    Assert.True(process.ExitCode == 0, "exit " + process.ExitCode + "; stderr: " + await stderr);
                    // Stopped before the process exited: nothing to wait for.
                    Assert.True(await PostgresTestSupport.NoLongerServedAsync(port, cs));
                    Assert.False(Directory.Exists(clusterDirectory));
                }
            }
            finally
            {
                if (!process.HasExited) process.Kill(entireProcessTree: true);
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Executable_KilledWithSigkill_TheWatchdogStopsTheClusterAndRemovesIt()
        {
            using var process = StartSandbox();
            var stderr = process.StandardError.ReadToEndAsync();
            try
            {
                var (pg, doc) = await ReadDescription(process, stderr);
                using (doc)
                {
                    var port = pg.GetProperty("port").GetInt32();
                    var cs = "Host=127.0.0.1;Port=" + port.ToString(CultureInfo.InvariantCulture) + ";Username=" + pg.GetProperty("user").GetString() +
                             ";Password=" + pg.GetProperty("password").GetString() + ";Database=appdb";
                    var clusterDirectory = Path.GetDirectoryName(pg.GetProperty("dataDirectory").GetString()!)!;
                    Assert.True(await PostgresCluster.TcpOpenAsync(port, TimeSpan.FromSeconds(5)));

                    // SIGKILL: no handler runs in the sandbox; only the detached watchdog can clean up.
                    process.Kill(entireProcessTree: true);
                    using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                    await process.WaitForExitAsync(exit.Token);
                    Assert.True(await PostgresTestSupport.WaitGoneAsync(port, cs, clusterDirectory, TimeSpan.FromSeconds(20)),
                        "the cluster outlived the killed sandbox: port " + port.ToString(CultureInfo.InvariantCulture) + ", " + clusterDirectory);
                }
            }
            finally
            {
                if (!process.HasExited) process.Kill(entireProcessTree: true);
            }
        }
    }
}
