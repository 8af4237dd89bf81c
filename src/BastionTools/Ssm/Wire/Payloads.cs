using System.Collections.Generic;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace BastionTools.Ssm
{
    // JSON payload models. Property order is the wire order (JsonPropertyOrder makes it explicit rather than relying
    // on reflection order); names are the wire names. See SsmJson for the formatting rules.

    /// <summary>The first (text) WebSocket frame: authenticates the connection with the StartSession token.</summary>
    internal sealed class OpenDataChannelInput
    {
        public const string CurrentSchemaVersion = "1.0";

        [JsonPropertyName("MessageSchemaVersion"), JsonPropertyOrder(0)]
        public string MessageSchemaVersion { get; set; } = CurrentSchemaVersion;

        [JsonPropertyName("RequestId"), JsonPropertyOrder(1)]
        public string RequestId { get; set; } = "";

        [JsonPropertyName("TokenValue"), JsonPropertyOrder(2)]
        public string TokenValue { get; set; } = "";

        [JsonPropertyName("ClientId"), JsonPropertyOrder(3)]
        public string ClientId { get; set; } = "";

        [JsonPropertyName("ClientVersion"), JsonPropertyOrder(4)]
        public string ClientVersion { get; set; } = "";
    }

    /// <summary>Payload of an <c>acknowledge</c> message.</summary>
    internal sealed class AcknowledgeContent
    {
        [JsonPropertyName("AcknowledgedMessageType"), JsonPropertyOrder(0)]
        public string AcknowledgedMessageType { get; set; } = "";

        /// <summary>The acknowledged MessageId in its lower-case hyphenated text form.</summary>
        [JsonPropertyName("AcknowledgedMessageId"), JsonPropertyOrder(1)]
        public string AcknowledgedMessageId { get; set; } = "";

        [JsonPropertyName("AcknowledgedMessageSequenceNumber"), JsonPropertyOrder(2)]
        public long AcknowledgedMessageSequenceNumber { get; set; }

        [JsonPropertyName("IsSequentialMessage"), JsonPropertyOrder(3)]
        public bool IsSequentialMessage { get; set; }
    }

    /// <summary>Payload of a <c>channel_closed</c> message; <see cref="Output"/> is the text to show the user.</summary>
    internal sealed class ChannelClosedPayload
    {
        [JsonPropertyName("MessageId"), JsonPropertyOrder(0)]
        public string MessageId { get; set; } = "";

        /// <summary>Epoch milliseconds as text.</summary>
        [JsonPropertyName("CreatedDate"), JsonPropertyOrder(1)]
        public string CreatedDate { get; set; } = "";

        [JsonPropertyName("DestinationId"), JsonPropertyOrder(2)]
        public string DestinationId { get; set; } = "";

        [JsonPropertyName("SessionId"), JsonPropertyOrder(3)]
        public string SessionId { get; set; } = "";

        [JsonPropertyName("MessageType"), JsonPropertyOrder(4)]
        public string MessageType { get; set; } = "";

        [JsonPropertyName("SchemaVersion"), JsonPropertyOrder(5)]
        public int SchemaVersion { get; set; }

        [JsonPropertyName("Output"), JsonPropertyOrder(6)]
        public string Output { get; set; } = "";
    }

    /// <summary>Terminal size, PayloadType 3.</summary>
    internal sealed class SizeData
    {
        [JsonPropertyName("cols"), JsonPropertyOrder(0)]
        public uint Cols { get; set; }

        [JsonPropertyName("rows"), JsonPropertyOrder(1)]
        public uint Rows { get; set; }
    }

    /// <summary>ActionType values in handshake requests and responses.</summary>
    internal static class HandshakeActionTypes
    {
        public const string SessionType = "SessionType";
        public const string KmsEncryption = "KMSEncryption";
    }

    /// <summary>Outcome of one requested client action.</summary>
    internal enum ActionStatus
    {
        Success = 1,
        Failed = 2,
        Unsupported = 3,
    }

    /// <summary>Agent to client, PayloadType 5.</summary>
    internal sealed class HandshakeRequestPayload
    {
        [JsonPropertyName("AgentVersion"), JsonPropertyOrder(0)]
        public string AgentVersion { get; set; } = "";

        [JsonPropertyName("RequestedClientActions"), JsonPropertyOrder(1)]
        public List<RequestedClientAction> RequestedClientActions { get; set; } = new();
    }

    /// <summary>
    /// One action the agent asks for. <see cref="ActionParameters"/> depends on <see cref="ActionType"/>:
    /// for SessionType it is a <see cref="SessionTypeRequest"/> (see <see cref="GetSessionTypeRequest"/>),
    /// for KMSEncryption <c>{"KMSKeyId": …}</c>.
    /// </summary>
    internal sealed class RequestedClientAction
    {
        [JsonPropertyName("ActionType"), JsonPropertyOrder(0)]
        public string ActionType { get; set; } = "";

        [JsonPropertyName("ActionParameters"), JsonPropertyOrder(1)]
        public JsonElement ActionParameters { get; set; }

        /// <summary>The parameters of a SessionType action.</summary>
        /// <exception cref="SsmProtocolException">The parameters are not a SessionType request object.</exception>
        public SessionTypeRequest GetSessionTypeRequest()
        {
            if (ActionParameters.ValueKind != JsonValueKind.Object)
                throw new SsmProtocolException($"ActionParameters of a {ActionType} action is {ActionParameters.ValueKind}, not an object.");
            try
            {
                return ActionParameters.Deserialize<SessionTypeRequest>(SsmJson.Options)
                    ?? throw new SsmProtocolException("ActionParameters is null.");
            }
            catch (JsonException ex)
            {
                throw new SsmProtocolException($"ActionParameters is not a SessionType request: {ex.Message}", ex);
            }
        }
    }

    /// <summary>Parameters of a SessionType action: the session type ("Port", "Standard_Stream", "InteractiveCommands") and its properties.</summary>
    internal sealed class SessionTypeRequest
    {
        [JsonPropertyName("SessionType"), JsonPropertyOrder(0)]
        public string SessionType { get; set; } = "";

        /// <summary>
        /// Session properties as sent. For port sessions an object of strings: portNumber, localPortNumber, type
        /// ("LocalPortForwarding") and, for the remote-host document, host — in whatever order the agent chose
        /// (the recorded agent sends host last).
        /// </summary>
        [JsonPropertyName("Properties"), JsonPropertyOrder(1)]
        public JsonElement Properties { get; set; }

        /// <summary>A string property, or null when absent or not a string.</summary>
        public string? GetStringProperty(string name)
        {
            if (Properties.ValueKind != JsonValueKind.Object) return null;
            return Properties.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String
                ? value.GetString()
                : null;
        }
    }

    /// <summary>Client to agent, PayloadType 6.</summary>
    internal sealed class HandshakeResponsePayload
    {
        [JsonPropertyName("ClientVersion"), JsonPropertyOrder(0)]
        public string ClientVersion { get; set; } = "";

        [JsonPropertyName("ProcessedClientActions"), JsonPropertyOrder(1)]
        public List<ProcessedClientAction> ProcessedClientActions { get; set; } = new();

        /// <summary>Written as <c>null</c> when there are none, as the official client does.</summary>
        [JsonPropertyName("Errors"), JsonPropertyOrder(2)]
        public List<string>? Errors { get; set; }
    }

    /// <summary>The client's answer to one requested action.</summary>
    internal sealed class ProcessedClientAction
    {
        [JsonPropertyName("ActionType"), JsonPropertyOrder(0)]
        public string ActionType { get; set; } = "";

        [JsonPropertyName("ActionStatus"), JsonPropertyOrder(1)]
        public ActionStatus ActionStatus { get; set; }

        /// <summary>Action-specific result; <c>null</c> for SessionType.</summary>
        [JsonPropertyName("ActionResult"), JsonPropertyOrder(2)]
        public JsonElement? ActionResult { get; set; }

        /// <summary>Empty string on success.</summary>
        [JsonPropertyName("Error"), JsonPropertyOrder(3)]
        public string Error { get; set; } = "";
    }

    /// <summary>
    /// ActionParameters of a KMSEncryption action (agent session/contracts/model.go KMSEncryptionRequest): the key to
    /// ask for a data key, and (agents since 3.3.808.0) a random challenge, base64 text of 16 bytes, that joins the
    /// encryption context as aws:ssm:RandomChallenge when the client acknowledges it.
    /// </summary>
    internal sealed class KmsEncryptionRequest
    {
        [JsonPropertyName("KMSKeyId"), JsonPropertyOrder(0)]
        public string KmsKeyId { get; set; } = "";

        [JsonPropertyName("Challenge"), JsonPropertyOrder(1)]
        public string? Challenge { get; set; }
    }

    /// <summary>
    /// ActionResult of an accepted KMSEncryption action (KMSEncryptionResponse): the data key's ciphertext blob (Go
    /// []byte, so base64), the unused hash (null, as the official client leaves it), and whether the random challenge
    /// is in the encryption context.
    /// </summary>
    internal sealed class KmsEncryptionResponse
    {
        [JsonPropertyName("KMSCipherTextKey"), JsonPropertyOrder(0)]
        public byte[] KmsCipherTextKey { get; set; } = System.Array.Empty<byte>();

        [JsonPropertyName("KMSCipherTextHash"), JsonPropertyOrder(1)]
        public byte[]? KmsCipherTextHash { get; set; }

        [JsonPropertyName("ChallengeAcknowledgement"), JsonPropertyOrder(2)]
        public bool ChallengeAcknowledgement { get; set; }
    }

    /// <summary>
    /// EncChallengeRequest (8, agent to client) and EncChallengeResponse (9, client to agent): 64 random bytes the
    /// agent encrypted with its key; the client decrypts them and sends them back encrypted with its own (base64).
    /// </summary>
    internal sealed class EncryptionChallengePayload
    {
        [JsonPropertyName("Challenge"), JsonPropertyOrder(0)]
        public byte[] Challenge { get; set; } = System.Array.Empty<byte>();
    }

    /// <summary>Agent to client, PayloadType 7.</summary>
    internal sealed class HandshakeCompletePayload
    {
        /// <summary>Nanoseconds (a Go time.Duration).</summary>
        [JsonPropertyName("HandshakeTimeToComplete"), JsonPropertyOrder(0)]
        public long HandshakeTimeToComplete { get; set; }

        /// <summary>Text the client shows the user when not empty.</summary>
        [JsonPropertyName("CustomerMessage"), JsonPropertyOrder(1)]
        public string CustomerMessage { get; set; } = "";
    }
}
