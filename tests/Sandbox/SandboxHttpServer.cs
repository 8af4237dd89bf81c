using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// One HTTP/1.1 request on a sandbox connection: the parsed request, its response, and the WebSocket upgrade.
    /// The shape follows the part of HttpListenerContext the sandbox used (Request, Response, AcceptWebSocketAsync).
    /// </summary>
    public sealed class SandboxHttpContext
    {
        private readonly SandboxHttpConnection _connection;
        private int _upgraded;

        internal SandboxHttpContext(SandboxHttpConnection connection, SandboxHttpRequest request)
        {
            _connection = connection;
            Request = request;
            Response = new SandboxHttpResponse(connection, request);
        }

        public SandboxHttpRequest Request { get; }
        public SandboxHttpResponse Response { get; }

        /// <summary>True once <see cref="AcceptWebSocketAsync(string?)"/> answered 101: the connection now belongs to the WebSocket.</summary>
        public bool IsUpgraded => Volatile.Read(ref _upgraded) != 0;

        /// <summary>Answers the upgrade (RFC 6455 handshake) and returns the server side of the WebSocket.</summary>
        public Task<SandboxWebSocketContext> AcceptWebSocketAsync(string? subProtocol) =>
            AcceptWebSocketAsync(subProtocol, 16 * 1024, WebSocket.DefaultKeepAliveInterval);

        /// <summary>
        /// Answers the upgrade (RFC 6455 handshake) and returns the server side of the WebSocket. receiveBufferSize is
        /// accepted for HttpListener compatibility (the managed WebSocket reads into the caller's buffers).
        /// A request that is not a valid upgrade gets 400 (426 for a wrong Sec-WebSocket-Version) and a WebSocketException.
        /// </summary>
        public async Task<SandboxWebSocketContext> AcceptWebSocketAsync(string? subProtocol, int receiveBufferSize, TimeSpan keepAliveInterval)
        {
            if (receiveBufferSize < 256) throw new ArgumentOutOfRangeException(nameof(receiveBufferSize));
            if (keepAliveInterval < TimeSpan.Zero && keepAliveInterval != Timeout.InfiniteTimeSpan) throw new ArgumentOutOfRangeException(nameof(keepAliveInterval));
            if (Response.HeadersSent || Interlocked.Exchange(ref _upgraded, 1) != 0)
            {
                throw new InvalidOperationException("The response to this request was already sent.");
            }
            if (!Request.IsWebSocketRequest)
            {
                await RejectAsync(400, null, "Not a WebSocket upgrade request.").ConfigureAwait(false);
            }
            var key = Request.Header("Sec-WebSocket-Key");
            if (!IsValidKey(key))
            {
                await RejectAsync(400, null, "Missing or invalid Sec-WebSocket-Key.").ConfigureAwait(false);
            }
            if (!string.Equals(Request.Header("Sec-WebSocket-Version")?.Trim(), "13", StringComparison.Ordinal))
            {
                await RejectAsync(426, new KeyValuePair<string, string>("Sec-WebSocket-Version", "13"), "Unsupported Sec-WebSocket-Version.").ConfigureAwait(false);
            }
            if (subProtocol != null && !OfferedProtocols().Contains(subProtocol))
            {
                await RejectAsync(400, null, "The client did not offer the subprotocol '" + subProtocol + "'.").ConfigureAwait(false);
            }

            var accept = Convert.ToBase64String(SHA1.HashData(Encoding.ASCII.GetBytes(key!.Trim() + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")));
            var head = new StringBuilder(256);
            head.Append("HTTP/1.1 101 Switching Protocols\r\n");
            head.Append("Upgrade: websocket\r\n");
            head.Append("Connection: Upgrade\r\n");
            head.Append("Sec-WebSocket-Accept: ").Append(accept).Append("\r\n");
            if (subProtocol != null) head.Append("Sec-WebSocket-Protocol: ").Append(subProtocol).Append("\r\n");
            head.Append("\r\n");
            Response.MarkSent();
            await _connection.WriteAsync(Encoding.ASCII.GetBytes(head.ToString())).ConfigureAwait(false);

            var stream = new WriteBatchingStream(_connection.DetachStream());
            var socket = WebSocket.CreateFromStream(stream, new WebSocketCreationOptions
            {
                IsServer = true,
                SubProtocol = subProtocol,
                KeepAliveInterval = keepAliveInterval,
            });
            _connection.Track(socket);
            return new SandboxWebSocketContext(socket, stream);
        }

        private List<string> OfferedProtocols()
        {
            var result = new List<string>();
            foreach (var value in Request.HeaderValues("Sec-WebSocket-Protocol"))
            {
                foreach (var p in value.Split(',')) if (p.Trim().Length > 0) result.Add(p.Trim());
            }
            return result;
        }

        private static bool IsValidKey(string? key)
        {
            if (string.IsNullOrWhiteSpace(key)) return false;
            var bytes = new byte[32];
            return Convert.TryFromBase64String(key.Trim(), bytes, out var written) && written == 16;
        }

        private async Task RejectAsync(int status, KeyValuePair<string, string>? header, string message)
        {
            Response.KeepAlive = false;
            await Response.SendAsync(status, "text/plain", Encoding.UTF8.GetBytes(message), header == null ? null : new[] { header.Value }).ConfigureAwait(false);
            throw new WebSocketException(WebSocketError.HeaderError, message);
        }
    }

    /// <summary>The WebSocket an accepted upgrade produced (the shape of HttpListenerWebSocketContext the sandbox used).</summary>
    public sealed class SandboxWebSocketContext
    {
        internal SandboxWebSocketContext(WebSocket webSocket, WriteBatchingStream writeBatching)
        {
            WebSocket = webSocket;
            WriteBatching = writeBatching;
        }

        public WebSocket WebSocket { get; }

        /// <summary>The stream under <see cref="WebSocket"/>: the agent's connection writer gathers frames that are ready together.</summary>
        internal WriteBatchingStream WriteBatching { get; }
    }

    /// <summary>A parsed HTTP/1.1 request with its whole body.</summary>
    public sealed class SandboxHttpRequest
    {
        internal SandboxHttpRequest(string method, string rawUrl, string path, string query, Version protocolVersion, IReadOnlyList<KeyValuePair<string, string>> headers, byte[] body)
        {
            HttpMethod = method;
            RawUrl = rawUrl;
            Path = path;
            Query = query;
            ProtocolVersion = protocolVersion;
            Headers = headers;
            Body = body;
        }

        public string HttpMethod { get; }
        /// <summary>The request target exactly as on the request line.</summary>
        public string RawUrl { get; }
        /// <summary>The path of the target, still percent-encoded (origin form, also for an absolute-form target).</summary>
        public string Path { get; }
        /// <summary>The query of the target without '?', as sent.</summary>
        public string Query { get; }
        public Version ProtocolVersion { get; }
        /// <summary>Every header line in order (name as sent, value trimmed).</summary>
        public IReadOnlyList<KeyValuePair<string, string>> Headers { get; }
        public byte[] Body { get; }

        public IReadOnlyList<string> HeaderValues(string name)
        {
            var result = new List<string>();
            foreach (var h in Headers) if (string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)) result.Add(h.Value);
            return result;
        }

        /// <summary>The header's values joined with ',' (null when absent).</summary>
        public string? Header(string name)
        {
            var values = HeaderValues(name);
            return values.Count == 0 ? null : string.Join(",", values);
        }

        /// <summary>True when a comma-separated header lists the token (case-insensitive).</summary>
        public bool HeaderHasToken(string name, string token)
        {
            foreach (var value in HeaderValues(name))
            {
                foreach (var part in value.Split(','))
                {
                    if (string.Equals(part.Trim(), token, StringComparison.OrdinalIgnoreCase)) return true;
                }
            }
            return false;
        }

        /// <summary>GET, HTTP/1.1 or later, Connection: Upgrade and Upgrade: websocket (as HttpListener decides it).</summary>
        public bool IsWebSocketRequest =>
            HttpMethod == "GET" && ProtocolVersion >= new Version(1, 1) && HeaderHasToken("Connection", "Upgrade") && HeaderHasToken("Upgrade", "websocket");

        /// <summary>Whether the client wants the connection kept after this request.</summary>
        public bool KeepAlive =>
            ProtocolVersion >= new Version(1, 1) ? !HeaderHasToken("Connection", "close") : HeaderHasToken("Connection", "keep-alive");
    }

    /// <summary>The response to one request: sent once, with Content-Length, on the request's connection.</summary>
    public sealed class SandboxHttpResponse
    {
        private readonly SandboxHttpConnection _connection;
        private readonly SandboxHttpRequest _request;
        private readonly List<KeyValuePair<string, string>> _headers = new();
        private int _sent;

        internal SandboxHttpResponse(SandboxHttpConnection connection, SandboxHttpRequest request)
        {
            _connection = connection;
            _request = request;
            KeepAlive = request.KeepAlive;
        }

        public int StatusCode { get; set; } = 200;
        public string? ContentType { get; set; }
        /// <summary>False closes the connection after this response (sends Connection: close).</summary>
        public bool KeepAlive { get; set; }
        public bool HeadersSent => Volatile.Read(ref _sent) != 0;

        /// <summary>Sets a response header (replacing one of the same name). Content-Length, Connection and Transfer-Encoding are the server's.</summary>
        public void SetHeader(string name, string value)
        {
            if (name.IndexOfAny(new[] { '\r', '\n', ':' }) >= 0 || value.IndexOfAny(new[] { '\r', '\n' }) >= 0) throw new ArgumentException("Invalid header " + name + ".");
            _headers.RemoveAll(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase));
            _headers.Add(new KeyValuePair<string, string>(name, value));
        }

        /// <summary>Sends status, headers and body. False when a response was already sent or the client went away.</summary>
        public async Task<bool> SendAsync(int status, string? contentType, byte[] body, IEnumerable<KeyValuePair<string, string>>? headers)
        {
            if (Interlocked.Exchange(ref _sent, 1) != 0) return false;
            StatusCode = status;
            if (contentType != null) ContentType = contentType;
            if (headers != null)
            {
                foreach (var h in headers) SetHeader(h.Key, h.Value);
            }
            return await _connection.WriteResponseAsync(this, body).ConfigureAwait(false);
        }

        /// <summary>Sends <see cref="StatusCode"/> with an empty body unless a response was already sent (as HttpListenerResponse.Close).</summary>
        public void Close() => SendAsync(StatusCode, null, Array.Empty<byte>(), null).GetAwaiter().GetResult();

        /// <summary>Drops the connection at once (no response, or no WebSocket close frame after an upgrade).</summary>
        public void Abort()
        {
            Interlocked.Exchange(ref _sent, 1);
            _connection.Abort();
        }

        internal void MarkSent() => Interlocked.Exchange(ref _sent, 1);

        internal bool IsHead => _request.HttpMethod == "HEAD";

        internal IReadOnlyList<KeyValuePair<string, string>> Headers => _headers;
    }

    /// <summary>Why a request could not be read: answered with the status, then the connection closes.</summary>
    internal sealed class SandboxHttpProtocolException : Exception
    {
        public SandboxHttpProtocolException(int status, string message) : base(message) => Status = status;

        public int Status { get; }
    }

    /// <summary>
    /// One accepted TCP connection (TCP_NODELAY on): reads requests one after another (keep-alive), hands each to the
    /// host, and after a WebSocket upgrade gives the stream to the WebSocket.
    /// </summary>
    internal sealed class SandboxHttpConnection
    {
        internal const int MaxHeaderBytes = 64 * 1024;
        private const int MaxHeaderCount = 200;
        private readonly Socket _socket;
        private readonly NetworkStream _stream;
        private readonly int _maxBodyBytes;
        private readonly Func<DateTime> _utcNow;
        private readonly SemaphoreSlim _writeLock = new(1, 1);
        private byte[] _buffer = new byte[16 * 1024];
        private int _start;
        private int _end;
        private int _closed;
        private WebSocket? _webSocket;
        private bool _detached;

        public SandboxHttpConnection(Socket socket, int maxBodyBytes, Func<DateTime> utcNow)
        {
            _socket = socket;
            _socket.NoDelay = true;
            _stream = new NetworkStream(socket, ownsSocket: true);
            _maxBodyBytes = maxBodyBytes;
            _utcNow = utcNow;
        }

        /// <summary>Serves requests until the client closes, a response closes the connection, an upgrade finishes, or <see cref="Abort"/>.</summary>
        public async Task RunAsync(Func<SandboxHttpContext, Task> handler, CancellationToken stopping)
        {
            try
            {
                while (!stopping.IsCancellationRequested)
                {
                    SandboxHttpRequest? request;
                    try
                    {
                        request = await ReadRequestAsync(stopping).ConfigureAwait(false);
                    }
                    catch (SandboxHttpProtocolException ex)
                    {
                        await WriteErrorAsync(ex.Status, ex.Message).ConfigureAwait(false);
                        return;
                    }
                    if (request == null) return;
                    var context = new SandboxHttpContext(this, request);
                    await handler(context).ConfigureAwait(false);
                    if (context.IsUpgraded) return;
                    if (!context.Response.HeadersSent)
                    {
                        // The handler returned without answering: answer for it, as HttpListener does when a context is closed.
                        await context.Response.SendAsync(context.Response.StatusCode, context.Response.ContentType, Array.Empty<byte>(), null).ConfigureAwait(false);
                    }
                    if (!context.Response.KeepAlive) return;
                }
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException || ex is OperationCanceledException)
            {
                // The client went away, or the host is stopping.
            }
            finally
            {
                Close();
            }
        }

        /// <summary>Closes the connection (and a WebSocket on it): pending reads and writes fail.</summary>
        public void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) != 0) return;
            var ws = Volatile.Read(ref _webSocket);
            try
            {
                ws?.Abort();
            }
            catch (Exception)
            {
                // Already gone.
            }
            try
            {
                _socket.Shutdown(SocketShutdown.Both);
            }
            catch (Exception)
            {
                // Not connected any more.
            }
            _stream.Dispose();
        }

        public void Abort() => Close();

        internal void Track(WebSocket socket)
        {
            Volatile.Write(ref _webSocket, socket);
            if (Volatile.Read(ref _closed) != 0) socket.Abort();
        }

        /// <summary>
        /// The connection's stream for a WebSocket, read through the agent's read buffer: bytes already read past the
        /// upgrade request come first.
        /// </summary>
        internal BufferedReadStream DetachStream()
        {
            _detached = true;
            var stream = new BufferedReadStream(_stream, _buffer.AsSpan(_start, _end - _start));
            _start = _end = 0;
            return stream;
        }

        internal async Task WriteAsync(byte[] bytes)
        {
            await _writeLock.WaitAsync().ConfigureAwait(false);
            try
            {
                await _stream.WriteAsync(bytes).ConfigureAwait(false);
            }
            finally
            {
                _writeLock.Release();
            }
        }

        internal async Task<bool> WriteResponseAsync(SandboxHttpResponse response, byte[] body)
        {
            var head = new StringBuilder(256);
            head.Append("HTTP/1.1 ").Append(response.StatusCode.ToString(CultureInfo.InvariantCulture)).Append(' ').Append(ReasonPhrase(response.StatusCode)).Append("\r\n");
            var hasDate = false;
            foreach (var h in response.Headers)
            {
                if (IsServerHeader(h.Key) || string.Equals(h.Key, "Content-Type", StringComparison.OrdinalIgnoreCase)) continue;
                if (string.Equals(h.Key, "Date", StringComparison.OrdinalIgnoreCase)) hasDate = true;
                head.Append(h.Key).Append(": ").Append(h.Value).Append("\r\n");
            }
            if (!hasDate) head.Append("Date: ").Append(_utcNow().ToString("r", CultureInfo.InvariantCulture)).Append("\r\n");
            if (response.ContentType != null) head.Append("Content-Type: ").Append(response.ContentType).Append("\r\n");
            head.Append("Content-Length: ").Append(body.Length.ToString(CultureInfo.InvariantCulture)).Append("\r\n");
            if (!response.KeepAlive) head.Append("Connection: close\r\n");
            head.Append("\r\n");

            var headBytes = Encoding.Latin1.GetBytes(head.ToString());
            var bodyLength = response.IsHead ? 0 : body.Length;
            // One write for head and body: one segment on the wire for a small response.
            var bytes = new byte[headBytes.Length + bodyLength];
            Buffer.BlockCopy(headBytes, 0, bytes, 0, headBytes.Length);
            Buffer.BlockCopy(body, 0, bytes, headBytes.Length, bodyLength);
            try
            {
                await WriteAsync(bytes).ConfigureAwait(false);
                return true;
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException)
            {
                Close();
                return false;
            }
        }

        private static bool IsServerHeader(string name) =>
            string.Equals(name, "Content-Length", StringComparison.OrdinalIgnoreCase)
            || string.Equals(name, "Connection", StringComparison.OrdinalIgnoreCase)
            || string.Equals(name, "Transfer-Encoding", StringComparison.OrdinalIgnoreCase);

        private async Task WriteErrorAsync(int status, string message)
        {
            var body = Encoding.UTF8.GetBytes(message);
            var head = "HTTP/1.1 " + status.ToString(CultureInfo.InvariantCulture) + " " + ReasonPhrase(status) + "\r\n"
                + "Date: " + _utcNow().ToString("r", CultureInfo.InvariantCulture) + "\r\n"
                + "Content-Type: text/plain\r\n"
                + "Content-Length: " + body.Length.ToString(CultureInfo.InvariantCulture) + "\r\n"
                + "Connection: close\r\n\r\n";
            var headBytes = Encoding.ASCII.GetBytes(head);
            var bytes = new byte[headBytes.Length + body.Length];
            Buffer.BlockCopy(headBytes, 0, bytes, 0, headBytes.Length);
            Buffer.BlockCopy(body, 0, bytes, headBytes.Length, body.Length);
            await WriteAsync(bytes).ConfigureAwait(false);
        }

        // ---- reading -----------------------------------------------------------------------------------------------

        /// <summary>The next request with its body; null when the client closed the connection between requests.</summary>
        private async Task<SandboxHttpRequest?> ReadRequestAsync(CancellationToken stopping)
        {
            // Request head: up to the empty line.
            int headEnd;
            while (true)
            {
                // Tolerate empty lines before a request line (RFC 9112 2.2).
                while (_end - _start >= 2 && _buffer[_start] == '\r' && _buffer[_start + 1] == '\n') _start += 2;
                headEnd = IndexOfHeadEnd();
                if (headEnd >= 0) break;
                if (_end - _start >= MaxHeaderBytes) throw new SandboxHttpProtocolException(431, "Request header too large.");
                if (!await FillAsync(stopping).ConfigureAwait(false))
                {
                    if (_end == _start) return null;
                    throw new IOException("The client closed the connection in the middle of a request.");
                }
            }
            var headText = Encoding.Latin1.GetString(_buffer, _start, headEnd - _start);
            _start = headEnd + 4;
            var lines = headText.Split("\r\n");

            var requestLine = lines[0].Split(' ');
            if (requestLine.Length != 3 || requestLine[0].Length == 0 || requestLine[1].Length == 0 || !IsToken(requestLine[0]))
            {
                throw new SandboxHttpProtocolException(400, "Malformed request line.");
            }
            var method = requestLine[0];
            var target = requestLine[1];
            Version version;
            switch (requestLine[2])
            {
                case "HTTP/1.1": version = new Version(1, 1); break;
                case "HTTP/1.0": version = new Version(1, 0); break;
                default:
                    if (requestLine[2].StartsWith("HTTP/", StringComparison.Ordinal)) throw new SandboxHttpProtocolException(505, "HTTP version not supported.");
                    throw new SandboxHttpProtocolException(400, "Malformed request line.");
            }

            if (lines.Length - 1 > MaxHeaderCount) throw new SandboxHttpProtocolException(431, "Too many header fields.");
            var headers = new List<KeyValuePair<string, string>>(lines.Length - 1);
            for (var i = 1; i < lines.Length; i++)
            {
                var line = lines[i];
                if (line.Length > 0 && (line[0] == ' ' || line[0] == '\t')) throw new SandboxHttpProtocolException(400, "Obsolete line folding is not accepted.");
                var colon = line.IndexOf(':');
                if (colon <= 0 || !IsToken(line.Substring(0, colon))) throw new SandboxHttpProtocolException(400, "Malformed header field.");
                headers.Add(new KeyValuePair<string, string>(line.Substring(0, colon), line.Substring(colon + 1).Trim(' ', '\t')));
            }

            var (path, query) = SplitTarget(target);
            var probe = new SandboxHttpRequest(method, target, path, query, version, headers, Array.Empty<byte>());
            if (version >= new Version(1, 1) && probe.HeaderValues("Host").Count != 1) throw new SandboxHttpProtocolException(400, "An HTTP/1.1 request needs exactly one Host header.");

            var body = await ReadBodyAsync(probe, stopping).ConfigureAwait(false);
            return body.Length == 0 ? probe : new SandboxHttpRequest(method, target, path, query, version, headers, body);
        }

        private async Task<byte[]> ReadBodyAsync(SandboxHttpRequest request, CancellationToken stopping)
        {
            var transferEncoding = request.HeaderValues("Transfer-Encoding");
            var contentLength = request.HeaderValues("Content-Length");
            if (transferEncoding.Count > 0)
            {
                if (contentLength.Count > 0) throw new SandboxHttpProtocolException(400, "Both Transfer-Encoding and Content-Length.");
                var codings = string.Join(",", transferEncoding).Split(',');
                if (codings.Length != 1 || !string.Equals(codings[0].Trim(), "chunked", StringComparison.OrdinalIgnoreCase))
                {
                    throw new SandboxHttpProtocolException(501, "Only the chunked transfer coding is supported.");
                }
                await ContinueIfExpectedAsync(request).ConfigureAwait(false);
                return await ReadChunkedAsync(stopping).ConfigureAwait(false);
            }
            if (contentLength.Count == 0) return Array.Empty<byte>();

            long length = -1;
            foreach (var value in string.Join(",", contentLength).Split(','))
            {
                var v = value.Trim();
                if (v.Length == 0 || v.Length > 18 || !IsDigits(v)) throw new SandboxHttpProtocolException(400, "Invalid Content-Length.");
                var parsed = long.Parse(v, NumberStyles.None, CultureInfo.InvariantCulture);
                if (length >= 0 && parsed != length) throw new SandboxHttpProtocolException(400, "Conflicting Content-Length values.");
                length = parsed;
            }
            if (length > _maxBodyBytes) throw new SandboxHttpProtocolException(413, "Request body too large.");
            if (length == 0) return Array.Empty<byte>();
            await ContinueIfExpectedAsync(request).ConfigureAwait(false);
            var body = new byte[length];
            await ReadExactlyAsync(body, 0, body.Length, stopping).ConfigureAwait(false);
            return body;
        }

        private async Task ContinueIfExpectedAsync(SandboxHttpRequest request)
        {
            if (request.ProtocolVersion >= new Version(1, 1) && request.HeaderHasToken("Expect", "100-continue") && _end == _start)
            {
                await WriteAsync(Encoding.ASCII.GetBytes("HTTP/1.1 100 Continue\r\n\r\n")).ConfigureAwait(false);
            }
        }

        private async Task<byte[]> ReadChunkedAsync(CancellationToken stopping)
        {
            using var body = new MemoryStream();
            while (true)
            {
                var sizeLine = await ReadLineAsync(stopping).ConfigureAwait(false);
                var semicolon = sizeLine.IndexOf(';');
                var hex = (semicolon < 0 ? sizeLine : sizeLine.Substring(0, semicolon)).Trim(' ', '\t');
                if (hex.Length == 0 || hex.Length > 8 || !int.TryParse(hex, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var size) || size < 0)
                {
                    throw new SandboxHttpProtocolException(400, "Malformed chunk size.");
                }
                if (size == 0) break;
                if (body.Length + size > _maxBodyBytes) throw new SandboxHttpProtocolException(413, "Request body too large.");
                var chunk = new byte[size];
                await ReadExactlyAsync(chunk, 0, size, stopping).ConfigureAwait(false);
                body.Write(chunk, 0, size);
                if ((await ReadLineAsync(stopping).ConfigureAwait(false)).Length != 0) throw new SandboxHttpProtocolException(400, "Malformed chunk.");
            }
            // Trailer fields (ignored) up to the empty line.
            var trailerBytes = 0;
            while (true)
            {
                var trailer = await ReadLineAsync(stopping).ConfigureAwait(false);
                if (trailer.Length == 0) break;
                trailerBytes += trailer.Length;
                if (trailerBytes > MaxHeaderBytes) throw new SandboxHttpProtocolException(431, "Trailer too large.");
            }
            return body.ToArray();
        }

        /// <summary>One CRLF-terminated line (without CRLF), at most 8 KiB.</summary>
        private async Task<string> ReadLineAsync(CancellationToken stopping)
        {
            while (true)
            {
                var lf = Array.IndexOf(_buffer, (byte)'\n', _start, _end - _start);
                if (lf >= 0)
                {
                    if (lf == _start || _buffer[lf - 1] != '\r') throw new SandboxHttpProtocolException(400, "Bare LF in chunked body.");
                    var line = Encoding.Latin1.GetString(_buffer, _start, lf - 1 - _start);
                    _start = lf + 1;
                    return line;
                }
                if (_end - _start > 8192) throw new SandboxHttpProtocolException(400, "Chunk line too long.");
                if (!await FillAsync(stopping).ConfigureAwait(false)) throw new IOException("The client closed the connection in the middle of a request.");
            }
        }

        private async Task ReadExactlyAsync(byte[] target, int offset, int count, CancellationToken stopping)
        {
            var buffered = Math.Min(count, _end - _start);
            Buffer.BlockCopy(_buffer, _start, target, offset, buffered);
            _start += buffered;
            offset += buffered;
            count -= buffered;
            while (count > 0)
            {
                var read = await _stream.ReadAsync(target.AsMemory(offset, count), stopping).ConfigureAwait(false);
                if (read == 0) throw new IOException("The client closed the connection in the middle of a request body.");
                offset += read;
                count -= read;
            }
        }

        /// <summary>Reads more into the buffer (compacting or growing it). False at end of stream.</summary>
        private async Task<bool> FillAsync(CancellationToken stopping)
        {
            if (_detached) throw new InvalidOperationException("The connection belongs to a WebSocket.");
            if (_start > 0)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }
            if (_end == _buffer.Length)
            {
                Array.Resize(ref _buffer, Math.Min(_buffer.Length * 2, MaxHeaderBytes + 16 * 1024));
            }
            var read = await _stream.ReadAsync(_buffer.AsMemory(_end, _buffer.Length - _end), stopping).ConfigureAwait(false);
            if (read == 0) return false;
            _end += read;
            return true;
        }

        private int IndexOfHeadEnd()
        {
            var span = _buffer.AsSpan(_start, _end - _start);
            var i = span.IndexOf("\r\n\r\n"u8);
            return i < 0 ? -1 : _start + i;
        }

        private static (string Path, string Query) SplitTarget(string target)
        {
            var raw = target;
            // An absolute-form request target (proxy style) carries scheme and authority: keep only path and query.
            if (raw.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || raw.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            {
                if (!Uri.TryCreate(raw, UriKind.Absolute, out var u)) throw new SandboxHttpProtocolException(400, "Malformed request target.");
                raw = u.PathAndQuery;
            }
            else if (raw[0] != '/' && raw != "*")
            {
                throw new SandboxHttpProtocolException(400, "Malformed request target.");
            }
            var q = raw.IndexOf('?');
            return q < 0 ? (raw, "") : (raw.Substring(0, q), raw.Substring(q + 1));
        }

        private static bool IsToken(string s)
        {
            foreach (var c in s)
            {
                if (c <= ' ' || c >= 0x7f || "()<>@,;:\\\"/[]?={}".IndexOf(c) >= 0) return false;
            }
            return s.Length > 0;
        }

        private static bool IsDigits(string s)
        {
            foreach (var c in s) if (c < '0' || c > '9') return false;
            return true;
        }

        internal static string ReasonPhrase(int status) => status switch
        {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Content Too Large",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "Status " + status.ToString(CultureInfo.InvariantCulture),
        };
    }
}
