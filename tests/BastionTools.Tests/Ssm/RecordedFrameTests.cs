using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Text.Json;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>Golden vectors: every frame the official client exchanged in the two recordings.</summary>
    public class RecordedFrameTests
    {
        public static IEnumerable<object[]> AllBinaryFrames() => Recording.BinaryFrameKeys(clientOnly: false);

        public static IEnumerable<object[]> ClientFrames() => Recording.BinaryFrameKeys(clientOnly: true);

        public static IEnumerable<object[]> AcknowledgeFrames() =>
            Recording.Files.SelectMany(f => Recording.Binary(f).Where(x => x.Type == MessageTypes.Acknowledge).Select(x => new object[] { f, x.Line }));

        [Fact]
        public void RecordingsHaveTheExpectedShape()
        {
            foreach (var file in Recording.Files)
            {
                var frames = Recording.Load(file);
                Assert.True(frames[0].IsText, "the first line is the OpenDataChannel text frame");
                Assert.All(frames.Skip(1), f => Assert.False(f.IsText));
                // Every client frame fits in the 400 recorded bytes, so client frames can be compared whole.
                Assert.All(frames.Skip(1).Where(f => f.FromClient), f => Assert.True(f.IsComplete, f.ToString()));
            }
            Assert.Equal(119, Recording.Binary(Recording.Mux).Count());
            Assert.Equal(42, Recording.Binary(Recording.Basic).Count());
        }

        [Theory]
        [MemberData(nameof(AllBinaryFrames))]
        public void EveryRecordedFrameDecodesToTheRecordedFields(string file, int line)
        {
            var rec = Recording.Get(file, line);
            // Frames longer than the 400 recorded bytes are checked on a copy padded to their true length:
            // the header is then exactly as sent, only the payload tail (and so the digest) is unknown.
            var message = AgentMessageCodec.Decode(rec.IsComplete ? rec.Raw : rec.PaddedToFullLength());

            Assert.Equal((uint)rec.HeaderLength, message.HeaderLength);
            Assert.Equal(rec.Type, message.MessageType);
            Assert.Equal(AgentMessage.CurrentSchemaVersion, message.SchemaVersion);
            Assert.Equal(rec.Seq, message.SequenceNumber);
            Assert.Equal(rec.Flags, message.Flags);
            Assert.Equal(Guid.Parse(rec.Id), message.MessageId);
            Assert.Equal((PayloadType)rec.PayloadType, message.PayloadType);
            Assert.Equal(rec.Len, message.Payload.Length);
            Assert.True(message.CreatedDate > 1_700_000_000_000UL, "CreatedDate is epoch milliseconds");

            if (rec.IsComplete)
            {
                Assert.Equal(rec.DigestOk, message.IsDigestValid);
                if (rec.Payload != null) Assert.Equal(rec.Payload, Encoding.UTF8.GetString(message.Payload));
            }
            else
            {
                Assert.Equal(rec.RecordedPayload, message.Payload.Take(rec.RecordedPayload.Length).ToArray());
                Assert.False(message.IsDigestValid, "a zero-padded payload cannot match the recorded digest");
            }
        }

        [Theory]
        [MemberData(nameof(AllBinaryFrames))]
        public void EveryRecordedFrameReencodesToItsBytes(string file, int line)
        {
            var rec = Recording.Get(file, line);
            var bytes = rec.IsComplete ? rec.Raw : rec.PaddedToFullLength();
            var reencoded = AgentMessageCodec.Encode(AgentMessageCodec.Decode(bytes));
            Assert.Equal(bytes, reencoded);
        }

        /// <summary>
        /// The builders reproduce every client frame byte for byte, given only the recorded MessageId and CreatedDate
        /// (the rest — header fields, digest, payload JSON — comes from our code).
        /// </summary>
        [Theory]
        [MemberData(nameof(ClientFrames))]
        public void BuildersReproduceEveryClientFrame(string file, int line)
        {
            var rec = Recording.Get(file, line);
            var decoded = AgentMessageCodec.Decode(rec.Raw);
            var built = Rebuild(rec, decoded);
            Assert.Equal(rec.Raw, AgentMessageCodec.Encode(built));
            if (decoded.MessageType == MessageTypes.InputStreamData)
            {
                // The data channel's direct encoder gives the same bytes, from the middle of a larger buffer too.
                var buffer = new byte[decoded.Payload.Length + 10];
                Buffer.BlockCopy(decoded.Payload, 0, buffer, 7, decoded.Payload.Length);
                Assert.Equal(rec.Raw, AgentMessageCodec.EncodeInputStreamData(decoded.SequenceNumber, decoded.PayloadType, buffer, 7,
                    decoded.Payload.Length, decoded.MessageId, decoded.CreatedDate));
            }
        }

        /// <summary>The agent's acknowledgements have the very same format as the client's.</summary>
        [Theory]
        [MemberData(nameof(AcknowledgeFrames))]
        public void AcknowledgeBuilderMatchesEveryRecordedAcknowledge(string file, int line)
        {
            var rec = Recording.Get(file, line);
            var decoded = AgentMessageCodec.Decode(rec.Raw);
            Assert.Equal(rec.Raw, AgentMessageCodec.Encode(Rebuild(rec, decoded)));
            // The data channel's direct encoder gives the same bytes.
            var content = SsmJson.Deserialize<AcknowledgeContent>(decoded.Payload);
            Assert.Equal(rec.Raw, AgentMessageCodec.EncodeAcknowledgement(content.AcknowledgedMessageType!, Guid.Parse(content.AcknowledgedMessageId!),
                content.AcknowledgedMessageSequenceNumber, decoded.MessageId, decoded.CreatedDate));
        }

        private static AgentMessage Rebuild(RecordedFrame rec, AgentMessage decoded)
        {
            Guid id = decoded.MessageId;
            ulong created = decoded.CreatedDate;
            switch (rec.Type)
            {
                case MessageTypes.Acknowledge:
                {
                    // Acknowledge the message as decoded from the recording itself, found by its id.
                    var content = SsmJson.Deserialize<AcknowledgeContent>(decoded.Payload);
                    var acked = Recording.Binary(rec.File).Single(f => f.Id == content.AcknowledgedMessageId);
                    var ackedMessage = AgentMessageCodec.Decode(acked.IsComplete ? acked.Raw : acked.PaddedToFullLength());
                    return ClientMessages.Acknowledge(ackedMessage, id, created);
                }
                case MessageTypes.InputStreamData when decoded.PayloadType == PayloadType.HandshakeResponse:
                    return ClientMessages.HandshakeResponse(decoded.SequenceNumber, "1.2.0.0",
                        new[] { ClientMessages.SessionTypeAccepted() }, errors: null, id, created);
                case MessageTypes.InputStreamData when decoded.PayloadType == PayloadType.Flag:
                    Assert.Equal(new byte[] { 0, 0, 0, 1 }, decoded.Payload);
                    return ClientMessages.Flag(decoded.SequenceNumber, PayloadTypeFlag.DisconnectToPort, id, created);
                case MessageTypes.InputStreamData when decoded.PayloadType == PayloadType.Output:
                    return ClientMessages.InputStreamData(decoded.SequenceNumber, PayloadType.Output, rec.RecordedPayload, id, created);
                default:
                    throw new InvalidOperationException("No builder for " + rec);
            }
        }

        [Theory]
        [InlineData(Recording.Mux)]
        [InlineData(Recording.Basic)]
        public void OpenDataChannelFrameIsReproducedExactly(string file)
        {
            var rec = Recording.Load(file)[0];
            Assert.Equal("OpenDataChannel(text)", rec.Type);
            Assert.Equal(rec.Len, Encoding.UTF8.GetByteCount(rec.Payload!));

            using var doc = JsonDocument.Parse(rec.Payload!);
            var names = doc.RootElement.EnumerateObject().Select(p => p.Name).ToArray();
            Assert.Equal(new[] { "MessageSchemaVersion", "RequestId", "TokenValue", "ClientId", "ClientVersion" }, names);
            Assert.All(doc.RootElement.EnumerateObject(), p => Assert.Equal(JsonValueKind.String, p.Value.ValueKind));
            Assert.Equal("1.0", doc.RootElement.GetProperty("MessageSchemaVersion").GetString());

            var r = doc.RootElement;
            var text = ClientMessages.OpenDataChannel(
                r.GetProperty("TokenValue").GetString()!,
                r.GetProperty("ClientVersion").GetString()!,
                Guid.Parse(r.GetProperty("RequestId").GetString()!),
                Guid.Parse(r.GetProperty("ClientId").GetString()!));
            Assert.Equal(rec.Payload, text);
        }

        [Fact]
        public void TokenCharactersAreNotEscaped()
        {
            // Tokens are base64-like; the default System.Text.Json encoder would write '+' as \u002B.
            var text = ClientMessages.OpenDataChannel("a+b/c=", "1.2.0.0", Guid.Empty, Guid.Empty);
            Assert.Contains("\"TokenValue\":\"a+b/c=\"", text);
        }

        [Theory]
        [InlineData(Recording.Mux, "3.3.2299.0", "127.0.0.1", "45432")]
        [InlineData(Recording.Basic, "3.0.190.0", null, "45433")]
        public void HandshakeRequestParses(string file, string agentVersion, string? host, string localPort)
        {
            var rec = Recording.Binary(file).Single(f => f.PayloadType == (int)PayloadType.HandshakeRequest);
            var message = AgentMessageCodec.Decode(rec.Raw);
            Assert.Equal(MessageFlags.Syn, message.Flags);
            Assert.Equal(0, message.SequenceNumber);

            var request = SsmJson.Deserialize<HandshakeRequestPayload>(message.Payload);
            Assert.Equal(agentVersion, request.AgentVersion);
            var action = Assert.Single(request.RequestedClientActions);
            Assert.Equal(HandshakeActionTypes.SessionType, action.ActionType);
            var sessionType = action.GetSessionTypeRequest();
            Assert.Equal("Port", sessionType.SessionType);
            Assert.Equal("55432", sessionType.GetStringProperty("portNumber"));
            Assert.Equal(localPort, sessionType.GetStringProperty("localPortNumber"));
            Assert.Equal("LocalPortForwarding", sessionType.GetStringProperty("type"));
            Assert.Equal(host, sessionType.GetStringProperty("host"));
        }

        [Theory]
        [InlineData(Recording.Mux)]
        [InlineData(Recording.Basic)]
        public void HandshakeCompleteParses(string file)
        {
            var rec = Recording.Binary(file).Single(f => f.PayloadType == (int)PayloadType.HandshakeComplete);
            var complete = SsmJson.Deserialize<HandshakeCompletePayload>(AgentMessageCodec.Decode(rec.Raw).Payload);
            Assert.Equal(1_000_000L, complete.HandshakeTimeToComplete);
            Assert.Equal("", complete.CustomerMessage);
        }

        [Fact]
        public void RecordedMessageIdsAreHalfSwappedUuids()
        {
            foreach (var rec in Recording.Files.SelectMany(Recording.Binary))
            {
                var rfc = Convert.FromHexString(rec.Id.Replace("-", ""));
                var wire = rec.Raw.AsSpan(AgentMessageCodec.MessageIdOffset, 16).ToArray();
                Assert.Equal(rfc.Skip(8).Concat(rfc.Take(8)).ToArray(), wire);
                Assert.Equal(Guid.Parse(rec.Id), MessageIdCodec.Read(rec.Raw, AgentMessageCodec.MessageIdOffset));
            }
        }

        [Fact]
        public void EachDirectionNumbersItsStreamMessagesFromZero()
        {
            foreach (var file in Recording.Files)
            {
                foreach (var dir in new[] { "client->agent", "agent->client" })
                {
                    var seqs = Recording.Binary(file)
                        .Where(f => f.Dir == dir && f.Type != MessageTypes.Acknowledge)
                        .Select(f => f.Seq).OrderBy(s => s).ToArray();
                    Assert.Equal(Enumerable.Range(0, seqs.Length).Select(i => (long)i), seqs);
                }
            }
        }
    }
}
