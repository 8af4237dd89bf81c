using System;
using System.Collections.Generic;

namespace BastionTools.Aws
{
    /// <summary>
    /// The RDS IAM authentication token: a SigV4 query-string presign of
    /// <c>GET https://host:port/?Action=connect&amp;DBUser=user</c> for the service <c>rds-db</c>, valid 900 seconds,
    /// printed without its scheme — byte for byte the shape <c>aws rds generate-db-auth-token</c> prints.
    /// </summary>
    internal static class RdsAuthToken
    {
        public const string Service = "rds-db";
        public const int LifetimeSeconds = 900;
        public static readonly TimeSpan Lifetime = TimeSpan.FromSeconds(LifetimeSeconds);

        public static string Generate(string hostname, int port, string userName, string region, AwsKeys keys, DateTime nowUtc)
        {
            if (!RdsEndpoint.IsValidHost(hostname)) throw new ArgumentException($"'{hostname}' is not a valid host name.", nameof(hostname));
            if (port < 1 || port > 65535) throw new ArgumentOutOfRangeException(nameof(port), port, "The port must be between 1 and 65535.");
            if (string.IsNullOrEmpty(userName)) throw new ArgumentException("The database user name is empty.", nameof(userName));
            if (!RdsEndpoint.IsValidRegionName(region)) throw new ArgumentException($"'{region}' is not a region name.", nameof(region));

            var hostPort = RdsEndpoint.HostPort(hostname, port);
            var parameters = new List<KeyValuePair<string, string>>
            {
                new("Action", "connect"),
                new("DBUser", userName),
            };
            var query = SigV4.PresignQuery(hostPort, "/", parameters, keys, region, Service,
                nowUtc.Kind == DateTimeKind.Local ? nowUtc.ToUniversalTime() : DateTime.SpecifyKind(nowUtc, DateTimeKind.Utc), LifetimeSeconds);
            return hostPort + "/?" + query;
        }
    }
}
