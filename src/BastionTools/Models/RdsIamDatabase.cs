using System;

namespace BastionTools
{
    /// <summary>
    /// An RDS DB instance or Aurora DB cluster as Get-RdsIamDatabase shows it: what IAM database authentication needs
    /// (endpoint, port, whether it is enabled, the resource id of rds-db:connect's ARN, the owning account).
    /// </summary>
    public sealed class RdsIamDatabase
    {
        /// <summary>Instance (an RDS DB instance, or an Aurora cluster's member instance) or Cluster (an Aurora DB cluster).</summary>
        public string Kind { get; internal set; } = "";

        /// <summary>The DB instance identifier or DB cluster identifier.</summary>
        public string Identifier { get; internal set; } = "";

        public string Engine { get; internal set; } = "";
        public string? EngineVersion { get; internal set; }
        public string? Status { get; internal set; }

        /// <summary>The instance endpoint, or the cluster (writer) endpoint.</summary>
        public string? Endpoint { get; internal set; }

        public int Port { get; internal set; }

        /// <summary>The Aurora cluster's reader endpoint (clusters only).</summary>
        public string? ReaderEndpoint { get; internal set; }

        /// <summary>The Aurora cluster's custom endpoints (clusters only).</summary>
        public string[] CustomEndpoints { get; internal set; } = Array.Empty<string>();

        /// <summary>Whether IAM database authentication is enabled (for an Aurora member instance: its cluster's setting).</summary>
        public bool IamAuthenticationEnabled { get; internal set; }

        /// <summary>
        /// The resource id of the rds-db:connect ARN: the DbiResourceId (db-…) of an RDS instance, the DbClusterResourceId
        /// (cluster-…) of an Aurora cluster and of its member instances.
        /// </summary>
        public string? ResourceId { get; internal set; }

        /// <summary>The instance's own DbiResourceId (instances only).</summary>
        public string? DbiResourceId { get; internal set; }

        /// <summary>The cluster's DbClusterResourceId (clusters, and member instances once their cluster is known).</summary>
        public string? DbClusterResourceId { get; internal set; }

        /// <summary>The DB instance identifier (instances only; binds -DbInstanceIdentifier from the pipeline).</summary>
        public string? DbInstanceIdentifier { get; internal set; }

        /// <summary>The Aurora cluster a member instance belongs to (and a cluster's own identifier).</summary>
        public string? DbClusterIdentifier { get; internal set; }

        /// <summary>The instance identifiers of an Aurora cluster's members.</summary>
        public string[] Members { get; internal set; } = Array.Empty<string>();

        public string? VpcId { get; internal set; }
        public string Region { get; internal set; } = "";

        /// <summary>The account that owns the database (from its ARN).</summary>
        public string? AccountId { get; internal set; }

        /// <summary>The database's own ARN (arn:aws:rds:…:db:… or …:cluster:…).</summary>
        public string? Arn { get; internal set; }

        public override string ToString() => Kind + " " + Identifier + (Endpoint == null ? "" : " (" + Endpoint + ":" + Port + ")");
    }
}
