using System;
using System.Management.Automation;
using System.Security.Cryptography.X509Certificates;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;
using Npgsql;

namespace BastionTools.Postgres
{
    /// <summary>What an IAM database connection needs to know.</summary>
    internal sealed class IamDataSourceOptions
    {
        /// <summary>The RDS endpoint: what the token is signed for and what the certificate must name.</summary>
        public string Endpoint { get; set; } = "";

        /// <summary>The port RDS listens on (the token is signed for endpoint:port).</summary>
        public int EndpointPort { get; set; } = 5432;

        /// <summary>Where the bytes go: the local end of the tunnel.</summary>
        public string ConnectHost { get; set; } = "127.0.0.1";
        public int ConnectPort { get; set; }

        public string UserName { get; set; } = "";
        public string Database { get; set; } = "postgres";
        public string Region { get; set; } = "";
        public RdsSslMode SslMode { get; set; } = RdsSslMode.VerifyFull;
        public string RootCertificatePath { get; set; } = "";

        public int CommandTimeoutSeconds { get; set; } = 30;

        /// <summary>A real password instead of IAM tokens (the master user for Grant-RdsIamUser). Never logged.</summary>
        public string? StaticPassword { get; set; }
        public int MaxPoolSize { get; set; } = 20;
        public string ApplicationName { get; set; } = "BastionTools";

        /// <summary>
        /// The tunnel whose listener <see cref="ConnectPort"/> is. Once it no longer listens, the port may be anybody's:
        /// the data source then refuses to connect or sign a token. Null for a direct connection (tests).
        /// </summary>
        public Ssm.PortForwardingSession? Tunnel { get; set; }
    }

    /// <summary>
    /// An Npgsql data source for an RDS database reached through a tunnel with IAM authentication: every new physical
    /// connection logs in with a token freshly signed for the RDS endpoint (so a pool lives for hours past any one
    /// token's 15 minutes), and TLS is validated against the RDS CA bundle and the endpoint name although the socket
    /// goes to 127.0.0.1.
    /// </summary>
    internal sealed class IamDataSource : IAsyncDisposable, IDisposable
    {
        private readonly Func<AwsKeys> _keys;
        private readonly Func<DateTime> _clock;
        private readonly Redactor _redactor;

        public IamDataSource(IamDataSourceOptions options, Func<AwsKeys> keys, Redactor redactor, Func<DateTime>? clock = null)
        {
            Options = options;
            _keys = keys;
            _redactor = redactor;
            _clock = clock ?? (() => DateTime.UtcNow);
            Validator = new RdsCertificateValidator(RdsCertificateValidator.LoadBundle(options.RootCertificatePath), options.Endpoint, options.SslMode);

            var csb = new NpgsqlConnectionStringBuilder
            {
                Host = options.ConnectHost,
                Port = options.ConnectPort,
                Username = options.UserName,
                Database = options.Database,
                SslMode = SslMode.Require,
                Pooling = true,
                MaxPoolSize = options.MaxPoolSize,
                CommandTimeout = options.CommandTimeoutSeconds,
                Timeout = 30,
                ApplicationName = options.ApplicationName,
                // The token is a password Npgsql must never keep in a connection string it could show.
                PersistSecurityInfo = false,
            };
            if (options.StaticPassword != null)
            {
                redactor.Add(options.StaticPassword);
                csb.Password = options.StaticPassword;
            }
            var builder = new NpgsqlDataSourceBuilder(csb.ConnectionString);
            builder.UseUserCertificateValidationCallback(Validator.Validate);
            if (options.StaticPassword == null)
            {
                // A token is signed for every new physical connection (signing is local and takes microseconds), so a
                // pool that lives for hours never presents an expired one.
                builder.UsePasswordProvider(_ => NewToken(), (_, _) => new ValueTask<string>(NewToken()));
            }
            DataSource = builder.Build();
        }

        public IamDataSourceOptions Options { get; }
        public RdsCertificateValidator Validator { get; }
        internal NpgsqlDataSource DataSource { get; }

        /// <summary>Tokens signed so far (one per physical connection).</summary>
        public int TokensIssued => _tokensIssued;

        private int _tokensIssued;

        /// <summary>A token for the endpoint; registered with the redactor so it never reaches a stream.</summary>
        public string NewToken()
        {
            EnsureTunnel();
            var token = RdsAuthToken.Generate(Options.Endpoint, Options.EndpointPort, Options.UserName, Options.Region, _keys(), _clock());
            _redactor.Add(token);
            Interlocked.Increment(ref _tokensIssued);
            return token;
        }

        public async Task<NpgsqlConnection> OpenAsync(CancellationToken cancellationToken)
        {
            // Before the pool hands out anything (an idle connection, or a new one to 127.0.0.1:port).
            EnsureTunnel();
            try
            {
                return await DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (FindTunnelClosed(ex) is { } closed)
            {
                // The tunnel stopped while connecting: the password provider refused to sign a token.
                throw closed;
            }
            catch (Exception ex) when (ex is NpgsqlException || ex is System.IO.IOException || ex is System.Security.Authentication.AuthenticationException)
            {
                throw Translate(ex);
            }
        }

        /// <summary>
        /// Refuses (DatabaseConnectionClosed) when the data source's tunnel no longer serves its port: after
        /// Stop-BastionSession the port 127.0.0.1:ConnectPort may belong to another program, maybe another user's, which
        /// must receive neither a connection nor a token (under -SslMode Require nothing else would stop that).
        /// </summary>
        internal void EnsureTunnel()
        {
            var tunnel = Options.Tunnel;
            if (tunnel == null || tunnel.IsServing) return;
            throw new BastionToolsException(ErrorIds.DatabaseConnectionClosed, ErrorCategory.ResourceUnavailable,
                $"The connection's tunnel (session {tunnel.SessionId}) is {(tunnel.IsStopping ? "stopped" : tunnel.State.ToString().ToLowerInvariant())}: nothing was sent to {Options.ConnectHost}:{Options.ConnectPort.ToString(System.Globalization.CultureInfo.InvariantCulture)}, which another program may hold now, and no token was signed.",
                tunnel.SessionId,
                "Connect again with Connect-IamPostgres (a new tunnel), or pass a running session with -Session.");
        }

        private static BastionToolsException? FindTunnelClosed(Exception? ex)
        {
            for (; ex != null; ex = ex.InnerException)
            {
                if (ex is BastionToolsException { ErrorId: ErrorIds.DatabaseConnectionClosed } b) return b;
            }
            return null;
        }

        /// <summary>Turns a connection failure into a clear, secret-free error.</summary>
        internal BastionToolsException Translate(Exception ex)
        {
            if (Validator.LastFailure != null)
            {
                return new BastionToolsException(ErrorIds.DatabaseTlsFailed, ErrorCategory.SecurityError,
                    $"The database at {Options.Endpoint} is not trusted: {Validator.LastFailure}. Nothing was sent to it.",
                    Options.Endpoint,
                    "Check -DbHost (it must be the RDS endpoint name), or pass -SslRootCertificate with the CA bundle for this region.");
            }
            if (ex is PostgresException pg && pg.SqlState == "28P01")
            {
                // RDS answers every refused IAM login with the same text; say what it can mean (the missing rds-db:connect
                // permission among it), since the server will not.
                return new BastionToolsException(ErrorIds.DatabaseLoginFailed, ErrorCategory.AuthenticationError,
                    _redactor.Redact(pg.MessageText) + " (SQLSTATE 28P01)." + (Options.StaticPassword != null ? "" :
                        $" RDS gives no reason for a refused IAM login: either the credentials' IAM policy does not allow rds-db:connect on arn:aws:rds-db:{Options.Region}:<account>:dbuser:<DbiResourceId>/{Options.UserName}, or {Options.UserName} is not a member of rds_iam, or the token was signed for another endpoint, port or region."),
                    Options.UserName,
                    Options.StaticPassword != null
                        ? "Check the user name and password (-Credential)."
                        : "Check that the user exists, is a member of rds_iam (Grant-RdsIamUser), that the IAM policy allows rds-db:connect for it, and that -DbHost/-DbPort/-Region are the database's.");
            }
            var message = ex is PostgresException p ? $"{p.MessageText} (SQLSTATE {p.SqlState})" : ex.Message;
            return new BastionToolsException(ErrorIds.DatabaseConnectFailed, ErrorCategory.ConnectionError,
                $"Could not connect to {Options.Endpoint} as {Options.UserName}: {_redactor.Redact(message)}", Options.Endpoint, null, null);
        }

        // Through the interfaces: on .NET 6+ the data source's base class (DbDataSource) lives in the framework, in
        // Npgsql's netstandard2.0 build in Npgsql itself; naming it in IL would tie this assembly to one of the two.
        public ValueTask DisposeAsync() => ((IAsyncDisposable)DataSource).DisposeAsync();

        public void Dispose() => ((IDisposable)DataSource).Dispose();
    }
}
