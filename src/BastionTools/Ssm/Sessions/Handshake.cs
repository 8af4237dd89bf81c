using System;
using System.Collections.Generic;
using System.Management.Automation;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;

namespace BastionTools.Ssm
{
    /// <summary>
    /// The client's half of the agent-driven handshake: read the HandshakeRequest, accept the SessionType action,
    /// set up KMS encryption when the agent asks for it (KMSEncryption), decline anything else, send the
    /// HandshakeResponse, and answer the agent's encryption challenge.
    /// <para>
    /// KMSEncryption (session-manager-plugin streaming.go ProcessKMSEncryptionHandshakeAction; agent datachannel.go
    /// finalizeKMSEncryption, crypto/blockcipher.go UpdateEncryptionKey): kms:GenerateDataKey of 64 bytes on the key the
    /// agent names, with the encryption context aws:ssm:SessionId and aws:ssm:TargetId, plus aws:ssm:RandomChallenge
    /// when the agent sent a challenge (then ChallengeAcknowledgement is true and the agent's kms:Decrypt uses the same
    /// context). The ciphertext blob goes back in the ActionResult; the plaintext never leaves this process and is
    /// cleared once the cipher holds it. When KMS refuses, the action is answered Failed with the error (the agent then
    /// cancels the session) and the session ends here with SessionEncryptionDenied / SessionEncryptionFailed.
    /// </para>
    /// </summary>
    internal static class Handshake
    {
        public const string SessionIdContextKey = "aws:ssm:SessionId";
        public const string TargetIdContextKey = "aws:ssm:TargetId";
        public const string ChallengeContextKey = "aws:ssm:RandomChallenge";

        public sealed class Answer
        {
            public Answer(HandshakeRequestPayload request, List<ProcessedClientAction> actions, string? portType, KmsEncryptionRequest? kms)
            {
                Request = request;
                Actions = actions;
                PortType = portType;
                Kms = kms;
            }

            public HandshakeRequestPayload Request { get; }
            public List<ProcessedClientAction> Actions { get; }

            /// <summary>The port session's "type" property (LocalPortForwarding), when there is one.</summary>
            public string? PortType { get; }

            /// <summary>The KMSEncryption action's parameters, when the agent asked for encryption.</summary>
            public KmsEncryptionRequest? Kms { get; }

            /// <summary>The session's cipher once KMS encryption was set up (owned by the data channel).</summary>
            public SessionCipher? Cipher { get; internal set; }
        }

        /// <summary>Reads a HandshakeRequest and decides the answer; null (logged) when it can't be read.</summary>
        public static Answer? Read(AgentMessage message, Action<string> log)
        {
            HandshakeRequestPayload request;
            try
            {
                request = SsmJson.Deserialize<HandshakeRequestPayload>(message.Payload);
            }
            catch (SsmProtocolException ex)
            {
                log("Unreadable handshake request: " + ex.Message);
                return null;
            }
            var actions = new List<ProcessedClientAction>();
            string? portType = null;
            KmsEncryptionRequest? kms = null;
            // "RequestedClientActions":null reads as no action (the official client ranges over a nil slice the same way).
            foreach (var action in request.RequestedClientActions ?? new List<RequestedClientAction>())
            {
                if (action == null) continue;
                if (action.ActionType == HandshakeActionTypes.SessionType)
                {
                    portType = action.GetSessionTypeRequest().GetStringProperty("type");
                    actions.Add(ClientMessages.SessionTypeAccepted());
                }
                else if (action.ActionType == HandshakeActionTypes.KmsEncryption && kms == null && TryReadKms(action, log, out var parameters))
                {
                    kms = parameters;
                    // Decided in RespondAsync, once KMS has answered.
                    actions.Add(new ProcessedClientAction { ActionType = HandshakeActionTypes.KmsEncryption, ActionStatus = ActionStatus.Failed });
                }
                else
                {
                    actions.Add(new ProcessedClientAction
                    {
                        ActionType = action.ActionType,
                        ActionStatus = ActionStatus.Unsupported,
                        Error = action.ActionType + " is not supported by BastionTools.",
                    });
                }
            }
            return new Answer(request, actions, portType, kms);
        }

        /// <summary>
        /// The CustomerMessage of a HandshakeComplete (PayloadType 7), trimmed, or null when empty or unreadable. The agent
        /// puts text for the user there (datachannel.go buildHandshakeCompletePayload: "This session is encrypted using AWS
        /// KMS.", or a request to update the client); the official client prints it (streaming.go handleHandshakeComplete).
        /// Known secret shapes are masked all the same: the text comes from the far side.
        /// </summary>
        public static string? ReadCustomerMessage(AgentMessage message, Action<string> log)
        {
            HandshakeCompletePayload complete;
            try
            {
                complete = SsmJson.Deserialize<HandshakeCompletePayload>(message.Payload);
            }
            catch (SsmProtocolException ex)
            {
                log("Unreadable handshake complete: " + ex.Message);
                return null;
            }
            var text = complete.CustomerMessage?.Trim();
            if (string.IsNullOrEmpty(text)) return null;
            text = Redactor.RedactPatterns(text!);
            log("Message from the agent: " + text);
            return text;
        }

        private static bool TryReadKms(RequestedClientAction action, Action<string> log, out KmsEncryptionRequest parameters)
        {
            parameters = new KmsEncryptionRequest();
            try
            {
                if (action.ActionParameters.ValueKind == JsonValueKind.Object)
                {
                    parameters = action.ActionParameters.Deserialize<KmsEncryptionRequest>(SsmJson.Options) ?? parameters;
                }
            }
            catch (JsonException ex)
            {
                log("Unreadable KMSEncryption parameters: " + ex.Message);
            }
            // An empty key id still gets an answer: RespondAsync fails the action with a reason the agent logs.
            return true;
        }

        /// <summary>
        /// Completes the answer (KMS encryption when asked: the data key, the cipher handed to the channel before the
        /// response goes out) and sends the HandshakeResponse. Returns the failure that must end the session, or null;
        /// <paramref name="failing"/> hears of it before the response goes out.
        /// </summary>
        public static async Task<Exception?> RespondAsync(DataChannel channel, string clientVersion, Answer answer, IAwsApi api, string targetId,
            Action<string> log, Action<Exception>? failing = null, CancellationToken cancellationToken = default)
        {
            Exception? failure = null;
            if (answer.Kms != null)
            {
                var action = answer.Actions.Find(a => a.ActionType == HandshakeActionTypes.KmsEncryption)!;
                try
                {
                    var response = await SetUpEncryptionAsync(channel, answer, api, targetId, log, cancellationToken).ConfigureAwait(false);
                    action.ActionStatus = ActionStatus.Success;
                    using var document = JsonDocument.Parse(SsmJson.SerializeToUtf8(response));
                    action.ActionResult = document.RootElement.Clone();
                    action.Error = "";
                }
                catch (BastionToolsException ex)
                {
                    failure = ex;
                    action.ActionStatus = ActionStatus.Failed;
                    action.ActionResult = null;
                    // What the official client answers (streaming.go handleHandshakeRequest); the agent logs it.
                    action.Error = "Failed to process action " + HandshakeActionTypes.KmsEncryption + ": " + ex.Message;
                    log("Session encryption could not be set up: " + ex.Message);
                }
            }
            var errors = new List<string>();
            foreach (var a in answer.Actions)
            {
                if (a.ActionStatus != ActionStatus.Success && !string.IsNullOrEmpty(a.Error)) errors.Add(a.Error);
            }
            // The session knows why it will end before the agent can react to the answer (it closes the channel at once).
            if (failure != null) failing?.Invoke(failure);
            // Errors lists what failed or is unsupported, as the official client does (null when nothing did).
            var message = ClientMessages.HandshakeResponse(0, clientVersion, answer.Actions, errors);
            await channel.SendWholeAsync(PayloadType.HandshakeResponse, message.Payload, CancellationToken.None).ConfigureAwait(false);
            return failure;
        }

        private static async Task<KmsEncryptionResponse> SetUpEncryptionAsync(DataChannel channel, Answer answer, IAwsApi api, string targetId,
            Action<string> log, CancellationToken cancellationToken)
        {
            var kms = answer.Kms!;
            if (string.IsNullOrEmpty(kms.KmsKeyId))
            {
                throw new BastionToolsException(ErrorIds.SessionEncryptionFailed, ErrorCategory.ProtocolError,
                    "The agent asked for KMS encryption without naming a key.", channel.SessionId);
            }
            var context = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                [SessionIdContextKey] = channel.SessionId,
                [TargetIdContextKey] = targetId,
            };
            var withChallenge = !string.IsNullOrEmpty(kms.Challenge);
            if (withChallenge) context[ChallengeContextKey] = kms.Challenge!;
            log($"The agent asks for KMS encryption with {kms.KmsKeyId}: kms:GenerateDataKey{(withChallenge ? " (with its random challenge in the encryption context)" : "")}.");
            using var dataKey = await api.GenerateDataKeyAsync(kms.KmsKeyId, context, SessionCipher.DataKeySize, cancellationToken).ConfigureAwait(false);
            var cipher = SessionCipher.FromDataKey(dataKey.Plaintext);
            try
            {
                channel.EnableEncryption(cipher);
            }
            catch
            {
                cipher.Dispose();
                throw;
            }
            answer.Cipher = cipher;
            return new KmsEncryptionResponse
            {
                KmsCipherTextKey = dataKey.CiphertextBlob,
                KmsCipherTextHash = null,
                ChallengeAcknowledgement = withChallenge,
            };
        }

        /// <summary>
        /// Answers EncChallengeRequest (8) with EncChallengeResponse (9): the challenge decrypted with the agent's key
        /// and encrypted again with the client's (streaming.go handleEncryptionChallengeRequest). Returns the failure
        /// that must end the session (the challenge did not decrypt: the agent holds another key), or null.
        /// </summary>
        public static async Task<Exception?> AnswerChallengeAsync(DataChannel channel, SessionCipher? cipher, AgentMessage message, Action<string> log)
        {
            if (cipher == null)
            {
                log("The agent sent an encryption challenge for a session without encryption: ignored.");
                return null;
            }
            EncryptionChallengePayload request;
            try
            {
                request = SsmJson.Deserialize<EncryptionChallengePayload>(message.Payload);
            }
            catch (SsmProtocolException ex)
            {
                log("Unreadable encryption challenge: " + ex.Message);
                return null;
            }
            byte[] plain;
            try
            {
                plain = cipher.Decrypt(request.Challenge);
            }
            catch (Exception ex) when (ex is SessionDecryptionException || ex is ObjectDisposedException)
            {
                return new BastionToolsException(ErrorIds.SessionDecryptionFailed, ErrorCategory.SecurityError,
                    $"The agent's encryption challenge for session {channel.SessionId} did not decrypt with the session's data key: " + ex.Message,
                    channel.SessionId, "Start a new session; if it happens again, report it.");
            }
            var response = new EncryptionChallengePayload { Challenge = cipher.Encrypt(plain) };
            Array.Clear(plain, 0, plain.Length);
            await channel.SendWholeAsync(PayloadType.EncChallengeResponse, SsmJson.SerializeToUtf8(response), CancellationToken.None).ConfigureAwait(false);
            log("Encryption challenge answered.");
            return null;
        }
    }
}
