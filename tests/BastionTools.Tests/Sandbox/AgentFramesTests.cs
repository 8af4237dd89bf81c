using System;
using System.Collections.Generic;
using System.Text;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// The agent double's fast frame code (AgentFrames) must write and read exactly what the general codec does: the
    /// double models the agent's wire, and the fast path is only a cheaper way to the same bytes and messages.
    /// </summary>
    public class AgentFramesTests
    {
        private static readonly Guid SampleId = Guid.Parse("dbbd100f-a983-4ba9-bcc3-10a8559499f7");
        private static readonly Guid OtherId = Guid.Parse("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9");
        private const ulong SampleDate = 0x0000018e572b3768;

        [Theory]
        [InlineData(0L, MessageFlags.Syn, (uint)PayloadType.Output, 1)]
        [InlineData(1L, MessageFlags.Data, (uint)PayloadType.Output, 1024)]
        [InlineData(long.MaxValue, MessageFlags.Data, (uint)PayloadType.Flag, 4)]
        [InlineData(7L, MessageFlags.Data, (uint)PayloadType.HandshakeRequest, 300)]
        public void EncodeWritesTheCodecsBytes(long sequence, ulong flags, uint type, int length)
        {
            var payloadType = (PayloadType)type;
            var payload = new byte[length];
            new Random(length).NextBytes(payload);
            var expected = AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.OutputStreamData, sequence, flags, payloadType, payload, SampleId, SampleDate));

            var actual = AgentFrames.Encode(MessageTypes.OutputStreamData, sequence, flags, payloadType, payload, SampleId, SampleDate);

            Assert.Equal(expected, actual);
        }

        [Fact]
        public void EncodeWithoutIdOrDateMakesAFreshIdAndTheCurrentTime()
        {
            var before = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var first = AgentMessageCodec.Decode(AgentFrames.Encode(MessageTypes.OutputStreamData, 3, MessageFlags.Data, PayloadType.Output, new byte[] { 1, 2, 3 }));
            var second = AgentMessageCodec.Decode(AgentFrames.Encode(MessageTypes.OutputStreamData, 4, MessageFlags.Data, PayloadType.Output, new byte[] { 1, 2, 3 }));
            var after = (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

            Assert.NotEqual(first.MessageId, second.MessageId);
            Assert.NotEqual(Guid.Empty, first.MessageId);
            Assert.InRange(first.CreatedDate, before, after);
            Assert.True(first.IsDigestValid);
            // A version 4 UUID (the real agent's uuid.NewV4), RFC 4122 variant; never the same twice.
            Assert.Equal('4', first.MessageId.ToString("D")[14]);
            Assert.Contains(first.MessageId.ToString("D")[19], "89ab");
            var ids = new HashSet<Guid>();
            for (var i = 0; i < 10_000; i++)
                Assert.True(ids.Add(AgentMessageCodec.Decode(AgentFrames.Encode(MessageTypes.OutputStreamData, i, MessageFlags.Data, PayloadType.Output, new byte[] { 1 })).MessageId));
        }

        [Theory]
        [InlineData(MessageTypes.OutputStreamData, 0L)]
        [InlineData(MessageTypes.OutputStreamData, 1234567890123L)]
        [InlineData(MessageTypes.InputStreamData, -5L)]
        [InlineData("Some_Type9", long.MaxValue)]
        public void EncodeAcknowledgeWritesTheClientsAcknowledgement(string type, long sequence)
        {
            var expected = AgentMessageCodec.Encode(ClientMessages.Acknowledge(type, OtherId, sequence, SampleId, SampleDate));

            var actual = AgentFrames.EncodeAcknowledge(type, OtherId, sequence, SampleId, SampleDate);

            Assert.Equal(expected, actual);
        }

        [Theory]
        [InlineData("with space")]
        [InlineData("dash-ed")]
        [InlineData("caf\u00e9")]
        public void EncodeAcknowledgeLeavesOtherTypesToTheSerializer(string type)
        {
            Assert.Null(AgentFrames.EncodeAcknowledge(type, OtherId, 1));
        }

        public static TheoryData<byte[]> Frames()
        {
            var data = new TheoryData<byte[]>();
            var payload = Encoding.ASCII.GetBytes("smux bytes");
            data.Add(AgentMessageCodec.Encode(ClientMessages.InputStreamData(42, PayloadType.Output, payload, SampleId, SampleDate)));
            data.Add(AgentMessageCodec.Encode(ClientMessages.Acknowledge(MessageTypes.OutputStreamData, OtherId, 9, SampleId, SampleDate)));
            data.Add(AgentMessageCodec.Encode(ClientMessages.Flag(3, PayloadTypeFlag.TerminateSession, SampleId, SampleDate)));
            // An empty payload (digest not checked), a bad digest, another type, a 112-byte header, a short frame.
            data.Add(AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.InputStreamData, 1, MessageFlags.Data, PayloadType.Output, Array.Empty<byte>(), SampleId, SampleDate)));
            var tampered = AgentMessageCodec.Encode(ClientMessages.InputStreamData(5, PayloadType.Output, payload, SampleId, SampleDate));
            tampered[tampered.Length - 1] ^= 1;
            data.Add(tampered);
            data.Add(AgentMessageCodec.Encode(AgentMessage.Create(MessageTypes.ChannelClosed, 0, MessageFlags.Ack, PayloadType.None, payload, SampleId, SampleDate)));
            var nulPadded = AgentMessageCodec.Encode(ClientMessages.InputStreamData(6, PayloadType.Output, payload, SampleId, SampleDate));
            nulPadded[4 + MessageTypes.InputStreamData.Length] = 0;
            data.Add(nulPadded);
            var standard = AgentMessageCodec.Encode(ClientMessages.InputStreamData(8, PayloadType.Output, payload, SampleId, SampleDate));
            var shortHeader = new byte[standard.Length - 4];
            Buffer.BlockCopy(standard, 0, shortHeader, 0, 112);
            Buffer.BlockCopy(standard, 116, shortHeader, 112, standard.Length - 116);
            shortHeader[3] = 112;
            data.Add(shortHeader);
            return data;
        }

        [Theory]
        [MemberData(nameof(Frames))]
        public void DecodeReadsWhatTheCodecReads(byte[] frame)
        {
            var expected = AgentMessageCodec.Decode(frame);

            // The frame in the middle of a larger buffer, as the read loop hands it over.
            var buffer = new byte[frame.Length + 10];
            Buffer.BlockCopy(frame, 0, buffer, 3, frame.Length);
            var actual = AgentFrames.Decode(new ArraySegment<byte>(buffer, 3, frame.Length));

            Assert.Equal(expected.HeaderLength, actual.HeaderLength);
            Assert.Equal(expected.MessageType, actual.MessageType);
            Assert.Equal(expected.SchemaVersion, actual.SchemaVersion);
            Assert.Equal(expected.CreatedDate, actual.CreatedDate);
            Assert.Equal(expected.SequenceNumber, actual.SequenceNumber);
            Assert.Equal(expected.Flags, actual.Flags);
            Assert.Equal(expected.MessageId, actual.MessageId);
            Assert.Equal(expected.PayloadDigest, actual.PayloadDigest);
            Assert.Equal(expected.PayloadType, actual.PayloadType);
            Assert.Equal(expected.Payload, actual.Payload);
            Assert.Equal(expected.IsDigestValid, actual.IsDigestValid);
        }

        [Theory]
        [MemberData(nameof(Frames))]
        public void ReadsAStandardAcknowledgeInPlaceAsTheCodecDoes(byte[] frame)
        {
            var expected = AgentMessageCodec.Decode(frame);

            var isAck = AgentFrames.TryReadStandardAcknowledge(new ArraySegment<byte>(frame), out var digestValid, out var payload);

            Assert.Equal(expected.MessageType == MessageTypes.Acknowledge && expected.HeaderLength == 116, isAck);
            if (isAck)
            {
                Assert.Equal(expected.IsDigestValid, digestValid);
                Assert.Equal(expected.Payload, payload.ToArray());
            }
        }

        [Fact]
        public void AnAcknowledgeWithABadDigestIsReadAsInvalid()
        {
            var frame = AgentMessageCodec.Encode(ClientMessages.Acknowledge(MessageTypes.OutputStreamData, OtherId, 9, SampleId, SampleDate));
            frame[AgentMessageCodec.PayloadDigestOffset] ^= 1;

            Assert.True(AgentFrames.TryReadStandardAcknowledge(new ArraySegment<byte>(frame), out var digestValid, out _));
            Assert.False(digestValid);
            Assert.False(AgentMessageCodec.Decode(frame).IsDigestValid);
        }

        [Theory]
        [InlineData(new byte[] { 0, 0, 0, 116, 1, 2, 3 })]
        [InlineData(new byte[0])]
        public void DecodeRejectsWhatTheCodecRejects(byte[] frame)
        {
            var expected = Assert.Throws<SsmProtocolException>(() => AgentMessageCodec.Decode(frame));
            var actual = Assert.Throws<SsmProtocolException>(() => AgentFrames.Decode(new ArraySegment<byte>(frame)));
            Assert.Equal(expected.Message, actual.Message);
        }

        [Theory]
        [InlineData(0L)]
        [InlineData(17L)]
        [InlineData(123456789012345678L)]
        public void ReadsTheSequenceNumberOfAClientsAcknowledgement(long sequence)
        {
            var ack = ClientMessages.Acknowledge(MessageTypes.OutputStreamData, OtherId, sequence, SampleId, SampleDate);

            Assert.True(AgentFrames.TryReadCanonicalAcknowledge(ack.Payload, out var read));
            Assert.Equal(sequence, read);
            Assert.Equal(SsmJson.Deserialize<AcknowledgeContent>(ack.Payload).AcknowledgedMessageSequenceNumber, read);
        }

        [Theory]
        // Valid JSON in another form, and invalid JSON: the serializer decides, as before.
        [InlineData("{\"acknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":3,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":3,\"IsSequentialMessage\":true} ")]
        [InlineData("{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0A1B2C3D-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":3,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":03,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":-3,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":3.0,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":1234567890123456789,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageType\":\"\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":3,\"IsSequentialMessage\":true}")]
        [InlineData("{\"AcknowledgedMessageSequenceNumber\":3}")]
        [InlineData("not json")]
        public void LeavesEveryOtherFormToTheSerializer(string json)
        {
            Assert.False(AgentFrames.TryReadCanonicalAcknowledge(Encoding.UTF8.GetBytes(json), out _));
        }

        [Fact]
        public void ReadsIsSequentialMessageFalseToo()
        {
            var json = "{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\",\"AcknowledgedMessageSequenceNumber\":3,\"IsSequentialMessage\":false}";
            var bytes = Encoding.UTF8.GetBytes(json);

            Assert.True(AgentFrames.TryReadCanonicalAcknowledge(bytes, out var read));
            Assert.Equal(SsmJson.Deserialize<AcknowledgeContent>(bytes).AcknowledgedMessageSequenceNumber, read);
        }
    }
}
