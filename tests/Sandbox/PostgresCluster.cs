using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>Options for <see cref="PostgresCluster.StartAsync"/>.</summary>
    public sealed class PostgresClusterOptions
    {
        /// <summary>
        /// The directory with initdb, pg_ctl and postgres. Null: $BASTIONTOOLS_PG_BIN, else the newest
        /// /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
        /// </summary>
        public string? BinDirectory { get; set; }
        /// <summary>psql; null: psql in <see cref="BinDirectory"/>, else /usr/bin/psql, else psql on PATH.</summary>
        public string? PsqlPath { get; set; }
        /// <summary>Where the cluster's temp directory goes; null: the system temp directory (falling back to /tmp when the server user cannot traverse it).</summary>
        public string? TempRoot { get; set; }
        /// <summary>TCP port on 127.0.0.1; 0 picks a free one (retried when the probed port is taken before the server binds).</summary>
        public int Port { get; set; }
        /// <summary>Bound on the whole start (initdb, server start, readiness, seeding).</summary>
        public TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(60);
        /// <summary>Bound on a stop (pg_ctl stop, then signals).</summary>
        public TimeSpan StopTimeout { get; set; } = TimeSpan.FromSeconds(15);
        /// <summary>The superuser's name (its password is random).</summary>
        public string SuperUser { get; set; } = "sandbox_admin";
        /// <summary>A non-superuser login role that owns <see cref="Database"/> and the seeded table (its password is random); null for none.</summary>
        public string? AppUser { get; set; } = "sandbox_app";
        /// <summary>The database created (and seeded) after start; null for none.</summary>
        public string? Database { get; set; } = "appdb";
        /// <summary>Create and fill <see cref="PostgresCluster.SeedTable"/> in <see cref="Database"/>.</summary>
        public bool Seed { get; set; } = true;
        /// <summary>The OS user that runs initdb/pg_ctl/postgres when this process is root (initdb refuses root).</summary>
        public string ServerOsUser { get; set; } = "postgres";
        /// <summary>Extra postgresql.conf settings (name → raw value, written as name = 'value'), applied after the defaults.</summary>
        public IDictionary<string, string> Settings { get; } = new Dictionary<string, string>(StringComparer.Ordinal);
        /// <summary>Receives progress and timing lines; null for silence.</summary>
        public Action<string>? Log { get; set; }
        /// <summary>Remove temp directories left by dead processes (see <see cref="PostgresCluster.CleanupStaleClusters"/>) before starting.</summary>
        public bool CleanupStale { get; set; } = true;
    }

    /// <summary>A cluster failed to start or stop; the message carries the command output and the server log tail.</summary>
    public sealed class PostgresClusterException : Exception
    {
        public PostgresClusterException(string message) : base(message)
        {
        }

        public PostgresClusterException(string message, Exception inner) : base(message, inner)
        {
        }
    }

    /// <summary>
    /// A throwaway local PostgreSQL cluster for tests and the demo: initdb into a fresh temp directory
    /// (bastiontools-pg-&lt;ownerPid&gt;-&lt;random&gt;), scram-sha-256 over TCP on 127.0.0.1 only, random passwords,
    /// a free port, speed settings (fsync off, ...), a database <c>appdb</c> with a seeded table. When this process is
    /// root the server runs as the <c>postgres</c> OS user. The server never outlives this process: StopAsync/Dispose,
    /// a ProcessExit handler, and a detached watchdog that stops the server and deletes the directory when this
    /// process's end of a pipe closes (also after SIGKILL).
    /// </summary>
    public sealed class PostgresCluster : IAsyncDisposable, IDisposable
    {
        /// <summary>The prefix of the temp directories this class creates (also what the stale cleanup looks for).</summary>
        public const string DirectoryPrefix = "bastiontools-pg-";
        /// <summary>The table seeded in the database: id integer primary key, name text, port integer.</summary>
        public const string SeedTable = "seed_items";
        /// <summary>The seeded rows of <see cref="SeedTable"/> (id, name, port), in id order.</summary>
        public static IReadOnlyList<(int Id, string Name, int Port)> SeedRows { get; } = new[]
        {
            (1, "alpha", 5432),
            (2, "bravo", 6432),
            (3, "charlie", 7432),
        };

        private const int SIGKILL = 9;
        private const int SIGQUIT = 3;
        private static readonly ConcurrentDictionary<PostgresCluster, byte> Live = new();
        private static int _exitHookInstalled;

        private readonly PostgresClusterOptions _options;
        private readonly Action<string>? _log;
        private readonly RunAs? _runAs;
        private readonly SemaphoreSlim _stopLock = new(1, 1);
        private Process? _watchdog;
        private int _stopped;

        private PostgresCluster(PostgresClusterOptions options, string binDirectory, string psqlPath, string clusterDirectory, RunAs? runAs)
        {
            _options = options;
            _log = options.Log;
            _runAs = runAs;
            BinDirectory = binDirectory;
            PsqlPath = psqlPath;
            ClusterDirectory = clusterDirectory;
            DataDirectory = Path.Combine(clusterDirectory, "data");
            LogFile = Path.Combine(clusterDirectory, "server.log");
            var socketDirectory = Path.Combine(clusterDirectory, "sock");
            // sockaddr_un.sun_path is 108 bytes: ".s.PGSQL.65535.lock" must fit after the directory.
            SocketDirectory = Encoding.UTF8.GetByteCount(socketDirectory) + 21 < 108 ? socketDirectory : null;
            SuperUser = options.SuperUser;
            SuperPassword = RandomPassword();
            AppUser = options.AppUser;
            AppPassword = options.AppUser == null ? null : RandomPassword();
            Database = options.Database;
        }

        /// <summary>Always 127.0.0.1: the server listens nowhere else.</summary>
        public string Host => "127.0.0.1";
        public int Port { get; private set; }
        public string SuperUser { get; }
        public string SuperPassword { get; }
        /// <summary>The non-superuser login role (owner of <see cref="Database"/>), or null.</summary>
        public string? AppUser { get; }
        public string? AppPassword { get; }
        /// <summary>The created database (<c>appdb</c> by default), or null.</summary>
        public string? Database { get; }
        /// <summary>The cluster's temp directory (data, socket directory, server log); deleted on stop.</summary>
        public string ClusterDirectory { get; }
        public string DataDirectory { get; }
        /// <summary>The Unix socket directory (inside <see cref="ClusterDirectory"/>), or null when its path is too long for a socket (TCP only).</summary>
        public string? SocketDirectory { get; }
        public string LogFile { get; }
        public string BinDirectory { get; }
        public string PsqlPath { get; }
        /// <summary>server_version without the distribution suffix, e.g. "15.18".</summary>
        public string ServerVersion { get; private set; } = "";
        /// <summary>server_version_num, e.g. 150018.</summary>
        public int ServerVersionNum { get; private set; }
        /// <summary>The postmaster's process id.</summary>
        public int PostmasterPid { get; private set; }
        /// <summary>How long <see cref="StartAsync"/> took (initdb to seeded).</summary>
        public TimeSpan StartupTime { get; private set; }
        /// <summary>Per-step timings of the start ("initdb", "start", "ready", "seed", "version").</summary>
        public IReadOnlyDictionary<string, TimeSpan> StartupSteps => _steps;
        public bool IsRunning => Volatile.Read(ref _stopped) == 0 && PostmasterPid != 0 && IsAlive(PostmasterPid);

        private readonly Dictionary<string, TimeSpan> _steps = new(StringComparer.Ordinal);

        /// <summary>Creates, starts, waits for and seeds a cluster. Throws <see cref="PostgresClusterException"/> (with the server log tail) on failure, after cleaning up.</summary>
        public static async Task<PostgresCluster> StartAsync(PostgresClusterOptions? options = null, CancellationToken cancellationToken = default)
        {
            options ??= new PostgresClusterOptions();
            if (options.Port < 0 || options.Port > 65535) throw new ArgumentOutOfRangeException(nameof(options), "Port must be 0..65535.");
            if (options.StartTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(options), "StartTimeout must be positive.");
            CheckIdentifier(options.SuperUser, "SuperUser");
            if (options.AppUser != null) CheckIdentifier(options.AppUser, "AppUser");
            if (options.Database != null) CheckIdentifier(options.Database, "Database");
            if (options.AppUser != null && options.AppUser == options.SuperUser) throw new ArgumentException("AppUser must differ from SuperUser.", nameof(options));
            if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS() && !OperatingSystem.IsFreeBSD())
            {
                throw new PlatformNotSupportedException("The sandbox PostgreSQL cluster needs a Unix PostgreSQL installation.");
            }

            var total = Stopwatch.StartNew();
            var deadline = DateTime.UtcNow + options.StartTimeout;
            var bin = FindBinDirectory(options.BinDirectory);
            var psql = FindPsql(options.PsqlPath, bin);
            var runAs = await RunAs.ResolveAsync(options.ServerOsUser, Remaining(deadline), cancellationToken).ConfigureAwait(false);
            var root = ChooseTempRoot(options.TempRoot, runAs, options.Log);
            if (options.CleanupStale) CleanupStaleClusters(root, options.Log);

            var dir = Path.Combine(root, DirectoryPrefix + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(4)).ToLowerInvariant());
            CreatePrivateDirectory(dir);
            var cluster = new PostgresCluster(options, bin, psql, dir, runAs);
            InstallExitHook();
            Live.TryAdd(cluster, 0);
            try
            {
                cluster.StartWatchdog();
                await cluster.InitAndStartAsync(deadline, cancellationToken).ConfigureAwait(false);
                cluster.StartupTime = total.Elapsed;
                cluster._log?.Invoke("postgres: ready on 127.0.0.1:" + cluster.Port.ToString(CultureInfo.InvariantCulture) + " (" + cluster.ServerVersion + ") in "
                    + cluster.StartupTime.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms ["
                    + string.Join(", ", cluster._steps.Select(s => s.Key + " " + s.Value.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms")) + "]");
                return cluster;
            }
            catch (Exception ex)
            {
                var logTail = cluster.ReadLogTail(40);
                try
                {
                    await cluster.StopAsync().ConfigureAwait(false);
                }
                catch (Exception stopError)
                {
                    cluster._log?.Invoke("postgres: cleanup after a failed start failed: " + stopError.Message);
                }
                if (ex is OperationCanceledException && cancellationToken.IsCancellationRequested) throw;
                var message = "The sandbox PostgreSQL cluster did not start (" + dir + "): " + ex.Message;
                if (logTail.Length > 0 && !ex.Message.Contains(logTail, StringComparison.Ordinal)) message += Environment.NewLine + "server log tail:" + Environment.NewLine + logTail;
                throw new PostgresClusterException(message, ex);
            }
        }

        private async Task InitAndStartAsync(DateTime deadline, CancellationToken ct)
        {
            var step = Stopwatch.StartNew();
            CreatePrivateDirectory(DataDirectory);
            if (SocketDirectory != null) CreatePrivateDirectory(SocketDirectory);
            var passwordFile = Path.Combine(ClusterDirectory, "superuser.pw");
            File.WriteAllText(passwordFile, SuperPassword + "\n");
            SetMode(passwordFile, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            File.WriteAllText(LogFile, "");
            _runAs?.Chown(ClusterDirectory, DataDirectory, SocketDirectory, passwordFile, LogFile);

            var initdb = await RunServerToolAsync("initdb", new[]
            {
                "-D", DataDirectory,
                "-U", SuperUser,
                "--pwfile=" + passwordFile,
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            }, Remaining(deadline), ct).ConfigureAwait(false);
            File.Delete(passwordFile);
            if (initdb.ExitCode != 0) throw new PostgresClusterException("initdb failed (exit " + initdb.ExitCode.ToString(CultureInfo.InvariantCulture) + "): " + initdb.Output);
            WriteConfiguration();
            _steps["initdb"] = step.Elapsed;

            // Start; when the probed port is taken before the server binds it, try another one.
            var attempts = _options.Port == 0 ? 5 : 1;
            for (var attempt = 1; ; attempt++)
            {
                step.Restart();
                Port = _options.Port == 0 ? FreePort() : _options.Port;
                var logLength = new FileInfo(LogFile).Length;
                var seconds = Math.Max(1, (int)Math.Ceiling(Remaining(deadline).TotalSeconds));
                var start = await RunServerToolAsync("pg_ctl", new[]
                {
                    "start", "-D", DataDirectory, "-l", LogFile, "-w", "-t", seconds.ToString(CultureInfo.InvariantCulture),
                    "-o", "-p " + Port.ToString(CultureInfo.InvariantCulture),
                }, Remaining(deadline) + TimeSpan.FromSeconds(2), ct).ConfigureAwait(false);
                if (start.ExitCode == 0) break;
                var newLog = ReadLogSince(logLength);
                if (attempt < attempts && newLog.Contains("could not bind", StringComparison.Ordinal))
                {
                    _log?.Invoke("postgres: port " + Port.ToString(CultureInfo.InvariantCulture) + " was taken, retrying with another");
                    continue;
                }
                throw new PostgresClusterException("pg_ctl start failed (exit " + start.ExitCode.ToString(CultureInfo.InvariantCulture) + "): " + start.Output.Trim()
                    + Environment.NewLine + "server log tail:" + Environment.NewLine + ReadLogTail(40));
            }
            PostmasterPid = ReadPostmasterPid(DataDirectory) ?? throw new PostgresClusterException("pg_ctl reported a start but postmaster.pid is missing.");
            _steps["start"] = step.Elapsed;

            step.Restart();
            await WaitReadyAsync(deadline, ct).ConfigureAwait(false);
            _steps["ready"] = step.Elapsed;

            step.Restart();
            var version = await ExecuteSqlAsync("SHOW server_version; SHOW server_version_num;", "postgres", timeout: Remaining(deadline), cancellationToken: ct).ConfigureAwait(false);
            var lines = version.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (lines.Length < 2 || !int.TryParse(lines[1], NumberStyles.None, CultureInfo.InvariantCulture, out var versionNum))
            {
                throw new PostgresClusterException("Unexpected answer to SHOW server_version: " + version);
            }
            ServerVersion = lines[0].Split(' ')[0];
            ServerVersionNum = versionNum;
            _steps["version"] = step.Elapsed;

            if (Database != null || AppUser != null)
            {
                step.Restart();
                await ExecuteSqlAsync(SetupSql(), "postgres", timeout: Remaining(deadline), cancellationToken: ct).ConfigureAwait(false);
                _steps["seed"] = step.Elapsed;
            }
        }

        private void WriteConfiguration()
        {
            // Only TCP on 127.0.0.1 and the private socket, both with SCRAM; no replication, nothing else.
            File.WriteAllText(Path.Combine(DataDirectory, "pg_hba.conf"),
                "# BastionTools sandbox: SCRAM only, loopback only.\n"
                + "local   all   all                scram-sha-256\n"
                + "host    all   all   127.0.0.1/32 scram-sha-256\n");
            var settings = new List<KeyValuePair<string, string>>
            {
                new("listen_addresses", "'127.0.0.1'"),
                new("unix_socket_directories", SocketDirectory == null ? "''" : Quote(SocketDirectory)),
                new("unix_socket_permissions", "0700"),
                new("password_encryption", "'scram-sha-256'"),
                new("ssl", "off"),
                new("max_connections", "150"),
                new("shared_buffers", "32MB"),
                new("huge_pages", "off"),
                // Speed over durability: the cluster is thrown away.
                new("fsync", "off"),
                new("synchronous_commit", "off"),
                new("full_page_writes", "off"),
                new("wal_level", "minimal"),
                new("max_wal_senders", "0"),
                new("max_wal_size", "1GB"),
                new("checkpoint_timeout", "30min"),
                new("autovacuum", "off"),
                new("jit", "off"),
                new("track_activities", "on"),
                new("logging_collector", "off"),
                new("log_line_prefix", "'%m [%p] %q%u@%d '"),
                new("log_min_messages", "warning"),
                new("log_connections", "off"),
                new("log_timezone", "'UTC'"),
                new("timezone", "'UTC'"),
                new("lc_messages", "'C'"),
                new("dynamic_shared_memory_type", "posix"),
            };
            foreach (var s in _options.Settings) settings.Add(new(s.Key, Quote(s.Value)));
            var conf = new StringBuilder("\n# --- BastionTools sandbox settings (later lines win) ---\n");
            foreach (var s in settings) conf.Append(s.Key).Append(" = ").Append(s.Value).Append('\n');
            File.AppendAllText(Path.Combine(DataDirectory, "postgresql.conf"), conf.ToString());
        }

        private string SetupSql()
        {
            var sql = new StringBuilder();
            if (AppUser != null)
            {
                sql.Append("CREATE ROLE ").Append(AppUser).Append(" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '").Append(AppPassword).Append("';\n");
            }
            if (Database != null)
            {
                sql.Append("CREATE DATABASE ").Append(Database).Append(AppUser == null ? "" : " OWNER " + AppUser).Append(";\n");
                if (_options.Seed)
                {
                    sql.Append("\\connect ").Append(Database).Append('\n');
                    if (AppUser != null) sql.Append("SET ROLE ").Append(AppUser).Append(";\n");
                    sql.Append("CREATE TABLE ").Append(SeedTable).Append(" (id integer PRIMARY KEY, name text NOT NULL UNIQUE, port integer NOT NULL);\n");
                    sql.Append("INSERT INTO ").Append(SeedTable).Append(" (id, name, port) VALUES ");
                    sql.Append(string.Join(", ", SeedRows.Select(r => "(" + r.Id.ToString(CultureInfo.InvariantCulture) + ", '" + r.Name + "', " + r.Port.ToString(CultureInfo.InvariantCulture) + ")")));
                    sql.Append(";\n");
                    if (AppUser != null) sql.Append("RESET ROLE;\n");
                }
            }
            return sql.ToString();
        }

        private async Task WaitReadyAsync(DateTime deadline, CancellationToken ct)
        {
            // pg_ctl -w already waited for "ready" in postmaster.pid; confirm over TCP with pg_isready (bounded).
            var isready = Path.Combine(BinDirectory, "pg_isready");
            string last = "";
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                if (!IsAlive(PostmasterPid)) throw new PostgresClusterException("The server exited during start.");
                if (File.Exists(isready))
                {
                    var r = await RunAsync(isready, new[] { "-h", Host, "-p", Port.ToString(CultureInfo.InvariantCulture), "-U", SuperUser, "-d", "postgres", "-t", "2" },
                        ClientEnvironment(null), null, null, TimeSpan.FromSeconds(5), ct).ConfigureAwait(false);
                    if (r.ExitCode == 0) return;
                    last = r.Output.Trim();
                }
                else if (await TcpOpenAsync(Port, TimeSpan.FromSeconds(2), ct).ConfigureAwait(false))
                {
                    return;
                }
                if (DateTime.UtcNow >= deadline) throw new TimeoutException("The server did not accept connections on 127.0.0.1:" + Port.ToString(CultureInfo.InvariantCulture) + " in time: " + last);
                await Task.Delay(50, ct).ConfigureAwait(false);
            }
        }

        /// <summary>
        /// Runs SQL (one or more statements; psql meta-commands allowed) with psql over TCP with a password (set only in
        /// psql's environment), ON_ERROR_STOP, unaligned tuples-only output. Returns stdout; throws on failure.
        /// </summary>
        public async Task<string> ExecuteSqlAsync(string sql, string? database = null, string? user = null, string? password = null,
            TimeSpan? timeout = null, CancellationToken cancellationToken = default)
        {
            if (sql == null) throw new ArgumentNullException(nameof(sql));
            user ??= SuperUser;
            password ??= PasswordFor(user);
            var args = new[]
            {
                "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", Host, "-p", Port.ToString(CultureInfo.InvariantCulture),
                "-U", user, "-d", database ?? Database ?? "postgres",
                "-f", "-",
            };
            var r = await RunAsync(PsqlPath, args, ClientEnvironment(password), sql, null, timeout ?? TimeSpan.FromSeconds(60), cancellationToken).ConfigureAwait(false);
            if (r.ExitCode != 0) throw new PostgresClusterException("psql failed (exit " + r.ExitCode.ToString(CultureInfo.InvariantCulture) + "): " + r.Stderr.Trim());
            return r.Stdout;
        }

        /// <summary>An Npgsql/ADO.NET connection string (TCP 127.0.0.1, password auth). Defaults: the superuser, <see cref="Database"/>.</summary>
        public string ConnectionString(string? database = null, string? user = null, string? password = null)
        {
            user ??= SuperUser;
            password ??= PasswordFor(user);
            return "Host=" + Host + ";Port=" + Port.ToString(CultureInfo.InvariantCulture) + ";Username=" + user + ";Password=" + password
                + ";Database=" + (database ?? Database ?? "postgres") + ";Timeout=15";
        }

        /// <summary>A libpq URI, postgresql://user:password@127.0.0.1:port/database (for psql and other libpq clients).</summary>
        public string ConnectionUri(string? database = null, string? user = null, string? password = null)
        {
            user ??= SuperUser;
            password ??= PasswordFor(user);
            return "postgresql://" + Uri.EscapeDataString(user) + ":" + Uri.EscapeDataString(password ?? "") + "@" + Host + ":" + Port.ToString(CultureInfo.InvariantCulture)
                + "/" + Uri.EscapeDataString(database ?? Database ?? "postgres");
        }

        /// <summary>
        /// libpq environment for a client child process (PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD): put it in
        /// that child's environment only, never in this process's.
        /// </summary>
        public IReadOnlyDictionary<string, string> ClientEnvironmentFor(string? database = null, string? user = null, string? password = null)
        {
            user ??= SuperUser;
            password ??= PasswordFor(user);
            var env = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                ["PGHOST"] = Host,
                ["PGPORT"] = Port.ToString(CultureInfo.InvariantCulture),
                ["PGUSER"] = user,
                ["PGDATABASE"] = database ?? Database ?? "postgres",
                ["PGCONNECT_TIMEOUT"] = "10",
                ["PGSSLMODE"] = "disable",
            };
            if (password != null) env["PGPASSWORD"] = password;
            return env;
        }

        private string? PasswordFor(string user) =>
            user == SuperUser ? SuperPassword : user == AppUser ? AppPassword : null;

        /// <summary>The "postgres" block of the sandbox's JSON line (throwaway credentials).</summary>
        public JsonObject DescribeJson() => new()
        {
            ["host"] = Host,
            ["port"] = Port,
            ["user"] = SuperUser,
            ["password"] = SuperPassword,
            ["database"] = Database,
            ["serverVersion"] = ServerVersion,
            ["appUser"] = AppUser,
            ["appPassword"] = AppPassword,
            ["seedTable"] = Database != null && _options.Seed ? SeedTable : null,
            ["dataDirectory"] = DataDirectory,
            ["startupMs"] = (int)StartupTime.TotalMilliseconds,
        };

        /// <summary>The last <paramref name="lines"/> lines of the server log ("" when there is none).</summary>
        public string ReadLogTail(int lines = 40)
        {
            try
            {
                if (!File.Exists(LogFile)) return "";
                var all = File.ReadAllLines(LogFile);
                return string.Join(Environment.NewLine, all.Skip(Math.Max(0, all.Length - lines)));
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return "";
            }
        }

        private string ReadLogSince(long offset)
        {
            try
            {
                using var f = new FileStream(LogFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                if (offset < f.Length) f.Seek(offset, SeekOrigin.Begin);
                using var reader = new StreamReader(f);
                return reader.ReadToEnd();
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return "";
            }
        }

        /// <summary>
        /// Stops the server (pg_ctl stop -m fast, then immediate, then SIGQUIT/SIGKILL; all bounded by
        /// <see cref="PostgresClusterOptions.StopTimeout"/>), deletes <see cref="ClusterDirectory"/> and ends the watchdog. Idempotent.
        /// </summary>
        public async Task StopAsync()
        {
            if (!await _stopLock.WaitAsync(_options.StopTimeout + TimeSpan.FromSeconds(5)).ConfigureAwait(false)) return;
            try
            {
                if (Volatile.Read(ref _stopped) != 0) return;
                var deadline = DateTime.UtcNow + _options.StopTimeout;
                var pid = PostmasterPid != 0 ? PostmasterPid : ReadPostmasterPid(DataDirectory) ?? 0;
                if (pid != 0 && IsAlive(pid))
                {
                    foreach (var mode in new[] { "fast", "immediate" })
                    {
                        var seconds = Math.Max(1, (int)Math.Min(5, Remaining(deadline).TotalSeconds));
                        try
                        {
                            var r = await RunServerToolAsync("pg_ctl", new[] { "stop", "-D", DataDirectory, "-m", mode, "-w", "-t", seconds.ToString(CultureInfo.InvariantCulture) },
                                TimeSpan.FromSeconds(seconds + 2), CancellationToken.None).ConfigureAwait(false);
                            if (r.ExitCode != 0) _log?.Invoke("postgres: pg_ctl stop -m " + mode + " failed: " + r.Output.Trim());
                        }
                        catch (Exception ex) when (ex is TimeoutException || ex is PostgresClusterException || ex is System.ComponentModel.Win32Exception)
                        {
                            _log?.Invoke("postgres: pg_ctl stop -m " + mode + ": " + ex.Message);
                        }
                        if (!IsAlive(pid)) break;
                    }
                    if (IsAlive(pid)) KillAndWait(pid, Remaining(deadline));
                }
                Volatile.Write(ref _stopped, 1);
                DeleteDirectory(ClusterDirectory, _log);
                EndWatchdog();
                Live.TryRemove(this, out _);
                _log?.Invoke("postgres: stopped, removed " + ClusterDirectory);
            }
            finally
            {
                _stopLock.Release();
            }
        }

        /// <summary>The synchronous last resort (ProcessExit): SIGQUIT (immediate shutdown), then SIGKILL, delete the directory.</summary>
        private void EmergencyStop()
        {
            if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
            var pid = PostmasterPid != 0 ? PostmasterPid : ReadPostmasterPid(DataDirectory) ?? 0;
            if (pid != 0 && IsAlive(pid)) KillAndWait(pid, TimeSpan.FromSeconds(3));
            DeleteDirectory(ClusterDirectory, null);
            EndWatchdog();
            Live.TryRemove(this, out _);
        }

        public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

        public void Dispose() => Task.Run(StopAsync).GetAwaiter().GetResult();

        private static void InstallExitHook()
        {
            if (Interlocked.Exchange(ref _exitHookInstalled, 1) != 0) return;
            // Normal exit and SIGTERM run ProcessExit; SIGKILL, crashes and an unhandled Ctrl-C are the watchdog's.
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                foreach (var c in Live.Keys.ToArray())
                {
                    try
                    {
                        c.EmergencyStop();
                    }
                    catch (Exception)
                    {
                        // Best effort while the process exits; the watchdog covers the rest.
                    }
                }
            };
        }

        // ---- watchdog ------------------------------------------------------------------------------------------------

        // Waits for EOF on stdin (this process's end closes when it exits, however it exits), then stops the
        // postmaster (SIGQUIT = immediate shutdown, SIGKILL after 5 s) and deletes the cluster directory.
        private const string WatchdogScript = """
            trap '' INT HUP TERM PIPE
            dir="$1"
            exec 2>/dev/null >/dev/null
            cat >/dev/null
            [ -d "$dir" ] || exit 0
            pidfile="$dir/data/postmaster.pid"
            if [ -f "$pidfile" ]; then
              pid=$(head -n 1 "$pidfile")
              case "$pid" in
                ''|*[!0-9]*) ;;
                *)
                  kill -QUIT "$pid"
                  i=0
                  while kill -0 "$pid" && [ "$i" -lt 50 ]; do
                    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status")
                    [ "$state" = "Z" ] && break
                    sleep 0.1
                    i=$((i + 1))
                  done
                  kill -KILL "$pid"
                  ;;
              esac
            fi
            rm -rf "$dir"
            """;

        private void StartWatchdog()
        {
            // setsid -f: a new session (no terminal Ctrl-C/hangup) and not our descendant, so killing this process's
            // tree does not take the watchdog along.
            var setsid = FindExecutable("setsid");
            var psi = new ProcessStartInfo(setsid ?? "/bin/sh")
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
                WorkingDirectory = "/",
            };
            if (setsid != null)
            {
                psi.ArgumentList.Add("-f");
                psi.ArgumentList.Add("/bin/sh");
            }
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(WatchdogScript);
            psi.ArgumentList.Add("bastiontools-pg-watchdog");
            psi.ArgumentList.Add(ClusterDirectory);
            _watchdog = Process.Start(psi) ?? throw new PostgresClusterException("Could not start the cluster watchdog.");
        }

        private void EndWatchdog()
        {
            var w = Interlocked.Exchange(ref _watchdog, null);
            if (w == null) return;
            try
            {
                w.StandardInput.Close();
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is InvalidOperationException)
            {
            }
            w.Dispose();
        }

        // ---- stale clusters ------------------------------------------------------------------------------------------

        /// <summary>
        /// Deletes <see cref="DirectoryPrefix"/>&lt;pid&gt;-* directories under <paramref name="tempRoot"/> whose owner
        /// process is gone, or whose postmaster is dead and which are older than a minute; a postmaster still running
        /// for a dead owner is stopped first (SIGQUIT, then SIGKILL). Returns how many directories were removed.
        /// </summary>
        public static int CleanupStaleClusters(string? tempRoot = null, Action<string>? log = null)
        {
            var root = tempRoot ?? Path.GetTempPath();
            string[] candidates;
            try
            {
                candidates = Directory.GetDirectories(root, DirectoryPrefix + "*");
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return 0;
            }
            var removed = 0;
            foreach (var dir in candidates)
            {
                var name = Path.GetFileName(dir);
                var rest = name.Substring(DirectoryPrefix.Length);
                var dash = rest.IndexOf('-');
                if (dash <= 0 || !int.TryParse(rest.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out var owner)) continue;
                if (Live.Keys.Any(c => c.ClusterDirectory == dir)) continue;
                var data = Path.Combine(dir, "data");
                var postmaster = ReadPostmasterPid(data);
                var postmasterAlive = postmaster != null && IsAlive(postmaster.Value) && CommandLineMentions(postmaster.Value, data);
                var ownerAlive = owner != Environment.ProcessId ? IsAlive(owner) : true;
                DateTime modified;
                try
                {
                    modified = Directory.GetLastWriteTimeUtc(dir);
                }
                catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
                {
                    continue;
                }
                var stale = !ownerAlive || (!postmasterAlive && DateTime.UtcNow - modified > TimeSpan.FromMinutes(1));
                if (!stale) continue;
                if (postmasterAlive) KillAndWait(postmaster!.Value, TimeSpan.FromSeconds(5));
                if (DeleteDirectory(dir, log))
                {
                    removed++;
                    log?.Invoke("postgres: removed stale cluster " + dir + (postmasterAlive ? " (stopped its server)" : ""));
                }
            }
            return removed;
        }

        // ---- helpers -------------------------------------------------------------------------------------------------

        private static bool CommandLineMentions(int pid, string dataDirectory)
        {
            try
            {
                var cmdline = File.ReadAllText("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/cmdline").Replace('\0', ' ');
                return cmdline.Contains(dataDirectory, StringComparison.Ordinal) || cmdline.Contains("postgres", StringComparison.Ordinal);
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                // No /proc (or no access): trust postmaster.pid.
                return true;
            }
        }

        private static int? ReadPostmasterPid(string dataDirectory)
        {
            try
            {
                var path = Path.Combine(dataDirectory, "postmaster.pid");
                if (!File.Exists(path)) return null;
                using var reader = new StreamReader(new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete));
                var first = reader.ReadLine();
                return int.TryParse(first, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return null;
            }
        }

        /// <summary>Whether a process exists and is not a zombie (a daemonized postmaster may be reparented to an init that does not reap).</summary>
        internal static bool IsAlive(int pid)
        {
            if (pid <= 0) return false;
            var stat = "/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/stat";
            try
            {
                var text = File.ReadAllText(stat);
                var close = text.LastIndexOf(')');
                return !(close > 0 && close + 2 < text.Length && (text[close + 2] == 'Z' || text[close + 2] == 'X'));
            }
            catch (FileNotFoundException)
            {
                return false;
            }
            catch (DirectoryNotFoundException)
            {
                return false;
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return Native.kill(pid, 0) == 0 || Marshal.GetLastPInvokeError() == 1; // EPERM: exists
            }
        }

        private static void KillAndWait(int pid, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + (timeout > TimeSpan.FromSeconds(1) ? timeout : TimeSpan.FromSeconds(1));
            Native.kill(pid, SIGQUIT);
            var killed = false;
            while (IsAlive(pid))
            {
                if (!killed && DateTime.UtcNow >= deadline - TimeSpan.FromMilliseconds(500))
                {
                    Native.kill(pid, SIGKILL);
                    killed = true;
                }
                if (DateTime.UtcNow >= deadline) return;
                Thread.Sleep(20);
            }
        }

        private static bool DeleteDirectory(string dir, Action<string>? log)
        {
            for (var attempt = 1; attempt <= 3; attempt++)
            {
                try
                {
                    if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
                    return true;
                }
                catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
                {
                    // A process that was just killed may still be writing; try again shortly.
                    if (attempt == 3)
                    {
                        log?.Invoke("postgres: could not delete " + dir + ": " + ex.Message);
                        return false;
                    }
                    Thread.Sleep(100);
                }
            }
            return false;
        }

        private static void CreatePrivateDirectory(string path)
        {
            if (OperatingSystem.IsWindows()) throw new PlatformNotSupportedException();
            Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            // CreateDirectory applies the umask; make it exactly 0700 (PostgreSQL insists on it for the data directory).
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        private static void SetMode(string path, UnixFileMode mode)
        {
            if (OperatingSystem.IsWindows()) throw new PlatformNotSupportedException();
            File.SetUnixFileMode(path, mode);
        }

        private static UnixFileMode GetMode(string path)
        {
            if (OperatingSystem.IsWindows()) throw new PlatformNotSupportedException();
            return File.GetUnixFileMode(path);
        }

        private static TimeSpan Remaining(DateTime deadline)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new TimeoutException("The PostgreSQL cluster start timed out.");
            return left;
        }

        /// <summary>A TCP socket connected to itself: local and remote end points the same (see <see cref="TcpOpenAsync"/>).</summary>
        public static bool IsSelfConnection(Socket socket) =>
            socket.LocalEndPoint is IPEndPoint local && socket.RemoteEndPoint is IPEndPoint remote && local.Equals(remote);

        private static int FreePort()
        {
            var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            try
            {
                return ((IPEndPoint)probe.LocalEndpoint).Port;
            }
            finally
            {
                probe.Stop();
            }
        }

        /// <summary>
        /// Whether something accepts TCP connections on 127.0.0.1:<paramref name="port"/> (bounded). A connection to itself
        /// is not something listening: with nothing bound to a port in the ephemeral range, Linux may give the connecting
        /// socket that very port as its own, and the SYN then meets itself (TCP simultaneous open) and "connects".
        /// </summary>
        public static async Task<bool> TcpOpenAsync(int port, TimeSpan timeout, CancellationToken cancellationToken = default)
        {
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            cts.CancelAfter(timeout);
            using var client = new TcpClient(AddressFamily.InterNetwork);
            try
            {
                await client.ConnectAsync(IPAddress.Loopback, port, cts.Token).ConfigureAwait(false);
                return !IsSelfConnection(client.Client);
            }
            catch (SocketException)
            {
                return false;
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                return false;
            }
        }

        private static string RandomPassword()
        {
            const string alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
            var chars = new char[24];
            for (var i = 0; i < chars.Length; i++) chars[i] = alphabet[RandomNumberGenerator.GetInt32(alphabet.Length)];
            return new string(chars);
        }

        private static void CheckIdentifier(string? value, string what)
        {
            if (string.IsNullOrEmpty(value) || value.Length > 63 || !(char.IsAsciiLetterLower(value[0]) || value[0] == '_')
                || !value.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '_'))
            {
                throw new ArgumentException(what + " must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 characters): '" + value + "'.");
            }
        }

        private static string Quote(string value) => "'" + value.Replace("'", "''", StringComparison.Ordinal) + "'";

        private static string FindBinDirectory(string? configured)
        {
            static bool HasInitdb(string? dir) => !string.IsNullOrEmpty(dir) && File.Exists(Path.Combine(dir, "initdb")) && File.Exists(Path.Combine(dir, "pg_ctl"));
            if (configured != null)
            {
                if (!HasInitdb(configured)) throw new PostgresClusterException("No initdb/pg_ctl in the configured PostgreSQL bin directory '" + configured + "'.");
                return configured;
            }
            var fromEnv = Environment.GetEnvironmentVariable("BASTIONTOOLS_PG_BIN");
            if (HasInitdb(fromEnv)) return fromEnv!;
            const string debianRoot = "/usr/lib/postgresql";
            if (Directory.Exists(debianRoot))
            {
                var newest = Directory.GetDirectories(debianRoot)
                    .Select(d => (Dir: Path.Combine(d, "bin"), Version: Version.TryParse(Path.GetFileName(d).Contains('.', StringComparison.Ordinal) ? Path.GetFileName(d) : Path.GetFileName(d) + ".0", out var v) ? v : null))
                    .Where(x => x.Version != null && HasInitdb(x.Dir))
                    .OrderByDescending(x => x.Version)
                    .Select(x => x.Dir)
                    .FirstOrDefault();
                if (newest != null) return newest;
            }
            var initdb = FindExecutable("initdb");
            if (initdb != null && HasInitdb(Path.GetDirectoryName(initdb))) return Path.GetDirectoryName(initdb)!;
            throw new PostgresClusterException("PostgreSQL server binaries (initdb, pg_ctl) were not found: install the postgresql package (.ci/run does) or set BASTIONTOOLS_PG_BIN.");
        }

        private static string FindPsql(string? configured, string bin)
        {
            if (configured != null)
            {
                if (!File.Exists(configured)) throw new PostgresClusterException("psql not found at '" + configured + "'.");
                return configured;
            }
            var candidate = Path.Combine(bin, "psql");
            if (File.Exists(candidate)) return candidate;
            if (File.Exists("/usr/bin/psql")) return "/usr/bin/psql";
            return FindExecutable("psql") ?? throw new PostgresClusterException("psql was not found (looked in " + bin + ", /usr/bin and PATH).");
        }

        internal static string? FindExecutable(string name)
        {
            var path = Environment.GetEnvironmentVariable("PATH") ?? "";
            foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(new[] { "/usr/bin", "/bin", "/usr/sbin", "/sbin" }))
            {
                var candidate = Path.Combine(dir, name);
                if (File.Exists(candidate)) return candidate;
            }
            return null;
        }

        private static string ChooseTempRoot(string? configured, RunAs? runAs, Action<string>? log)
        {
            var root = Path.GetFullPath(configured ?? Path.GetTempPath());
            Directory.CreateDirectory(root);
            if (runAs == null) return root;
            if (configured == null && !TraversableByOthers(root))
            {
                log?.Invoke("postgres: " + root + " is not traversable by " + runAs.UserName + "; using /tmp");
                return "/tmp";
            }
            // The caller chose this place: let the server user through (search permission only, no listing).
            for (var dir = root; dir != null; dir = Path.GetDirectoryName(dir))
            {
                var mode = GetMode(dir);
                if ((mode & UnixFileMode.OtherExecute) == 0)
                {
                    SetMode(dir, mode | UnixFileMode.OtherExecute);
                    log?.Invoke("postgres: added o+x to " + dir + " so " + runAs.UserName + " can reach the cluster");
                }
            }
            return root;
        }

        private static bool TraversableByOthers(string root)
        {
            for (var dir = root; dir != null; dir = Path.GetDirectoryName(dir))
            {
                if ((GetMode(dir) & UnixFileMode.OtherExecute) == 0) return false;
            }
            return true;
        }

        private static Dictionary<string, string?> ClientEnvironment(string? password)
        {
            var env = BaseEnvironmentOverrides();
            env["PGCONNECT_TIMEOUT"] = "10";
            env["PGSSLMODE"] = "disable";
            env["PGAPPNAME"] = "bastiontools-sandbox";
            if (password != null) env["PGPASSWORD"] = password;
            return env;
        }

        /// <summary>Clears inherited PG* variables (PGDATA, PGHOST, PGPASSWORD, PGOPTIONS, ...) so they cannot redirect a child.</summary>
        private static Dictionary<string, string?> BaseEnvironmentOverrides()
        {
            var env = new Dictionary<string, string?>(StringComparer.Ordinal);
            foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
            {
                var key = (string)e.Key;
                if (key.StartsWith("PG", StringComparison.Ordinal)) env[key] = null;
            }
            env["LC_ALL"] = "C";
            env["LANG"] = "C";
            return env;
        }

        private Task<ProcessResult> RunServerToolAsync(string tool, IReadOnlyList<string> args, TimeSpan timeout, CancellationToken ct)
        {
            var exe = Path.Combine(BinDirectory, tool);
            var env = BaseEnvironmentOverrides();
            if (_runAs == null) return RunAsync(exe, args, env, null, ClusterDirectory, timeout, ct);
            var (file, wrapped) = _runAs.Wrap(exe, args);
            return RunAsync(file, wrapped, env, null, ClusterDirectory, timeout, ct);
        }

        internal sealed class ProcessResult
        {
            public ProcessResult(int exitCode, string stdout, string stderr)
            {
                ExitCode = exitCode;
                Stdout = stdout;
                Stderr = stderr;
            }

            public int ExitCode { get; }
            public string Stdout { get; }
            public string Stderr { get; }
            public string Output => (Stdout + Environment.NewLine + Stderr).Trim();
        }

        /// <summary>Runs a process with its own stdin (never ours), bounded by <paramref name="timeout"/> (the tree is killed on timeout).</summary>
        internal static async Task<ProcessResult> RunAsync(string file, IEnumerable<string> args, IDictionary<string, string?>? env, string? stdin, string? workingDirectory,
            TimeSpan timeout, CancellationToken ct)
        {
            var psi = new ProcessStartInfo(file)
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
                StandardOutputEncoding = Encoding.UTF8,
                StandardErrorEncoding = Encoding.UTF8,
            };
            if (workingDirectory != null) psi.WorkingDirectory = workingDirectory;
            foreach (var a in args) psi.ArgumentList.Add(a);
            if (env != null)
            {
                foreach (var e in env)
                {
                    if (e.Value == null) psi.Environment.Remove(e.Key);
                    else psi.Environment[e.Key] = e.Value;
                }
            }
            var commandLine = file + " " + string.Join(" ", psi.ArgumentList.Select(a => a.Contains(' ', StringComparison.Ordinal) ? "'" + a + "'" : a));
            using var process = Process.Start(psi) ?? throw new PostgresClusterException("Could not start " + file);
            var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
            var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
            try
            {
                if (stdin != null) await process.StandardInput.WriteAsync(stdin.AsMemory(), ct).ConfigureAwait(false);
                process.StandardInput.Close();
            }
            catch (IOException)
            {
                // The child exited without reading its input; its exit code tells.
            }
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            cts.CancelAfter(timeout);
            try
            {
                await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                try
                {
                    process.Kill(entireProcessTree: true);
                }
                catch (InvalidOperationException)
                {
                }
                ct.ThrowIfCancellationRequested();
                throw new TimeoutException("'" + commandLine + "' did not finish within " + timeout.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture) + " s.");
            }
            // A grandchild holding the pipes must not hang us: bound the reads too.
            var both = Task.WhenAll(stdout, stderr);
            if (await Task.WhenAny(both, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None)).ConfigureAwait(false) != both)
            {
                return new ProcessResult(process.ExitCode, "", "(output not closed by " + file + ")");
            }
            return new ProcessResult(process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
        }

        /// <summary>How to run the server tools as the server OS user when this process is root.</summary>
        private sealed class RunAs
        {
            private RunAs(string userName, uint uid, uint gid, string? setpriv, string? runuser)
            {
                UserName = userName;
                Uid = uid;
                Gid = gid;
                _setpriv = setpriv;
                _runuser = runuser;
            }

            private readonly string? _setpriv;
            private readonly string? _runuser;
            public string UserName { get; }
            public uint Uid { get; }
            public uint Gid { get; }

            /// <summary>Null when this process is not root (the tools then run as the current user).</summary>
            public static async Task<RunAs?> ResolveAsync(string userName, TimeSpan timeout, CancellationToken ct)
            {
                if (Native.geteuid() != 0) return null;
                var id = FindExecutable("id") ?? "/usr/bin/id";
                var uid = await RunAsync(id, new[] { "-u", userName }, null, null, null, timeout, ct).ConfigureAwait(false);
                var gid = await RunAsync(id, new[] { "-g", userName }, null, null, null, timeout, ct).ConfigureAwait(false);
                if (uid.ExitCode != 0 || gid.ExitCode != 0
                    || !uint.TryParse(uid.Stdout.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var u)
                    || !uint.TryParse(gid.Stdout.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var g))
                {
                    throw new PostgresClusterException("Running as root, but the OS user '" + userName + "' that must run PostgreSQL (initdb refuses root) does not exist: " + uid.Output);
                }
                if (u == 0) throw new PostgresClusterException("The server OS user '" + userName + "' is root; PostgreSQL refuses to run as root.");
                var setpriv = FindExecutable("setpriv");
                var runuser = FindExecutable("runuser");
                if (setpriv == null && runuser == null) throw new PostgresClusterException("Running as root needs setpriv or runuser (util-linux) to run PostgreSQL as '" + userName + "'.");
                return new RunAs(userName, u, g, setpriv, runuser);
            }

            public (string File, List<string> Args) Wrap(string exe, IReadOnlyList<string> args)
            {
                var wrapped = new List<string>();
                string file;
                if (_setpriv != null)
                {
                    file = _setpriv;
                    wrapped.Add("--reuid=" + Uid.ToString(CultureInfo.InvariantCulture));
                    wrapped.Add("--regid=" + Gid.ToString(CultureInfo.InvariantCulture));
                    wrapped.Add("--init-groups");
                }
                else
                {
                    file = _runuser!;
                    wrapped.Add("-u");
                    wrapped.Add(UserName);
                }
                wrapped.Add("--");
                wrapped.Add(exe);
                wrapped.AddRange(args);
                return (file, wrapped);
            }

            public void Chown(params string?[] paths)
            {
                foreach (var p in paths)
                {
                    if (p == null) continue;
                    if (Native.chown(p, Uid, Gid) != 0)
                    {
                        throw new PostgresClusterException("chown " + p + " to " + UserName + " failed (errno " + Marshal.GetLastPInvokeError().ToString(CultureInfo.InvariantCulture) + ").");
                    }
                }
            }
        }

        private static class Native
        {
            [DllImport("libc", SetLastError = true)]
            public static extern uint geteuid();

            [DllImport("libc", SetLastError = true)]
            public static extern int chown([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint owner, uint group);

            [DllImport("libc", SetLastError = true)]
            public static extern int kill(int pid, int sig);
        }
    }
}
