using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Text.Json;
using System.Threading.Tasks;
using Amazon.KeyManagementService;
using Amazon.KeyManagementService.Model;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxAgentTests;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// The agent double's session encryption, driven by a raw client that does by hand what the session-manager-plugin
    /// does (KMS with the SDK, AES-GCM with the session cipher): when it asks, what it sends, what it accepts.
    /// </summary>
    public sealed class SandboxAgentKmsTests
    {
        private static byte[] Bytes(string s) => Encoding.UTF8.GetBytes(s);

        private static AmazonKeyManagementServiceClient Kms(SandboxHost host) => new(DefaultCredentials(host),
            new AmazonKeyManagementServiceConfig { ServiceURL = host.KmsEndpoint.ToString(), AuthenticationRegion = host.World.Region, MaxErrorRetry = 0 });

        private static JsonElement Action(HandshakeRequestPayload request, string type) =>
            request.RequestedClientActions.Single(a => a.ActionType == type).ActionParameters;

        [Fact(Timeout = TestTimeoutMs)]
        public async Task OnlyShellAndCommandSessionsAskForKms_PortSessionsNever()
        {
            await using var host = Start();
            host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;

            var port = await StartAsync(host, "AWS-StartPortForwardingSession", new Dictionary<string, List<string>> { ["portNumber"] = new() { "22" } });
            await using (var client = new AgentTestClient())
            {
                await client.ConnectAsync(port.StreamUrl, port.TokenValue);
                var request = SsmJson.Deserialize<HandshakeRequestPayload>((await client.WaitForDeliveredAsync(PayloadType.HandshakeRequest, "port handshake")).Payload);
                Assert.Equal(new[] { HandshakeActionTypes.SessionType }, request.RequestedClientActions.Select(a => a.ActionType));
            }

            var shell = await StartAsync(host, null);
            await using (var client = new AgentTestClient())
            {
                await client.ConnectAsync(shell.StreamUrl, shell.TokenValue);
                var request = SsmJson.Deserialize<HandshakeRequestPayload>((await client.WaitForDeliveredAsync(PayloadType.HandshakeRequest, "shell handshake")).Payload);
                Assert.Equal(new[] { HandshakeActionTypes.SessionType, HandshakeActionTypes.KmsEncryption }, request.RequestedClientActions.Select(a => a.ActionType));
                var sessionType = Action(request, HandshakeActionTypes.SessionType);
                Assert.Equal("Standard_Stream", sessionType.GetProperty("SessionType").GetString());
                Assert.Equal(JsonValueKind.Null, sessionType.GetProperty("Properties").ValueKind);
                var kms = Action(request, HandshakeActionTypes.KmsEncryption);
                Assert.Equal(SandboxKms.DefaultAlias, kms.GetProperty("KMSKeyId").GetString());
                Assert.Equal(16, Convert.FromBase64String(kms.GetProperty("Challenge").GetString()!).Length);
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task TheOfficialClientsWay_WithoutTheChallenge_Works_AndUndecryptableInputIsNotAcknowledged()
        {
            await using var host = Start();
            host.Agent.Options.ShellInitialOutputDelay = TimeSpan.FromMilliseconds(100);
            host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;
            var session = await StartAsync(host, null);
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.WaitForDeliveredAsync(PayloadType.HandshakeRequest, "HandshakeRequest");

            // streaming.go ProcessKMSEncryptionHandshakeAction: no challenge in the context, no acknowledgement.
            using var kms = Kms(host);
            var key = await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest
            {
                KeyId = SandboxKms.DefaultAlias,
                NumberOfBytes = 64,
                EncryptionContext = new Dictionary<string, string> { ["aws:ssm:SessionId"] = session.SessionId, ["aws:ssm:TargetId"] = Bastion },
            });
            using var cipher = SessionCipher.FromDataKey(key.Plaintext.ToArray());
            var result = JsonSerializer.SerializeToElement(new Dictionary<string, object?> { ["KMSCipherTextKey"] = key.CiphertextBlob.ToArray(), ["KMSCipherTextHash"] = null });
            await client.SendInputAsync(PayloadType.HandshakeResponse, SsmJson.SerializeToUtf8(new HandshakeResponsePayload
            {
                ClientVersion = client.ClientVersion,
                ProcessedClientActions = new List<ProcessedClientAction>
                {
                    ClientMessages.SessionTypeAccepted(),
                    new() { ActionType = HandshakeActionTypes.KmsEncryption, ActionStatus = ActionStatus.Success, ActionResult = result, Error = "" },
                },
            }));

            var challenge = SsmJson.Deserialize<EncryptionChallengePayload>((await client.WaitForDeliveredAsync(PayloadType.EncChallengeRequest, "EncChallengeRequest")).Payload);
            var plain = cipher.Decrypt(challenge.Challenge);
            Assert.Equal(64, plain.Length);
            await client.SendInputAsync(PayloadType.EncChallengeResponse, SsmJson.SerializeToUtf8(new EncryptionChallengePayload { Challenge = cipher.Encrypt(plain) }));
            var complete = SsmJson.Deserialize<HandshakeCompletePayload>((await client.WaitForDeliveredAsync(PayloadType.HandshakeComplete, "HandshakeComplete")).Payload);
            Assert.Equal("This session is encrypted using AWS KMS.", complete.CustomerMessage);

            // Keystrokes encrypted with the client's half reach the shell; its output comes back under the agent's half.
            await client.SendInputAsync(PayloadType.Output, cipher.Encrypt(Bytes("echo kms-$((20+22))\r")));
            await client.WaitUntilAsync(c => Decrypted(c, cipher).Contains("kms-42\r\n"), "encrypted output");
            Assert.DoesNotContain("kms-42", client.OutputText());

            // Plain keystrokes do not decrypt: not acknowledged (the client would resend them), never typed.
            await client.SendInputAsync(PayloadType.Output, Bytes("echo plain-$((1+1))\r"));
            await client.WaitUntilAsync(_ => host.Agent.Counters(session.SessionId)!.DecryptionFailures >= 1, "a decryption failure");
            // The next keystrokes wait behind it: kept as early, not delivered.
            await client.SendInputAsync(PayloadType.Output, cipher.Encrypt(Bytes("echo after-$((3+3))\r")));
            await client.WaitUntilAsync(_ => host.Agent.Counters(session.SessionId)!.OutOfOrderReceived >= 1, "the next message kept as early");
            Assert.DoesNotContain("after-6", Decrypted(client, cipher));
            Assert.DoesNotContain("plain-2", Decrypted(client, cipher));
            Assert.True(client.UnackedCount >= 1);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AnAgentThatRequiresTheChallenge_RefusesAClientThatDidNotAcknowledgeIt()
        {
            await using var host = Start();
            host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;
            host.Agent.Options.RequireKmsChallengeResponse = true;
            var session = await StartAsync(host, null);
            await using var client = new AgentTestClient();
            await client.ConnectAsync(session.StreamUrl, session.TokenValue);
            await client.WaitForDeliveredAsync(PayloadType.HandshakeRequest, "HandshakeRequest");
            using var kms = Kms(host);
            var key = await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest
            {
                KeyId = SandboxKms.DefaultAlias,
                NumberOfBytes = 64,
                EncryptionContext = new Dictionary<string, string> { ["aws:ssm:SessionId"] = session.SessionId, ["aws:ssm:TargetId"] = Bastion },
            });
            var result = JsonSerializer.SerializeToElement(new Dictionary<string, object?> { ["KMSCipherTextKey"] = key.CiphertextBlob.ToArray() });
            await client.SendInputAsync(PayloadType.HandshakeResponse, SsmJson.SerializeToUtf8(new HandshakeResponsePayload
            {
                ClientVersion = client.ClientVersion,
                ProcessedClientActions = new List<ProcessedClientAction>
                {
                    ClientMessages.SessionTypeAccepted(),
                    new() { ActionType = HandshakeActionTypes.KmsEncryption, ActionStatus = ActionStatus.Success, ActionResult = result, Error = "" },
                },
            }));
            var closed = await client.WaitForAsync(c => c.Received.FirstOrDefault(m => m.MessageType == MessageTypes.ChannelClosed), "channel_closed");
            Assert.Equal("client does not support required encryption context random challenge", SsmJson.Deserialize<ChannelClosedPayload>(closed.Payload).Output);
            Assert.DoesNotContain(client.Delivered, m => m.PayloadType == PayloadType.EncChallengeRequest);
            Assert.DoesNotContain(host.World.Kms.Calls, c => c.Operation == "Decrypt");
        }

        private static string Decrypted(AgentTestClient client, SessionCipher cipher) =>
            string.Concat(client.Delivered.Where(m => m.PayloadType == PayloadType.Output).Select(m => Encoding.UTF8.GetString(cipher.Decrypt(m.Payload))));
    }
}
