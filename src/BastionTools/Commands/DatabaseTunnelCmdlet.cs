using System;
using System.Collections;
using System.IO;
using System.Management.Automation;
using BastionTools.Aws;
using BastionTools.Postgres;
using BastionTools.Ssm;

namespace BastionTools.Commands
{
    /// <summary>
    /// The parameters and plumbing shared by the cmdlets that reach a database through a bastion
    /// (Connect-IamPostgres, Grant-RdsIamUser, Revoke-RdsIamUser): which bastion (or an open session), which database,
    /// how its TLS is checked, and opening or reusing the tunnel.
    /// </summary>
    public abstract class DatabaseTunnelCmdlet : AwsServiceCmdlet
    {
        internal static class ParameterSets
        {
            public const string Target = "Target";
            public const string Name = "Name";
            public const string Tag = "Tag";
            public const string Session = "Session";
        }

        // Not bound from the pipeline by property name: a BastionSession (which has a Target) piped in binds -Session.
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.Target)]
        [Alias("InstanceId")]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(BastionTargetCompleter))]
        public string Target { get; set; } = "";

        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.Name)]
        [ValidateNotNullOrEmpty]
        public string Name { get; set; } = "";

        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.Tag)]
        [ValidateNotNull]
        public Hashtable Tag { get; set; } = new();

        /// <summary>An open port-forwarding session to the database to reuse (from Start-BastionSession).</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.Session, ValueFromPipeline = true)]
        [ValidateNotNull]
        public BastionSession? Session { get; set; }

        /// <summary>
        /// The RDS endpoint name (tokens are signed for it and the certificate must name it). Or name the database with
        /// -DbInstanceIdentifier / -DbClusterIdentifier and let the module look the endpoint up.
        /// </summary>
        [Parameter]
        [Alias("Endpoint", "Hostname", "RemoteHost")]
        [ValidateNotNullOrEmpty]
        public string DbHost { get; set; } = "";

        [Parameter]
        [ValidateRange(1, 65535)]
        public int DbPort { get; set; } = 5432;

        /// <summary>An RDS DB instance (or Aurora member instance) whose endpoint, port and resource id are looked up (rds:DescribeDBInstances).</summary>
        [Parameter(ValueFromPipelineByPropertyName = true)]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string? DbInstanceIdentifier { get; set; }

        /// <summary>An Aurora DB cluster whose endpoint, port and resource id are looked up (rds:DescribeDBClusters).</summary>
        [Parameter(ValueFromPipelineByPropertyName = true)]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string? DbClusterIdentifier { get; set; }

        /// <summary>With -DbClusterIdentifier: Writer (default), Reader, or a custom endpoint's identifier.</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(ClusterEndpointCompleter))]
        public string? ClusterEndpoint { get; set; }

        /// <summary>The database -DbInstanceIdentifier/-DbClusterIdentifier resolved to (null with -DbHost).</summary>
        internal RdsConnectTarget? ResolvedDatabase { get; private set; }

        /// <summary>
        /// Fills DbHost (and DbPort unless given) from -DbInstanceIdentifier / -DbClusterIdentifier; ends the command when
        /// neither they nor -DbHost say which database, or the database cannot be used with IAM.
        /// </summary>
        internal void ResolveDatabase()
        {
            ResolvedDatabase = null;
            var bound = MyInvocation.BoundParameters;
            var hostGiven = bound.ContainsKey(nameof(DbHost)) && !string.IsNullOrWhiteSpace(DbHost);
            var target = RdsTargetChoice.Check(hostGiven, DbInstanceIdentifier, DbClusterIdentifier, ClusterEndpoint);
            if (target.Error != null) ThrowTerminatingError(target.Error.ToErrorRecord());
            if (hostGiven) return;
            var client = GetRdsClient();
            var resolver = new RdsDatabaseResolver(client);
            if (!TryRun(ct => resolver.ResolveAsync(target, ClusterEndpoint, ct), out var resolved, terminating: true)) return;
            ResolvedDatabase = resolved;
            DbHost = resolved.Host;
            if (!bound.ContainsKey(nameof(DbPort))) DbPort = resolved.Port;
            WriteVerboseSafe($"{resolved.Database.Kind} {resolved.Database.Identifier}: {resolved.Host}:{DbPort}, rds-db:connect resource {resolved.Database.ResourceId}.");
        }

        [Parameter]
        [Alias("DbName")]
        [ValidateNotNullOrEmpty]
        public string Database { get; set; } = "postgres";

        /// <summary>VerifyFull (default), or — weaker, with a warning — VerifyCA or Require.</summary>
        [Parameter]
        public RdsSslMode SslMode { get; set; } = RdsSslMode.VerifyFull;

        /// <summary>A PEM bundle of trusted roots instead of the RDS global bundle shipped with the module.</summary>
        [Parameter]
        [Alias("SslRootCert")]
        [ValidateNotNullOrEmpty]
        public string? SslRootCertificate { get; set; }

        /// <summary>
        /// How long, in seconds, the tunnel this command opens resumes a lost connection before giving up (default 600).
        /// Ignored with -Session (the session has its own).
        /// </summary>
        [Parameter]
        [ValidateRange(0, 7 * 24 * 3600)]
        public int ReconnectTimeoutSec { get; set; } = 600;

        internal override int? ReconnectTimeoutSeconds => ReconnectTimeoutSec;

        /// <summary>
        /// Keep the tunnel this command opens open while idle by sending a no-op every 30 s of silence. This overrides the
        /// idle session timeout your administrator set in Session Manager (a security control): use it only where that is
        /// allowed. Without it an idle tunnel ends at the timeout and Connect-IamPostgres reopens it on next use.
        /// Ignored with -Session (the session has its own).
        /// </summary>
        [Parameter]
        public SwitchParameter KeepAlive { get; set; }

        internal override bool KeepAliveRequested => KeepAlive.IsPresent;

        /// <summary>The trust bundle: -SslRootCertificate or the shipped one; it must exist. Warns about weak modes.</summary>
        internal string ResolveTrust()
        {
            var bundle = SslRootCertificate != null ? GetUnresolvedProviderPathFromPSPath(SslRootCertificate) : DefaultBundlePath();
            if (!File.Exists(bundle))
            {
                ThrowTerminatingError(new BastionToolsException(ErrorIds.SslRootCertificateInvalid, ErrorCategory.ObjectNotFound,
                    $"The trust bundle '{bundle}' does not exist.", bundle, "Pass -SslRootCertificate with a PEM file of CA certificates.").ToErrorRecord());
            }
            if (SslMode != RdsSslMode.VerifyFull)
            {
                WriteWarningSafe(SslMode == RdsSslMode.Require
                    ? "-SslMode Require: the connection is encrypted but the server is not verified; anyone on the path could impersonate the database."
                    : "-SslMode VerifyCA: the certificate's name is not checked; another database signed by the same CA would be accepted.");
            }
            return bundle;
        }

        internal static string DefaultBundlePath()
        {
            // bin/lib/BastionTools.dll -> module root/certs/rds-global-bundle.pem
            var lib = Path.GetDirectoryName(typeof(DatabaseTunnelCmdlet).Assembly.Location) ?? ".";
            foreach (var candidate in new[] { Path.Combine(lib, "..", "..", "certs", "rds-global-bundle.pem"), Path.Combine(lib, "certs", "rds-global-bundle.pem") })
            {
                if (File.Exists(candidate)) return Path.GetFullPath(candidate);
            }
            return Path.GetFullPath(Path.Combine(lib, "..", "..", "certs", "rds-global-bundle.pem"));
        }

        internal TargetSelector Selector()
        {
            var selector = new TargetSelector();
            if (ParameterSetName == ParameterSets.Target) selector.InstanceId = Target;
            else if (ParameterSetName == ParameterSets.Name) selector.Name = Name;
            else selector.Tags = TargetSelector.TagsFrom(Tag);
            return selector;
        }

        /// <summary>The -Session given (checked), or a new tunnel to DbHost:DbPort (null when it could not be opened: the error is written).</summary>
        internal BastionSession? OpenTunnel(string activityName, out bool owns)
        {
            owns = Session == null;
            if (Session == null)
            {
                return StartPortForwarding(Selector(), new PortForwardingRequest { RemoteHost = DbHost, RemotePort = DbPort }, activityName);
            }
            if (KeepAlive) WriteWarningSafe("-KeepAlive is ignored with -Session: the session keeps the setting it was started with.");
            if (Session.State != "Connected" && Session.State != "Reconnecting")
            {
                ThrowTerminatingError(new BastionToolsException(ErrorIds.BastionSessionFailed, ErrorCategory.ResourceUnavailable,
                    $"The session {Session.SessionId} is {Session.State}.", Session.SessionId, "Start a new session with Start-BastionSession.").ToErrorRecord());
            }
            if (!string.Equals(Session.RemoteHost, DbHost, StringComparison.OrdinalIgnoreCase) || Session.RemotePort != DbPort)
            {
                WriteWarningSafe($"The session forwards to {Session.Remote}, not {DbHost}:{DbPort}; tokens and TLS are checked for {DbHost}.");
            }
            return Session;
        }

        internal void CloseTunnel(BastionSession? session, bool owns)
        {
            if (!owns || session == null) return;
            session.Engine.StopAsync().GetAwaiter().GetResult();
            SessionRegistry.Remove(session);
            WarnIfNotTerminated(session);
        }

        /// <summary>The options of a data source to DbHost through <paramref name="session"/>.</summary>
        internal IamDataSourceOptions DataSourceOptions(BastionSession session, string bundle, string userName) => new()
        {
            Endpoint = DbHost,
            EndpointPort = DbPort,
            ConnectPort = session.LocalPort,
            Tunnel = session.Engine,
            UserName = userName,
            Database = Database,
            Region = string.IsNullOrEmpty(Region) ? RdsEndpoint.InferRegion(DbHost) ?? ApiRegion! : ApiRegion!,
            SslMode = SslMode,
            RootCertificatePath = bundle,
        };

        /// <summary>Keys for tokens, fetched (and refreshed by the SDK) on whatever thread needs them, registered with the redactor.</summary>
        internal Func<AwsKeys> KeySource()
        {
            var credentials = ApiCredentials!;
            var redactor = Redactor;
            return () =>
            {
                var keys = credentials.GetKeys();
                redactor.Add(keys.SecretAccessKey);
                redactor.Add(keys.SessionToken);
                return keys;
            };
        }
    }
}
