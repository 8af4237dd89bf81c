using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading.Tasks;
using Amazon.KeyManagementService;
using Amazon.KeyManagementService.Model;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using Xunit;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>The sandbox's KMS double: SigV4 as AWS checks it, the key policy, the encryption context, KMS's error shape.</summary>
    public sealed class SandboxKmsTests : IDisposable
    {
        private readonly SandboxHost _host = SandboxTestSupport.Start();

        public void Dispose() => _host.Dispose();

        private AmazonKeyManagementServiceClient Kms(AWSCredentials? credentials = null) => new(credentials ?? SandboxTestSupport.DefaultCredentials(_host),
            new AmazonKeyManagementServiceConfig { ServiceURL = _host.KmsEndpoint.ToString(), AuthenticationRegion = _host.World.Region, MaxErrorRetry = 0, Timeout = TimeSpan.FromSeconds(15) });

        private static Dictionary<string, string> Context(string session = "sandbox-user-0123456789abcdef0") => new()
        {
            ["aws:ssm:SessionId"] = session,
            ["aws:ssm:TargetId"] = "i-0a1b2c3d4e5f60001",
        };

        private SandboxInstance AgentPrincipal => _host.World.FindInstance("i-0a1b2c3d4e5f60001")!;

        [Fact]
        public async Task GenerateDataKey_ByAlias_GivesSixtyFourBytes_ThatOnlyTheSameContextDecrypts()
        {
            using var kms = Kms();
            var response = await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64, EncryptionContext = Context() });
            Assert.Equal("arn:aws:kms:us-west-2:123456789012:key/" + SandboxKms.DefaultKeyId, response.KeyId);
            var plaintext = response.Plaintext.ToArray();
            var blob = response.CiphertextBlob.ToArray();
            Assert.Equal(64, plaintext.Length);

            // The instance role may decrypt it with the same context, and only with it.
            var (opened, arn) = _host.World.Kms.Decrypt(AgentPrincipal, blob, Context(), SandboxKms.DefaultAlias);
            Assert.Equal(plaintext, opened);
            Assert.Equal(response.KeyId, arn);
            (byte[], string) other(SandboxInstance by, byte[] b, IReadOnlyDictionary<string, string> c, string? k) => _host.World.Kms.Decrypt(by, b, c, k);
            Assert.Equal("InvalidCiphertextException", Assert.Throws<SandboxError>(() => other(AgentPrincipal, blob, Context("another-session"), null)).Code);
            var withChallenge = Context();
            withChallenge["aws:ssm:RandomChallenge"] = "AAAAAAAAAAAAAAAAAAAAAA==";
            Assert.Equal("InvalidCiphertextException", Assert.Throws<SandboxError>(() => other(AgentPrincipal, blob, withChallenge, null)).Code);
            var tampered = (byte[])blob.Clone();
            tampered[^1] ^= 1;
            Assert.Equal("InvalidCiphertextException", Assert.Throws<SandboxError>(() => other(AgentPrincipal, tampered, Context(), null)).Code);
            Assert.Equal("IncorrectKeyException", Assert.Throws<SandboxError>(() => other(AgentPrincipal, blob, Context(), SandboxKms.LockedAlias)).Code);
        }

        [Fact]
        public async Task TheKeyPolicy_DecidesWhoMayDoWhat()
        {
            using var kms = Kms();
            // The operator may not decrypt (only the instance role may) ...
            var key = await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultKeyId, NumberOfBytes = 64, EncryptionContext = Context() });
            var denied = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.DecryptAsync(new DecryptRequest { CiphertextBlob = key.CiphertextBlob, EncryptionContext = Context() }));
            Assert.Equal("AccessDeniedException", denied.ErrorCode);
            Assert.Equal(System.Net.HttpStatusCode.BadRequest, denied.StatusCode);
            // ... and no one may generate data keys under the locked key.
            var locked = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.LockedAlias, NumberOfBytes = 64, EncryptionContext = Context() }));
            Assert.Equal("AccessDeniedException", locked.ErrorCode);
            Assert.Equal("User: arn:aws:iam::123456789012:user/sandbox-user is not authorized to perform: kms:GenerateDataKey on resource: arn:aws:kms:us-west-2:123456789012:key/"
                + SandboxKms.LockedKeyId + " because no resource-based policy allows the kms:GenerateDataKey action", locked.Message);
            var missing = await Assert.ThrowsAsync<NotFoundException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = "alias/nope", NumberOfBytes = 64 }));
            Assert.Equal("Alias arn:aws:kms:us-west-2:123456789012:alias/nope is not found.", missing.Message);
            Assert.Equal(new[] { "GenerateDataKey:", "Decrypt:AccessDeniedException", "GenerateDataKey:AccessDeniedException", "GenerateDataKey:NotFoundException" },
                _host.World.Kms.Calls.Select(c => c.Operation + ":" + c.ErrorCode));
        }

        /// <summary>An operator key of the sandbox account with this identity policy (registered in the world).</summary>
        private SandboxCredential Operator(string userName, string? policyJson)
        {
            var credential = new SandboxCredential
            {
                AccessKeyId = "AKIAKMS" + userName.ToUpperInvariant().PadRight(13, '0'),
                SecretAccessKey = "kms/operator/" + userName,
                UserName = userName,
                Policy = policyJson == null ? null : SandboxIamPolicy.Parse(policyJson),
            };
            _host.World.SetCredential(credential);
            return credential;
        }

        private static AWSCredentials Keys(SandboxCredential c) => new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey);

        private static string KeyArn(string keyId) => "arn:aws:kms:us-west-2:123456789012:key/" + keyId;

        private static string AllowGenerateDataKey(string resource, string condition = "") =>
            "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"kms:GenerateDataKey\",\"Resource\":\"" + resource + "\"" + condition + "}]}";

        [Fact]
        public async Task TheDefaultKeyPolicy_LetsTheIdentityPolicyDecide_InKmsWording()
        {
            // alias/bastion-session-data-iam has the policy KMS and the CDK give a new key: the account root, kms:*.
            var key = _host.World.Kms.Resolve(SandboxKms.IamAlias);
            Assert.Equal("arn:aws:iam::123456789012:root", Assert.Single(Assert.Single(key.Policy).Principals));

            var allowed = Operator("alice", AllowGenerateDataKey(KeyArn(SandboxKms.IamKeyId)));
            using (var kms = Kms(Keys(allowed)))
            {
                var ok = await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context() });
                Assert.Equal(KeyArn(SandboxKms.IamKeyId), ok.KeyId);
            }

            // Allowed on another key only: the identity policy does not allow this one.
            var elsewhere = Operator("bob", AllowGenerateDataKey(KeyArn(SandboxKms.DefaultKeyId)));
            using (var kms = Kms(Keys(elsewhere)))
            {
                var denied = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context() }));
                Assert.Equal("AccessDeniedException", denied.ErrorCode);
                Assert.Equal(System.Net.HttpStatusCode.BadRequest, denied.StatusCode);
                Assert.Equal("User: arn:aws:iam::123456789012:user/bob is not authorized to perform: kms:GenerateDataKey on resource: " + KeyArn(SandboxKms.IamKeyId)
                    + " because no identity-based policy allows the kms:GenerateDataKey action", denied.Message);

                // And its policy's key names bob neither in its key policy, nor lets IAM decide: the key policy is what is missing.
                var notNamed = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64, EncryptionContext = Context() }));
                Assert.EndsWith(KeyArn(SandboxKms.DefaultKeyId) + " because no resource-based policy allows the kms:GenerateDataKey action", notNamed.Message);
            }

            // The sandbox's own key has no identity policy (an administrator): the delegating key lets it.
            using (var admin = Kms())
            {
                await admin.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context() });
            }
            Assert.Equal(new[] { "alice:", "bob:AccessDeniedException", "bob:AccessDeniedException", "sandbox-user:" },
                _host.World.Kms.Calls.Select(c => c.Principal.Substring(c.Principal.LastIndexOf('/') + 1) + ":" + c.ErrorCode));
        }

        [Fact]
        public async Task AKeyPolicyNamingTheCaller_NeedsNoIdentityPolicy_ButAnIdentityDenyStillWins()
        {
            // alias/bastion-session-data names user/sandbox-user itself: same account, so no IAM permission is needed ...
            var sandboxUser = _host.World.Credentials[0];
            sandboxUser.Policy = SandboxIamPolicy.Parse("""{"Statement":[{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*"}]}""");
            using var kms = Kms();
            await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64, EncryptionContext = Context() });

            // ... but an explicit Deny in the identity policy refuses, key policy or not.
            sandboxUser.Policy = SandboxIamPolicy.Parse("""{"Statement":[{"Effect":"Deny","Action":"kms:*","Resource":"*"}]}""");
            var denied = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64, EncryptionContext = Context() }));
            Assert.Equal("User: arn:aws:iam::123456789012:user/sandbox-user is not authorized to perform: kms:GenerateDataKey on resource: " + KeyArn(SandboxKms.DefaultKeyId)
                + " with an explicit deny in an identity-based policy", denied.Message);

            // A Deny in the key policy naming the account refuses everyone in it.
            sandboxUser.Policy = null;
            _host.World.Kms.Resolve(SandboxKms.DefaultAlias).Policy.Add(new SandboxKmsPolicyStatement { Effect = "Deny", Principals = { "arn:aws:iam::123456789012:root" }, Actions = { "kms:GenerateDataKey" } });
            var keyDeny = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64, EncryptionContext = Context() }));
            Assert.EndsWith(" with an explicit deny in a resource-based policy", keyDeny.Message);
        }

        [Fact]
        public async Task TheInfraOperatorStatement_BindsDataKeysToTheBastion_ThroughTheEncryptionContextCondition()
        {
            // infra/ OperatorAccess "EncryptSessionData": kms:GenerateDataKey on the key, StringEquals
            // kms:EncryptionContext:aws:ssm:TargetId = the bastion.
            var op = Operator("carol", AllowGenerateDataKey(KeyArn(SandboxKms.IamKeyId),
                ",\"Condition\":{\"StringEquals\":{\"kms:EncryptionContext:aws:ssm:TargetId\":\"i-0a1b2c3d4e5f60001\"}}"));
            using var kms = Kms(Keys(op));
            await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context() });

            var otherTarget = Context();
            otherTarget["aws:ssm:TargetId"] = "i-0a1b2c3d4e5f60002";
            var denied = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = otherTarget }));
            Assert.EndsWith(" because no identity-based policy allows the kms:GenerateDataKey action", denied.Message);
            // No context at all: the condition key is missing, so the statement does not apply.
            await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64 }));
            // StringEquals compares the value case-sensitively.
            var upper = Context();
            upper["aws:ssm:TargetId"] = "I-0A1B2C3D4E5F60001";
            await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = upper }));

            // StringLike with a wildcard, on the session id; the condition key's name is matched without regard to case.
            op.Policy = SandboxIamPolicy.Parse(AllowGenerateDataKey(KeyArn(SandboxKms.IamKeyId),
                ",\"Condition\":{\"StringLike\":{\"KMS:EncryptionContext:AWS:SSM:SessionId\":[\"carol-*\",\"ops-*\"]}}"));
            await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context("carol-0123456789abcdef0") });
            await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context("dave-0123456789abcdef0") }));
            Assert.Equal(new[] { null, "AccessDeniedException", "AccessDeniedException", "AccessDeniedException", null, "AccessDeniedException" }, _host.World.Kms.Calls.Select(c => c.ErrorCode));
        }

        [Fact]
        public async Task TheAgentsDecrypt_UnderTheDefaultKeyPolicy_NeedsTheRolesOwnKmsDecrypt()
        {
            using var kms = Kms();
            var key = await kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.IamAlias, NumberOfBytes = 64, EncryptionContext = Context() });
            var blob = key.CiphertextBlob.ToArray();
            var bastion = AgentPrincipal;

            // infra/ Bastion.cs: the role's policy allows kms:Decrypt on the session-data key.
            bastion.RolePolicy = SandboxIamPolicy.Parse("{\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"kms:Decrypt\",\"Resource\":\"" + KeyArn(SandboxKms.IamKeyId) + "\"}]}");
            Assert.Equal(key.Plaintext.ToArray(), _host.World.Kms.Decrypt(bastion, blob, Context(), SandboxKms.IamAlias).Plaintext);

            bastion.RolePolicy = SandboxIamPolicy.Parse("{\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"ssm:UpdateInstanceInformation\",\"Resource\":\"*\"}]}");
            var denied = Assert.Throws<SandboxError>(() => _host.World.Kms.Decrypt(bastion, blob, Context(), SandboxKms.IamAlias));
            Assert.Equal("AccessDeniedException", denied.Code);
            Assert.Equal("User: arn:aws:sts::123456789012:assumed-role/BastionInstanceRole/i-0a1b2c3d4e5f60001 is not authorized to perform: kms:Decrypt on resource: "
                + KeyArn(SandboxKms.IamKeyId) + " because no identity-based policy allows the kms:Decrypt action", denied.ErrorMessage);
        }

        [Fact]
        public async Task ADisabledKey_AndBadSizes_AreRefusedAsKmsDoes()
        {
            _host.World.Kms.Resolve(SandboxKms.DefaultAlias).Enabled = false;
            using var kms = Kms();
            var disabled = await Assert.ThrowsAsync<DisabledException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64 }));
            Assert.EndsWith(" is disabled.", disabled.Message);
            _host.World.Kms.Resolve(SandboxKms.DefaultAlias).Enabled = true;
            var size = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => kms.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias }));
            Assert.Equal("ValidationException", size.ErrorCode);
            Assert.Equal("Please specify either number of bytes or key spec.", size.Message);
        }

        [Fact]
        public async Task RequestsAreSigV4Checked_ForServiceKms()
        {
            using var wrongSecret = Kms(new BasicAWSCredentials(SandboxWorld.DefaultAccessKeyId, "not-the-secret"));
            var bad = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => wrongSecret.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64 }));
            Assert.Equal("InvalidSignatureException", bad.ErrorCode);
            using var unknown = Kms(new BasicAWSCredentials("AKIAUNKNOWN000000000", "x"));
            var who = await Assert.ThrowsAsync<AmazonKeyManagementServiceException>(() => unknown.GenerateDataKeyAsync(new GenerateDataKeyRequest { KeyId = SandboxKms.DefaultAlias, NumberOfBytes = 64 }));
            Assert.Equal("UnrecognizedClientException", who.ErrorCode);

            // Signed for another service: refused as AWS refuses a wrong credential scope.
            var (status, body) = await SendSignedAsync("GenerateDataKey", "{\"KeyId\":\"" + SandboxKms.DefaultAlias + "\",\"NumberOfBytes\":64}", "ssm");
            Assert.Equal(400, status);
            Assert.Equal("Credential should be scoped to correct service: 'kms'. ", (string?)JsonNode.Parse(body)!["message"]);
            Assert.Empty(_host.World.Kms.IssuedDataKeys);
        }

        [Fact]
        public async Task Errors_HaveKmsJsonShape()
        {
            var (status, body) = await SendSignedAsync("GenerateDataKey", "{\"KeyId\":\"" + SandboxKms.LockedAlias + "\",\"NumberOfBytes\":64}", "kms");
            Assert.Equal(400, status);
            var error = JsonNode.Parse(body)!.AsObject();
            Assert.Equal("AccessDeniedException", (string?)error["__type"]);
            Assert.StartsWith("User: arn:aws:iam::123456789012:user/sandbox-user is not authorized to perform: kms:GenerateDataKey", (string?)error["message"]);
            Assert.Equal(2, error.Count);
        }

        /// <summary>A KMS JSON 1.1 request signed by hand (header auth) for <paramref name="service"/>.</summary>
        private async Task<(int Status, string Body)> SendSignedAsync(string operation, string json, string service)
        {
            var credential = _host.World.Credentials[0];
            var now = _host.World.Clock.UtcNow;
            var amzDate = now.ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
            var date = now.ToString(SigV4.DateFormat, CultureInfo.InvariantCulture);
            var target = "TrentService." + operation;
            var headers = new List<KeyValuePair<string, string>>
            {
                new("host", "127.0.0.1:" + _host.Port.ToString(CultureInfo.InvariantCulture)),
                new("x-amz-date", amzDate),
                new("x-amz-target", target),
            };
            var (canonicalHeaders, signedHeaders) = SigV4.CanonicalHeaders(headers);
            var canonical = SigV4.CanonicalRequest("POST", SigV4.CanonicalPath("/kms"), "", canonicalHeaders, signedHeaders, SigV4.Sha256Hex(json));
            var scope = SigV4.Scope(date, _host.World.Region, service);
            var signature = SigV4.Signature(credential.SecretAccessKey, date, _host.World.Region, service, SigV4.StringToSign(amzDate, scope, canonical));
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var request = new HttpRequestMessage(HttpMethod.Post, _host.KmsEndpoint) { Content = new ByteArrayContent(Encoding.UTF8.GetBytes(json)) };
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/x-amz-json-1.1");
            request.Headers.TryAddWithoutValidation("X-Amz-Date", amzDate);
            request.Headers.TryAddWithoutValidation("X-Amz-Target", target);
            request.Headers.TryAddWithoutValidation("Authorization", SigV4.Algorithm + " Credential=" + credential.AccessKeyId + "/" + scope + ", SignedHeaders=" + signedHeaders + ", Signature=" + signature);
            using var response = await http.SendAsync(request);
            return ((int)response.StatusCode, await response.Content.ReadAsStringAsync());
        }
    }
}
