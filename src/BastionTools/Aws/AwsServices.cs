using System;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using System.Threading;
using System.Threading.Tasks;
using Amazon;
using Amazon.EC2;
using Amazon.EC2.Model;
using Amazon.KeyManagementService;
using Amazon.KeyManagementService.Model;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Ssm;

namespace BastionTools.Aws
{
    /// <summary>An instance as the module shows it: EC2's view joined with SSM's.</summary>
    internal sealed class InstanceRecord
    {
        public string InstanceId { get; set; } = "";
        public string? Name { get; set; }
        public string? State { get; set; }
        public string? PrivateIpAddress { get; set; }
        public string? PlatformDetails { get; set; }
        public Dictionary<string, string> Tags { get; set; } = new(StringComparer.Ordinal);
        public string? PingStatus { get; set; }
        public string? AgentVersion { get; set; }
        public string? PlatformType { get; set; }
        public string? PlatformName { get; set; }
        public DateTime? LastPingDateTime { get; set; }
    }

    /// <summary>A Session Manager session as ssm:DescribeSessions lists it (no AWSSDK type leaves the engine).</summary>
    internal sealed class SessionRecord
    {
        public string SessionId { get; set; } = "";
        public string? Target { get; set; }
        public string? Owner { get; set; }
        public string? DocumentName { get; set; }
        public string? Reason { get; set; }
        public string? Status { get; set; }
        public DateTime? StartDate { get; set; }
        public DateTime? EndDate { get; set; }
    }

    /// <summary>
    /// What to ask ssm:DescribeSessions for: State History (ended sessions, the last 30 days) or Active, with the service's
    /// filters (each at most once: the service takes one value per key) and an optional limit on the number returned.
    /// </summary>
    internal sealed class SessionQuery
    {
        public const int MaxPageSize = 200;

        public bool History { get; set; } = true;
        public string? Target { get; set; }
        public string? Owner { get; set; }
        public string? Status { get; set; }
        public string? SessionId { get; set; }
        /// <summary>Sessions started at or after this time (filter InvokedAfter).</summary>
        public DateTime? After { get; set; }
        /// <summary>Sessions started before this time (filter InvokedBefore).</summary>
        public DateTime? Before { get; set; }
        /// <summary>At most this many sessions (pages are fetched until then); null: all.</summary>
        public int? Limit { get; set; }

        /// <summary>The request's filters as (key, value): timestamps in UTC ISO-8601 (2024-08-29T00:00:00Z), as the API documents them.</summary>
        public List<KeyValuePair<string, string>> Filters()
        {
            var filters = new List<KeyValuePair<string, string>>();
            if (After is DateTime after) filters.Add(new KeyValuePair<string, string>("InvokedAfter", Timestamp(after)));
            if (Before is DateTime before) filters.Add(new KeyValuePair<string, string>("InvokedBefore", Timestamp(before)));
            if (!string.IsNullOrEmpty(Target)) filters.Add(new KeyValuePair<string, string>("Target", Target!));
            if (!string.IsNullOrEmpty(Owner)) filters.Add(new KeyValuePair<string, string>("Owner", Owner!));
            if (!string.IsNullOrEmpty(Status)) filters.Add(new KeyValuePair<string, string>("Status", Status!));
            if (!string.IsNullOrEmpty(SessionId)) filters.Add(new KeyValuePair<string, string>("SessionId", SessionId!));
            return filters;
        }

        /// <summary>The page size of the next request: what is still wanted, at most the service's 200.</summary>
        public int PageSize(int returned) => Limit is int limit ? Math.Max(1, Math.Min(MaxPageSize, limit - returned)) : MaxPageSize;

        private static string Timestamp(DateTime t)
        {
            var utc = t.Kind == DateTimeKind.Utc ? t : t.ToUniversalTime();
            return utc.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture);
        }
    }

    /// <summary>
    /// A KMS data key: the plaintext (secret: never logged, cleared on Dispose) and the ciphertext blob the agent
    /// decrypts with kms:Decrypt.
    /// </summary>
    internal sealed class DataKey : IDisposable
    {
        public DataKey(byte[] plaintext, byte[] ciphertextBlob, string? keyArn)
        {
            Plaintext = plaintext;
            CiphertextBlob = ciphertextBlob;
            KeyArn = keyArn;
        }

        public byte[] Plaintext { get; }
        public byte[] CiphertextBlob { get; }
        public string? KeyArn { get; }

        public void Dispose() => Array.Clear(Plaintext, 0, Plaintext.Length);

        public override string ToString() => "DataKey(" + (KeyArn ?? "?") + ")";
    }

    /// <summary>The AWS calls the engine makes (SSM, EC2, KMS), behind an interface so engine tests can count them.</summary>
    internal interface IAwsApi
    {
        Task<StreamEndpoint> StartSessionAsync(string target, string? documentName, IDictionary<string, List<string>> parameters, string? reason, CancellationToken cancellationToken);

        /// <summary>
        /// A new stream URL and token for a session whose connection was lost; null when the service answers without a
        /// token (the session timed out: the official client then says "Session: id timed out" and exits).
        /// </summary>
        Task<StreamEndpoint?> ResumeSessionAsync(string sessionId, CancellationToken cancellationToken);

        Task TerminateSessionAsync(string sessionId, CancellationToken cancellationToken);

        /// <summary>EC2 instances matching ids, a Name tag or tags, joined with SSM's instance information.</summary>
        Task<IReadOnlyList<InstanceRecord>> FindInstancesAsync(IReadOnlyCollection<string>? instanceIds, string? name, IDictionary<string, string>? tags, CancellationToken cancellationToken);

        /// <summary>
        /// kms:GenerateDataKey for session encryption. Failures are BastionToolsExceptions with the session-encryption
        /// ErrorIds (SessionEncryptionDenied for AccessDenied, SessionEncryptionFailed for the rest).
        /// </summary>
        Task<DataKey> GenerateDataKeyAsync(string keyId, IDictionary<string, string> encryptionContext, int numberOfBytes, CancellationToken cancellationToken);

        /// <summary>EC2's view only (ec2:DescribeInstances): instances matching ids, a Name tag or tags, not terminated.</summary>
        Task<IReadOnlyList<InstanceRecord>> DescribeInstancesAsync(IReadOnlyCollection<string>? instanceIds, string? name, IDictionary<string, string>? tags, CancellationToken cancellationToken);

        /// <summary>Fills in SSM's view (ssm:DescribeInstanceInformation: ping status, agent version, platform) of <paramref name="records"/>.</summary>
        Task JoinInstanceInformationAsync(IReadOnlyList<InstanceRecord> records, CancellationToken cancellationToken);

        /// <summary>ssm:DescribeSessions, every page (up to <see cref="SessionQuery.Limit"/>), in the service's order.</summary>
        Task<IReadOnlyList<SessionRecord>> DescribeSessionsAsync(SessionQuery query, CancellationToken cancellationToken);
    }

    /// <summary>The IAM actions behind the module's AWS calls, as errors name them.</summary>
    internal static class IamActions
    {
        public const string StartSession = "ssm:StartSession";
        public const string ResumeSession = "ssm:ResumeSession";
        public const string TerminateSession = "ssm:TerminateSession";
        public const string DescribeInstanceInformation = "ssm:DescribeInstanceInformation";
        public const string DescribeInstances = "ec2:DescribeInstances";
        public const string DescribeSessions = "ssm:DescribeSessions";
        public const string RdsConnect = "rds-db:connect";
    }

    /// <summary>The IAwsApi over AWSSDK clients, with -EndpointUrl honoured for every call.</summary>
    internal sealed class AwsApi : IAwsApi, IDisposable
    {
        private readonly AmazonSimpleSystemsManagementClient _ssm;
        private readonly AmazonEC2Client _ec2;
        private readonly Lazy<AmazonKeyManagementServiceClient> _kms;

        public AwsApi(ResolvedCredentials credentials, string region, string? endpointUrl, string? ec2EndpointUrl = null)
        {
            var ssmConfig = new AmazonSimpleSystemsManagementConfig { MaxErrorRetry = 4, Timeout = TimeSpan.FromSeconds(30) };
            var ec2Config = new AmazonEC2Config { MaxErrorRetry = 4, Timeout = TimeSpan.FromSeconds(30) };
            if (!string.IsNullOrEmpty(endpointUrl))
            {
                ssmConfig.ServiceURL = ServiceUrl(endpointUrl!, "ssm");
                ssmConfig.AuthenticationRegion = region;
                ec2Config.ServiceURL = ServiceUrl(ec2EndpointUrl ?? endpointUrl!, "ec2");
                ec2Config.AuthenticationRegion = region;
            }
            else
            {
                ssmConfig.RegionEndpoint = RegionEndpoint.GetBySystemName(region);
                ec2Config.RegionEndpoint = RegionEndpoint.GetBySystemName(region);
            }
            _ssm = new AmazonSimpleSystemsManagementClient(credentials.SdkCredentials, ssmConfig);
            _ec2 = new AmazonEC2Client(credentials.SdkCredentials, ec2Config);
            // KMS is needed only by sessions the agent encrypts: the client is made on first use.
            _kms = new Lazy<AmazonKeyManagementServiceClient>(() =>
            {
                var kmsConfig = new AmazonKeyManagementServiceConfig { MaxErrorRetry = 4, Timeout = TimeSpan.FromSeconds(30) };
                if (!string.IsNullOrEmpty(endpointUrl))
                {
                    kmsConfig.ServiceURL = ServiceUrl(endpointUrl!, "kms");
                    kmsConfig.AuthenticationRegion = region;
                }
                else
                {
                    kmsConfig.RegionEndpoint = RegionEndpoint.GetBySystemName(region);
                }
                return new AmazonKeyManagementServiceClient(credentials.SdkCredentials, kmsConfig);
            }, LazyThreadSafetyMode.ExecutionAndPublication);
        }

        /// <summary>
        /// -EndpointUrl names one URL for the module's service calls. A URL that ends in /ssm, /ec2 or /kms (as the
        /// sandbox prints them) is taken for that service and its siblings derived; any other URL is used as it is.
        /// </summary>
        internal static string ServiceUrl(string endpointUrl, string service)
        {
            var url = endpointUrl.TrimEnd('/');
            foreach (var known in new[] { "/ssm", "/ec2", "/kms", "/rds", "/sts" })
            {
                if (url.EndsWith(known, StringComparison.OrdinalIgnoreCase))
                {
                    return url.Substring(0, url.Length - known.Length) + "/" + service;
                }
            }
            return url;
        }

        public async Task<StreamEndpoint> StartSessionAsync(string target, string? documentName, IDictionary<string, List<string>> parameters, string? reason, CancellationToken cancellationToken)
        {
            var request = new StartSessionRequest { Target = target };
            if (!string.IsNullOrEmpty(documentName)) request.DocumentName = documentName;
            if (parameters.Count > 0) request.Parameters = new Dictionary<string, List<string>>(parameters);
            if (!string.IsNullOrEmpty(reason)) request.Reason = reason;
            var response = await Call(() => _ssm.StartSessionAsync(request, cancellationToken), target, IamActions.StartSession,
                $"on the instance {target} and the document {documentName ?? "SSM-SessionManagerRunShell (checked when the policy sets ssm:SessionDocumentAccessCheck)"}").ConfigureAwait(false);
            try
            {
                return new StreamEndpoint(response.SessionId, new Uri(response.StreamUrl), response.TokenValue);
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.StreamUrlInsecure)
            {
                // The session exists on the service's side: end it rather than leave it to the idle timeout.
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                    await TerminateSessionAsync(response.SessionId, cts.Token).ConfigureAwait(false);
                }
                catch (Exception terminate) when (terminate is BastionToolsException || terminate is OperationCanceledException)
                {
                }
                throw;
            }
        }

        public async Task<StreamEndpoint?> ResumeSessionAsync(string sessionId, CancellationToken cancellationToken)
        {
            var response = await Call(() => _ssm.ResumeSessionAsync(new ResumeSessionRequest { SessionId = sessionId }, cancellationToken), sessionId, IamActions.ResumeSession, "on the session " + sessionId).ConfigureAwait(false);
            if (string.IsNullOrEmpty(response.TokenValue)) return null;
            if (string.IsNullOrEmpty(response.StreamUrl) || !Uri.TryCreate(response.StreamUrl, UriKind.Absolute, out var streamUrl))
            {
                throw new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.ProtocolError,
                    $"ResumeSession for {sessionId} answered without a usable StreamUrl.", sessionId);
            }
            return new StreamEndpoint(response.SessionId ?? sessionId, streamUrl, response.TokenValue);
        }

        public Task TerminateSessionAsync(string sessionId, CancellationToken cancellationToken)
            => Call(() => _ssm.TerminateSessionAsync(new TerminateSessionRequest { SessionId = sessionId }, cancellationToken), sessionId, IamActions.TerminateSession, "on the session " + sessionId);

        public async Task<IReadOnlyList<InstanceRecord>> FindInstancesAsync(IReadOnlyCollection<string>? instanceIds, string? name, IDictionary<string, string>? tags, CancellationToken cancellationToken)
        {
            var records = await DescribeInstancesAsync(instanceIds, name, tags, cancellationToken).ConfigureAwait(false);
            await JoinInstanceInformationAsync(records, cancellationToken).ConfigureAwait(false);
            return records;
        }

        public async Task<IReadOnlyList<InstanceRecord>> DescribeInstancesAsync(IReadOnlyCollection<string>? instanceIds, string? name, IDictionary<string, string>? tags, CancellationToken cancellationToken)
        {
            var request = new DescribeInstancesRequest { Filters = new List<Filter>() };
            if (instanceIds != null && instanceIds.Count > 0) request.InstanceIds = instanceIds.ToList();
            if (!string.IsNullOrEmpty(name)) request.Filters.Add(new Filter { Name = "tag:Name", Values = new List<string> { name! } });
            if (tags != null)
            {
                foreach (var t in tags) request.Filters.Add(new Filter { Name = "tag:" + t.Key, Values = new List<string> { t.Value } });
            }
            request.Filters.Add(new Filter { Name = "instance-state-name", Values = new List<string> { "pending", "running", "stopping", "stopped" } });

            var records = new List<InstanceRecord>();
            string? next = null;
            do
            {
                request.NextToken = next;
                var page = await Call(() => _ec2.DescribeInstancesAsync(request, cancellationToken), name ?? string.Join(",", instanceIds ?? Array.Empty<string>()),
                    IamActions.DescribeInstances, "(Resource \"*\": it has no resource-level permissions)").ConfigureAwait(false);
                foreach (var reservation in page.Reservations ?? new List<Reservation>())
                {
                    foreach (var i in reservation.Instances ?? new List<Instance>())
                    {
                        var tagMap = (i.Tags ?? new List<Amazon.EC2.Model.Tag>()).ToDictionary(t => t.Key, t => t.Value ?? "", StringComparer.Ordinal);
                        records.Add(new InstanceRecord
                        {
                            InstanceId = i.InstanceId,
                            Name = tagMap.TryGetValue("Name", out var n) ? n : null,
                            State = i.State?.Name?.Value,
                            PrivateIpAddress = i.PrivateIpAddress,
                            PlatformDetails = i.PlatformDetails,
                            Tags = tagMap,
                        });
                    }
                }
                next = page.NextToken;
            }
            while (!string.IsNullOrEmpty(next));
            return records;
        }

        public async Task JoinInstanceInformationAsync(IReadOnlyList<InstanceRecord> records, CancellationToken cancellationToken)
        {
            if (records.Count == 0) return;

            // Join SSM's view: ping status, agent version, platform.
            var byId = records.ToDictionary(r => r.InstanceId, StringComparer.Ordinal);
            foreach (var batch in Batch(byId.Keys.ToList(), 50))
            {
                var infoRequest = new DescribeInstanceInformationRequest
                {
                    Filters = new List<InstanceInformationStringFilter> { new() { Key = "InstanceIds", Values = batch } },
                    MaxResults = 50,
                };
                string? infoNext = null;
                do
                {
                    infoRequest.NextToken = infoNext;
                    var info = await Call(() => _ssm.DescribeInstanceInformationAsync(infoRequest, cancellationToken), string.Join(",", batch),
                        IamActions.DescribeInstanceInformation, "(Resource \"*\": it has no resource-level permissions)").ConfigureAwait(false);
                    foreach (var ii in info.InstanceInformationList ?? new List<InstanceInformation>())
                    {
                        if (!byId.TryGetValue(ii.InstanceId, out var r)) continue;
                        r.PingStatus = ii.PingStatus?.Value;
                        r.AgentVersion = ii.AgentVersion;
                        r.PlatformType = ii.PlatformType?.Value;
                        r.PlatformName = ii.PlatformName;
                        r.LastPingDateTime = ii.LastPingDateTime;
                    }
                    infoNext = info.NextToken;
                }
                while (!string.IsNullOrEmpty(infoNext));
            }
        }

        public async Task<DataKey> GenerateDataKeyAsync(string keyId, IDictionary<string, string> encryptionContext, int numberOfBytes, CancellationToken cancellationToken)
        {
            var request = new GenerateDataKeyRequest
            {
                KeyId = keyId,
                NumberOfBytes = numberOfBytes,
                EncryptionContext = new Dictionary<string, string>(encryptionContext, StringComparer.Ordinal),
            };
            GenerateDataKeyResponse response;
            try
            {
                response = await _kms.Value.GenerateDataKeyAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch (AmazonServiceException ex)
            {
                throw AwsErrors.MapKms(ex, keyId);
            }
            catch (AmazonClientException ex)
            {
                throw new BastionToolsException(ErrorIds.AwsServiceUnreachable, ErrorCategory.ConnectionError,
                    "AWS KMS could not be reached: " + Redactor.RedactPatterns(ex.Message), keyId, inner: ex);
            }
            var plaintext = response.Plaintext.ToArray();
            var blob = response.CiphertextBlob.ToArray();
            response.Plaintext.Position = 0;
            if (response.Plaintext.TryGetBuffer(out var buffer) && buffer.Array != null) Array.Clear(buffer.Array, buffer.Offset, buffer.Count);
            if (plaintext.Length != numberOfBytes)
            {
                Array.Clear(plaintext, 0, plaintext.Length);
                throw new BastionToolsException(ErrorIds.SessionEncryptionFailed, ErrorCategory.ProtocolError,
                    $"AWS KMS returned a data key of {plaintext.Length} bytes for {numberOfBytes} requested.", keyId);
            }
            return new DataKey(plaintext, blob, response.KeyId);
        }

        private static IEnumerable<List<string>> Batch(List<string> items, int size)
        {
            for (var i = 0; i < items.Count; i += size) yield return items.GetRange(i, Math.Min(size, items.Count - i));
        }

        /// <summary>
        /// Runs an AWS call and turns the SDK's exceptions into BastionToolsExceptions with stable ErrorIds. A denial
        /// names <paramref name="action"/> (the IAM action behind the call) and <paramref name="resources"/> itself: AWS's own
        /// text does not always say which action it refused (EC2's may be only "You are not authorized to perform this
        /// operation." with an encoded message).
        /// </summary>
        public async Task<IReadOnlyList<SessionRecord>> DescribeSessionsAsync(SessionQuery query, CancellationToken cancellationToken)
        {
            var request = new DescribeSessionsRequest { State = query.History ? Amazon.SimpleSystemsManagement.SessionState.History : Amazon.SimpleSystemsManagement.SessionState.Active };
            var filters = query.Filters();
            if (filters.Count > 0) request.Filters = filters.Select(f => new SessionFilter { Key = new SessionFilterKey(f.Key), Value = f.Value }).ToList();
            var records = new List<SessionRecord>();
            string? next = null;
            do
            {
                request.NextToken = next;
                request.MaxResults = query.PageSize(records.Count);
                var page = await Call(() => _ssm.DescribeSessionsAsync(request, cancellationToken), query.Target ?? query.Owner,
                    IamActions.DescribeSessions, "(Resource \"*\": it has no resource-level permissions)").ConfigureAwait(false);
                foreach (var s in page.Sessions ?? new List<Session>())
                {
                    if (query.Limit is int limit && records.Count >= limit) break;
                    records.Add(new SessionRecord
                    {
                        SessionId = s.SessionId ?? "",
                        Target = s.Target,
                        Owner = s.Owner,
                        DocumentName = s.DocumentName,
                        Reason = s.Reason,
                        Status = s.Status?.Value,
                        StartDate = s.StartDate,
                        EndDate = s.EndDate,
                    });
                }
                next = page.NextToken;
            }
            while (!string.IsNullOrEmpty(next) && (query.Limit is not int max || records.Count < max));
            return records;
        }

        private static async Task<T> Call<T>(Func<Task<T>> call, object? target, string action, string resources)
        {
            try
            {
                return await call().ConfigureAwait(false);
            }
            catch (AmazonServiceException ex)
            {
                throw AwsErrors.Map(ex, target, action, resources);
            }
            catch (AmazonClientException ex)
            {
                throw new BastionToolsException(ErrorIds.AwsServiceUnreachable, ErrorCategory.ConnectionError,
                    "The AWS service could not be reached: " + Redactor.RedactPatterns(ex.Message), target, inner: ex);
            }
        }

        public void Dispose()
        {
            _ssm.Dispose();
            _ec2.Dispose();
            if (_kms.IsValueCreated) _kms.Value.Dispose();
        }
    }

    /// <summary>AWS error codes → ErrorIds, categories and messages that say what to do.</summary>
    internal static class AwsErrors
    {
        /// <summary>
        /// KMS errors of kms:GenerateDataKey for session encryption: AccessDenied (the key policy or IAM policy does not
        /// allow it) is SessionEncryptionDenied; a missing, disabled or unusable key is SessionEncryptionFailed;
        /// credential, signature and throttling errors keep their general ErrorIds.
        /// </summary>
        public static BastionToolsException MapKms(AmazonServiceException ex, string keyId)
        {
            var code = ex.ErrorCode ?? "";
            var message = Redactor.RedactPatterns(ex.Message ?? code);
            switch (code)
            {
                case "AccessDeniedException":
                case "AccessDenied":
                    return new BastionToolsException(ErrorIds.SessionEncryptionDenied, ErrorCategory.PermissionDenied,
                        $"The agent asked for a KMS-encrypted session, and AWS KMS denied kms:GenerateDataKey on {keyId}: {message}", keyId,
                        "Ask for kms:GenerateDataKey on the Session Manager key (the kmsKeyId of the Session Manager preferences) in your IAM policy and the key policy.", ex);
                case "NotFoundException":
                    return new BastionToolsException(ErrorIds.SessionEncryptionFailed, ErrorCategory.ObjectNotFound,
                        $"The KMS key the Session Manager preferences name ({keyId}) was not found: {message}", keyId,
                        "Check kmsKeyId in the Session Manager preferences (SSM-SessionManagerRunShell) and the region.", ex);
                case "DisabledException":
                case "KMSInvalidStateException":
                case "KeyUnavailableException":
                    return new BastionToolsException(ErrorIds.SessionEncryptionFailed, ErrorCategory.ResourceUnavailable,
                        $"The KMS key {keyId} cannot be used now: {message}", keyId, "Enable the key, or point the Session Manager preferences at a usable key.", ex);
                case "UnrecognizedClientException":
                case "InvalidSignatureException":
                case "ExpiredTokenException":
                case "ThrottlingException":
                    return Map(ex, keyId);
                default:
                    return new BastionToolsException(ErrorIds.SessionEncryptionFailed, ErrorCategory.NotSpecified,
                        $"AWS KMS refused the session's data key ({code}): {message}", keyId, null, ex);
            }
        }

        /// <summary>
        /// The README's "Permissions" section lists, per cmdlet, the actions and resources it needs; denials point there.
        /// </summary>
        public const string PermissionsHelp = "The README's \"Permissions\" table (and about_BastionTools) lists what each cmdlet needs.";

        public static BastionToolsException Map(AmazonServiceException ex, object? target, string? action = null, string? resources = null)
        {
            var code = ex.ErrorCode ?? "";
            var message = Redactor.RedactPatterns(ex.Message ?? code);
            switch (code)
            {
                case "TargetNotConnected":
                    return new BastionToolsException(ErrorIds.BastionTargetOffline, ErrorCategory.ResourceUnavailable,
                        $"The bastion {target} is not connected to Systems Manager: {message}", target,
                        "Check that the instance is running and its SSM agent is online (Get-BastionInstance shows PingStatus).", ex);
                case "InvalidDocument":
                    return new BastionToolsException(ErrorIds.SsmDocumentInvalid, ErrorCategory.InvalidArgument, message, target, null, ex);
                case "DoesNotExistException":
                    return new BastionToolsException(ErrorIds.BastionSessionNotFound, ErrorCategory.ObjectNotFound, message, target, null, ex);
                case "AccessDeniedException":
                case "AccessDenied":
                case "UnauthorizedOperation":
                    return action == null
                        ? new BastionToolsException(ErrorIds.AwsAccessDenied, ErrorCategory.PermissionDenied,
                            $"AWS denied the request: {message}", target, PermissionsHelp, ex)
                        : new BastionToolsException(ErrorIds.AwsAccessDenied, ErrorCategory.PermissionDenied,
                            $"AWS denied {action} {resources}: {message}", target,
                            $"Ask for an IAM policy that allows {action} {resources}. {PermissionsHelp}", ex);
                case "UnrecognizedClientException":
                case "InvalidClientTokenId":
                case "AuthFailure":
                case "InvalidSignatureException":
                case "SignatureDoesNotMatch":
                case "ExpiredTokenException":
                case "RequestExpired":
                    return new BastionToolsException(ErrorIds.AwsAuthenticationFailed, ErrorCategory.AuthenticationError,
                        $"AWS did not accept the credentials: {message}", target,
                        "Check the credentials' source (-Debug shows it), refresh SSO or temporary credentials, and the machine's clock.", ex);
                case "ThrottlingException":
                case "Throttling":
                case "RequestLimitExceeded":
                    return new BastionToolsException(ErrorIds.AwsThrottled, ErrorCategory.LimitsExceeded,
                        $"AWS throttled the request after retries: {message}", target, "Wait and try again, or make fewer calls at once.", ex);
                default:
                    return new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.NotSpecified,
                        $"The AWS request failed ({code}): {message}", target, null, ex);
            }
        }
    }
}
