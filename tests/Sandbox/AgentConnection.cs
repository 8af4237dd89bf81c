using System;
using System.IO;
using System.Net.WebSockets;
using System.Threading;
using System.Threading.Channels;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// One accepted WebSocket of a session's data channel: a single writer task drains a queue (so frames leave in
    /// the order they were queued), outbound reordering is done here, and the byte budget of KillAfterBytes is counted.
    /// </summary>
    internal sealed class AgentConnection
    {
        private static readonly TimeSpan HoldFlushDelay = TimeSpan.FromMilliseconds(200);
        private readonly Channel<Item> _queue = Channel.CreateUnbounded<Item>(new UnboundedChannelOptions { SingleReader = true });
        private readonly SandboxChannelCounters _counters;
        private readonly long _killAfterBytes;
        private readonly object _gate = new();
        private byte[]? _held;
        private long _bytes;
        private int _aborted;
        private int _closing;

        private readonly Action? _abortTransport;

        public AgentConnection(WebSocket socket, Action? abortTransport, SandboxChannelCounters counters, long killAfterBytes, int number)
        {
            Socket = socket;
            _abortTransport = abortTransport;
            _counters = counters;
            _killAfterBytes = killAfterBytes;
            Number = number;
            Writer = Task.Run(WriteLoopAsync);
        }

        public WebSocket Socket { get; }
        public int Number { get; }
        public Task Writer { get; }
        public bool IsAborted => Volatile.Read(ref _aborted) != 0;
        public bool IsClosing => Volatile.Read(ref _closing) != 0;

        private readonly struct Item
        {
            public Item(byte[]? frame, string? close)
            {
                Frame = frame;
                Close = close;
            }

            public byte[]? Frame { get; }
            public string? Close { get; }
        }

        /// <summary>Queues a frame; <paramref name="holdBack"/> keeps it until the next frame has gone (or 200 ms passed).</summary>
        public void Enqueue(byte[] frame, bool duplicate, bool holdBack)
        {
            lock (_gate)
            {
                if (holdBack && _held == null)
                {
                    _held = frame;
                    _ = FlushHeldLaterAsync(frame);
                    return;
                }
                _queue.Writer.TryWrite(new Item(frame, null));
                if (duplicate) _queue.Writer.TryWrite(new Item(frame, null));
                if (_held != null)
                {
                    _queue.Writer.TryWrite(new Item(_held, null));
                    _held = null;
                }
            }
        }

        private async Task FlushHeldLaterAsync(byte[] frame)
        {
            await Task.Delay(HoldFlushDelay).ConfigureAwait(false);
            lock (_gate)
            {
                if (!ReferenceEquals(_held, frame)) return;
                _queue.Writer.TryWrite(new Item(frame, null));
                _held = null;
            }
        }

        /// <summary>Sends a close frame (1000 and <paramref name="description"/>) after everything queued so far.</summary>
        public void CloseAfterQueued(string description)
        {
            if (Interlocked.Exchange(ref _closing, 1) != 0) return;
            lock (_gate)
            {
                if (_held != null)
                {
                    _queue.Writer.TryWrite(new Item(_held, null));
                    _held = null;
                }
                _queue.Writer.TryWrite(new Item(null, description));
            }
        }

        /// <summary>Drops the TCP connection without a close frame.</summary>
        public void Abort(bool isKill)
        {
            if (Interlocked.Exchange(ref _aborted, 1) != 0) return;
            if (isKill) Interlocked.Increment(ref _counters._kills);
            _queue.Writer.TryComplete();
            try
            {
                Socket.Abort();
            }
            catch (Exception)
            {
                // Already gone.
            }
            try
            {
                // HttpListener's WebSocket.Abort leaves the TCP connection open: drop it underneath.
                _abortTransport?.Invoke();
            }
            catch (Exception)
            {
                // Already gone.
            }
        }

        /// <summary>Counts bytes that crossed the socket; aborts when the KillAfterBytes budget is spent.</summary>
        public void CountBytes(int count)
        {
            var total = Interlocked.Add(ref _bytes, count);
            if (_killAfterBytes > 0 && total >= _killAfterBytes) Abort(isKill: true);
        }

        private async Task WriteLoopAsync()
        {
            try
            {
                while (await _queue.Reader.WaitToReadAsync().ConfigureAwait(false))
                {
                    while (_queue.Reader.TryRead(out var item))
                    {
                        if (IsAborted) return;
                        if (item.Close != null)
                        {
                            if (Socket.State == WebSocketState.Open || Socket.State == WebSocketState.CloseReceived)
                            {
                                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                                await Socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, item.Close, timeout.Token).ConfigureAwait(false);
                            }
                            _queue.Writer.TryComplete();
                            return;
                        }
                        var frame = item.Frame!;
                        if (Socket.State != WebSocketState.Open && Socket.State != WebSocketState.CloseReceived) return;
                        await Socket.SendAsync(new ArraySegment<byte>(frame), WebSocketMessageType.Binary, true, CancellationToken.None).ConfigureAwait(false);
                        Interlocked.Increment(ref _counters._messagesSent);
                        Interlocked.Add(ref _counters._bytesSent, frame.Length);
                        CountBytes(frame.Length);
                    }
                }
            }
            catch (Exception ex) when (ex is WebSocketException || ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException)
            {
                // The peer went away; the read loop notices and detaches the connection.
                _queue.Writer.TryComplete();
            }
        }
    }
}
