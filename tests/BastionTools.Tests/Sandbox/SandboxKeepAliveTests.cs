using System;
using System.Globalization;
using System.Linq;
using System.Net.Http;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>
    /// The sandbox agent's side of smux keepalive (by agent and client version, as amazon-ssm-agent's port_mux.go history
    /// has it) and Session Manager's idle session timeout. Timings are shortened through the options (the defaults are
    /// the real 10 s / 30 s and 20 minutes; Engine/KeepAliveTests has the test at the real keepalive timings).
    /// </summary>
    public sealed class SandboxKeepAliveTests
    {
        private const string Ours = "1.2.707.0";

        /// <summary>The default world plus one instance per agent version, i-0c0000000000000001 onwards.</summary>
        private static SandboxWorld World(params string[] agentVersions)
        {
            var world = SandboxWorld.CreateDefault();
            for (var i = 0; i < agentVersions.Length; i++)
            {
                world.AddInstance(new SandboxInstance
                {
                    InstanceId = Instance(i),
                    Name = "agent-" + agentVersions[i],
                    AgentVersion = agentVersions[i],
                    PrivateIpAddress = "10.0.2." + (10 + i).ToString(CultureInfo.InvariantCulture),
                });
            }
            return world;
        }

        private static string Instance(int index) => "i-0c" + (index + 1).ToString("D15", CultureInfo.InvariantCulture);

        /// <summary>
        /// A smux NOP every 50 ms until <paramref name="stop"/>, from a thread of its own: a busy test run starves the
        /// thread pool first, and a NOP held back past the agent's timeout would fail the test for the wrong reason.
        /// </summary>
        private static Task SendNops(AgentTestClient client, CancellationToken stop)
        {
            var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            var sender = new Thread(() =>
            {
                try
                {
                    while (!stop.IsCancellationRequested)
                    {
                        client.SmuxAsync(SmuxCommand.Nop, 0).GetAwaiter().GetResult();
                        Thread.Sleep(50);
                    }
                    done.TrySetResult(true);
                }
                catch (Exception ex)
                {
                    done.TrySetException(ex);
                }
            }) { IsBackground = true, Name = "keepalive NOPs" };
            sender.Start();
            return done.Task;
        }

        private static SandboxHost StartWithShortKeepAlive(SandboxWorld world)
        {
            var host = Start(world);
            host.Agent.Options.SmuxKeepAliveInterval = TimeSpan.FromMilliseconds(100);
            host.Agent.Options.SmuxKeepAliveTimeout = TimeSpan.FromMilliseconds(600);
            return host;
        }

        private static async Task<(AgentTestClient Client, StartSessionResponse Session)> ConnectAsync(SandboxHost host, int port, string client, string target)
        {
            var (c, s) = await SandboxAgentTests.ConnectPortAsync(host, port, client, target);
            c.MuxMode = true;
            await c.WaitUntilAsync(_ => host.Agent.PluginKind(s.SessionId) is "mux" or "basic", "the port plugin's mode");
            return (c, s);
        }

        private static ChannelClosedPayload? ChannelClosed(AgentTestClient c)
        {
            var m = c.Received.FirstOrDefault(x => x.MessageType == MessageTypes.ChannelClosed);
            return m == null ? null : SsmJson.Deserialize<ChannelClosedPayload>(m.Payload);
        }

        private static async Task<(int Status, string Body)> ControlAsync(SandboxHost host, HttpMethod method, string path, string? json = null)
        {
            using var http = new HttpClient();
            using var request = new HttpRequestMessage(method, new Uri(host.ControlEndpoint, path)) { Content = json == null ? null : new StringContent(json) };
            using var response = await http.SendAsync(request);
            return ((int)response.StatusCode, await response.Content.ReadAsStringAsync());
        }

        private static async Task EchoAsync(AgentTestClient client, uint stream, string text)
        {
            await client.SmuxAsync(SmuxCommand.Syn, stream);
            await client.SmuxAsync(SmuxCommand.Psh, stream, Encoding.UTF8.GetBytes(text));
            await client.WaitUntilAsync(c => Encoding.UTF8.GetString(c.StreamBytes(stream)) == text, "echo on stream " + stream);
        }

        // ---- smux keepalive by version -------------------------------------------------------------------------------

        [Theory(Timeout = TestTimeoutMs)]
        [InlineData("3.0.196.0", Ours, "basic", null)]       // the last agent without mux
        [InlineData("3.0.222.0", Ours, "mux", true)]         // the first with mux: smux DefaultConfig, keepalive on
        [InlineData("3.1.1374.0", Ours, "mux", true)]        // the last with keepalive on for every client
        [InlineData("3.1.1446.0", "1.2.0.0", "mux", false)]  // 5bdad830: off for every client, even an old one
        [InlineData("3.1.1511.0", "1.2.0.0", "mux", false)]
        [InlineData("3.1.1575.0", "1.2.331.0", "mux", true)] // 4426b37d: on again for clients up to 1.2.331.0
        [InlineData("3.1.1575.0", "1.2.332.0", "mux", false)]
        public async Task SmuxKeepAlive_FollowsTheAgentAndClientVersions_AndAnIdleClientIsClosedWhereItIsOn(string agent, string client, string mode, bool? keepAlive)
        {
            await using var host = StartWithShortKeepAlive(World(agent));
            using var echo = new EchoServer();
            var (c, session) = await ConnectAsync(host, echo.Port, client, Instance(0));
            await using var _ = c;
            Assert.Equal(mode, host.Agent.PluginKind(session.SessionId));
            Assert.Equal(keepAlive, host.Agent.SmuxKeepAlive(session.SessionId));
            if (keepAlive == true)
            {
                // The client sends nothing: the agent pings, then closes the mux session, which ends the session.
                var closed = await c.WaitForAsync(ChannelClosed, "channel_closed after the smux keepalive timeout");
                Assert.Equal(session.SessionId, closed.SessionId);
                var counters = host.Agent.Counters(session.SessionId)!;
                Assert.Equal(1, counters.SmuxKeepAliveCloses);
                Assert.True(counters.SmuxNopsSent >= 1);
                // A NOP written to the smux output can still be there when the session closes (the agent's output is a
                // buffered socket to transferDataToMgs): CI saw channel_closed with none delivered after a stalled pump.
                // Those that arrive are on stream 0; that they do arrive is Mux_OldClient_GetsSmuxKeepAliveNops (30 s timeout).
                Assert.All(c.SmuxFrames, f =>
                {
                    Assert.Equal(SmuxCommand.Nop, f.Command);
                    Assert.Equal(0u, f.StreamId);
                });
                Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
                Assert.Equal(SandboxSessionState.Terminated, s.State);
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AnAgentWithoutKeepAlive_NeitherPingsNorCloses_WhileAnOldAgentClosesTheSameIdleSession()
        {
            await using var host = StartWithShortKeepAlive(World("3.1.1446.0", "3.1.1374.0"));
            using var echo = new EchoServer();
            // The agent without keepalive first: by the time the old agent closes its idle session, this one has been
            // idle at least as long.
            var (quiet, quietSession) = await ConnectAsync(host, echo.Port, Ours, Instance(0));
            await using var __ = quiet;
            var (old, oldSession) = await ConnectAsync(host, echo.Port, Ours, Instance(1));
            await using var ___ = old;

            await old.WaitForAsync(ChannelClosed, "the old agent's channel_closed");
            Assert.Equal(1, host.Agent.Counters(oldSession.SessionId)!.SmuxKeepAliveCloses);

            var counters = host.Agent.Counters(quietSession.SessionId)!;
            Assert.Null(ChannelClosed(quiet));
            Assert.Equal(0, counters.SmuxNopsSent);
            Assert.Equal(0, counters.SmuxKeepAliveCloses);
            Assert.DoesNotContain(quiet.SmuxFrames, f => f.Command == SmuxCommand.Nop);
            await EchoAsync(quiet, 3, "still here");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task AnOldAgent_KeepsAnIdleSessionWhileTheClientSendsNops_AndClosesItOnceTheyStop()
        {
            await using var host = StartWithShortKeepAlive(World("3.1.1374.0"));
            // A longer timeout than the other tests' (still 20 NOP periods short of the real 30 s): the NOPs come from a
            // test thread, which a loaded machine may hold back for a while; the agent's rule is what is under test.
            host.Agent.Options.SmuxKeepAliveTimeout = TimeSpan.FromSeconds(2);
            using var echo = new EchoServer();
            var (c, session) = await ConnectAsync(host, echo.Port, Ours, Instance(0));
            await using var _ = c;
            var counters = host.Agent.Counters(session.SessionId)!;
            using var stop = new CancellationTokenSource();
            var nops = SendNops(c, stop.Token);
            // Three timeout checks passed with a NOP in each period: the session is kept.
            await c.WaitUntilAsync(_ => counters.SmuxKeepAliveChecks >= 3, "three keepalive checks");
            Assert.Null(ChannelClosed(c));
            Assert.True(counters.SmuxNopsReceived >= 3);
            await EchoAsync(c, 3, "kept");
            stop.Cancel();
            await nops;
            await c.WaitForAsync(ChannelClosed, "channel_closed once the NOPs stopped");
            Assert.Equal(1, counters.SmuxKeepAliveCloses);
        }

        // ---- the idle session timeout -------------------------------------------------------------------------------

        [Fact(Timeout = TestTimeoutMs)]
        public async Task IdleSessionTimeout_EndsASessionWithoutStreamData_WithChannelClosed_AndResumeGetsNoToken()
        {
            await using var host = Start();
            host.Agent.Options.IdleSessionTimeout = TimeSpan.FromMilliseconds(500);
            using var echo = new EchoServer();
            var (c, session) = await ConnectAsync(host, echo.Port, Ours, SandboxAgentTests.Bastion);
            await using var _ = c;
            var closed = await c.WaitForAsync(ChannelClosed, "channel_closed from the idle session timeout");
            Assert.Equal(SandboxAgentOptions.IdleTimeoutOutput, closed.Output);
            Assert.Equal(session.SessionId, closed.SessionId);
            await c.WaitUntilAsync(x => x.CloseStatus != null, "close");
            Assert.Equal(WebSocketCloseStatus.NormalClosure, c.CloseStatus);
            Assert.Equal(1, host.Agent.Counters(session.SessionId)!.IdleTimeouts);
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.Equal(SandboxSessionState.TimedOut, s.State);
            using var ssm = SsmClient(host);
            var resumed = await ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = session.SessionId });
            Assert.Null(resumed.TokenValue);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task IdleSessionTimeout_CountsStreamDataBothWays_NotAcknowledgements()
        {
            // Client input: a NOP every 50 ms keeps a session with a 2 s idle timeout for three times that long.
            await using var host = Start(World("3.1.1374.0"));
            host.Agent.Options.IdleSessionTimeout = TimeSpan.FromSeconds(2);
            // The old agent's own keepalive NOPs (agent output), with a keepalive timeout that never fires here.
            host.Agent.Options.SmuxKeepAliveInterval = TimeSpan.FromMilliseconds(100);
            host.Agent.Options.SmuxKeepAliveTimeout = TimeSpan.FromMinutes(10);
            using var echo = new EchoServer();

            var (input, inputSession) = await ConnectAsync(host, echo.Port, Ours, SandboxAgentTests.Bastion);
            await using var _ = input;
            var (output, outputSession) = await ConnectAsync(host, echo.Port, Ours, Instance(0));
            await using var __ = output;
            using var stop = new CancellationTokenSource();
            var nops = SendNops(input, stop.Token);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            // The idle one (no keepalive, its client only acknowledges) is the control: it times out.
            var (idle, idleSession) = await ConnectAsync(host, echo.Port, Ours, SandboxAgentTests.Bastion);
            await using var ___ = idle;
            await idle.WaitForAsync(ChannelClosed, "the idle session's channel_closed");
            await input.WaitUntilAsync(_ => clock.Elapsed >= TimeSpan.FromSeconds(6), "three idle timeouts' worth of time");

            Assert.Null(ChannelClosed(input));
            Assert.Null(ChannelClosed(output));
            Assert.True(host.Agent.Counters(outputSession.SessionId)!.SmuxNopsSent >= 10);
            Assert.True(host.Agent.Counters(outputSession.SessionId)!.AcksReceived >= 10, "the client acknowledged the agent's NOPs");
            Assert.Equal(1, host.Agent.Counters(idleSession.SessionId)!.IdleTimeouts);
            Assert.Equal(0, host.Agent.Counters(inputSession.SessionId)!.IdleTimeouts);

            stop.Cancel();
            await nops;
            var closed = await input.WaitForAsync(ChannelClosed, "channel_closed once the client's NOPs stopped");
            Assert.Equal(SandboxAgentOptions.IdleTimeoutOutput, closed.Output);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ControlEndpoint_SetsKeepAliveAndIdleTimings_AndRestartAgentEndsTheInstancesSessions()
        {
            await using var host = Start();
            var (status, body) = await ControlAsync(host, HttpMethod.Put, "agent", "{\"smuxKeepAliveIntervalMs\":200,\"smuxKeepAliveTimeoutMs\":900,\"idleSessionTimeoutMs\":3000}");
            Assert.Equal(200, status);
            Assert.Contains("\"idleSessionTimeoutMs\":3000", body);
            Assert.Equal(TimeSpan.FromMilliseconds(200), host.Agent.Options.SmuxKeepAliveInterval);
            Assert.Equal(TimeSpan.FromMilliseconds(900), host.Agent.Options.SmuxKeepAliveTimeout);
            Assert.Equal(TimeSpan.FromSeconds(3), host.Agent.Options.IdleSessionTimeout);
            Assert.Equal(400, (await ControlAsync(host, HttpMethod.Put, "agent", "{\"smuxKeepAliveIntervalMs\":1000,\"smuxKeepAliveTimeoutMs\":500}")).Status);

            using var echo = new EchoServer();
            var (c, session) = await ConnectAsync(host, echo.Port, Ours, SandboxAgentTests.Bastion);
            await using var _ = c;
            Assert.Equal(404, (await ControlAsync(host, HttpMethod.Post, "instances/i-0000000000000dead/restart-agent")).Status);
            var restart = await ControlAsync(host, HttpMethod.Post, "instances/" + SandboxAgentTests.Bastion + "/restart-agent");
            Assert.Equal(200, restart.Status);
            Assert.Contains("\"endedSessions\":1", restart.Body);
            await c.WaitForAsync(ChannelClosed, "channel_closed after the agent restart");
            Assert.True(host.Sessions.TryGet(session.SessionId, out var s));
            Assert.Equal(SandboxSessionState.Terminated, s.State);
        }
    }
}
