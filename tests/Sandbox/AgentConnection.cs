using System;
using System.Collections.Generic;
using System.IO;
using System.Net.WebSockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// One accepted WebSocket of a session's data channel: one writer at a time drains a queue (so frames leave in
    /// the order they were queued), outbound reordering is done here, and the byte budget of KillAfterBytes is counted.
    /// The writer is whoever queues a frame while no write is under way: it writes on its own thread and hands the rest
    /// of the queue to the completion of a write that did not finish at once (no thread-pool hop per frame; the queue,
    /// its bound and the order are the same as with a writer task of its own).
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
        private readonly TaskCompletionSource _writerDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
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
        // Under _gate: a drain owns the writing (set by whoever starts one; stays set once the writer has finished).
        private bool _draining;
        // The drain's own state, touched only by the drain that owns the writing.
        private long _gatheredBytes;
        private int _gatheredFrames;

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
        }

        public WebSocket Socket { get; }
        public int Number { get; }
        /// <summary>Completes when the writer has finished: closed, aborted, or the socket is gone.</summary>
        public Task Writer => _writerDone.Task;
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
        /// <param name="writeHere">
        /// When no write is under way, write on this thread (false: leave it to a writer on the thread pool, for a caller
        /// with more frames ready at once that can then join this one in a socket write).
        /// </param>
        public Task<bool> EnqueueAsync(byte[] frame, bool duplicate, bool holdBack, bool writeHere = true)
        {
            Waiter waiter;
            bool start;
            lock (_gate)
            {
                if (IsAborted || IsClosing) return s_false;
                if (_waiters.Count == 0 && HasRoomLocked(frame.Length * (duplicate ? 2L : 1L)))
                {
                    AddLocked(frame, duplicate, holdBack);
                    start = ClaimDrainLocked();
                }
                else
                {
                    waiter = new Waiter(frame, duplicate, holdBack);
                    _waiters.AddLast(waiter);
                    Interlocked.Increment(ref _counters._sendWaiters);
                    Interlocked.Increment(ref _counters._sendWaits);
                    return waiter.Done.Task;
                }
            }
            if (start)
            {
                if (writeHere) _ = DrainAsync();
                // On this thread's own queue: it runs once the caller yields (a pump that has sent what was ready), so
                // the frames queued meanwhile leave in one socket write, without waking another thread for it.
                else ThreadPool.UnsafeQueueUserWorkItem(static c => _ = c.DrainAsync(), this, preferLocal: true);
            }
            return s_true;
        }

        /// <summary>Queues a control frame (channel_closed, publication, injections) without waiting for room. False when closing or aborted.</summary>
        public bool EnqueueNow(byte[] frame)
        {
            bool start;
            lock (_gate)
            {
                if (IsAborted || IsClosing) return false;
                AddLocked(frame, duplicate: false, holdBack: false);
                start = ClaimDrainLocked();
            }
            if (start) _ = DrainAsync();
            return true;
        }

        /// <summary>
        /// Hostile: after what is queued, sends <paramref name="totalBytes"/> of one binary message as fragments that are
        /// never finished, then writes nothing more on this connection (queued and later frames are discarded). The
        /// task completes with the bytes written (or fails when the connection is gone).
        /// </summary>
        public Task<long> EnqueueEndlessFragments(long totalBytes)
        {
            var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
            bool start;
            lock (_gate)
            {
                if (IsAborted || IsClosing)
                {
                    done.TrySetException(new InvalidOperationException("The connection is closed."));
                    return done.Task;
                }
                FlushHeldLocked();
                _queue.Enqueue(new Item(ItemKind.Fragments, null, null, totalBytes, done));
                start = ClaimDrainLocked();
            }
            if (start) _ = DrainAsync();
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

        private void PushLocked(byte[] frame) => _queue.Enqueue(new Item(ItemKind.Frame, frame, null, 0));

        /// <summary>
        /// Whether the caller is to start a drain (<see cref="DrainAsync"/>, outside the lock): true when there is
        /// something to do (a queued item, or an abort to finish) and no drain owns the writing.
        /// </summary>
        private bool ClaimDrainLocked()
        {
            if (_draining || (_queue.Count == 0 && !IsAborted)) return false;
            _draining = true;
            return true;
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
            bool start;
            lock (_gate)
            {
                if (!ReferenceEquals(_held, frame) || IsAborted) return;
                FlushHeldLocked();
                start = ClaimDrainLocked();
            }
            if (start) _ = DrainAsync();
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
            bool start;
            lock (_gate)
            {
                FlushHeldLocked();
                _queue.Enqueue(new Item(ItemKind.Close, null, description, 0));
                start = ClaimDrainLocked();
            }
            FailWaiters();
            if (start) _ = DrainAsync();
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
            bool start;
            lock (_gate)
            {
                dropped = new List<Item>(_queue);
                _queue.Clear();
                _held = null;
                AddBytesLocked(-_queuedBytes);
                // A drain under way finishes the writer at its next step; otherwise one is started to do it.
                start = ClaimDrainLocked();
            }
            FailWaiters();
            if (start) _ = DrainAsync();
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

        /// <summary>Frames written while gathering: counted as sent, and their room freed, once the write that carries them is done.</summary>
        private void SettleGathered()
        {
            if (_gatheredFrames == 0) return;
            var bytes = _gatheredBytes;
            Interlocked.Add(ref _counters._messagesSent, _gatheredFrames);
            Interlocked.Add(ref _counters._bytesSent, bytes);
            _gatheredBytes = 0;
            _gatheredFrames = 0;
            Release(bytes);
            CountBytes(bytes);
        }

        /// <summary>
        /// Writes queued items in order until the queue is empty (then gives up the writing) or the writer finishes
        /// (close sent, aborted, socket gone). Runs on the thread of whoever started it until a write does not complete
        /// at once; only one drain runs at a time (<see cref="ClaimDrainLocked"/>).
        /// </summary>
        private async Task DrainAsync()
        {
            try
            {
                while (true)
                {
                    Item item = default;
                    var more = false;
                    bool aborted;
                    lock (_gate)
                    {
                        aborted = IsAborted;
                        if (!aborted && !_queue.TryDequeue(out item))
                        {
                            // Nothing gathered is left unsent: the last item written had nothing queued behind it.
                            _draining = false;
                            return;
                        }
                        more = _queue.Count > 0;
                    }
                    if (aborted)
                    {
                        Finish();
                        return;
                    }
                    if (!await WriteItemAsync(item, more).ConfigureAwait(false)) return;
                }
            }
            catch (Exception ex) when (ex is WebSocketException || ex is IOException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException)
            {
                // The peer went away; the read loop notices and detaches the connection. Nobody may wait for room now.
                Abort(isKill: false);
                Finish();
            }
        }

        /// <summary>Writes one item. False when the writer is done (a close was sent, or the socket is no longer open).</summary>
        private async ValueTask<bool> WriteItemAsync(Item item, bool more)
        {
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
                        SettleGathered();
                    }
                    Finish();
                    return false;
                case ItemKind.Fragments:
                    await SendFragmentsAsync(item).ConfigureAwait(false);
                    SettleGathered();
                    return true;
            }
            var frame = item.Frame!;
            if (_stalled)
            {
                // After an unfinished fragmented message nothing more is written on this connection.
                Interlocked.Increment(ref _counters._discardedAfterStall);
                Release(frame.Length);
                return true;
            }
            if (Socket.State != WebSocketState.Open && Socket.State != WebSocketState.CloseReceived)
            {
                Finish(); // releases its room
                return false;
            }
            await Socket.SendAsync(frame.AsMemory(), WebSocketMessageType.Binary, true, CancellationToken.None).ConfigureAwait(false);
            if (gather)
            {
                _gatheredBytes += frame.Length;
                _gatheredFrames++;
                return true;
            }
            SettleGathered();
            Interlocked.Increment(ref _counters._messagesSent);
            Interlocked.Add(ref _counters._bytesSent, frame.Length);
            Release(frame.Length);
            CountBytes(frame.Length);
            return true;
        }

        /// <summary>
        /// The writer is done (closed, aborted or the socket is gone): nothing queued will ever leave, and nothing more is
        /// taken. Runs once, by the drain that owns the writing (which keeps it, so no other drain starts).
        /// </summary>
        private void Finish()
        {
            if (_writerDone.Task.IsCompleted) return;
            if (_batching != null) _batching.Batching = false;
            Interlocked.Exchange(ref _closing, 1);
            lock (_gate)
            {
                _draining = true;
                if (!IsAborted)
                {
                    _queue.Clear();
                    _held = null;
                    AddBytesLocked(-_queuedBytes);
                }
            }
            FailWaiters();
            _writerDone.TrySetResult();
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
