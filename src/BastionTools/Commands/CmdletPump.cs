using System;
using System.Collections.Concurrent;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Commands
{
    /// <summary>
    /// Runs asynchronous engine work from a cmdlet: the work runs on the thread pool while the pipeline thread
    /// writes what it posts (progress, verbose, warnings) — PowerShell's Write* methods may only be called from the
    /// pipeline thread. Cancelled by Ctrl-C through <see cref="Cancel"/> (StopProcessing).
    /// </summary>
    internal sealed class CmdletPump : IDisposable
    {
        private readonly BlockingCollection<Action> _queue = new();
        private readonly CancellationTokenSource _cancel = new();

        private static readonly Action WorkEnded = () => { };

        public CancellationToken Token => _cancel.Token;

        /// <summary>Queues an action for the pipeline thread (safe from any thread).</summary>
        public void Post(Action action)
        {
            try
            {
                _queue.Add(action);
            }
            catch (InvalidOperationException)
            {
                // The pump has finished: late messages are dropped.
            }
        }

        public void Cancel() => _cancel.Cancel();

        public T Run<T>(Func<CancellationToken, Task<T>> work)
        {
            var task = Task.Run(() => work(_cancel.Token));
            // The end of the work wakes the loop at once (it used to poll every 50 ms, which every call of a cmdlet
            // paid once: 1000 small Invoke-IamPostgresQuery calls took 52 ms each).
            task.ContinueWith(_ => Post(WorkEnded), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            while (!task.IsCompleted)
            {
                _queue.Take()();
            }
            Drain();
            return task.GetAwaiter().GetResult();
        }

        public void Run(Func<CancellationToken, Task> work) => Run<bool>(async ct =>
        {
            await work(ct).ConfigureAwait(false);
            return true;
        });

        public void Drain()
        {
            while (_queue.TryTake(out var action)) action();
        }

        public void Dispose()
        {
            _queue.CompleteAdding();
            _cancel.Dispose();
            _queue.Dispose();
        }
    }
}
