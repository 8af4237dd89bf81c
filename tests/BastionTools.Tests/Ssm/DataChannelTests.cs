using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The reliable channel's own rules, against a scripted service: resend pacing, the send window, the reorder window,
    /// bounded acknowledgements, pause/start, dead-connection detection and resumption. No timing margins: every wait is
    /// on a condition, and the pacing assertions count what the rules allow per interval actually elapsed.
    /// </summary>
    public sealed class DataChannelTests
    {
        private static AgentMessage Output(long sequence, string text) =>
            AgentMessage.Create(MessageTypes.OutputStreamData, sequence, sequence == 0 ? MessageFlags.Syn : MessageFlags.Data, PayloadType.Output, Encoding.ASCII.GetBytes(text));

        private static AgentMessage AckOf(AgentMessage sent) => ClientMessages.Acknowledge(sent);

        private static async Task Until(Func<bool> condition, string what, int timeoutMs = 30_000)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!condition())
            {
                if (clock.ElapsedMilliseconds > timeoutMs) throw new TimeoutException("Timed out waiting for: " + what);
                await Task.Delay(10);
            }
        }

        /// <summary>
        /// For a test that counts the data messages written exactly: nothing is resent on a timer within it (with the
        /// default 200 ms retransmission timeout an unacknowledged message is written again while the test goes on, and
        /// a count polled for could be passed by before it was seen).
        /// </summary>
        private static DataChannelOptions WithoutTimedResends(DataChannelOptions options)
        {
            options.InitialRetransmitTimeout = options.MinRetransmitTimeout = options.MaxRetransmitTimeout = TimeSpan.FromMinutes(1);
            return options;
        }

        private static List<AgentMessage> Data(ScriptedTransport t) =>
            t.Written.Where(m => m.MessageType == MessageTypes.InputStreamData).ToList();

        private static List<AgentMessage> Acks(ScriptedTransport t) =>
            t.Written.Where(m => m.MessageType == MessageTypes.Acknowledge).ToList();

        [Fact(Timeout = 60_000)]
        public async Task Resends_AreOldestFirst_BoundedPerInterval_AndOnlyTheOldestOnceNothingIsAcknowledged()
        {
            // Every transmission on the channel's own clock (the timestamp its decision used): a loaded machine may write
            // late, in one go, what the channel decided over several ticks, so the time of the write proves nothing.
            var events = new List<(long Seq, int Attempt, double AtMs)>();
            var origin = Stopwatch.GetTimestamp();
            var service = new ScriptedService();
            var options = new DataChannelOptions
            {
                ResendInterval = TimeSpan.FromMilliseconds(50), ResendBurst = 8, CongestionTimeout = TimeSpan.FromMilliseconds(1500),
                MinRetransmitTimeout = TimeSpan.FromMilliseconds(50), InitialRetransmitTimeout = TimeSpan.FromMilliseconds(50), MaxResendBackoff = TimeSpan.FromMilliseconds(400),
                PingInterval = TimeSpan.FromMinutes(5), ProbeInterval = TimeSpan.FromMinutes(5),
                TransmitObserver = (seq, attempt, ticks) =>
                {
                    lock (events) events.Add((seq, attempt, (ticks - origin) * 1000.0 / Stopwatch.Frequency));
                },
            };
            var channel = service.NewChannel(options);
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            for (var i = 0; i < 100; i++) await channel.SendAsync(PayloadType.Output, new[] { (byte)i }, CancellationToken.None);
            // No acknowledgement ever comes: the agent is not reading. Watch until message 0 has been probed several times
            // after the channel must have seen the congestion.
            double firstSentMs;
            lock (events) firstSentMs = events.First(e => e.Seq == 0 && e.Attempt == 1).AtMs;
            var congestedFrom = firstSentMs + options.CongestionTimeout.TotalMilliseconds;
            await Until(() => { lock (events) return events.Count(e => e.Attempt > 1 && e.AtMs > congestedFrom + 1) >= 4; }, "message 0 probed four times once congested", 30_000);
            await channel.CloseAsync();

            List<(long Seq, int Attempt, double AtMs)> all;
            lock (events) all = events.Where(e => e.Attempt > 1).ToList();
            Assert.Equal(100, events.Count(e => e.Attempt == 1));
            // What was written is what was decided (nothing resent behind the policy's back).
            Assert.True(t.Written.Count(m => m.MessageType == MessageTypes.InputStreamData) - 100 <= all.Count);
            // Oldest first: message 0 is resent first, and messages are resent for the first time in the order they were
            // sent. (Not "0 to 7 in the first tick": on a loaded machine the 100 sends take longer than one retransmit
            // timeout, and the first tick finds only the oldest due; seen under a CPU hog as 0, 0, 1, 2, ….)
            Assert.Equal(0, all[0].Seq);
            var firstResends = all.Where(r => r.Attempt == 2).Select(r => r.Seq).ToList();
            Assert.Equal(firstResends.OrderBy(x => x), firstResends);
            // Never more than the burst in one tick (one tick = one timestamp).
            foreach (var tick in all.GroupBy(r => r.AtMs))
            {
                Assert.True(tick.Count() <= options.ResendBurst, $"{tick.Count()} resends in the tick at {tick.Key:F1} ms");
                Assert.Equal(tick.Select(r => r.Seq).OrderBy(x => x), tick.Select(r => r.Seq)); // oldest first within a tick
            }
            // Before the congestion timeout, the burst is used: more than the oldest message was resent.
            Assert.Contains(all, r => r.AtMs <= congestedFrom && r.Seq != 0);
            // Once nothing has been acknowledged for the congestion timeout, only message 0 is resent, and with back-off:
            // far fewer times than there were intervals.
            var late = all.Where(r => r.AtMs > congestedFrom + 1).ToList();
            Assert.All(late, r => Assert.Equal(0, r.Seq));
            // Each probe waits out the back-off of the previous attempt: 50 ms × 2^(attempt−1), at most 400 ms (no
            // acknowledgement ever came, so no round trip was measured and the initial 50 ms stands).
            var zeros = all.Where(r => r.Seq == 0).ToList();
            for (var k = 1; k < zeros.Count; k++)
            {
                var backoff = Math.Min(options.MaxResendBackoff.TotalMilliseconds, 50 * Math.Pow(2, zeros[k - 1].Attempt - 1));
                var gap = zeros[k].AtMs - zeros[k - 1].AtMs;
                Assert.True(gap >= backoff - 0.5, $"message 0 resent {gap:F1} ms after attempt {zeros[k - 1].Attempt} (back-off {backoff} ms)");
            }
            Assert.True(zeros.Last().Attempt - zeros.First().Attempt + 1 == zeros.Count, "attempts counted one by one");
        }

        [Fact(Timeout = 60_000)]
        public async Task TheTick_RunsOnABackgroundThreadOfItsOwn_NotThePool_AndThatThreadEndsWithTheChannel()
        {
            // Resends are decided by the tick: each is observed on the thread that decided it. That thread sleeps in a timed
            // wait between ticks (no timer thread, no pool worker woken and spinning every 100 ms for as long as a session
            // is open) and must not outlive the channel.
            var resends = new List<(int ThreadId, bool Pool, bool Background)>();
            var service = new ScriptedService();
            var options = new DataChannelOptions
            {
                ResendInterval = TimeSpan.FromMilliseconds(20), MinRetransmitTimeout = TimeSpan.FromMilliseconds(20),
                InitialRetransmitTimeout = TimeSpan.FromMilliseconds(20), MaxResendBackoff = TimeSpan.FromMilliseconds(40),
                PingInterval = TimeSpan.FromMinutes(5), ProbeInterval = TimeSpan.FromMinutes(5),
                TransmitObserver = (seq, attempt, ticks) =>
                {
                    if (attempt < 2) return;
                    var thread = Thread.CurrentThread;
                    lock (resends) resends.Add((thread.ManagedThreadId, thread.IsThreadPoolThread, thread.IsBackground));
                },
            };
            var channel = service.NewChannel(options);
            await channel.OpenAsync(CancellationToken.None);
            var ticks = channel.TimerLoopCompletion;
            Assert.NotNull(ticks);
            Assert.False(ticks!.IsCompleted);
            service.Next();
            // Never acknowledged: resent tick after tick.
            await channel.SendAsync(PayloadType.Output, new byte[] { 1 }, CancellationToken.None);
            await Until(() => { lock (resends) return resends.Count >= 3; }, "three resends");
            lock (resends)
            {
                Assert.All(resends, r => Assert.False(r.Pool, "a resend was decided on a thread-pool thread"));
                Assert.All(resends, r => Assert.True(r.Background, "the tick's thread would keep the process alive"));
                Assert.Single(resends.Select(r => r.ThreadId).Distinct());
            }

            await channel.CloseAsync();
            await Until(() => ticks.IsCompleted, "the tick's thread to end after the channel closed", 10_000);
            Assert.Equal(TaskStatus.RanToCompletion, ticks.Status);
        }

        private static DataChannelOptions DozingOptions() => new()
        {
            // Ten intervals with nothing arriving (200 ms) and the tick dozes until the ping is due: minutes away.
            ResendInterval = TimeSpan.FromMilliseconds(20), MinRetransmitTimeout = TimeSpan.FromMilliseconds(20),
            InitialRetransmitTimeout = TimeSpan.FromMilliseconds(20), MaxResendBackoff = TimeSpan.FromMilliseconds(40),
            PingInterval = TimeSpan.FromMinutes(5), ProbeInterval = TimeSpan.FromMinutes(5),
        };

        /// <summary>A channel opened with <paramref name="options"/> (<see cref="DozingOptions"/> if none), once its tick dozes.</summary>
        private static async Task<(DataChannel Channel, ScriptedTransport Transport)> OpenDozingAsync(DataChannelOptions? options = null)
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(options ?? DozingOptions());
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            await Until(() => channel.TickDozing, "the tick to doze");
            return (channel, t);
        }

        [Fact(Timeout = 60_000)]
        public async Task AnIdleChannel_TickDozesUntilThePingIsDue_InsteadOfEveryInterval_AndTheDozeEndsWithTheChannel()
        {
            // An open session with nothing flowing used to wake its tick ten times a second for as long as it stayed open.
            var (channel, _) = await OpenDozingAsync();
            var ticks = channel.TickCount;
            // A window, not a wait for something: at 20 ms a tick, some 25 ticks would run in it without the doze.
            await Task.Delay(500);
            Assert.Equal(ticks, channel.TickCount);
            Assert.True(channel.TickDozing);

            // Closing ends the doze (and the thread) at once, not when the doze would have ended.
            var loop = channel.TimerLoopCompletion!;
            await channel.CloseAsync();
            await Until(() => loop.IsCompleted, "the tick's thread to end after the channel closed", 10_000);
            Assert.Equal(TaskStatus.RanToCompletion, loop.Status);
        }

        [Fact(Timeout = 60_000)]
        public async Task ADozingTick_IsWokenByASend_SoAnUnacknowledgedMessageIsResentOnTime_ThenDozesAgainOnceAcknowledged()
        {
            var attempts = new ConcurrentDictionary<long, int>();
            var options = DozingOptions();
            options.TransmitObserver = (seq, attempt, ticks) => attempts.AddOrUpdate(seq, attempt, (_, n) => Math.Max(n, attempt));
            var (channel, t) = await OpenDozingAsync(options);
            var wakeups = channel.TickWakeups;

            // Never acknowledged (yet): resends come from the tick, which dozes for minutes unless the send wakes it.
            await channel.SendAsync(PayloadType.Output, new byte[] { 1 }, CancellationToken.None);
            await Until(() => attempts.Values.DefaultIfEmpty(0).Max() >= 3, "two resends of the unacknowledged message");
            Assert.True(channel.TickWakeups > wakeups, "the send did not wake the tick");
            Assert.False(channel.TickDozing);

            t.Deliver(AckOf(Data(t)[0]));
            await Until(() => channel.TickDozing, "the tick to doze again once nothing is outstanding");
            var resent = attempts.Values.Max();
            var ticks = channel.TickCount;
            await Task.Delay(200);
            Assert.Equal(resent, attempts.Values.Max());
            Assert.Equal(ticks, channel.TickCount);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task ADozingTick_IsWokenByAPause_SoThePauseTimeoutStillEndsIt()
        {
            var options = DozingOptions();
            options.PauseTimeout = TimeSpan.FromMilliseconds(300);
            var (channel, t) = await OpenDozingAsync(options);
            t.Deliver(AgentMessage.Create(MessageTypes.PausePublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>()));
            await Until(() => channel.IsPaused, "paused");
            // Held by the pause (not queued, so only the pause itself can have woken the tick), then sent when the pause
            // times out: a tick's work, not the doze's end minutes later.
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("held"), CancellationToken.None);
            // At least once: never acknowledged, it is resent from then on (one RTO later; a poll can miss that window).
            await Until(() => Data(t).Count >= 1, "the held message sent once the pause timed out");
            Assert.Equal("held", Encoding.ASCII.GetString(Data(t)[0].Payload));
            Assert.False(channel.IsPaused);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task ADozingTick_IsWokenWhenAnAcknowledgementIsQueued_AndDozesAgainAfterwards()
        {
            // The tick is also the safety net that writes whatever is queued: an acknowledgement wakes it too.
            var (channel, t) = await OpenDozingAsync();
            var wakeups = channel.TickWakeups;
            t.Deliver(Output(0, "hello"));
            await Until(() => Acks(t).Count == 1, "the acknowledgement");
            await Until(() => channel.TickWakeups > wakeups, "the tick woken by the queued acknowledgement");
            await Until(() => channel.TickDozing, "the tick to doze again");
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task ADozingTick_StillSendsTheLivenessPing_WhenItIsDue()
        {
            var options = DozingOptions();
            options.PingInterval = TimeSpan.FromMilliseconds(1500);
            var (channel, t) = await OpenDozingAsync(options);
            var ticks = channel.TickCount;
            await Until(() => t.Pings >= 1, "a ping");
            // The ping came from the tick that ended the doze (plus at most the ones while its answer was awaited), not
            // from ticking every 20 ms for 1.5 s (some 75 ticks).
            Assert.InRange(channel.TickCount - ticks, 1, 30);
            await Until(() => t.Pings >= 2, "a second ping, a ping interval after the first was answered");
            Assert.Equal(0, channel.Statistics.DeadConnectionsDetected);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task UnderRandomLoss_WhileAcknowledgementsKeepComing_TheBurstIsKept()
        {
            var service = new ScriptedService();
            var options = new DataChannelOptions
            {
                ResendInterval = TimeSpan.FromMilliseconds(50), ResendBurst = 8, CongestionTimeout = TimeSpan.FromMilliseconds(300),
                MinRetransmitTimeout = TimeSpan.FromMilliseconds(50), InitialRetransmitTimeout = TimeSpan.FromMilliseconds(50),
                PingInterval = TimeSpan.FromMinutes(5), ProbeInterval = TimeSpan.FromMinutes(5),
            };
            var channel = service.NewChannel(options);
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            // The "agent" acknowledges every message except the first ten, which stay lost (for a while).
            var resent = new ConcurrentBag<long>();
            var seen = new ConcurrentDictionary<long, int>();
            t.OnWritten += m =>
            {
                if (m.MessageType != MessageTypes.InputStreamData) return;
                if (seen.AddOrUpdate(m.SequenceNumber, 1, (_, n) => n + 1) > 1) resent.Add(m.SequenceNumber);
                if (m.SequenceNumber >= 10) t.Deliver(AckOf(m));
            };
            for (var i = 0; i < 200; i++) await channel.SendAsync(PayloadType.Output, new[] { (byte)i }, CancellationToken.None);
            // Keep acknowledgements coming (new messages, acknowledged), for well past the congestion timeout, until each
            // lost message has been resent twice (on a loaded machine the resend ticks come late: wait for them, not a time).
            var keptUp = Stopwatch.StartNew();
            var i2 = 0;
            while (keptUp.ElapsedMilliseconds < 1000 || !Enumerable.Range(0, 10).All(s => seen.TryGetValue(s, out var n) && n >= 3))
            {
                if (keptUp.ElapsedMilliseconds > 30_000) throw new TimeoutException("each lost message resent twice");
                await Task.Delay(50);
                await channel.SendAsync(PayloadType.Output, new[] { (byte)i2++ }, CancellationToken.None);
            }
            await channel.CloseAsync();
            // All ten lost messages were resent (not just the oldest): acknowledgements kept coming, so no congestion.
            // (A later message may be resent too on a loaded machine, when its acknowledgement is handled after the 50 ms
            // timeout; that says nothing about the burst, so only the lost ten are checked.)
            Assert.Equal(Enumerable.Range(0, 10).Select(i => (long)i), resent.Where(s => s < 10).Distinct().OrderBy(x => x));
        }

        [Fact(Timeout = 60_000)]
        public async Task SendersWaitForTheWindow_WhileTheReceiveLoopKeepsAcknowledging()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions { SendWindow = 4 });
            var delivered = new List<string>();
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            for (var i = 0; i < 4; i++) await channel.SendAsync(PayloadType.Output, new[] { (byte)i }, CancellationToken.None);
            var fifth = channel.SendAsync(PayloadType.Output, new byte[] { 4 }, CancellationToken.None);
            // The window is full: the fifth waits...
            await Task.Delay(200);
            Assert.False(fifth.IsCompleted);
            // ...while what the service sends is acknowledged all the same.
            for (var s = 0; s < 20; s++) t.Deliver(Output(s, "x" + s));
            await Until(() => Acks(t).Count >= 20, "20 acknowledgements");
            Assert.False(fifth.IsCompleted);
            // An acknowledgement opens the window.
            t.Deliver(AckOf(Data(t).First(m => m.SequenceNumber == 0)));
            await fifth;
            await Until(() => Data(t).Any(m => m.SequenceNumber == 4), "message 4 sent");
            await channel.CloseAsync();
        }

        /// <summary>
        /// A long path (the test, as the agent, acknowledges what is in flight one "round trip" after the sender filled the
        /// window): the window doubles per round trip up to its ceiling and never lets more than that be in flight. Then the
        /// path slows (a few acknowledgements per round trip): the window shrinks back to its floor, and once what was in
        /// flight has drained, no more than the floor is in flight again. The hold is the simulated link's round trip, not
        /// a wait for something to happen; every other wait is on a condition.
        /// </summary>
        [Fact(Timeout = 60_000)]
        public async Task SendWindow_GrowsOnALongPath_UpToItsCeiling_AndShrinksBackWhenThePathSlows()
        {
            var service = new ScriptedService();
            var resendNever = TimeSpan.FromMinutes(1);
            var channel = service.NewChannel(new DataChannelOptions
            {
                SendWindow = 16,
                MaxSendWindow = 256,
                InitialRetransmitTimeout = resendNever,
                MinRetransmitTimeout = resendNever,
                MaxRetransmitTimeout = resendNever,
            });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            Assert.Equal(16, channel.Statistics.SendWindow);
            using var stop = new CancellationTokenSource();
            var sender = Task.Run(async () =>
            {
                try
                {
                    while (true) await channel.SendAsync(PayloadType.Output, new byte[] { 1 }, stop.Token);
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                }
            });
            var acknowledged = 0;
            int InFlight() => Data(t).Count - acknowledged;
            async Task RoundTrip(TimeSpan hold, int? take)
            {
                await Task.Delay(hold);
                var pending = Data(t).Skip(acknowledged).Take(take ?? int.MaxValue).ToList();
                foreach (var m in pending) t.Deliver(AckOf(m));
                acknowledged += pending.Count;
            }

            // Growth: each round the sender fills the window, then everything in flight is acknowledged 100 ms later.
            var peaks = new List<int>();
            for (var round = 0; round < 30 && channel.Statistics.SendWindow < 256; round++)
            {
                await Until(() => InFlight() >= channel.Statistics.SendWindow, "the sender fills the window");
                peaks.Add(InFlight());
                await RoundTrip(TimeSpan.FromMilliseconds(100), take: null);
            }
            Assert.Equal(256, channel.Statistics.SendWindow);
            await Until(() => InFlight() >= 256, "the sender fills the grown window");
            peaks.Add(InFlight());
            Assert.Equal(256, peaks.Max());
            Assert.True(peaks.Count(p => p > 16) >= 2, "the window grew in steps: " + string.Join(", ", peaks));
            Assert.Equal(256, channel.Statistics.SendWindowPeak);

            // The path slows: 3 acknowledgements per 50 ms round. An interval of the rate is at least the least round trip
            // (about 100 ms, from the growth phase) and closes at its first acknowledgement past that, so it counts at most
            // two rounds and one more: 2 x 7 = 14 in flight at most, under the floor (16).
            for (var round = 0; round < 400 && (channel.Statistics.SendWindow > 16 || InFlight() > 16); round++)
                await RoundTrip(TimeSpan.FromMilliseconds(50), take: 3);
            Assert.Equal(16, channel.Statistics.SendWindow);
            Assert.True(InFlight() <= 16, "in flight after the drain: " + InFlight());
            // From now on the sender keeps the (small) window full, and no more.
            for (var round = 0; round < 5; round++)
            {
                var before = Data(t).Count;
                await RoundTrip(TimeSpan.FromMilliseconds(50), take: 3);
                await Until(() => Data(t).Count >= before + 3, "the sender uses the freed window");
                Assert.True(InFlight() <= 16, "in flight: " + InFlight());
            }
            stop.Cancel();
            await sender;
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task StreamMessagesAreDeliveredInOrder_FarAheadOnesAreIgnoredUnacknowledged()
        {
            var service = new ScriptedService();
            var got = new List<string>();
            var channel = service.NewChannel(new DataChannelOptions { ReorderWindow = 100 }, m => { lock (got) got.Add(Encoding.ASCII.GetString(m.Payload)); });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();

            // Far ahead (a hostile or broken peer): 5,000 messages, none kept, none acknowledged.
            for (var i = 0; i < 5000; i++) t.Deliver(Output(1_000_000 + i, "evil"));
            // Within the window, out of order: kept and acknowledged, delivered when the gap fills.
            t.Deliver(Output(2, "c"));
            t.Deliver(Output(1, "b"));
            t.Deliver(Output(1, "b"));
            await Until(() => Acks(t).Count >= 3, "acks of 2, 1, 1");
            Assert.Equal(2, channel.ReorderBufferCount);
            lock (got) Assert.Empty(got);
            t.Deliver(Output(0, "a"));
            await Until(() => { lock (got) return got.Count == 3; }, "three delivered");
            lock (got) Assert.Equal(new[] { "a", "b", "c" }, got);
            Assert.Equal(0, channel.ReorderBufferCount);
            Assert.Equal(5000, channel.Statistics.IgnoredBeyondWindow);
            Assert.DoesNotContain(Acks(t), a => Encoding.ASCII.GetString(a.Payload).Contains("\"AcknowledgedMessageSequenceNumber\":100"));
            Assert.True(channel.Statistics.ReorderBufferPeak <= 100);
            // A duplicate of a delivered message is acknowledged again, not delivered again. (Delivery does not wait for the
            // acknowledgement of 0 to be written: wait for it first, so that the next one counted is the duplicate's.)
            await Until(() => Acks(t).Count >= 4, "acks of 2, 1, 1 and 0");
            var before = Acks(t).Count;
            Assert.Equal(4, before);
            t.Deliver(Output(0, "a"));
            await Until(() => Acks(t).Count >= before + 1, "the duplicate's acknowledgement");
            Assert.Contains("\"AcknowledgedMessageSequenceNumber\":0,", Encoding.ASCII.GetString(Acks(t)[before].Payload));
            lock (got) Assert.Equal(3, got.Count);
            await channel.CloseAsync();
        }

        /// <summary>
        /// Output that arrives in order, unencrypted, with nothing waiting to be reordered goes to the in-place handler
        /// straight from the receive buffer (no copy: the payload sits after the frame's 120-byte header); anything else
        /// takes the general path, in the same order, and everything is acknowledged as before.
        /// </summary>
        [Fact(Timeout = 60_000)]
        public async Task OutputInOrder_GoesToTheInPlaceHandler_FromTheReceiveBuffer_AndEverythingElseTheGeneralWay()
        {
            var service = new ScriptedService();
            var got = new List<string>();
            var channel = service.NewChannel(new DataChannelOptions { ReorderWindow = 100 },
                onMessage: m => { lock (got) got.Add("general " + m.PayloadType + " " + Encoding.ASCII.GetString(m.Payload)); },
                onOutputInPlace: (buffer, offset, count) =>
                {
                    lock (got) got.Add($"in place @{offset} " + Encoding.ASCII.GetString(buffer, offset, count));
                });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();

            t.Deliver(Output(0, "a"));
            t.Deliver(Output(2, "c")); // ahead: kept for reordering
            t.Deliver(Output(1, "b")); // in order, but 2 waits: both the general way, in order
            t.Deliver(Output(3, "d"));
            var corrupt = AgentMessageCodec.Encode(Output(4, "e"));
            corrupt[corrupt.Length - 1] ^= 1;
            t.DeliverRaw(corrupt); // the digest fails: dropped, unacknowledged, to be resent
            t.Deliver(AgentMessage.Create(MessageTypes.OutputStreamData, 4, MessageFlags.Data, PayloadType.StdErr, Encoding.ASCII.GetBytes("f")));
            t.Deliver(Output(5, "g"));
            await Until(() => { lock (got) return got.Count == 6; }, "six delivered");
            lock (got)
            {
                Assert.Equal(new[] { "in place @120 a", "general Output b", "general Output c", "in place @120 d", "general StdErr f", "in place @120 g" }, got);
            }
            await Until(() => Acks(t).Count == 6, "six acknowledgements");
            var acked = Acks(t).Select(a => SsmJson.Deserialize<AcknowledgeContent>(a.Payload).AcknowledgedMessageSequenceNumber).OrderBy(n => n);
            Assert.Equal(new long[] { 0, 1, 2, 3, 4, 5 }, acked);
            Assert.Equal(1, channel.Statistics.MalformedReceived);
            Assert.Equal(6, channel.Statistics.MessagesReceived);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task TheAcknowledgementsOfABurstReadAtOnce_GoOutTogether_AtMost32PerWrite()
        {
            // 40 messages already buffered when the channel starts reading: their acknowledgements wait until no whole
            // message is left to read (or 32 are waiting), then go out in one write each time, in order.
            // The timer's safety-net write is out of the way (a tick that takes the write lock while the loop is
            // preempted would write whatever is queued by then, merging the two runs: seen under a CPU hog).
            var service = new ScriptedService();
            for (var s = 0; s < 40; s++) service.Preload.Add(Output(s, "m" + s));
            var channel = service.NewChannel(new DataChannelOptions { ResendInterval = TimeSpan.FromHours(1) });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            await Until(() => Acks(t).Count >= 40, "40 acknowledgements");
            Assert.Equal(new[] { 32, 8 }, t.WriteSizes.ToArray());
            Assert.Equal(Enumerable.Range(0, 40).Select(i => "\"AcknowledgedMessageSequenceNumber\":" + i + ","),
                Acks(t).Select(a => System.Text.RegularExpressions.Regex.Match(Encoding.ASCII.GetString(a.Payload), "\"AcknowledgedMessageSequenceNumber\":[0-9]+,").Value));

            // A message arriving alone is acknowledged at once, in a write of its own.
            t.Deliver(Output(40, "alone"));
            await Until(() => Acks(t).Count >= 41, "the 41st acknowledgement");
            Assert.Equal(new[] { 32, 8, 1 }, t.WriteSizes.ToArray());
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task TheEndOfEachRunReadTogether_IsSignalled_AfterItsMessages_AndWhenTheLoopEnds()
        {
            // The consumer (the port forwarder) holds a run's output and writes it when told the run is over: after
            // 32 messages, when no whole message is left in the buffer, and when the receive loop ends.
            var service = new ScriptedService();
            for (var s = 0; s < 40; s++) service.Preload.Add(Output(s, "m" + s));
            var delivered = 0;
            var runs = new ConcurrentQueue<int>();
            var channel = service.NewChannel(new DataChannelOptions(), onMessage: _ => delivered++, onRunDelivered: () => runs.Enqueue(delivered));
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            await Until(() => runs.Count >= 2, "two runs");
            Assert.Equal(new[] { 32, 40 }, runs.ToArray());

            t.Deliver(Output(40, "alone"));
            await Until(() => runs.Count >= 3, "a run of one");
            Assert.Equal(new[] { 32, 40, 41 }, runs.ToArray());

            await channel.CloseAsync();
            await Until(() => runs.Count >= 4, "the end of the loop");
            Assert.Equal(41, runs.Last());
        }

        [Fact(Timeout = 60_000)]
        public async Task Acknowledgements_ReadInPlace_OrByTheSerializer_ReleaseTheirMessageOnly()
        {
            // The agent's plain acknowledgements are taken where they lie (AcknowledgeReader); any other shape goes the
            // general way. Either way an acknowledgement releases its message only when the id is that message's, and one
            // whose digest fails releases nothing.
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions { PingInterval = TimeSpan.FromMinutes(5), ProbeInterval = TimeSpan.FromMinutes(5) });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            for (var i = 0; i < 6; i++) await channel.SendAsync(PayloadType.Output, new[] { (byte)i }, CancellationToken.None);
            await Until(() => Data(t).Select(m => m.SequenceNumber).Distinct().Count() == 6, "six messages written");
            var sent = Data(t).GroupBy(m => m.SequenceNumber).ToDictionary(g => g.Key, g => g.First());
            AgentMessage AckWith(string json) => AgentMessage.Create(MessageTypes.Acknowledge, 0, MessageFlags.Ack, PayloadType.None, Encoding.UTF8.GetBytes(json));
            string Plain(long seq, Guid id) =>
                "{\"AcknowledgedMessageType\":\"input_stream_data\",\"AcknowledgedMessageId\":\"" + id.ToString("D") +
                "\",\"AcknowledgedMessageSequenceNumber\":" + seq + ",\"IsSequentialMessage\":true}";
            Assert.True(AcknowledgeReader.TryRead(Encoding.UTF8.GetBytes(Plain(0, sent[0].MessageId)), out _, out _));

            // #2: the plain shape with another message's id. #3: the plain shape, its digest broken.
            t.Deliver(AckWith(Plain(2, sent[1].MessageId)));
            var broken = AgentMessageCodec.Encode(AckOf(sent[3]));
            broken[AgentMessageCodec.PayloadDigestOffset] ^= 0x01;
            t.DeliverRaw(broken);
            // #0: the plain shape. #1: lower-case names, #4: the id without hyphens (both for the serializer).
            t.Deliver(AckOf(sent[0]));
            Assert.False(AcknowledgeReader.TryRead(Encoding.UTF8.GetBytes(Plain(1, sent[1].MessageId).ToLowerInvariant()), out _, out _));
            t.Deliver(AckWith(Plain(1, sent[1].MessageId).Replace("Acknowledged", "acknowledged")));
            var noHyphens = "{\"AcknowledgedMessageId\":\"" + sent[4].MessageId.ToString("N") + "\",\"AcknowledgedMessageSequenceNumber\":4}";
            Assert.False(AcknowledgeReader.TryRead(Encoding.UTF8.GetBytes(noHyphens), out _, out _));
            t.Deliver(AckWith(noHyphens));
            // Messages are handled in order: once #4's acknowledgement is taken, the three before it were too.
            await Until(() => channel.UnacknowledgedCount == 3, "#0, #1 and #4 acknowledged");
            Assert.Equal(1, channel.Statistics.MalformedReceived);

            // What is left is exactly #2, #3 and #5: their plain acknowledgements empty the channel.
            foreach (var seq in new long[] { 2, 3, 5 }) t.Deliver(AckOf(sent[seq]));
            await Until(() => channel.UnacknowledgedCount == 0, "#2, #3 and #5 acknowledged");
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task AcknowledgementsWaitingForTheSocketAreBounded()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions { MaxPendingAcknowledgements = 50 });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            t.BlockWrites();
            t.Deliver(Output(0, "first"));
            await Until(() => channel.Statistics.MessagesReceived == 1, "the first message");
            for (var s = 1; s < 1000; s++) t.Deliver(Output(s, "m"));
            await Until(() => channel.Statistics.MessagesReceived == 1000, "all messages delivered while the socket is stuck");
            Assert.True(channel.Statistics.AcknowledgementsDropped >= 1000 - 50 - 2, $"{channel.Statistics.AcknowledgementsDropped} dropped");
            t.UnblockWrites();
            await Until(() => Acks(t).Count >= 1, "acknowledgements written once the socket moves");
            Assert.True(Acks(t).Count <= 52);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task Pause_HoldsNewMessages_AndAnyDataAcknowledgementOrStartResumes()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(WithoutTimedResends(new DataChannelOptions()));
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();

            // 1. A stream message from the service ends a pause (the agent: handleStreamDataMessage sets Pause=false).
            t.Deliver(AgentMessage.Create(MessageTypes.PausePublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>()));
            await Until(() => channel.IsPaused, "paused");
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("held-1"), CancellationToken.None);
            await Task.Delay(150);
            Assert.Empty(Data(t));
            t.Deliver(Output(0, "hello"));
            await Until(() => Data(t).Count == 1, "held-1 sent after data arrived");
            Assert.False(channel.IsPaused);

            // 2. An acknowledgement ends it too.
            t.Deliver(AgentMessage.Create(MessageTypes.PausePublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>()));
            await Until(() => channel.IsPaused, "paused again");
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("held-2"), CancellationToken.None);
            t.Deliver(AckOf(Data(t)[0]));
            await Until(() => Data(t).Count == 2, "held-2 sent after an acknowledgement");

            // 3. A start_publication as bare as the official client's own test builds it (no header length, no date,
            //    no digest) is taken.
            t.Deliver(AgentMessage.Create(MessageTypes.PausePublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>()));
            await Until(() => channel.IsPaused, "paused a third time");
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("held-3"), CancellationToken.None);
            var bare = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.StartPublication, 1, 2, PayloadType.Output, Encoding.ASCII.GetBytes("payload")));
            Array.Clear(bare, 0, 4);                                       // HeaderLength 0
            Array.Clear(bare, AgentMessageCodec.CreatedDateOffset, 8);     // CreatedDate 0
            Array.Clear(bare, AgentMessageCodec.PayloadDigestOffset, 32);  // no digest
            t.DeliverRaw(bare);
            await Until(() => Data(t).Count == 3, "held-3 sent after a bare start_publication");
            Assert.Equal("held-3", Encoding.ASCII.GetString(Data(t)[2].Payload));
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task APauseThatNothingEnds_EndsAfterThePauseTimeout()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions { PauseTimeout = TimeSpan.FromMilliseconds(500), ResendInterval = TimeSpan.FromMilliseconds(20) });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            t.Deliver(AgentMessage.Create(MessageTypes.PausePublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>()));
            await Until(() => channel.IsPaused, "paused");
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("held"), CancellationToken.None);
            Assert.Empty(Data(t));
            // At least once: never acknowledged, it is resent from then on (one RTO later; a poll can miss that window).
            await Until(() => Data(t).Count >= 1, "the held message sent once the pause timed out");
            Assert.Equal("held", Encoding.ASCII.GetString(Data(t)[0].Payload));
            Assert.False(channel.IsPaused);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task AReconnectClearsAPause_AndSendsWhatIsUnacknowledged()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(WithoutTimedResends(new DataChannelOptions { ReconnectInitialDelay = TimeSpan.FromMilliseconds(10) }));
            await channel.OpenAsync(CancellationToken.None);
            var first = service.Next();
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("one"), CancellationToken.None);
            first.Deliver(AgentMessage.Create(MessageTypes.PausePublication, 0, MessageFlags.Ack, PayloadType.None, Array.Empty<byte>()));
            await Until(() => channel.IsPaused, "paused");
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("two"), CancellationToken.None);
            first.DeliverClose(1000, "Bye");
            var second = service.Next();
            await Until(() => Data(second).Count == 2, "both messages on the new connection");
            Assert.Equal(new[] { "one", "two" }, Data(second).Select(m => Encoding.ASCII.GetString(m.Payload)));
            Assert.False(channel.IsPaused);
            Assert.Single(second.TextWritten); // OpenDataChannel first
            Assert.Equal(1, service.ResumeCalls);
            Assert.Equal(ChannelState.Connected, channel.State);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task ASilentlyDeadConnection_IsFoundByAnUnansweredPing_AndResumed()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions
            {
                PingInterval = TimeSpan.FromMilliseconds(200), ProbeInterval = TimeSpan.FromMilliseconds(100), PongTimeout = TimeSpan.FromMilliseconds(300),
                ResendInterval = TimeSpan.FromMilliseconds(20), ReconnectInitialDelay = TimeSpan.FromMilliseconds(10),
            });
            await channel.OpenAsync(CancellationToken.None);
            var first = service.Next();
            first.AnswerPings = false;  // a black hole: no FIN, no RST, nothing
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("lost?"), CancellationToken.None);
            var second = service.Next();
            Assert.True(first.IsAborted);
            Assert.True(first.Pings >= 1);
            Assert.Equal(1, channel.Statistics.DeadConnectionsDetected);
            await Until(() => Data(second).Any(m => Encoding.ASCII.GetString(m.Payload) == "lost?"), "the message again on the new connection");
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task ADeadConnection_IsCountedAndLoggedOnce_ThoughTheReceiveLoopSeesTheAbortOnlyTicksLater()
        {
            var log = new List<string>();
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions
            {
                PingInterval = TimeSpan.FromMilliseconds(100), ProbeInterval = TimeSpan.FromMilliseconds(100), PongTimeout = TimeSpan.FromMilliseconds(100),
                ResendInterval = TimeSpan.FromMilliseconds(20), ReconnectInitialDelay = TimeSpan.FromMilliseconds(10),
            }, log: log);
            await channel.OpenAsync(CancellationToken.None);
            var first = service.Next();
            first.AnswerPings = false;
            first.HoldAbortedReceive = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            await Until(() => first.IsAborted, "declared dead");
            var ticks = channel.TickCount;
            await Until(() => channel.TickCount >= ticks + 5, "five more ticks before the receive loop sees the abort");
            first.HoldAbortedReceive.TrySetResult(true);
            var second = service.Next();
            Assert.Equal(1, channel.Statistics.DeadConnectionsDetected);
            lock (log) Assert.Single(log, l => l.Contains("the connection is dead"));
            await Until(() => channel.State == ChannelState.Connected, "connected again");
            Assert.False(second.IsAborted);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task AConnectionWithInputWaiting_IsNotDeclaredDead()
        {
            // After a process freeze the timer may run before the receive loop: bytes waiting to be read mean alive.
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions
            {
                PingInterval = TimeSpan.FromMilliseconds(100), ProbeInterval = TimeSpan.FromMilliseconds(100), PongTimeout = TimeSpan.FromMilliseconds(100),
                ResendInterval = TimeSpan.FromMilliseconds(20),
            });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();
            t.AnswerPings = false;
            t.PendingInput = true;
            await Until(() => t.Pings >= 1, "a ping");
            await Task.Delay(600);
            Assert.False(t.IsAborted);
            Assert.Equal(0, channel.Statistics.DeadConnectionsDetected);
            // Once nothing is pending either, it is dead.
            t.PendingInput = false;
            await Until(() => t.IsAborted, "declared dead");
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task ResumeWithoutAToken_EndsTheChannelAsExpired_WithoutRetrying()
        {
            var service = new ScriptedService { Resume = _ => Task.FromResult<StreamEndpoint?>(null) };
            var channel = service.NewChannel(new DataChannelOptions { ReconnectInitialDelay = TimeSpan.FromMilliseconds(10) });
            await channel.OpenAsync(CancellationToken.None);
            service.Next().Fail(new IOException("connection reset"));
            var closure = await channel.Completion;
            Assert.Equal(ChannelEnd.SessionExpired, closure.End);
            Assert.Contains("timed out", closure.Error!.Message);
            Assert.Equal(1, service.ResumeCalls);
        }

        [Fact(Timeout = 60_000)]
        public async Task ResumeRefused_EndsAtOnce()
        {
            var service = new ScriptedService { Resume = _ => throw new SessionResumeRefusedException("not allowed", sessionGone: false) };
            var channel = service.NewChannel(new DataChannelOptions { ReconnectInitialDelay = TimeSpan.FromMilliseconds(10) });
            await channel.OpenAsync(CancellationToken.None);
            service.Next().Fail(new IOException("connection reset"));
            var closure = await channel.Completion;
            Assert.Equal(ChannelEnd.Failed, closure.End);
            Assert.Equal("not allowed", closure.Error!.Message);
            Assert.Equal(1, service.ResumeCalls);
        }

        [Fact(Timeout = 60_000)]
        public async Task ResumeKeepsTrying_WithBackOff_UntilTheBudgetIsSpent()
        {
            var service = new ScriptedService { Resume = _ => throw new IOException("network unreachable") };
            var channel = service.NewChannel(new DataChannelOptions
            {
                ReconnectTimeout = TimeSpan.FromSeconds(1.5), ReconnectInitialDelay = TimeSpan.FromMilliseconds(50), ReconnectMaxDelay = TimeSpan.FromMilliseconds(400),
            });
            await channel.OpenAsync(CancellationToken.None);
            service.Next().Fail(new IOException("connection reset"));
            var closure = await channel.Completion;
            Assert.Equal(ChannelEnd.Failed, closure.End);
            Assert.Contains("could not be resumed within 1.5 s", closure.Error!.Message);
            Assert.Contains("network unreachable", closure.Error.Message);
            // Several attempts, spaced: with 50 ms doubling to 400 ms, 1.5 s holds at most about eight.
            Assert.InRange(service.ResumeCalls, 2, 12);
        }

        [Fact(Timeout = 60_000)]
        public async Task ResumeSucceedsAfterAnOutage_AndNothingIsLost()
        {
            var outage = true;
            var service = new ScriptedService();
            service.Resume = _ => outage ? throw new IOException("network unreachable") : Task.FromResult<StreamEndpoint?>(ScriptedService.Endpoint());
            var got = new List<string>();
            var channel = service.NewChannel(WithoutTimedResends(new DataChannelOptions { ReconnectInitialDelay = TimeSpan.FromMilliseconds(20), ReconnectMaxDelay = TimeSpan.FromMilliseconds(100) }),
                m => { lock (got) got.Add(Encoding.ASCII.GetString(m.Payload)); });
            await channel.OpenAsync(CancellationToken.None);
            var first = service.Next();
            first.Deliver(Output(0, "before"));
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("sent-before"), CancellationToken.None);
            first.Fail(new IOException("connection reset"));
            await Until(() => service.ResumeCalls >= 3, "several failed attempts");
            Assert.Equal(ChannelState.Reconnecting, channel.State);
            // Sends during the outage are numbered and held.
            await channel.SendAsync(PayloadType.Output, Encoding.ASCII.GetBytes("sent-during"), CancellationToken.None);
            outage = false;
            var second = service.Next();
            await Until(() => Data(second).Count == 2, "both unacknowledged messages on the new connection");
            Assert.Equal(new[] { "sent-before", "sent-during" }, Data(second).Select(m => Encoding.ASCII.GetString(m.Payload)));
            Assert.Equal(new long[] { 0, 1 }, Data(second).Select(m => m.SequenceNumber));
            second.Deliver(Output(0, "before"));  // the agent resends what it has no acknowledgement for
            second.Deliver(Output(1, "after"));
            await Until(() => { lock (got) return got.Count == 2; }, "delivery continues in sequence");
            lock (got) Assert.Equal(new[] { "before", "after" }, got);
            Assert.Equal(1, channel.Statistics.Reconnects);
            await channel.CloseAsync();
        }

        [Fact(Timeout = 60_000)]
        public async Task AnOversizedMessage_EndsTheChannelWithAClearError()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions());
            await channel.OpenAsync(CancellationToken.None);
            service.Next().Fail(new TransportMessageTooLargeException("a message of more than 1048576 bytes"));
            var closure = await channel.Completion;
            Assert.Equal(ChannelEnd.Failed, closure.End);
            Assert.Contains("larger than the 1024 KiB", closure.Error!.Message);
            Assert.Equal(0, service.ResumeCalls);
        }

        [Fact(Timeout = 60_000)]
        public async Task AMessageNeverAcknowledgedOnALiveConnection_EndsTheChannel()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions { UnacknowledgedTimeout = TimeSpan.FromMilliseconds(500), ResendInterval = TimeSpan.FromMilliseconds(20),
                PingInterval = TimeSpan.FromMilliseconds(100), ProbeInterval = TimeSpan.FromMilliseconds(100) });
            await channel.OpenAsync(CancellationToken.None);
            var t = service.Next();  // answers pings: alive, but its agent never acknowledges
            await channel.SendAsync(PayloadType.Output, new byte[] { 1 }, CancellationToken.None);
            var closure = await channel.Completion;
            Assert.Equal(ChannelEnd.Failed, closure.End);
            Assert.Contains("has not acknowledged message 0", closure.Error!.Message);
            await Assert.ThrowsAsync<IOException>(() => channel.SendAsync(PayloadType.Output, new byte[] { 2 }, CancellationToken.None));
        }

        [Fact(Timeout = 60_000)]
        public async Task ChannelClosed_EndsWithTheServiceOutput()
        {
            var service = new ScriptedService();
            var channel = service.NewChannel(new DataChannelOptions());
            await channel.OpenAsync(CancellationToken.None);
            var payload = SsmJson.SerializeToUtf8(new ChannelClosedPayload { MessageId = Guid.NewGuid().ToString(), SessionId = "s-1", Output = "Exiting session" });
            service.Next().Deliver(AgentMessage.Create(MessageTypes.ChannelClosed, 0, MessageFlags.Ack, PayloadType.None, payload));
            var closure = await channel.Completion;
            Assert.Equal(ChannelEnd.ClosedByService, closure.End);
            Assert.Equal("Exiting session", closure.Output);
        }
    }
}
