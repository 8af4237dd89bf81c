using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// Completes waits at their due time (a <see cref="Stopwatch"/> timestamp) to within a fraction of a millisecond, for
    /// the delay proxy's long link. <c>Task.Delay</c> cannot: its timers run on a millisecond tick count that on Linux
    /// advances by the kernel's coarse clock, so a chunk went out 2 to 4 ms late on average (3.6 ms measured on a quiet
    /// 2-core VM) and a "40 ms" round trip was 43 to 48 ms, a different amount each run, on the direct and the tunnel path
    /// alike. One thread per clock sleeps until the earliest due wait (with <c>nanosleep</c> on Linux; elsewhere with the
    /// system's millisecond sleep), at most <see cref="MaxSleep"/> at a time so that a wait added with an earlier due is
    /// seen soon, and completes every due wait on its own thread: the continuation (the proxy's write of the chunk) runs
    /// there at once, without a hop through the thread pool. Never early: a wait completes only once its due time has
    /// passed. Thread-safe; <see cref="Dispose"/> completes the waits left (their connections are closing) and ends the thread.
    /// </summary>
    internal sealed class DelayClock : IDisposable
    {
        /// <summary>The longest single sleep: a wait added meanwhile with an earlier due time is seen after at most this.</summary>
        public static readonly TimeSpan MaxSleep = TimeSpan.FromMilliseconds(5);

        private static readonly long MaxSleepTicks = StopwatchTicks(MaxSleep);
        private readonly object _gate = new();
        private readonly PriorityQueue<TaskCompletionSource, long> _waits = new();
        private Thread? _thread;
        private bool _disposed;
        private volatile bool _waiting;

        /// <summary>True while the clock's thread waits or sleeps with a wait pending (tests wait for this).</summary>
        public bool IsWaiting => _waiting;

        /// <summary>How many waits the clock has completed (at or after their due time).</summary>
        public long Completed => Interlocked.Read(ref _completed);
        private long _completed;

        /// <summary>
        /// A clock for the agent double's pauses (<see cref="OutputReadPacer"/>): one thread for the whole process, never
        /// disposed; its waits continue on the thread pool.
        /// </summary>
        public static DelayClock Shared { get; } = new();

        /// <summary>The <see cref="Stopwatch"/> timestamp <paramref name="delay"/> from now: a due time for <see cref="WhenDue"/>.</summary>
        public static long DueIn(TimeSpan delay) => Stopwatch.GetTimestamp() + StopwatchTicks(delay);

        private static long StopwatchTicks(TimeSpan span) => (long)(span.Ticks * (Stopwatch.Frequency / (double)TimeSpan.TicksPerSecond));

        /// <summary>
        /// Completes when <see cref="Stopwatch.GetTimestamp"/> has reached <paramref name="due"/> (at once when it has).
        /// The continuation runs on the clock's thread, as soon as the wait is due, or with
        /// <paramref name="continueOnThreadPool"/> on the thread pool (for work that must not hold up the clock's other waits).
        /// </summary>
        public Task WhenDue(long due, bool continueOnThreadPool = false)
        {
            if (Stopwatch.GetTimestamp() >= due) return Task.CompletedTask;
            var wait = new TaskCompletionSource(continueOnThreadPool ? TaskCreationOptions.RunContinuationsAsynchronously : TaskCreationOptions.None);
            lock (_gate)
            {
                if (_disposed) return Task.CompletedTask;
                _waits.Enqueue(wait, due);
                if (_thread == null)
                {
                    _thread = new Thread(Run) { IsBackground = true, Name = "sandbox delay clock" };
                    _thread.Start();
                }
                else if (ReferenceEquals(_waits.Peek(), wait))
                {
                    Monitor.Pulse(_gate);
                }
            }
            return wait.Task;
        }

        public void Dispose()
        {
            lock (_gate)
            {
                if (_disposed) return;
                _disposed = true;
                Monitor.Pulse(_gate);
            }
        }

        private void Run()
        {
            var due = new List<TaskCompletionSource>();
            while (true)
            {
                long sleep = 0;
                bool ending;
                lock (_gate)
                {
                    while (_waits.Count == 0 && !_disposed) Monitor.Wait(_gate);
                    ending = _disposed;
                    var now = Stopwatch.GetTimestamp();
                    while (_waits.TryPeek(out var wait, out var at) && (ending || at <= now))
                    {
                        _waits.Dequeue();
                        due.Add(wait);
                    }
                    if (due.Count == 0 && _waits.TryPeek(out _, out var next)) sleep = next - now;
                    if (sleep > MaxSleepTicks * 2)
                    {
                        // Far off: wait on the gate, so that an earlier wait or Dispose wakes the thread; then sleep the rest precisely.
                        _waiting = true;
                        Monitor.Wait(_gate, TimeSpan.FromSeconds((double)(sleep - MaxSleepTicks) / Stopwatch.Frequency));
                        _waiting = false;
                        continue;
                    }
                }
                if (sleep > 0)
                {
                    _waiting = true;
                    Sleep(Math.Min(sleep, MaxSleepTicks));
                    _waiting = false;
                    continue;
                }
                foreach (var wait in due) wait.TrySetResult();
                Interlocked.Add(ref _completed, due.Count);
                due.Clear();
                if (ending) return;
            }
        }

        private static void Sleep(long stopwatchTicks)
        {
            var nanoseconds = (long)(stopwatchTicks * (1e9 / Stopwatch.Frequency));
            if (OperatingSystem.IsLinux())
            {
                var request = new Timespec { Seconds = nanoseconds / 1_000_000_000, Nanoseconds = nanoseconds % 1_000_000_000 };
                // Interrupted (EINTR): the loop looks at the clock again and sleeps what is left.
                _ = nanosleep(ref request, IntPtr.Zero);
                return;
            }
            Thread.Sleep(TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, nanoseconds / 100)));
        }

        [StructLayout(LayoutKind.Sequential)]
        private struct Timespec
        {
            public long Seconds;
            public long Nanoseconds;
        }

        [DllImport("libc", SetLastError = true)]
        private static extern int nanosleep(ref Timespec request, IntPtr remaining);
    }
}
