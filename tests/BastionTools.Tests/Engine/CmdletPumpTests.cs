using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Commands;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// <see cref="CmdletPump"/>: a cmdlet's thread runs what the engine posts until the work ends. The loop blocks on
    /// its queue and is woken by the end of the work itself (no 50 ms poll): a pump that missed that wake-up would
    /// wait forever here and the test would time out.
    /// </summary>
    public class CmdletPumpTests
    {
        [Fact(Timeout = TestTimeoutMs)]
        public async Task Run_ReturnsWhenTheWorkEnds_WithNothingPosted()
        {
            var result = await Task.Run(() =>
            {
                using var pump = new CmdletPump();
                return pump.Run(async ct =>
                {
                    await Task.Yield();
                    return 42;
                });
            });
            Assert.Equal(42, result);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Run_RunsPostedActionsOnTheCallingThread_InOrder_BeforeItReturns()
        {
            var (seen, caller, threads) = await Task.Run(() =>
            {
                var seen = new List<int>();
                var threads = new HashSet<int>();
                using var pump = new CmdletPump();
                pump.Run(async ct =>
                {
                    for (var i = 0; i < 5; i++)
                    {
                        var n = i;
                        pump.Post(() =>
                        {
                            seen.Add(n);
                            threads.Add(Environment.CurrentManagedThreadId);
                        });
                        await Task.Yield();
                    }
                });
                return (seen, Environment.CurrentManagedThreadId, threads);
            });
            Assert.Equal(new[] { 0, 1, 2, 3, 4 }, seen);
            Assert.Equal(new[] { caller }, threads);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Run_ThrowsTheWorksError_AndCancelEndsTheWork()
        {
            await Assert.ThrowsAsync<InvalidOperationException>(() => Task.Run(() =>
            {
                using var pump = new CmdletPump();
                pump.Run(async ct =>
                {
                    await Task.Yield();
                    throw new InvalidOperationException("boom");
                });
            }));
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Task.Run(() =>
            {
                using var pump = new CmdletPump();
                pump.Run(async ct =>
                {
                    pump.Post(pump.Cancel);
                    await Task.Delay(Timeout.Infinite, ct);
                });
            }));
        }
    }
}
