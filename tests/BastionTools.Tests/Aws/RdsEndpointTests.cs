using BastionTools.Aws;
using Xunit;

namespace BastionTools.Tests.Aws
{
    public class RdsEndpointTests
    {
        [Theory]
        [InlineData("mydb.c0ffee123456.us-west-2.rds.amazonaws.com", "us-west-2")]
        [InlineData("MYDB.C0FFEE123456.EU-WEST-1.RDS.AMAZONAWS.COM", "eu-west-1")]
        [InlineData("prod.cluster-ro-abc123.ap-southeast-2.rds.amazonaws.com", "ap-southeast-2")]
        [InlineData("myproxy.proxy-abc123.us-east-1.rds.amazonaws.com", "us-east-1")]
        [InlineData("db.abc.us-gov-west-1.rds.amazonaws.com", "us-gov-west-1")]
        [InlineData("db.abc.cn-north-1.rds.amazonaws.com.cn", "cn-north-1")]
        [InlineData("db.abc.cn-northwest-1.rds.amazonaws.com.cn", "cn-northwest-1")]
        [InlineData("db.abc.us-west-2.rds.amazonaws.com.", "us-west-2")]
        [InlineData("db.abc.us-iso-east-1.rds.c2s.ic.gov", "us-iso-east-1")]
        public void InferRegion_ReadsRdsEndpointNames(string host, string region)
        {
            Assert.Equal(region, RdsEndpoint.InferRegion(host));
        }

        [Theory]
        [InlineData("db.internal.example.com")]
        [InlineData("127.0.0.1")]
        [InlineData("localhost")]
        [InlineData("db.abc.us-west-2.rds.amazonaws.com.evil.example")]
        [InlineData("db.abc.notaregion.rds.amazonaws.com")]
        [InlineData("rds.amazonaws.com")]
        [InlineData("")]
        public void InferRegion_IsNullForOtherNames(string host)
        {
            Assert.Null(RdsEndpoint.InferRegion(host));
        }

        [Theory]
        [InlineData("mydb.c0ffee.us-west-2.rds.amazonaws.com", true)]
        [InlineData("localhost", true)]
        [InlineData("10.0.0.1", true)]
        [InlineData("::1", true)]
        [InlineData("[::1]", true)]
        [InlineData("bad host", false)]
        [InlineData("-bad.example", false)]
        [InlineData("a..b", false)]
        [InlineData("a/b", false)]
        public void IsValidHost(string host, bool valid)
        {
            Assert.Equal(valid, RdsEndpoint.IsValidHost(host));
        }
    }
}
