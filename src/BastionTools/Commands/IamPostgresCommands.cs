using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Management.Automation;
using System.Threading;
using BastionTools.Aws;
using BastionTools.Postgres;
using BastionTools.Ssm;
using Npgsql;

namespace BastionTools.Commands
{
    /// <summary>
    /// Connect-IamPostgres: a pooled PostgreSQL connection to an RDS database through a bastion, logging in with IAM
    /// tokens (no password), TLS verified against the RDS CA bundle and the endpoint name. With -Interactive, psql.
    /// </summary>
    [Cmdlet(VerbsCommunications.Connect, "IamPostgres", DefaultParameterSetName = ParameterSets.Target)]
    [OutputType(typeof(IamPostgresConnection))]
    public sealed class ConnectIamPostgresCommand : DatabaseTunnelCmdlet
    {
        [Parameter(Mandatory = true)]
        [Alias("DbUser", "User")]
        [ValidateNotNullOrEmpty]
        public string UserName { get; set; } = "";

        /// <summary>Start psql on this console through the tunnel; the tunnel ends when psql exits.</summary>
        [Parameter]
        [Alias("Psql")]
        public SwitchParameter Interactive { get; set; }

        /// <summary>Extra arguments for psql (with -Interactive), e.g. @('-c', 'select 1').</summary>
        [Parameter]
        public string[]? PsqlArgument { get; set; }

        /// <summary>The psql executable (default: psql from PATH).</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string? PsqlPath { get; set; }

        [Parameter]
        [ValidateRange(1, 3600)]
        public int CommandTimeout { get; set; } = 30;

        private string? _psql;

        protected override void ProcessRecord()
        {
            if (Interactive)
            {
                // Before any tunnel is opened: nothing to clean up when psql is missing.
                var windows = System.Environment.OSVersion.Platform == PlatformID.Win32NT;
                _psql = PsqlPath != null ? (File.Exists(GetUnresolvedProviderPathFromPSPath(PsqlPath)) ? GetUnresolvedProviderPathFromPSPath(PsqlPath) : null) : FindOnPath(PsqlLauncher.ExecutableName(windows));
                if (_psql == null)
                {
                    ThrowTerminatingError(new BastionToolsException(ErrorIds.PsqlNotFound, ErrorCategory.ObjectNotFound,
                        PsqlPath != null ? $"psql was not found at '{PsqlPath}'." : "psql is not installed (not found on PATH).", "psql",
                        "Install the PostgreSQL client (apt-get install postgresql-client, brew install libpq, or the Windows installer), or pass -PsqlPath.").ToErrorRecord());
                }
                if (PsqlLauncher.RefusalReason(_psql!, windows) is { } refusal)
                {
                    ThrowTerminatingError(new BastionToolsException(ErrorIds.PsqlNotExecutable, ErrorCategory.InvalidArgument, refusal, PsqlPath,
                        "Pass -PsqlPath with psql.exe itself (for example C:\\Program Files\\PostgreSQL\\17\\bin\\psql.exe).").ToErrorRecord());
                }
            }
            ResolveDatabase();
            var bundle = ResolveTrust();
            if (!RdsEndpoint.IsValidHost(DbHost))
            {
                ThrowTerminatingError(new BastionToolsException(ErrorIds.RdsHostnameInvalid, ErrorCategory.InvalidArgument,
                    $"'{DbHost}' is not a valid host name.", DbHost, "Pass the RDS endpoint name.").ToErrorRecord());
            }

            GetApi();
            WriteDebugSafe($"Tokens: signed for {RdsEndpoint.HostPort(DbHost, DbPort)}, user {UserName}.");
            if (Session == null && !ShouldProcess(Selector().ToString(), $"Open a tunnel to {DbHost}:{DbPort} and connect as {UserName}")) return;
            var session = OpenTunnel("Connect-IamPostgres", out var owns);
            if (session == null) return;

            var keys = KeySource();
            var redactor = Redactor;
            IamDataSource NewSource(BastionSession tunnel)
            {
                var options = DataSourceOptions(tunnel, bundle, UserName);
                options.CommandTimeoutSeconds = CommandTimeout;
                return new IamDataSource(options, keys, redactor);
            }

            // A tunnel this command opens is reopened when it ends on its own (idle timeout, TerminateSession, agent
            // restart): the same bastion selector, destination and options, a new session.
            ReopeningConnection.Reopen? reopen = null;
            if (owns)
            {
                var opener = new TunnelOpener(GetApi(), Selector(), new PortForwardingRequest { RemoteHost = DbHost, RemotePort = DbPort }, NewChannelOptions());
                reopen = opener.OpenAsync;
            }
            ReopeningConnection engine;
            try
            {
                engine = new ReopeningConnection(session, NewSource, reopen);
            }
            catch (Exception ex) when (ex is InvalidDataException || ex is System.Security.Cryptography.CryptographicException || ex is FormatException)
            {
                CloseTunnel(session, owns);
                ThrowTerminatingError(new BastionToolsException(ErrorIds.SslRootCertificateInvalid, ErrorCategory.InvalidData,
                    $"The trust bundle '{bundle}' can't be read: {ex.Message}", bundle).ToErrorRecord());
                return;
            }

            if (Interactive)
            {
                RunPsql(engine.Source, session, owns);
                return;
            }

            WriteVerboseSafe($"Connecting to {DbHost}:{DbPort}/{Database} as {UserName} through 127.0.0.1:{session.LocalPort} (TLS {SslMode}).");
            var opened = false;
            var version = "";
            try
            {
                opened = TryRun(async ct =>
                {
                    using var conn = await engine.Source.OpenAsync(ct).ConfigureAwait(false);
                    return conn.PostgreSqlVersion.ToString();
                }, out version);
            }
            finally
            {
                // Also when the error stops the pipeline (-ErrorAction Stop throws out of WriteError): no tunnel is left behind.
                if (!opened)
                {
                    engine.Source.Dispose();
                    CloseTunnel(session, owns);
                }
            }
            if (!opened) return;
            if (owns)
            {
                engine.SessionReplaced += (old, fresh) =>
                {
                    SessionRegistry.Remove(old);
                    SessionRegistry.Add(fresh);
                };
            }
            var connection = new IamPostgresConnection(engine, version);
            ConnectionRegistry.Add(connection);
            WriteObject(connection);
        }

        private void RunPsql(IamDataSource source, BastionSession session, bool owns)
        {
            try
            {
                var psql = _psql!;
                var sslmode = SslMode switch { RdsSslMode.VerifyFull => "verify-full", RdsSslMode.VerifyCA => "verify-ca", _ => "require" };
                var conninfo = $"host={DbHost} hostaddr=127.0.0.1 port={session.LocalPort} user={Quote(UserName)} dbname={Quote(Database)} sslmode={sslmode} sslrootcert={Quote(source.Options.RootCertificatePath)} application_name=BastionTools";
                var psi = new ProcessStartInfo(psql) { UseShellExecute = false };
                // Windows command-line rules: psql (a C program) and .NET on Unix split the line back into exactly these strings.
                var args = new List<string> { conninfo };
                if (PsqlArgument != null) args.AddRange(PsqlArgument);
                psi.Arguments = WindowsCommandLine.Join(args);
                // The token reaches psql through its own environment only: never this process's, never its command line.
                psi.EnvironmentVariables["PGPASSWORD"] = source.NewToken();
                WriteVerboseSafe($"Starting psql for {UserName}@{DbHost}:{DbPort}/{Database} through 127.0.0.1:{session.LocalPort} (sslmode={sslmode}).");
                using var process = Process.Start(psi)!;
                process.WaitForExit();
                SessionState.PSVariable.Set(new PSVariable("global:LASTEXITCODE", process.ExitCode));
                if (process.ExitCode != 0)
                {
                    WriteError(new BastionToolsException(ErrorIds.RemoteCommandFailed, ErrorCategory.NotSpecified,
                        $"psql exited with code {process.ExitCode}.", "psql").ToErrorRecord());
                }
            }
            finally
            {
                source.Dispose();
                CloseTunnel(session, owns);
            }
        }

        private static string Quote(string value) => "'" + value.Replace("\\", "\\\\").Replace("'", "\\'") + "'";

        private static string? FindOnPath(string name)
        {
            foreach (var dir in (System.Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
            {
                if (dir.Length == 0) continue;
                var candidate = Path.Combine(dir, name);
                if (File.Exists(candidate)) return candidate;
            }
            return null;
        }
    }

    /// <summary>The IAM database connections this PowerShell session opened.</summary>
    internal static class ConnectionRegistry
    {
        private static readonly List<IamPostgresConnection> Connections = new();

        public static void Add(IamPostgresConnection c)
        {
            lock (Connections) Connections.Add(c);
        }

        public static void Remove(IamPostgresConnection c)
        {
            lock (Connections) Connections.Remove(c);
        }

        public static IamPostgresConnection[] All()
        {
            lock (Connections) return Connections.ToArray();
        }

        public static void CloseAll()
        {
            foreach (var c in All()) DisconnectIamPostgresCommand.Close(c);
        }
    }

    /// <summary>Disconnect-IamPostgres: closes the pool, and the tunnel when Connect-IamPostgres opened it.</summary>
    [Cmdlet(VerbsCommunications.Disconnect, "IamPostgres", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
    public sealed class DisconnectIamPostgresCommand : PSCmdlet
    {
        [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
        [ValidateNotNull]
        [ArgumentCompleter(typeof(IamConnectionCompleter))]
        public IamPostgresConnection[] Connection { get; set; } = Array.Empty<IamPostgresConnection>();

        protected override void ProcessRecord()
        {
            foreach (var c in Connection)
            {
                if (!ShouldProcess(c.ToString(), "Close the connection pool" + (c.OwnsSession ? " and its tunnel" : ""))) continue;
                Close(c);
                WriteVerbose($"Closed {c}.");
                if (c.OwnsSession && c.Session.Engine.TerminateFailure is { } failure)
                {
                    WriteWarning($"The tunnel is closed, but TerminateSession failed, so Systems Manager keeps session {c.Session.SessionId} until its idle timeout: {failure.Message}");
                }
            }
        }

        internal static void Close(IamPostgresConnection c)
        {
            if (!c.IsOpen) return;
            c.IsOpen = false;
            c.Engine.Dispose();
            if (c.OwnsSession) SessionRegistry.Remove(c.Session);
            ConnectionRegistry.Remove(c);
        }
    }
}
