using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Tests.Sandbox;
using Xunit;

namespace BastionTools.Tests.Engine
{
    /// <summary>The engine's AWS layer (real AWSSDK clients) against the sandbox's SSM and EC2 doubles.</summary>
    public sealed class TargetResolverTests : IDisposable
    {
        private readonly SandboxHost _host;
        private readonly AwsApi _api;

        public TargetResolverTests()
        {
            var world = SandboxWorld.CreateDefault();
            world.AddInstance(new SandboxInstance { InstanceId = "i-0dup0000000000001", Name = "twin", PingStatus = "Online" });
            world.AddInstance(new SandboxInstance { InstanceId = "i-0dup0000000000002", Name = "twin", PingStatus = "Online" });
            world.AddInstance(new SandboxInstance { InstanceId = "i-0dup0000000000003", Name = "pair", PingStatus = "Online" });
            world.AddInstance(new SandboxInstance { InstanceId = "i-0dup0000000000004", Name = "pair", PingStatus = "ConnectionLost", State = "stopped" });
            _host = SandboxTestSupport.Start(world);
            var c = _host.World.Credentials[0];
            var creds = new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null);
            _api = new AwsApi(creds, _host.World.Region, _host.SsmEndpoint.ToString());
        }

        public void Dispose()
        {
            _api.Dispose();
            _host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        private Task<InstanceRecord> Resolve(TargetSelector s) => TargetResolver.ResolveAsync(_api, s, CancellationToken.None);

        [Fact]
        public async Task ById_JoinsEc2AndSsm()
        {
            var r = await Resolve(new TargetSelector { InstanceId = "i-0a1b2c3d4e5f60001" });
            Assert.Equal("bastion", r.Name);
            Assert.Equal("Online", r.PingStatus);
            Assert.Equal("3.3.2299.0", r.AgentVersion);
        }

        [Fact]
        public async Task ByName_And_ByTag()
        {
            Assert.Equal("i-0a1b2c3d4e5f60002", (await Resolve(new TargetSelector { Name = "bastion-legacy" })).InstanceId);
            var tagged = await Resolve(new TargetSelector { Tags = new Dictionary<string, string> { ["Name"] = "bastion" } });
            Assert.Equal("i-0a1b2c3d4e5f60001", tagged.InstanceId);
        }

        [Fact]
        public async Task Offline_IsRefusedBeforeAnySession()
        {
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Name = "bastion-offline" }));
            Assert.Equal(ErrorIds.BastionTargetOffline, ex.ErrorId);
            Assert.Equal(System.Management.Automation.ErrorCategory.ResourceUnavailable, ex.Category);
            Assert.Empty(_host.Sessions.Snapshot());
        }

        [Fact]
        public async Task Unknown_IsNotFound()
        {
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Name = "nobody" }));
            Assert.Equal(ErrorIds.BastionTargetNotFound, ex.ErrorId);
            ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { InstanceId = "i-0ffffffffffffffff" }));
            Assert.Equal(ErrorIds.BastionTargetNotFound, ex.ErrorId);
        }

        [Fact]
        public async Task SeveralMatches_AreAnError_EvenWhenOnlyOneIsOnline()
        {
            // The real bastion stopped, an impostor with the same Name tag online: the tunnel must not go to the impostor.
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Name = "pair" }));
            Assert.Equal(ErrorIds.BastionTargetAmbiguous, ex.ErrorId);
            Assert.Equal(System.Management.Automation.ErrorCategory.InvalidArgument, ex.Category);
            Assert.Contains("i-0dup0000000000003 (pair, running, Online)", ex.Message);
            Assert.Contains("i-0dup0000000000004 (pair, stopped, ConnectionLost)", ex.Message);
            Assert.Contains("-Target", ex.RecommendedAction);
            Assert.Contains("-Tag", ex.RecommendedAction);
            ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Name = "twin" }));
            Assert.Equal(ErrorIds.BastionTargetAmbiguous, ex.ErrorId);
            ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Tags = new Dictionary<string, string> { ["Role"] = "bastion" } }));
            Assert.Equal(ErrorIds.BastionTargetAmbiguous, ex.ErrorId);
            Assert.Contains("i-0a1b2c3d4e5f60003 (bastion-offline, running, ConnectionLost)", ex.Message);
            Assert.Empty(_host.Sessions.Snapshot());
        }

        [Fact]
        public async Task SeveralMatches_NarrowedByATag_OrAnInstanceId_Resolve()
        {
            Assert.Equal("i-0dup0000000000003", (await Resolve(new TargetSelector { InstanceId = "i-0dup0000000000003" })).InstanceId);
            var narrowed = await Resolve(new TargetSelector { Tags = new Dictionary<string, string> { ["Role"] = "bastion", ["Name"] = "bastion-legacy" } });
            Assert.Equal("i-0a1b2c3d4e5f60002", narrowed.InstanceId);
        }

        [Fact]
        public async Task StartResumeTerminate_ThroughTheEngineApi()
        {
            var parameters = new Dictionary<string, List<string>> { ["portNumber"] = new() { "5432" }, ["host"] = new() { "db.example.us-west-2.rds.amazonaws.com" } };
            var ep = await _api.StartSessionAsync("i-0a1b2c3d4e5f60001", "AWS-StartPortForwardingSessionToRemoteHost", parameters, "test", CancellationToken.None);
            Assert.StartsWith("ws://127.0.0.1:", ep.StreamUrl.ToString());
            Assert.DoesNotContain(ep.TokenValue, ep.ToString());
            var resumed = await _api.ResumeSessionAsync(ep.SessionId, CancellationToken.None);
            Assert.NotNull(resumed);
            Assert.NotEqual(ep.TokenValue, resumed!.TokenValue);
            await _api.TerminateSessionAsync(ep.SessionId, CancellationToken.None);
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => _api.ResumeSessionAsync(ep.SessionId, CancellationToken.None));
            Assert.Equal(ErrorIds.BastionSessionNotFound, ex.ErrorId);
        }

        [Fact]
        public async Task StartSession_OnOfflineTarget_MapsTargetNotConnected()
        {
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() =>
                _api.StartSessionAsync("i-0a1b2c3d4e5f60003", null, new Dictionary<string, List<string>>(), null, CancellationToken.None));
            Assert.Equal(ErrorIds.BastionTargetOffline, ex.ErrorId);
        }

        [Fact]
        public async Task Throttling_IsRetriedWithBackOff_ThenSucceeds()
        {
            _host.ThrottleSsm(2);
            var r = await Resolve(new TargetSelector { InstanceId = "i-0a1b2c3d4e5f60001" });
            Assert.Equal("Online", r.PingStatus);
            Assert.Equal(2, _host.Calls.Count(c => c.Service == "ssm" && c.ErrorCode == "ThrottlingException"));
        }

        [Fact]
        public async Task Throttling_BeyondTheRetries_IsAwsThrottled_LimitsExceeded()
        {
            _host.ThrottleSsm(20);
            try
            {
                var ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { InstanceId = "i-0a1b2c3d4e5f60001" }));
                Assert.Equal(ErrorIds.AwsThrottled, ex.ErrorId);
                Assert.Equal(System.Management.Automation.ErrorCategory.LimitsExceeded, ex.Category);
                Assert.Equal(5, _host.Calls.Count(c => c.Service == "ssm" && c.ErrorCode == "ThrottlingException"));
            }
            finally
            {
                _host.ThrottleSsm(0);
            }
        }

        [Theory]
        [InlineData("http://127.0.0.1:5000/ssm", "ec2", "http://127.0.0.1:5000/ec2")]
        [InlineData("http://127.0.0.1:5000/ec2/", "ssm", "http://127.0.0.1:5000/ssm")]
        [InlineData("https://vpce-123.ssm.eu-west-1.vpce.amazonaws.com", "ssm", "https://vpce-123.ssm.eu-west-1.vpce.amazonaws.com")]
        public void ServiceUrl_DerivesSiblingEndpoints(string given, string service, string expected)
        {
            Assert.Equal(expected, AwsApi.ServiceUrl(given, service));
        }
    }
}
