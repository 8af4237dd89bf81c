using System;
using System.Collections.Generic;
using System.Linq;
using System.Text.Json.Nodes;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The Aurora PostgreSQL cluster the RDS-IAM front also plays: one writer instance behind a writer (cluster) endpoint,
    /// a reader endpoint and a custom endpoint, all served by the same front. rds-db:connect through any of them is
    /// authorized against arn:aws:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;DbClusterResourceId&gt;/&lt;user&gt;.
    /// Endpoint shapes as RDS names them: &lt;cluster&gt;.cluster-&lt;id&gt;.&lt;region&gt;.rds.amazonaws.com (writer),
    /// &lt;cluster&gt;.cluster-ro-&lt;id&gt;… (reader), &lt;endpoint&gt;.cluster-custom-&lt;id&gt;… (custom), &lt;instance&gt;.&lt;id&gt;… (instance).
    /// </summary>
    public sealed class RdsAuroraIdentity
    {
        public const string DefaultClusterIdentifier = "demo-aurora";
        public const string DefaultClusterResourceId = "cluster-C0FFEESANDBOXAURORA0001";

        public string ClusterIdentifier { get; set; } = DefaultClusterIdentifier;
        public string ClusterResourceId { get; set; } = DefaultClusterResourceId;
        public string WriterEndpoint { get; set; } = "demo-aurora.cluster-c0ffee123456.us-west-2.rds.amazonaws.com";
        public string ReaderEndpoint { get; set; } = "demo-aurora.cluster-ro-c0ffee123456.us-west-2.rds.amazonaws.com";
        /// <summary>Custom endpoints (identifier, address).</summary>
        public IList<KeyValuePair<string, string>> CustomEndpoints { get; } = new List<KeyValuePair<string, string>>
        {
            new("demo-aurora-reporting", "demo-aurora-reporting.cluster-custom-c0ffee123456.us-west-2.rds.amazonaws.com"),
        };
        public string MemberInstanceIdentifier { get; set; } = "demo-aurora-1";
        public string MemberInstanceEndpoint { get; set; } = "demo-aurora-1.c0ffee123456.us-west-2.rds.amazonaws.com";
        public string MemberDbiResourceId { get; set; } = "db-C0FFEESANDBOXAURORAINSTANCE1";

        /// <summary>Every name of the cluster (writer, reader, custom, member instance).</summary>
        public IReadOnlyList<string> Names =>
            new[] { WriterEndpoint, ReaderEndpoint }.Concat(CustomEndpoints.Select(c => c.Value)).Concat(new[] { MemberInstanceEndpoint }).ToList();

        public JsonObject DescribeJson()
        {
            var custom = new JsonArray();
            foreach (var c in CustomEndpoints) custom.Add(c.Value);
            return new JsonObject
            {
                ["clusterIdentifier"] = ClusterIdentifier,
                ["clusterResourceId"] = ClusterResourceId,
                ["writerEndpoint"] = WriterEndpoint,
                ["readerEndpoint"] = ReaderEndpoint,
                ["customEndpoints"] = custom,
                ["memberInstance"] = MemberInstanceIdentifier,
                ["memberEndpoint"] = MemberInstanceEndpoint,
            };
        }
    }
}
