using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net.Sockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// <see cref="LocalReadReactor"/> with real loopback sockets: what one wake-up reads is followed by one "done", each
    /// connection's end, failure and cancellation reach its task alone, and the thread outlives every connection.
    /// </summary>
    public sealed class LocalReadReactorTests
    {
        private static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

        [Fact(Timeout = 60_000)]
        public async Task ReadsOfOneWakeUp_AreFollowedByOneDone()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            using var c = await SocketPair.OpenAsync();
            using var entered = new ManualResetEventSlim();
            using var release = new ManualResetEventSlim();
            var reader = new RecordingReader
            {
                // The first read holds the thread until B and C both have data waiting.
                Hook = (connection, _) =>
                {
                    if ((string)connection != "A") return;
                    entered.Set();
                    Assert.True(release.Wait(Generous), "never released");
                },
            };
            using var reactor = new LocalReadReactor(reader, 1024);
            var tasks = Register(reactor, ("A", a), ("B", b), ("C", c));

            a.Client.Send(Ascii("a1"));
            Assert.True(entered.Wait(Generous), "the first read never came");
            b.Client.Send(Ascii("b1"));
            c.Client.Send(Ascii("c1"));
            release.Set();

            var calls = await reader.WaitForAsync(l => l.Count(x => x == "done") >= 2);
            Assert.Equal("A:a1", calls[0]);
            Assert.Equal("done", calls[1]);
            Assert.Equal(new[] { "B:b1", "C:c1" }, calls.Skip(2).Take(2).OrderBy(x => x, StringComparer.Ordinal));
            Assert.Equal("done", calls[4]);
            Assert.Equal(5, calls.Length);
            Assert.All(tasks, t => Assert.False(t.IsCompleted));
        }

        [Fact(Timeout = 60_000)]
        public async Task EndAndReset_CompleteAndFaultTheirOwnTask_TheOthersGoOn()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            using var c = await SocketPair.OpenAsync();
            var reader = new RecordingReader();
            using var reactor = new LocalReadReactor(reader, 1024);
            var tasks = Register(reactor, ("A", a), ("B", b), ("C", c));

            a.Client.Send(Ascii("last words"));
            a.Client.Shutdown(SocketShutdown.Send);
            await tasks[0].WaitAsync(Generous);
            Assert.True(tasks[0].IsCompletedSuccessfully);

            b.Client.LingerState = new LingerOption(true, 0);
            b.Client.Close();
            var reset = await Assert.ThrowsAsync<IOException>(() => tasks[1].WaitAsync(Generous));
            Assert.Contains("ConnectionReset", reset.Message, StringComparison.Ordinal);

            c.Client.Send(Ascii("still here"));
            var calls = await reader.WaitForAsync(l => l.Contains("C:still here"));
            Assert.Contains("A:last words", calls);
            Assert.False(tasks[2].IsCompleted);
            Assert.Equal(1, reactor.Count);
        }

        [Fact(Timeout = 60_000)]
        public async Task Cancellation_CancelsTheTask_AndTheConnectionIsNotReadAgain()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            var reader = new RecordingReader();
            using var reactor = new LocalReadReactor(reader, 1024);
            using var cancel = new CancellationTokenSource();
            a.Server.Blocking = false;
            b.Server.Blocking = false;
            var ta = reactor.Register(a.Server, "A", cancel.Token);
            var tb = reactor.Register(b.Server, "B", CancellationToken.None);

            cancel.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => ta.WaitAsync(Generous));
            a.Client.Send(Ascii("unread"));
            b.Client.Send(Ascii("read"));
            var calls = await reader.WaitForAsync(l => l.Contains("B:read"));
            Assert.DoesNotContain(calls, x => x.StartsWith("A:", StringComparison.Ordinal));
            // The bytes are still in A's socket: nobody took them.
            Assert.Equal(6, a.Server.Available);
            Assert.False(tb.IsCompleted);
        }

        [Fact(Timeout = 60_000)]
        public async Task AReaderThatThrows_FaultsThatConnectionOnly()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            var reader = new RecordingReader
            {
                Hook = (connection, _) =>
                {
                    if ((string)connection == "A") throw new InvalidOperationException("no room for A");
                },
            };
            using var reactor = new LocalReadReactor(reader, 1024);
            var tasks = Register(reactor, ("A", a), ("B", b));

            a.Client.Send(Ascii("x"));
            var error = await Assert.ThrowsAsync<InvalidOperationException>(() => tasks[0].WaitAsync(Generous));
            Assert.Equal("no room for A", error.Message);
            b.Client.Send(Ascii("y"));
            await reader.WaitForAsync(l => l.Contains("B:y"));
            Assert.False(tasks[1].IsCompleted);
        }

        [Fact(Timeout = 60_000)]
        public async Task ASocketClosedWhileRead_IsDropped_AndTheThreadGoesOn()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            var reader = new RecordingReader();
            using var reactor = new LocalReadReactor(reader, 1024);
            var tasks = Register(reactor, ("A", a), ("B", b));

            // Closed without Unregister, possibly while the thread waits on it.
            a.Server.Dispose();
            b.Client.Send(Ascii("after"));
            await reader.WaitForAsync(l => l.Contains("B:after"));
            await tasks[0].WaitAsync(Generous);
            Assert.True(tasks[0].IsCompletedSuccessfully);

            b.Client.Send(Ascii("and again"));
            await reader.WaitForAsync(l => l.Contains("B:and again"));
            Assert.False(tasks[1].IsCompleted);
        }

        [Fact(Timeout = 60_000)]
        public async Task Unregister_CompletesTheTask_AndDispose_CancelsWhatIsLeft()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            var reader = new RecordingReader();
            var reactor = new LocalReadReactor(reader, 1024);
            var tasks = Register(reactor, ("A", a), ("B", b));

            reactor.Unregister(a.Server);
            await tasks[0].WaitAsync(Generous);
            Assert.True(tasks[0].IsCompletedSuccessfully);
            reactor.Unregister(a.Server); // twice: nothing

            reactor.Dispose();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => tasks[1].WaitAsync(Generous));
            Assert.Throws<ObjectDisposedException>(() => { _ = reactor.Register(b.Server, "B", CancellationToken.None); });
            reactor.Dispose(); // twice: nothing
        }

        [Fact(Timeout = 60_000)]
        public async Task AFailureOfTheThreadItself_FailsItsConnections_NotTheProcess_AndItTakesNoMore()
        {
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            var reader = new RecordingReader { DoneThrows = true };
            using var reactor = new LocalReadReactor(reader, 1024);
            var tasks = Register(reactor, ("A", a), ("B", b));

            a.Client.Send(Ascii("x"));
            var ea = await Assert.ThrowsAsync<IOException>(() => tasks[0].WaitAsync(Generous));
            var eb = await Assert.ThrowsAsync<IOException>(() => tasks[1].WaitAsync(Generous));
            Assert.Contains("reader thread failed", ea.Message, StringComparison.Ordinal);
            Assert.Same(ea, eb);
            Assert.True(reactor.IsStopped);
            Assert.Throws<ObjectDisposedException>(() => { _ = reactor.Register(b.Server, "B", CancellationToken.None); });
        }

        [Fact(Timeout = 60_000)]
        public async Task AWakeUpAskedForWhileTheThreadTakesInOne_IsNotLost_NorAreTheOnesAfterIt()
        {
            // A registration wakes the thread so that it waits on the new socket too. One made while the thread takes in
            // an earlier wake-up (two connections accepted back to back) must leave the next one working: when it did
            // not, every registration after it waited for data on some other connection to be seen at all.
            using var a = await SocketPair.OpenAsync();
            using var b = await SocketPair.OpenAsync();
            using var c = await SocketPair.OpenAsync();
            var reader = new RecordingReader();
            using var reactor = new LocalReadReactor(reader, 1024);
            a.Server.Blocking = false;
            b.Server.Blocking = false;
            c.Server.Blocking = false;
            using var registeredDuring = new ManualResetEventSlim();
            Task? tb = null;
            var once = 0;
            reactor.WakeUpHandling = () =>
            {
                if (Interlocked.Exchange(ref once, 1) != 0) return;
                tb = reactor.Register(b.Server, "B", CancellationToken.None);
                registeredDuring.Set();
            };
            var ta = reactor.Register(a.Server, "A", CancellationToken.None);
            Assert.True(registeredDuring.Wait(Generous), "the thread never took in a wake-up");

            b.Client.Send(Ascii("b"));
            await reader.WaitForAsync(l => l.Contains("B:b"));
            // Nothing else moves now: only the wake-up of this registration can make the thread wait on C.
            var tc = reactor.Register(c.Server, "C", CancellationToken.None);
            c.Client.Send(Ascii("c"));
            await reader.WaitForAsync(l => l.Contains("C:c"));
            a.Client.Send(Ascii("a"));
            await reader.WaitForAsync(l => l.Contains("A:a"));
            Assert.False(ta.IsCompleted || tb!.IsCompleted || tc.IsCompleted);
        }

        [Fact(Timeout = 30_000)]
        public async Task ASocketThatBlocks_IsRefused()
        {
            using var a = await SocketPair.OpenAsync();
            using var reactor = new LocalReadReactor(new RecordingReader(), 1024);
            Assert.Throws<ArgumentException>(() => { _ = reactor.Register(a.Server, "A", CancellationToken.None); });
            a.Server.Blocking = false;
            _ = reactor.Register(a.Server, "A", CancellationToken.None);
            Assert.Throws<InvalidOperationException>(() => { _ = reactor.Register(a.Server, "A", CancellationToken.None); });
        }

        private static byte[] Ascii(string s) => Encoding.ASCII.GetBytes(s);

        private static Task[] Register(LocalReadReactor reactor, params (string Name, SocketPair Pair)[] connections) =>
            connections.Select(c =>
            {
                c.Pair.Server.Blocking = false;
                return reactor.Register(c.Pair.Server, c.Name, CancellationToken.None);
            }).ToArray();

        /// <summary>Records "connection:data" per read and "done" per wake-up, in order.</summary>
        private sealed class RecordingReader : LocalReadReactor.IReader
        {
            private readonly List<string> _calls = new();
            private readonly SemaphoreSlim _changed = new(0);

            public Action<object, string>? Hook { get; init; }

            public void OnRead(object connection, byte[] buffer, int count)
            {
                var text = Encoding.ASCII.GetString(buffer, 0, count);
                Hook?.Invoke(connection, text);
                Add($"{connection}:{text}");
            }

            public bool DoneThrows { get; init; }

            public void OnReadsDone()
            {
                if (DoneThrows) throw new InvalidOperationException("a bug");
                Add("done");
            }

            private void Add(string call)
            {
                lock (_calls) _calls.Add(call);
                _changed.Release();
            }

            public async Task<string[]> WaitForAsync(Func<List<string>, bool> condition)
            {
                var deadline = DateTime.UtcNow + Generous;
                while (true)
                {
                    lock (_calls)
                    {
                        if (condition(_calls)) return _calls.ToArray();
                    }
                    var left = deadline - DateTime.UtcNow;
                    if (left <= TimeSpan.Zero || !await _changed.WaitAsync(left))
                    {
                        lock (_calls) throw new TimeoutException("calls so far: " + string.Join(", ", _calls));
                    }
                }
            }
        }
    }
}
