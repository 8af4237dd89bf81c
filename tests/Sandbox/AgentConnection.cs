using System;
using System.Collections.Generic;
using System.IO;
using System.Net.WebSockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// One accepted WebSocket of a session's data channel: a single writer task drains a queue (so frames leave in
    /// the order they were queued), outbound reordering is done here, and the byte budget of KillAfterBytes is counted.
    /// <para>
    /// The queue is bounded by bytes (<see cref="SandboxAgentOptions.ConnectionQueueBytes"/>): the real agent writes
    /// to its WebSocket synchronously (gorilla/websocket WriteMessage under a mutex), so a client that does not read
    /// blocks whoever produces frames. <see cref="EnqueueAsync"/> waits for room (first come, first served); a frame
    /// larger than the bound goes when the queue is empty. Aborting, replacing or closing the connection releases
    /// every waiter with false (the frame was not sent; stream data stays unacknowledged and is resent later).
    /// </para>
    /// </summary>
    internal sealed class AgentConnection
    {
        private static readonly TimeSpan HoldFlushDelay = TimeSpan.FromMilliseconds(200);
        private static readonly Task<bool> s_true = Task.FromResult(true);
        private static readonly Task<bool> s_false = Task.FromResult(false);
        private const int FragmentChunk = 64 * 1024;
        private readonly object _gate = new();
        private readonly Queue<Item> _queue = new();
        private readonly LinkedList<Waiter> _waiters = new();
        private readonly SemaphoreSlim _itemsAvailable = new(0);
        private readonly SandboxChannelCounters _counters;
        private readonly long _killAfterBytes;
        private readonly long _capacity;
        private readonly Action? _abortTransport;
        private readonly WriteBatchingStream? _batching;
        private byte[]? _held;
        private long _queuedBytes;
        private long _bytes;
        private int _aborted;
        private int _closing;
        private bool _stalled;

        public AgentConnection(WebSocket socket, Action? abortTransport, SandboxChannelCounters counters, long killAfterBytes, int number, long capacityBytes,
            WriteBatchingStream? writeBatching = null)
        {
            // With KillAfterBytes the connection is cut right after the frame that spends the budget, which must then have
            // reached the socket: no gathering.
            _batching = killAfterBytes > 0 ? null : writeBatching;
            Socket = socket;
            _abortTransport = abortTransport;
            _counters = counters;
            _killAfterBytes = killAfterBytes;
            _capacity = Math.Max(1, capacityBytes);
            Number = number;
            Writer = Task.Run(WriteLoopAsync);
        }

        public WebSocket Socket { get; }
        public int Number { get; }
        public Task Writer { get; }
        public bool IsAborted => Volatile.Read(ref _aborted) != 0;
        public bool IsClosing => Volatile.Read(ref _closing) != 0;

        /// <summary>Bytes of frames queued (or held back) and not yet handed to the socket.</summary>
        public long QueuedBytes
        {
            get { lock (_gate) return _queuedBytes; }
        }

        /// <summary>Producers waiting for room.</summary>
        public int WaiterCount
        {
            get { lock (_gate) return _waiters.Count; }
        }

        private enum ItemKind
        {
            Frame,
            Close,
            Fragments,
        }

        private readonly struct Item
        {
            public Item(ItemKind kind, byte[]? frame, string? close, long fragmentBytes, TaskCompletionSource<long>? done = null)
            {
                Kind = kind;
                Frame = frame;
                Close = close;
                FragmentBytes = fragmentBytes;
                Done = done;
            }

            public ItemKind Kind { get; }
            public byte[]? Frame { get; }
            public string? Close { get; }
            public long FragmentBytes { get; }
            public TaskCompletionSource<long>? Done { get; }
        }

        private sealed class Waiter
        {
            public Waiter(byte[] frame, bool duplicate, bool holdBack)
            {
                Frame = frame;
                Duplicate = duplicate;
                HoldBack = holdBack;
            }

            public byte[] Frame { get; }
            public bool Duplicate { get; }
            public bool HoldBack { get; }
            public long Cost => Frame.Length * (Duplicate ? 2L : 1L);
            public TaskCompletionSource<bool> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        /// <summary>
        /// Queues a frame, waiting for room when the queue is full. <paramref name="holdBack"/> keeps it until the next
        /// frame has gone (or 200 ms passed). False when the connection is aborted, closing or replaced (before or while waiting).
        /// </summary>
        public Task<bool> EnqueueAsync(byte[] frame, bool duplicate, bool holdBack)
        {
            Waiter waiter;
            lock (_gate)
            {
                if (IsAborted || IsClosing) return s_false;
                if (_waiters.Count == 0 && HasRoomLocked(frame.Length * (duplicate ? 2L : 1L)))
                {
                    AddLocked(frame, duplicate, holdBack);
                    return s_true;
                }
                waiter = new Waiter(frame, duplicate, holdBack);
                _waiters.AddLast(waiter);
                Interlocked.Increment(ref _counters._sendWaiters);
                Interlocked.Increment(ref _counters._sendWaits);
            }
            return waiter.Done.Task;
        }

        /// <summary>Queues a control frame (channel_closed, publication, injections) without waiting for room. False when closing or aborted.</summary>
        public bool EnqueueNow(byte[] frame)
        {
            lock (_gate)
            {
                if (IsAborted || IsClosing) return false;
                AddLocked(frame, duplicate: false, holdBack: false);
                return true;
            }
        }

        /// <summary>
        /// Hostile: after what is queued, sends <paramref name="totalBytes"/> of one binary message as fragments that are
        /// never finished, then writes nothing more on this connection (queued and later frames are discarded). The
        /// task completes with the bytes written (or fails when the connection is gone).
        /// </summary>
        public Task<long> EnqueueEndlessFragments(long totalBytes)
        {
            var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_gate)
            {
                if (IsAborted || IsClosing)
                {
                    done.TrySetException(new InvalidOperationException("The connection is closed."));
                    return done.Task;
                }
                FlushHeldLocked();
                _queue.Enqueue(new Item(ItemKind.Fragments, null, null, totalBytes, done));
                _itemsAvailable.Release();
            }
            return done.Task;
        }

        private bool HasRoomLocked(long cost) => _queuedBytes == 0 || _queuedBytes + cost <= _capacity;

        private void AddBytesLocked(long delta)
        {
            _queuedBytes += delta;
            var total = Interlocked.Add(ref _counters._queuedBytes, delta);
            if (delta > 0)
            {
                long peak;
                while (total > (peak = Interlocked.Read(ref _counters._queuedBytesPeak)))
                {
                    if (Interlocked.CompareExchange(ref _counters._queuedBytesPeak, total, peak) == peak) break;
                }
            }
        }

        private void PushLocked(byte[] frame)
        {
            _queue.Enqueue(new Item(ItemKind.Frame, frame, null, 0));
            _itemsAvailable.Release();
        }

        private void AddLocked(byte[] frame, bool duplicate, bool holdBack)
        {
            AddBytesLocked(frame.Length * (duplicate ? 2L : 1L));
            if (holdBack && _held == null)
            {
                _held = frame;
                _ = FlushHeldLaterAsync(frame);
                if (duplicate) PushLocked(frame);
                return;
            }
            PushLocked(frame);
            if (duplicate) PushLocked(frame);
            FlushHeldLocked();
        }

        private void FlushHeldLocked()
        {
            if (_held == null) return;
            PushLocked(_held);
            _held = null;
        }

        private async Task FlushHeldLaterAsync(byte[] frame)
        {
            await Task.Delay(HoldFlushDelay).ConfigureAwait(false);
            lock (_gate)
            {
                if (!ReferenceEquals(_held, frame) || IsAborted) return;
                FlushHeldLocked();
            }
        }

        /// <summary>Frees the room a frame took and lets waiting producers in, oldest first.</summary>
        private void Release(long bytes)
        {
            List<Waiter>? granted = null;
            lock (_gate)
            {
                if (IsAborted) return; // Abort already released everything that was queued
                AddBytesLocked(-bytes);
                while (_waiters.First is { } node && !IsAborted && !IsClosing && HasRoomLocked(node.Value.Cost))
                {
                    _waiters.RemoveFirst();
                    Interlocked.Decrement(ref _counters._sendWaiters);
                    AddLocked(node.Value.Frame, node.Value.Duplicate, node.Value.HoldBack);
                    (granted ??= new List<Waiter>()).Add(node.Value);
                }
            }
            if (granted != null)
            {
                foreach (var w in granted) w.Done.TrySetResult(true);
            }
        }

        /// <summary>Fails every waiting producer (the connection will take no more frames).</summary>
        private void FailWaiters()
        {
            List<Waiter> failed;
            lock (_gate)
            {
                failed = new List<Waiter>(_waiters);
                Interlocked.Add(ref _counters._sendWaiters, -_waiters.Count);
                _waiters.Clear();
            }
            foreach (var w in failed) w.Done.TrySetResult(false);
        }

        /// <summary>
        /// Sends a close frame (1000 and <paramref name="description"/>) after everything queued so far; producers still
        /// waiting for room are released without sending. When <paramref name="abortAfter"/> is given and the writer has
        /// not finished by then (a client that does not read), the connection is aborted.
        /// </summary>
        public void CloseAfterQueued(string description, TimeSpan? abortAfter = null)
        {
            if (Interlocked.Exchange(ref _closing, 1) != 0) return;
            lock (_gate)
            {
                FlushHeldLocked();
                _queue.Enqueue(new Item(ItemKind.Close, null, description, 0));
                _itemsAvailable.Release();
            }
            FailWaiters();
            if (abortAfter is { } after)
            {
                _ = Task.Run(async () =>
                {
                    await Task.WhenAny(Writer, Task.Delay(after)).ConfigureAwait(false);
                    if (!Writer.IsCompleted) Abort(isKill: false);
                });
            }
        }

        /// <summary>Drops the TCP connection without a close frame; every waiting producer is released.</summary>
        public void Abort(bool isKill)
        {
            if (Interlocked.Exchange(ref _aborted, 1) != 0) return;
            if (isKill) Interlocked.Increment(ref _counters._kills);
            List<Item> dropped;
            lock (_gate)
            {
                dropped = new List<Item>(_queue);
                _queue.Clear();
                _held = null;
                AddBytesLocked(-_queuedBytes);
                _itemsAvailable.Release();
            }
            FailWaiters();
            foreach (var item in dropped) item.Done?.TrySetException(new InvalidOperationException("The connection was aborted."));
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
        public void CountBytes(long count)
        {
            var total = Interlocked.Add(ref _bytes, count);
            if (_killAfterBytes > 0 && total >= _killAfterBytes) Abort(isKill: true);
        }

        private async Task WriteLoopAsync()
        {
            // Frames written while gathering: counted as sent, and their room freed, once the write that carries them
            // to the socket is done (as each frame's was after its own write before).
            long gatheredBytes = 0;
            var gatheredFrames = 0;
            void Settle()
            {
                if (gatheredFrames == 0) return;
                Interlocked.Add(ref _counters._messagesSent, gatheredFrames);
                Interlocked.Add(ref _counters._bytesSent, gatheredBytes);
                Release(gatheredBytes);
                CountBytes(gatheredBytes);
                gatheredBytes = 0;
                gatheredFrames = 0;
            }
            try
            {
                while (true)
                {
                    await _itemsAvailable.WaitAsync().ConfigureAwait(false);
                    Item item;
                    bool more;
                    lock (_gate)
                    {
                        if (IsAborted) return;
                        if (!_queue.TryDequeue(out item)) continue;
                        more = _queue.Count > 0;
                    }
                    // A frame with another queued behind it is gathered with the next write (one socket write for several
                    // frames); the last one ready, a close and fragments go out at once, with whatever was gathered.
                    var gather = _batching != null && more && item.Kind == ItemKind.Frame && !_stalled;
                    if (_batching != null) _batching.Batching = gather;
                    switch (item.Kind)
                    {
                        case ItemKind.Close:
                            if (!_stalled && (Socket.State == WebSocketState.Open || Socket.State == WebSocketState.CloseReceived))
                            {
                                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                                await Socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, item.Close, timeout.Token).ConfigureAwait(false);
                                Settle();
                            }
                            return;
                        case ItemKind.Fragments:
                            await SendFragmentsAsync(item).ConfigureAwait(false);
                            Settle();
                            continue;
                    }
                    var frame = item.Frame!;
                    if (_stalled)
                    {
                        // After an unfinished fragmented message nothing more is written on this connection.
                        Interlocked.Increment(ref _counters._discardedAfterStall);
                        Release(frame.Length);
                        continue;
                    }
                    if (Socket.State != WebSocketState.Open && Socket.State != WebSocketState.CloseReceived) return; // finally releases its room
                    await Socket.SendAsync(frame.AsMemory(), WebSocketMessageType.Binary, true, CancellationToken.None).ConfigureAwait(false);
                    if (gather)
                    {
                        gatheredBytes += frame.Length;
                        gatheredFrames++;
                        continue;
                    }
                    Settle();
                    Interlocked.Increment(ref _counters._messagesSent);
                    Interlocked.Add(ref _counters._bytesSent, frame.Length);
                    Release(frame.Length);
                    CountBytes(frame.Length);
                }
            }
            catch (Exception ex) when (ex is WebSocketException || ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException)
            {
                // The peer went away; the read loop notices and detaches the connection. Nobody may wait for room now.
                Abort(isKill: false);
            }
            finally
            {
                // The writer is done (closed, aborted or the socket is gone): nothing queued will ever leave, and
                // nothing more is taken.
                if (_batching != null) _batching.Batching = false;
                Interlocked.Exchange(ref _closing, 1);
                lock (_gate)
                {
                    if (!IsAborted)
                    {
                        _queue.Clear();
                        _held = null;
                        AddBytesLocked(-_queuedBytes);
                    }
                }
                FailWaiters();
            }
        }

        private async Task SendFragmentsAsync(Item item)
        {
            var chunk = new byte[FragmentChunk];
            for (var i = 0; i < chunk.Length; i++) chunk[i] = (byte)('A' + (i % 26));
            long sent = 0;
            try
            {
                // The first fragment may be empty when totalBytes is 0: still an unfinished binary message.
                do
                {
                    var n = (int)Math.Min(chunk.Length, item.FragmentBytes - sent);
                    await Socket.SendAsync(new ArraySegment<byte>(chunk, 0, n), WebSocketMessageType.Binary, false, CancellationToken.None).ConfigureAwait(false);
                    sent += n;
                    Interlocked.Add(ref _counters._bytesSent, n);
                    CountBytes(n);
                }
                while (sent < item.FragmentBytes);
                _stalled = true;
                item.Done?.TrySetResult(sent);
            }
            catch (Exception ex)
            {
                _stalled = true;
                item.Done?.TrySetException(ex);
                throw;
            }
        }
    }
}
