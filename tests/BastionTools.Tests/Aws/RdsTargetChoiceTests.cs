using BastionTools.Aws;
using Xunit;

namespace BastionTools.Tests.Aws
{
    /// <summary>Which database the parameters name: -DbHost, -DbInstanceIdentifier or -DbClusterIdentifier.</summary>
    public class RdsTargetChoiceTests
    {
        [Fact]
        public void NothingNamed_IsRdsDatabaseNotSpecified()
        {
            var c = RdsTargetChoice.Check(false, null, "  ", null);
            Assert.Equal(ErrorIds.RdsDatabaseNotSpecified, c.Error!.ErrorId);
        }

        [Fact]
        public void AnAuroraMemberInstance_CarryingBothIdentifiers_MeansTheInstance()
        {
            var c = RdsTargetChoice.Check(false, "demo-aurora-1", "demo-aurora", null);
            Assert.Null(c.Error);
            Assert.Equal("demo-aurora-1", c.Instance);
            Assert.Null(c.Cluster);
        }

        [Fact]
        public void DbHost_Wins_AndNothingIsLookedUp()
        {
            var c = RdsTargetChoice.Check(true, "demo", null, null);
            Assert.Null(c.Error);
            Assert.Null(c.Instance);
            Assert.Null(c.Cluster);
        }

        [Fact]
        public void ClusterEndpoint_WithoutACluster_IsRefused()
        {
            Assert.Equal(ErrorIds.RdsDatabaseNotSpecified, RdsTargetChoice.Check(false, "demo", null, "Reader").Error!.ErrorId);
            Assert.Null(RdsTargetChoice.Check(false, null, "demo-aurora", "Reader").Error);
        }

        [Fact]
        public void AccountFromArn_ReadsTheAccountField()
        {
            Assert.Equal("123456789012", RdsApiClient.AccountFromArn("arn:aws:rds:us-west-2:123456789012:cluster:demo-aurora"));
            Assert.Null(RdsApiClient.AccountFromArn("arn:aws:rds:us-west-2::db:x"));
            Assert.Null(RdsApiClient.AccountFromArn(null));
        }
    }
}
