using System;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>The delay proxy's clock (<see cref="DelayClock"/>): never early, in due order, no wait lost or held back.</summary>
    public class DelayClockTests
    {
        /// <summary>Upper bound for things that must happen (never a performance assertion).</summary>
        private static readonly TimeSpan Generous = TimeSpan.FromSeconds(20);

        private static long Ticks(double milliseconds) => (long)(milliseconds * Stopwatch.Frequency / 1000.0);

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ManyWaits_NeverEarly_CompletedInDueOrder_OnTheClocksThread_NoneLost()
        {
            using var clock = new DelayClock();
            const int count = 500;
            var random = new Random(11);
            var start = Stopwatch.GetTimestamp();
            // Distinct due times over 80 ms from 200 ms on, added in random order, from several threads at once.
            var dues = Enumerable.Range(0, count).Select(i => start + Ticks(200 + i * 0.16)).OrderBy(_ => random.Next()).ToArray();
            var completedAt = new long[count];
            var completionOrder = new int[count];
            var threadNames = new string?[count];
            var addedAt = new long[count];
            var completions = 0;
            var tasks = new Task[count];
            Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
            {
                // A wait added after its due time (a slow start), or completed before ContinueWith was attached,
                // continues at once on the caller's thread; the others on the clock's, when it completes them.
                var wait = clock.WhenDue(dues[i]);
                addedAt[i] = Stopwatch.GetTimestamp();
                tasks[i] = wait.ContinueWith(_ =>
                {
                    completedAt[i] = Stopwatch.GetTimestamp();
                    completionOrder[i] = Interlocked.Increment(ref completions);
                    threadNames[i] = Thread.CurrentThread.Name;
                }, TaskContinuationOptions.ExecuteSynchronously);
            });
            await Task.WhenAll(tasks).WaitAsync(Generous);

            Assert.Equal(count, completions);
            for (var i = 0; i < count; i++)
                Assert.True(completedAt[i] >= dues[i], $"wait {i} completed {(dues[i] - completedAt[i]) * 1000.0 / Stopwatch.Frequency:F3} ms early");
            // Most continued on the clock's own thread (the proxy's write runs there at once).
            var held = Enumerable.Range(0, count).Where(i => threadNames[i] == "sandbox delay clock").ToArray();
            Assert.True(held.Length > count / 2, $"only {held.Length} of the waits continued on the clock's thread");
            // Those in the clock's queue before it completed any (an adder held up between its look at the time and
            // the queue, on a loaded machine, can come in behind waits due later) came out in due order.
            var firstCompleted = held.Min(i => completedAt[i]);
            var queuedFirst = held.Where(i => addedAt[i] < firstCompleted).ToArray();
            Assert.True(queuedFirst.Length >= 10, $"only {queuedFirst.Length} waits were queued before the clock completed one");
            var byDue = queuedFirst.OrderBy(i => dues[i]).Select(i => completionOrder[i]).ToArray();
            Assert.Equal(byDue.OrderBy(o => o), byDue);
            Assert.True(clock.Completed >= held.Length, $"the clock completed {clock.Completed} waits, {held.Length} continued on its thread");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AWaitDueEarlier_AddedWhileTheClockWaitsForALaterOne_IsNotHeldBehindIt()
        {
            using var clock = new DelayClock();
            var late = clock.WhenDue(Stopwatch.GetTimestamp() + Ticks(8000));
            // Let the clock's thread start waiting for the late one.
            await WaitUntilAsync(() => !late.IsCompleted && clock.IsWaiting, "the clock waits for the late one");
            var due = Stopwatch.GetTimestamp() + Ticks(30);
            var soon = clock.WhenDue(due);
            await soon.WaitAsync(Generous);
            Assert.True(Stopwatch.GetTimestamp() >= due);
            Assert.False(late.IsCompleted, "the later wait completed with the earlier one");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AWaitAlreadyDue_CompletesAtOnce_AndDisposeLetsThePendingWaitsGo()
        {
            var clock = new DelayClock();
            Assert.True(clock.WhenDue(Stopwatch.GetTimestamp() - 1).IsCompleted);
            Assert.True(clock.WhenDue(0).IsCompleted);
            var pending = clock.WhenDue(Stopwatch.GetTimestamp() + Ticks(60_000));
            await WaitUntilAsync(() => clock.IsWaiting, "the clock waits");
            Assert.False(pending.IsCompleted);
            clock.Dispose();
            await pending.WaitAsync(Generous);
            Assert.Equal(TaskStatus.RanToCompletion, pending.Status);
            // After Dispose nothing waits (the connections it served are closed).
            Assert.True(clock.WhenDue(Stopwatch.GetTimestamp() + Ticks(60_000)).IsCompleted);
            clock.Dispose();
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task OutputReadPacer_WaitsThePauseAfterEveryRead_WithNoCreditAfterAnIdleSpell()
        {
            // The agent's loop (port_mux.go transferDataToMgs): read, send, sleep 1 ms; an idle spell earns no reads without a pause.
            var options = new SandboxAgentOptions { OutputReadPause = TimeSpan.FromMilliseconds(2) };
            var pacer = new OutputReadPacer(options);
            var pause = Ticks(2);
            for (var round = 0; round < 3; round++)
            {
                await Task.Delay(30); // idle: the double used to let up to 10 ms of reads through without a pause here
                for (var read = 0; read < 5; read++)
                {
                    // Timed from before the call: a pause may come back completed when the thread was held up longer
                    // than the pause inside the call (the first call's JIT, a loaded machine), never sooner.
                    var before = Stopwatch.GetTimestamp();
                    await pacer.PauseAsync(CancellationToken.None).WaitAsync(Generous);
                    var waited = Stopwatch.GetTimestamp() - before;
                    Assert.True(waited >= pause, $"round {round}, read {read}: paused {waited * 1000.0 / Stopwatch.Frequency:F3} ms");
                }
            }
            // No pause configured (the bench's fast mode): no wait at all.
            options.OutputReadPause = TimeSpan.Zero;
            Assert.True(pacer.PauseAsync(CancellationToken.None).IsCompleted);
            // A cancelled session does not wait out its pause.
            options.OutputReadPause = TimeSpan.FromSeconds(1);
            using var cancel = new CancellationTokenSource();
            var cancelled = pacer.PauseAsync(cancel.Token);
            cancel.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.WaitAsync(Generous));
        }

        private static Task WaitUntilAsync(Func<bool> condition, string what) =>
            SandboxTestSupport.WaitUntilAsync(() => Task.FromResult(condition()), what, Generous);
    }
}
