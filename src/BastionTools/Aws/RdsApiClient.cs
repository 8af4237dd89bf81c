using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Management.Automation;
using System.Net.Http;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using System.Xml;
using System.Xml.Linq;

namespace BastionTools.Aws
{
    /// <summary>
    /// The RDS Query API calls the module makes (AWSSDK.RDS is not used): DescribeDBInstances and DescribeDBClusters,
    /// form-encoded POSTs (Version 2014-10-31) signed with SigV4 for service rds, Marker pagination, XML parsed with DTDs
    /// prohibited, errors (&lt;ErrorResponse&gt;&lt;Error&gt;&lt;Code&gt;) mapped to stable ErrorIds.
    /// </summary>
    internal sealed class RdsApiClient : IDisposable
    {
        public const string ApiVersion = "2014-10-31";
        public const string Service = "rds";
        public const string DescribeInstancesAction = "rds:DescribeDBInstances";
        public const string DescribeClustersAction = "rds:DescribeDBClusters";
        private static readonly XNamespace Ns = "http://rds.amazonaws.com/doc/" + ApiVersion + "/";

        private readonly Func<AwsKeys> _keys;
        private readonly HttpClient _http;
        private readonly Func<DateTime> _clock;

        public RdsApiClient(Func<AwsKeys> keys, string region, string? endpointUrl, HttpMessageHandler? handler = null, Func<DateTime>? clock = null)
        {
            _keys = keys;
            Region = region;
            Endpoint = new Uri(string.IsNullOrEmpty(endpointUrl) ? DefaultEndpoint(region) : AwsApi.ServiceUrl(endpointUrl!, Service));
            _http = handler == null ? new HttpClient() : new HttpClient(handler);
            _http.Timeout = TimeSpan.FromSeconds(30);
            _clock = clock ?? (() => DateTime.UtcNow);
        }

        public string Region { get; }
        public Uri Endpoint { get; }

        /// <summary>Records per page (20..100).</summary>
        public int MaxRecords { get; set; } = 100;

        /// <summary>Requests sent (pages read), for tests.</summary>
        public int Requests => _requests;

        private int _requests;

        /// <summary>https://rds.&lt;region&gt;.amazonaws.com/ (amazonaws.com.cn in the China regions).</summary>
        public static string DefaultEndpoint(string region) =>
            "https://rds." + region + (region.StartsWith("cn-", StringComparison.Ordinal) ? ".amazonaws.com.cn" : ".amazonaws.com") + "/";

        /// <summary>DescribeDBInstances, every page; one instance (or DBInstanceNotFound) when <paramref name="identifier"/> is given.</summary>
        public async Task<IReadOnlyList<RdsIamDatabase>> DescribeInstancesAsync(string? identifier, CancellationToken ct)
        {
            var result = new List<RdsIamDatabase>();
            foreach (var page in await PagesAsync("DescribeDBInstances", "DBInstanceIdentifier", identifier, DescribeInstancesAction, ct).ConfigureAwait(false))
            {
                foreach (var e in page.Elements(Ns + "DBInstances").Elements(Ns + "DBInstance")) result.Add(ParseInstance(e));
            }
            return result;
        }

        /// <summary>DescribeDBClusters, every page; one cluster (or DBClusterNotFoundFault) when <paramref name="identifier"/> is given.</summary>
        public async Task<IReadOnlyList<RdsIamDatabase>> DescribeClustersAsync(string? identifier, CancellationToken ct)
        {
            var result = new List<RdsIamDatabase>();
            foreach (var page in await PagesAsync("DescribeDBClusters", "DBClusterIdentifier", identifier, DescribeClustersAction, ct).ConfigureAwait(false))
            {
                foreach (var e in page.Elements(Ns + "DBClusters").Elements(Ns + "DBCluster")) result.Add(ParseCluster(e));
            }
            return result;
        }

        private async Task<List<XElement>> PagesAsync(string action, string idName, string? identifier, string iamAction, CancellationToken ct)
        {
            var pages = new List<XElement>();
            string? marker = null;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            do
            {
                var form = new List<KeyValuePair<string, string>>
                {
                    new("Action", action),
                    new("Version", ApiVersion),
                };
                if (identifier != null) form.Add(new(idName, identifier));
                else form.Add(new("MaxRecords", MaxRecords.ToString(CultureInfo.InvariantCulture)));
                if (marker != null) form.Add(new("Marker", marker));
                var result = await PostAsync(action, form, identifier, iamAction, ct).ConfigureAwait(false);
                pages.Add(result);
                marker = (string?)result.Element(Ns + "Marker");
                if (marker != null && !seen.Add(marker))
                {
                    throw new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.InvalidResult, $"RDS {action} returned the same Marker twice.", identifier);
                }
            }
            while (!string.IsNullOrEmpty(marker));
            return pages;
        }

        private async Task<XElement> PostAsync(string action, List<KeyValuePair<string, string>> form, string? target, string iamAction, CancellationToken ct)
        {
            var body = string.Join("&", form.Select(p => SigV4.UriEncode(p.Key) + "=" + SigV4.UriEncode(p.Value)));
            var bodyBytes = Encoding.UTF8.GetBytes(body);
            const string contentType = "application/x-www-form-urlencoded; charset=utf-8";
            var keys = _keys();
            var now = _clock().ToUniversalTime();
            var amzDate = now.ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
            var date = now.ToString(SigV4.DateFormat, CultureInfo.InvariantCulture);
            var host = Endpoint.IsDefaultPort ? Endpoint.Host : Endpoint.Host + ":" + Endpoint.Port.ToString(CultureInfo.InvariantCulture);
            var payloadHash = SigV4.Sha256Hex(bodyBytes);
            var headers = new List<KeyValuePair<string, string>>
            {
                new("content-type", contentType),
                new("host", host),
                new("x-amz-date", amzDate),
            };
            if (keys.SessionToken != null) headers.Add(new("x-amz-security-token", keys.SessionToken));
            var (canonicalHeaders, signedHeaders) = SigV4.CanonicalHeaders(headers);
            var path = string.IsNullOrEmpty(Endpoint.AbsolutePath) ? "/" : Endpoint.AbsolutePath;
            var canonical = SigV4.CanonicalRequest("POST", SigV4.CanonicalPath(path), "", canonicalHeaders, signedHeaders, payloadHash);
            var scope = SigV4.Scope(date, Region, Service);
            var signature = SigV4.Signature(keys.SecretAccessKey, date, Region, Service, SigV4.StringToSign(amzDate, scope, canonical));

            using var request = new HttpRequestMessage(HttpMethod.Post, Endpoint);
            request.Content = new ByteArrayContent(bodyBytes);
            request.Content.Headers.TryAddWithoutValidation("Content-Type", contentType);
            request.Headers.TryAddWithoutValidation("X-Amz-Date", amzDate);
            if (keys.SessionToken != null) request.Headers.TryAddWithoutValidation("X-Amz-Security-Token", keys.SessionToken);
            request.Headers.TryAddWithoutValidation("Authorization",
                SigV4.Algorithm + " Credential=" + keys.AccessKeyId + "/" + scope + ", SignedHeaders=" + signedHeaders + ", Signature=" + signature);

            Interlocked.Increment(ref _requests);
            HttpResponseMessage response;
            try
            {
                response = await _http.SendAsync(request, ct).ConfigureAwait(false);
            }
            catch (HttpRequestException ex)
            {
                throw new BastionToolsException(ErrorIds.AwsServiceUnreachable, ErrorCategory.ConnectionError,
                    $"RDS at {Endpoint} could not be reached: {ex.Message}", target, "Check the network, the region and -EndpointUrl.", ex);
            }
            catch (TaskCanceledException ex) when (!ct.IsCancellationRequested)
            {
                throw new BastionToolsException(ErrorIds.AwsServiceUnreachable, ErrorCategory.OperationTimeout,
                    $"RDS at {Endpoint} did not answer {action} in time.", target, null, ex);
            }
            using (response)
            {
                var text = await response.Content.ReadAsStringAsync().ConfigureAwait(false);
                XElement root;
                try
                {
                    root = Parse(text);
                }
                catch (XmlException ex)
                {
                    throw new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.InvalidResult,
                        $"RDS answered {action} with HTTP {(int)response.StatusCode} and a body that is not XML: {ex.Message}", target, null, ex);
                }
                if (!response.IsSuccessStatusCode || root.Name.LocalName == "ErrorResponse")
                {
                    var error = root.Descendants().FirstOrDefault(e => e.Name.LocalName == "Error");
                    var code = (string?)error?.Elements().FirstOrDefault(e => e.Name.LocalName == "Code") ?? ((int)response.StatusCode).ToString(CultureInfo.InvariantCulture);
                    var message = (string?)error?.Elements().FirstOrDefault(e => e.Name.LocalName == "Message") ?? code;
                    throw MapError(code, Redactor.RedactPatterns(message), target, iamAction, (int)response.StatusCode);
                }
                var result = root.Element(Ns + action + "Result");
                if (result == null)
                {
                    throw new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.InvalidResult, $"RDS answered {action} without {action}Result.", target);
                }
                return result;
            }
        }

        /// <summary>XML from the service: no DTD, no external entities, bounded.</summary>
        internal static XElement Parse(string text)
        {
            var settings = new XmlReaderSettings
            {
                DtdProcessing = DtdProcessing.Prohibit,
                XmlResolver = null,
                MaxCharactersInDocument = 64L * 1024 * 1024,
                IgnoreComments = true,
            };
            using var reader = XmlReader.Create(new StringReader(text), settings);
            return XElement.Load(reader);
        }

        internal static BastionToolsException MapError(string code, string message, string? target, string iamAction, int status)
        {
            switch (code)
            {
                case "DBInstanceNotFound":
                case "DBInstanceNotFoundFault":
                    return new BastionToolsException(ErrorIds.RdsDatabaseNotFound, ErrorCategory.ObjectNotFound,
                        $"There is no DB instance '{target}' in this region: {message}", target,
                        "Get-RdsIamDatabase lists the instances and Aurora clusters (-Region to look elsewhere); for an Aurora cluster use -DbClusterIdentifier.");
                case "DBClusterNotFoundFault":
                case "DBClusterNotFound":
                    return new BastionToolsException(ErrorIds.RdsDatabaseNotFound, ErrorCategory.ObjectNotFound,
                        $"There is no DB cluster '{target}' in this region: {message}", target,
                        "Get-RdsIamDatabase lists the instances and Aurora clusters (-Region to look elsewhere); for a DB instance use -DbInstanceIdentifier.");
                case "AccessDenied":
                case "AccessDeniedException":
                case "UnauthorizedOperation":
                    return new BastionToolsException(ErrorIds.RdsAccessDenied, ErrorCategory.PermissionDenied,
                        $"AWS denied {iamAction}: {message}", target,
                        $"Ask for {iamAction} in your IAM policy, or pass -DbHost (and -DbPort, -DbiResourceId) instead of an identifier: connecting needs no rds:Describe* permission. {AwsErrors.PermissionsHelp}");
                case "InvalidClientTokenId":
                case "SignatureDoesNotMatch":
                case "IncompleteSignature":
                case "ExpiredToken":
                case "ExpiredTokenException":
                case "AuthFailure":
                case "RequestExpired":
                    return new BastionToolsException(ErrorIds.AwsAuthenticationFailed, ErrorCategory.AuthenticationError,
                        $"AWS did not accept the credentials: {message}", target,
                        "Check the credentials' source (-Debug shows it), refresh SSO or temporary credentials, and the machine's clock.");
                case "Throttling":
                case "ThrottlingException":
                    return new BastionToolsException(ErrorIds.AwsThrottled, ErrorCategory.LimitsExceeded,
                        $"AWS throttled the request: {message}", target, "Wait and try again, or make fewer calls at once.");
                default:
                    return new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.NotSpecified,
                        $"The RDS request failed (HTTP {status}, {code}): {message}", target);
            }
        }

        private RdsIamDatabase ParseInstance(XElement e)
        {
            string? S(string name) => (string?)e.Element(Ns + name);
            var endpoint = e.Element(Ns + "Endpoint");
            var arn = S("DBInstanceArn");
            var db = new RdsIamDatabase
            {
                Kind = "Instance",
                Identifier = S("DBInstanceIdentifier") ?? "",
                DbInstanceIdentifier = S("DBInstanceIdentifier"),
                Engine = S("Engine") ?? "",
                EngineVersion = S("EngineVersion"),
                Status = S("DBInstanceStatus"),
                Endpoint = (string?)endpoint?.Element(Ns + "Address"),
                Port = Int((string?)endpoint?.Element(Ns + "Port")) ?? Int(S("DbInstancePort")) ?? 0,
                IamAuthenticationEnabled = Bool(S("IAMDatabaseAuthenticationEnabled")),
                DbiResourceId = S("DbiResourceId"),
                DbClusterIdentifier = S("DBClusterIdentifier"),
                VpcId = (string?)e.Element(Ns + "DBSubnetGroup")?.Element(Ns + "VpcId"),
                Region = Region,
                Arn = arn,
                AccountId = AccountFromArn(arn),
            };
            db.ResourceId = db.DbClusterIdentifier == null ? db.DbiResourceId : null; // an Aurora member's: its cluster's (filled in by the resolver)
            return db;
        }

        private RdsIamDatabase ParseCluster(XElement e)
        {
            string? S(string name) => (string?)e.Element(Ns + name);
            var arn = S("DBClusterArn");
            return new RdsIamDatabase
            {
                Kind = "Cluster",
                Identifier = S("DBClusterIdentifier") ?? "",
                Engine = S("Engine") ?? "",
                EngineVersion = S("EngineVersion"),
                Status = S("Status"),
                Endpoint = S("Endpoint"),
                ReaderEndpoint = S("ReaderEndpoint"),
                CustomEndpoints = e.Element(Ns + "CustomEndpoints")?.Elements().Select(m => m.Value).ToArray() ?? Array.Empty<string>(),
                Port = Int(S("Port")) ?? 0,
                IamAuthenticationEnabled = Bool(S("IAMDatabaseAuthenticationEnabled")),
                DbClusterResourceId = S("DbClusterResourceId"),
                ResourceId = S("DbClusterResourceId"),
                DbClusterIdentifier = S("DBClusterIdentifier"),
                Members = e.Element(Ns + "DBClusterMembers")?.Elements(Ns + "DBClusterMember").Select(m => (string?)m.Element(Ns + "DBInstanceIdentifier") ?? "").ToArray() ?? Array.Empty<string>(),
                Region = Region,
                Arn = arn,
                AccountId = AccountFromArn(arn),
            };
        }

        private static int? Int(string? s) => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : null;

        private static bool Bool(string? s) => string.Equals(s, "true", StringComparison.OrdinalIgnoreCase);

        /// <summary>The account field of an ARN (arn:partition:service:region:account:…), or null.</summary>
        internal static string? AccountFromArn(string? arn)
        {
            if (arn == null) return null;
            var parts = arn.Split(':');
            return parts.Length > 5 && parts[4].Length == 12 && parts[4].All(char.IsDigit) ? parts[4] : null;
        }

        public void Dispose() => _http.Dispose();
    }
}
