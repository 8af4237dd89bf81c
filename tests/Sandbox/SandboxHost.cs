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

        /// <summary>"ssm" or "ec2".</summary>
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
        internal SandboxStreamContext(SandboxHost host, HttpListenerContext context, string sessionId, CancellationToken stopping)
        {
            Host = host;
            HttpContext = context;
            SessionId = sessionId;
            Stopping = stopping;
        }

        public SandboxHost Host { get; }
        /// <summary>The listener context: call AcceptWebSocketAsync on it, or answer with an HTTP status.</summary>
        public HttpListenerContext HttpContext { get; }
        /// <summary>The session id from the path (not yet checked against the registry).</summary>
        public string SessionId { get; }
        /// <summary>Cancelled when the host stops.</summary>
        public CancellationToken Stopping { get; }
    }

    /// <summary>
    /// The sandbox's HTTP server on 127.0.0.1: SSM JSON 1.1 (any path, X-Amz-Target AmazonSSM.*), EC2 Query
    /// (form POST with Action), and WebSocket upgrades on /streams/&lt;sessionId&gt; handed to <see cref="StreamHandler"/>.
    /// Every API request is SigV4-verified against <see cref="SandboxWorld.Credentials"/>.
    /// </summary>
    public sealed partial class SandboxHost : IAsyncDisposable, IDisposable
    {
        private const int MaxBodyBytes = 1 << 20;
        private readonly SandboxHostOptions _options;
        private readonly SsmApi _ssm;
        private readonly Ec2Api _ec2;
        private readonly CancellationTokenSource _stopping = new();
        private readonly ConcurrentDictionary<Task, byte> _inFlight = new();
        private readonly ConcurrentQueue<SandboxCall> _calls = new();
        private HttpListener? _listener;
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
        public Uri SsmEndpoint => new(BaseUri, "ssm");
        public Uri Ec2Endpoint => new(BaseUri, "ec2");
        public string StreamUrlBase => "ws://127.0.0.1:" + Port.ToString(CultureInfo.InvariantCulture) + "/streams";
        /// <summary>The fault-injection and counters endpoint (see <see cref="SandboxAgent"/>).</summary>
        public Uri ControlEndpoint => new(BaseUri, "control/");

        /// <summary>API calls answered so far, oldest first.</summary>
        public IReadOnlyList<SandboxCall> Calls => _calls.ToArray();

        /// <summary>Binds 127.0.0.1 (ephemeral port unless <see cref="SandboxHostOptions.Port"/> is set) and starts serving.</summary>
        public void Start()
        {
            if (Interlocked.CompareExchange(ref _state, 1, 0) != 0) throw new InvalidOperationException("The sandbox host was already started.");
            var attempts = _options.Port == 0 ? 20 : 1;
            for (var attempt = 1; ; attempt++)
            {
                var port = _options.Port == 0 ? FreePort() : _options.Port;
                var listener = new HttpListener { IgnoreWriteExceptions = true };
                listener.Prefixes.Add("http://127.0.0.1:" + port.ToString(CultureInfo.InvariantCulture) + "/");
                try
                {
                    listener.Start();
                    _listener = listener;
                    Port = port;
                    break;
                }
                catch (HttpListenerException) when (attempt < attempts)
                {
                    // Another process took the probed port between probe and bind: try another.
                    listener.Close();
                }
            }
            _acceptLoop = Task.Run(AcceptLoopAsync);
            StartPostgresIfRequested();
        }

        public Task StartAsync()
        {
            if (_options.StartPostgres) return Task.Run(Start);
            Start();
            return Task.CompletedTask;
        }

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

        /// <summary>The StreamUrl StartSession/ResumeSession return for a session.</summary>
        public string StreamUrlFor(SandboxSession session) =>
            StreamUrlBase + "/" + Uri.EscapeDataString(session.SessionId) + "?role=publish_subscribe&cell-number=" + Uri.EscapeDataString(CellNumber(session));

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
            return o.ToJsonString();
        }

        private async Task AcceptLoopAsync()
        {
            var listener = _listener!;
            while (!_stopping.IsCancellationRequested)
            {
                HttpListenerContext context;
                try
                {
                    context = await listener.GetContextAsync().ConfigureAwait(false);
                }
                catch (Exception) when (_stopping.IsCancellationRequested || !listener.IsListening)
                {
                    return;
                }
                catch (HttpListenerException ex)
                {
                    _options.Log?.Invoke("accept failed: " + ex.Message);
                    continue;
                }
                var task = Task.Run(() => HandleAsync(context));
                _inFlight.TryAdd(task, 0);
                _ = task.ContinueWith(t => _inFlight.TryRemove(t, out _), TaskScheduler.Default);
            }
        }

        private async Task HandleAsync(HttpListenerContext context)
        {
            try
            {
                var path = context.Request.Url?.AbsolutePath ?? "/";
                if (path.StartsWith("/streams/", StringComparison.Ordinal) || context.Request.IsWebSocketRequest)
                {
                    await HandleStreamAsync(context, path).ConfigureAwait(false);
                    return;
                }
                var body = await ReadBodyAsync(context.Request).ConfigureAwait(false);
                if (body == null)
                {
                    await WriteAsync(context.Response, 413, "text/plain", "Request body too large.", null).ConfigureAwait(false);
                    return;
                }
                if (path.StartsWith("/control/", StringComparison.Ordinal))
                {
                    var (status, json) = Agent.HandleControl(context.Request.HttpMethod, path, Encoding.UTF8.GetString(body));
                    await WriteAsync(context.Response, status, "application/json", json, null).ConfigureAwait(false);
                    return;
                }
                var request = SandboxRequest.From(context.Request, body);
                if (request.Header("X-Amz-Target") != null)
                {
                    await HandleSsmAsync(context, request).ConfigureAwait(false);
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
                try
                {
                    context.Response.StatusCode = 500;
                    context.Response.Close();
                }
                catch (Exception)
                {
                    // The client went away.
                }
            }
        }

        private static bool IsEc2(SandboxRequest request, string path)
        {
            if (path == "/ec2" || path == "/ec2/") return true;
            var contentType = request.Header("Content-Type") ?? "";
            return contentType.StartsWith("application/x-www-form-urlencoded", StringComparison.OrdinalIgnoreCase);
        }

        private async Task HandleStreamAsync(HttpListenerContext context, string path)
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

        private async Task HandleSsmAsync(HttpListenerContext context, SandboxRequest request)
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

        private async Task HandleEc2Async(HttpListenerContext context, SandboxRequest request)
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
                var output = _ec2.Handle(form, requestId);
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

        private static async Task<byte[]?> ReadBodyAsync(HttpListenerRequest request)
        {
            using var buffer = new MemoryStream();
            var chunk = new byte[16384];
            var input = request.InputStream;
            int read;
            while ((read = await input.ReadAsync(chunk, 0, chunk.Length).ConfigureAwait(false)) > 0)
            {
                if (buffer.Length + read > MaxBodyBytes) return null;
                buffer.Write(chunk, 0, read);
            }
            return buffer.ToArray();
        }

        private async Task WriteAsync(HttpListenerResponse response, int status, string contentType, string body, IEnumerable<KeyValuePair<string, string>>? headers)
        {
            var bytes = Encoding.UTF8.GetBytes(body);
            response.StatusCode = status;
            response.ContentType = contentType;
            response.ContentLength64 = bytes.Length;
            // The AWS SDKs read the server's time from Date to correct clock skew: it is the sandbox clock's.
            response.Headers["Date"] = World.Clock.UtcNow.ToString("r", CultureInfo.InvariantCulture);
            if (headers != null)
            {
                foreach (var h in headers) response.Headers[h.Key] = h.Value;
            }
            try
            {
                await response.OutputStream.WriteAsync(bytes, 0, bytes.Length).ConfigureAwait(false);
                response.Close();
            }
            catch (Exception ex) when (ex is HttpListenerException || ex is IOException || ex is ObjectDisposedException)
            {
                // The client went away.
            }
        }

        /// <summary>Stops listening, cancels <see cref="SandboxStreamContext.Stopping"/> and waits (bounded) for requests in flight.</summary>
        public async Task StopAsync()
        {
            if (Interlocked.Exchange(ref _state, 2) != 1) return;
            _stopping.Cancel();
            Agent.Shutdown();
            // Close (not Stop): on Linux only Close ends a pending GetContextAsync at once.
            try
            {
                _listener?.Close();
            }
            catch (ObjectDisposedException)
            {
            }
            var pending = _inFlight.Keys.ToList();
            if (_acceptLoop != null) pending.Add(_acceptLoop);
            await Task.WhenAny(Task.WhenAll(pending), Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
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
