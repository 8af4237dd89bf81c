using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    public sealed partial class SandboxHostOptions
    {
        /// <summary>
        /// Also start the RDS-IAM front (<see cref="SandboxHost.RdsProxy"/>) for the host's PostgreSQL cluster; requires
        /// <see cref="StartPostgres"/>. The world's host map then sends the endpoint's advertised port to the front.
        /// </summary>
        public bool StartRdsProxy { get; set; }
        /// <summary>Options for the front; null for the defaults (endpoint demo.c0ffee123456.us-west-2.rds.amazonaws.com:5432; its Log defaults to <see cref="Log"/>).</summary>
        public RdsIamProxyOptions? RdsProxyOptions { get; set; }
    }

    public sealed partial class SandboxHost
    {
        private RdsIamProxy? _rdsProxy;
        private SandboxRdsCatalog? _rdsCatalog;
        private RdsApi? _rdsApi;

        /// <summary>
        /// The databases the RDS Query API describes (whether or not the front runs): by default the front's instance, its
        /// Aurora cluster and member instance, and an instance without IAM authentication (<see cref="SandboxRdsCatalog.CreateDefault"/>).
        /// </summary>
        public SandboxRdsCatalog RdsCatalog
        {
            get
            {
                if (_rdsCatalog == null) Interlocked.CompareExchange(ref _rdsCatalog, SandboxRdsCatalog.CreateDefault(_options.RdsProxyOptions ?? new RdsIamProxyOptions()), null);
                return _rdsCatalog;
            }
        }

        /// <summary>RDS Query requests: path /rds, or a SigV4 credential scoped to service rds.</summary>
        private static bool IsRds(SandboxRequest request, string path)
        {
            if (path == "/rds" || path == "/rds/") return true;
            var auth = request.Header("Authorization") ?? "";
            return auth.Contains("/rds/aws4_request", StringComparison.Ordinal);
        }

        /// <summary>STS Query requests: path /sts, or a SigV4 credential scoped to service sts.</summary>
        private static bool IsSts(SandboxRequest request, string path)
        {
            if (path == "/sts" || path == "/sts/") return true;
            return (request.Header("Authorization") ?? "").Contains("/sts/aws4_request", StringComparison.Ordinal);
        }

        /// <summary>
        /// sts:GetCallerIdentity (Version 2011-06-15): Account, Arn and UserId of the verified caller. As AWS documents it, no
        /// permission is needed and an explicit deny does not stop it, so it is not authorized against the caller's policy.
        /// </summary>
        private async Task HandleStsAsync(SandboxHttpContext context, SandboxRequest request)
        {
            var requestId = Guid.NewGuid().ToString();
            var form = new List<KeyValuePair<string, string>>(request.QueryParameters());
            if ((request.Header("Content-Type") ?? "").StartsWith("application/x-www-form-urlencoded", StringComparison.OrdinalIgnoreCase))
            {
                form.AddRange(SandboxRequest.ParseForm(request.BodyText, plusIsSpace: true));
            }
            var operation = form.Where(p => p.Key == "Action").Select(p => p.Value).FirstOrDefault() ?? "";
            System.Xml.Linq.XNamespace ns = "https://sts.amazonaws.com/doc/2011-06-15/";
            SandboxCredential? caller = null;
            try
            {
                caller = SigV4Verifier.Verify(request, SandboxProtocol.Ec2Query, "sts", World);
                if (operation != "GetCallerIdentity") throw SandboxError.Ec2(400, "InvalidAction", "Could not find operation " + operation + " for version 2011-06-15");
                var body = new System.Xml.Linq.XElement(ns + "GetCallerIdentityResponse",
                    new System.Xml.Linq.XElement(ns + "GetCallerIdentityResult",
                        new System.Xml.Linq.XElement(ns + "Arn", SandboxIamPolicy.CallerArn(World, caller)),
                        new System.Xml.Linq.XElement(ns + "UserId", "AIDA" + caller.AccessKeyId.Substring(Math.Min(4, caller.AccessKeyId.Length))),
                        new System.Xml.Linq.XElement(ns + "Account", World.AccountId)),
                    new System.Xml.Linq.XElement(ns + "ResponseMetadata", new System.Xml.Linq.XElement(ns + "RequestId", requestId)));
                Record("sts", operation, caller.AccessKeyId, 200, null);
                await WriteAsync(context.Response, 200, "text/xml", body.ToString(System.Xml.Linq.SaveOptions.DisableFormatting), null).ConfigureAwait(false);
            }
            catch (SandboxError error)
            {
                Record("sts", operation, caller?.AccessKeyId, error.Status, error.Code);
                await WriteAsync(context.Response, error.Status, "text/xml", RdsApi.ErrorXml(error, requestId).Replace(RdsApi.Ns.NamespaceName, ns.NamespaceName), null).ConfigureAwait(false);
            }
        }

        private async Task HandleRdsAsync(SandboxHttpContext context, SandboxRequest request)
        {
            var requestId = Guid.NewGuid().ToString();
            var form = new List<KeyValuePair<string, string>>(request.QueryParameters());
            if ((request.Header("Content-Type") ?? "").StartsWith("application/x-www-form-urlencoded", StringComparison.OrdinalIgnoreCase))
            {
                form.AddRange(SandboxRequest.ParseForm(request.BodyText, plusIsSpace: true));
            }
            var operation = form.Where(p => p.Key == "Action").Select(p => p.Value).FirstOrDefault() ?? "";
            SandboxCredential? caller = null;
            try
            {
                caller = SigV4Verifier.Verify(request, SandboxProtocol.Ec2Query, "rds", World);
                var version = form.Where(p => p.Key == "Version").Select(p => p.Value).FirstOrDefault();
                if (version != RdsApi.ApiVersion) throw SandboxError.Ec2(400, "InvalidParameterValue", "Version " + (version ?? "(none)") + " is not supported; use " + RdsApi.ApiVersion + ".");
                _rdsApi ??= new RdsApi(this);
                var output = _rdsApi.Handle(form, requestId, caller);
                Record("rds", operation, caller.AccessKeyId, 200, null);
                await WriteAsync(context.Response, 200, "text/xml", output, new[] { new KeyValuePair<string, string>("x-amzn-RequestId", requestId) }).ConfigureAwait(false);
            }
            catch (SandboxError error)
            {
                Record("rds", operation, caller?.AccessKeyId, error.Status, error.Code);
                await WriteAsync(context.Response, error.Status, "text/xml", RdsApi.ErrorXml(error, requestId), new[] { new KeyValuePair<string, string>("x-amzn-RequestId", requestId) }).ConfigureAwait(false);
            }
        }

        /// <summary>The RDS-IAM front when <see cref="SandboxHostOptions.StartRdsProxy"/> is set (after Start), else null.</summary>
        public RdsIamProxy? RdsProxy => Volatile.Read(ref _rdsProxy);

        /// <summary>Starts the front after the cluster (blocks; bounded) and maps each of its names:advertisedPort to it in the world's host map.</summary>
        private void StartRdsProxyIfRequested()
        {
            if (!_options.StartRdsProxy || _rdsProxy != null) return;
            var cluster = _postgres ?? throw new InvalidOperationException("SandboxHostOptions.StartRdsProxy requires StartPostgres (the front relays to the host's own cluster).");
            var options = _options.RdsProxyOptions ?? new RdsIamProxyOptions();
            if (options.Log == null && _options.Log != null) options.Log = _options.Log;
            var proxy = Task.Run(() => RdsIamProxy.StartAsync(cluster, World, options, CancellationToken.None)).GetAwaiter().GetResult();
            foreach (var name in proxy.Names) World.MapHostPort(name, proxy.AdvertisedPort, proxy.Host, proxy.Port);
            Volatile.Write(ref _rdsProxy, proxy);
        }

        private async Task StopRdsProxyAsync()
        {
            var proxy = Interlocked.Exchange(ref _rdsProxy, null);
            if (proxy == null) return;
            foreach (var name in proxy.Names) World.UnmapHostPort(name, proxy.AdvertisedPort);
            await proxy.DisposeAsync().ConfigureAwait(false);
        }

        /// <summary>Adds "rds" and "rdsCaBundle" to the sandbox's JSON line when the front runs.</summary>
        private void DescribeRdsJson(JsonObject o)
        {
            var proxy = RdsProxy;
            if (proxy == null) return;
            o["rds"] = proxy.DescribeJson();
            o["rdsCaBundle"] = proxy.CaBundlePath;
        }

        /// <summary>"endpoint:port" of the front as clients address it (through a tunnel), e.g. for a token.</summary>
        public string? RdsEndpointAddress => RdsProxy is { } p ? p.EndpointName + ":" + p.AdvertisedPort.ToString(CultureInfo.InvariantCulture) : null;
    }
}
