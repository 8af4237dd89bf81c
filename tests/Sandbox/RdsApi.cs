using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;
using System.Xml.Linq;

namespace BastionTools.Sandbox
{
    /// <summary>An RDS DB instance as DescribeDBInstances shows it.</summary>
    public sealed class SandboxRdsInstance
    {
        public string Identifier { get; set; } = "";
        public string Engine { get; set; } = "postgres";
        public string EngineVersion { get; set; } = "16.4";
        public string Status { get; set; } = "available";
        public string Address { get; set; } = "";
        public int Port { get; set; } = 5432;
        public bool IamAuthenticationEnabled { get; set; } = true;
        public string DbiResourceId { get; set; } = "";
        public string VpcId { get; set; } = "vpc-0c0ffee0000000001";
        /// <summary>The Aurora cluster the instance belongs to, or null.</summary>
        public string? ClusterIdentifier { get; set; }
    }

    /// <summary>An Aurora DB cluster as DescribeDBClusters shows it.</summary>
    public sealed class SandboxRdsCluster
    {
        public string Identifier { get; set; } = "";
        public string Engine { get; set; } = "aurora-postgresql";
        public string EngineVersion { get; set; } = "16.4";
        public string Status { get; set; } = "available";
        public string Endpoint { get; set; } = "";
        public string ReaderEndpoint { get; set; } = "";
        public List<string> CustomEndpoints { get; } = new();
        public int Port { get; set; } = 5432;
        public bool IamAuthenticationEnabled { get; set; } = true;
        public string ResourceId { get; set; } = "";
        /// <summary>(instance identifier, is writer).</summary>
        public List<KeyValuePair<string, bool>> Members { get; } = new();
    }

    /// <summary>The databases the sandbox's RDS API knows (mutable by tests; read under its lock).</summary>
    public sealed class SandboxRdsCatalog
    {
        private readonly object _gate = new();
        private readonly List<SandboxRdsInstance> _instances = new();
        private readonly List<SandboxRdsCluster> _clusters = new();

        public void Add(SandboxRdsInstance instance)
        {
            lock (_gate) _instances.Add(instance);
        }

        public void Add(SandboxRdsCluster cluster)
        {
            lock (_gate) _clusters.Add(cluster);
        }

        public IReadOnlyList<SandboxRdsInstance> Instances
        {
            get
            {
                lock (_gate) return _instances.ToList();
            }
        }

        public IReadOnlyList<SandboxRdsCluster> Clusters
        {
            get
            {
                lock (_gate) return _clusters.ToList();
            }
        }

        public SandboxRdsInstance? FindInstance(string identifier) => Instances.FirstOrDefault(i => string.Equals(i.Identifier, identifier, StringComparison.OrdinalIgnoreCase));

        public SandboxRdsCluster? FindCluster(string identifier) => Clusters.FirstOrDefault(c => string.Equals(c.Identifier, identifier, StringComparison.OrdinalIgnoreCase));

        /// <summary>
        /// The databases of the RDS-IAM front (its endpoint as instance "demo" with its DbiResourceId; its Aurora identity as
        /// cluster "demo-aurora" with one writer instance) and one PostgreSQL instance without IAM authentication ("legacy").
        /// </summary>
        public static SandboxRdsCatalog CreateDefault(RdsIamProxyOptions proxy)
        {
            var catalog = new SandboxRdsCatalog();
            var endpoint = proxy.EndpointName;
            var first = endpoint.IndexOf('.');
            catalog.Add(new SandboxRdsInstance
            {
                Identifier = first > 0 ? endpoint.Substring(0, first) : endpoint,
                Address = endpoint,
                Port = proxy.AdvertisedPort,
                DbiResourceId = proxy.DbiResourceId,
            });
            if (proxy.Aurora is { } aurora)
            {
                var cluster = new SandboxRdsCluster
                {
                    Identifier = aurora.ClusterIdentifier,
                    Endpoint = aurora.WriterEndpoint,
                    ReaderEndpoint = aurora.ReaderEndpoint,
                    Port = proxy.AdvertisedPort,
                    ResourceId = aurora.ClusterResourceId,
                };
                cluster.CustomEndpoints.AddRange(aurora.CustomEndpoints.Select(c => c.Value));
                cluster.Members.Add(new KeyValuePair<string, bool>(aurora.MemberInstanceIdentifier, true));
                catalog.Add(cluster);
                catalog.Add(new SandboxRdsInstance
                {
                    Identifier = aurora.MemberInstanceIdentifier,
                    Engine = "aurora-postgresql",
                    Address = aurora.MemberInstanceEndpoint,
                    Port = proxy.AdvertisedPort,
                    DbiResourceId = aurora.MemberDbiResourceId,
                    ClusterIdentifier = aurora.ClusterIdentifier,
                });
            }
            var suffix = first > 0 ? endpoint.Substring(first) : ".c0ffee123456.us-west-2.rds.amazonaws.com";
            catalog.Add(new SandboxRdsInstance
            {
                Identifier = "legacy",
                Address = "legacy" + suffix,
                IamAuthenticationEnabled = false,
                DbiResourceId = "db-C0FFEESANDBOXLEGACY0000001",
            });
            return catalog;
        }
    }

    /// <summary>
    /// The RDS Query API of the sandbox (awsquery protocol, Version 2014-10-31): DescribeDBInstances and DescribeDBClusters
    /// with DBInstanceIdentifier/DBClusterIdentifier, Filters (db-instance-id, db-cluster-id, engine), MaxRecords
    /// (20..100, default 100) and Marker pagination; errors as &lt;ErrorResponse&gt;&lt;Error&gt;&lt;Type&gt;Sender…
    /// (DBInstanceNotFound and DBClusterNotFoundFault: HTTP 404; InvalidParameterValue, InvalidParameterCombination: 400;
    /// AccessDenied: 403). Fields and codes as botocore's rds service model names them.
    /// </summary>
    internal sealed class RdsApi
    {
        public const string ApiVersion = "2014-10-31";
        public static readonly XNamespace Ns = "http://rds.amazonaws.com/doc/" + ApiVersion + "/";

        private readonly SandboxHost _host;

        public RdsApi(SandboxHost host) => _host = host;

        private SandboxWorld World => _host.World;

        public string Handle(IReadOnlyList<KeyValuePair<string, string>> form, string requestId, SandboxCredential caller)
        {
            var action = Get(form, "Action");
            switch (action)
            {
                case "DescribeDBInstances":
                {
                    var id = Get(form, "DBInstanceIdentifier");
                    var resource = "arn:aws:rds:" + World.Region + ":" + World.AccountId + ":db:" + (id ?? "*");
                    Authorize(caller, "rds:DescribeDBInstances", resource);
                    return DescribeInstances(form, id, requestId);
                }
                case "DescribeDBClusters":
                {
                    var id = Get(form, "DBClusterIdentifier");
                    var resource = "arn:aws:rds:" + World.Region + ":" + World.AccountId + ":cluster:" + (id ?? "*");
                    Authorize(caller, "rds:DescribeDBClusters", resource);
                    return DescribeClusters(form, id, requestId);
                }
                case null: throw SandboxError.Ec2(400, "MissingAction", "The request must contain the parameter Action");
                default: throw SandboxError.Ec2(400, "InvalidAction", "Could not find operation " + action + " for version " + ApiVersion);
            }
        }

        private void Authorize(SandboxCredential caller, string action, string resource)
        {
            var a = SandboxIamPolicy.Authorize(World, caller, action, resource);
            if (!a.Allowed) throw SandboxError.Ec2(403, "AccessDenied", a.Message);
        }

        private string DescribeInstances(IReadOnlyList<KeyValuePair<string, string>> form, string? id, string requestId)
        {
            var filters = Filters(form, new[] { "db-instance-id", "db-cluster-id", "engine", "dbi-resource-id" });
            var all = _host.RdsCatalog.Instances;
            if (id != null)
            {
                all = all.Where(i => string.Equals(i.Identifier, id, StringComparison.OrdinalIgnoreCase)).ToList();
                if (all.Count == 0) throw SandboxError.Ec2(404, "DBInstanceNotFound", "DBInstance " + id + " not found.");
            }
            var matches = all.Where(i => Matches(filters, "db-instance-id", i.Identifier) && Matches(filters, "db-cluster-id", i.ClusterIdentifier)
                && Matches(filters, "engine", i.Engine) && Matches(filters, "dbi-resource-id", i.DbiResourceId)).ToList();
            var (page, marker) = Page(form, matches);
            var list = new XElement(Ns + "DBInstances", page.Select(i =>
            {
                var e = new XElement(Ns + "DBInstance",
                    new XElement(Ns + "DBInstanceIdentifier", i.Identifier),
                    new XElement(Ns + "DBInstanceClass", "db.t4g.micro"),
                    new XElement(Ns + "Engine", i.Engine),
                    new XElement(Ns + "DBInstanceStatus", i.Status),
                    new XElement(Ns + "Endpoint",
                        new XElement(Ns + "Address", i.Address),
                        new XElement(Ns + "Port", i.Port.ToString(CultureInfo.InvariantCulture)),
                        new XElement(Ns + "HostedZoneId", "Z1PVIF0B656C1W")),
                    new XElement(Ns + "DBSubnetGroup",
                        new XElement(Ns + "DBSubnetGroupName", "sandbox-db"),
                        new XElement(Ns + "VpcId", i.VpcId),
                        new XElement(Ns + "SubnetGroupStatus", "Complete")),
                    new XElement(Ns + "EngineVersion", i.EngineVersion),
                    new XElement(Ns + "DbiResourceId", i.DbiResourceId),
                    new XElement(Ns + "IAMDatabaseAuthenticationEnabled", i.IamAuthenticationEnabled ? "true" : "false"),
                    new XElement(Ns + "DBInstanceArn", "arn:aws:rds:" + World.Region + ":" + World.AccountId + ":db:" + i.Identifier));
                if (i.ClusterIdentifier != null) e.Add(new XElement(Ns + "DBClusterIdentifier", i.ClusterIdentifier));
                return e;
            }));
            return Response("DescribeDBInstances", list, marker, requestId);
        }

        private string DescribeClusters(IReadOnlyList<KeyValuePair<string, string>> form, string? id, string requestId)
        {
            var filters = Filters(form, new[] { "db-cluster-id", "engine", "db-cluster-resource-id" });
            var all = _host.RdsCatalog.Clusters;
            if (id != null)
            {
                all = all.Where(c => string.Equals(c.Identifier, id, StringComparison.OrdinalIgnoreCase)).ToList();
                if (all.Count == 0) throw SandboxError.Ec2(404, "DBClusterNotFoundFault", "DBCluster " + id + " not found.");
            }
            var matches = all.Where(c => Matches(filters, "db-cluster-id", c.Identifier) && Matches(filters, "engine", c.Engine)
                && Matches(filters, "db-cluster-resource-id", c.ResourceId)).ToList();
            var (page, marker) = Page(form, matches);
            var list = new XElement(Ns + "DBClusters", page.Select(c => new XElement(Ns + "DBCluster",
                new XElement(Ns + "DBClusterIdentifier", c.Identifier),
                new XElement(Ns + "Status", c.Status),
                new XElement(Ns + "Endpoint", c.Endpoint),
                new XElement(Ns + "ReaderEndpoint", c.ReaderEndpoint),
                new XElement(Ns + "CustomEndpoints", c.CustomEndpoints.Select(e => new XElement(Ns + "member", e))),
                new XElement(Ns + "Engine", c.Engine),
                new XElement(Ns + "EngineVersion", c.EngineVersion),
                new XElement(Ns + "Port", c.Port.ToString(CultureInfo.InvariantCulture)),
                new XElement(Ns + "DBSubnetGroup", "sandbox-db"),
                new XElement(Ns + "DBClusterMembers", c.Members.Select(m => new XElement(Ns + "DBClusterMember",
                    new XElement(Ns + "DBInstanceIdentifier", m.Key),
                    new XElement(Ns + "IsClusterWriter", m.Value ? "true" : "false")))),
                new XElement(Ns + "DbClusterResourceId", c.ResourceId),
                new XElement(Ns + "DBClusterArn", "arn:aws:rds:" + World.Region + ":" + World.AccountId + ":cluster:" + c.Identifier),
                new XElement(Ns + "IAMDatabaseAuthenticationEnabled", c.IamAuthenticationEnabled ? "true" : "false"))));
            return Response("DescribeDBClusters", list, marker, requestId);
        }

        private static string Response(string action, XElement list, string? marker, string requestId)
        {
            var result = new XElement(Ns + action + "Result", list);
            if (marker != null) result.AddFirst(new XElement(Ns + "Marker", marker));
            var root = new XElement(Ns + action + "Response", result, new XElement(Ns + "ResponseMetadata", new XElement(Ns + "RequestId", requestId)));
            return root.ToString(SaveOptions.DisableFormatting);
        }

        private static (List<T> Page, string? Marker) Page<T>(IReadOnlyList<KeyValuePair<string, string>> form, List<T> matches)
        {
            var max = 100;
            var maxText = Get(form, "MaxRecords");
            if (maxText != null && (!int.TryParse(maxText, NumberStyles.Integer, CultureInfo.InvariantCulture, out max) || max < 20 || max > 100))
            {
                throw SandboxError.Ec2(400, "InvalidParameterValue", "Invalid value " + maxText + " for MaxRecords. Must be between 20 and 100");
            }
            var start = 0;
            var marker = Get(form, "Marker");
            if (marker != null)
            {
                string decoded;
                try
                {
                    decoded = Encoding.UTF8.GetString(Convert.FromBase64String(marker));
                }
                catch (FormatException)
                {
                    decoded = "";
                }
                if (!decoded.StartsWith("sandbox-rds:", StringComparison.Ordinal) || !int.TryParse(decoded.Substring(12), NumberStyles.None, CultureInfo.InvariantCulture, out start) || start > matches.Count)
                {
                    throw SandboxError.Ec2(400, "InvalidParameterValue", "Invalid marker: " + marker);
                }
            }
            var page = matches.Skip(start).Take(max).ToList();
            var next = start + page.Count < matches.Count ? Convert.ToBase64String(Encoding.UTF8.GetBytes("sandbox-rds:" + (start + page.Count).ToString(CultureInfo.InvariantCulture))) : null;
            return (page, next);
        }

        private static Dictionary<string, List<string>> Filters(IReadOnlyList<KeyValuePair<string, string>> form, string[] supported)
        {
            var result = new Dictionary<string, List<string>>(StringComparer.Ordinal);
            for (var n = 1; ; n++)
            {
                var name = Get(form, "Filters.Filter." + n.ToString(CultureInfo.InvariantCulture) + ".Name");
                if (name == null) break;
                if (!supported.Contains(name)) throw SandboxError.Ec2(400, "InvalidParameterValue", "Unrecognized filter name: " + name + ".");
                var values = new List<string>();
                for (var v = 1; ; v++)
                {
                    var value = Get(form, "Filters.Filter." + n.ToString(CultureInfo.InvariantCulture) + ".Values.Value." + v.ToString(CultureInfo.InvariantCulture));
                    if (value == null) break;
                    values.Add(value);
                }
                if (values.Count == 0) throw SandboxError.Ec2(400, "InvalidParameterCombination", "Filter " + name + " needs at least one value.");
                result[name] = values;
            }
            return result;
        }

        private static bool Matches(Dictionary<string, List<string>> filters, string name, string? value) =>
            !filters.TryGetValue(name, out var values) || (value != null && values.Contains(value, StringComparer.OrdinalIgnoreCase));

        private static string? Get(IReadOnlyList<KeyValuePair<string, string>> form, string name) =>
            form.Where(p => p.Key == name).Select(p => p.Value).FirstOrDefault();

        /// <summary>&lt;ErrorResponse&gt;&lt;Error&gt;&lt;Type&gt;Sender&lt;/Type&gt;&lt;Code/&gt;&lt;Message/&gt;&lt;/Error&gt;&lt;RequestId/&gt;&lt;/ErrorResponse&gt;, the awsquery error shape.</summary>
        public static string ErrorXml(SandboxError error, string requestId)
        {
            // The SigV4 verifier speaks EC2's codes; the awsquery services say InvalidClientTokenId for an unknown key.
            var code = error.Code == "AuthFailure" && error.Status == 401 ? "InvalidClientTokenId" : error.Code;
            return new XElement(Ns + "ErrorResponse",
                new XElement(Ns + "Error",
                    new XElement(Ns + "Type", error.Status >= 500 ? "Receiver" : "Sender"),
                    new XElement(Ns + "Code", code),
                    new XElement(Ns + "Message", error.ErrorMessage ?? "")),
                new XElement(Ns + "RequestId", requestId)).ToString(SaveOptions.DisableFormatting);
        }
    }
}
