using System;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>
    /// The client's half of the agent-driven handshake: read the HandshakeRequest, accept the SessionType action,
    /// decline what BastionTools does not do (KMS encryption), and send the HandshakeResponse.
    /// </summary>
    internal static class Handshake
    {
        public sealed class Answer
        {
            public Answer(HandshakeRequestPayload request, List<ProcessedClientAction> actions, string? portType)
            {
                Request = request;
                Actions = actions;
                PortType = portType;
            }

            public HandshakeRequestPayload Request { get; }
            public List<ProcessedClientAction> Actions { get; }

            /// <summary>The port session's "type" property (LocalPortForwarding), when there is one.</summary>
            public string? PortType { get; }
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
            // "RequestedClientActions":null reads as no action (the official client ranges over a nil slice the same way).
            foreach (var action in request.RequestedClientActions ?? new List<RequestedClientAction>())
            {
                if (action == null) continue;
                if (action.ActionType == HandshakeActionTypes.SessionType)
                {
                    portType = action.GetSessionTypeRequest().GetStringProperty("type");
                    actions.Add(ClientMessages.SessionTypeAccepted());
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
            return new Answer(request, actions, portType);
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

        public static Task RespondAsync(DataChannel channel, string clientVersion, Answer answer)
        {
            var response = ClientMessages.HandshakeResponse(0, clientVersion, answer.Actions);
            return channel.SendAsync(PayloadType.HandshakeResponse, response.Payload, CancellationToken.None);
        }
    }
}
