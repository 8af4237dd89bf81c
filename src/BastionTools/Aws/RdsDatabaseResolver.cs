using System;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Aws
{
    /// <summary>What an identifier resolves to: where to connect and sign tokens for, and the rds-db:connect resource.</summary>
    internal sealed class RdsConnectTarget
    {
        public RdsConnectTarget(RdsIamDatabase database, string host, int port)
        {
            Database = database;
            Host = host;
            Port = port;
        }

        public RdsIamDatabase Database { get; }

        /// <summary>The endpoint name tokens are signed for and the certificate must carry.</summary>
        public string Host { get; }

        public int Port { get; }
    }

    /// <summary>
    /// Looks up RDS instances and Aurora clusters for Get-RdsIamDatabase and the -DbInstanceIdentifier /
    /// -DbClusterIdentifier parameters: joins an Aurora member instance with its cluster (the cluster's IAM setting and
    /// DbClusterResourceId apply to it) and a cluster with its members' VPC, and refuses databases without IAM
    /// authentication with the way to turn it on.
    /// </summary>
    internal sealed class RdsDatabaseResolver
    {
        private readonly RdsApiClient _client;

        public RdsDatabaseResolver(RdsApiClient client) => _client = client;

        /// <summary>Instances and clusters whose identifier matches <paramref name="namePatterns"/> (wildcards; none: all), clusters first.</summary>
        public async Task<IReadOnlyList<RdsIamDatabase>> ListAsync(IReadOnlyCollection<string>? namePatterns, CancellationToken ct)
        {
            // An exact name (no wildcard) is asked for directly when it is the only one; a miss in both lists is not an error here.
            var instances = await _client.DescribeInstancesAsync(null, ct).ConfigureAwait(false);
            var clusters = await _client.DescribeClustersAsync(null, ct).ConfigureAwait(false);
            Join(instances, clusters);
            var all = clusters.OrderBy(c => c.Identifier, StringComparer.OrdinalIgnoreCase)
                .Concat(instances.OrderBy(i => i.Identifier, StringComparer.OrdinalIgnoreCase));
            if (namePatterns == null || namePatterns.Count == 0) return all.ToList();
            var patterns = namePatterns.Select(p => new WildcardPattern(p, WildcardOptions.IgnoreCase | WildcardOptions.CultureInvariant)).ToList();
            return all.Where(d => patterns.Any(p => p.IsMatch(d.Identifier))).ToList();
        }

        /// <summary>
        /// The endpoint of DB instance <paramref name="identifier"/>; for an Aurora member instance the cluster's resource id
        /// and IAM setting apply. <paramref name="requireIam"/> false: a database without IAM authentication is returned
        /// (for a tunnel, which password logins can use) instead of refused.
        /// </summary>
        public async Task<RdsConnectTarget> ResolveInstanceAsync(string identifier, CancellationToken ct, bool requireIam = true)
        {
            var instance = (await _client.DescribeInstancesAsync(identifier, ct).ConfigureAwait(false)).FirstOrDefault()
                ?? throw RdsApiClient.MapError("DBInstanceNotFound", "DBInstance " + identifier + " not found.", identifier, RdsApiClient.DescribeInstancesAction, 404);
            if (instance.DbClusterIdentifier != null)
            {
                var cluster = (await _client.DescribeClustersAsync(instance.DbClusterIdentifier, ct).ConfigureAwait(false)).FirstOrDefault();
                if (cluster != null) Join(new[] { instance }, new[] { cluster });
            }
            if (requireIam) RequireIam(instance);
            if (string.IsNullOrEmpty(instance.Endpoint) || instance.Port == 0)
            {
                throw new BastionToolsException(ErrorIds.RdsEndpointNotFound, ErrorCategory.ResourceUnavailable,
                    $"The DB instance {instance.Identifier} has no endpoint yet (status {instance.Status}).", identifier, "Wait until it is available (Get-RdsIamDatabase shows Status).");
            }
            return new RdsConnectTarget(instance, instance.Endpoint!, instance.Port);
        }

        /// <summary>
        /// An endpoint of Aurora cluster <paramref name="identifier"/>: <paramref name="endpoint"/> null or "Writer" for the
        /// cluster (writer) endpoint, "Reader" for the reader endpoint, or a custom endpoint (its identifier, the first label
        /// of its name, or the whole name). <paramref name="requireIam"/> as for <see cref="ResolveInstanceAsync"/>.
        /// </summary>
        public async Task<RdsConnectTarget> ResolveClusterAsync(string identifier, string? endpoint, CancellationToken ct, bool requireIam = true)
        {
            var cluster = (await _client.DescribeClustersAsync(identifier, ct).ConfigureAwait(false)).FirstOrDefault()
                ?? throw RdsApiClient.MapError("DBClusterNotFoundFault", "DBCluster " + identifier + " not found.", identifier, RdsApiClient.DescribeClustersAction, 404);
            if (requireIam) RequireIam(cluster);
            var host = PickClusterEndpoint(cluster, endpoint);
            return new RdsConnectTarget(cluster, host, cluster.Port);
        }

        internal static string PickClusterEndpoint(RdsIamDatabase cluster, string? endpoint)
        {
            string? host;
            if (string.IsNullOrEmpty(endpoint) || string.Equals(endpoint, "Writer", StringComparison.OrdinalIgnoreCase)) host = cluster.Endpoint;
            else if (string.Equals(endpoint, "Reader", StringComparison.OrdinalIgnoreCase)) host = cluster.ReaderEndpoint;
            else
            {
                host = cluster.CustomEndpoints.FirstOrDefault(c => string.Equals(c, endpoint, StringComparison.OrdinalIgnoreCase)
                    || string.Equals(c.Split('.')[0], endpoint, StringComparison.OrdinalIgnoreCase));
            }
            if (string.IsNullOrEmpty(host))
            {
                var known = new[] { "Writer", "Reader" }.Concat(cluster.CustomEndpoints.Select(c => c.Split('.')[0]));
                throw new BastionToolsException(ErrorIds.RdsEndpointNotFound, ErrorCategory.ObjectNotFound,
                    $"The Aurora cluster {cluster.Identifier} has no endpoint '{endpoint ?? "Writer"}' (status {cluster.Status}).", endpoint ?? cluster.Identifier,
                    "-ClusterEndpoint takes one of: " + string.Join(", ", known) + ".");
            }
            return host!;
        }

        /// <summary>An Aurora member instance takes its cluster's IAM setting and DbClusterResourceId; a cluster takes its members' VPC.</summary>
        internal static void Join(IEnumerable<RdsIamDatabase> instances, IEnumerable<RdsIamDatabase> clusters)
        {
            var byId = clusters.ToDictionary(c => c.Identifier, StringComparer.OrdinalIgnoreCase);
            foreach (var i in instances)
            {
                if (i.DbClusterIdentifier == null || !byId.TryGetValue(i.DbClusterIdentifier, out var c)) continue;
                i.DbClusterResourceId = c.DbClusterResourceId;
                i.ResourceId = c.DbClusterResourceId;
                i.IamAuthenticationEnabled = c.IamAuthenticationEnabled;
                c.VpcId ??= i.VpcId;
            }
        }

        /// <summary>
        /// Resolves <paramref name="choice"/> (an instance, or a cluster with <paramref name="clusterEndpoint"/>): the one
        /// look-up every cmdlet that takes -DbInstanceIdentifier / -DbClusterIdentifier makes.
        /// </summary>
        public Task<RdsConnectTarget> ResolveAsync(RdsTargetChoice choice, string? clusterEndpoint, CancellationToken ct, bool requireIam = true) =>
            choice.Instance != null
                ? ResolveInstanceAsync(choice.Instance, ct, requireIam)
                : ResolveClusterAsync(choice.Cluster ?? throw new ArgumentException("The choice names no database.", nameof(choice)), clusterEndpoint, ct, requireIam);

        private static void RequireIam(RdsIamDatabase db)
        {
            if (!db.IamAuthenticationEnabled) throw IamDisabled(db);
        }

        /// <summary>RdsIamAuthenticationDisabled for <paramref name="db"/>: what is off, and (RecommendedAction) how to turn it on.</summary>
        internal static BastionToolsException IamDisabled(RdsIamDatabase db)
        {
            var isCluster = db.Kind == "Cluster" || db.DbClusterIdentifier != null;
            var how = isCluster
                ? $"aws rds modify-db-cluster --db-cluster-identifier {db.DbClusterIdentifier ?? db.Identifier} --enable-iam-database-authentication --apply-immediately"
                : $"aws rds modify-db-instance --db-instance-identifier {db.Identifier} --enable-iam-database-authentication --apply-immediately";
            return new BastionToolsException(ErrorIds.RdsIamAuthenticationDisabled, ErrorCategory.InvalidOperation,
                $"IAM database authentication is not enabled on the {(db.Kind == "Cluster" ? "Aurora cluster" : "DB instance")} {db.Identifier}: RDS refuses every IAM token for it.",
                db.Identifier,
                $"Enable it ({how}, or EnableIAMDatabaseAuthentication / iamAuthentication: true in CloudFormation or CDK), then grant the user with Grant-RdsIamUser.");
        }
    }
}

namespace BastionTools.Aws
{
    /// <summary>Which database the parameters name: -DbHost, -DbInstanceIdentifier or -DbClusterIdentifier (exactly one).</summary>
    internal sealed class RdsTargetChoice
    {
        public string? Instance { get; private set; }
        public string? Cluster { get; private set; }
        public BastionToolsException? Error { get; private set; }

        public static RdsTargetChoice Check(bool hostGiven, string? instance, string? cluster, string? clusterEndpoint)
        {
            var choice = new RdsTargetChoice
            {
                Instance = string.IsNullOrWhiteSpace(instance) ? null : instance!.Trim(),
                Cluster = string.IsNullOrWhiteSpace(cluster) ? null : cluster!.Trim(),
            };
            // An Aurora member instance piped from Get-RdsIamDatabase carries both: the instance is meant.
            if (choice.Instance != null) choice.Cluster = null;
            if (hostGiven && (choice.Instance != null || choice.Cluster != null))
            {
                // -DbHost given with a piped database: the endpoint typed wins, nothing is looked up.
                choice.Instance = choice.Cluster = null;
            }
            if (!hostGiven && choice.Instance == null && choice.Cluster == null)
            {
                choice.Error = new BastionToolsException(ErrorIds.RdsDatabaseNotSpecified, System.Management.Automation.ErrorCategory.InvalidArgument,
                    "Say which database: -DbHost (its endpoint name), -DbInstanceIdentifier or -DbClusterIdentifier (looked up with rds:Describe*), or pipe Get-RdsIamDatabase.",
                    null, "For example -DbInstanceIdentifier mydb, or Get-RdsIamDatabase mydb | Connect-IamPostgres -Target i-0123456789abcdef0 -UserName app_user.");
            }
            else if (clusterEndpoint != null && choice.Cluster == null)
            {
                choice.Error = new BastionToolsException(ErrorIds.RdsDatabaseNotSpecified, System.Management.Automation.ErrorCategory.InvalidArgument,
                    "-ClusterEndpoint goes with -DbClusterIdentifier (with -DbHost, pass the endpoint name itself).", clusterEndpoint);
            }
            return choice;
        }
    }
}
