using System;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using Npgsql;

namespace BastionTools.Sandbox
{
    /// <summary>Options for <see cref="RdsIamProxy.StartAsync"/>.</summary>
    public sealed class RdsIamProxyOptions
    {
        public const string DefaultEndpointName = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";

        /// <summary>The fake RDS endpoint name: the server certificate's name and the host a token must be signed for.</summary>
        public string EndpointName { get; set; } = DefaultEndpointName;
        /// <summary>More DNS names for the valid server certificate (e.g. a reader endpoint).</summary>
        public IList<string> AdditionalNames { get; } = new List<string>();
        /// <summary>The name of the "certificate for another hostname"; null: "other-" + <see cref="EndpointName"/>.</summary>
        public string? OtherHostName { get; set; }
        /// <summary>The port clients believe RDS listens on (tokens are signed for endpoint:this port; clients reach the proxy through a tunnel).</summary>
        public int AdvertisedPort { get; set; } = 5432;
        /// <summary>Where the proxy listens on 127.0.0.1; 0 picks a free port.</summary>
        public int ListenPort { get; set; }
        /// <summary>
        /// The instance's DbiResourceId, the resource part of rds-db:connect's ARN
        /// (arn:aws:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;DbiResourceId&gt;/&lt;db user&gt;), which the token's access key must be allowed.
        /// </summary>
        public string DbiResourceId { get; set; } = DefaultDbiResourceId;
        public const string DefaultDbiResourceId = "db-C0FFEESANDBOXEXAMPLE000001";
        /// <summary>
        /// The Aurora PostgreSQL cluster the front also plays (its writer, reader and custom endpoints and its member
        /// instance are names of the certificate, routed to the front); null: the front is a plain instance only.
        /// </summary>
        public RdsAuroraIdentity? Aurora { get; set; } = new();
        /// <summary>The role whose members must authenticate with a token (created NOLOGIN at start when missing).</summary>
        public string IamRole { get; set; } = "rds_iam";
        /// <summary>The certificate served at start (switch later with <see cref="RdsIamProxy.Certificate"/>).</summary>
        public RdsCertificateChoice Certificate { get; set; } = RdsCertificateChoice.Valid;
        /// <summary>How long a role-membership answer is reused.</summary>
        public TimeSpan MembershipCacheTtl { get; set; } = TimeSpan.FromSeconds(2);
        /// <summary>Bound on everything before the relay starts (TLS, startup, password, backend start), as authentication_timeout.</summary>
        public TimeSpan AuthenticationTimeout { get; set; } = TimeSpan.FromSeconds(30);
        /// <summary>Where the CA bundle's temp directory goes; null: the system temp directory.</summary>
        public string? TempRoot { get; set; }
        /// <summary>Receives one line per connection outcome (precise failure reasons; never tokens or passwords); null for silence.</summary>
        public Action<string>? Log { get; set; }
    }

    /// <summary>The proxy failed to start.</summary>
    public sealed class RdsIamProxyException : Exception
    {
        public RdsIamProxyException(string message) : base(message)
        {
        }

        public RdsIamProxyException(string message, Exception inner) : base(message, inner)
        {
        }
    }

    /// <summary>One authentication decision of the proxy (for tests: what happened and why, without secrets).</summary>
    public sealed class RdsIamAttempt
    {
        public RdsIamAttempt(string user, string database, bool iamUser, bool succeeded, string? reason, DateTime atUtc)
        {
            User = user;
            Database = database;
            IamUser = iamUser;
            Succeeded = succeeded;
            Reason = reason;
            AtUtc = atUtc;
        }

        public string User { get; }
        public string Database { get; }
        /// <summary>Whether the token path was taken (member of the IAM role, or a token-shaped password).</summary>
        public bool IamUser { get; }
        public bool Succeeded { get; }
        /// <summary>Why it failed (null on success).</summary>
        public string? Reason { get; }
        public DateTime AtUtc { get; }

        public override string ToString() => User + "@" + Database + (IamUser ? " [iam]" : "") + ": " + (Succeeded ? "ok" : "failed: " + Reason);
    }

    /// <summary>
    /// A front for the sandbox's real PostgreSQL that behaves as Amazon RDS does for IAM database authentication, on
    /// 127.0.0.1:<see cref="Port"/>. The PostgreSQL v3 protocol's front-end side: SSLRequest → 'S' and TLS with a
    /// certificate for <see cref="EndpointName"/> from the sandbox CA (<see cref="CaBundlePath"/>); GSSENCRequest → 'N';
    /// a StartupMessage without TLS → FATAL 28000 "no pg_hba.conf entry …" (RDS with rds.force_ssl). After the startup
    /// it asks for a cleartext password. Members of <see cref="IamRole"/> (checked in the real database as the superuser,
    /// cached briefly) must send a valid token (<see cref="RdsIamToken"/>, against the world's credentials, region and
    /// clock); other users their real password (checked by a SCRAM login to the cluster over TCP); a token-shaped
    /// password from a non-member fails as an IAM attempt. Every token failure reads as RDS's
    /// <c>FATAL 28P01 PAM authentication failed for user "x"</c>; the precise reason goes to the log only.
    /// <para>
    /// On success the proxy opens the real session without the user's password: at start it adds
    /// <c>local all all trust</c> to the cluster's pg_hba.conf, which applies only to the cluster's private Unix socket
    /// directory — mode 0700, owned by the server's OS user (postgres when the sandbox runs as root, else the sandbox's
    /// own user), so only root and that user can reach it; TCP keeps SCRAM. It sends the client's startup parameters
    /// there, passes the backend's AuthenticationOk, ParameterStatus, BackendKeyData and ReadyForQuery on, then relays
    /// raw bytes both ways until either side closes. CancelRequests (plain or inside TLS) are relayed to the backend.
    /// </para>
    /// </summary>
    public sealed class RdsIamProxy : IAsyncDisposable
    {
        private const int SslRequestCode = 80877103;
        private const int GssEncRequestCode = 80877104;
        private const int CancelRequestCode = 80877102;
        private const int MaxStartupLength = 10000;
        private const int MaxPasswordLength = 65536;
        private const string HbaMarker = "# BastionTools sandbox RDS-IAM front:";

        private readonly PostgresCluster _cluster;
        private readonly RdsIamProxyOptions _options;
        private readonly Action<string>? _log;
        private readonly NpgsqlDataSource _admin;
        private readonly CancellationTokenSource _stopping = new();
        private readonly ConcurrentDictionary<int, Connection> _connections = new();
        private readonly ConcurrentDictionary<string, (Membership Value, DateTime Until)> _membership = new(StringComparer.Ordinal);
        private readonly ConcurrentQueue<RdsIamAttempt> _attempts = new();
        private TcpListener? _listener;
        private Task? _acceptLoop;
        private int _nextId;
        private int _stopped;
        private long _accepted;
        private long _relayed;
        private long _rejected;
        private long _cancels;
        private int _certificate;

        private enum Membership
        {
            NoSuchRole,
            NotMember,
            Member,
        }

        private RdsIamProxy(PostgresCluster cluster, SandboxWorld world, RdsIamProxyOptions options, SandboxCertificates certificates, NpgsqlDataSource admin)
        {
            _cluster = cluster;
            World = world;
            _options = options;
            _log = options.Log;
            Certificates = certificates;
            _admin = admin;
            _certificate = (int)options.Certificate;
        }

        public SandboxWorld World { get; }
        /// <summary>The certificates (sandbox CA, valid server certificate, other CA, wrong host).</summary>
        public SandboxCertificates Certificates { get; }
        /// <summary>The sandbox CA bundle clients must trust (sslrootcert).</summary>
        public string CaBundlePath => Certificates.CaBundlePath;
        public string EndpointName => _options.EndpointName;
        /// <summary>All names the front answers for (the endpoint first, then <see cref="RdsIamProxyOptions.AdditionalNames"/>).</summary>
        public IReadOnlyList<string> Names => Certificates.Names;
        /// <summary>The port tokens are signed for (what clients think RDS listens on).</summary>
        public int AdvertisedPort => _options.AdvertisedPort;
        public string IamRole => _options.IamRole;
        public string DbiResourceId => _options.DbiResourceId;
        /// <summary>The Aurora cluster the front also plays, or null.</summary>
        public RdsAuroraIdentity? Aurora => _options.Aurora;
        /// <summary>The proxy's own port on 127.0.0.1.</summary>
        public int Port { get; private set; }
        public string Host => "127.0.0.1";
        /// <summary>How long <see cref="StartAsync"/> took (certificates, role, pg_hba reload, listener).</summary>
        public TimeSpan StartupTime { get; private set; }

        /// <summary>The certificate served to new connections; may be switched at any time.</summary>
        public RdsCertificateChoice Certificate
        {
            get => (RdsCertificateChoice)Volatile.Read(ref _certificate);
            set
            {
                _ = Certificates.For(value);
                Volatile.Write(ref _certificate, (int)value);
            }
        }

        public long AcceptedConnections => Interlocked.Read(ref _accepted);
        /// <summary>Connections that authenticated and reached the relay.</summary>
        public long RelayedConnections => Interlocked.Read(ref _relayed);
        /// <summary>Connections refused (no TLS, failed authentication, protocol errors, TLS failures).</summary>
        public long RejectedConnections => Interlocked.Read(ref _rejected);
        public long CancelRequests => Interlocked.Read(ref _cancels);
        /// <summary>Connections currently open (authenticating or relaying).</summary>
        public int ActiveConnections => _connections.Count;
        /// <summary>Authentication decisions so far, oldest first.</summary>
        public IReadOnlyList<RdsIamAttempt> Attempts => _attempts.ToArray();

        /// <summary>Forgets cached role memberships (after GRANT/REVOKE of the IAM role, for an immediate effect).</summary>
        public void InvalidateMembershipCache() => _membership.Clear();

        /// <summary>
        /// Starts the proxy for a running cluster: generates the certificates, creates the IAM role when missing, adds the
        /// socket-only trust line to pg_hba.conf (and waits for the reload), and listens on 127.0.0.1.
        /// </summary>
        public static async Task<RdsIamProxy> StartAsync(PostgresCluster cluster, SandboxWorld world, RdsIamProxyOptions? options = null, CancellationToken cancellationToken = default)
        {
            if (cluster == null) throw new ArgumentNullException(nameof(cluster));
            if (world == null) throw new ArgumentNullException(nameof(world));
            options ??= new RdsIamProxyOptions();
            if (string.IsNullOrWhiteSpace(options.EndpointName)) throw new ArgumentException("EndpointName is empty.", nameof(options));
            if (options.AdvertisedPort < 1 || options.AdvertisedPort > 65535) throw new ArgumentOutOfRangeException(nameof(options), "AdvertisedPort must be 1..65535.");
            if (options.ListenPort < 0 || options.ListenPort > 65535) throw new ArgumentOutOfRangeException(nameof(options), "ListenPort must be 0..65535.");
            if (string.IsNullOrEmpty(options.IamRole) || !options.IamRole.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '_'))
                throw new ArgumentException("IamRole must be a lower-case SQL identifier.", nameof(options));
            if (cluster.SocketDirectory == null) throw new RdsIamProxyException("The cluster has no Unix socket directory (its path is too long); the RDS-IAM front needs it to open sessions without passwords.");
            if (!cluster.IsRunning) throw new RdsIamProxyException("The cluster is not running.");

            var total = Stopwatch.StartNew();
            var names = new List<string> { options.EndpointName };
            names.AddRange(options.AdditionalNames.Where(n => !string.Equals(n, options.EndpointName, StringComparison.OrdinalIgnoreCase)));
            if (options.Aurora != null)
            {
                foreach (var n in options.Aurora.Names)
                {
                    if (!names.Contains(n, StringComparer.OrdinalIgnoreCase)) names.Add(n);
                }
            }
            var certificates = SandboxCertificates.Create(names, options.OtherHostName, options.TempRoot);
            var certMs = total.Elapsed.TotalMilliseconds;
            var adminBuilder = new NpgsqlConnectionStringBuilder(cluster.ConnectionString("postgres"))
            {
                ApplicationName = "bastiontools-rds-iam",
                MaxPoolSize = 4,
                Timeout = 10,
                CommandTimeout = 10,
                SslMode = SslMode.Disable,
            };
            var admin = NpgsqlDataSource.Create(adminBuilder.ConnectionString);
            var proxy = new RdsIamProxy(cluster, world, options, certificates, admin);
            try
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                cts.CancelAfter(TimeSpan.FromSeconds(30));
                await proxy.PrepareClusterAsync(cts.Token).ConfigureAwait(false);
                proxy.Listen();
                proxy.StartupTime = total.Elapsed;
                proxy._log?.Invoke("rds-iam: " + options.EndpointName + ":" + options.AdvertisedPort.ToString(CultureInfo.InvariantCulture) + " served on 127.0.0.1:"
                    + proxy.Port.ToString(CultureInfo.InvariantCulture) + " in " + total.Elapsed.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture)
                    + " ms (certificates " + certMs.ToString("0", CultureInfo.InvariantCulture) + " ms); CA bundle " + certificates.CaBundlePath);
                return proxy;
            }
            catch (Exception ex)
            {
                await proxy.StopAsync().ConfigureAwait(false);
                if (ex is OperationCanceledException && cancellationToken.IsCancellationRequested) throw;
                throw new RdsIamProxyException("The RDS-IAM front did not start: " + ex.Message, ex);
            }
        }

        private async Task PrepareClusterAsync(CancellationToken ct)
        {
            await using (var command = _admin.CreateCommand(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '" + IamRole + "') THEN CREATE ROLE " + IamRole + " NOLOGIN; END IF; END $$"))
            {
                await command.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
            }

            var hba = Path.Combine(_cluster.DataDirectory, "pg_hba.conf");
            var text = await File.ReadAllTextAsync(hba, ct).ConfigureAwait(false);
            if (!text.Contains(HbaMarker, StringComparison.Ordinal))
            {
                // First match wins: the trust line must come before the SCRAM "local" line. Rewriting the file in place keeps
                // its owner (the server's OS user) and mode.
                var trust = HbaMarker + " sessions are opened on the private Unix socket\n"
                    + "# directory (0700, server OS user only) without the user's password; TCP keeps SCRAM.\n"
                    + "local   all   all                trust\n";
                await File.WriteAllTextAsync(hba, trust + text, ct).ConfigureAwait(false);
                await using var reload = _admin.CreateCommand("SELECT pg_reload_conf()");
                await reload.ExecuteScalarAsync(ct).ConfigureAwait(false);
            }

            // The postmaster reloads asynchronously: wait until a passwordless socket login works.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                string failure;
                try
                {
                    using var backend = await ConnectBackendSocketAsync(ct).ConfigureAwait(false);
                    await using var stream = new NetworkStream(backend, ownsSocket: false);
                    await stream.WriteAsync(StartupMessage(196608, new[] { new KeyValuePair<string, string>("user", _cluster.SuperUser), new KeyValuePair<string, string>("database", "postgres") }), ct).ConfigureAwait(false);
                    var (type, body) = await ReadMessageAsync(stream, 1 << 20, ct).ConfigureAwait(false);
                    if (type == 'R' && body.Length >= 4 && BinaryPrimitives.ReadInt32BigEndian(body) == 0)
                    {
                        await stream.WriteAsync(new byte[] { (byte)'X', 0, 0, 0, 4 }, ct).ConfigureAwait(false);
                        return;
                    }
                    failure = type == 'E' ? ErrorText(body) : "backend answered '" + type + "'";
                }
                catch (Exception ex) when (ex is IOException || ex is SocketException)
                {
                    failure = ex.Message;
                }
                if (DateTime.UtcNow > deadline) throw new RdsIamProxyException("The cluster does not accept passwordless logins on its Unix socket after the pg_hba.conf reload: " + failure);
                await Task.Delay(25, ct).ConfigureAwait(false);
            }
        }

        private void Listen()
        {
            var listener = new TcpListener(IPAddress.Loopback, _options.ListenPort);
            listener.Server.NoDelay = true;
            listener.Start(512);
            _listener = listener;
            Port = ((IPEndPoint)listener.LocalEndpoint).Port;
            _acceptLoop = Task.Run(AcceptLoopAsync);
        }

        /// <summary>The "rds" block of the sandbox's JSON line.</summary>
        public JsonObject DescribeJson() => new()
        {
            ["endpoint"] = EndpointName,
            ["port"] = AdvertisedPort,
            ["proxyHost"] = Host,
            ["proxyPort"] = Port,
            ["caBundle"] = CaBundlePath,
            ["iamRole"] = IamRole,
            ["dbiResourceId"] = DbiResourceId,
            ["aurora"] = _options.Aurora?.DescribeJson(),
            ["startupMs"] = (int)StartupTime.TotalMilliseconds,
        };

        // ---- connections ---------------------------------------------------------------------------------------------

        private sealed class Connection : IDisposable
        {
            public Connection(int id, TcpClient client)
            {
                Id = id;
                Client = client;
            }

            public int Id { get; }
            public TcpClient Client { get; }
            public Stream? ClientStream { get; set; }
            public Socket? Backend { get; set; }

            public void Dispose()
            {
                try
                {
                    Backend?.Dispose();
                }
                catch (ObjectDisposedException)
                {
                }
                try
                {
                    ClientStream?.Dispose();
                }
                catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException)
                {
                }
                Client.Dispose();
            }
        }

        private async Task AcceptLoopAsync()
        {
            var listener = _listener!;
            while (!_stopping.IsCancellationRequested)
            {
                TcpClient client;
                try
                {
                    client = await listener.AcceptTcpClientAsync(_stopping.Token).ConfigureAwait(false);
                }
                catch (Exception) when (_stopping.IsCancellationRequested)
                {
                    return;
                }
                catch (SocketException ex)
                {
                    _log?.Invoke("rds-iam: accept failed: " + ex.Message);
                    continue;
                }
                client.NoDelay = true;
                Interlocked.Increment(ref _accepted);
                var connection = new Connection(Interlocked.Increment(ref _nextId), client);
                _connections[connection.Id] = connection;
                _ = Task.Run(() => HandleAsync(connection));
            }
        }

        private async Task HandleAsync(Connection connection)
        {
            var peer = connection.Client.Client.RemoteEndPoint is IPEndPoint ep ? ep.Address.ToString() : "127.0.0.1";
            var label = "rds-iam: #" + connection.Id.ToString(CultureInfo.InvariantCulture);
            try
            {
                using var auth = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
                auth.CancelAfter(_options.AuthenticationTimeout);
                var ready = await AuthenticateAsync(connection, peer, label, auth.Token).ConfigureAwait(false);
                if (ready == null)
                {
                    Interlocked.Increment(ref _rejected);
                    return;
                }
                Interlocked.Increment(ref _relayed);
                await RelayAsync(connection.ClientStream!, ready).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                Interlocked.Increment(ref _rejected);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref _rejected);
                _log?.Invoke(label + ": authentication timed out after " + _options.AuthenticationTimeout.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture) + " s");
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is AuthenticationException || ex is ObjectDisposedException || ex is InvalidDataException)
            {
                Interlocked.Increment(ref _rejected);
                _log?.Invoke(label + ": closed: " + ex.GetType().Name + ": " + ex.Message);
            }
            catch (Exception ex)
            {
                Interlocked.Increment(ref _rejected);
                _log?.Invoke(label + ": failed: " + ex);
            }
            finally
            {
                _connections.TryRemove(connection.Id, out _);
                connection.Dispose();
            }
        }

        /// <summary>Runs the front-end side up to the relay: returns the backend socket (the client has had AuthenticationOk) or null (rejected, answered, closed).</summary>
        private async Task<Socket?> AuthenticateAsync(Connection connection, string peer, string label, CancellationToken ct)
        {
            Stream stream = connection.Client.GetStream();
            connection.ClientStream = stream;
            var tls = false;
            string? sni = null;
            int protocol;
            byte[] startup;
            while (true)
            {
                var header = new byte[4];
                if (!await ReadFullyOrEofAsync(stream, header, ct).ConfigureAwait(false)) return null; // probe or client gave up
                var length = BinaryPrimitives.ReadInt32BigEndian(header);
                if (length < 8 || length > MaxStartupLength)
                {
                    _log?.Invoke(label + ": invalid length of startup packet (" + length.ToString(CultureInfo.InvariantCulture) + ")");
                    return null;
                }
                var body = new byte[length - 4];
                await stream.ReadExactlyAsync(body, ct).ConfigureAwait(false);
                var code = BinaryPrimitives.ReadInt32BigEndian(body);
                if (code == SslRequestCode)
                {
                    if (tls)
                    {
                        _log?.Invoke(label + ": SSLRequest inside TLS");
                        return null;
                    }
                    await stream.WriteAsync(new[] { (byte)'S' }, ct).ConfigureAwait(false);
                    var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                    connection.ClientStream = ssl;
                    var choice = Certificate;
                    try
                    {
                        await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                        {
                            ServerCertificate = Certificates.For(choice),
                            ClientCertificateRequired = false,
                            CertificateRevocationCheckMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
                        }, ct).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (ex is AuthenticationException || ex is IOException)
                    {
                        _log?.Invoke(label + ": TLS handshake failed (serving the " + choice + " certificate): " + (ex.InnerException?.Message ?? ex.Message));
                        return null;
                    }
                    stream = ssl;
                    tls = true;
                    sni = string.IsNullOrEmpty(ssl.TargetHostName) ? null : ssl.TargetHostName;
                    continue;
                }
                if (code == GssEncRequestCode)
                {
                    if (tls) return null;
                    await stream.WriteAsync(new[] { (byte)'N' }, ct).ConfigureAwait(false);
                    continue;
                }
                if (code == CancelRequestCode)
                {
                    if (body.Length == 12) await RelayCancelAsync(body, label, ct).ConfigureAwait(false);
                    return null;
                }
                if (code >> 16 != 3)
                {
                    await SendErrorAsync(stream, "0A000", "unsupported frontend protocol " + (code >> 16).ToString(CultureInfo.InvariantCulture) + "." + (code & 0xFFFF).ToString(CultureInfo.InvariantCulture)
                        + ": server supports 3.0 to 3.0", "postmaster.c", "ProcessStartupPacket", ct).ConfigureAwait(false);
                    return null;
                }
                protocol = code;
                startup = body;
                break;
            }

            var parameters = ParseStartupParameters(startup);
            var user = parameters.Where(p => p.Key == "user").Select(p => p.Value).FirstOrDefault();
            if (string.IsNullOrEmpty(user))
            {
                await SendErrorAsync(stream, "28000", "no PostgreSQL user name specified in startup packet", "postmaster.c", "ProcessStartupPacket", ct).ConfigureAwait(false);
                return null;
            }
            var database = parameters.Where(p => p.Key == "database").Select(p => p.Value).FirstOrDefault();
            if (string.IsNullOrEmpty(database)) database = user;

            if (!tls)
            {
                // RDS with rds.force_ssl=1 (the default from PostgreSQL 15 on RDS) has only hostssl lines.
                var encryption = _cluster.ServerVersionNum >= 140000 ? "no encryption" : "SSL off";
                Reject(user, database, false, "no TLS (" + encryption + ")", label);
                await SendErrorAsync(stream, "28000", "no pg_hba.conf entry for host \"" + peer + "\", user \"" + user + "\", database \"" + database + "\", " + encryption,
                    "auth.c", "ClientAuthentication", ct).ConfigureAwait(false);
                return null;
            }

            await stream.WriteAsync(new byte[] { (byte)'R', 0, 0, 0, 8, 0, 0, 0, 3 }, ct).ConfigureAwait(false);
            await stream.FlushAsync(ct).ConfigureAwait(false);
            var typeByte = new byte[1];
            if (!await ReadFullyOrEofAsync(stream, typeByte, ct).ConfigureAwait(false))
            {
                // libpq does this when it has no password yet (it reconnects after asking for one).
                _log?.Invoke(label + ": " + user + "@" + database + ": the client closed instead of sending a password");
                return null;
            }
            if (typeByte[0] != (byte)'p')
            {
                await SendErrorAsync(stream, "08P01", "expected password response, got message type " + typeByte[0].ToString(CultureInfo.InvariantCulture), "auth.c", "recv_password_packet", ct).ConfigureAwait(false);
                return null;
            }
            var lengthBytes = new byte[4];
            await stream.ReadExactlyAsync(lengthBytes, ct).ConfigureAwait(false);
            var passwordLength = BinaryPrimitives.ReadInt32BigEndian(lengthBytes);
            if (passwordLength < 5 || passwordLength > MaxPasswordLength)
            {
                await SendErrorAsync(stream, "08P01", "invalid password packet size", "auth.c", "recv_password_packet", ct).ConfigureAwait(false);
                return null;
            }
            var passwordBytes = new byte[passwordLength - 4];
            await stream.ReadExactlyAsync(passwordBytes, ct).ConfigureAwait(false);
            var end = Array.IndexOf(passwordBytes, (byte)0);
            var password = Encoding.UTF8.GetString(passwordBytes, 0, end < 0 ? passwordBytes.Length : end);

            var membership = await MembershipAsync(user, ct).ConfigureAwait(false);
            if (membership == Membership.Member || RdsIamToken.LooksLikeToken(password))
            {
                var reason = membership switch
                {
                    Membership.Member => RdsIamToken.Validate(password, user, MeantHost(sni, RdsIamToken.SignedHost(password)), AdvertisedPort, World, World.Clock.UtcNow)
                        ?? RdsIamToken.AuthorizeConnect(password, user, ResourceIdFor(MeantHost(sni, RdsIamToken.SignedHost(password))), World),
                    Membership.NotMember => "the role is not a member of " + IamRole + " (a token was sent as its password)",
                    _ => "the role does not exist (a token was sent as its password)",
                };
                if (reason != null)
                {
                    Reject(user, database, true, reason, label);
                    await SendErrorAsync(stream, "28P01", "PAM authentication failed for user \"" + user + "\"", "auth.c", "auth_failed", ct).ConfigureAwait(false);
                    return null;
                }
            }
            else
            {
                var reason = password.Length == 0 ? "empty password" : await CheckPasswordAsync(user, database, password, ct).ConfigureAwait(false);
                if (reason != null)
                {
                    Reject(user, database, false, reason, label);
                    await SendErrorAsync(stream, "28P01", "password authentication failed for user \"" + user + "\"", "auth.c", "auth_failed", ct).ConfigureAwait(false);
                    return null;
                }
            }

            // Authenticated: open the real session on the private socket with the client's own startup parameters.
            var backend = await ConnectBackendSocketAsync(ct).ConfigureAwait(false);
            connection.Backend = backend;
            var backendStream = new NetworkStream(backend, ownsSocket: false);
            await backendStream.WriteAsync(StartupMessage(protocol, parameters), ct).ConfigureAwait(false);
            while (true)
            {
                var (type, body) = await ReadMessageAsync(backendStream, 1 << 20, ct).ConfigureAwait(false);
                var raw = RawMessage(type, body);
                if (type == 'R' && body.Length >= 4 && BinaryPrimitives.ReadInt32BigEndian(body) == 0)
                {
                    await stream.WriteAsync(raw, ct).ConfigureAwait(false);
                    await stream.FlushAsync(ct).ConfigureAwait(false);
                    Record(user, database, membership == Membership.Member, null, label);
                    return backend;
                }
                if (type == 'v')
                {
                    // NegotiateProtocolVersion (a newer minor version or _pq_ options): the client must see it.
                    await stream.WriteAsync(raw, ct).ConfigureAwait(false);
                    continue;
                }
                if (type == 'E')
                {
                    // The backend's own refusal (no such database, NOLOGIN role, too many connections, ...): relay it verbatim.
                    Reject(user, database, membership == Membership.Member, "the backend refused the session: " + ErrorText(body), label);
                    await stream.WriteAsync(raw, ct).ConfigureAwait(false);
                    await stream.FlushAsync(ct).ConfigureAwait(false);
                    return null;
                }
                Reject(user, database, membership == Membership.Member, "the backend answered '" + type + "' instead of AuthenticationOk (is the socket trust line in pg_hba.conf?)", label);
                await SendErrorAsync(stream, "28000", "could not open the session", "auth.c", "ClientAuthentication", ct).ConfigureAwait(false);
                return null;
            }
        }

        /// <summary>
        /// The endpoint name the client meant: its TLS SNI when that is one of the certificate's names (libpq sends it for
        /// host names), else <see cref="EndpointName"/> (clients that connect to 127.0.0.1 through a tunnel send no SNI).
        /// </summary>
        /// <remarks>
        /// Without a usable SNI, a token signed for one of the Aurora cluster's names (writer, reader, custom endpoint, member
        /// instance) is taken as meant for that name: all of them lead to the same database, which cannot tell which one
        /// the client dialled (RDS accepts a token for any endpoint of the cluster that routes to the instance).
        /// </remarks>
        private string MeantHost(string? sni, string? tokenHost = null)
        {
            if (sni != null && Names.Contains(sni, StringComparer.OrdinalIgnoreCase)) return sni;
            if (tokenHost != null && Aurora != null && Aurora.Names.Contains(tokenHost, StringComparer.OrdinalIgnoreCase)) return tokenHost;
            return EndpointName;
        }

        /// <summary>
        /// The resource id of rds-db:connect's ARN for a connection meant for <paramref name="host"/>: the Aurora cluster's
        /// DbClusterResourceId for its names (Aurora authorizes every endpoint of a cluster against the cluster), else the
        /// instance's DbiResourceId.
        /// </summary>
        private string ResourceIdFor(string host) =>
            Aurora != null && Aurora.Names.Contains(host, StringComparer.OrdinalIgnoreCase) ? Aurora.ClusterResourceId : DbiResourceId;

        private async Task RelayAsync(Stream client, Socket backend)
        {
            await using var backendStream = new NetworkStream(backend, ownsSocket: false);
            var up = PumpAsync(client, backendStream);
            var down = PumpAsync(backendStream, client);
            await Task.WhenAny(up, down).ConfigureAwait(false);
            // Either side closed: end the other (the backend sees EOF and ends the session; the client sees the close).
            try
            {
                backend.Shutdown(SocketShutdown.Both);
            }
            catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
            {
            }
            try
            {
                client.Dispose();
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException)
            {
            }
            await Task.WhenAll(up, down).ConfigureAwait(false);
        }

        private static async Task PumpAsync(Stream from, Stream to)
        {
            var buffer = new byte[65536];
            try
            {
                while (true)
                {
                    var n = await from.ReadAsync(buffer).ConfigureAwait(false);
                    if (n == 0) return;
                    await to.WriteAsync(buffer.AsMemory(0, n)).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException || ex is InvalidOperationException || ex is OperationCanceledException)
            {
                // The other side closed; RelayAsync ends both.
            }
        }

        private async Task RelayCancelAsync(byte[] body, string label, CancellationToken ct)
        {
            Interlocked.Increment(ref _cancels);
            try
            {
                using var backend = await ConnectBackendSocketAsync(ct).ConfigureAwait(false);
                var message = new byte[16];
                BinaryPrimitives.WriteInt32BigEndian(message, 16);
                body.CopyTo(message, 4);
                await backend.SendAsync(message, SocketFlags.None, ct).ConfigureAwait(false);
                // The postmaster closes without answering; wait for that (bounded) so the signal is on its way.
                var sink = new byte[1];
                using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
                wait.CancelAfter(TimeSpan.FromSeconds(2));
                await backend.ReceiveAsync(sink, SocketFlags.None, wait.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException || ex is IOException || ex is OperationCanceledException)
            {
                _log?.Invoke(label + ": relaying a CancelRequest failed: " + ex.Message);
                return;
            }
            _log?.Invoke(label + ": CancelRequest relayed");
        }

        private async Task<Socket> ConnectBackendSocketAsync(CancellationToken ct)
        {
            var path = Path.Combine(_cluster.SocketDirectory!, ".s.PGSQL." + _cluster.Port.ToString(CultureInfo.InvariantCulture));
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
                timeout.CancelAfter(TimeSpan.FromSeconds(10));
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), timeout.Token).ConfigureAwait(false);
                return socket;
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }

        // ---- decisions ----------------------------------------------------------------------------------------------

        private async Task<Membership> MembershipAsync(string user, CancellationToken ct)
        {
            if (_membership.TryGetValue(user, out var cached) && cached.Until > DateTime.UtcNow) return cached.Value;
            // Direct or inherited membership through pg_auth_members only: a superuser is not implicitly an IAM user here
            // (pg_has_role would say every superuser is a member of everything).
            await using var command = _admin.CreateCommand(
                "WITH RECURSIVE member_of(roleid) AS ("
                + " SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.member WHERE r.rolname = $1"
                + " UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN member_of ON m.member = member_of.roleid)"
                + " SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1),"
                + " EXISTS (SELECT FROM member_of JOIN pg_catalog.pg_roles g ON g.oid = member_of.roleid WHERE g.rolname = $2)");
            command.Parameters.Add(new NpgsqlParameter { Value = user });
            command.Parameters.Add(new NpgsqlParameter { Value = IamRole });
            await using var reader = await command.ExecuteReaderAsync(ct).ConfigureAwait(false);
            await reader.ReadAsync(ct).ConfigureAwait(false);
            var value = !reader.GetBoolean(0) ? Membership.NoSuchRole : reader.GetBoolean(1) ? Membership.Member : Membership.NotMember;
            _membership[user] = (value, DateTime.UtcNow + _options.MembershipCacheTtl);
            return value;
        }

        /// <summary>Null when <paramref name="password"/> is the user's real password (a SCRAM login to the cluster over TCP); else why not.</summary>
        private async Task<string?> CheckPasswordAsync(string user, string database, string password, CancellationToken ct)
        {
            var builder = new NpgsqlConnectionStringBuilder
            {
                Host = _cluster.Host,
                Port = _cluster.Port,
                Username = user,
                Password = password,
                Database = database,
                Pooling = false,
                Timeout = 10,
                SslMode = SslMode.Disable,
                ServerCompatibilityMode = ServerCompatibilityMode.NoTypeLoading,
                ApplicationName = "bastiontools-rds-iam-password-check",
            };
            await using var connection = new NpgsqlConnection(builder.ConnectionString);
            try
            {
                await connection.OpenAsync(ct).ConfigureAwait(false);
                return null;
            }
            catch (PostgresException ex) when (ex.SqlState == "28P01")
            {
                return "wrong password";
            }
            catch (PostgresException ex) when (ex.SqlState != "28000")
            {
                // Authentication passed; the session itself failed (no such database, ...): the real session will say so.
                return null;
            }
            catch (PostgresException ex)
            {
                return "the cluster refused the password check: " + ex.SqlState + " " + ex.MessageText;
            }
            catch (NpgsqlException ex)
            {
                return "the password check failed: " + ex.Message;
            }
        }

        private void Reject(string user, string database, bool iam, string reason, string label) => Record(user, database, iam, reason, label);

        private void Record(string user, string database, bool iam, string? reason, string label)
        {
            _attempts.Enqueue(new RdsIamAttempt(user, database, iam, reason == null, reason, World.Clock.UtcNow));
            while (_attempts.Count > 1000 && _attempts.TryDequeue(out _))
            {
            }
            _log?.Invoke(label + ": " + user + "@" + database + (iam ? " (IAM)" : "") + (reason == null ? ": authenticated, relaying" : ": refused: " + reason));
        }

        // ---- protocol helpers ----------------------------------------------------------------------------------------

        private static List<KeyValuePair<string, string>> ParseStartupParameters(byte[] body)
        {
            var list = new List<KeyValuePair<string, string>>();
            var i = 4;
            while (i < body.Length && body[i] != 0)
            {
                var keyEnd = Array.IndexOf(body, (byte)0, i);
                if (keyEnd < 0) throw new InvalidDataException("invalid startup packet layout");
                var valueEnd = Array.IndexOf(body, (byte)0, keyEnd + 1);
                if (valueEnd < 0) throw new InvalidDataException("invalid startup packet layout");
                list.Add(new KeyValuePair<string, string>(Encoding.UTF8.GetString(body, i, keyEnd - i), Encoding.UTF8.GetString(body, keyEnd + 1, valueEnd - keyEnd - 1)));
                i = valueEnd + 1;
            }
            return list;
        }

        private static byte[] StartupMessage(int protocol, IEnumerable<KeyValuePair<string, string>> parameters)
        {
            using var ms = new MemoryStream();
            ms.Write(new byte[8]);
            foreach (var p in parameters)
            {
                ms.Write(Encoding.UTF8.GetBytes(p.Key));
                ms.WriteByte(0);
                ms.Write(Encoding.UTF8.GetBytes(p.Value));
                ms.WriteByte(0);
            }
            ms.WriteByte(0);
            var bytes = ms.ToArray();
            BinaryPrimitives.WriteInt32BigEndian(bytes, bytes.Length);
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4), protocol);
            return bytes;
        }

        private static async Task<(char Type, byte[] Body)> ReadMessageAsync(Stream stream, int maxLength, CancellationToken ct)
        {
            var header = new byte[5];
            await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
            var length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
            if (length < 4 || length > maxLength) throw new InvalidDataException("invalid message length " + length.ToString(CultureInfo.InvariantCulture) + " from the backend");
            var body = new byte[length - 4];
            await stream.ReadExactlyAsync(body, ct).ConfigureAwait(false);
            return ((char)header[0], body);
        }

        private static byte[] RawMessage(char type, byte[] body)
        {
            var raw = new byte[5 + body.Length];
            raw[0] = (byte)type;
            BinaryPrimitives.WriteInt32BigEndian(raw.AsSpan(1), body.Length + 4);
            body.CopyTo(raw, 5);
            return raw;
        }

        private static async Task<bool> ReadFullyOrEofAsync(Stream stream, byte[] buffer, CancellationToken ct)
        {
            var read = 0;
            while (read < buffer.Length)
            {
                var n = await stream.ReadAsync(buffer.AsMemory(read), ct).ConfigureAwait(false);
                if (n == 0)
                {
                    if (read == 0) return false;
                    throw new EndOfStreamException("the client closed in the middle of a message");
                }
                read += n;
            }
            return true;
        }

        /// <summary>An ErrorResponse as the PostgreSQL server writes it (S, V, C, M, F, R), then flush.</summary>
        private static async Task SendErrorAsync(Stream stream, string code, string message, string file, string routine, CancellationToken ct)
        {
            using var ms = new MemoryStream();
            void Field(char type, string value)
            {
                ms.WriteByte((byte)type);
                ms.Write(Encoding.UTF8.GetBytes(value));
                ms.WriteByte(0);
            }
            Field('S', "FATAL");
            Field('V', "FATAL");
            Field('C', code);
            Field('M', message);
            Field('F', file);
            Field('R', routine);
            ms.WriteByte(0);
            var raw = RawMessage('E', ms.ToArray());
            try
            {
                await stream.WriteAsync(raw, ct).ConfigureAwait(false);
                await stream.FlushAsync(ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException)
            {
                // The client went away first.
            }
        }

        private static string ErrorText(byte[] body)
        {
            string? code = null, message = null;
            var i = 0;
            while (i < body.Length && body[i] != 0)
            {
                var type = (char)body[i];
                var end = Array.IndexOf(body, (byte)0, i + 1);
                if (end < 0) break;
                var value = Encoding.UTF8.GetString(body, i + 1, end - i - 1);
                if (type == 'C') code = value;
                else if (type == 'M') message = value;
                i = end + 1;
            }
            return (code ?? "?????") + " " + (message ?? "(no message)");
        }

        // ---- stop ----------------------------------------------------------------------------------------------------

        /// <summary>Stops listening, closes every connection (bounded), removes the CA bundle directory. Idempotent. The pg_hba.conf line stays until the cluster is thrown away.</summary>
        public async Task StopAsync()
        {
            if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
            _stopping.Cancel();
            try
            {
                _listener?.Stop();
            }
            catch (SocketException)
            {
            }
            foreach (var c in _connections.Values) c.Dispose();
            if (_acceptLoop != null) await Task.WhenAny(_acceptLoop, Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
            while (!_connections.IsEmpty && DateTime.UtcNow < deadline) await Task.Delay(20).ConfigureAwait(false);
            await _admin.DisposeAsync().ConfigureAwait(false);
            Certificates.Dispose();
            _log?.Invoke("rds-iam: stopped (" + AcceptedConnections.ToString(CultureInfo.InvariantCulture) + " connections, " + RelayedConnections.ToString(CultureInfo.InvariantCulture) + " relayed, "
                + RejectedConnections.ToString(CultureInfo.InvariantCulture) + " refused)");
        }

        public async ValueTask DisposeAsync()
        {
            await StopAsync().ConfigureAwait(false);
            _stopping.Dispose();
        }
    }
}
