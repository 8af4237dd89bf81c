using System;
using System.Buffers.Binary;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    public class AgentMessageCodecTests
    {
        private static readonly Guid SampleId = Guid.Parse("dbbd100f-a983-4ba9-bcc3-10a8559499f7");

        /// <summary>
        /// The direct acknowledgement encoder writes the bytes of the general path (message built by ClientMessages, then
        /// encoded), for every kind of sequence number and type, including a type it leaves to the general path.
        /// </summary>
        [Theory]
        [InlineData("output_stream_data", 0L)]
        [InlineData("output_stream_data", 9L)]
        [InlineData("output_stream_data", 10L)]
        [InlineData("input_stream_data", 1234567890123L)]
        [InlineData("channel_closed", long.MaxValue)]
        [InlineData("x", -1L)]
        [InlineData("Weird_Type_9", long.MinValue)]
        [InlineData("donn\u00e9es", 5L)]
        [InlineData("with space", 5L)]
        public void EncodeAcknowledgement_WritesTheBytesOfTheGeneralPath(string type, long sequence)
        {
            var acked = Guid.Parse("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
            var direct = AgentMessageCodec.EncodeAcknowledgement(type, acked, sequence, SampleId, 1_700_000_000_123);
            var general = AgentMessageCodec.Encode(ClientMessages.Acknowledge(type, acked, sequence, SampleId, 1_700_000_000_123));
            Assert.Equal(general, direct);
            var decoded = AgentMessageCodec.Decode(direct);
            Assert.True(decoded.IsDigestValid);
            var content = SsmJson.Deserialize<AcknowledgeContent>(decoded.Payload);
            Assert.Equal(type, content.AcknowledgedMessageType);
            Assert.Equal(sequence, content.AcknowledgedMessageSequenceNumber);
            Assert.Equal(acked.ToString("D"), content.AcknowledgedMessageId);
        }

        [Theory]
        [InlineData(0L, 1, 0)]
        [InlineData(1L, 1, 1)]
        [InlineData(77L, 1, 1024)]
        [InlineData(long.MaxValue, 10, 4)]
        [InlineData(3L, 6, 3000)]
        public void EncodeInputStreamData_WritesTheBytesOfTheGeneralPath(long sequence, int payloadType, int length)
        {
            var type = (PayloadType)payloadType;
            var buffer = new byte[length + 20];
            new Random(length).NextBytes(buffer);
            var direct = AgentMessageCodec.EncodeInputStreamData(sequence, type, buffer, 13, length, SampleId, 1_700_000_000_999);
            var general = AgentMessageCodec.Encode(ClientMessages.InputStreamData(sequence, type, buffer.AsSpan(13, length).ToArray(),
                SampleId, 1_700_000_000_999));
            Assert.Equal(general, direct);

            var before = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var drawn = AgentMessageCodec.Decode(AgentMessageCodec.EncodeInputStreamData(sequence, type, buffer, 13, length, out var id));
            Assert.Equal(id, drawn.MessageId);
            Assert.NotEqual(Guid.Empty, id);
            Assert.True(drawn.IsDigestValid);
            Assert.InRange(drawn.CreatedDate, before, (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            Assert.Throws<ArgumentOutOfRangeException>(() => AgentMessageCodec.EncodeInputStreamData(sequence, type, buffer, 13, length + 8, out _));
        }

        [Fact]
        public void EncodeAcknowledgement_DrawsAFreshIdAndTheCurrentDate_WhenNoneIsGiven()
        {
            var before = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var a = AgentMessageCodec.Decode(AgentMessageCodec.EncodeAcknowledgement(MessageTypes.OutputStreamData, SampleId, 1));
            var b = AgentMessageCodec.Decode(AgentMessageCodec.EncodeAcknowledgement(MessageTypes.OutputStreamData, SampleId, 1));
            var after = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            Assert.NotEqual(a.MessageId, b.MessageId);
            Assert.NotEqual(Guid.Empty, a.MessageId);
            Assert.InRange(a.CreatedDate, before, after);
            Assert.Equal(MessageTypes.Acknowledge, a.MessageType);
            Assert.Equal(MessageFlags.Ack, a.Flags);
            Assert.Throws<ArgumentException>(() => AgentMessageCodec.EncodeAcknowledgement(MessageTypes.OutputStreamData, SampleId, 1, Guid.Empty));
        }

        [Fact]
        public void EncodeLaysOutTheHeaderBigEndian()
        {
            var payload = Encoding.ASCII.GetBytes("hello");
            var message = AgentMessage.Create(MessageTypes.InputStreamData, 0x0102030405060708, 0x1112131415161718,
                PayloadType.Output, payload, SampleId, 0x0000018e572b3768);
            var bytes = AgentMessageCodec.Encode(message);

            Assert.Equal(120 + payload.Length, bytes.Length);
            Assert.Equal(new byte[] { 0, 0, 0, 116 }, bytes.Take(4));
            Assert.Equal("input_stream_data".PadRight(32, ' '), Encoding.ASCII.GetString(bytes, 4, 32));
            Assert.Equal(new byte[] { 0, 0, 0, 1 }, bytes.Skip(36).Take(4));
            Assert.Equal(new byte[] { 0, 0, 1, 0x8e, 0x57, 0x2b, 0x37, 0x68 }, bytes.Skip(40).Take(8));
            Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, bytes.Skip(48).Take(8));
            Assert.Equal(new byte[] { 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18 }, bytes.Skip(56).Take(8));
            Assert.Equal(Convert.FromHexString("bcc310a8559499f7dbbd100fa9834ba9"), bytes.Skip(64).Take(16));
            Assert.Equal(SHA256.HashData(payload), bytes.Skip(80).Take(32));
            Assert.Equal(new byte[] { 0, 0, 0, 1 }, bytes.Skip(112).Take(4));
            Assert.Equal(new byte[] { 0, 0, 0, 5 }, bytes.Skip(116).Take(4));
            Assert.Equal(payload, bytes.Skip(120));
        }

        [Fact]
        public void RoundTripKeepsEveryField()
        {
            var message = AgentMessage.Create(MessageTypes.OutputStreamData, long.MaxValue, ulong.MaxValue,
                PayloadType.ExitCode, new byte[] { 0, 255, 7 }, SampleId, ulong.MaxValue);
            var decoded = AgentMessageCodec.Decode(AgentMessageCodec.Encode(message));
            Assert.Equal(116u, decoded.HeaderLength);
            Assert.Equal(message.MessageType, decoded.MessageType);
            Assert.Equal(message.SchemaVersion, decoded.SchemaVersion);
            Assert.Equal(message.CreatedDate, decoded.CreatedDate);
            Assert.Equal(message.SequenceNumber, decoded.SequenceNumber);
            Assert.Equal(message.Flags, decoded.Flags);
            Assert.Equal(message.MessageId, decoded.MessageId);
            Assert.Equal(message.PayloadDigest, decoded.PayloadDigest);
            Assert.Equal(message.PayloadType, decoded.PayloadType);
            Assert.Equal(message.Payload, decoded.Payload);
            Assert.True(decoded.IsDigestValid);
        }

        [Fact]
        public void DecodeFromASegmentReadsOnlyTheSegment()
        {
            var bytes = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.Acknowledge, 0, MessageFlags.Ack,
                PayloadType.None, new byte[] { 1, 2 }, SampleId, 1));
            var framed = new byte[bytes.Length + 10];
            Buffer.BlockCopy(bytes, 0, framed, 7, bytes.Length);
            var decoded = AgentMessageCodec.Decode(new ArraySegment<byte>(framed, 7, bytes.Length));
            Assert.Equal(SampleId, decoded.MessageId);
            Assert.Equal(new byte[] { 1, 2 }, decoded.Payload);
        }

        [Fact]
        public void MessageTypePaddingWithSpacesAndNulsIsTrimmed()
        {
            var bytes = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.ChannelClosed, 0, 0, PayloadType.None,
                Array.Empty<byte>(), SampleId, 1));
            // NUL-padded variant, with a stray leading space and NUL as well.
            Array.Clear(bytes, 4, 32);
            bytes[4] = 0;
            bytes[5] = (byte)' ';
            Encoding.ASCII.GetBytes(MessageTypes.ChannelClosed, 0, MessageTypes.ChannelClosed.Length, bytes, 6);
            Assert.Equal(MessageTypes.ChannelClosed, AgentMessageCodec.Decode(bytes).MessageType);
        }

        [Fact]
        public void HeaderLength112HasNoPayloadTypeAndReadsLengthAtOffset112()
        {
            var payload = Encoding.UTF8.GetBytes("{\"MessageId\":\"x\",\"CreatedDate\":\"1\",\"DestinationId\":\"i-0\",\"SessionId\":\"s\","
                + "\"MessageType\":\"channel_closed\",\"SchemaVersion\":1,\"Output\":\"Session terminated\"}");
            var bytes = new byte[112 + 4 + payload.Length];
            BinaryPrimitives.WriteUInt32BigEndian(bytes, 112);
            Encoding.ASCII.GetBytes("channel_closed".PadRight(32), 0, 32, bytes, 4);
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(36), 1);
            BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(40), 1795861558539);
            BinaryPrimitives.WriteInt64BigEndian(bytes.AsSpan(48), 9);
            MessageIdCodec.Write(SampleId, bytes, 64);
            SHA256.HashData(payload).CopyTo(bytes, 80);
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(112), (uint)payload.Length);
            payload.CopyTo(bytes, 116);

            var message = AgentMessageCodec.Decode(bytes);
            Assert.Equal(112u, message.HeaderLength);
            Assert.Equal(MessageTypes.ChannelClosed, message.MessageType);
            Assert.Equal(PayloadType.None, message.PayloadType);
            Assert.Equal(9, message.SequenceNumber);
            Assert.Equal(payload, message.Payload);
            Assert.True(message.IsDigestValid);
            var closed = SsmJson.Deserialize<ChannelClosedPayload>(message.Payload);
            Assert.Equal("Session terminated", closed.Output);
            Assert.Equal("i-0", closed.DestinationId);
            Assert.Equal(1, closed.SchemaVersion);
        }

        [Fact]
        public void LongerHeadersAreToleratedAndPayloadLengthIsReadAtHeaderLength()
        {
            var inner = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.OutputStreamData, 3, 0, PayloadType.Output,
                new byte[] { 42 }, SampleId, 1));
            // Insert 4 unknown header bytes before PayloadLength, HeaderLength 120.
            var bytes = new byte[inner.Length + 4];
            Buffer.BlockCopy(inner, 0, bytes, 0, 116);
            Buffer.BlockCopy(inner, 116, bytes, 120, inner.Length - 116);
            BinaryPrimitives.WriteUInt32BigEndian(bytes, 120);
            var message = AgentMessageCodec.Decode(bytes);
            Assert.Equal(120u, message.HeaderLength);
            Assert.Equal(PayloadType.Output, message.PayloadType);
            Assert.Equal(new byte[] { 42 }, message.Payload);
        }

        [Fact]
        public void WrongDigestIsReportedNotThrown()
        {
            var bytes = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.OutputStreamData, 1, 0, PayloadType.Output,
                new byte[] { 1, 2, 3 }, SampleId, 1));
            bytes[^1] ^= 0xff;
            Assert.False(AgentMessageCodec.Decode(bytes).IsDigestValid);
        }

        [Fact]
        public void EmptyPayloadCountsAsValidWhateverTheDigest()
        {
            var bytes = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.StartPublication, 0, 0, PayloadType.None,
                Array.Empty<byte>(), SampleId, 1));
            Array.Clear(bytes, AgentMessageCodec.PayloadDigestOffset, 32);
            Assert.True(AgentMessageCodec.Decode(bytes).IsDigestValid);
        }

        [Theory]
        [InlineData("")]
        [InlineData("a_message_type_that_is_longer_than_32")]
        [InlineData("two words")]
        [InlineData("caf\u00e9")]
        public void EncodeRejectsMessageTypesThatDoNotFit(string type)
        {
            Assert.Throws<ArgumentException>(() =>
                AgentMessage.Create(type, 0, 0, PayloadType.Output, Array.Empty<byte>(), SampleId, 1));
        }

        [Fact]
        public void CreateRejectsTheNilUuid()
        {
            Assert.Throws<ArgumentException>(() =>
                AgentMessage.Create(MessageTypes.Acknowledge, 0, 0, PayloadType.None, Array.Empty<byte>(), Guid.Empty, 1));
        }

        [Fact]
        public void CreateDefaultsToANewIdAndTheCurrentTime()
        {
            var before = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var a = AgentMessage.Create(MessageTypes.InputStreamData, 0, 0, PayloadType.Output, new byte[1]);
            var b = AgentMessage.Create(MessageTypes.InputStreamData, 0, 0, PayloadType.Output, new byte[1]);
            var after = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            Assert.NotEqual(a.MessageId, b.MessageId);
            Assert.InRange(a.CreatedDate, before, after);
        }

        [Fact]
        public void NewIds_AreUniqueVersion4Uuids_AcrossThreads()
        {
            var ids = new System.Collections.Concurrent.ConcurrentBag<Guid>();
            System.Threading.Tasks.Parallel.For(0, 4, _ =>
            {
                for (var i = 0; i < 25_000; i++) ids.Add(AgentMessage.Create(MessageTypes.Acknowledge, 0, 3, PayloadType.None, new byte[1]).MessageId);
            });
            Assert.Equal(100_000, ids.Distinct().Count());
            Assert.All(ids, id =>
            {
                var text = id.ToString("D");
                Assert.Equal('4', text[14]);                  // version 4
                Assert.Contains(text[19], "89ab");            // RFC 4122 variant
                Assert.NotEqual(Guid.Empty, id);
            });
        }

        public static TheoryData<string, byte[]> MalformedFrames()
        {
            var valid = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.OutputStreamData, 1, 0, PayloadType.Output,
                new byte[] { 1, 2, 3 }, SampleId, 1));
            byte[] With(Action<byte[]> change)
            {
                var copy = (byte[])valid.Clone();
                change(copy);
                return copy;
            }

            return new TheoryData<string, byte[]>
            {
                { "empty", Array.Empty<byte>() },
                { "three bytes", new byte[] { 0, 0, 0 } },
                { "header only", valid.Take(116).ToArray() },
                { "payload cut short", valid.Take(valid.Length - 1).ToArray() },
                { "trailing garbage", valid.Concat(new byte[] { 9 }).ToArray() },
                { "header length zero", With(b => BinaryPrimitives.WriteUInt32BigEndian(b, 0)) },
                { "header length 111", With(b => BinaryPrimitives.WriteUInt32BigEndian(b, 111)) },
                { "header length past the end", With(b => BinaryPrimitives.WriteUInt32BigEndian(b, (uint)b.Length)) },
                { "header length near uint max", With(b => BinaryPrimitives.WriteUInt32BigEndian(b, uint.MaxValue - 2)) },
                { "payload length too large", With(b => BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(116), 4)) },
                { "payload length uint max", With(b => BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(116), uint.MaxValue)) },
                { "blank message type", With(b => b.AsSpan(4, 32).Fill((byte)' ')) },
                { "NUL message type", With(b => b.AsSpan(4, 32).Clear()) },
            };
        }

        [Theory]
        [MemberData(nameof(MalformedFrames))]
        public void MalformedFramesAreRejectedWithTheProtocolException(string name, byte[] frame)
        {
            var ex = Assert.Throws<SsmProtocolException>(() => AgentMessageCodec.Decode(frame));
            Assert.False(string.IsNullOrEmpty(ex.Message), name);
        }

        /// <summary>
        /// Fuzz-ish: random bytes, every truncation of real frames, and random byte flips either decode or throw
        /// <see cref="SsmProtocolException"/> — never anything else.
        /// </summary>
        [Fact]
        public void GarbageNeverThrowsAnythingButTheProtocolException()
        {
            var random = new Random(20261128);
            var samples = Recording.Files.SelectMany(Recording.Binary).Where(f => f.IsComplete).Select(f => f.Raw).ToList();
            int decoded = 0, rejected = 0;

            void Try(byte[] input)
            {
                try
                {
                    AgentMessageCodec.Decode(input);
                    decoded++;
                }
                catch (SsmProtocolException)
                {
                    rejected++;
                }
            }

            for (int i = 0; i < 2000; i++)
            {
                var junk = new byte[random.Next(0, 400)];
                random.NextBytes(junk);
                Try(junk);
            }
            foreach (var sample in samples.Take(12))
            {
                for (int len = 0; len < sample.Length; len++) Try(sample.Take(len).ToArray());
            }
            for (int i = 0; i < 3000; i++)
            {
                var copy = (byte[])samples[random.Next(samples.Count)].Clone();
                int flips = random.Next(1, 4);
                for (int f = 0; f < flips; f++) copy[random.Next(copy.Length)] = (byte)random.Next(256);
                Try(copy);
            }

            Assert.True(rejected > 2000, $"rejected {rejected}");
            Assert.True(decoded > 100, $"decoded {decoded}: byte flips in payload or digest still decode");
        }
    }
}
