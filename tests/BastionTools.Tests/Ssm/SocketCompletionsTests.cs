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
        internal const int Reads = 20;

        [Fact(Timeout = 60_000)]
        public async Task SetInline_APendingReadContinuesOnTheSocketEngineThread_AndBackOnThePoolWhenUnset()
        {
            if (OperatingSystem.IsWindows())
            {
                // Completion ports have no hand-over to take out: nothing is asked of the runtime there.
                Assert.False(SocketCompletions.Supported);
                return;
            }
            Assert.True(SocketCompletions.Supported, "this runtime has no Socket.PreferInlineCompletions: the tunnel hands every completion to the thread pool");

            using var pair = await SocketPair.OpenAsync();
            var before = await OffPoolReadsAsync(pair);
            Assert.True(before == 0, $"before SetInline: {before} of {Reads} reads continued outside the thread pool");

            Assert.True(SocketCompletions.SetInline(pair.Server, true));
            var inline = await OffPoolReadsAsync(pair);
            Assert.True(inline == Reads, $"inline: {inline} of {Reads} reads continued outside the thread pool");

            // The runtime looks at it for every event: the same socket goes back to the pool, and inline again.
            Assert.True(SocketCompletions.SetInline(pair.Server, false));
            var unset = await OffPoolReadsAsync(pair);
            Assert.True(unset == 0, $"unset: {unset} of {Reads} reads continued outside the thread pool");
            Assert.True(SocketCompletions.SetInline(pair.Server, true));
            var again = await OffPoolReadsAsync(pair);
            Assert.True(again == Reads, $"inline again: {again} of {Reads} reads continued outside the thread pool");
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
        public void SetInline_WithoutASocket_IsAnArgumentError()
            => Assert.Throws<ArgumentNullException>(() => SocketCompletions.SetInline(null!, true));

        /// <summary>
        /// <see cref="Reads"/> reads on the pair's accepted socket, each started before its byte is sent (so it is pending
        /// and completes through the socket engine): how many continued outside the thread pool.
        /// </summary>
        internal static async Task<int> OffPoolReadsAsync(SocketPair pair)
        {
            var buffer = new byte[16];
            var offPool = 0;
            for (var i = 0; i < Reads; i++)
            {
                // The read's continuation is attached before the byte goes out (ReadOnceAsync returns at its await), so
                // it runs where the completion runs, never on this thread because the read had already finished.
                var read = ReadOnceAsync(pair.Server, buffer, (byte)i);
                pair.Client.Send(new[] { (byte)i });
                if (await read.ConfigureAwait(false)) offPool++;
            }
            return offPool;
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

    /// <summary>A connected pair of loopback sockets (the accepted one is <see cref="Server"/>).</summary>
    internal sealed class SocketPair(Socket client, Socket server) : IDisposable
    {
        public Socket Client { get; } = client;
        public Socket Server { get; } = server;

        public static async Task<SocketPair> OpenAsync()
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await client.ConnectAsync(listener.LocalEndPoint!).ConfigureAwait(false);
            var server = await listener.AcceptAsync().ConfigureAwait(false);
            return new SocketPair(client, server);
        }

        public void Dispose()
        {
            Client.Dispose();
            Server.Dispose();
        }
    }
}
