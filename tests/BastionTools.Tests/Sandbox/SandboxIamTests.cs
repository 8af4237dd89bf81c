using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Http;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Tasks;
using Amazon.EC2;
using Amazon.EC2.Model;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>The sandbox's IAM (SandboxIamPolicy): evaluation, and the denials SSM and EC2 answer with, through real AWSSDK clients.</summary>
    public class SandboxIamTests
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private const string RemoteHostDocument = "AWS-StartPortForwardingSessionToRemoteHost";

        private static SandboxCredential Operator(SandboxIamPolicy? policy, string accessKeyId = "AKIAOPERATOR00000001", string userName = "alice") => new()
        {
            AccessKeyId = accessKeyId,
            SecretAccessKey = "operator/secret/" + accessKeyId,
            UserName = userName,
            Policy = policy,
        };

        private static AWSCredentials Keys(SandboxCredential c) => new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey);

        private static SandboxHost StartWith(SandboxCredential credential)
        {
            var world = SandboxWorld.CreateDefault();
            world.AddCredential(credential);
            return Start(world);
        }

        private static StartSessionRequest RemoteHostRequest(string target = Bastion) => new()
        {
            Target = target,
            DocumentName = RemoteHostDocument,
            Parameters = new Dictionary<string, List<string>> { ["host"] = new() { "db.example.us-west-2.rds.amazonaws.com" }, ["portNumber"] = new() { "5432" } },
        };

        [Fact]
        public void Evaluation_AllowsOnlyWhatAStatementNames_AndAnExplicitDenyWins()
        {
            var world = SandboxWorld.CreateDefault();
            var alice = Operator(SandboxIamPolicy.Parse("""
                {"Version":"2012-10-17","Statement":[
                  {"Effect":"Allow","Action":"ssm:StartSession","Resource":["arn:aws:ec2:us-west-2:123456789012:instance/*","arn:aws:ssm:us-west-2::document/AWS-StartPortForwarding*"]},
                  {"Effect":"Allow","Action":["SSM:terminatesession","ssm:Resume*"],"Resource":"arn:aws:ssm:us-west-2:123456789012:session/${aws:username}-*"},
                  {"Effect":"Deny","Action":"ssm:StartSession","Resource":"arn:aws:ec2:us-west-2:123456789012:instance/i-0a1b2c3d4e5f60003"}
                ]}
                """));
            world.AddCredential(alice);

            Assert.True(world.Authorize(alice.AccessKeyId, "ssm:StartSession", SandboxArns.Instance(world, Bastion)).Allowed);
            Assert.True(world.Authorize(alice.AccessKeyId, "ssm:StartSession", SandboxArns.Document(world, RemoteHostDocument)).Allowed);
            Assert.Equal("arn:aws:ssm:us-west-2::document/AWS-StartPortForwardingSessionToRemoteHost", SandboxArns.Document(world, RemoteHostDocument));
            Assert.Equal("arn:aws:ssm:us-west-2:123456789012:document/SSM-SessionManagerRunShell", SandboxArns.Document(world, "SSM-SessionManagerRunShell"));
            Assert.Equal(SandboxIamDecision.ImplicitDeny, world.Authorize(alice.AccessKeyId, "ssm:StartSession", SandboxArns.Document(world, "SSM-SessionManagerRunShell")).Decision);

            // Actions match without regard to case; resources with ${aws:username} only for the caller's own sessions.
            Assert.True(world.Authorize(alice.AccessKeyId, "ssm:TerminateSession", SandboxArns.Session(world, "alice-0123456789abcdef0")).Allowed);
            Assert.True(world.Authorize(alice.AccessKeyId, "ssm:ResumeSession", SandboxArns.Session(world, "alice-0123456789abcdef0")).Allowed);
            var other = world.Authorize(alice.AccessKeyId, "ssm:TerminateSession", SandboxArns.Session(world, "bob-0123456789abcdef0"));
            Assert.Equal(SandboxIamDecision.ImplicitDeny, other.Decision);
            Assert.Equal("User: arn:aws:iam::123456789012:user/alice is not authorized to perform: ssm:TerminateSession on resource: arn:aws:ssm:us-west-2:123456789012:session/bob-0123456789abcdef0 because no identity-based policy allows the ssm:TerminateSession action", other.Message);

            var denied = world.Authorize(alice.AccessKeyId, "ssm:StartSession", SandboxArns.Instance(world, "i-0a1b2c3d4e5f60003"));
            Assert.Equal(SandboxIamDecision.ExplicitDeny, denied.Decision);
            Assert.EndsWith("on resource: arn:aws:ec2:us-west-2:123456789012:instance/i-0a1b2c3d4e5f60003 with an explicit deny in an identity-based policy", denied.Message);

            var describe = world.Authorize(alice.AccessKeyId, "ec2:DescribeInstances", "*");
            Assert.Equal("User: arn:aws:iam::123456789012:user/alice is not authorized to perform: ec2:DescribeInstances because no identity-based policy allows the ec2:DescribeInstances action", describe.Message);

            // The sandbox's own credential has no policy: it may do everything; an unknown key may do nothing.
            Assert.True(world.Authorize(SandboxWorld.DefaultAccessKeyId, "rds-db:connect", "arn:aws:rds-db:us-west-2:123456789012:dbuser:db-X/app").Allowed);
            Assert.False(world.Authorize("AKIAUNKNOWN000000000", "ssm:StartSession", "*").Allowed);
        }

        [Theory]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*","Condition":{"Bool":{"ssm:SessionDocumentAccessCheck":"true"}}}]}""", "Condition")]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"ssm:ResumeSession","Resource":"*","Condition":{"StringLike":{"ssm:resourceTag/aws:ssmmessages:session-id":"${aws:userid}"}}}]}""", "ssm:resourceTag")]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"kms:GenerateDataKey","Resource":"*","Condition":{"StringEqualsIfExists":{"kms:EncryptionContext:aws:ssm:TargetId":"i-1"}}}]}""", "StringEqualsIfExists")]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"kms:GenerateDataKey","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:":"i-1"}}}]}""", "kms:EncryptionContext:")]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"kms:GenerateDataKey","Resource":"*","Condition":{}}]}""", "Condition")]
        [InlineData("""{"Statement":[{"Effect":"Allow","NotAction":"ssm:StartSession","Resource":"*"}]}""", "NotAction")]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"ssm:StartSession"}]}""", "Resource")]
        [InlineData("""{"Statement":[{"Effect":"Maybe","Action":"ssm:StartSession","Resource":"*"}]}""", "Effect")]
        [InlineData("""{"Statement":[{"Effect":"Allow","Action":"StartSession","Resource":"*"}]}""", "service:Name")]
        public void Parse_RefusesWhatItDoesNotModel(string json, string named)
        {
            var ex = Assert.Throws<InvalidDataException>(() => SandboxIamPolicy.Parse(json));
            Assert.Contains(named, ex.Message);
        }

        [Fact]
        public void EncryptionContextConditions_AreEvaluated_AndWrittenBackInIamsForm()
        {
            var world = SandboxWorld.CreateDefault();
            var policy = SandboxIamPolicy.Parse("""
                {"Version":"2012-10-17","Statement":[
                  {"Sid":"EncryptSessionData","Effect":"Allow","Action":"kms:GenerateDataKey","Resource":"arn:aws:kms:us-west-2:123456789012:key/k1",
                   "Condition":{"StringEquals":{"kms:EncryptionContext:aws:ssm:TargetId":["i-0a1b2c3d4e5f60001","i-0a1b2c3d4e5f60002"]}}},
                  {"Effect":"Deny","Action":"kms:*","Resource":"*","Condition":{"StringLike":{"kms:EncryptionContext:aws:ssm:SessionId":"blocked-*"}}}
                ]}
                """);
            var alice = Operator(policy);
            world.AddCredential(alice);
            IReadOnlyDictionary<string, string> Context(string target, string session = "alice-1") =>
                SandboxIamPolicy.EncryptionContextConditions(new Dictionary<string, string> { ["aws:ssm:TargetId"] = target, ["aws:ssm:SessionId"] = session });
            const string key = "arn:aws:kms:us-west-2:123456789012:key/k1";

            Assert.True(world.Authorize(alice.AccessKeyId, "kms:GenerateDataKey", key, Context("i-0a1b2c3d4e5f60002")).Allowed);
            Assert.Equal(SandboxIamDecision.ImplicitDeny, world.Authorize(alice.AccessKeyId, "kms:GenerateDataKey", key, Context("i-0a1b2c3d4e5f60003")).Decision);
            Assert.Equal(SandboxIamDecision.ImplicitDeny, world.Authorize(alice.AccessKeyId, "kms:GenerateDataKey", key).Decision);
            Assert.Equal(SandboxIamDecision.ExplicitDeny, world.Authorize(alice.AccessKeyId, "kms:GenerateDataKey", key, Context("i-0a1b2c3d4e5f60001", "blocked-7")).Decision);

            var written = policy.ToJson();
            var condition = written["Statement"]![0]!["Condition"]!["StringEquals"]!["kms:EncryptionContext:aws:ssm:TargetId"]!.AsArray();
            Assert.Equal(new[] { "i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002" }, condition.Select(v => v!.GetValue<string>()));
            Assert.Null(written["Statement"]![0]!["Condition"]!["StringLike"]);
            Assert.Equal(written.ToJsonString(), SandboxIamPolicy.FromJson(written).ToJson().ToJsonString());
        }

        [Fact]
        public async Task StartSession_Denied_IsSsmsAccessDeniedException_NamingTheInstance_ThenTheDocument()
        {
            var alice = Operator(SandboxIamPolicy.Allow(new[] { "ssm:StartSession" }, "arn:aws:ec2:us-west-2:123456789012:instance/" + Bastion));
            await using var host = StartWith(alice);
            using var ssm = SsmClient(host, Keys(alice));

            var onDocument = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => ssm.StartSessionAsync(RemoteHostRequest()));
            Assert.Equal("AccessDeniedException", onDocument.ErrorCode);
            Assert.Equal(HttpStatusCode.BadRequest, onDocument.StatusCode);
            Assert.Equal("User: arn:aws:iam::123456789012:user/alice is not authorized to perform: ssm:StartSession on resource: arn:aws:ssm:us-west-2::document/AWS-StartPortForwardingSessionToRemoteHost because no identity-based policy allows the ssm:StartSession action", onDocument.Message);

            var onInstance = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => ssm.StartSessionAsync(RemoteHostRequest("i-0a1b2c3d4e5f60002")));
            Assert.Contains("on resource: arn:aws:ec2:us-west-2:123456789012:instance/i-0a1b2c3d4e5f60002 because", onInstance.Message);

            // Without a document name the default shell document is not checked (no ssm:SessionDocumentAccessCheck).
            var shell = await ssm.StartSessionAsync(new StartSessionRequest { Target = Bastion });
            Assert.StartsWith("alice-", shell.SessionId);
            Assert.Single(host.Sessions.Snapshot());
            Assert.Contains(host.Calls, c => c.Operation == "StartSession" && c.AccessKeyId == alice.AccessKeyId && c.ErrorCode == "AccessDeniedException");
        }

        [Fact]
        public async Task AccessDenied_WireShape_IsCoralsWithACapitalMessage()
        {
            await using var host = Start();
            host.World.Credentials[0].Policy = SandboxIamPolicy.Allow(new[] { "ec2:DescribeInstances" });
            var (status, body, response) = await SendSignedSsmAsync(host, "DescribeInstanceInformation", "{}", host.World.Clock.UtcNow);
            Assert.Equal(400, status);
            var json = JsonNode.Parse(body)!.AsObject();
            Assert.Equal("com.amazon.coral.service#AccessDeniedException", json["__type"]!.GetValue<string>());
            Assert.Equal("User: arn:aws:iam::123456789012:user/sandbox-user is not authorized to perform: ssm:DescribeInstanceInformation on resource: arn:aws:ssm:us-west-2:123456789012:* because no identity-based policy allows the ssm:DescribeInstanceInformation action",
                json["Message"]!.GetValue<string>());
            Assert.Null(json["message"]);
            Assert.StartsWith("AccessDeniedException:", response.Headers.GetValues("x-amzn-ErrorType").Single());
        }

        [Fact]
        public async Task ResumeAndTerminate_AreAuthorizedOnTheSessionArn_OwnSessionsOnly()
        {
            var own = "arn:aws:ssm:us-west-2:123456789012:session/${aws:username}-*";
            var alice = Operator(new SandboxIamPolicy(new[]
            {
                new SandboxIamStatement("Allow", new[] { "ssm:StartSession" }, new[] { "arn:aws:ec2:us-west-2:123456789012:instance/*", "arn:aws:ssm:us-west-2::document/*" }),
                new SandboxIamStatement("Allow", new[] { "ssm:TerminateSession" }, new[] { own }),
            }));
            var bob = Operator(null, "AKIABOB0000000000001", "bob");
            await using var host = StartWith(alice);
            host.World.AddCredential(bob);
            using var asAlice = SsmClient(host, Keys(alice));
            using var asBob = SsmClient(host, Keys(bob));

            var mine = await asAlice.StartSessionAsync(RemoteHostRequest());
            var bobs = await asBob.StartSessionAsync(RemoteHostRequest());

            var resume = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => asAlice.ResumeSessionAsync(new ResumeSessionRequest { SessionId = mine.SessionId }));
            Assert.Equal("AccessDeniedException", resume.ErrorCode);
            Assert.Contains("ssm:ResumeSession on resource: arn:aws:ssm:us-west-2:123456789012:session/" + mine.SessionId + " because", resume.Message);

            var notMine = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => asAlice.TerminateSessionAsync(new TerminateSessionRequest { SessionId = bobs.SessionId }));
            Assert.Contains("ssm:TerminateSession on resource: arn:aws:ssm:us-west-2:123456789012:session/" + bobs.SessionId, notMine.Message);
            Assert.True(host.Sessions.TryGet(bobs.SessionId, out var still));
            Assert.NotEqual(SandboxSessionState.Terminated, still.State);

            await asAlice.TerminateSessionAsync(new TerminateSessionRequest { SessionId = mine.SessionId });
            Assert.True(host.Sessions.TryGet(mine.SessionId, out var ended));
            Assert.Equal(SandboxSessionState.Terminated, ended.State);
        }

        [Theory]
        [InlineData(SandboxEc2DenialMessage.Encoded)]
        [InlineData(SandboxEc2DenialMessage.Detailed)]
        [InlineData(SandboxEc2DenialMessage.Bare)]
        public async Task DescribeInstances_Denied_IsEc2sUnauthorizedOperation(SandboxEc2DenialMessage style)
        {
            var alice = Operator(SandboxIamPolicy.Allow(new[] { "ssm:DescribeInstanceInformation" }));
            await using var host = StartWith(alice);
            host.World.Ec2DenialMessage = style;
            using var ec2 = Ec2(host, Keys(alice));
            var ex = await Assert.ThrowsAsync<AmazonEC2Exception>(() => ec2.DescribeInstancesAsync(new DescribeInstancesRequest()));
            Assert.Equal("UnauthorizedOperation", ex.ErrorCode);
            Assert.Equal(HttpStatusCode.Forbidden, ex.StatusCode);
            Assert.StartsWith("You are not authorized to perform this operation.", ex.Message);
            const string context = "User: arn:aws:iam::123456789012:user/alice is not authorized to perform: ec2:DescribeInstances because no identity-based policy allows the ec2:DescribeInstances action";
            switch (style)
            {
                case SandboxEc2DenialMessage.Bare:
                    Assert.Equal("You are not authorized to perform this operation.", ex.Message);
                    break;
                case SandboxEc2DenialMessage.Detailed:
                    Assert.Equal("You are not authorized to perform this operation. " + context, ex.Message);
                    break;
                default:
                    Assert.StartsWith("You are not authorized to perform this operation. " + context + ". Encoded authorization failure message: ", ex.Message);
                    Assert.Matches("Encoded authorization failure message: [A-Za-z0-9_-]{300,}$", ex.Message);
                    break;
            }
            // The same key may still do what it is allowed.
            using var ssm = SsmClient(host, Keys(alice));
            Assert.NotEmpty((await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest())).InstanceInformationList);
        }

        [Fact]
        public async Task Policies_ComeFromTheWorldFile_AndChangeAtRunTime_ThroughTheControlEndpoint()
        {
            var world = SandboxWorld.Load("""
                {"ec2DenialMessage":"Bare","credentials":[
                  {"accessKeyId":"AKIASANDBOXEXAMPLE01","secretAccessKey":"admin/secret"},
                  {"accessKeyId":"AKIAREADER0000000001","secretAccessKey":"reader/secret","userName":"reader",
                   "policy":{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["ec2:DescribeInstances","ssm:DescribeInstanceInformation"],"Resource":"*"}}}]}
                """);
            Assert.Equal(SandboxEc2DenialMessage.Bare, world.Ec2DenialMessage);
            await using var host = Start(world);
            var reader = world.FindCredential("AKIAREADER0000000001")!;
            using var ssm = SsmClient(host, Keys(reader));
            await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest());
            await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => ssm.StartSessionAsync(RemoteHostRequest()));

            using var http = new HttpClient();
            async Task<(HttpStatusCode, JsonNode?)> Put(string path, string json)
            {
                using var r = await http.PutAsync(new Uri(host.ControlEndpoint, path), new StringContent(json, Encoding.UTF8, "application/json"));
                return (r.StatusCode, JsonNode.Parse(await r.Content.ReadAsStringAsync()));
            }

            var (status, answer) = await Put("iam/credentials/AKIAREADER0000000001/policy", """{"Statement":[{"Effect":"Allow","Action":"ssm:*","Resource":"*"}]}""");
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal("arn:aws:iam::123456789012:user/reader", answer!["arn"]!.GetValue<string>());
            Assert.NotNull(await ssm.StartSessionAsync(RemoteHostRequest()));

            (status, answer) = await Put("iam/credentials/AKIANEW0000000000001", """{"secretAccessKey":"new/secret","userName":"carol","policy":{"Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}}""");
            Assert.Equal(HttpStatusCode.OK, status);
            using var asCarol = SsmClient(host, new BasicAWSCredentials("AKIANEW0000000000001", "new/secret"));
            var ex = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => asCarol.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest()));
            Assert.EndsWith("with an explicit deny in an identity-based policy", ex.Message);

            (status, answer) = await Put("iam/credentials/AKIANEW0000000000001/policy", """{"Statement":[{"Effect":"Allow","Action":"ssm:StartSession","Resource":"*","Condition":{}}]}""");
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Contains("Condition", answer!["error"]!.GetValue<string>());

            var listed = JsonNode.Parse(await http.GetStringAsync(new Uri(host.ControlEndpoint, "iam")))!;
            Assert.Equal("Bare", listed["ec2DenialMessage"]!.GetValue<string>());
            Assert.Equal(3, listed["credentials"]!.AsArray().Count);
            Assert.DoesNotContain("secret", listed.ToJsonString(), StringComparison.Ordinal);
        }
    }
}
