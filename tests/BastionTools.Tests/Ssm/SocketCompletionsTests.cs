using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Net;
using System.Net.Sockets;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// <see cref="SocketCompletions"/> on the runtime the module runs in: a socket asked to run its completions inline
    /// continues a pending read on the socket engine's thread, one not asked on a thread-pool thread.
    /// </summary>
    public sealed class SocketCompletionsTests
    {
        private const int Reads = 20;

        [Fact(Timeout = 60_000)]
        public async Task RunInline_APendingReadContinuesOnTheSocketEngineThread_AndWithoutItOnThePool()
        {
            if (OperatingSystem.IsWindows())
            {
                // Completion ports have no hand-over to take out: nothing is asked of the runtime there.
                Assert.False(SocketCompletions.Supported);
                return;
            }
            Assert.True(SocketCompletions.Supported, "this runtime has no Socket.PreferInlineCompletions: the tunnel hands every completion to the thread pool");

            var inline = await ContinuationThreadsAsync(runInline: true);
            Assert.True(inline.OffPool == Reads, $"inline: {inline.OffPool} of {Reads} reads continued outside the thread pool");

            var pooled = await ContinuationThreadsAsync(runInline: false);
            Assert.True(pooled.OffPool == 0, $"not inline: {pooled.OffPool} of {Reads} reads continued outside the thread pool");
        }

        [Fact(Timeout = 30_000)]
        public async Task TakeTurn_YieldsAfterMaxTurnReadsInARowCompletedAtOnce_OnAThreadWithoutPoolOrContext_ElsewhereNever()
        {
            var max = SocketCompletions.MaxTurn;
            int[]? runOfThree = null, brokenRuns = null, withContext = null;
            var thread = new Thread(() =>
            {
                // 3 x MaxTurn reads completed at once: a yield after each MaxTurn.
                runOfThree = Yields(Enumerable.Repeat(true, 3 * max));
                // A read that had to wait (the loop gave the thread back) starts the count again.
                brokenRuns = Yields(Enumerable.Repeat(true, max - 1).Append(false).Concat(Enumerable.Repeat(true, max - 1)).Append(false).Concat(Enumerable.Repeat(true, max)));
                SynchronizationContext.SetSynchronizationContext(new SynchronizationContext());
                withContext = Yields(Enumerable.Repeat(true, 3 * max));
            });
            thread.Start();
            thread.Join();
            Assert.Equal(new[] { max, 2 * max, 3 * max }, runOfThree);
            Assert.Equal(new[] { 3 * max }, brokenRuns);
            Assert.Empty(withContext!);

            var onPool = await Task.Run(() => Yields(Enumerable.Repeat(true, 3 * max)));
            Assert.Empty(onPool);
        }

        /// <summary>The 1-based positions of the reads after which TakeTurn said to yield.</summary>
        private static int[] Yields(IEnumerable<bool> completedAtOnce)
        {
            var turn = 0;
            return completedAtOnce.Select((atOnce, i) => (Yield: SocketCompletions.TakeTurn(ref turn, atOnce), Position: i + 1))
                .Where(r => r.Yield).Select(r => r.Position).ToArray();
        }

        [Fact]
        public void RunInline_WithoutASocket_IsAnArgumentError()
            => Assert.Throws<ArgumentNullException>(() => SocketCompletions.RunInline(null!));

        /// <summary>
        /// <see cref="Reads"/> reads on an accepted socket, each started before its byte is sent (so it is pending and
        /// completes through the socket engine), and on which kind of thread each continued.
        /// </summary>
        private static async Task<(int OffPool, int Reads)> ContinuationThreadsAsync(bool runInline)
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await client.ConnectAsync(listener.LocalEndPoint!).ConfigureAwait(false);
            using var server = await listener.AcceptAsync().ConfigureAwait(false);
            if (runInline) Assert.True(SocketCompletions.RunInline(server));

            var buffer = new byte[16];
            var offPool = 0;
            for (var i = 0; i < Reads; i++)
            {
                // The read's continuation is attached before the byte goes out (ReadOnceAsync returns at its await), so
                // it runs where the completion runs, never on this thread because the read had already finished.
                var read = ReadOnceAsync(server, buffer, (byte)i);
                client.Send(new[] { (byte)i });
                if (await read.ConfigureAwait(false)) offPool++;
            }
            return (offPool, Reads);
        }

        /// <summary>One pending read of one byte; true when it continued outside the thread pool.</summary>
        private static async Task<bool> ReadOnceAsync(Socket socket, byte[] buffer, byte expected)
        {
            var read = socket.ReceiveAsync(buffer.AsMemory(), SocketFlags.None);
            Assert.False(read.IsCompleted, $"read {expected} completed before its byte was sent");
            var n = await read.ConfigureAwait(false);
            Assert.Equal(1, n);
            Assert.Equal(expected, buffer[0]);
            return !Thread.CurrentThread.IsThreadPoolThread;
        }
    }
}
