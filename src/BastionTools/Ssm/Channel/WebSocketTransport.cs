using System;
using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>The server answered the WebSocket upgrade request with another status than 101 Switching Protocols.</summary>
    internal sealed class WebSocketUpgradeException : System.IO.IOException
    {
        public WebSocketUpgradeException(int statusCode, string message)
            : base(message)
        {
            StatusCode = statusCode;
        }

        /// <summary>The HTTP status of the answer (403 when the service refused the token, for example).</summary>
        public int StatusCode { get; }
    }

    /// <summary>
    /// A minimal RFC 6455 WebSocket client over TCP (ws://) or TLS (wss://), optionally through an HTTP CONNECT proxy.
    /// It does only what the data channel needs, the same way on .NET Framework and .NET: no extensions, no
    /// sub-protocols, binary and text messages, ping/pong, close. Server frames are read with one reused 64 KiB buffer
    /// and joined into one reused message buffer that never grows beyond <see cref="WebSocketTransportOptions.MaxMessageBytes"/>;
    /// a message announced larger fails as soon as its frame header arrives. Client frames are masked while copied,
    /// so callers' buffers are never modified, and a batch goes out in one write.
    /// <para>
    /// Failures: any broken read or write (protocol error, I/O error, cancellation of a read or of a write in progress)
    /// drops the connection, as a half-read or half-written frame cannot be recovered.
    /// </para>
    /// </summary>
    internal sealed class WebSocketTransport : IMessageTransport
    {
        private const string AcceptGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
        private const int ReadBufferSize = 64 * 1024;
        private const int MaxResponseHeadBytes = 16 * 1024;
        private const int MaxControlPayload = 125;
        private const int MaxErrorBodyChars = 200;
        private const byte OpContinuation = 0x0;
        private const byte OpText = 0x1;
        private const byte OpBinary = 0x2;
        private const byte OpClose = 0x8;
        private const byte OpPing = 0x9;
        private const byte OpPong = 0xA;

        private static readonly TimeSpan CloseWait = TimeSpan.FromSeconds(2);
        private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
        private static readonly ArraySegment<byte> NoData = new(Array.Empty<byte>());

        private readonly TcpClient _tcp;
        private readonly Socket _socket;
        private readonly Stream _stream;
        private readonly int _maxMessageBytes;
        private readonly byte[] _readBuffer = new byte[ReadBufferSize];
        private readonly byte[] _control = new byte[MaxControlPayload];
        private readonly SemaphoreSlim _readLock = new(1, 1);
        private readonly SemaphoreSlim _writeLock = new(1, 1);
        private byte[]? _pendingPong;
        private int _pongScheduled;
        private readonly RandomNumberGenerator _random = RandomNumberGenerator.Create();

        // Masking keys come from the cryptographic generator 4 KiB (1,024 keys) at a time rather than one call (a system
        // call on Linux) per write.
        private readonly byte[] _maskKeys = new byte[4096];
        private int _maskKeysUsed = 4096;
        private readonly TaskCompletionSource<bool> _peerClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private byte[] _message = Array.Empty<byte>();
        private int _readStart;
        private int _readEnd;
        private long _lastReceived;
        private long _pings;
        private int _aborted;
        private volatile bool _closeSent;
        private volatile bool _closeReceived;

        private WebSocketTransport(TcpClient tcp, Stream stream, int maxMessageBytes)
        {
            _tcp = tcp;
            _socket = tcp.Client;
            _stream = stream;
            _maxMessageBytes = maxMessageBytes;
        }

        /// <summary>
        /// From now on the socket's reads and writes complete on the socket engine's thread (<see cref="SocketCompletions"/>),
        /// or on the thread pool again: inline only for an owner whose code after a receive never blocks. False where the
        /// runtime cannot.
        /// </summary>
        internal bool SetCompletionsInline(bool inline) => SocketCompletions.SetInline(_socket, inline);

        /// <inheritdoc />
        public long LastReceivedTimestamp => Interlocked.Read(ref _lastReceived);

        /// <inheritdoc />
        /// <remarks>A hint read without locking; for wss:// the socket's bytes are still encrypted (a partial TLS record counts).</remarks>
        public bool HasPendingInput
        {
            get
            {
                if (Volatile.Read(ref _aborted) != 0) return false;
                if (_readEnd > _readStart) return true;
                try
                {
                    return _socket.Available > 0;
                }
                catch (Exception ex) when (ex is ObjectDisposedException || ex is SocketException)
                {
                    return false;
                }
            }
        }

        /// <inheritdoc />
        /// <remarks>Only the receiving loop calls it, between receives: the read buffer is not moving then.</remarks>
        public bool HasBufferedMessage
        {
            get
            {
                var available = _readEnd - _readStart;
                if (available < 2) return false;
                int b0 = _readBuffer[_readStart], b1 = _readBuffer[_readStart + 1];
                // A whole data message in one frame; a control frame or a fragment would have ReceiveAsync read on.
                if ((b0 & 0x80) == 0 || ((b0 & 0x0F) != OpText && (b0 & 0x0F) != OpBinary)) return false;
                var headerLength = (b1 & 0x7F) switch { 126 => 4, 127 => 10, _ => 2 };
                if (available < headerLength) return false;
                var length = headerLength switch
                {
                    4 => BinaryPrimitives.ReadUInt16BigEndian(_readBuffer.AsSpan(_readStart + 2)),
                    10 => BinaryPrimitives.ReadUInt64BigEndian(_readBuffer.AsSpan(_readStart + 2)),
                    _ => (ulong)(b1 & 0x7F),
                };
                return length <= (ulong)(available - headerLength);
            }
        }

        /// <summary>Size of the reused message buffer (never more than MaxMessageBytes); for tests.</summary>
        internal int MessageBufferLength => _message.Length;

        /// <summary>
        /// Opens a WebSocket to <paramref name="url"/> (ws:// or wss://): DNS, TCP (each address in turn), the proxy tunnel
        /// when <paramref name="options"/> and the system say so, TLS with the system's certificate validation (unless
        /// <see cref="WebSocketTransportOptions.ServerCertificateValidation"/> is set), then the HTTP/1.1 upgrade; all of
        /// it within <see cref="WebSocketTransportOptions.ConnectTimeout"/>. Error messages name the host and path, never the query.
        /// </summary>
        /// <exception cref="WebSocketUpgradeException">The server answered the upgrade with another status than 101.</exception>
        /// <exception cref="TransportProtocolException">The upgrade answer (or the proxy's) was malformed or did not prove a WebSocket server.</exception>
        /// <exception cref="IOException">DNS, TCP, proxy or TLS failed, or the timeout passed (inner <see cref="TimeoutException"/>).</exception>
        /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
        public static async Task<WebSocketTransport> ConnectAsync(Uri url, WebSocketTransportOptions options, CancellationToken cancellationToken)
        {
            if (url is null) throw new ArgumentNullException(nameof(url));
            if (options is null) throw new ArgumentNullException(nameof(options));
            if (!url.IsAbsoluteUri) throw new ArgumentException("The WebSocket URL must be absolute.", nameof(url));
            var secure = string.Equals(url.Scheme, "wss", StringComparison.OrdinalIgnoreCase);
            if (!secure && !string.Equals(url.Scheme, "ws", StringComparison.OrdinalIgnoreCase))
                throw new ArgumentException("The WebSocket URL must be ws:// or wss://.", nameof(url));
            if (options.MaxMessageBytes <= 0) throw new ArgumentOutOfRangeException(nameof(options), "MaxMessageBytes must be positive.");
            if (options.ConnectTimeout <= TimeSpan.Zero && options.ConnectTimeout != Timeout.InfiniteTimeSpan)
                throw new ArgumentOutOfRangeException(nameof(options), "ConnectTimeout must be positive.");

            var defaultPort = secure ? 443 : 80;
            var port = url.Port > 0 ? url.Port : defaultPort;
            var host = url.IdnHost;
            var authority = url.HostNameType == UriHostNameType.IPv6 ? "[" + host + "]" : host;
            var hostPort = authority + ":" + port.ToString(CultureInfo.InvariantCulture);
            var hostHeader = port == defaultPort ? authority : hostPort;
            var display = (secure ? "wss://" : "ws://") + hostHeader + url.AbsolutePath;

            var proxy = options.UseProxy ? options.Proxy ?? WebRequest.DefaultWebProxy : null;
            Uri? proxyUri = null;
            if (proxy != null)
            {
                var httpUri = new UriBuilder(url) { Scheme = secure ? "https" : "http", Port = port, Query = string.Empty, Fragment = string.Empty }.Uri;
                if (!proxy.IsBypassed(httpUri))
                {
                    var found = proxy.GetProxy(httpUri);
                    if (found != null && found != httpUri) proxyUri = found;
                }
            }
            if (proxyUri != null && !string.Equals(proxyUri.Scheme, "http", StringComparison.OrdinalIgnoreCase))
                throw new IOException($"The proxy {proxyUri.Host}:{proxyUri.Port} is a {proxyUri.Scheme}:// proxy; only http:// proxies (HTTP CONNECT) are supported.");

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            if (options.ConnectTimeout != Timeout.InfiniteTimeSpan) timeout.CancelAfter(options.ConnectTimeout);
            var token = timeout.Token;
            var stage = "the connection to " + hostPort;
            TcpClient? tcp = null;
            Stream? stream = null;
            try
            {
                if (proxyUri is null)
                {
                    tcp = await ConnectTcpAsync(host, port, token).ConfigureAwait(false);
                    stream = tcp.GetStream();
                }
                else
                {
                    stage = $"the connection to the proxy {proxyUri.Host}:{proxyUri.Port}";
                    tcp = await ConnectTcpAsync(proxyUri.IdnHost, proxyUri.Port, token).ConfigureAwait(false);
                    stream = tcp.GetStream();
                    stage = $"the CONNECT request to the proxy {proxyUri.Host}:{proxyUri.Port}";
                    await OpenTunnelAsync(stream, proxyUri, proxy!.Credentials, hostPort, token).ConfigureAwait(false);
                }

                if (secure)
                {
                    stage = "the TLS handshake with " + hostPort;
                    stream = await AuthenticateAsync(stream, host, options.ServerCertificateValidation, token).ConfigureAwait(false);
                }

                stage = "the WebSocket upgrade";
                var transport = new WebSocketTransport(tcp, stream, options.MaxMessageBytes);
                await transport.UpgradeAsync(url, hostHeader, display, token).ConfigureAwait(false);
                return transport;
            }
            catch (Exception ex)
            {
                stream?.Dispose();
                tcp?.Dispose();
                if (cancellationToken.IsCancellationRequested) throw new OperationCanceledException("Connecting the WebSocket was cancelled.", ex, cancellationToken);
                if (ex is WebSocketUpgradeException) throw;
                if (timeout.IsCancellationRequested)
                {
                    var seconds = options.ConnectTimeout.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture);
                    throw new IOException($"Connecting to {display} timed out after {seconds} s, during {stage}.", new TimeoutException());
                }
                if (ex is TransportProtocolException || !(ex is IOException || ex is SocketException || ex is AuthenticationException)) throw;
                throw new IOException($"Connecting to {display} failed during {stage}: {ex.Message}", ex);
            }
        }

        /// <inheritdoc />
        public async Task<TransportMessage> ReceiveAsync(CancellationToken cancellationToken)
        {
            await _readLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                return await ReceiveLockedAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _readLock.Release();
            }
        }

        /// <inheritdoc />
        public Task SendBinaryAsync(IReadOnlyList<ArraySegment<byte>> messages, CancellationToken cancellationToken)
        {
            if (messages is null) throw new ArgumentNullException(nameof(messages));
            return messages.Count == 0 ? Task.CompletedTask : SendFramesAsync(OpBinary, messages, cancellationToken);
        }

        /// <inheritdoc />
        public Task SendTextAsync(string text, CancellationToken cancellationToken)
        {
            if (text is null) throw new ArgumentNullException(nameof(text));
            return SendFramesAsync(OpText, new[] { new ArraySegment<byte>(Encoding.UTF8.GetBytes(text)) }, cancellationToken);
        }

        /// <inheritdoc />
        public Task PingAsync(CancellationToken cancellationToken)
        {
            var payload = new byte[8];
            BinaryPrimitives.WriteInt64BigEndian(payload, Interlocked.Increment(ref _pings));
            return SendFramesAsync(OpPing, new[] { new ArraySegment<byte>(payload) }, cancellationToken);
        }

        /// <inheritdoc />
        /// <remarks>
        /// Takes at most about 2 s (less if <paramref name="cancellationToken"/> fires) to send the close frame and see the
        /// server's: by reading frames itself (data is dropped) when no <see cref="ReceiveAsync"/> is running, else by waiting
        /// for that one to see it. The connection is disposed in every case; only cancellation of <paramref name="cancellationToken"/> is thrown.
        /// </remarks>
        public async Task CloseAsync(int status, string description, CancellationToken cancellationToken)
        {
            if (status < 1000 || status > 4999) throw new ArgumentOutOfRangeException(nameof(status), "A close status is 1000-4999.");
            var reason = Encoding.UTF8.GetBytes(description ?? string.Empty);
            if (reason.Length > MaxControlPayload - 2) throw new ArgumentException("A close description is at most 123 bytes of UTF-8.", nameof(description));
            var payload = new byte[2 + reason.Length];
            BinaryPrimitives.WriteUInt16BigEndian(payload, (ushort)status);
            Buffer.BlockCopy(reason, 0, payload, 2, reason.Length);
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            wait.CancelAfter(CloseWait);
            try
            {
                if (Volatile.Read(ref _aborted) != 0) return;
                await SendFramesAsync(OpClose, new[] { new ArraySegment<byte>(payload) }, wait.Token).ConfigureAwait(false);
                if (_readLock.Wait(0))
                {
                    try
                    {
                        while (!_closeReceived) await ReceiveLockedAsync(wait.Token).ConfigureAwait(false);
                    }
                    finally
                    {
                        _readLock.Release();
                    }
                }
                else
                {
                    await WithCancellationAsync(_peerClosed.Task, wait.Token).ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
            {
                // Best effort: the server did not answer in time or the connection broke. It is dropped below either way.
            }
            finally
            {
                Abort();
            }
        }

        /// <inheritdoc />
        public void Abort()
        {
            if (Interlocked.Exchange(ref _aborted, 1) != 0) return;
            _peerClosed.TrySetResult(false);
            try
            {
                _socket.Dispose();
                _stream.Dispose();
                _tcp.Dispose();
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException)
            {
                // Already broken: nothing more to release.
            }
        }

        /// <summary>Same as <see cref="Abort"/>.</summary>
        public void Dispose() => Abort();

        // ---- connecting ----

        private static async Task<TcpClient> ConnectTcpAsync(string host, int port, CancellationToken token)
        {
            var addresses = IPAddress.TryParse(host, out var literal)
                ? new[] { literal }
                : await WithCancellationAsync(Dns.GetHostAddressesAsync(host), token).ConfigureAwait(false);
            if (addresses.Length == 0) throw new IOException($"The name {host} has no address.");
            Exception? last = null;
            foreach (var address in addresses)
            {
                TcpClient? tcp = null;
                try
                {
                    tcp = new TcpClient(address.AddressFamily) { NoDelay = true };
                    await WithCancellationAsync(tcp.ConnectAsync(address, port), token).ConfigureAwait(false);
                    return tcp;
                }
                catch (Exception ex)
                {
                    tcp?.Dispose();
                    if (!(ex is SocketException)) throw;
                    last = ex; // refused or unreachable: the next address
                }
            }
            throw last!;
        }

        private static async Task OpenTunnelAsync(Stream stream, Uri proxyUri, ICredentials? credentials, string hostPort, CancellationToken token)
        {
            var request = new StringBuilder()
                .Append("CONNECT ").Append(hostPort).Append(" HTTP/1.1\r\n")
                .Append("Host: ").Append(hostPort).Append("\r\n");
            var authorization = ProxyAuthorization(proxyUri, credentials);
            if (authorization != null) request.Append("Proxy-Authorization: ").Append(authorization).Append("\r\n");
            var bytes = Encoding.ASCII.GetBytes(request.Append("\r\n").ToString());
            await WithCancellationAsync(stream.WriteAsync(bytes, 0, bytes.Length, token), token).ConfigureAwait(false);

            var buffer = new byte[MaxResponseHeadBytes];
            var (headLength, count) = await ReadHeadAsync(stream, buffer, token).ConfigureAwait(false);
            var (status, reasonPhrase, _) = ParseHead(buffer, headLength);
            if (status < 200 || status > 299) throw new IOException($"the proxy answered HTTP {status} {reasonPhrase}".TrimEnd() + ".");
            if (count > headLength) throw new TransportProtocolException($"The proxy {proxyUri.Host}:{proxyUri.Port} sent data after its CONNECT answer.");
        }

        /// <summary>"Basic ..." from the proxy URI's user info or the proxy's credentials for it; null when there are none.</summary>
        private static string? ProxyAuthorization(Uri proxyUri, ICredentials? credentials)
        {
            string user, password;
            if (!string.IsNullOrEmpty(proxyUri.UserInfo))
            {
                var info = proxyUri.UserInfo;
                var colon = info.IndexOf(':');
                user = Uri.UnescapeDataString(colon < 0 ? info : info.Substring(0, colon));
                password = colon < 0 ? string.Empty : Uri.UnescapeDataString(info.Substring(colon + 1));
            }
            else if (credentials?.GetCredential(proxyUri, "Basic") is NetworkCredential credential && !string.IsNullOrEmpty(credential.UserName))
            {
                user = string.IsNullOrEmpty(credential.Domain) ? credential.UserName : credential.Domain + "\\" + credential.UserName;
                password = credential.Password ?? string.Empty;
            }
            else
            {
                return null;
            }
            return "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes(user + ":" + password));
        }

        private static async Task<Stream> AuthenticateAsync(Stream inner, string host, RemoteCertificateValidationCallback? validation, CancellationToken token)
        {
            // leaveInnerStreamOpen: the transport disposes the socket itself (and a failed first attempt must not close it).
            var ssl = new SslStream(inner, leaveInnerStreamOpen: true, validation);
            try
            {
                try
                {
                    await WithCancellationAsync(ssl.AuthenticateAsClientAsync(host, null, SslProtocols.None, checkCertificateRevocation: false), token).ConfigureAwait(false);
                }
                catch (NotSupportedException)
                {
                    // An old .NET Framework without "system default" (None): TLS 1.2 explicitly.
                    ssl.Dispose();
                    ssl = new SslStream(inner, leaveInnerStreamOpen: true, validation);
                    await WithCancellationAsync(ssl.AuthenticateAsClientAsync(host, null, SslProtocols.Tls12, checkCertificateRevocation: false), token).ConfigureAwait(false);
                }
                return ssl;
            }
            catch
            {
                ssl.Dispose();
                throw;
            }
        }

        private async Task UpgradeAsync(Uri url, string hostHeader, string display, CancellationToken token)
        {
            var keyBytes = new byte[16];
            _random.GetBytes(keyBytes);
            var key = Convert.ToBase64String(keyBytes);
            var path = url.PathAndQuery.StartsWith("/", StringComparison.Ordinal) ? url.PathAndQuery : "/" + url.PathAndQuery;
            var request = "GET " + path + " HTTP/1.1\r\nHost: " + hostHeader + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n";
            var bytes = Encoding.UTF8.GetBytes(request);
            await WithCancellationAsync(_stream.WriteAsync(bytes, 0, bytes.Length, token), token).ConfigureAwait(false);
            await WithCancellationAsync(_stream.FlushAsync(token), token).ConfigureAwait(false);

            var (headLength, count) = await ReadHeadAsync(_stream, _readBuffer, token).ConfigureAwait(false);
            _readStart = headLength;
            _readEnd = count;
            var (status, _, headers) = ParseHead(_readBuffer, headLength);
            if (status != 101)
            {
                var body = await ReadErrorBodyAsync(headers, token).ConfigureAwait(false);
                throw new WebSocketUpgradeException(status, $"The server refused the WebSocket upgrade of {display}: HTTP {status}{body}.");
            }

            string? Header(string name) => headers.TryGetValue(name, out var value) ? value : null;
            if (!string.Equals(Header("Upgrade")?.Trim(), "websocket", StringComparison.OrdinalIgnoreCase))
                throw new TransportProtocolException($"The upgrade answer of {display} has no 'Upgrade: websocket' header.");
            if (Array.FindIndex((Header("Connection") ?? string.Empty).Split(','), t => string.Equals(t.Trim(), "upgrade", StringComparison.OrdinalIgnoreCase)) < 0)
                throw new TransportProtocolException($"The upgrade answer of {display} has no 'Connection: Upgrade' header.");
            string expected;
            using (var sha1 = SHA1.Create())
                expected = Convert.ToBase64String(sha1.ComputeHash(Encoding.ASCII.GetBytes(key + AcceptGuid)));
            if (!string.Equals(Header("Sec-WebSocket-Accept")?.Trim(), expected, StringComparison.Ordinal))
                throw new TransportProtocolException($"The upgrade answer of {display} has a wrong Sec-WebSocket-Accept: the peer is not a WebSocket server.");
            if (!string.IsNullOrWhiteSpace(Header("Sec-WebSocket-Extensions")))
                throw new TransportProtocolException($"The upgrade answer of {display} enables an extension that was not requested.");
            Touch();
        }

        /// <summary>
        /// " (start of the body)" of a refused upgrade, at most 200 characters: what is buffered, plus what Content-Length
        /// promises (a few hundred bytes at most, within the connect timeout).
        /// </summary>
        private async Task<string> ReadErrorBodyAsync(Dictionary<string, string> headers, CancellationToken token)
        {
            var wanted = headers.TryGetValue("Content-Length", out var value) && int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var length)
                ? Math.Min(length, MaxErrorBodyChars * 4)
                : 0;
            try
            {
                while (_readEnd - _readStart < wanted)
                {
                    var n = await WithCancellationAsync(_stream.ReadAsync(_readBuffer, _readEnd, _readBuffer.Length - _readEnd, token), token).ConfigureAwait(false);
                    if (n == 0) break;
                    _readEnd += n;
                }
            }
            catch (Exception ex) when (ex is IOException || ex is OperationCanceledException)
            {
                // The body is only a hint for the message; the status is what matters.
            }
            var text = Encoding.UTF8.GetString(_readBuffer, _readStart, Math.Min(_readEnd - _readStart, MaxErrorBodyChars * 4)).Trim();
            var body = new string(text.Take(MaxErrorBodyChars).Select(c => char.IsControl(c) ? ' ' : c).ToArray());
            return body.Length == 0 ? string.Empty : " (" + body + ")";
        }

        /// <summary>Reads until the end of an HTTP response head; returns its length (with the blank line) and the bytes buffered.</summary>
        private static async Task<(int HeadLength, int Count)> ReadHeadAsync(Stream stream, byte[] buffer, CancellationToken token)
        {
            var count = 0;
            while (true)
            {
                var n = await WithCancellationAsync(stream.ReadAsync(buffer, count, buffer.Length - count, token), token).ConfigureAwait(false);
                if (n == 0) throw new IOException("The connection was closed before a whole HTTP answer head was received.");
                var from = Math.Max(0, count - 3);
                count += n;
                for (var i = from; i + 3 < count && i + 4 <= MaxResponseHeadBytes; i++)
                {
                    if (buffer[i] == '\r' && buffer[i + 1] == '\n' && buffer[i + 2] == '\r' && buffer[i + 3] == '\n') return (i + 4, count);
                }
                if (count >= MaxResponseHeadBytes) throw new TransportProtocolException("The HTTP answer head is longer than 16 KiB.");
            }
        }

        private static (int Status, string Reason, Dictionary<string, string> Headers) ParseHead(byte[] buffer, int headLength)
        {
            var lines = Encoding.ASCII.GetString(buffer, 0, headLength).Split(new[] { "\r\n" }, StringSplitOptions.RemoveEmptyEntries);
            var parts = lines.Length == 0 ? Array.Empty<string>() : lines[0].Split(new[] { ' ' }, 3);
            if (parts.Length < 2 || !parts[0].StartsWith("HTTP/1.", StringComparison.Ordinal)
                || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var status))
                throw new TransportProtocolException("The answer is not an HTTP/1.x response.");
            var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            for (var i = 1; i < lines.Length; i++)
            {
                var colon = lines[i].IndexOf(':');
                if (colon <= 0) continue;
                var name = lines[i].Substring(0, colon).Trim();
                var value = lines[i].Substring(colon + 1).Trim();
                headers[name] = headers.TryGetValue(name, out var earlier) ? earlier + ", " + value : value;
            }
            var reason = parts.Length > 2 ? parts[2].Trim() : string.Empty;
            return (status, reason.Length > 100 ? reason.Substring(0, 100) : reason, headers);
        }

        /// <summary>Awaits <paramref name="task"/> unless <paramref name="token"/> fires first (the caller then disposes what the task uses).</summary>
        private static async Task WithCancellationAsync(Task task, CancellationToken token)
        {
            if (!task.IsCompleted && token.CanBeCanceled)
            {
                var cancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                using (token.Register(state => ((TaskCompletionSource<bool>)state!).TrySetResult(true), cancelled))
                {
                    if (await Task.WhenAny(task, cancelled.Task).ConfigureAwait(false) != task)
                    {
                        _ = task.ContinueWith(t => _ = t.Exception, CancellationToken.None,
                            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                        throw new OperationCanceledException(token);
                    }
                }
            }
            await task.ConfigureAwait(false);
        }

        private static async Task<T> WithCancellationAsync<T>(Task<T> task, CancellationToken token)
        {
            await WithCancellationAsync((Task)task, token).ConfigureAwait(false);
            return await task.ConfigureAwait(false);
        }

        // ---- reading ----

        private async Task<TransportMessage> ReceiveLockedAsync(CancellationToken cancellationToken)
        {
            if (_closeReceived) throw new IOException("The server has closed the WebSocket connection.");
            ThrowIfAborted();
            using (cancellationToken.Register(state => ((WebSocketTransport)state!).Abort(), this))
            {
                try
                {
                    return await ReadMessageAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    var failure = Failure(ex, cancellationToken);
                    if (ReferenceEquals(failure, ex)) throw;
                    throw failure;
                }
            }
        }

        private async Task<TransportMessage> ReadMessageAsync(CancellationToken cancellationToken)
        {
            var messageOpcode = -1;
            var messageLength = 0;
            while (true)
            {
                await FillAsync(2, cancellationToken).ConfigureAwait(false);
                int b0 = _readBuffer[_readStart], b1 = _readBuffer[_readStart + 1];
                if ((b1 & 0x80) != 0) throw new TransportProtocolException("The server sent a masked frame.");
                if ((b0 & 0x70) != 0) throw new TransportProtocolException("The server set reserved (RSV) bits, but no extension was negotiated.");
                var headerLength = (b1 & 0x7F) switch { 126 => 4, 127 => 10, _ => 2 };
                await FillAsync(headerLength, cancellationToken).ConfigureAwait(false);
                var length = headerLength switch
                {
                    4 => BinaryPrimitives.ReadUInt16BigEndian(_readBuffer.AsSpan(_readStart + 2)),
                    10 => BinaryPrimitives.ReadUInt64BigEndian(_readBuffer.AsSpan(_readStart + 2)),
                    _ => (ulong)(b1 & 0x7F),
                };
                if (length > long.MaxValue) throw new TransportProtocolException("The server sent a 64-bit frame length with the top bit set.");
                _readStart += headerLength;
                var fin = (b0 & 0x80) != 0;
                var opcode = b0 & 0x0F;

                if (opcode >= OpClose)
                {
                    if (opcode > OpPong) throw new TransportProtocolException($"The server sent a frame with the unknown opcode {opcode}.");
                    if (!fin || length > MaxControlPayload) throw new TransportProtocolException("The server sent a fragmented or longer than 125 bytes control frame.");
                    await ReadPayloadAsync(_control, 0, (int)length, cancellationToken).ConfigureAwait(false);
                    Touch();
                    if (opcode == OpClose) return await OnCloseAsync((int)length, cancellationToken).ConfigureAwait(false);
                    if (opcode == OpPing) SchedulePong((int)length);
                    continue;
                }

                if (opcode == OpContinuation)
                {
                    if (messageOpcode < 0) throw new TransportProtocolException("The server sent a continuation frame without a message to continue.");
                }
                else if (opcode == OpText || opcode == OpBinary)
                {
                    if (messageOpcode >= 0) throw new TransportProtocolException("The server started a new message inside a fragmented one.");
                    messageOpcode = opcode;
                }
                else
                {
                    throw new TransportProtocolException($"The server sent a frame with the unknown opcode {opcode}.");
                }

                // Refused on the header alone: nothing of a too large message is buffered.
                if (length + (ulong)messageLength > (ulong)_maxMessageBytes)
                    throw new TransportMessageTooLargeException(
                        $"The server sent a WebSocket message of more than {_maxMessageBytes} bytes ({length + (ulong)messageLength} bytes announced so far).");
                var total = messageLength + (int)length;
                if (total > _message.Length)
                {
                    var grown = new byte[Math.Max(total, (int)Math.Min(_maxMessageBytes, Math.Max(4096L, _message.Length * 2L)))];
                    Buffer.BlockCopy(_message, 0, grown, 0, messageLength);
                    _message = grown;
                }
                await ReadPayloadAsync(_message, messageLength, (int)length, cancellationToken).ConfigureAwait(false);
                messageLength = total;
                Touch();
                if (fin)
                {
                    var kind = messageOpcode == OpText ? TransportMessageKind.Text : TransportMessageKind.Binary;
                    return new TransportMessage(kind, new ArraySegment<byte>(_message, 0, messageLength));
                }
            }
        }

        private async Task<TransportMessage> OnCloseAsync(int length, CancellationToken cancellationToken)
        {
            int? status = null;
            string? description = null;
            if (length == 1) throw new TransportProtocolException("The server sent a close frame with a 1-byte payload.");
            if (length >= 2)
            {
                status = BinaryPrimitives.ReadUInt16BigEndian(_control);
                try
                {
                    description = StrictUtf8.GetString(_control, 2, length - 2);
                }
                catch (ArgumentException ex)
                {
                    throw new TransportProtocolException("The server sent a close reason that is not UTF-8.", ex);
                }
            }
            _closeReceived = true;
            _peerClosed.TrySetResult(true);

            // Echo the status (when it may be sent on the wire), as RFC 6455 section 5.5.1 suggests.
            var echo = status is int s && s >= 1000 && s <= 4999 && s != 1004 && s != 1005 && s != 1006 && s != 1015
                ? new ArraySegment<byte>(_control, 0, 2)
                : NoData;
            try
            {
                await SendFramesAsync(OpClose, new[] { echo }, cancellationToken).ConfigureAwait(false);
            }
            catch (IOException)
            {
                // The server may already have gone; its close is what matters.
            }
            return new TransportMessage(TransportMessageKind.Close, NoData, status, description);
        }

        /// <summary>Makes at least <paramref name="count"/> (at most the buffer's size) unread bytes available in the read buffer.</summary>
        private async Task FillAsync(int count, CancellationToken cancellationToken)
        {
            if (_readEnd - _readStart >= count) return;
            if (_readStart == _readEnd)
            {
                _readStart = _readEnd = 0;
            }
            else if (_readBuffer.Length - _readStart < count)
            {
                Buffer.BlockCopy(_readBuffer, _readStart, _readBuffer, 0, _readEnd - _readStart);
                _readEnd -= _readStart;
                _readStart = 0;
            }
            while (_readEnd - _readStart < count)
                _readEnd += await ReadSomeAsync(_readBuffer, _readEnd, _readBuffer.Length - _readEnd, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>Copies a payload to <paramref name="target"/>: buffered bytes first, then large rests straight from the stream.</summary>
        private async Task ReadPayloadAsync(byte[] target, int offset, int count, CancellationToken cancellationToken)
        {
            while (count > 0)
            {
                if (_readEnd == _readStart)
                {
                    if (count >= _readBuffer.Length)
                    {
                        var n = await ReadSomeAsync(target, offset, count, cancellationToken).ConfigureAwait(false);
                        offset += n;
                        count -= n;
                        continue;
                    }
                    await FillAsync(1, cancellationToken).ConfigureAwait(false);
                }
                var take = Math.Min(count, _readEnd - _readStart);
                Buffer.BlockCopy(_readBuffer, _readStart, target, offset, take);
                _readStart += take;
                offset += take;
                count -= take;
            }
        }

        private async Task<int> ReadSomeAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            var n = await _stream.ReadAsync(buffer, offset, count, cancellationToken).ConfigureAwait(false);
            if (n == 0) throw new IOException("The server closed the connection without a WebSocket close frame.");
            Touch();
            return n;
        }

        private void TakeMaskKeys(byte[] target, int offset, int count)
        {
            lock (_maskKeys)
            {
                while (count > 0)
                {
                    if (_maskKeysUsed == _maskKeys.Length)
                    {
                        _random.GetBytes(_maskKeys);
                        _maskKeysUsed = 0;
                    }
                    var take = Math.Min(count, _maskKeys.Length - _maskKeysUsed);
                    Buffer.BlockCopy(_maskKeys, _maskKeysUsed, target, offset, take);
                    // Each key is used once: the bytes handed out are wiped from the pool.
                    Array.Clear(_maskKeys, _maskKeysUsed, take);
                    _maskKeysUsed += take;
                    offset += take;
                    count -= take;
                }
            }
        }

        private void Touch() => Interlocked.Exchange(ref _lastReceived, Stopwatch.GetTimestamp());

        /// <summary>
        /// Answers a ping without making the reader wait for the write lock (a send blocked on a full socket must never stop
        /// the receive loop). Only the latest ping's payload is answered when several arrive before the pong goes out, as
        /// RFC 6455 5.5.3 allows.
        /// </summary>
        private void SchedulePong(int length)
        {
            var payload = new byte[length];
            Buffer.BlockCopy(_control, 0, payload, 0, length);
            Volatile.Write(ref _pendingPong, payload);
            if (Interlocked.Exchange(ref _pongScheduled, 1) == 0) _ = Task.Run(SendPendingPongsAsync);
        }

        private async Task SendPendingPongsAsync()
        {
            while (true)
            {
                var payload = Interlocked.Exchange(ref _pendingPong, null);
                if (payload != null)
                {
                    try
                    {
                        await SendFramesAsync(OpPong, new[] { new ArraySegment<byte>(payload) }, CancellationToken.None).ConfigureAwait(false);
                    }
                    catch (Exception)
                    {
                        // The connection is broken; the reader finds out.
                        Volatile.Write(ref _pongScheduled, 0);
                        return;
                    }
                }
                Volatile.Write(ref _pongScheduled, 0);
                if (Volatile.Read(ref _pendingPong) == null || Interlocked.Exchange(ref _pongScheduled, 1) != 0) return;
            }
        }

        // ---- writing ----

        /// <summary>
        /// Writes one FIN frame of <paramref name="opcode"/> per payload, masked, in one pooled buffer and one write under the
        /// write lock. After a close frame has been sent, further pongs and closes are skipped and anything else fails.
        /// </summary>
        private async Task SendFramesAsync(byte opcode, IReadOnlyList<ArraySegment<byte>> payloads, CancellationToken cancellationToken)
        {
            long total = 0;
            for (var i = 0; i < payloads.Count; i++)
            {
                if (payloads[i].Array is null) throw new ArgumentException("A message segment has no array.", nameof(payloads));
                total += HeaderLength(payloads[i].Count) + payloads[i].Count;
            }
            var keys = 4 * payloads.Count;
            if (total + keys > int.MaxValue / 2) throw new ArgumentException("The messages are too large for one write.", nameof(payloads));
            var size = (int)total;

            var buffer = ArrayPool<byte>.Shared.Rent(size + keys);
            try
            {
                // The masking keys sit after the frames in the same buffer: one RNG call per batch.
                TakeMaskKeys(buffer, size, keys);
                var position = 0;
                for (var i = 0; i < payloads.Count; i++) position = WriteFrame(buffer, position, opcode, payloads[i], size + 4 * i);

                await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    ThrowIfAborted();
                    if (_closeSent)
                    {
                        if (opcode == OpPong || opcode == OpClose) return;
                        throw new IOException("The WebSocket is closing: nothing can be sent after a close frame.");
                    }
                    if (opcode == OpClose) _closeSent = true;
                    using (cancellationToken.Register(state => ((WebSocketTransport)state!).Abort(), this))
                    {
                        try
                        {
                            await _stream.WriteAsync(buffer, 0, size, cancellationToken).ConfigureAwait(false);
                            await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);
                        }
                        catch (Exception ex)
                        {
                            var failure = Failure(ex, cancellationToken);
                            if (ReferenceEquals(failure, ex)) throw;
                            throw failure;
                        }
                    }
                }
                finally
                {
                    _writeLock.Release();
                }
            }
            finally
            {
                // Cleared: the pool is shared, and the keys sit next to what they mask (shell input, passwords).
                Array.Clear(buffer, 0, size + keys);
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        private static int HeaderLength(int payloadLength) => (payloadLength < 126 ? 2 : payloadLength <= ushort.MaxValue ? 4 : 10) + 4;

        private static int WriteFrame(byte[] buffer, int position, byte opcode, ArraySegment<byte> payload, int keyOffset)
        {
            var count = payload.Count;
            buffer[position++] = (byte)(0x80 | opcode);
            if (count < 126)
            {
                buffer[position++] = (byte)(0x80 | count);
            }
            else if (count <= ushort.MaxValue)
            {
                buffer[position++] = 0x80 | 126;
                BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(position), (ushort)count);
                position += 2;
            }
            else
            {
                buffer[position++] = 0x80 | 127;
                BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(position), (ulong)count);
                position += 8;
            }
            Buffer.BlockCopy(buffer, keyOffset, buffer, position, 4);
            CopyMasked(payload.Array!, payload.Offset, buffer, position + 4, count, buffer, keyOffset);
            return position + 4 + count;
        }

        /// <summary>target = source XOR the 4-byte key (repeated), 8 bytes at a time; the source is not modified.</summary>
        internal static void CopyMasked(byte[] source, int sourceOffset, byte[] target, int targetOffset, int count, byte[] key, int keyOffset)
        {
            var from = new ReadOnlySpan<byte>(source, sourceOffset, count);
            var to = new Span<byte>(target, targetOffset, count);
            var k = BinaryPrimitives.ReadUInt32LittleEndian(key.AsSpan(keyOffset, 4));
            var mask = k | ((ulong)k << 32);
            var i = 0;
            for (; i + 8 <= count; i += 8)
                BinaryPrimitives.WriteUInt64LittleEndian(to.Slice(i), BinaryPrimitives.ReadUInt64LittleEndian(from.Slice(i)) ^ mask);
            for (; i < count; i++) to[i] = (byte)(from[i] ^ key[keyOffset + (i & 3)]);
        }

        // ---- failures ----

        private void ThrowIfAborted()
        {
            if (Volatile.Read(ref _aborted) != 0) throw new IOException("The WebSocket connection has been closed or aborted.");
        }

        /// <summary>Drops the connection after a failed read or write and says why, as an IOException (or cancellation).</summary>
        private Exception Failure(Exception ex, CancellationToken cancellationToken)
        {
            var wasAborted = Volatile.Read(ref _aborted) != 0;
            Abort();
            if (ex is TransportProtocolException || ex is TransportMessageTooLargeException) return ex;
            if (cancellationToken.IsCancellationRequested)
                return new OperationCanceledException("The WebSocket operation was cancelled; the connection has been dropped.", ex, cancellationToken);
            if (wasAborted) return new IOException("The WebSocket connection has been closed or aborted.", ex);
            return ex as IOException ?? new IOException("The WebSocket connection failed: " + ex.Message, ex);
        }
    }
}
