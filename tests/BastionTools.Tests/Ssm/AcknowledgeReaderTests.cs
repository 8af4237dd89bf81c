using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The in-place reader of the agent's acknowledgements must read what the serializer reads, for every payload it takes;
    /// everything else it leaves to the serializer.
    /// </summary>
    public class AcknowledgeReaderTests
    {
        private const string Id = "790664f3-c3f9-4a1c-91cf-455282a4230a";

        public static IEnumerable<object[]> AgentAcknowledgements() =>
            Recording.Files.SelectMany(f => Recording.Binary(f)
                .Where(x => x.Type == MessageTypes.Acknowledge && !x.FromClient)
                .Select(x => new object[] { f, x.Line }));

        /// <summary>The serializer's reading (the general path): null when it ignores the acknowledgement.</summary>
        private static (long Sequence, Guid Id)? General(byte[] payload)
        {
            AcknowledgeContent ack;
            try
            {
                ack = SsmJson.Deserialize<AcknowledgeContent>(payload);
            }
            catch (SsmProtocolException)
            {
                return null;
            }
            return Guid.TryParse(ack.AcknowledgedMessageId, out var id) ? (ack.AcknowledgedMessageSequenceNumber, id) : null;
        }

        [Theory]
        [MemberData(nameof(AgentAcknowledgements))]
        public void EveryAcknowledgementTheAgentSentInTheRecordings_IsReadInPlace_AsTheSerializerReadsIt(string file, int line)
        {
            var rec = Recording.Get(file, line);
            Assert.True(rec.IsComplete, rec.ToString());
            var message = AgentMessageCodec.Decode(rec.Raw);
            Assert.True(message.IsDigestValid);

            Assert.True(AcknowledgeReader.TryRead(message.Payload, out var sequence, out var id), Encoding.UTF8.GetString(message.Payload));
            Assert.Equal(General(message.Payload), (sequence, id));
            // The whole frame, where it lies (as the receive loop takes it: a segment of a larger buffer).
            var buffer = new byte[rec.Raw.Length + 10];
            rec.Raw.CopyTo(buffer, 7);
            Assert.True(AcknowledgeReader.TryReadFrame(new ArraySegment<byte>(buffer, 7, rec.Raw.Length), out var inPlace, out var inPlaceId));
            Assert.Equal((sequence, id), (inPlace, inPlaceId));
        }

        [Fact]
        public void AFrameWhoseHeaderLengthsOrDigestDoNotHold_IsLeftToTheGeneralPath()
        {
            var acked = Guid.NewGuid();
            var frame = AgentMessageCodec.Encode(ClientMessages.Acknowledge(MessageTypes.InputStreamData, acked, 41));
            Assert.True(AcknowledgeReader.TryReadFrame(new ArraySegment<byte>(frame), out var sequence, out var id));
            Assert.Equal((41L, acked), (sequence, id));

            byte[] Changed(Action<byte[]> change)
            {
                var copy = (byte[])frame.Clone();
                change(copy);
                return copy;
            }
            var broken = new[]
            {
                Changed(f => f[AgentMessageCodec.PayloadDigestOffset + 31] ^= 0x80),                  // digest
                Changed(f => f[f.Length - 2] = (byte)'2'),                                             // payload (digest no longer holds)
                Changed(f => f[3] = 112),                                                              // header length 112
                Changed(f => f[(int)AgentMessageCodec.StandardHeaderLength + 3]++),                   // payload length one more
            };
            foreach (var f in broken) Assert.False(AcknowledgeReader.TryReadFrame(new ArraySegment<byte>(f), out _, out _));
            Assert.False(AcknowledgeReader.TryReadFrame(new ArraySegment<byte>(frame, 0, frame.Length - 1), out _, out _)); // cut short
            Assert.False(AcknowledgeReader.TryReadFrame(new ArraySegment<byte>(frame, 0, 100), out _, out _));              // no header
        }

        [Fact]
        public void TheRecordingsHoldAgentAcknowledgements()
        {
            // The theory above runs over something: both recordings carry the agent's acknowledgements.
            Assert.All(Recording.Files, f => Assert.Contains(AgentAcknowledgements(), row => (string)row[0] == f));
        }

        [Theory]
        [InlineData("{\"AcknowledgedMessageType\":\"input_stream_data\",\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":0,\"IsSequentialMessage\":true}", 0)]
        [InlineData("{\"AcknowledgedMessageType\":\"input_stream_data\",\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":9223372036854775807,\"IsSequentialMessage\":false}", long.MaxValue)]
        [InlineData(" {\r\n \"AcknowledgedMessageSequenceNumber\" : -3 ,\t\"AcknowledgedMessageId\" : \"" + Id + "\" } \n", -3)]
        [InlineData("{\"AcknowledgedMessageId\":\"790664F3-C3F9-4A1C-91CF-455282A4230A\",\"AcknowledgedMessageSequenceNumber\":12}", 12)]
        [InlineData("{\"AcknowledgedMessageType\":\"\\u0069nput\",\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":5}", 5)]
        public void PlainAcknowledgements_AreRead_AsTheSerializerReadsThem(string json, long expected)
        {
            var payload = Encoding.UTF8.GetBytes(json);
            Assert.True(AcknowledgeReader.TryRead(payload, out var sequence, out var id));
            Assert.Equal(expected, sequence);
            Assert.Equal(Guid.Parse(Id), id);
            Assert.Equal(General(payload), (sequence, id));
        }

        [Theory]
        // Names the serializer matches without regard to case: its call.
        [InlineData("{\"acknowledgedmessageid\":\"" + Id + "\",\"acknowledgedmessagesequencenumber\":1}")]
        // A property twice (the serializer keeps the last), or one it does not know.
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1,\"AcknowledgedMessageSequenceNumber\":2}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1,\"Extra\":1}")]
        // Ids in another form or escaped, null, or of the wrong type.
        [InlineData("{\"AcknowledgedMessageId\":\"790664f3c3f94a1c91cf455282a4230a\",\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":\"{790664f3-c3f9-4a1c-91cf-455282a4230a}\",\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":\"\\u0037\\u0039\\u0030\\u0036\\u0036\\u0034\\u0066\\u0033-c3f9-4a1c-91cf-455282a4230a\",\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":null,\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":1,\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":\"not-a-guid-at-all-but-36-characters\",\"AcknowledgedMessageSequenceNumber\":1}")]
        // Sequence numbers that are not a 64-bit integer.
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":\"1\"}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1.0}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1e2}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":9223372036854775808}")]
        // Other fields of the wrong type.
        [InlineData("{\"AcknowledgedMessageType\":1,\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1,\"IsSequentialMessage\":\"true\"}")]
        // Something missing.
        [InlineData("{\"AcknowledgedMessageSequenceNumber\":1}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\"}")]
        [InlineData("{}")]
        // Not one JSON object.
        [InlineData("")]
        [InlineData("   ")]
        [InlineData("null")]
        [InlineData("[{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1}]")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1}{}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1} x")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1,}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1 /* c */}")]
        [InlineData("{\"AcknowledgedMessageId\":\"" + Id + "\",\"AcknowledgedMessageSequenceNumber\":1")]
        public void AnythingElse_IsLeftToTheSerializer(string json)
        {
            Assert.False(AcknowledgeReader.TryRead(Encoding.UTF8.GetBytes(json), out _, out _));
        }

        [Fact]
        public void UnderRandomDamage_WhateverTheReaderTakes_TheSerializerReadsTheSame()
        {
            // Bytes replaced, inserted and removed at random in an agent's acknowledgement (a fixed seed: the same 20,000
            // payloads every run). The reader may decline any of them; what it accepts must be what the general path reads.
            var original = Encoding.UTF8.GetBytes("{\"AcknowledgedMessageType\":\"input_stream_data\",\"AcknowledgedMessageId\":\"" + Id +
                                                  "\",\"AcknowledgedMessageSequenceNumber\":4071,\"IsSequentialMessage\":true}");
            var alphabet = Encoding.ASCII.GetBytes("{}[]\",:\\ \t0123456789-+.eEaAfFxXnulltrue/*");
            var random = new Random(11);
            int accepted = 0, changedAndAccepted = 0;
            for (var run = 0; run < 20_000; run++)
            {
                var bytes = new List<byte>(original);
                var edits = 1 + random.Next(3);
                for (var e = 0; e < edits && bytes.Count > 0; e++)
                {
                    var at = random.Next(bytes.Count);
                    var b = alphabet[random.Next(alphabet.Length)];
                    switch (random.Next(3))
                    {
                        case 0: bytes[at] = b; break;
                        case 1: bytes.Insert(at, b); break;
                        default: bytes.RemoveAt(at); break;
                    }
                }
                var payload = bytes.ToArray();
                if (!AcknowledgeReader.TryRead(payload, out var sequence, out var id)) continue;
                accepted++;
                if (!payload.AsSpan().SequenceEqual(original)) changedAndAccepted++;
                Assert.True(General(payload) == (sequence, id), "read differently: " + Encoding.UTF8.GetString(payload));
            }
            // The damage reached payloads the reader still takes (a digit of the sequence number or the id, white space):
            // the comparison above ran on more than the original.
            Assert.True(changedAndAccepted > 100, $"{changedAndAccepted} changed payloads accepted of {accepted}");
        }
    }
}
