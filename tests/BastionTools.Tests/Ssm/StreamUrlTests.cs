using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The data channel carries the session token (OpenDataChannel) and, for port forwarding, the database's bytes: a
    /// StreamUrl must be wss://, except to a loopback address (the sandbox, a local test double).
    /// </summary>
    public sealed class StreamUrlTests
    {
        [Theory]
        [InlineData("wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe")]
        [InlineData("WSS://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1")]
        [InlineData("wss://vpce-0123.ssmmessages.eu-west-1.vpce.amazonaws.com/v1/data-channel/s-1")]
        [InlineData("ws://127.0.0.1:5000/streams/s-1")]
        [InlineData("ws://127.8.9.10:5000/streams/s-1")]
        [InlineData("ws://[::1]:5000/streams/s-1")]
        public void Accepted(string url)
        {
            var endpoint = new StreamEndpoint("s-1", new Uri(url), "token");
            Assert.Equal(new Uri(url), endpoint.StreamUrl);
        }

        [Theory]
        [InlineData("ws://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1")]
        [InlineData("ws://10.0.0.5:5000/streams/s-1")]
        [InlineData("ws://128.0.0.1/streams/s-1")]
        [InlineData("ws://localhost:5000/streams/s-1")]
        [InlineData("ws://127.0.0.1.example.com/streams/s-1")]
        [InlineData("ws://[::ffff:10.0.0.5]:5000/streams/s-1")]
        [InlineData("http://127.0.0.1:5000/streams/s-1")]
        [InlineData("https://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1")]
        [InlineData("ftp://127.0.0.1/streams/s-1")]
        [InlineData("file:///tmp/streams")]
        public void Refused_WithSecurityError(string url)
        {
            var ex = Assert.Throws<BastionToolsException>(() => new StreamEndpoint("s-1", new Uri(url), "secret-token-value"));
            Assert.Equal(ErrorIds.StreamUrlInsecure, ex.ErrorId);
            Assert.Equal(System.Management.Automation.ErrorCategory.SecurityError, ex.Category);
            Assert.DoesNotContain("secret-token-value", ex.Message);
        }

        /// <summary>
        /// The service hands out a plain ws:// StreamUrl to a host that is not loopback: StartSession fails with
        /// StreamUrlInsecure before any WebSocket is opened, and the session it started is terminated.
        /// </summary>
        [Fact(Timeout = 60_000)]
        public async Task PlainWsToANonLoopbackHost_FromStartSession_IsRefused_AndTheSessionTerminated()
        {
            await using var host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions { StreamUrlBaseOverride = "ws://ssmmessages.sandbox.invalid/streams" });
            host.Start();
            var c = host.World.Credentials[0];
            using var api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), host.World.Region, host.SsmEndpoint.ToString());
            var parameters = new Dictionary<string, List<string>> { ["portNumber"] = new() { "5432" }, ["host"] = new() { "db.example.us-west-2.rds.amazonaws.com" } };
            var ex = await Assert.ThrowsAsync<BastionToolsException>(() =>
                api.StartSessionAsync("i-0a1b2c3d4e5f60001", "AWS-StartPortForwardingSessionToRemoteHost", parameters, null, CancellationToken.None));
            Assert.Equal(ErrorIds.StreamUrlInsecure, ex.ErrorId);
            Assert.Contains("ssmmessages.sandbox.invalid", ex.Message);
            var session = Assert.Single(host.Sessions.Snapshot());
            Assert.Equal(SandboxSessionState.Terminated, session.State);
            Assert.Contains(host.Calls, call => call.Operation == "TerminateSession");
        }
    }
}
