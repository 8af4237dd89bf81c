using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>How much a port session lets its local connections' queues hold (see <see cref="ChannelLimits"/>).</summary>
    internal sealed class ConnectionQueuePolicy
    {
        /// <summary>A connection past this, whose client has taken nothing for <see cref="StallTime"/>, has stopped reading: it is reset.</summary>
        public long ConnectionBytes { get; set; } = ChannelLimits.ConnectionQueueBytes;

        /// <summary>All of a session's connections together never hold more: past it, the connection holding most is reset.</summary>
        public long SessionBytes { get; set; } = ChannelLimits.SessionQueueBytes;

        /// <summary>How long a client may take nothing while its connection is past <see cref="ConnectionBytes"/>.</summary>
        public TimeSpan StallTime { get; set; } = ChannelLimits.ConnectionStallTime;
    }

    /// <summary>What became of data offered to a <see cref="ConnectionQueue"/>.</summary>
    internal enum EnqueueResult
    {
        /// <summary>Queued (or dropped because the connection has ended).</summary>
        Accepted,

        /// <summary>Refused: the queue is past the connection bound and its client has taken nothing for the stall time.</summary>
        Stalled,

        /// <summary>Refused: the queue alone would pass the session bound.</summary>
        Full,
    }

    /// <summary>
    /// Bytes received from the agent for one local connection, waiting for its client to read them. Bounded: the data
    /// channel's receive loop puts data in without ever waiting. Past the connection bound, data is still taken while the
    /// client keeps reading (a slow reader is not a stopped one), up to the session bound; a client that has taken nothing
    /// for the stall time is refused (the caller then resets that connection). One reader takes the data out in batches
    /// and reports each write it completed (<see cref="Progress"/>).
    /// </summary>
    internal sealed class ConnectionQueue
    {
        private readonly object _gate = new();
        private readonly Queue<byte[]> _items = new();
        private readonly long _limit;
        private readonly long _hardLimit;
        private readonly long _stallTicks;
        private readonly ConnectionStatistics? _stats;
        private long _bytes;
        private long _progressTicks = System.Diagnostics.Stopwatch.GetTimestamp();
        private bool _completed;
        private bool _failed;
        private TaskCompletionSource<bool>? _waiter;

        private readonly TimeSpan _stallTime;

        public ConnectionQueue(ConnectionQueuePolicy policy, ConnectionStatistics? stats = null)
        {
            if (policy.ConnectionBytes <= 0 || policy.SessionBytes < policy.ConnectionBytes) throw new ArgumentOutOfRangeException(nameof(policy));
            _limit = policy.ConnectionBytes;
            _hardLimit = policy.SessionBytes;
            _stallTicks = (long)(policy.StallTime.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
            _stallTime = policy.StallTime;
            _stats = stats;
        }

        /// <summary>Why its connection is reset after <paramref name="result"/> (for the log), or null when it was accepted.</summary>
        public string? RefusalReason(EnqueueResult result) => result switch
        {
            EnqueueResult.Stalled => $"its client has read nothing for {_stallTime.TotalSeconds:0.#} s while {Bytes / 1024} KiB waited for it",
            EnqueueResult.Full => $"its client did not keep up: {Bytes / 1024} KiB waited for it",
            _ => null,
        };

        /// <summary>The reader wrote a batch to its client.</summary>
        public void Progress() => Interlocked.Exchange(ref _progressTicks, System.Diagnostics.Stopwatch.GetTimestamp());

        /// <summary>Bytes queued now.</summary>
        public long Bytes
        {
            get
            {
                lock (_gate) return _bytes;
            }
        }

        /// <summary>The bound.</summary>
        public long Limit => _limit;

        public bool IsFailed
        {
            get
            {
                lock (_gate) return _failed;
            }
        }

        /// <summary>
        /// Queues <paramref name="data"/> (kept, not copied), unless the queue is past the connection bound and its client
        /// has taken nothing for the stall time, or it would pass the session bound on its own. After <see cref="Complete"/>
        /// or <see cref="Fail"/> data is discarded (Accepted).
        /// </summary>
        public EnqueueResult TryEnqueue(byte[] data)
        {
            TaskCompletionSource<bool>? wake;
            lock (_gate)
            {
                if (_completed || _failed) return EnqueueResult.Accepted;
                var after = _bytes + data.Length;
                if (after > _hardLimit) return EnqueueResult.Full;
                var now = System.Diagnostics.Stopwatch.GetTimestamp();
                // The stall clock starts when data starts waiting: an idle queue's client has had nothing to read.
                if (_bytes == 0) Interlocked.Exchange(ref _progressTicks, now);
                if (after > _limit && now - Interlocked.Read(ref _progressTicks) > _stallTicks) return EnqueueResult.Stalled;
                _items.Enqueue(data);
                _bytes = after;
                wake = _waiter;
                _waiter = null;
            }
            _stats?.Queue(data.Length);
            wake?.TrySetResult(true);
            return EnqueueResult.Accepted;
        }

        /// <summary>No more data will come (the agent finished): the reader gets what is queued, then the end.</summary>
        /// <summary>
        /// True when nothing is queued and the connection's writer is waiting for data: bytes written to the connection now,
        /// on the caller's thread, are in order. The caller is the only one who queues for this connection (the data
        /// channel's receive loop), so nothing can be queued behind its back while it writes.
        /// </summary>
        public bool IsIdle
        {
            get
            {
                lock (_gate) return !_failed && !_completed && _items.Count == 0 && _waiter != null;
            }
        }

        public void Complete()
        {
            TaskCompletionSource<bool>? wake;
            lock (_gate)
            {
                _completed = true;
                wake = _waiter;
                _waiter = null;
            }
            wake?.TrySetResult(true);
        }

        /// <summary>The connection is gone or reset: everything queued is released now and the reader ends.</summary>
        public void Fail()
        {
            TaskCompletionSource<bool>? wake;
            long released;
            lock (_gate)
            {
                if (_failed) return;
                _failed = true;
                released = _bytes;
                _items.Clear();
                _bytes = 0;
                wake = _waiter;
                _waiter = null;
            }
            if (released > 0) _stats?.Queue(-released);
            wake?.TrySetResult(true);
        }

        /// <summary>
        /// Moves queued buffers into <paramref name="batch"/> (at least one, up to about <paramref name="maxBytes"/>), waiting
        /// while the queue is empty. Returns false at the end (completed and drained, or failed).
        /// </summary>
        public async Task<bool> TakeAsync(List<byte[]> batch, int maxBytes, CancellationToken cancellationToken)
        {
            while (true)
            {
                Task wait;
                lock (_gate)
                {
                    if (_failed) return false;
                    if (_items.Count > 0)
                    {
                        long taken = 0;
                        while (_items.Count > 0 && (batch.Count == 0 || taken + _items.Peek().Length <= maxBytes))
                        {
                            var item = _items.Dequeue();
                            batch.Add(item);
                            taken += item.Length;
                        }
                        _bytes -= taken;
                        _stats?.Queue(-taken);
                        return true;
                    }
                    if (_completed) return false;
                    _waiter ??= new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                    wait = _waiter.Task;
                }
                if (!cancellationToken.CanBeCanceled)
                {
                    await wait.ConfigureAwait(false);
                    continue;
                }
                var cancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                using (cancellationToken.Register(() => cancelled.TrySetResult(true)))
                {
                    await Task.WhenAny(wait, cancelled.Task).ConfigureAwait(false);
                }
                cancellationToken.ThrowIfCancellationRequested();
            }
        }
    }
}
