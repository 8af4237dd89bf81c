using System;
using System.Globalization;
using System.Linq;
using System.Net;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    public sealed partial class SandboxHostOptions
    {
        /// <summary>
        /// Also start a <see cref="Sandbox.FaultProxy"/> in front of the host (<see cref="SandboxHost.Proxy"/>): every
        /// endpoint given to clients (SSM, EC2, the StreamUrl of StartSession/ResumeSession) then goes through it, so tests
        /// can cut the network (blackout, reset, half-open) or make it long (latency) over POST /control/proxy/...; the control
        /// endpoint stays direct. With <see cref="StartPostgres"/>, a second proxy in front of the cluster ("proxy":
        /// {"postgresPort"}) takes the same latency: a client's direct connection across the same link, to compare with.
        /// </summary>
        public bool FaultProxy { get; set; }
    }

    public sealed partial class SandboxHost
    {
        private const string ProxyControlPath = "/control/proxy";
        private FaultProxy? _proxy;
        private FaultProxy? _postgresProxy;

        /// <summary>The fault proxy in front of the host when <see cref="SandboxHostOptions.FaultProxy"/> is set (after Start), else null.</summary>
        public FaultProxy? Proxy => Volatile.Read(ref _proxy);

        /// <summary>The port clients are given: the fault proxy's when it runs, else the host's own.</summary>
        public int ClientPort => Proxy?.Port ?? Port;

        private Uri ClientBaseUri => new("http://127.0.0.1:" + ClientPort.ToString(CultureInfo.InvariantCulture) + "/");

        private void StartFaultProxyIfRequested()
        {
            if (!_options.FaultProxy || _proxy != null) return;
            Volatile.Write(ref _proxy, new FaultProxy(new IPEndPoint(IPAddress.Loopback, Port), 0, _options.Log));
        }

        /// <summary>After the cluster started: the proxy in front of it, when the fault proxy is requested.</summary>
        private void StartPostgresProxyIfRequested()
        {
            var cluster = Postgres;
            if (!_options.FaultProxy || cluster == null || _postgresProxy != null) return;
            Volatile.Write(ref _postgresProxy, new FaultProxy(new IPEndPoint(IPAddress.Loopback, cluster.Port), 0, _options.Log));
        }

        private async Task StopFaultProxyAsync()
        {
            var proxy = Interlocked.Exchange(ref _proxy, null);
            if (proxy != null) await proxy.DisposeAsync().ConfigureAwait(false);
            var postgresProxy = Interlocked.Exchange(ref _postgresProxy, null);
            if (postgresProxy != null) await postgresProxy.DisposeAsync().ConfigureAwait(false);
        }

        /// <summary>Adds "proxy":{"port","control"} to the sandbox's JSON line when the fault proxy runs.</summary>
        private void DescribeProxyJson(JsonObject o)
        {
            var proxy = Proxy;
            if (proxy == null) return;
            o["proxy"] = new JsonObject
            {
                ["port"] = proxy.Port,
                ["control"] = new Uri(BaseUri, ProxyControlPath.TrimStart('/')).ToString(),
                ["postgresPort"] = Volatile.Read(ref _postgresProxy)?.Port,
            };
        }

        private static bool IsProxyControl(string path) =>
            path == ProxyControlPath || path.StartsWith(ProxyControlPath + "/", StringComparison.Ordinal);

        /// <summary>
        /// GET /control/proxy (counters), POST /control/proxy/blackout[?seconds=N], /restore, /reset,
        /// /halfopen?direction=ClientToServer|ServerToClient, /latency?ms=N (one way, each direction, 0-10000; also on the
        /// PostgreSQL proxy). Every answer that succeeds is the counters' JSON (with the PostgreSQL proxy's as "postgresProxy").
        /// </summary>
        private (int Status, string Json) HandleProxyControl(string method, string path, string query)
        {
            var proxy = Proxy;
            if (proxy == null) return (404, ProxyError("The fault proxy is off (SandboxHostOptions.FaultProxy, --fault-proxy)."));
            var action = path.Substring(ProxyControlPath.Length).Trim('/');
            var parameters = SandboxRequest.ParseForm(query, plusIsSpace: false);
            string? Parameter(string name) => parameters.Where(p => string.Equals(p.Key, name, StringComparison.OrdinalIgnoreCase)).Select(p => p.Value).LastOrDefault();

            switch (action)
            {
                case "":
                    if (method != "GET") return (405, ProxyError("Method not allowed."));
                    break;
                case "blackout":
                    if (method != "POST") return (405, ProxyError("Method not allowed."));
                    var secondsText = Parameter("seconds");
                    if (secondsText == null)
                    {
                        proxy.StartBlackout();
                        break;
                    }
                    if (!double.TryParse(secondsText, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) || !double.IsFinite(seconds) || seconds < 0 || seconds > int.MaxValue / 1000.0)
                    {
                        return (400, ProxyError("seconds must be a number of seconds >= 0."));
                    }
                    // Starts at once; ends by itself (unless restored first).
                    _ = proxy.BlackoutAsync(TimeSpan.FromSeconds(seconds));
                    break;
                case "restore":
                    if (method != "POST") return (405, ProxyError("Method not allowed."));
                    proxy.EndBlackout();
                    proxy.Heal();
                    break;
                case "reset":
                    if (method != "POST") return (405, ProxyError("Method not allowed."));
                    proxy.ResetAll();
                    break;
                case "halfopen":
                    if (method != "POST") return (405, ProxyError("Method not allowed."));
                    var directionText = Parameter("direction");
                    if (directionText == null || !Enum.TryParse<ProxyDirection>(directionText, ignoreCase: true, out var direction) || !Enum.IsDefined(direction))
                    {
                        return (400, ProxyError("direction must be ClientToServer or ServerToClient."));
                    }
                    proxy.HalfOpen(direction);
                    break;
                case "latency":
                    if (method != "POST") return (405, ProxyError("Method not allowed."));
                    var msText = Parameter("ms");
                    if (msText == null || !double.TryParse(msText, NumberStyles.Float, CultureInfo.InvariantCulture, out var ms) || !double.IsFinite(ms) || ms < 0 || ms > 10000)
                    {
                        return (400, ProxyError("ms must be a one-way delay in milliseconds, 0 to 10000."));
                    }
                    proxy.Latency = TimeSpan.FromMilliseconds(ms);
                    var postgresProxy = Volatile.Read(ref _postgresProxy);
                    if (postgresProxy != null) postgresProxy.Latency = TimeSpan.FromMilliseconds(ms);
                    break;
                default:
                    return (404, ProxyError("Unknown control path " + path + "."));
            }
            var answer = proxy.DescribeJson();
            var front = Volatile.Read(ref _postgresProxy);
            if (front != null) answer["postgresProxy"] = front.DescribeJson();
            return (200, answer.ToJsonString());
        }

        private static string ProxyError(string message) => new JsonObject { ["error"] = message }.ToJsonString();
    }
}
