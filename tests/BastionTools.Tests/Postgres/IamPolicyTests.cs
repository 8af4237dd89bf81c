using System;
using System.Text.Json;
using BastionTools.Postgres;
using Xunit;

namespace BastionTools.Tests.Postgres
{
    public sealed class IamPolicyTests
    {
        private const string ResourceId = "db-ABCDEFGHIJKLMNOPQRSTUVWXY2";

        [Theory]
        [InlineData("eu-west-1", "aws")]
        [InlineData("us-east-1", "aws")]
        [InlineData("ap-southeast-2", "aws")]
        [InlineData("cn-north-1", "aws-cn")]
        [InlineData("cn-northwest-1", "aws-cn")]
        [InlineData("us-gov-west-1", "aws-us-gov")]
        [InlineData("us-gov-east-1", "aws-us-gov")]
        [InlineData("us-iso-east-1", "aws-iso")]
        [InlineData("us-isob-east-1", "aws-iso-b")]
        public void Partition_FollowsTheRegion(string region, string partition)
        {
            Assert.Equal(partition, IamPolicy.PartitionForRegion(region));
        }

        [Fact]
        public void PolicyJson_Parses_WithTheExactArn()
        {
            var json = IamPolicy.ConnectPolicyJson(null, "eu-west-1", "123456789012", ResourceId, "app_reader");
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            Assert.Equal("2012-10-17", root.GetProperty("Version").GetString());
            var statements = root.GetProperty("Statement");
            Assert.Equal(1, statements.GetArrayLength());
            var s = statements[0];
            Assert.Equal("Allow", s.GetProperty("Effect").GetString());
            Assert.Equal("rds-db:connect", s.GetProperty("Action").GetString());
            Assert.Equal("arn:aws:rds-db:eu-west-1:123456789012:dbuser:" + ResourceId + "/app_reader", s.GetProperty("Resource").GetString());
            Assert.Contains("\n", json);
        }

        [Theory]
        [InlineData(null, "cn-north-1", "arn:aws-cn:rds-db:cn-north-1:123456789012:dbuser:cluster-ABCDEFGHIJKLMNOPQRSTUVWXY2/App User")]
        [InlineData("aws-us-gov", "us-gov-west-1", "arn:aws-us-gov:rds-db:us-gov-west-1:123456789012:dbuser:cluster-ABCDEFGHIJKLMNOPQRSTUVWXY2/App User")]
        public void Arn_ForClustersAndOtherPartitions(string? partition, string region, string expected)
        {
            var arn = IamPolicy.ConnectResourceArn(partition, region, "123456789012", "cluster-ABCDEFGHIJKLMNOPQRSTUVWXY2", "App User");
            Assert.Equal(expected, arn);
            using var doc = JsonDocument.Parse(IamPolicy.ConnectPolicyJson(partition, region, "123456789012", "cluster-ABCDEFGHIJKLMNOPQRSTUVWXY2", "App User"));
            Assert.Equal(expected, doc.RootElement.GetProperty("Statement")[0].GetProperty("Resource").GetString());
        }

        [Fact]
        public void HostileUserNames_StayInsideTheJsonString()
        {
            var user = "we\"ird\\name</script>ü";
            var json = IamPolicy.ConnectPolicyJson(null, "us-east-1", "123456789012", ResourceId, user);
            using var doc = JsonDocument.Parse(json);
            Assert.EndsWith("/" + user, doc.RootElement.GetProperty("Statement")[0].GetProperty("Resource").GetString());
        }

        [Theory]
        [InlineData("aws", "eu-west-1", "12345678901", ResourceId, "u", "12 digits")]
        [InlineData("aws", "eu-west-1", "1234567890123", ResourceId, "u", "12 digits")]
        [InlineData("aws", "eu-west-1", "12345678901a", ResourceId, "u", "12 digits")]
        [InlineData("aws", "eu-west-1", "123456789012", "mydb", "u", "DbiResourceId")]
        [InlineData("aws", "eu-west-1", "123456789012", "db-abcdefghijkl", "u", "DbiResourceId")]
        [InlineData("aws", "eu-west-1", "123456789012", "db-", "u", "DbiResourceId")]
        [InlineData("aws", "eu-west-1", "123456789012", "arn:aws:rds:eu-west-1:123456789012:db:mydb", "u", "DbiResourceId")]
        [InlineData("aws", "eu-west-1", "123456789012", "db-ABCDEFGHIJKL/x", "u", "DbiResourceId")]
        [InlineData("aws-cn", "eu-west-1", "123456789012", ResourceId, "u", "does not match the region")]
        [InlineData("aws", "cn-north-1", "123456789012", ResourceId, "u", "does not match the region")]
        [InlineData("aws", "Eu-West-1", "123456789012", ResourceId, "u", "not an AWS region")]
        [InlineData("aws", "eu-west", "123456789012", ResourceId, "u", "not an AWS region")]
        [InlineData("aws", "eu-west-1", "123456789012", ResourceId, "*", "wildcard")]
        [InlineData("aws", "eu-west-1", "123456789012", ResourceId, "app?", "wildcard")]
        [InlineData("aws", "eu-west-1", "123456789012", ResourceId, "${aws:username}", "policy variable")]
        [InlineData("aws", "eu-west-1", "123456789012", ResourceId, "", "empty")]
        [InlineData("aws", "eu-west-1", "123456789012", ResourceId, "public", "reserved")]
        public void InvalidInput_IsRefused(string? partition, string region, string account, string resourceId, string user, string message)
        {
            var ex = Assert.Throws<ArgumentException>(() => IamPolicy.ConnectPolicyJson(partition, region, account, resourceId, user));
            Assert.Contains(message, ex.Message);
        }

        [Fact]
        public void SixtyFourByteUser_IsRefused()
        {
            Assert.Throws<ArgumentException>(() => IamPolicy.ConnectResourceArn(null, "eu-west-1", "123456789012", ResourceId, new string('u', 64)));
        }
    }
}
