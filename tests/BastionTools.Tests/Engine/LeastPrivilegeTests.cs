using System;
using System.Collections.Generic;
using System.Linq;
using ErrorCategory = System.Management.Automation.ErrorCategory;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using BastionTools.Tests.Sandbox;
using Xunit;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// The engine with least-privilege credentials against the sandbox's IAM: -Target needs only ssm:StartSession (the
    /// look-ups are best effort), -Name/-Tag need the describe calls, and every denial names the IAM action.
    /// </summary>
    public sealed class LeastPrivilegeTests : IDisposable
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private const string Offline = "i-0a1b2c3d4e5f60003";
        // An agent from before the TerminateSession flag (handled after 2.3.722.0): only the TerminateSession call ends it.
        private const string Ancient = "i-0a1b2c3d4e5f60004";
        private const string OperatorKey = "AKIALEASTPRIVILEGE01";
        private readonly SandboxHost _host;
        private readonly SandboxCredential _operator;
        private readonly AwsApi _api;

        public LeastPrivilegeTests()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            var world = SandboxWorld.CreateDefault();
            _operator = new SandboxCredential { AccessKeyId = OperatorKey, SecretAccessKey = "least/privilege/secret", UserName = "operator" };
            world.AddCredential(_operator);
            world.AddInstance(new SandboxInstance { InstanceId = Ancient, Name = "bastion-ancient", AgentVersion = "2.3.672.0", PrivateIpAddress = "10.0.1.13" });
            _host = SandboxTestSupport.Start(world);
            _api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(_operator.AccessKeyId, _operator.SecretAccessKey), "test", null), world.Region, _host.SsmEndpoint.ToString());
        }

        public void Dispose()
        {
            _api.Dispose();
            _host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        private string Arn(string kind, string id) => kind switch
        {
            "instance" => SandboxArns.Instance(_host.World, id),
            "document" => SandboxArns.Document(_host.World, id),
            _ => SandboxArns.Session(_host.World, id),
        };

        private void Allow(params (string Action, string Resource)[] grants) =>
            _operator.Policy = new SandboxIamPolicy(grants.Select(g => new SandboxIamStatement("Allow", new[] { g.Action }, new[] { g.Resource })));

        private (string, string)[] StartOnly => new[]
        {
            ("ssm:StartSession", Arn("instance", Bastion)),
            ("ssm:StartSession", Arn("instance", Offline)),
            ("ssm:StartSession", Arn("document", "AWS-StartPortForwardingSession")),
            ("ssm:TerminateSession", Arn("session", "${aws:username}-*")),
        };

        private async Task<(InstanceRecord Record, List<string> Narrated)> Resolve(TargetSelector selector)
        {
            var narrated = new List<string>();
            var record = await TargetResolver.ResolveAsync(_api, selector, CancellationToken.None, narrated.Add);
            return (record, narrated);
        }

        [Fact]
        public async Task ByTarget_WithOnlyStartSession_TheLookupsAreSkipped_AndSaidSo()
        {
            Allow(StartOnly);
            var (record, narrated) = await Resolve(new TargetSelector { InstanceId = Bastion });
            Assert.Equal(Bastion, record.InstanceId);
            Assert.Null(record.PingStatus);
            Assert.Contains(narrated, n => n.Contains("ec2:DescribeInstances", StringComparison.Ordinal) && n.Contains("-Target does not need", StringComparison.Ordinal));
            Assert.Contains(narrated, n => n.Contains("ssm:DescribeInstanceInformation", StringComparison.Ordinal));
            Assert.Contains(_host.Calls, c => c.Operation == "DescribeInstances" && c.ErrorCode == "UnauthorizedOperation");

            // And the session starts: StartSession is all it takes.
            var endpoint = await _api.StartSessionAsync(record.InstanceId, "AWS-StartPortForwardingSession", new Dictionary<string, List<string>> { ["portNumber"] = new() { "22" } }, null, CancellationToken.None);
            Assert.StartsWith("operator-", endpoint.SessionId);
            await _api.TerminateSessionAsync(endpoint.SessionId, CancellationToken.None);
        }

        [Fact]
        public async Task ByTarget_WithDescribeInstanceInformationAllowed_TheOfflineCheckStillHappens()
        {
            Allow(StartOnly.Append(("ssm:DescribeInstanceInformation", "*")).ToArray());
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { InstanceId = Offline }));
            Assert.Equal(ErrorIds.BastionTargetOffline, ex.ErrorId);
            var (online, _) = await Resolve(new TargetSelector { InstanceId = Bastion });
            Assert.Equal("Online", online.PingStatus);
            Assert.Equal("3.3.2299.0", online.AgentVersion);
        }

        [Fact]
        public async Task ByTarget_WithOnlyEc2Allowed_TheInstanceIsLookedUp_AndTheAgentCheckIsSkipped()
        {
            Allow(StartOnly.Append(("ec2:DescribeInstances", "*")).ToArray());
            var (record, narrated) = await Resolve(new TargetSelector { InstanceId = Offline });
            Assert.Equal("bastion-offline", record.Name);
            Assert.Contains(narrated, n => n.Contains("AWS denied ssm:DescribeInstanceInformation", StringComparison.Ordinal));
            // An instance EC2 does not know is still not found (EC2 said so; nothing was skipped).
            var missing = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { InstanceId = "i-0ffffffffffffffff" }));
            Assert.Equal(ErrorIds.BastionTargetNotFound, missing.ErrorId);
        }

        [Theory]
        [InlineData(true, "ec2:DescribeInstances")]
        [InlineData(false, "ssm:DescribeInstanceInformation")]
        public async Task ByName_NeedsBothLookups_AndTheErrorNamesThem(bool allowSsmDescribe, string denied)
        {
            var grants = StartOnly.ToList();
            grants.Add(allowSsmDescribe ? ("ssm:DescribeInstanceInformation", "*") : ("ec2:DescribeInstances", "*"));
            Allow(grants.ToArray());
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Name = "bastion" }));
            Assert.Equal(ErrorIds.AwsAccessDenied, ex.ErrorId);
            Assert.Equal(ErrorCategory.PermissionDenied, ex.Category);
            Assert.Contains("needs ec2:DescribeInstances and ssm:DescribeInstanceInformation", ex.Message, StringComparison.Ordinal);
            Assert.Contains("AWS denied " + denied, ex.Message, StringComparison.Ordinal);
            Assert.Contains("-Target <instance id>", ex.RecommendedAction, StringComparison.Ordinal);
            Assert.IsAssignableFrom<AmazonServiceException>(ex.InnerException);

            var tags = await Assert.ThrowsAsync<BastionToolsException>(() => Resolve(new TargetSelector { Tags = new Dictionary<string, string> { ["Role"] = "bastion" } }));
            Assert.Contains("by -Tag needs", tags.Message, StringComparison.Ordinal);
        }

        [Theory]
        [InlineData(SandboxEc2DenialMessage.Bare)]
        [InlineData(SandboxEc2DenialMessage.Encoded)]
        public async Task EveryDenial_NamesTheAction_EvenWhenAwsTextDoesNot(SandboxEc2DenialMessage style)
        {
            _host.World.Ec2DenialMessage = style;
            Allow(("ssm:StartSession", Arn("instance", Bastion)));
            var ec2 = await Assert.ThrowsAsync<BastionToolsException>(() => _api.FindInstancesAsync(null, null, null, CancellationToken.None));
            Assert.Equal(ErrorIds.AwsAccessDenied, ec2.ErrorId);
            Assert.Equal(ErrorCategory.PermissionDenied, ec2.Category);
            Assert.StartsWith("AWS denied ec2:DescribeInstances", ec2.Message, StringComparison.Ordinal);
            Assert.Contains("You are not authorized to perform this operation.", ec2.Message, StringComparison.Ordinal);

            var document = await Assert.ThrowsAsync<BastionToolsException>(() => _api.StartSessionAsync(Bastion, "AWS-StartPortForwardingSessionToRemoteHost",
                new Dictionary<string, List<string>> { ["host"] = new() { "db.example.us-west-2.rds.amazonaws.com" } }, null, CancellationToken.None));
            Assert.Equal(ErrorIds.AwsAccessDenied, document.ErrorId);
            Assert.StartsWith("AWS denied ssm:StartSession on the instance " + Bastion + " and the document AWS-StartPortForwardingSessionToRemoteHost: User: arn:aws:iam::123456789012:user/operator is not authorized to perform: ssm:StartSession on resource: arn:aws:ssm:us-west-2::document/AWS-StartPortForwardingSessionToRemoteHost", document.Message, StringComparison.Ordinal);

            var terminate = await Assert.ThrowsAsync<BastionToolsException>(() => _api.TerminateSessionAsync("operator-0123456789abcdef0", CancellationToken.None));
            Assert.StartsWith("AWS denied ssm:TerminateSession on the session operator-0123456789abcdef0", terminate.Message, StringComparison.Ordinal);
            Assert.Contains("ssm:TerminateSession", terminate.RecommendedAction, StringComparison.Ordinal);
        }

        private async Task<PortForwardingSession> StartTunnel(TcpListener destination, string target = Bastion)
        {
            var request = new PortForwardingRequest { Target = target, RemotePort = ((IPEndPoint)destination.LocalEndpoint).Port, BindAddress = IPAddress.Loopback };
            var session = new PortForwardingSession(_api, request, new DataChannelOptions { ReconnectTimeout = TimeSpan.FromSeconds(60) });
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None);
            Assert.Equal(SessionState.Connected, session.State);
            return session;
        }

        [Fact(Timeout = SandboxTestSupport.TestTimeoutMs)]
        public async Task ResumeDenied_EndsTheSession_WithAwsAccessDenied_NamingResumeSession()
        {
            Allow(("ssm:StartSession", Arn("instance", Bastion)), ("ssm:StartSession", Arn("document", "AWS-StartPortForwardingSession")));
            var destination = new TcpListener(IPAddress.Loopback, 0);
            destination.Start();
            try
            {
                var session = await StartTunnel(destination);
                Assert.True(_host.Agent.Kill(session.SessionId!));
                await session.Completion.WaitAsync(TimeSpan.FromSeconds(50));
                Assert.Equal(SessionState.Failed, session.State);
                Assert.Equal(ErrorIds.AwsAccessDenied, session.ClosedErrorId);
                Assert.Contains("AWS denied ssm:ResumeSession on the session " + session.SessionId, session.ClosedReason, StringComparison.Ordinal);
                Assert.Contains(_host.Calls, c => c.Operation == "ResumeSession" && c.ErrorCode == "AccessDeniedException");
            }
            finally
            {
                destination.Stop();
            }
        }

        [Fact(Timeout = SandboxTestSupport.TestTimeoutMs)]
        public async Task TerminateDenied_WithAnAgentWithoutTheFlag_TheTunnelStillCloses_AndTheFailureIsKept()
        {
            Allow(("ssm:StartSession", Arn("instance", Ancient)), ("ssm:StartSession", Arn("document", "AWS-StartPortForwardingSession")));
            var destination = new TcpListener(IPAddress.Loopback, 0);
            destination.Start();
            try
            {
                var session = await StartTunnel(destination, Ancient);
                var local = session.LocalEndPoint!;
                await session.StopAsync();
                Assert.Equal(SessionState.Closed, session.State);
                var failure = Assert.IsType<BastionToolsException>(session.TerminateFailure);
                Assert.Equal(ErrorIds.AwsAccessDenied, failure.ErrorId);
                Assert.Equal(ErrorCategory.PermissionDenied, failure.Category);
                Assert.StartsWith("AWS denied ssm:TerminateSession on the session " + session.SessionId, failure.Message, StringComparison.Ordinal);
                Assert.True(_host.Sessions.TryGet(session.SessionId!, out var remote));
                Assert.NotEqual(SandboxSessionState.Terminated, remote.State);
                Assert.False(session.TerminatedByFlag);
                Assert.True(await LoopbackProbe.RefusedAsync(local.Address, local.Port));
            }
            finally
            {
                destination.Stop();
            }
        }

        [Theory(Timeout = SandboxTestSupport.TestTimeoutMs)]
        [InlineData(Bastion)]
        [InlineData("i-0a1b2c3d4e5f60002")]
        public async Task WithoutTerminateSession_ACurrentAgentIsEndedByTheTerminateSessionFlag(string target)
        {
            // As the official client on Ctrl-C (mux, and basic for agents after 2.3.722.0): Flag TerminateSession ends the
            // agent's plugin, and the session with it, without the TerminateSession call (and its IAM action).
            Allow(("ssm:StartSession", Arn("instance", target)), ("ssm:StartSession", Arn("document", "AWS-StartPortForwardingSession")));
            var destination = new TcpListener(IPAddress.Loopback, 0);
            destination.Start();
            try
            {
                var session = await StartTunnel(destination, target);
                await session.StopAsync();
                Assert.True(session.TerminatedByFlag);
                Assert.Null(session.TerminateFailure);
                Assert.Equal(SessionState.Closed, session.State);
                // The agent ends its side once it has handled the flag (it acknowledged it after handling it).
                Assert.True(_host.Sessions.TryGet(session.SessionId!, out var remote));
                var deadline = DateTime.UtcNow.AddSeconds(30);
                while (remote.State != SandboxSessionState.Terminated && DateTime.UtcNow < deadline) await Task.Delay(20);
                Assert.Equal(SandboxSessionState.Terminated, remote.State);
                Assert.DoesNotContain(_host.Calls, c => c.Operation == "TerminateSession");
            }
            finally
            {
                destination.Stop();
            }
        }
    }
}
