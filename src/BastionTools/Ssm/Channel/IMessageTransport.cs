using System;
using System.Collections.Generic;
using System.Net;
using System.Net.Security;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>What <see cref="IMessageTransport.ReceiveAsync"/> returned.</summary>
    internal enum TransportMessageKind
    {
        Binary,
        Text,

        /// <summary>The peer closed (a close frame): <see cref="TransportMessage.CloseStatus"/> and description are set.</summary>
        Close,
    }

    /// <summary>One whole message from the service (all fragments joined), or its close.</summary>
    internal readonly struct TransportMessage
    {
        public TransportMessage(TransportMessageKind kind, ArraySegment<byte> data, int? closeStatus = null, string? closeDescription = null)
        {
            Kind = kind;
            Data = data;
            CloseStatus = closeStatus;
            CloseDescription = closeDescription;
        }

        public TransportMessageKind Kind { get; }

        /// <summary>
        /// The message's bytes. Valid only until the next <see cref="IMessageTransport.ReceiveAsync"/> call (the buffer is reused):
        /// copy what must outlive it.
        /// </summary>
        public ArraySegment<byte> Data { get; }

        public int? CloseStatus { get; }
        public string? CloseDescription { get; }
    }

    /// <summary>A message was larger than <see cref="WebSocketTransportOptions.MaxMessageBytes"/>: the peer is not the service we know.</summary>
    internal sealed class TransportMessageTooLargeException : System.IO.IOException
    {
        public TransportMessageTooLargeException(string message)
            : base(message)
        {
        }
    }

    /// <summary>The peer broke the WebSocket protocol (bad frame, bad handshake).</summary>
    internal sealed class TransportProtocolException : System.IO.IOException
    {
        public TransportProtocolException(string message, Exception? inner = null)
            : base(message, inner)
        {
        }
    }

    /// <summary>
    /// The transport seam of the data channel: one WebSocket connection to the service (MGS). The reliable channel
    /// (<see cref="DataChannel"/>) above it knows nothing of frames, masking, TLS or proxies; this knows nothing of
    /// sequence numbers. One reader and one writer at a time: <see cref="ReceiveAsync"/> is called by one loop,
    /// the send methods may be called concurrently (they serialize on a write lock).
    /// </summary>
    internal interface IMessageTransport : IDisposable
    {
        /// <summary>
        /// The next whole data message, or a Close. Ping frames are answered with a pong by the transport itself; pong and
        /// ping frames update <see cref="LastReceivedTimestamp"/> but are not returned. Throws IOException (or a subclass:
        /// <see cref="TransportMessageTooLargeException"/>, <see cref="TransportProtocolException"/>) when the connection breaks,
        /// OperationCanceledException when cancelled.
        /// </summary>
        Task<TransportMessage> ReceiveAsync(CancellationToken cancellationToken);

        /// <summary>Sends each segment as one binary message, all in one write to the socket when possible.</summary>
        Task SendBinaryAsync(IReadOnlyList<ArraySegment<byte>> messages, CancellationToken cancellationToken);

        /// <summary>Sends one text message (OpenDataChannel).</summary>
        Task SendTextAsync(string text, CancellationToken cancellationToken);

        /// <summary>Sends a ping frame; the pong (or any other frame) moves <see cref="LastReceivedTimestamp"/>.</summary>
        Task PingAsync(CancellationToken cancellationToken);

        /// <summary><see cref="System.Diagnostics.Stopwatch.GetTimestamp"/> of the last frame of any kind received (data, ping, pong, close).</summary>
        long LastReceivedTimestamp { get; }

        /// <summary>Bytes have arrived from the peer that the transport has not read yet (the socket's receive queue or the transport's buffer).</summary>
        bool HasPendingInput { get; }

        /// <summary>
        /// A whole frame is already in the transport's own buffer, so the next <see cref="ReceiveAsync"/> returns without
        /// reading the socket (false when unsure). Read by the receiving loop between its calls to ReceiveAsync.
        /// </summary>
        bool HasBufferedMessage { get; }

        /// <summary>Sends a close frame (when still possible) and waits briefly for the peer's; then the connection is gone.</summary>
        Task CloseAsync(int status, string description, CancellationToken cancellationToken);

        /// <summary>Drops the connection at once, without a close frame. Pending and later calls fail with IOException.</summary>
        void Abort();
    }

    /// <summary>How a WebSocket transport connects.</summary>
    internal sealed class WebSocketTransportOptions
    {
        /// <summary>Largest message accepted from the service, fragments joined (a bound against a hostile or broken peer).</summary>
        public int MaxMessageBytes { get; set; } = ChannelLimits.MaxServiceMessageBytes;

        /// <summary>TCP connect + TLS + HTTP upgrade must finish within this.</summary>
        public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(15);

        /// <summary>
        /// The proxy to use; null: the system's (<see cref="WebRequest.DefaultWebProxy"/>: HTTPS_PROXY/HTTP_PROXY/NO_PROXY
        /// on Linux and macOS, the Internet settings on Windows). A proxy is reached with HTTP CONNECT.
        /// </summary>
        public IWebProxy? Proxy { get; set; }

        /// <summary>Set false to use no proxy even if the system has one.</summary>
        public bool UseProxy { get; set; } = true;

        /// <summary>
        /// Decides whether the server's TLS certificate is accepted (tests use it to trust a test certificate or CA).
        /// Null, the default: the system's normal validation (chain to a trusted root, name matching the URL's host).
        /// </summary>
        public RemoteCertificateValidationCallback? ServerCertificateValidation { get; set; }
    }
}
