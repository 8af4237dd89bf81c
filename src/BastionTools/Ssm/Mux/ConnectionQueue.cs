using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Bytes received from the agent for one local connection, waiting for its client to read them. Bounded: the data
    /// channel's receive loop puts data in without ever waiting, and a put that would pass the bound is refused (the
    /// caller then resets that connection). One reader takes the data out in batches.
    /// </summary>
    internal sealed class ConnectionQueue
    {
        private readonly object _gate = new();
        private readonly Queue<byte[]> _items = new();
        private readonly long _limit;
        private readonly ConnectionStatistics? _stats;
        private long _bytes;
        private bool _completed;
        private bool _failed;
        private TaskCompletionSource<bool>? _waiter;

        public ConnectionQueue(long limit, ConnectionStatistics? stats = null)
        {
            if (limit <= 0) throw new ArgumentOutOfRangeException(nameof(limit));
            _limit = limit;
            _stats = stats;
        }

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
        /// Queues <paramref name="data"/> (kept, not copied). False when it would pass the bound: nothing is queued then.
        /// After <see cref="Complete"/> or <see cref="Fail"/> data is discarded and true returned.
        /// </summary>
        public bool TryEnqueue(byte[] data)
        {
            TaskCompletionSource<bool>? wake;
            lock (_gate)
            {
                if (_completed || _failed) return true;
                if (_bytes + data.Length > _limit) return false;
                _items.Enqueue(data);
                _bytes += data.Length;
                wake = _waiter;
                _waiter = null;
            }
            _stats?.Queue(data.Length);
            wake?.TrySetResult(true);
            return true;
        }

        /// <summary>No more data will come (the agent finished): the reader gets what is queued, then the end.</summary>
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
