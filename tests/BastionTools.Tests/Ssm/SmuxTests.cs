using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Linq;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    public class SmuxTests
    {
        private const string ClientToAgent = "client->agent";
        private const string AgentToClient = "agent->client";

        [Fact]
        public void HeaderIsVersionCommandLengthLeStreamIdLe()
        {
            var bytes = SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Psh, 0x01020304, new byte[] { 9, 8, 7 }));
            Assert.Equal(new byte[] { 1, 2, 3, 0, 4, 3, 2, 1, 9, 8, 7 }, bytes);
            Assert.Equal(new byte[] { 1, 0, 0, 0, 3, 0, 0, 0 }, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Syn, 3)));
            Assert.Equal(new byte[] { 1, 1, 0, 0, 3, 0, 0, 0 }, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Fin, 3)));
            Assert.Equal(new byte[] { 1, 3, 0, 0, 0, 0, 0, 0 }, SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Nop, 0)));
        }

        [Fact]
        public void MaximumPayloadRoundTripsAndLargerIsRejected()
        {
            var max = new byte[SmuxCodec.MaxPayloadLength];
            new Random(1).NextBytes(max);
            var bytes = SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Psh, 5, max));
            Assert.Equal(0xff, bytes[2]);
            Assert.Equal(0xff, bytes[3]);
            var frame = Assert.Single(new SmuxDecoder().Feed(bytes));
            Assert.Equal(max, frame.Payload);

            Assert.Throws<ArgumentException>(() => new SmuxFrame(SmuxCommand.Psh, 5, new byte[SmuxCodec.MaxPayloadLength + 1]));
            Assert.Throws<ArgumentException>(() => new SmuxFrame(SmuxCommand.Syn, 5, new byte[1]));
            Assert.Throws<ArgumentOutOfRangeException>(() => new SmuxFrame((SmuxCommand)4, 5));
        }

        [Fact]
        public void DefaultFrameHasAnEmptyPayload()
        {
            Assert.Empty(default(SmuxFrame).Payload);
        }

        [Fact]
        public void DecoderHandlesByteAtATimeAndManyFramesPerChunk()
        {
            var frames = new[]
            {
                new SmuxFrame(SmuxCommand.Syn, 3),
                new SmuxFrame(SmuxCommand.Psh, 3, new byte[] { 1, 2, 3, 4, 5 }),
                new SmuxFrame(SmuxCommand.Nop, 0),
                new SmuxFrame(SmuxCommand.Fin, 3),
            };
            var stream = SmuxCodec.Encode(frames);

            var frameEnds = new HashSet<int>();
            int end = 0;
            foreach (var f in frames) frameEnds.Add(end += SmuxCodec.HeaderLength + f.Payload.Length);

            var decoder = new SmuxDecoder();
            var output = new List<SmuxFrame>();
            for (int i = 0; i < stream.Length; i++)
            {
                output.AddRange(decoder.Feed(stream, i, 1));
                Assert.Equal(frameEnds.Contains(i + 1), decoder.IsAtFrameBoundary);
            }
            AssertSameFrames(frames, output);
            Assert.True(decoder.IsAtFrameBoundary);

            AssertSameFrames(frames, new SmuxDecoder().Feed(stream));
        }

        [Fact]
        public void PartialFrameIsHeldUntilComplete()
        {
            var stream = SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Psh, 7, new byte[100]));
            var decoder = new SmuxDecoder();
            Assert.Empty(decoder.Feed(stream, 0, 5));
            Assert.Equal(5, decoder.BufferedByteCount);
            Assert.Empty(decoder.Feed(stream, 5, 50));
            Assert.Equal(55, decoder.BufferedByteCount);
            Assert.False(decoder.IsAtFrameBoundary);
            Assert.Single(decoder.Feed(stream, 55, stream.Length - 55));
            Assert.True(decoder.IsAtFrameBoundary);
            Assert.Equal(0, decoder.BufferedByteCount);
            Assert.Empty(decoder.Feed(Array.Empty<byte>()));
        }

        [Theory]
        [InlineData(new byte[] { 2, 2, 0, 0, 1, 0, 0, 0 }, "version 2")]
        [InlineData(new byte[] { 0, 0, 0, 0, 1, 0, 0, 0 }, "version 0")]
        [InlineData(new byte[] { 1, 4, 8, 0, 1, 0, 0, 0 }, "UPD is version 2 only")]
        [InlineData(new byte[] { 1, 9, 0, 0, 1, 0, 0, 0 }, "unknown command")]
        [InlineData(new byte[] { 1, 0, 1, 0, 1, 0, 0, 0 }, "SYN with a payload")]
        [InlineData(new byte[] { 1, 3, 4, 0, 0, 0, 0, 0 }, "NOP with a payload")]
        public void NonV1InputIsRejectedAndTheDecoderStaysFaulted(byte[] header, string why)
        {
            var decoder = new SmuxDecoder();
            var good = SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Syn, 1));
            Assert.Single(decoder.Feed(good));
            var ex = Assert.Throws<SsmProtocolException>(() => decoder.Feed(header));
            Assert.False(string.IsNullOrEmpty(ex.Message), why);
            Assert.Throws<SsmProtocolException>(() => decoder.Feed(good));
        }

        [Fact]
        public void BasicModeBytesAreNotSmux()
        {
            // In basic mode (agent 3.0.190.0) the Output payloads are the TCP bytes themselves: the client's first
            // payload is a PostgreSQL startup packet, whose first byte (0) is not smux version 1.
            var first = Recording.Binary(Recording.Basic).First(f => f.FromClient && f.PayloadType == (int)PayloadType.Output);
            Assert.Equal(0, first.RecordedPayload[0]);
            Assert.Equal(first.RecordedPayload.Length, BinaryPrimitives.ReadInt32BigEndian(first.RecordedPayload));
            Assert.Throws<SsmProtocolException>(() => new SmuxDecoder().Feed(first.RecordedPayload));
        }

        /// <summary>
        /// The client's Output payloads of the mux recording are all recorded whole; concatenated they are one smux
        /// stream that decodes to PostgreSQL connections on odd stream ids, and re-encodes to the same bytes.
        /// </summary>
        [Fact]
        public void ClientStreamOfTheMuxRecordingDecodes()
        {
            var (stream, complete) = OutputStream(ClientToAgent);
            Assert.True(complete);
            var frames = new SmuxDecoder().Feed(stream);

            Assert.Equal(stream, SmuxCodec.Encode(frames));
            Assert.Equal(SmuxCommand.Syn, frames[0].Command);
            Assert.Equal(3u, frames[0].StreamId);

            // SYN opens odd ids, each once, in increasing order; xtaci/smux starts the client's ids at 3, not 1.
            var opened = frames.Where(f => f.Command == SmuxCommand.Syn).Select(f => f.StreamId).ToList();
            Assert.Equal(Enumerable.Range(0, 11).Select(i => (uint)(3 + 2 * i)), opened);

            var seen = new HashSet<uint>();
            var closed = new HashSet<uint>();
            foreach (var f in frames)
            {
                if (f.Command == SmuxCommand.Syn) Assert.True(seen.Add(f.StreamId));
                else Assert.Contains(f.StreamId, seen);
                Assert.DoesNotContain(f.StreamId, closed);
                if (f.Command == SmuxCommand.Fin) closed.Add(f.StreamId);
            }

            // Per stream: SSLRequest, StartupMessage (protocol 3.0) with user postgres, queries ('Q'), Terminate ('X') before FIN.
            foreach (var id in opened)
            {
                var psh = frames.Where(f => f.StreamId == id && f.Command == SmuxCommand.Psh).Select(f => f.Payload).ToList();
                Assert.Equal(new byte[] { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f }, psh[0]);
                if (psh.Count > 1)
                {
                    Assert.Equal(psh[1].Length, BinaryPrimitives.ReadInt32BigEndian(psh[1]));
                    Assert.Equal(0x00030000, BinaryPrimitives.ReadInt32BigEndian(psh[1].AsSpan(4)));
                    Assert.Contains("user\0postgres\0", System.Text.Encoding.ASCII.GetString(psh[1]));
                }
                foreach (var query in psh.Skip(2))
                {
                    Assert.Contains(query[0], new[] { (byte)'Q', (byte)'X' });
                    Assert.Equal(query.Length - 1, BinaryPrimitives.ReadInt32BigEndian(query.AsSpan(1)));
                }
                if (closed.Contains(id)) Assert.Equal((byte)'X', psh[^1][0]);
            }
            Assert.Equal(new HashSet<uint> { 3, 5, 9 }, closed);
            Assert.Equal(36, frames.Count(f => f.Command == SmuxCommand.Psh));
        }

        /// <summary>
        /// The agent's stream holds 11 messages longer than the 400 recorded bytes. Each of them starts with a
        /// frame header whose length ends exactly at the message's recorded length, so the stream stays framed
        /// when their unknown tails are zero-filled; only headers and the recorded payload prefixes are checked.
        /// </summary>
        [Fact]
        public void AgentStreamOfTheMuxRecordingDecodes()
        {
            var messages = Recording.Binary(Recording.Mux).Where(f => f.Dir == AgentToClient && f.PayloadType == (int)PayloadType.Output).ToList();
            var cut = messages.Where(m => !m.IsComplete).ToList();
            Assert.Equal(11, cut.Count);
            foreach (var m in cut)
            {
                var payload = m.RecordedPayload;
                Assert.Equal(SmuxCodec.Version1, payload[0]);
                Assert.Equal((byte)SmuxCommand.Psh, payload[1]);
                Assert.Equal(m.Len - SmuxCodec.HeaderLength, BinaryPrimitives.ReadUInt16LittleEndian(payload.AsSpan(2)));
            }

            var (stream, complete) = OutputStream(AgentToClient);
            Assert.False(complete);
            var frames = new SmuxDecoder().Feed(stream);
            Assert.Equal(stream.Length, frames.Sum(f => SmuxCodec.HeaderLength + f.Payload.Length));

            var clientOpened = new SmuxDecoder().Feed(OutputStream(ClientToAgent).Stream)
                .Where(f => f.Command == SmuxCommand.Syn).Select(f => f.StreamId).ToHashSet();
            Assert.DoesNotContain(frames, f => f.Command == SmuxCommand.Syn);
            Assert.All(frames, f => Assert.Contains(f.StreamId, clientOpened));

            var psh = frames.Where(f => f.Command == SmuxCommand.Psh).ToList();
            // The agent double refuses TLS ('N') on every stream, then answers the startup packet: AuthenticationOk first.
            Assert.Equal(11, psh.Count(f => f.Payload.SequenceEqual(new[] { (byte)'N' })));
            Assert.All(psh.Where(f => f.Payload.Length == 414), f => Assert.Equal((byte)'R', f.Payload[0]));
            Assert.All(psh.Where(f => f.Payload.Length > 1 && f.Payload.Length != 414), f => Assert.Equal((byte)'T', f.Payload[0]));
            Assert.Equal(new[] { 3u, 9u }, frames.Where(f => f.Command == SmuxCommand.Fin).Select(f => f.StreamId));
        }

        /// <summary>Property: any split of the recorded streams into chunks yields the same frames.</summary>
        [Theory]
        [InlineData(ClientToAgent)]
        [InlineData(AgentToClient)]
        public void RandomChunkSplitsYieldTheSameFrames(string dir)
        {
            var stream = OutputStream(dir).Stream;
            var expected = new SmuxDecoder().Feed(stream);
            var random = new Random(dir.Length * 7919);

            for (int run = 0; run < 300; run++)
            {
                var decoder = new SmuxDecoder();
                var output = new List<SmuxFrame>();
                int offset = 0;
                int maxChunk = run % 3 == 0 ? 4 : run % 3 == 1 ? 64 : 2048;
                while (offset < stream.Length)
                {
                    int n = Math.Min(random.Next(0, maxChunk + 1), stream.Length - offset);
                    output.AddRange(decoder.Feed(stream, offset, n));
                    offset += n;
                }
                Assert.True(decoder.IsAtFrameBoundary);
                AssertSameFrames(expected, output);
            }
        }

        /// <summary>Property: random frames, encoded and split at random, decode to themselves.</summary>
        [Fact]
        public void RandomFramesRoundTripThroughRandomSplits()
        {
            var random = new Random(42);
            for (int run = 0; run < 100; run++)
            {
                var frames = new List<SmuxFrame>();
                for (int i = random.Next(1, 30); i > 0; i--)
                {
                    var command = (SmuxCommand)random.Next(0, 4);
                    byte[]? payload = null;
                    if (command == SmuxCommand.Psh)
                    {
                        payload = new byte[random.Next(0, random.Next(2) == 0 ? 16 : 70000) % (SmuxCodec.MaxPayloadLength + 1)];
                        random.NextBytes(payload);
                    }
                    frames.Add(new SmuxFrame(command, (uint)random.Next(), payload));
                }
                var stream = SmuxCodec.Encode(frames);
                var decoder = new SmuxDecoder();
                var output = new List<SmuxFrame>();
                for (int offset = 0; offset < stream.Length;)
                {
                    int n = Math.Min(random.Next(1, 5000), stream.Length - offset);
                    output.AddRange(decoder.Feed(stream, offset, n));
                    offset += n;
                }
                AssertSameFrames(frames, output);
            }
        }

        /// <summary>
        /// The sink form hands payload bytes over as pieces of the caller's chunk, without copying: a frame inside one
        /// chunk in one piece, a frame across chunks as the part of each, the last marked; frames without payload whole.
        /// </summary>
        [Fact]
        public void SinkGetsPayloadsAsPiecesOfTheCallersChunk_WithoutCopies()
        {
            var data = Enumerable.Range(0, 3000).Select(i => (byte)i).ToArray();
            var stream = SmuxCodec.Encode(new[]
            {
                new SmuxFrame(SmuxCommand.Syn, 3),
                new SmuxFrame(SmuxCommand.Psh, 3, data.Take(100).ToArray()),
                new SmuxFrame(SmuxCommand.Psh, 5, data),
                new SmuxFrame(SmuxCommand.Psh, 3, Array.Empty<byte>()),
                new SmuxFrame(SmuxCommand.Fin, 5),
            });
            var decoder = new SmuxDecoder();
            var sink = new RecordingSink();
            var chunk1 = stream.Take(1024).ToArray();
            var chunk2 = stream.Skip(1024).Take(1024).ToArray();
            var chunk3 = stream.Skip(2048).ToArray();
            decoder.Feed(chunk1, 0, chunk1.Length, sink);
            Assert.False(decoder.IsAtFrameBoundary);
            decoder.Feed(chunk2, 0, chunk2.Length, sink);
            decoder.Feed(chunk3, 0, chunk3.Length, sink);
            Assert.True(decoder.IsAtFrameBoundary);

            Assert.Equal(new[]
            {
                "Syn 3",
                "data 3 chunk1@16+100 end", // after the SYN's and its own 8-byte headers
                "data 5 chunk1@124+900",  // 16 + 100 + 8: the rest of the first chunk
                "data 5 chunk2@0+1024",   // a whole chunk of payload: the chunk itself
                "data 5 chunk3@0+1076 end",
                "Psh 3",
                "Fin 5",
            }, sink.Events.Select(e => e.Describe(chunk1, chunk2, chunk3)));
            // The bytes handed over are the frames' payloads, in order.
            Assert.Equal(data.Take(100), sink.Bytes(3));
            Assert.Equal(data, sink.Bytes(5));
        }

        /// <summary>A protocol error comes after the frames before it were handed over; the decoder then refuses more.</summary>
        [Fact]
        public void SinkGetsTheFramesBeforeAProtocolError()
        {
            var good = SmuxCodec.Encode(new SmuxFrame(SmuxCommand.Psh, 7, new byte[] { 1, 2, 3 }));
            var bad = new byte[] { 2, 0, 0, 0, 7, 0, 0, 0 };
            var chunk = good.Concat(bad).ToArray();
            var decoder = new SmuxDecoder();
            var sink = new RecordingSink();
            Assert.Throws<SsmProtocolException>(() => decoder.Feed(chunk, 0, chunk.Length, sink));
            Assert.Equal(new byte[] { 1, 2, 3 }, sink.Bytes(7));
            Assert.Throws<SsmProtocolException>(() => decoder.Feed(good, 0, good.Length, sink));
        }

        private sealed class RecordingSink : ISmuxFrameSink
        {
            public readonly List<Event> Events = new();
            private readonly Dictionary<uint, List<byte>> _bytes = new();

            public void OnFrame(SmuxCommand command, uint streamId) => Events.Add(new Event(command.ToString(), streamId, null, 0, 0, false));

            public void OnData(uint streamId, byte[] buffer, int offset, int count, bool endOfFrame)
            {
                Events.Add(new Event("data", streamId, buffer, offset, count, endOfFrame));
                if (!_bytes.TryGetValue(streamId, out var list)) _bytes[streamId] = list = new List<byte>();
                list.AddRange(buffer.Skip(offset).Take(count));
            }

            public byte[] Bytes(uint streamId) => _bytes[streamId].ToArray();

            public sealed record Event(string What, uint StreamId, byte[]? Buffer, int Offset, int Count, bool End)
            {
                public string Describe(params byte[][] chunks)
                {
                    if (Buffer == null) return What + " " + StreamId;
                    var which = Array.FindIndex(chunks, c => ReferenceEquals(c, Buffer));
                    var name = which < 0 ? "a copy" : "chunk" + (which + 1);
                    return $"data {StreamId} {name}@{Offset}+{Count}" + (End ? " end" : "");
                }
            }
        }

        /// <summary>Output payloads of one direction of the mux recording, concatenated; cut tails zero-filled.</summary>
        private static (byte[] Stream, bool Complete) OutputStream(string dir)
        {
            var parts = new List<byte>();
            bool complete = true;
            // In sequence order: that is the order the receiver delivers them in.
            var messages = Recording.Binary(Recording.Mux)
                .Where(f => f.Dir == dir && f.PayloadType == (int)PayloadType.Output)
                .OrderBy(f => f.Seq);
            foreach (var m in messages)
            {
                var payload = AgentMessageCodec.Decode(m.IsComplete ? m.Raw : m.PaddedToFullLength()).Payload;
                complete &= m.IsComplete;
                parts.AddRange(payload);
            }
            return (parts.ToArray(), complete);
        }

        private static void AssertSameFrames(IReadOnlyList<SmuxFrame> expected, IReadOnlyList<SmuxFrame> actual)
        {
            Assert.Equal(expected.Count, actual.Count);
            for (int i = 0; i < expected.Count; i++)
            {
                Assert.Equal(expected[i].Command, actual[i].Command);
                Assert.Equal(expected[i].StreamId, actual[i].StreamId);
                Assert.Equal(expected[i].Payload, actual[i].Payload);
            }
        }
    }
}
