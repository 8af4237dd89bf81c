using System;
using System.Text;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    public class PayloadJsonTests
    {
        [Fact]
        public void AcknowledgeContentIsWrittenInWireOrder()
        {
            var ack = ClientMessages.Acknowledge(MessageTypes.OutputStreamData, Guid.Parse("5e31b3c6-49e2-43a6-8e57-2b3768189632"), 12,
                Guid.NewGuid(), 1);
            Assert.Equal(MessageTypes.Acknowledge, ack.MessageType);
            Assert.Equal(0, ack.SequenceNumber);
            Assert.Equal(MessageFlags.Ack, ack.Flags);
            Assert.Equal(PayloadType.None, ack.PayloadType);
            Assert.Equal(
                "{\"AcknowledgedMessageType\":\"output_stream_data\",\"AcknowledgedMessageId\":\"5e31b3c6-49e2-43a6-8e57-2b3768189632\","
                + "\"AcknowledgedMessageSequenceNumber\":12,\"IsSequentialMessage\":true}",
                Encoding.UTF8.GetString(ack.Payload));
        }

        [Theory]
        [InlineData("{\"AgentVersion\":\"3.3.2299.0\",\"RequestedClientActions\":null}")]
        [InlineData("{\"AgentVersion\":\"3.3.2299.0\",\"RequestedClientActions\":[null]}")]
        [InlineData("{\"AgentVersion\":\"3.3.2299.0\"}")]
        public void HandshakeRequestWithoutActions_IsAnsweredWithNone(string text)
        {
            // The official client ranges over a nil slice (no actions, no error); so does Handshake.Read.
            var message = AgentMessage.Create(MessageTypes.OutputStreamData, 0, MessageFlags.Syn, PayloadType.HandshakeRequest, Encoding.UTF8.GetBytes(text));
            var log = new System.Collections.Generic.List<string>();
            var answer = Handshake.Read(message, log.Add);
            Assert.NotNull(answer);
            Assert.Empty(answer!.Actions);
            Assert.Null(answer.PortType);
            Assert.Equal("3.3.2299.0", answer.Request.AgentVersion);
            var response = ClientMessages.HandshakeResponse(0, "1.2.707.0", answer.Actions);
            Assert.Equal("{\"ClientVersion\":\"1.2.707.0\",\"ProcessedClientActions\":[],\"Errors\":null}", Encoding.UTF8.GetString(response.Payload));
        }

        [Theory]
        [InlineData("{\"HandshakeTimeToComplete\":1000,\"CustomerMessage\":\"This session is encrypted using AWS KMS.\"}", "This session is encrypted using AWS KMS.")]
        [InlineData("{\"HandshakeTimeToComplete\":1000,\"CustomerMessage\":\"  \\r\\n\"}", null)]
        [InlineData("{\"HandshakeTimeToComplete\":1000}", null)]
        [InlineData("{\"HandshakeTimeToComplete\":1000,\"CustomerMessage\":\"use password=hunter2 now\"}", "use password=**** now")]
        public void HandshakeCompleteCustomerMessage_IsTrimmed_AndSecretShapesMasked(string text, string? expected)
        {
            var message = AgentMessage.Create(MessageTypes.OutputStreamData, 1, MessageFlags.Data, PayloadType.HandshakeComplete, Encoding.UTF8.GetBytes(text));
            Assert.Equal(expected, Handshake.ReadCustomerMessage(message, _ => { }));
        }

        [Fact]
        public void SizeMessage()
        {
            var size = ClientMessages.Size(4, 120, 40, Guid.NewGuid(), 1);
            Assert.Equal(MessageTypes.InputStreamData, size.MessageType);
            Assert.Equal(PayloadType.Size, size.PayloadType);
            Assert.Equal(4, size.SequenceNumber);
            Assert.Equal("{\"cols\":120,\"rows\":40}", Encoding.UTF8.GetString(size.Payload));
        }

        [Theory]
        [InlineData((uint)PayloadTypeFlag.DisconnectToPort, new byte[] { 0, 0, 0, 1 })]
        [InlineData((uint)PayloadTypeFlag.TerminateSession, new byte[] { 0, 0, 0, 2 })]
        [InlineData((uint)PayloadTypeFlag.ConnectToPortError, new byte[] { 0, 0, 0, 3 })]
        public void FlagMessages(uint flag, byte[] payload)
        {
            var message = ClientMessages.Flag(9, (PayloadTypeFlag)flag);
            Assert.Equal(PayloadType.Flag, message.PayloadType);
            Assert.Equal(MessageFlags.Data, message.Flags);
            Assert.Equal(payload, message.Payload);
        }

        [Fact]
        public void HandshakeResponseWithFailureAndErrors()
        {
            var action = new ProcessedClientAction
            {
                ActionType = HandshakeActionTypes.KmsEncryption,
                ActionStatus = ActionStatus.Unsupported,
                Error = "KMS is not supported",
            };
            var message = ClientMessages.HandshakeResponse(0, "1.2.0.0", new[] { action }, new[] { "e1" }, Guid.NewGuid(), 1);
            Assert.Equal(
                "{\"ClientVersion\":\"1.2.0.0\",\"ProcessedClientActions\":[{\"ActionType\":\"KMSEncryption\",\"ActionStatus\":3,"
                + "\"ActionResult\":null,\"Error\":\"KMS is not supported\"}],\"Errors\":[\"e1\"]}",
                Encoding.UTF8.GetString(message.Payload));

            var none = ClientMessages.HandshakeResponse(0, "1.2.0.0", new[] { ClientMessages.SessionTypeAccepted() }, Array.Empty<string>());
            Assert.EndsWith(",\"Errors\":null}", Encoding.UTF8.GetString(none.Payload));
        }

        [Fact]
        public void HandshakeResponseParsesBack()
        {
            var text = "{\"ClientVersion\":\"1.2.0.0\",\"ProcessedClientActions\":[{\"ActionType\":\"SessionType\",\"ActionStatus\":1,"
                + "\"ActionResult\":null,\"Error\":\"\"}],\"Errors\":null}";
            var payload = SsmJson.Deserialize<HandshakeResponsePayload>(Encoding.UTF8.GetBytes(text));
            var action = Assert.Single(payload.ProcessedClientActions);
            Assert.Equal(ActionStatus.Success, action.ActionStatus);
            Assert.Null(action.ActionResult);
            Assert.Null(payload.Errors);
            Assert.Equal(text, SsmJson.Serialize(payload));
        }

        [Fact]
        public void ShellHandshakeRequestWithoutPortProperties()
        {
            var text = "{\"AgentVersion\":\"3.3.0.0\",\"RequestedClientActions\":[{\"ActionType\":\"SessionType\","
                + "\"ActionParameters\":{\"SessionType\":\"Standard_Stream\",\"Properties\":null}},"
                + "{\"ActionType\":\"KMSEncryption\",\"ActionParameters\":{\"KMSKeyId\":\"arn:aws:kms:eu-west-1:1:key/x\"}}]}";
            var request = SsmJson.Deserialize<HandshakeRequestPayload>(Encoding.UTF8.GetBytes(text));
            Assert.Equal(2, request.RequestedClientActions.Count);
            var sessionType = request.RequestedClientActions[0].GetSessionTypeRequest();
            Assert.Equal("Standard_Stream", sessionType.SessionType);
            Assert.Null(sessionType.GetStringProperty("portNumber"));
            Assert.Equal("arn:aws:kms:eu-west-1:1:key/x",
                request.RequestedClientActions[1].ActionParameters.GetProperty("KMSKeyId").GetString());
        }

        [Theory]
        [InlineData("")]
        [InlineData("not json")]
        [InlineData("null")]
        [InlineData("{\"AcknowledgedMessageSequenceNumber\":\"three\"}")]
        [InlineData("[1,2]")]
        public void BadPayloadJsonThrowsTheProtocolException(string text)
        {
            Assert.Throws<SsmProtocolException>(() => SsmJson.Deserialize<AcknowledgeContent>(Encoding.UTF8.GetBytes(text)));
        }

        [Fact]
        public void ActionParametersThatAreNotAnObjectAreRejected()
        {
            var text = "{\"AgentVersion\":\"1\",\"RequestedClientActions\":[{\"ActionType\":\"SessionType\",\"ActionParameters\":\"Port\"}]}";
            var request = SsmJson.Deserialize<HandshakeRequestPayload>(Encoding.UTF8.GetBytes(text));
            Assert.Throws<SsmProtocolException>(() => request.RequestedClientActions[0].GetSessionTypeRequest());
        }
    }
}
