using System;
using System.Net;
using System.Net.Sockets;
using System.Text;
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
    /// The port session's mode follows the handshake's "type" as the agent decides it (port.go GetSession): smux only for
    /// LocalPortForwarding; a session whose properties lack the type is a basic session on the agent, and must be one here.
    /// </summary>
    public sealed class PortSessionTypeTests : IDisposable
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private readonly SandboxHost _host;
        private readonly AwsApi _api;
        private readonly EchoServer _echo = new();

        public PortSessionTypeTests()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            _host = SandboxTestSupport.Start();
            var c = _host.World.Credentials[0];
            _api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), _host.World.Region, _host.SsmEndpoint.ToString());
        }

        public void Dispose()
        {
            _echo.Dispose();
            _api.Dispose();
            _host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        private static Task<string> EchoThroughAsync(PortForwardingSession session, string text) => TunnelEcho.RoundTripAsync(session, text);

        [Theory(Timeout = SandboxTestSupport.TestTimeoutMs)]
        [InlineData("LocalPortForwarding", PortForwardingMode.Multiplexed)]
        [InlineData(null, PortForwardingMode.Basic)]
        public async Task TheModeFollowsTheSessionType_AndTheTunnelCarriesData(string? type, PortForwardingMode expected)
        {
            _host.Agent.Options.PortDocumentType = type;
            var session = new PortForwardingSession(_api, new PortForwardingRequest { Target = Bastion, RemotePort = _echo.Port }, new DataChannelOptions());
            try
            {
                await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None);
                Assert.Equal(expected, session.Mode);
                Assert.Equal(expected == PortForwardingMode.Multiplexed ? "mux" : "basic", _host.Agent.PluginKind(session.SessionId!));
                Assert.Equal("through the tunnel", await EchoThroughAsync(session, "through the tunnel"));
            }
            finally
            {
                await session.StopAsync();
            }
        }
    }
}
