using System;
using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;

namespace BastionTools.Aws
{
    /// <summary>Facts about an RDS endpoint name: its validity as a host, and the region it names.</summary>
    internal static class RdsEndpoint
    {
        // <name>.<cluster-or-proxy-or-account-id>.<region>.rds.<dns suffix of the partition>
        private static readonly Regex RegionPattern = new(
            @"\.(?<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.rds\.(?:amazonaws\.com|amazonaws\.com\.cn|c2s\.ic\.gov|sc2s\.sgov\.gov|cloud\.adc-e\.uk|csp\.hci\.ic\.gov)\.?$",
            RegexOptions.Compiled | RegexOptions.CultureInvariant | RegexOptions.IgnoreCase);

        private static readonly Regex RegionName = new(@"^[a-z]{2}(?:-[a-z]+)+-\d+$", RegexOptions.Compiled | RegexOptions.CultureInvariant);

        private static readonly Regex DnsName = new(
            @"^(?=.{1,253}\.?$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$",
            RegexOptions.Compiled | RegexOptions.CultureInvariant);

        /// <summary>The region an RDS endpoint name carries (e.g. us-west-2 from mydb.c0ffee.us-west-2.rds.amazonaws.com), or null.</summary>
        public static string? InferRegion(string hostname)
        {
            if (string.IsNullOrWhiteSpace(hostname)) return null;
            var m = RegionPattern.Match(hostname.Trim());
            return m.Success ? m.Groups["region"].Value.ToLowerInvariant() : null;
        }

        public static bool IsValidRegionName(string region) => RegionName.IsMatch(region);

        /// <summary>True for a DNS name or an IP literal (IPv6 with or without brackets).</summary>
        public static bool IsValidHost(string host)
        {
            if (string.IsNullOrWhiteSpace(host)) return false;
            var h = host.Trim();
            if (h.StartsWith("[", StringComparison.Ordinal) && h.EndsWith("]", StringComparison.Ordinal)) h = h.Substring(1, h.Length - 2);
            if (IPAddress.TryParse(h, out _)) return h.IndexOf(':') >= 0 || h.Split('.').Length == 4;
            return DnsName.IsMatch(h);
        }

        /// <summary>host:port as the token (and the signed host header) carries it; IPv6 literals in brackets.</summary>
        public static string HostPort(string host, int port)
        {
            var h = host.Trim();
            if (h.IndexOf(':') >= 0 && !h.StartsWith("[", StringComparison.Ordinal)) h = "[" + h + "]";
            return h + ":" + port.ToString(CultureInfo.InvariantCulture);
        }
    }
}
