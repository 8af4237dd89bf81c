using System;
using System.IO;
using System.Linq;
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
    /// Basic port forwarding carries one connection at a time as raw bytes, with nothing that says which connection a
    /// byte belongs to. The agent (port_basic.go) closes its destination connection when DisconnectToPort arrives, but
    /// what it read before is still on its way; and it dials the next destination connection only on the client's
    /// first bytes. So what arrives before a local connection has sent anything is the previous connection's, and
    /// must not be written to it. End to end with the sandbox agent: the next connection gets its own answer, not the
    /// rest of the previous one's flood. (Over loopback the late bytes mostly arrive before the next connection's turn;
    /// PortForwarderTests.Basic_LateOutputOfAClosedConnection_IsDropped_NotWrittenToTheNextConnection is the
    /// deterministic check of the rule.)
    /// </summary>
    public sealed class BasicModeLateBytesTests : IDisposable
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private const int Flood = 512 * 1024;
        private readonly SandboxHost _host;
        private readonly AwsApi _api;

        public BasicModeLateBytesTests()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            _host = SandboxTestSupport.Start();
            _host.Agent.Options.PortDocumentType = null; // no "type" in the handshake: a basic session (port.go GetSession)
            var c = _host.World.Credentials[0];
            _api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), _host.World.Region, _host.SsmEndpoint.ToString());
        }

        public void Dispose()
        {
            _api.Dispose();
            _host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        /// <summary>Waits for one step; a step that does not come fails naming itself and what the tunnel said, not as a bare test timeout.</summary>
        private async Task Stage(Task step, string what, PortForwardingSession session)
        {
            if (await Task.WhenAny(step, Task.Delay(TimeSpan.FromSeconds(40))) != step)
            {
                var counters = session.SessionId == null ? null : _host.Agent.Counters(session.SessionId);
                throw new TimeoutException("Waited 40 s for " + what + ". Tunnel events: " + string.Join(" | ", session.Events.Snapshot()) +
                    (counters == null ? "" : $". Agent: received {counters.MessagesReceived}, sent {counters.MessagesSent}, acks received {counters.AcksReceived}"));
            }
            await step;
        }

        private static async Task WaitUntilAsync(Func<bool> condition)
        {
            while (!condition()) await Task.Delay(5);
        }

        /// <summary>
        /// The agent dials the destination when the session starts and refuses input until that dial has succeeded (port.go
        /// InputStreamMessageHandler: not acknowledged, ErrHandlerNotReady). The tunnel resends it, and it reaches the first
        /// destination connection: no second one is dialled for it.
        /// </summary>
        [Fact(Timeout = SandboxTestSupport.TestTimeoutMs)]
        public async Task InputBeforeTheAgentsFirstDial_IsResent_AndReachesTheFirstConnection()
        {
            using var destination = new TcpListener(IPAddress.Loopback, 0);
            destination.Start();
            var dial = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _host.Agent.Options.BasicInitialDialGate = () => dial.Task;
            var session = new PortForwardingSession(_api, new PortForwardingRequest { Target = Bastion, RemotePort = ((IPEndPoint)destination.LocalEndpoint).Port }, new DataChannelOptions());
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None);
            try
            {
                Assert.Equal(PortForwardingMode.Basic, session.Mode);
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, session.LocalEndPoint!.Port);
                var c = client.GetStream();
                await c.WriteAsync(Encoding.ASCII.GetBytes("ping"));
                await Stage(WaitUntilAsync(() => _host.Agent.Counters(session.SessionId!) is { InputNotReady: >= 1 }),
                    "the agent refusing the input while its first dial waits", session);
                dial.SetResult();

                var accept = destination.AcceptTcpClientAsync();
                await Stage(accept, "the agent's first destination connection", session);
                using var first = await accept;
                var got = new byte[4];
                await Stage(first.GetStream().ReadExactlyAsync(got).AsTask(), "the resent input at the destination", session);
                Assert.Equal("ping", Encoding.ASCII.GetString(got));
                await first.GetStream().WriteAsync(Encoding.ASCII.GetBytes("pong"));
                var answer = new byte[4];
                await Stage(c.ReadExactlyAsync(answer).AsTask(), "the answer through the tunnel", session);
                Assert.Equal("pong", Encoding.ASCII.GetString(answer));
                Assert.False(destination.Pending(), "the agent dialled a second destination connection");
                Assert.True(session.Channel!.Retransmissions >= 1);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        [Fact(Timeout = SandboxTestSupport.TestTimeoutMs)]
        public async Task BytesOfAClosedConnection_AreNotWrittenToTheNextOne()
        {
            // The destination: its first connection floods 'A's, its second answers "SECOND".
            using var destination = new TcpListener(IPAddress.Loopback, 0);
            destination.Start();
            var firstClosedByAgent = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            var server = Task.Run(async () =>
            {
                using (var first = await destination.AcceptTcpClientAsync())
                {
                    var s = first.GetStream();
                    await s.ReadExactlyAsync(new byte[1]);
                    var chunk = new byte[16 * 1024];
                    Array.Fill(chunk, (byte)'A');
                    try
                    {
                        for (var sent = 0; sent < Flood; sent += chunk.Length) await s.WriteAsync(chunk);
                        // Until the agent closes it (DisconnectToPort).
                        while (await s.ReadAsync(new byte[64]) > 0)
                        {
                        }
                    }
                    catch (IOException)
                    {
                    }
                    firstClosedByAgent.TrySetResult(true);
                }
                using var second = await destination.AcceptTcpClientAsync();
                var s2 = second.GetStream();
                await s2.ReadExactlyAsync(new byte[1]);
                await s2.WriteAsync(Encoding.ASCII.GetBytes("SECOND"));
                _ = await s2.ReadAsync(new byte[1]); // until the session stops
            });

            var session = new PortForwardingSession(_api, new PortForwardingRequest { Target = Bastion, RemotePort = ((IPEndPoint)destination.LocalEndpoint).Port }, new DataChannelOptions());
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None);
            try
            {
                Assert.Equal(PortForwardingMode.Basic, session.Mode);
                var port = session.LocalEndPoint!.Port;
                using (var first = new TcpClient())
                {
                    await first.ConnectAsync(IPAddress.Loopback, port);
                    var s = first.GetStream();
                    await s.WriteAsync(Encoding.ASCII.GetBytes("1"));
                    // Some of the flood, then close with the rest on its way.
                    var got = new byte[4096];
                    await Stage(s.ReadExactlyAsync(got).AsTask(), "the start of the flood on the first connection", session);
                    Assert.All(got, b => Assert.Equal((byte)'A', b));
                }
                using var next = new TcpClient();
                await next.ConnectAsync(IPAddress.Loopback, port);
                var n = next.GetStream();
                // The agent has closed the first destination connection: what it had read is sent (or on its way).
                await Stage(firstClosedByAgent.Task, "the agent closing the first destination connection (DisconnectToPort)", session);
                // ... and all of it has reached the tunnel before the next connection's first bytes go out. Over loopback it
                // mostly has by now, but on a loaded machine the tunnel may still be reading the last of the flood: those
                // bytes would come after the next connection started, and nothing tells them apart (the rule drops only
                // what comes before). Over a real network that is the usual case: basic mode is for one connection at a
                // time. The rule itself is checked deterministically in PortForwarderTests.
                await Stage(WaitUntilAsync(() =>
                {
                    var c = _host.Agent.Counters(session.SessionId!);
                    return c != null && c.DestinationReadsEnded >= 1 && session.Channel!.PayloadBytesReceived == c.StreamBytesCreated;
                }), "the tunnel receiving all the agent sent of the first connection", session);
                await n.WriteAsync(Encoding.ASCII.GetBytes("2"));
                var answer = new byte[6];
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await Stage(n.ReadExactlyAsync(answer, timeout.Token).AsTask(), "the second connection's answer", session);
                Assert.Equal("SECOND", Encoding.ASCII.GetString(answer));
            }
            finally
            {
                await session.StopAsync();
            }
        }
    }
}
