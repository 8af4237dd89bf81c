using System;
using System.IO;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace BastionTools.Postgres
{
    /// <summary>
    /// The IAM side of Grant-RdsIamUser: a policy that allows rds-db:connect as one database user,
    /// arn:&lt;partition&gt;:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;DbiResourceId&gt;/&lt;user&gt;.
    /// </summary>
    internal static class IamPolicy
    {
        private static readonly Regex RegionPattern = new("^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$", RegexOptions.CultureInvariant);
        private static readonly Regex AccountPattern = new("^[0-9]{12}$", RegexOptions.CultureInvariant);

        // DbiResourceId of an instance (db-…) or DbClusterResourceId of an Aurora cluster (cluster-…): upper-case letters and digits.
        private static readonly Regex ResourceIdPattern = new("^(db|cluster)-[A-Z0-9]{8,64}$", RegexOptions.CultureInvariant);

        /// <summary>The partition of a region: aws-cn for cn-*, aws-us-gov for us-gov-*, aws-iso for us-iso-*, aws-iso-b for us-isob-*, else aws.</summary>
        public static string PartitionForRegion(string region)
        {
            ValidateRegion(region);
            if (region.StartsWith("cn-", StringComparison.Ordinal)) return "aws-cn";
            if (region.StartsWith("us-gov-", StringComparison.Ordinal)) return "aws-us-gov";
            if (region.StartsWith("us-isob-", StringComparison.Ordinal)) return "aws-iso-b";
            if (region.StartsWith("us-iso-", StringComparison.Ordinal)) return "aws-iso";
            return "aws";
        }

        /// <summary>arn:&lt;partition&gt;:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;resource id&gt;/&lt;user&gt;.</summary>
        /// <param name="partition">Null: derived from the region; otherwise it must be the region's partition.</param>
        public static string ConnectResourceArn(string? partition, string region, string accountId, string dbiResourceId, string userName)
        {
            var expected = PartitionForRegion(region);
            if (partition != null && !string.Equals(partition, expected, StringComparison.Ordinal))
            {
                throw new ArgumentException("The partition '" + partition + "' does not match the region " + region + " (its partition is " + expected + ").", nameof(partition));
            }

            if (accountId is null || !AccountPattern.IsMatch(accountId))
            {
                throw new ArgumentException("The account id '" + accountId + "' is not 12 digits.", nameof(accountId));
            }

            if (dbiResourceId is null || !ResourceIdPattern.IsMatch(dbiResourceId))
            {
                throw new ArgumentException("The resource id '" + dbiResourceId + "' is not a DbiResourceId (db-ABCDEFGHIJKLMNOPQRSTUVWXYZ, from Get-RDSDBInstance) "
                    + "or a DbClusterResourceId (cluster-…): the DB instance identifier or endpoint name does not work in an rds-db:connect ARN.", nameof(dbiResourceId));
            }

            RoleNames.ValidateTarget(userName, "user name");
            if (userName.IndexOf('*') >= 0 || userName.IndexOf('?') >= 0 || userName.IndexOf("${", StringComparison.Ordinal) >= 0)
            {
                throw new ArgumentException("The user name '" + userName + "' contains '*', '?' or '${', which IAM reads as a wildcard or a policy variable: "
                    + "the policy would allow more users than this one.", nameof(userName));
            }

            return "arn:" + expected + ":rds-db:" + region + ":" + accountId + ":dbuser:" + dbiResourceId + "/" + userName;
        }

        /// <summary>
        /// The policy document (indented JSON): Version 2012-10-17, one statement allowing rds-db:connect on
        /// <see cref="ConnectResourceArn"/>.
        /// </summary>
        public static string ConnectPolicyJson(string? partition, string region, string accountId, string dbiResourceId, string userName)
        {
            var arn = ConnectResourceArn(partition, region, accountId, dbiResourceId, userName);
            using var stream = new MemoryStream();
            using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                writer.WriteStartObject();
                writer.WriteString("Version", "2012-10-17");
                writer.WriteStartArray("Statement");
                writer.WriteStartObject();
                writer.WriteString("Sid", "RdsIamConnect");
                writer.WriteString("Effect", "Allow");
                writer.WriteString("Action", "rds-db:connect");
                writer.WriteString("Resource", arn);
                writer.WriteEndObject();
                writer.WriteEndArray();
                writer.WriteEndObject();
            }

            return Encoding.UTF8.GetString(stream.ToArray());
        }

        private static void ValidateRegion(string region)
        {
            if (region is null || !RegionPattern.IsMatch(region))
            {
                throw new ArgumentException("The region '" + region + "' is not an AWS region name such as eu-west-1.", nameof(region));
            }
        }
    }
}
