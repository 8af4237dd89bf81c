using System;
using System.Diagnostics;
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
using Xunit.Abstractions;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// The engine's keepalive against the sandbox agent: NOPs for the agents that close idle multiplexed sessions (and
    /// none for the others), nothing against the idle session timeout unless asked, and the end a timeout brings. Each
    /// test has a sandbox of its own (the options it shortens are the host's).
    /// </summary>
    public sealed class KeepAliveTests
    {
        private const string OldAgent = "i-0c000000000000001";   // 3.1.1374.0: smux keepalive on for every client
        private const string NoKeepAlive = "i-0c000000000000002"; // 3.1.1446.0: off for every client
        private readonly ITestOutputHelper _output;

        public KeepAliveTests(ITestOutputHelper output) => _output = output;

        private static SandboxHost StartHost()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            var world = SandboxWorld.CreateDefault();
            world.AddInstance(new SandboxInstance { InstanceId = OldAgent, Name = "old-agent", AgentVersion = "3.1.1374.0", PrivateIpAddress = "10.0.2.10" });
            world.AddInstance(new SandboxInstance { InstanceId = NoKeepAlive, Name = "agent-3-1-1446", AgentVersion = "3.1.1446.0", PrivateIpAddress = "10.0.2.11" });
            var host = new SandboxHost(world);
            host.Start();
            return host;
        }

        private static AwsApi Api(SandboxHost host)
        {
            var c = host.World.Credentials[0];
            return new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), host.World.Region, host.SsmEndpoint.ToString());
        }

        private void Log(string line)
        {
            try
            {
                _output.WriteLine(line);
            }
            catch (InvalidOperationException)
            {
                // The test has ended.
            }
        }

        private async Task<PortForwardingSession> StartAsync(AwsApi api, string target, int port, DataChannelOptions? options = null)
        {
            var session = new PortForwardingSession(api, new PortForwardingRequest { Target = target, RemoteHost = "localhost", RemotePort = port }, options ?? new DataChannelOptions());
            session.Events.Written += line => Log(target + ": " + line);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), cts.Token);
            return session;
        }

        /// <summary>One round trip through the tunnel to the echo server.</summary>
        private static async Task EchoAsync(PortForwardingSession session, string text) => Assert.Equal(text, await TunnelEcho.RoundTripAsync(session, text));

        private static async Task WaitUntilAsync(Func<bool> condition, string what, TimeSpan? limit = null)
        {
            var clock = Stopwatch.StartNew();
            while (!condition())
            {
                if (clock.Elapsed > (limit ?? TimeSpan.FromSeconds(60))) throw new TimeoutException("Timed out waiting for " + what + ".");
                await Task.Delay(20);
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task AnAgentThatClosesIdleMuxSessions_GetsNops_AndKeepsTheIdleTunnel_WhileANewerAgentGetsNone()
        {
            await using var host = StartHost();
            host.Agent.Options.SmuxKeepAliveInterval = TimeSpan.FromMilliseconds(100);
            // 20 NOP periods per timeout check (the real ones are 10 s and 30 s): the client's NOPs come from a timer that a
            // loaded test run may hold back for a second; the version rule is what is under test, not the timer's margin.
            host.Agent.Options.SmuxKeepAliveTimeout = TimeSpan.FromMilliseconds(3000);
            using var api = Api(host);
            using var echo = new EchoServer();
            var options = new DataChannelOptions { AgentKeepAliveInterval = TimeSpan.FromMilliseconds(150) };
            // The newer agent first: it has been idle at least as long as the old one when the checks below pass.
            var quiet = await StartAsync(api, NoKeepAlive, echo.Port, options);
            var old = await StartAsync(api, OldAgent, echo.Port, options);
            try
            {
                Assert.True(host.Agent.SmuxKeepAlive(old.SessionId!));
                Assert.False(host.Agent.SmuxKeepAlive(quiet.SessionId!));
                var oldCounters = host.Agent.Counters(old.SessionId!)!;
                // Two of the agent's timeout checks passed with nothing but the client's NOPs arriving.
                await WaitUntilAsync(() => oldCounters.SmuxKeepAliveChecks >= 2 || old.Completion.IsCompleted, "two keepalive checks on the old agent");
                Assert.Equal(SessionState.Connected, old.State);
                Assert.Equal(0, oldCounters.SmuxKeepAliveCloses);
                var oldForwarder = (MuxPortForwarder)old.Forwarder!;
                Assert.Equal(options.AgentKeepAliveInterval, oldForwarder.KeepAliveInterval);
                Assert.True(oldForwarder.NopsSent >= 3);
                Assert.True(oldCounters.SmuxNopsReceived >= 3);

                var quietForwarder = (MuxPortForwarder)quiet.Forwarder!;
                Assert.Equal(TimeSpan.Zero, quietForwarder.KeepAliveInterval);
                Assert.Equal(0, quietForwarder.NopsSent);
                Assert.Equal(0, host.Agent.Counters(quiet.SessionId!)!.SmuxNopsReceived);
                Assert.Equal(SessionState.Connected, quiet.State);

                await EchoAsync(old, "old agent");
                await EchoAsync(quiet, "newer agent");
            }
            finally
            {
                await old.StopAsync();
                await quiet.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task WithoutTheClientsNops_AnOldAgentClosesTheIdleTunnel_AndTheSessionSaysSo()
        {
            await using var host = StartHost();
            host.Agent.Options.SmuxKeepAliveInterval = TimeSpan.FromMilliseconds(100);
            host.Agent.Options.SmuxKeepAliveTimeout = TimeSpan.FromMilliseconds(600);
            using var api = Api(host);
            using var echo = new EchoServer();
            // What this module did before: no NOP for minutes (here: never).
            var session = await StartAsync(api, OldAgent, echo.Port, new DataChannelOptions { AgentKeepAliveInterval = TimeSpan.Zero });
            try
            {
                await WaitUntilAsync(() => session.Completion.IsCompleted, "the session to end");
                Assert.Equal(1, host.Agent.Counters(session.SessionId!)!.SmuxKeepAliveCloses);
                Assert.Equal(SessionState.Closed, session.State);
                Assert.Equal(ErrorIds.BastionSessionTerminated, session.ClosedErrorId);
                Assert.Contains("Exiting session with sessionId: " + session.SessionId, session.ClosedReason);
            }
            finally
            {
                await session.StopAsync();
            }
        }

        /// <summary>
        /// The real timings (smux DefaultConfig: NOP every 10 s, closed after 30 s without a frame), both sides in one
        /// test so the half minute is waited once: a client that sends nothing loses its session to an old agent at the
        /// agent's first check, while the engine's session, idle as long, passes that check on its NOPs alone.
        /// </summary>
        [Fact(Timeout = 180_000)]
        public async Task AtTheAgentsRealTimings_AnIdleEngineTunnelOutlivesTheThirtySecondCheck_ThatEndsAClientWithoutNops()
        {
            await using var host = StartHost();
            Assert.Equal(TimeSpan.FromSeconds(10), host.Agent.Options.SmuxKeepAliveInterval);
            Assert.Equal(TimeSpan.FromSeconds(30), host.Agent.Options.SmuxKeepAliveTimeout);
            using var api = Api(host);
            using var echo = new EchoServer();
            var tunnel = await StartAsync(api, OldAgent, echo.Port);
            try
            {
                // The control: a bare client (only acknowledgements, no smux frame), started after the tunnel.
                var (bare, bareSession) = await SandboxAgentTests.ConnectPortAsync(host, echo.Port, "1.2.707.0", OldAgent);
                await using var _ = bare;
                var tunnelCounters = host.Agent.Counters(tunnel.SessionId!)!;
                await WaitUntilAsync(() => host.Agent.Counters(bareSession.SessionId)!.SmuxKeepAliveCloses == 1 && (tunnelCounters.SmuxKeepAliveChecks >= 1 || tunnel.Completion.IsCompleted),
                    "the bare client's session to be closed and the tunnel's first check", TimeSpan.FromSeconds(150));
                Assert.Equal(SessionState.Connected, tunnel.State);
                Assert.Equal(0, tunnelCounters.SmuxKeepAliveCloses);
                Assert.True(((MuxPortForwarder)tunnel.Forwarder!).NopsSent >= 2);
                await EchoAsync(tunnel, "after half a minute idle");
            }
            finally
            {
                await tunnel.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task TheIdleSessionTimeout_EndsAnIdleTunnel_WithBastionSessionTimedOut_UnlessKeepAliveWasAsked()
        {
            await using var host = StartHost();
            // 20 NOP periods per timeout (a loaded run may hold the client's timer back for a second).
            var idleTimeout = TimeSpan.FromSeconds(4);
            host.Agent.Options.IdleSessionTimeout = idleTimeout;
            using var api = Api(host);
            using var echo = new EchoServer();
            var kept = await StartAsync(api, SandboxAgentTests.Bastion, echo.Port, new DataChannelOptions { IdleKeepAlive = TimeSpan.FromMilliseconds(200) });
            var clock = Stopwatch.StartNew();
            var plain = await StartAsync(api, SandboxAgentTests.Bastion, echo.Port);
            try
            {
                Assert.Equal(TimeSpan.Zero, ((MuxPortForwarder)plain.Forwarder!).KeepAliveInterval);
                await WaitUntilAsync(() => plain.Completion.IsCompleted, "the plain tunnel to time out");
                Assert.Equal(SessionState.Closed, plain.State);
                Assert.Equal(ErrorIds.BastionSessionTimedOut, plain.ClosedErrorId);
                Assert.Contains("timed out due to inactivity", plain.ClosedReason);
                Assert.True(plain.EndedOnItsOwn);
                Assert.Equal(0, ((MuxPortForwarder)plain.Forwarder!).NopsSent);
                Assert.True(await LoopbackProbe.RefusedAsync(IPAddress.Loopback, plain.LocalEndPoint!.Port));

                // The kept one, idle but for its NOPs, lives through two timeouts' worth of time.
                await WaitUntilAsync(() => clock.Elapsed >= 2 * idleTimeout, "two idle timeouts' worth of time");
                Assert.Equal(SessionState.Connected, kept.State);
                Assert.Null(kept.ClosedErrorId);
                Assert.Equal(0, host.Agent.Counters(kept.SessionId!)!.IdleTimeouts);
                Assert.True(((MuxPortForwarder)kept.Forwarder!).NopsSent >= 5);
                await EchoAsync(kept, "kept alive");
            }
            finally
            {
                await kept.StopAsync();
                await plain.StopAsync();
            }
        }

        [Fact(Timeout = 120_000)]
        public async Task AnAgentRestart_EndsTheSessionAsTerminated()
        {
            await using var host = StartHost();
            using var api = Api(host);
            using var echo = new EchoServer();
            var session = await StartAsync(api, SandboxAgentTests.Bastion, echo.Port);
            try
            {
                Assert.Equal(1, host.Agent.RestartAgent(SandboxAgentTests.Bastion));
                await WaitUntilAsync(() => session.Completion.IsCompleted, "the session to end");
                Assert.Equal(ErrorIds.BastionSessionTerminated, session.ClosedErrorId);
                Assert.Equal(SessionState.Closed, session.State);
                Assert.StartsWith("The service closed the session: Exiting session", session.ClosedReason, StringComparison.Ordinal);
            }
            finally
            {
                await session.StopAsync();
            }
        }
    }
}
