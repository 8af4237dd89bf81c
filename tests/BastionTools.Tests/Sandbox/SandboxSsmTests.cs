using System;
using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using System.Threading.Tasks;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class SandboxSsmTests
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private const string Offline = "i-0a1b2c3d4e5f60003";

        [Fact(Timeout = TestTimeoutMs)]
        public async Task StartResumeTerminate_RoundTrip_UpdatesTheRegistry()
        {
            await using var host = Start();
            using var ssm = SsmClient(host);

            var started = await ssm.StartSessionAsync(new StartSessionRequest
            {
                Target = Bastion,
                DocumentName = "AWS-StartPortForwardingSessionToRemoteHost",
                Parameters = new Dictionary<string, List<string>>
                {
                    ["host"] = new() { "db.cluster-abc.us-west-2.rds.amazonaws.com" },
                    ["portNumber"] = new() { "5432" },
                    ["localPortNumber"] = new() { "15432" },
                },
                Reason = "sandbox test",
            });

            Assert.Matches(new Regex("^sandbox-user-[0-9a-f]{17}$"), started.SessionId);
            Assert.StartsWith(host.StreamUrlBase + "/" + started.SessionId + "?", started.StreamUrl);
            Assert.StartsWith("ws://127.0.0.1:" + host.Port + "/streams/", started.StreamUrl);
            Assert.True(started.TokenValue.Length > 100);

            Assert.True(host.Sessions.TryGet(started.SessionId, out var session));
            Assert.Equal(Bastion, session.Target);
            Assert.Equal("AWS-StartPortForwardingSessionToRemoteHost", session.DocumentName);
            Assert.Equal("5432", session.Parameter("portNumber"));
            Assert.Equal("db.cluster-abc.us-west-2.rds.amazonaws.com", session.Parameter("host"));
            Assert.Equal("sandbox test", session.Reason);
            Assert.Equal(SandboxSessionState.Connecting, session.State);
            Assert.True(session.IsPortForwarding);
            Assert.True(host.Sessions.TryValidateToken(started.SessionId, started.TokenValue, out _));
            Assert.False(host.Sessions.TryValidateToken(started.SessionId, started.TokenValue + "x", out _));

            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = started.SessionId });
            Assert.Equal(started.SessionId, resumed.SessionId);
            Assert.NotEqual(started.TokenValue, resumed.TokenValue);
            Assert.StartsWith(host.StreamUrlBase + "/" + started.SessionId + "?", resumed.StreamUrl);
            Assert.False(host.Sessions.TryValidateToken(started.SessionId, started.TokenValue, out _));
            Assert.True(host.Sessions.TryValidateToken(started.SessionId, resumed.TokenValue, out var same));
            Assert.Equal(2, same.TokenCount);

            SandboxSession? terminatedEvent = null;
            host.Sessions.SessionTerminated += s => terminatedEvent = s;
            var terminated = await ssm.TerminateSessionAsync(new TerminateSessionRequest { SessionId = started.SessionId });
            Assert.Equal(started.SessionId, terminated.SessionId);
            Assert.Equal(SandboxSessionState.Terminated, session.State);
            Assert.Same(session, terminatedEvent);
            Assert.False(host.Sessions.TryValidateToken(started.SessionId, resumed.TokenValue, out _));

            var afterEnd = await Assert.ThrowsAsync<DoesNotExistException>(() => ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = started.SessionId }));
            Assert.Equal("DoesNotExistException", afterEnd.ErrorCode);

            Assert.Equal(new[] { "StartSession", "ResumeSession", "TerminateSession", "ResumeSession" }, host.Calls.Select(c => c.Operation));
            Assert.All(host.Calls, c => Assert.Equal(SandboxWorld.DefaultAccessKeyId, c.AccessKeyId));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task StartSession_WithoutDocument_IsAShell_AndPortDocumentsGetDefaults()
        {
            await using var host = Start();
            using var ssm = SsmClient(host);

            var shell = await ssm.StartSessionAsync(new StartSessionRequest { Target = Bastion });
            Assert.True(host.Sessions.TryGet(shell.SessionId, out var s));
            Assert.Equal("SSM-SessionManagerRunShell", s.DocumentName);
            Assert.False(s.DocumentNameGiven);
            Assert.True(s.IsShell);

            var port = await ssm.StartSessionAsync(new StartSessionRequest { Target = Bastion, DocumentName = "AWS-StartPortForwardingSession" });
            Assert.True(host.Sessions.TryGet(port.SessionId, out var p));
            Assert.Equal("80", p.Parameter("portNumber"));
            Assert.Equal("0", p.Parameter("localPortNumber"));
            Assert.NotEqual(shell.SessionId, port.SessionId);
            Assert.Equal(2, host.Sessions.Snapshot().Count);
        }

        [Theory(Timeout = TestTimeoutMs)]
        [InlineData(Offline)]
        [InlineData("i-0ffffffffffffffff")]
        public async Task StartSession_TargetNotOnline_IsTargetNotConnected(string target)
        {
            await using var host = Start();
            using var ssm = SsmClient(host);

            var ex = await Assert.ThrowsAsync<TargetNotConnectedException>(() => ssm.StartSessionAsync(new StartSessionRequest { Target = target, DocumentName = "AWS-StartPortForwardingSession" }));
            Assert.Equal("TargetNotConnected", ex.ErrorCode);
            Assert.Equal(target + " is not connected.", ex.Message);
            Assert.Equal(HttpStatusCode.BadRequest, ex.StatusCode);
            Assert.Empty(host.Sessions.Snapshot());
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task StartSession_BecomesPossibleWhenTheInstanceComesOnline()
        {
            await using var host = Start();
            using var ssm = SsmClient(host);
            await Assert.ThrowsAsync<TargetNotConnectedException>(() => ssm.StartSessionAsync(new StartSessionRequest { Target = Offline }));
            host.World.FindInstance(Offline)!.PingStatus = "Online";
            var ok = await ssm.StartSessionAsync(new StartSessionRequest { Target = Offline });
            Assert.False(string.IsNullOrEmpty(ok.SessionId));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task StartSession_UnknownDocument_IsInvalidDocument()
        {
            await using var host = Start();
            using var ssm = SsmClient(host);

            var ex = await Assert.ThrowsAsync<InvalidDocumentException>(() => ssm.StartSessionAsync(new StartSessionRequest { Target = Bastion, DocumentName = "AWS-NoSuchDocument" }));
            Assert.Equal("InvalidDocument", ex.ErrorCode);
            Assert.Contains("AWS-NoSuchDocument", ex.Message);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task UnknownSessionId_ResumeIsDoesNotExist_TerminateIsIdempotent()
        {
            await using var host = Start();
            using var ssm = SsmClient(host);

            var resume = await Assert.ThrowsAsync<DoesNotExistException>(() => ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = "sandbox-user-0123456789abcdef0" }));
            Assert.Equal("DoesNotExistException", resume.ErrorCode);
            Assert.Contains("sandbox-user-0123456789abcdef0", resume.Message);
            // TerminateSession is idempotent: it answers with the id and changes nothing.
            var terminate = await ssm.TerminateSessionAsync(new TerminateSessionRequest { SessionId = "sandbox-user-0123456789abcdef0" });
            Assert.Equal("sandbox-user-0123456789abcdef0", terminate.SessionId);
            Assert.Empty(host.Sessions.Snapshot());
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task WrongSecret_IsInvalidSignatureException_AndNothingHappens()
        {
            await using var host = Start();
            using var ssm = SsmClient(host, new BasicAWSCredentials(SandboxWorld.DefaultAccessKeyId, "not-the-right-secret-000000000000000000"));

            var ex = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => ssm.StartSessionAsync(new StartSessionRequest { Target = Bastion }));
            Assert.Equal("InvalidSignatureException", ex.ErrorCode);
            Assert.Equal(HttpStatusCode.BadRequest, ex.StatusCode);
            Assert.StartsWith("The request signature we calculated does not match the signature you provided.", ex.Message);
            Assert.Empty(host.Sessions.Snapshot());
            var call = Assert.Single(host.Calls);
            Assert.Null(call.AccessKeyId);
            Assert.Equal("InvalidSignatureException", call.ErrorCode);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task UnknownAccessKey_IsUnrecognizedClientException()
        {
            await using var host = Start();
            using var ssm = SsmClient(host, new BasicAWSCredentials("AKIAUNKNOWNKEY000000", SandboxWorld.DefaultSecretAccessKey));

            var ex = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest()));
            Assert.Equal("UnrecognizedClientException", ex.ErrorCode);
            Assert.Equal("The security token included in the request is invalid.", ex.Message);
            Assert.Equal(HttpStatusCode.BadRequest, ex.StatusCode);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task SessionToken_MustMatchTheConfiguredOne()
        {
            var world = new SandboxWorld();
            world.AddCredential(new SandboxCredential { AccessKeyId = "ASIASANDBOXTEMP00001", SecretAccessKey = "temp/secret/for/tests/000000000000000000", SessionToken = "sandbox-session-token-1", UserName = "role-session" });
            world.AddInstance(new SandboxInstance { InstanceId = Bastion, Name = "bastion" });
            await using var host = Start(world);

            using (var good = SsmClient(host, new SessionAWSCredentials("ASIASANDBOXTEMP00001", "temp/secret/for/tests/000000000000000000", "sandbox-session-token-1")))
            {
                var started = await good.StartSessionAsync(new StartSessionRequest { Target = Bastion });
                Assert.StartsWith("role-session-", started.SessionId);
            }
            using (var wrongToken = SsmClient(host, new SessionAWSCredentials("ASIASANDBOXTEMP00001", "temp/secret/for/tests/000000000000000000", "another-token")))
            {
                var ex = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => wrongToken.StartSessionAsync(new StartSessionRequest { Target = Bastion }));
                Assert.Equal("UnrecognizedClientException", ex.ErrorCode);
            }
            using (var noToken = SsmClient(host, new BasicAWSCredentials("ASIASANDBOXTEMP00001", "temp/secret/for/tests/000000000000000000")))
            {
                var ex = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => noToken.StartSessionAsync(new StartSessionRequest { Target = Bastion }));
                Assert.Equal("UnrecognizedClientException", ex.ErrorCode);
            }
            Assert.Single(host.Sessions.Snapshot());
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task HandSignedRequest_IsAccepted_ThenRejectedWhenExpiredFutureOrTampered()
        {
            await using var host = Start();
            var now = host.Clock.UtcNow;
            const string body = "{\"Target\":\"i-0a1b2c3d4e5f60001\"}";

            var ok = await SendSignedSsmAsync(host, "StartSession", body, now);
            Assert.Equal(200, ok.Status);
            Assert.Equal("application/x-amz-json-1.1", ok.Response.Content.Headers.ContentType?.MediaType);
            using (var doc = JsonDocument.Parse(ok.Body))
            {
                Assert.StartsWith("sandbox-user-", doc.RootElement.GetProperty("SessionId").GetString());
            }

            var expired = await SendSignedSsmAsync(host, "StartSession", body, now.AddMinutes(-16));
            Assert.Equal(400, expired.Status);
            using (var doc = JsonDocument.Parse(expired.Body))
            {
                Assert.EndsWith("#InvalidSignatureException", doc.RootElement.GetProperty("__type").GetString());
                Assert.Matches(new Regex(@"^Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z \(\d{8}T\d{6}Z - 15 min\.\)$"), doc.RootElement.GetProperty("message").GetString());
            }
            Assert.StartsWith("InvalidSignatureException", string.Join(",", expired.Response.Headers.GetValues("x-amzn-ErrorType")));

            var future = await SendSignedSsmAsync(host, "StartSession", body, now.AddMinutes(16));
            Assert.Equal(400, future.Status);
            Assert.Contains("Signature not yet current", future.Body);

            var justInside = await SendSignedSsmAsync(host, "StartSession", body, now.AddMinutes(-14));
            Assert.Equal(200, justInside.Status);

            var tampered = await SendSignedSsmAsync(host, "StartSession", body, now, bodyAfterSigning: "{\"Target\":\"i-0a1b2c3d4e5f60002\"}");
            Assert.Equal(400, tampered.Status);
            Assert.Contains("InvalidSignatureException", tampered.Body);

            Assert.Equal(2, host.Sessions.Snapshot().Count);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task SandboxClock_Drives_Expiry_AndTheSdkCorrectsSkewFromTheSandboxsDate()
        {
            await using var host = Start();
            host.Clock.Offset = TimeSpan.FromMinutes(40);
            // The SDK keeps clock corrections per endpoint for the whole process: a path of its own keeps this one
            // from leaking into other tests (the sandbox serves SSM on any path).
            var url = new Uri(host.BaseUri, "skew-" + Guid.NewGuid().ToString("N") + "/").ToString();
            using var ssm = new AmazonSimpleSystemsManagementClient(DefaultCredentials(host),
                new AmazonSimpleSystemsManagementConfig { ServiceURL = url, AuthenticationRegion = host.World.Region, MaxErrorRetry = 2, Timeout = TimeSpan.FromSeconds(15) });
            // The host's own endpoint may carry a correction already: the SDK keys corrections by URL for the whole
            // process, and an earlier test's host on the same port (ports are reused) may have been refused a signature
            // (a correction of a fraction of a second, from the Date header). What counts is that this one does not land there.
            var defaultEndpoint = host.SsmEndpoint.ToString() + "/";
            var defaultBefore = CorrectClockSkew.GetClockCorrectionForEndpoint(defaultEndpoint);

            // The SDK signs with its own time, which the sandbox finds 40 minutes old; AWS SDKs then take the
            // server time from the response, correct their clock for the endpoint and retry.
            var first = await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest());
            Assert.Equal(3, first.InstanceInformationList.Count);
            Assert.Equal(new[] { "InvalidSignatureException", null }, host.Calls.Select(c => c.ErrorCode));
            Assert.InRange(CorrectClockSkew.GetClockCorrectionForEndpoint(url), TimeSpan.FromMinutes(39), TimeSpan.FromMinutes(41));
            Assert.Equal(defaultBefore, CorrectClockSkew.GetClockCorrectionForEndpoint(defaultEndpoint));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DescribeInstanceInformation_Filters()
        {
            await using var host = Start();
            using var ssm = SsmClient(host);

            var byId = await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
            {
                InstanceInformationFilterList = new List<InstanceInformationFilter> { new() { Key = InstanceInformationFilterKey.InstanceIds, ValueSet = new List<string> { Bastion } } },
            });
            var info = Assert.Single(byId.InstanceInformationList);
            Assert.Equal(Bastion, info.InstanceId);
            Assert.Equal(PingStatus.Online, info.PingStatus);
            Assert.Equal("3.3.2299.0", info.AgentVersion);
            Assert.Equal(PlatformType.Linux, info.PlatformType);
            Assert.Equal("10.0.1.10", info.IPAddress);
            Assert.Equal(ResourceType.EC2Instance, info.ResourceType);
            Assert.NotNull(info.LastPingDateTime);
            Assert.InRange(info.LastPingDateTime!.Value.ToUniversalTime(), host.Clock.UtcNow.AddMinutes(-2), host.Clock.UtcNow);
            Assert.Null(byId.NextToken);

            var lost = await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
            {
                Filters = new List<InstanceInformationStringFilter> { new() { Key = "PingStatus", Values = new List<string> { "ConnectionLost" } } },
            });
            Assert.Equal(Offline, Assert.Single(lost.InstanceInformationList).InstanceId);

            var byKeyFilter = await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
            {
                Filters = new List<InstanceInformationStringFilter>
                {
                    new() { Key = "InstanceIds", Values = new List<string> { Bastion, Offline, "i-0a1b2c3d4e5f60002" } },
                    new() { Key = "PingStatus", Values = new List<string> { "Online" } },
                },
            });
            Assert.Equal(new[] { Bastion, "i-0a1b2c3d4e5f60002" }, byKeyFilter.InstanceInformationList.Select(i => i.InstanceId));

            var byTag = await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
            {
                Filters = new List<InstanceInformationStringFilter> { new() { Key = "tag:Name", Values = new List<string> { "bastion-legacy" } } },
            });
            Assert.Equal("3.0.190.0", Assert.Single(byTag.InstanceInformationList).AgentVersion);

            var badValue = await Assert.ThrowsAsync<InvalidInstanceInformationFilterValueException>(() => ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
            {
                Filters = new List<InstanceInformationStringFilter> { new() { Key = "PingStatus", Values = new List<string> { "Sleeping" } } },
            }));
            Assert.Equal("InvalidInstanceInformationFilterValue", badValue.ErrorCode);

            var badKey = await Assert.ThrowsAsync<InvalidFilterKeyException>(() => ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest
            {
                Filters = new List<InstanceInformationStringFilter> { new() { Key = "Colour", Values = new List<string> { "blue" } } },
            }));
            Assert.Equal("InvalidFilterKey", badKey.ErrorCode);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DescribeInstanceInformation_Paginates()
        {
            await using var host = Start(ManyInstances(12));
            using var ssm = SsmClient(host);

            var seen = new List<string>();
            var pages = new List<int>();
            string? next = null;
            do
            {
                var page = await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest { MaxResults = 5, NextToken = next });
                pages.Add(page.InstanceInformationList.Count);
                seen.AddRange(page.InstanceInformationList.Select(i => i.InstanceId));
                next = page.NextToken;
            } while (next != null && pages.Count < 10);

            Assert.Equal(new[] { 5, 5, 2 }, pages);
            Assert.Equal(host.World.Instances.Select(i => i.InstanceId), seen);

            // The SDK's analyzer rejects constants below 5; the service must reject them at run time too.
            var belowMinimum = int.Parse("2", System.Globalization.CultureInfo.InvariantCulture);
            var tooSmall = await Assert.ThrowsAsync<AmazonSimpleSystemsManagementException>(() => ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest { MaxResults = belowMinimum }));
            Assert.Equal("ValidationException", tooSmall.ErrorCode);
            Assert.Contains("greater than or equal to 5", tooSmall.Message);

            var badToken = await Assert.ThrowsAsync<InvalidNextTokenException>(() => ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest { NextToken = "bm90LWEtdG9rZW4=" }));
            Assert.Equal("InvalidNextToken", badToken.ErrorCode);
        }
    }
}
