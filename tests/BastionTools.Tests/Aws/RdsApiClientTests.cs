using System;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using System.Xml;
using BastionTools.Aws;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Aws
{
    /// <summary>The RDS Query client and the database resolver against the sandbox's RDS API (SigV4-verified, paged).</summary>
    public class RdsApiClientTests
    {
        private static RdsApiClient Client(SandboxHost host, string? secret = null)
        {
            var c = host.World.Credentials[0];
            var keys = new AwsKeys(c.AccessKeyId, secret ?? c.SecretAccessKey, c.SessionToken);
            // -EndpointUrl is the SSM endpoint, as the module is given it: the client derives .../rds from it.
            return new RdsApiClient(() => keys, host.World.Region, host.SsmEndpoint.ToString());
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task List_JoinsAuroraMembersWithTheirCluster_AndReadsEveryField()
        {
            await using var host = Start();
            using var client = Client(host);
            var all = await new RdsDatabaseResolver(client).ListAsync(null, CancellationToken.None);

            var cluster = all.Single(d => d.Identifier == RdsAuroraIdentity.DefaultClusterIdentifier);
            Assert.Equal("Cluster", cluster.Kind);
            Assert.Equal("aurora-postgresql", cluster.Engine);
            Assert.Equal("demo-aurora.cluster-c0ffee123456.us-west-2.rds.amazonaws.com", cluster.Endpoint);
            Assert.Equal("demo-aurora.cluster-ro-c0ffee123456.us-west-2.rds.amazonaws.com", cluster.ReaderEndpoint);
            Assert.Equal(new[] { "demo-aurora-reporting.cluster-custom-c0ffee123456.us-west-2.rds.amazonaws.com" }, cluster.CustomEndpoints);
            Assert.Equal(RdsAuroraIdentity.DefaultClusterResourceId, cluster.ResourceId);
            Assert.Equal(new[] { "demo-aurora-1" }, cluster.Members);
            Assert.Equal("vpc-0c0ffee0000000001", cluster.VpcId); // from its member: DescribeDBClusters has no VpcId
            Assert.Equal("123456789012", cluster.AccountId);
            Assert.True(cluster.IamAuthenticationEnabled);

            var instance = all.Single(d => d.Identifier == "demo");
            Assert.Equal(("Instance", "postgres", 5432), (instance.Kind, instance.Engine, instance.Port));
            Assert.Equal(RdsIamProxyOptions.DefaultEndpointName, instance.Endpoint);
            Assert.Equal(RdsIamProxyOptions.DefaultDbiResourceId, instance.ResourceId);
            Assert.Equal("available", instance.Status);

            var member = all.Single(d => d.Identifier == "demo-aurora-1");
            Assert.Equal(RdsAuroraIdentity.DefaultClusterResourceId, member.ResourceId); // Aurora: the cluster's resource id
            Assert.Equal("db-C0FFEESANDBOXAURORAINSTANCE1", member.DbiResourceId);

            Assert.False(all.Single(d => d.Identifier == "legacy").IamAuthenticationEnabled);
            Assert.Equal("Cluster", all[0].Kind); // clusters first
            Assert.Contains(host.Calls, c => c.Service == "rds" && c.Operation == "DescribeDBClusters" && c.Status == 200);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task List_FollowsMarkers_AndFiltersByWildcard()
        {
            await using var host = Start();
            for (var n = 1; n <= 45; n++)
            {
                host.RdsCatalog.Add(new SandboxRdsInstance { Identifier = "bulk-" + n.ToString("00", System.Globalization.CultureInfo.InvariantCulture), Address = "bulk-" + n + ".c0ffee123456.us-west-2.rds.amazonaws.com", DbiResourceId = "db-BULK" + n.ToString("0000000000", System.Globalization.CultureInfo.InvariantCulture) });
            }
            using var client = Client(host);
            client.MaxRecords = 20;
            var bulk = await new RdsDatabaseResolver(client).ListAsync(new[] { "bulk-*" }, CancellationToken.None);
            Assert.Equal(45, bulk.Count);
            Assert.Equal(45, bulk.Select(b => b.Identifier).Distinct().Count());
            // 49 instances in pages of 20: three DescribeDBInstances, one DescribeDBClusters.
            Assert.Equal(3, host.Calls.Count(c => c.Operation == "DescribeDBInstances"));
            Assert.Equal(4, client.Requests);

            var demo = await new RdsDatabaseResolver(client).ListAsync(new[] { "DEMO*" }, CancellationToken.None);
            Assert.Equal(new[] { "demo-aurora", "demo", "demo-aurora-1" }, demo.Select(d => d.Identifier));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Resolve_Instance_Cluster_AndEachClusterEndpoint()
        {
            await using var host = Start();
            using var client = Client(host);
            var resolver = new RdsDatabaseResolver(client);

            var instance = await resolver.ResolveInstanceAsync("demo", CancellationToken.None);
            Assert.Equal((RdsIamProxyOptions.DefaultEndpointName, 5432), (instance.Host, instance.Port));
            Assert.Equal(RdsIamProxyOptions.DefaultDbiResourceId, instance.Database.ResourceId);

            var member = await resolver.ResolveInstanceAsync("demo-aurora-1", CancellationToken.None);
            Assert.Equal("demo-aurora-1.c0ffee123456.us-west-2.rds.amazonaws.com", member.Host);
            Assert.Equal(RdsAuroraIdentity.DefaultClusterResourceId, member.Database.ResourceId);

            Assert.Equal("demo-aurora.cluster-c0ffee123456.us-west-2.rds.amazonaws.com", (await resolver.ResolveClusterAsync("demo-aurora", null, CancellationToken.None)).Host);
            Assert.Equal("demo-aurora.cluster-ro-c0ffee123456.us-west-2.rds.amazonaws.com", (await resolver.ResolveClusterAsync("demo-aurora", "reader", CancellationToken.None)).Host);
            Assert.Equal("demo-aurora-reporting.cluster-custom-c0ffee123456.us-west-2.rds.amazonaws.com", (await resolver.ResolveClusterAsync("demo-aurora", "demo-aurora-reporting", CancellationToken.None)).Host);
            var missing = await Assert.ThrowsAsync<BastionToolsException>(() => resolver.ResolveClusterAsync("demo-aurora", "analytics", CancellationToken.None));
            Assert.Equal(ErrorIds.RdsEndpointNotFound, missing.ErrorId);
            Assert.Contains("Writer, Reader, demo-aurora-reporting", missing.RecommendedAction, StringComparison.Ordinal);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Errors_NotFound_IamDisabled_Denied_BadSecret_HaveStableIds()
        {
            await using var host = Start();
            using var client = Client(host);
            var resolver = new RdsDatabaseResolver(client);

            var noInstance = await Assert.ThrowsAsync<BastionToolsException>(() => resolver.ResolveInstanceAsync("nope", CancellationToken.None));
            Assert.Equal(ErrorIds.RdsDatabaseNotFound, noInstance.ErrorId);
            Assert.Contains("DBInstance nope not found", noInstance.Message, StringComparison.Ordinal);
            Assert.Contains(host.Calls, c => c.Operation == "DescribeDBInstances" && c.Status == 404 && c.ErrorCode == "DBInstanceNotFound");
            var noCluster = await Assert.ThrowsAsync<BastionToolsException>(() => resolver.ResolveClusterAsync("nope", null, CancellationToken.None));
            Assert.Equal(ErrorIds.RdsDatabaseNotFound, noCluster.ErrorId);
            Assert.Contains(host.Calls, c => c.Operation == "DescribeDBClusters" && c.ErrorCode == "DBClusterNotFoundFault");

            var disabled = await Assert.ThrowsAsync<BastionToolsException>(() => resolver.ResolveInstanceAsync("legacy", CancellationToken.None));
            Assert.Equal(ErrorIds.RdsIamAuthenticationDisabled, disabled.ErrorId);
            Assert.Contains("modify-db-instance --db-instance-identifier legacy --enable-iam-database-authentication", disabled.RecommendedAction, StringComparison.Ordinal);

            host.World.Credentials[0].Policy = SandboxIamPolicy.Parse("""{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"rds:DescribeDBClusters","Resource":"*"}]}""");
            var denied = await Assert.ThrowsAsync<BastionToolsException>(() => resolver.ListAsync(null, CancellationToken.None));
            Assert.Equal(ErrorIds.RdsAccessDenied, denied.ErrorId);
            Assert.Contains("rds:DescribeDBInstances", denied.Message, StringComparison.Ordinal);
            Assert.Contains("-DbHost", denied.RecommendedAction, StringComparison.Ordinal);
            host.World.Credentials[0].Policy = null;

            using var wrong = Client(host, secret: "wrong-secret-key-0000000000000000000000");
            var bad = await Assert.ThrowsAsync<BastionToolsException>(() => wrong.DescribeInstancesAsync(null, CancellationToken.None));
            Assert.Equal(ErrorIds.AwsAuthenticationFailed, bad.ErrorId);
            Assert.DoesNotContain("wrong-secret", bad.Message, StringComparison.Ordinal);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Resolve_WithoutRequiringIam_ReturnsTheDatabaseIamOff_ForATunnel()
        {
            await using var host = Start();
            using var client = Client(host);
            var resolver = new RdsDatabaseResolver(client);

            // Start-BastionSession's look-up: the database comes back with IamAuthenticationEnabled false instead of an error.
            var legacy = await resolver.ResolveAsync(RdsTargetChoice.Check(false, "legacy", null, null), null, CancellationToken.None, requireIam: false);
            Assert.False(legacy.Database.IamAuthenticationEnabled);
            Assert.Equal(legacy.Database.Endpoint, legacy.Host);
            Assert.EndsWith(".rds.amazonaws.com", legacy.Host, StringComparison.Ordinal);
            // Its warning carries the same recommended action as the error the other cmdlets throw.
            var refused = await Assert.ThrowsAsync<BastionToolsException>(() => resolver.ResolveAsync(RdsTargetChoice.Check(false, "legacy", null, null), null, CancellationToken.None));
            Assert.Equal(RdsDatabaseResolver.IamDisabled(legacy.Database).RecommendedAction, refused.RecommendedAction);

            // The choice decides: an Aurora member instance piped with its cluster is the instance; a cluster takes -ClusterEndpoint.
            var member = await resolver.ResolveAsync(RdsTargetChoice.Check(false, "demo-aurora-1", "demo-aurora", null), null, CancellationToken.None, requireIam: false);
            Assert.Equal("demo-aurora-1", member.Database.Identifier);
            var reader = await resolver.ResolveAsync(RdsTargetChoice.Check(false, "", "demo-aurora", "Reader"), "Reader", CancellationToken.None, requireIam: false);
            Assert.Equal(reader.Database.ReaderEndpoint, reader.Host);
            Assert.True(reader.Database.IamAuthenticationEnabled);
        }

        [Fact]
        public void Parse_RefusesADocumentTypeDefinition()
        {
            const string xml = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>";
            Assert.Throws<XmlException>(() => RdsApiClient.Parse(xml));
        }

        [Theory]
        [InlineData("us-east-1", "https://rds.us-east-1.amazonaws.com/")]
        [InlineData("cn-north-1", "https://rds.cn-north-1.amazonaws.com.cn/")]
        public void DefaultEndpoint_IsTheRegionalOne(string region, string expected) => Assert.Equal(expected, RdsApiClient.DefaultEndpoint(region));
    }
}
