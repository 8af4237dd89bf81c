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
            foreach (var action in request.RequestedClientActions)
            {
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

        public static Task RespondAsync(DataChannel channel, string clientVersion, Answer answer)
        {
            var response = ClientMessages.HandshakeResponse(0, clientVersion, answer.Actions);
            return channel.SendAsync(PayloadType.HandshakeResponse, response.Payload, CancellationToken.None);
        }
    }
}
