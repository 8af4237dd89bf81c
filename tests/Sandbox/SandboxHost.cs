using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>Options for <see cref="SandboxHost"/>.</summary>
    public sealed partial class SandboxHostOptions
    {
        /// <summary>TCP port on 127.0.0.1; 0 picks a free one.</summary>
        public int Port { get; set; }
        /// <summary>Receives one line per request (operation, caller, outcome); null for silence.</summary>
        public Action<string>? Log { get; set; }
        /// <summary>
        /// A hostile or misconfigured service: the StreamUrl base StartSession and ResumeSession hand out instead of
        /// ws://127.0.0.1:&lt;port&gt;/streams (e.g. a plain ws:// URL to a non-loopback host). Null for the default.
        /// </summary>
        public string? StreamUrlBaseOverride { get; set; }
    }

    /// <summary>One API call the sandbox answered (for tests that check what a client called).</summary>
    public sealed class SandboxCall
    {
        public SandboxCall(string service, string operation, string? accessKeyId, int status, string? errorCode, DateTime atUtc)
        {
            Service = service;
            Operation = operation;
            AccessKeyId = accessKeyId;
            Status = status;
            ErrorCode = errorCode;
            AtUtc = atUtc;
        }

        /// <summary>"ssm", "ec2" or "kms".</summary>
        public string Service { get; }
        public string Operation { get; }
        /// <summary>The access key id of a verified caller; null when verification failed.</summary>
        public string? AccessKeyId { get; }
        public int Status { get; }
        public string? ErrorCode { get; }
        public DateTime AtUtc { get; }

        public override string ToString() => Service + " " + Operation + " -> " + Status.ToString(CultureInfo.InvariantCulture) + (ErrorCode == null ? "" : " " + ErrorCode);
    }

    /// <summary>A WebSocket (data channel) request for /streams/&lt;sessionId&gt;, handed to <see cref="SandboxHost.StreamHandler"/>.</summary>
    public sealed class SandboxStreamContext
    {
        internal SandboxStreamContext(SandboxHost host, SandboxHttpContext context, string sessionId, CancellationToken stopping)
        {
            Host = host;
            HttpContext = context;
            SessionId = sessionId;
            Stopping = stopping;
        }

        public SandboxHost Host { get; }
        /// <summary>The request's context: call AcceptWebSocketAsync on it, or answer with an HTTP status.</summary>
        public SandboxHttpContext HttpContext { get; }
        /// <summary>The session id from the path (not yet checked against the registry).</summary>
        public string SessionId { get; }
        /// <summary>Cancelled when the host stops.</summary>
        public CancellationToken Stopping { get; }
    }

    /// <summary>
    /// The sandbox's HTTP/1.1 server on 127.0.0.1 (its own, on sockets with TCP_NODELAY): SSM JSON 1.1 (any path, X-Amz-Target AmazonSSM.*), EC2 Query
    /// (form POST with Action), and WebSocket upgrades on /streams/&lt;sessionId&gt; handed to <see cref="StreamHandler"/>.
    /// Every API request is SigV4-verified against <see cref="SandboxWorld.Credentials"/>.
    /// </summary>
    public sealed partial class SandboxHost : IAsyncDisposable, IDisposable
    {
        private const int MaxBodyBytes = 1 << 20;
        private readonly SandboxHostOptions _options;
        private readonly SsmApi _ssm;
        private readonly Ec2Api _ec2;
        private readonly KmsApi _kms;
        private readonly CancellationTokenSource _stopping = new();
        private readonly ConcurrentDictionary<Task, byte> _inFlight = new();
        private readonly ConcurrentDictionary<SandboxHttpConnection, byte> _connections = new();
        private readonly ConcurrentQueue<SandboxCall> _calls = new();
        private TcpListener? _listener;
        private Task? _acceptLoop;
        private int _state; // 0 new, 1 started, 2 stopped

        public SandboxHost(SandboxWorld? world = null, SandboxHostOptions? options = null)
        {
            World = world ?? SandboxWorld.CreateDefault();
            _options = options ?? new SandboxHostOptions();
            if (_options.Port < 0 || _options.Port > 65535) throw new ArgumentOutOfRangeException(nameof(options), "Port must be 0..65535.");
            if (World.Credentials.Count == 0) throw new ArgumentException("The sandbox world has no credentials.", nameof(world));
            _ssm = new SsmApi(this);
            _ec2 = new Ec2Api(this);
            _kms = new KmsApi(this);
            Agent = new SandboxAgent(this, _options.Log);
            StreamHandler = Agent.HandleStreamAsync;
        }

        /// <summary>The MGS WebSocket + SSM agent double (fault injection, counters); the default <see cref="StreamHandler"/>.</summary>
        public SandboxAgent Agent { get; }

        public SandboxWorld World { get; }
        public SessionRegistry Sessions { get; } = new();
        public SandboxClock Clock => World.Clock;

        /// <summary>Handles WebSocket/HTTP requests on /streams/&lt;sessionId&gt; (by default the agent double). When null, such requests get 501.</summary>
        public Func<SandboxStreamContext, Task>? StreamHandler { get; set; }

        public int Port { get; private set; }
        public Uri BaseUri => new("http://127.0.0.1:" + Port.ToString(CultureInfo.InvariantCulture) + "/");
        /// <summary>Through the fault proxy when it runs (<see cref="ClientPort"/>), like <see cref="Ec2Endpoint"/> and <see cref="StreamUrlBase"/>.</summary>
        public Uri SsmEndpoint => new(ClientBaseUri, "ssm");
        public Uri Ec2Endpoint => new(ClientBaseUri, "ec2");
        /// <summary>KMS (JSON 1.1, TrentService.*); the module derives it from -EndpointUrl .../ssm.</summary>
        public Uri KmsEndpoint => new(ClientBaseUri, "kms");
        /// <summary>RDS (Query API, Version 2014-10-31); the module derives it from -EndpointUrl .../ssm.</summary>
        public Uri RdsEndpoint => new(ClientBaseUri, "rds");
        public string StreamUrlBase => "ws://127.0.0.1:" + ClientPort.ToString(CultureInfo.InvariantCulture) + "/streams";
        /// <summary>The fault-injection and counters endpoint (see <see cref="SandboxAgent"/>); always direct, never through the fault proxy.</summary>
        public Uri ControlEndpoint => new(BaseUri, "control/");

        /// <summary>API calls answered so far, oldest first.</summary>
        public IReadOnlyList<SandboxCall> Calls => _calls.ToArray();

        /// <summary>Binds 127.0.0.1 (ephemeral port unless <see cref="SandboxHostOptions.Port"/> is set) and starts serving.</summary>
        /// <exception cref="SocketException">The port cannot be bound (for example, it is in use).</exception>
        public void Start()
        {
            if (Interlocked.CompareExchange(ref _state, 1, 0) != 0) throw new InvalidOperationException("The sandbox host was already started.");
            var listener = new TcpListener(IPAddress.Loopback, _options.Port);
            try
            {
                listener.Start(512);
            }
            catch (Exception)
            {
                listener.Stop();
                throw;
            }
            _listener = listener;
            Port = ((IPEndPoint)listener.LocalEndpoint).Port;
            _acceptLoop = Task.Run(AcceptLoopAsync);
            StartFaultProxyIfRequested();
            StartPostgresIfRequested();
            StartPostgresProxyIfRequested();
        }

        public Task StartAsync()
        {
            if (_options.StartPostgres) return Task.Run(Start);
            Start();
            return Task.CompletedTask;
        }

        /// <summary>The StreamUrl StartSession/ResumeSession return for a session.</summary>
        public string StreamUrlFor(SandboxSession session) =>
            (_options.StreamUrlBaseOverride ?? StreamUrlBase) + "/" + Uri.EscapeDataString(session.SessionId) + "?role=publish_subscribe&cell-number=" + Uri.EscapeDataString(CellNumber(session));

        private static string CellNumber(SandboxSession session) =>
            Convert.ToBase64String(Encoding.UTF8.GetBytes("sandbox-cell:" + session.TokenCount.ToString(CultureInfo.InvariantCulture)));

        /// <summary>
        /// The one-line JSON the sandbox prints: endpoints, region, the sandbox's own fake credentials and the instances.
        /// </summary>
        public string DescribeJson()
        {
            var credential = World.Credentials[0];
            var instances = new JsonArray();
            foreach (var i in World.Instances)
            {
                var tags = new JsonObject();
                foreach (var t in i.AllTags()) tags[t.Key] = t.Value;
                instances.Add(new JsonObject
                {
                    ["instanceId"] = i.InstanceId,
                    ["name"] = i.Name,
                    ["pingStatus"] = i.PingStatus,
                    ["agentVersion"] = i.AgentVersion,
                    ["platformType"] = i.PlatformType,
                    ["platformName"] = i.PlatformName,
                    ["privateIpAddress"] = i.PrivateIpAddress,
                    ["state"] = i.State,
                    ["tags"] = tags,
                });
            }
            var o = new JsonObject
            {
                ["ssm"] = SsmEndpoint.ToString(),
                ["ec2"] = Ec2Endpoint.ToString(),
                ["kms"] = KmsEndpoint.ToString(),
                ["rdsApi"] = RdsEndpoint.ToString(),
                ["streamUrlBase"] = StreamUrlBase,
                ["control"] = ControlEndpoint.ToString(),
                ["port"] = Port,
                ["region"] = World.Region,
                ["accountId"] = World.AccountId,
                ["accessKeyId"] = credential.AccessKeyId,
                ["secretAccessKey"] = credential.SecretAccessKey,
                ["sessionToken"] = credential.SessionToken,
                ["userName"] = credential.UserName,
                ["instances"] = instances,
            };
            if (Postgres != null) o["postgres"] = Postgres.DescribeJson();
            DescribeRdsJson(o);
            DescribeProxyJson(o);
            return o.ToJsonString();
        }

        private async Task AcceptLoopAsync()
        {
            var listener = _listener!;
            while (!_stopping.IsCancellationRequested)
            {
                Socket socket;
                try
                {
                    socket = await listener.AcceptSocketAsync(_stopping.Token).ConfigureAwait(false);
                }
                catch (Exception) when (_stopping.IsCancellationRequested)
                {
                    return;
                }
                catch (SocketException ex)
                {
                    // A connection that failed before it was accepted (reset by the client): keep listening.
                    _options.Log?.Invoke("accept failed: " + ex.Message);
                    continue;
                }
                SandboxHttpConnection connection;
                try
                {
                    connection = new SandboxHttpConnection(socket, MaxBodyBytes, () => World.Clock.UtcNow);
                }
                catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
                {
                    socket.Dispose();
                    continue;
                }
                _connections.TryAdd(connection, 0);
                if (_stopping.IsCancellationRequested)
                {
                    // StopAsync may have closed the connections before this one was registered.
                    connection.Close();
                    _connections.TryRemove(connection, out _);
                    return;
                }
                var task = Task.Run(() => connection.RunAsync(HandleAsync, _stopping.Token));
                _inFlight.TryAdd(task, 0);
                _ = task.ContinueWith(t =>
                {
                    _inFlight.TryRemove(t, out _);
                    _connections.TryRemove(connection, out _);
                }, TaskScheduler.Default);
            }
        }

        private async Task HandleAsync(SandboxHttpContext context)
        {
            try
            {
                var path = context.Request.Path;
                if (path.StartsWith("/streams/", StringComparison.Ordinal) || context.Request.IsWebSocketRequest)
                {
                    await HandleStreamAsync(context, path).ConfigureAwait(false);
                    return;
                }
                var body = context.Request.Body;
                if (IsIamControl(path))
                {
                    var (iamStatus, iamJson) = HandleIamControl(context.Request.HttpMethod, path, Encoding.UTF8.GetString(body));
                    await WriteAsync(context.Response, iamStatus, "application/json", iamJson, null).ConfigureAwait(false);
                    return;
                }
                if (IsProxyControl(path))
                {
                    var (proxyStatus, proxyJson) = HandleProxyControl(context.Request.HttpMethod, path, context.Request.Query);
                    await WriteAsync(context.Response, proxyStatus, "application/json", proxyJson, null).ConfigureAwait(false);
                    return;
                }
                if (path.StartsWith("/control/", StringComparison.Ordinal))
                {
                    var (status, json) = Agent.HandleControl(context.Request.HttpMethod, path, Encoding.UTF8.GetString(body));
                    await WriteAsync(context.Response, status, "application/json", json, null).ConfigureAwait(false);
                    return;
                }
                var request = SandboxRequest.From(context.Request);
                if (request.Header("X-Amz-Target") is string amzTarget && amzTarget.StartsWith(KmsApi.TargetPrefix, StringComparison.Ordinal))
                {
                    await HandleKmsAsync(context, request).ConfigureAwait(false);
                }
                else if (request.Header("X-Amz-Target") != null)
                {
                    await HandleSsmAsync(context, request).ConfigureAwait(false);
                }
                else if (IsSts(request, path))
                {
                    await HandleStsAsync(context, request).ConfigureAwait(false);
                }
                else if (IsRds(request, path))
                {
                    await HandleRdsAsync(context, request).ConfigureAwait(false);
                }
                else if (IsEc2(request, path))
                {
                    await HandleEc2Async(context, request).ConfigureAwait(false);
                }
                else if (request.Method == "GET" && (path == "/" || path == "/sandbox"))
                {
                    await WriteAsync(context.Response, 200, "application/json", DescribeJson(), null).ConfigureAwait(false);
                }
                else
                {
                    await WriteAsync(context.Response, 404, "text/plain", "Not found.", null).ConfigureAwait(false);
                }
            }
            catch (Exception ex)
            {
                _options.Log?.Invoke("request failed: " + ex);
                if (!context.IsUpgraded && !context.Response.HeadersSent)
                {
                    context.Response.KeepAlive = false;
                    await context.Response.SendAsync(500, "text/plain", Encoding.UTF8.GetBytes("Internal error."), null).ConfigureAwait(false);
                }
            }
        }

        private static bool IsEc2(SandboxRequest request, string path)
        {
            if (path == "/ec2" || path == "/ec2/") return true;
            var contentType = request.Header("Content-Type") ?? "";
            return contentType.StartsWith("application/x-www-form-urlencoded", StringComparison.OrdinalIgnoreCase);
        }

        private async Task HandleStreamAsync(SandboxHttpContext context, string path)
        {
            var handler = StreamHandler;
            if (handler == null)
            {
                await WriteAsync(context.Response, 501, "text/plain", "This sandbox has no data channel handler.", null).ConfigureAwait(false);
                return;
            }
            var sessionId = Uri.UnescapeDataString(path.StartsWith("/streams/", StringComparison.Ordinal) ? path.Substring("/streams/".Length).TrimEnd('/') : "");
            await handler(new SandboxStreamContext(this, context, sessionId, _stopping.Token)).ConfigureAwait(false);
        }

        private int _ssmThrottleBudget;

        /// <summary>The next <paramref name="count"/> signed SSM calls are answered with ThrottlingException.</summary>
        public void ThrottleSsm(int count) => Interlocked.Exchange(ref _ssmThrottleBudget, count);

        private async Task HandleSsmAsync(SandboxHttpContext context, SandboxRequest request)
        {
            var requestId = Guid.NewGuid().ToString();
            var target = request.Header("X-Amz-Target") ?? "";
            var operation = target.StartsWith(SsmApi.TargetPrefix, StringComparison.Ordinal) ? target.Substring(SsmApi.TargetPrefix.Length) : target;
            SandboxCredential? caller = null;
            try
            {
                if (!string.Equals(request.Method, "POST", StringComparison.Ordinal) || !target.StartsWith(SsmApi.TargetPrefix, StringComparison.Ordinal))
                {
                    throw SandboxError.Coral("UnknownOperationException", null);
                }
                caller = SigV4Verifier.Verify(request, SandboxProtocol.Json11, "ssm", World);
                if (Interlocked.Decrement(ref _ssmThrottleBudget) >= 0)
                {
                    // As SSM answers when its API rate is exceeded (the SDK retries these with back-off).
                    throw SandboxError.Coral("ThrottlingException", "Rate exceeded");
                }
                var input = SsmApi.ParseBody(request.BodyText);
                var output = _ssm.Handle(operation, input, caller);
                Record("ssm", operation, caller.AccessKeyId, 200, null);
                await WriteAsync(context.Response, 200, "application/x-amz-json-1.1", output, new[] { new KeyValuePair<string, string>("x-amzn-RequestId", requestId) }).ConfigureAwait(false);
            }
            catch (SandboxError error)
            {
                Record("ssm", operation, caller?.AccessKeyId, error.Status, error.Code);
                var body = new JsonObject { ["__type"] = error.TypePrefix == null ? error.Code : error.TypePrefix + "#" + error.Code };
                if (error.ErrorMessage != null) body[error.LowerCaseMessageField ? "message" : "Message"] = error.ErrorMessage;
                var errorType = error.TypePrefix == null ? error.Code : error.Code + ":http://internal.amazon.com/coral/" + error.TypePrefix + "/";
                await WriteAsync(context.Response, error.Status, "application/x-amz-json-1.1", body.ToJsonString(), new[]
                {
                    new KeyValuePair<string, string>("x-amzn-RequestId", requestId),
                    new KeyValuePair<string, string>("x-amzn-ErrorType", errorType),
                }).ConfigureAwait(false);
            }
        }

        private async Task HandleKmsAsync(SandboxHttpContext context, SandboxRequest request)
        {
            var requestId = Guid.NewGuid().ToString();
            var target = request.Header("X-Amz-Target") ?? "";
            var operation = target.Substring(KmsApi.TargetPrefix.Length);
            SandboxCredential? caller = null;
            try
            {
                if (!string.Equals(request.Method, "POST", StringComparison.Ordinal)) throw SandboxError.Coral("UnknownOperationException", null);
                caller = SigV4Verifier.Verify(request, SandboxProtocol.Json11, "kms", World);
                var input = SsmApi.ParseBody(request.BodyText);
                var output = _kms.Handle(operation, input, caller);
                Record("kms", operation, caller.AccessKeyId, 200, null);
                await WriteAsync(context.Response, 200, "application/x-amz-json-1.1", output, new[] { new KeyValuePair<string, string>("x-amzn-RequestId", requestId) }).ConfigureAwait(false);
            }
            catch (SandboxError error)
            {
                Record("kms", operation, caller?.AccessKeyId, error.Status, error.Code);
                var body = new JsonObject { ["__type"] = error.TypePrefix == null ? error.Code : error.TypePrefix + "#" + error.Code };
                if (error.ErrorMessage != null) body[error.LowerCaseMessageField ? "message" : "Message"] = error.ErrorMessage;
                await WriteAsync(context.Response, error.Status, "application/x-amz-json-1.1", body.ToJsonString(), new[]
                {
                    new KeyValuePair<string, string>("x-amzn-RequestId", requestId),
                }).ConfigureAwait(false);
            }
        }

        private async Task HandleEc2Async(SandboxHttpContext context, SandboxRequest request)
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
                caller = SigV4Verifier.Verify(request, SandboxProtocol.Ec2Query, "ec2", World);
                var output = _ec2.Handle(form, requestId, caller);
                Record("ec2", operation, caller.AccessKeyId, 200, null);
                await WriteAsync(context.Response, 200, "text/xml;charset=UTF-8", output, null).ConfigureAwait(false);
            }
            catch (SandboxError error)
            {
                Record("ec2", operation, caller?.AccessKeyId, error.Status, error.Code);
                await WriteAsync(context.Response, error.Status, "text/xml;charset=UTF-8", Ec2Api.ErrorXml(error, requestId), null).ConfigureAwait(false);
            }
        }

        private void Record(string service, string operation, string? accessKeyId, int status, string? errorCode)
        {
            var call = new SandboxCall(service, operation, accessKeyId, status, errorCode, World.Clock.UtcNow);
            _calls.Enqueue(call);
            _options.Log?.Invoke(call.ToString());
        }

        private async Task WriteAsync(SandboxHttpResponse response, int status, string contentType, string body, IEnumerable<KeyValuePair<string, string>>? headers)
        {
            // The AWS SDKs read the server's time from Date to correct clock skew: it is the sandbox clock's.
            response.SetHeader("Date", World.Clock.UtcNow.ToString("r", CultureInfo.InvariantCulture));
            // False when the client went away: nothing more to do.
            await response.SendAsync(status, contentType, Encoding.UTF8.GetBytes(body), headers).ConfigureAwait(false);
        }

        /// <summary>
        /// Stops listening, cancels <see cref="SandboxStreamContext.Stopping"/>, closes every connection (and the WebSockets on
        /// them) and waits (bounded) for their tasks.
        /// </summary>
        public async Task StopAsync()
        {
            if (Interlocked.Exchange(ref _state, 2) != 1) return;
            _stopping.Cancel();
            Agent.Shutdown();
            try
            {
                _listener?.Stop();
            }
            catch (SocketException)
            {
            }
            var deadline = Task.Delay(TimeSpan.FromSeconds(5));
            await StopFaultProxyAsync().ConfigureAwait(false);
            // After the accept loop no connection is added: then every one is closed and waited for.
            if (_acceptLoop != null) await Task.WhenAny(_acceptLoop, deadline).ConfigureAwait(false);
            foreach (var connection in _connections.Keys) connection.Close();
            await Task.WhenAny(Task.WhenAll(_inFlight.Keys.ToList()), deadline).ConfigureAwait(false);
            await StopPostgresAsync().ConfigureAwait(false);
        }

        public async ValueTask DisposeAsync()
        {
            await StopAsync().ConfigureAwait(false);
            _stopping.Dispose();
        }

        public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();
    }
}
