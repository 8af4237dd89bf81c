using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The agent versions that run smux keepalive (amazon-ssm-agent port_mux.go / port.go history), each boundary from
    /// both sides: mux from 3.0.222.0 with keepalive on; off from 3.1.1446.0 (commit 5bdad830); from 3.1.1575.0 (commit
    /// 4426b37d) off only for clients above 1.2.331.0.
    /// </summary>
    public sealed class SmuxKeepAliveTests
    {
        private const string Ours = "1.2.707.0";

        [Theory]
        [InlineData("3.0.222.0", Ours, true)]
        [InlineData("3.0.1479.0", Ours, true)]
        [InlineData("3.1.1374.0", Ours, true)]
        [InlineData("3.1.1445.99", Ours, true)]
        [InlineData("3.1.1446.0", Ours, false)]
        [InlineData("3.1.1446.0", "1.2.0.0", false)]
        [InlineData("3.1.1511.0", "1.2.0.0", false)]
        [InlineData("3.1.1574.0", "1.2.0.0", false)]
        [InlineData("3.1.1575.0", "1.2.331.0", true)]
        [InlineData("3.1.1575.0", "1.2.332.0", false)]
        [InlineData("3.1.1575.0", Ours, false)]
        [InlineData("3.3.2299.0", "1.2.331.0", true)]
        [InlineData("3.3.2299.0", Ours, false)]
        public void AgentRequiresKeepAlive_FollowsTheAgentsHistory(string agent, string client, bool expected)
        {
            Assert.Equal(expected, SmuxKeepAlive.AgentRequiresKeepAlive(agent, client));
        }

        [Theory]
        [InlineData(null)]
        [InlineData("")]
        [InlineData("not-a-version")]
        public void AnUnreadableAgentVersion_IsNotTakenForAnOldAgent(string? agent)
        {
            Assert.False(SmuxKeepAlive.AgentRequiresKeepAlive(agent, Ours));
        }

        [Fact]
        public void TheTimingsAreSmuxDefaultConfig()
        {
            Assert.Equal(10, SmuxKeepAlive.Interval.TotalSeconds);
            Assert.Equal(30, SmuxKeepAlive.AgentTimeout.TotalSeconds);
            Assert.True(new DataChannelOptions().AgentKeepAliveInterval == SmuxKeepAlive.Interval);
            Assert.Equal(System.TimeSpan.Zero, new DataChannelOptions().IdleKeepAlive);
        }
    }
}
