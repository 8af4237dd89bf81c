using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Builds the messages a client sends, field for field as the official session-manager-plugin does
    /// (checked against its recorded frames). Each helper takes an optional MessageId and CreatedDate (epoch ms)
    /// so tests can reproduce recorded bytes; by default a new UUID and the current time are used.
    /// </summary>
    internal static class ClientMessages
    {
        /// <summary>
        /// The acknowledgement of a received stream message: type acknowledge, SequenceNumber 0, Flags 3,
        /// PayloadType 0, payload <see cref="AcknowledgeContent"/> naming the received message's type, id and sequence number.
        /// </summary>
        public static AgentMessage Acknowledge(AgentMessage received, Guid? messageId = null, ulong? createdDate = null)
        {
            if (received is null) throw new ArgumentNullException(nameof(received));
            return Acknowledge(received.MessageType, received.MessageId, received.SequenceNumber, messageId, createdDate);
        }

        /// <inheritdoc cref="Acknowledge(AgentMessage, Guid?, ulong?)"/>
        public static AgentMessage Acknowledge(string acknowledgedMessageType, Guid acknowledgedMessageId, long acknowledgedSequenceNumber,
            Guid? messageId = null, ulong? createdDate = null)
        {
            // Every received message is acknowledged: the JSON is written directly (the same bytes SsmJson writes for
            // AcknowledgeContent, checked against the recorded frames) rather than through the serializer.
            byte[] payload;
            if (IsPlainAscii(acknowledgedMessageType))
            {
                payload = Encoding.ASCII.GetBytes(
                    "{\"AcknowledgedMessageType\":\"" + acknowledgedMessageType +
                    "\",\"AcknowledgedMessageId\":\"" + acknowledgedMessageId.ToString("D") +
                    "\",\"AcknowledgedMessageSequenceNumber\":" + acknowledgedSequenceNumber.ToString(CultureInfo.InvariantCulture) +
                    ",\"IsSequentialMessage\":true}");
            }
            else
            {
                payload = SsmJson.SerializeToUtf8(new AcknowledgeContent
                {
                    AcknowledgedMessageType = acknowledgedMessageType,
                    AcknowledgedMessageId = acknowledgedMessageId.ToString("D"),
                    AcknowledgedMessageSequenceNumber = acknowledgedSequenceNumber,
                    IsSequentialMessage = true,
                });
            }
            return AgentMessage.Create(MessageTypes.Acknowledge, 0, MessageFlags.Ack, PayloadType.None, payload, messageId, createdDate);
        }

        internal static bool IsPlainAscii(string s)
        {
            foreach (var c in s)
            {
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
            }
            return true;
        }

        /// <summary>A stream message from the client: input_stream_data, Flags 0, the given sequence number and payload type.</summary>
        public static AgentMessage InputStreamData(long sequenceNumber, PayloadType payloadType, byte[] payload,
            Guid? messageId = null, ulong? createdDate = null)
        {
            if (sequenceNumber < 0) throw new ArgumentOutOfRangeException(nameof(sequenceNumber));
            return AgentMessage.Create(MessageTypes.InputStreamData, sequenceNumber, MessageFlags.Data, payloadType, payload,
                messageId, createdDate);
        }

        /// <summary>A Flag message (PayloadType 10): the flag as a big-endian uint32.</summary>
        public static AgentMessage Flag(long sequenceNumber, PayloadTypeFlag flag, Guid? messageId = null, ulong? createdDate = null)
        {
            var payload = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)flag);
            return InputStreamData(sequenceNumber, PayloadType.Flag, payload, messageId, createdDate);
        }

        /// <summary>A terminal size message (PayloadType 3) with <c>{"cols":…,"rows":…}</c>.</summary>
        public static AgentMessage Size(long sequenceNumber, uint cols, uint rows, Guid? messageId = null, ulong? createdDate = null) =>
            InputStreamData(sequenceNumber, PayloadType.Size, SsmJson.SerializeToUtf8(new SizeData { Cols = cols, Rows = rows }),
                messageId, createdDate);

        /// <summary>The handshake response (PayloadType 6). <paramref name="errors"/> null or empty is written as <c>null</c>.</summary>
        public static AgentMessage HandshakeResponse(long sequenceNumber, string clientVersion, IEnumerable<ProcessedClientAction> actions,
            IEnumerable<string>? errors = null, Guid? messageId = null, ulong? createdDate = null)
        {
            if (clientVersion is null) throw new ArgumentNullException(nameof(clientVersion));
            if (actions is null) throw new ArgumentNullException(nameof(actions));
            var errorList = errors is null ? null : new List<string>(errors);
            var payload = new HandshakeResponsePayload
            {
                ClientVersion = clientVersion,
                ProcessedClientActions = new List<ProcessedClientAction>(actions),
                Errors = errorList is { Count: > 0 } ? errorList : null,
            };
            return InputStreamData(sequenceNumber, PayloadType.HandshakeResponse, SsmJson.SerializeToUtf8(payload), messageId, createdDate);
        }

        /// <summary>A successful SessionType action, as answered to a port or shell session request.</summary>
        public static ProcessedClientAction SessionTypeAccepted() => new()
        {
            ActionType = HandshakeActionTypes.SessionType,
            ActionStatus = ActionStatus.Success,
            ActionResult = null,
            Error = "",
        };

        /// <summary>The text of the first WebSocket frame.</summary>
        public static string OpenDataChannel(string tokenValue, string clientVersion, Guid requestId, Guid clientId)
        {
            if (tokenValue is null) throw new ArgumentNullException(nameof(tokenValue));
            if (clientVersion is null) throw new ArgumentNullException(nameof(clientVersion));
            return SsmJson.Serialize(new OpenDataChannelInput
            {
                RequestId = requestId.ToString("D"),
                TokenValue = tokenValue,
                ClientId = clientId.ToString("D"),
                ClientVersion = clientVersion,
            });
        }
    }
}
