using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using BastionTools.Ssm;

namespace BastionTools.Bench
{
    /// <summary>
    /// What taking one acknowledgement from the agent costs the data channel's receive loop: the general path (decode the
    /// frame into a message with its payload copied and digest checked, the serializer's AcknowledgeContent, a Guid parse)
    /// against the in-place path (digest checked where the bytes lie, <see cref="AcknowledgeReader"/>), on the agent's own
    /// acknowledgement frames, in rounds that alternate the two in the same run.
    /// </summary>
    internal static class AckBench
    {
        // Where the timed loops' results go, so that the JIT cannot drop the work.
        private static long s_sink;

        public static int Run(string[] args)
        {
            var rounds = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 7;
            const int count = 200_000;
            // 256 acknowledgements as the agent sends them (ClientMessages writes the same bytes: checked against the
            // recorded frames), for the sequence numbers 1,000,000 on.
            var frames = Enumerable.Range(0, 256)
                .Select(i => AgentMessageCodec.Encode(ClientMessages.Acknowledge(MessageTypes.InputStreamData, Guid.NewGuid(), 1_000_000 + i)))
                .Select(f => new ArraySegment<byte>(f))
                .ToArray();
            const int payloadStart = (int)AgentMessageCodec.StandardHeaderLength + AgentMessageCodec.PayloadLengthLength;

            long General(ArraySegment<byte> frame)
            {
                var message = AgentMessageCodec.Decode(frame);
                if (!message.IsDigestValid) throw new InvalidOperationException("digest");
                var ack = SsmJson.Deserialize<AcknowledgeContent>(message.Payload);
                if (!Guid.TryParse(ack.AcknowledgedMessageId, out var id) || id == Guid.Empty) throw new InvalidOperationException("id");
                return ack.AcknowledgedMessageSequenceNumber;
            }

            long InPlace(ArraySegment<byte> frame) =>
                AcknowledgeReader.TryReadFrame(frame, out var sequence, out var id) && id != Guid.Empty ? sequence : throw new InvalidOperationException("id");

            // The SHA-256 of the payload alone: both paths pay it.
            long DigestOnly(ArraySegment<byte> frame) =>
                AgentMessageCodec.DigestHolds(frame.AsSpan().Slice(AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength),
                    frame.Array!, frame.Offset + payloadStart, frame.Count - payloadStart) ? 1 : throw new InvalidOperationException("digest");

            (double Us, double Bytes) Time(Func<ArraySegment<byte>, long> path)
            {
                long sum = 0;
                var allocated = GC.GetAllocatedBytesForCurrentThread();
                var clock = Stopwatch.StartNew();
                for (var i = 0; i < count; i++) sum += path(frames[i & 255]);
                var us = clock.Elapsed.TotalMilliseconds * 1000 / count;
                var bytes = (GC.GetAllocatedBytesForCurrentThread() - allocated) / (double)count;
                s_sink = sum;
                return (us, bytes);
            }

            // Warm-up (tiered JIT), not reported.
            for (var w = 0; w < 3; w++)
            {
                Time(General);
                Time(InPlace);
                Time(DigestOnly);
            }
            var general = new List<(double Us, double Bytes)>();
            var inPlace = new List<(double Us, double Bytes)>();
            var digest = new List<(double Us, double Bytes)>();
            for (var r = 0; r < rounds; r++)
            {
                if (r % 2 == 0)
                {
                    general.Add(Time(General));
                    inPlace.Add(Time(InPlace));
                }
                else
                {
                    inPlace.Add(Time(InPlace));
                    general.Add(Time(General));
                }
                digest.Add(Time(DigestOnly));
            }
            double Median(IEnumerable<double> xs)
            {
                var s = xs.OrderBy(x => x).ToArray();
                return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
            }
            var ratios = general.Zip(inPlace, (g, p) => g.Us / p.Us).ToArray();
            Console.WriteLine($"acknowledgements from the agent ({frames[0].Count}-byte frames, {count:N0} per timing, {rounds} rounds alternating, median; one thread, {Environment.ProcessorCount} cores, load average {ConcurrencyBench.LoadAverage()}):");
            Console.WriteLine($"  general path (decode, serializer, Guid parse): {Median(general.Select(g => g.Us)),6:F3} us/ack, {Median(general.Select(g => g.Bytes)),5:F0} B allocated/ack");
            Console.WriteLine($"  in place (AcknowledgeReader):                  {Median(inPlace.Select(g => g.Us)),6:F3} us/ack, {Median(inPlace.Select(g => g.Bytes)),5:F0} B allocated/ack");
            Console.WriteLine($"  of which the payload's SHA-256 (both pay it):  {Median(digest.Select(g => g.Us)),6:F3} us/ack, {Median(digest.Select(g => g.Bytes)),5:F0} B allocated/ack");
            Console.WriteLine($"  general / in place: {Median(ratios):F2}x (rounds {string.Join(", ", ratios.Select(x => x.ToString("F2", CultureInfo.InvariantCulture)))})");
            return 0;
        }
    }
}
