using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BastionTools.Sandbox
{
    /// <summary>The SSM operations of the sandbox (AWS JSON 1.1, X-Amz-Target: AmazonSSM.&lt;Op&gt;).</summary>
    internal sealed class SsmApi
    {
        public const string TargetPrefix = "AmazonSSM.";
        private readonly SandboxHost _host;

        public SsmApi(SandboxHost host) => _host = host;

        private SandboxWorld World => _host.World;

        /// <summary>Runs one operation; returns the JSON response body or throws <see cref="SandboxError"/>.</summary>
        public string Handle(string operation, JsonObject input, SandboxCredential caller)
        {
            switch (operation)
            {
                case "StartSession": return StartSession(input, caller);
                case "ResumeSession": return ResumeSession(input, caller);
                case "TerminateSession": return TerminateSession(input, caller);
                case "DescribeInstanceInformation": return DescribeInstanceInformation(input, caller);
                case "DescribeSessions": return DescribeSessions(input, caller);
                default: throw SandboxError.Coral("UnknownOperationException", null);
            }
        }

        /// <summary>
        /// IAM, after the input is read and before anything else (an unknown document or an offline target is not revealed
        /// to a caller who may not start sessions): AccessDeniedException as SSM answers it.
        /// </summary>
        private void Authorize(SandboxCredential caller, string action, string resource) =>
            SandboxIamPolicy.Authorize(World, caller, action, resource).ThrowIfDeniedJson11();

        private string StartSession(JsonObject input, SandboxCredential caller)
        {
            var target = RequiredString(input, "Target", "target");
            var documentName = OptionalString(input, "DocumentName");
            var reason = OptionalString(input, "Reason");
            var parameters = ReadParameters(input["Parameters"]);

            // ssm:StartSession on the target, and on the document when one is named. Without DocumentName the default
            // document (SSM-SessionManagerRunShell) is not checked: AWS checks it only under the policy condition
            // ssm:SessionDocumentAccessCheck, which the sandbox does not model (see AGENT.md).
            Authorize(caller, "ssm:StartSession", SandboxArns.Instance(World, target));
            if (documentName != null) Authorize(caller, "ssm:StartSession", SandboxArns.Document(World, documentName));

            var effectiveDocument = documentName ?? SsmDocuments.Shell;
            if (!SsmDocuments.All.Contains(effectiveDocument, StringComparer.Ordinal))
            {
                throw SandboxError.Ssm("InvalidDocument", "Document with name " + effectiveDocument + " does not exist.");
            }

            var instance = World.FindInstance(target);
            if (instance == null || instance.PingStatus != "Online" || instance.State != "running")
            {
                throw SandboxError.Ssm("TargetNotConnected", target + " is not connected.");
            }

            if (effectiveDocument == SsmDocuments.PortForwarding || effectiveDocument == SsmDocuments.PortForwardingToRemoteHost)
            {
                if (!parameters.ContainsKey("portNumber")) parameters["portNumber"] = new[] { "80" };
                if (!parameters.ContainsKey("localPortNumber")) parameters["localPortNumber"] = new[] { "0" };
                if (effectiveDocument == SsmDocuments.PortForwardingToRemoteHost && (!parameters.TryGetValue("host", out var host) || host.Count == 0 || string.IsNullOrEmpty(host[0])))
                {
                    throw SandboxError.Ssm("InvalidParameters", "Parameter \"host\" is required.");
                }
            }
            if (effectiveDocument == SsmDocuments.NonInteractiveCommand && (!parameters.TryGetValue("command", out var command) || command.Count == 0 || string.IsNullOrWhiteSpace(command[0])))
            {
                throw SandboxError.Ssm("InvalidParameters", "Parameter \"command\" is required.");
            }

            var session = _host.Sessions.Add(caller.UserName, target, effectiveDocument, documentName != null, parameters, reason, caller.AccessKeyId, World.Clock.UtcNow);
            session.KmsKeyId = World.Preferences.KmsKeyId;
            session.OwnerArn = SandboxIamPolicy.CallerArn(World, caller);
            return SessionResponse(session);
        }

        private string ResumeSession(JsonObject input, SandboxCredential caller)
        {
            var sessionId = RequiredString(input, "SessionId", "sessionId");
            Authorize(caller, "ssm:ResumeSession", SandboxArns.Session(World, sessionId));
            if (!_host.Sessions.TryResume(sessionId, out var session, out var terminated, out var timedOut))
            {
                // A session that timed out: 200 with the id and neither TokenValue nor StreamUrl (sessionhandler.go
                // ResumeSessionHandler: an empty token means "Session: <id> timed out").
                if (timedOut) return new JsonObject { ["SessionId"] = sessionId }.ToJsonString();
                throw SandboxError.Ssm("DoesNotExistException", terminated
                    ? "Session " + sessionId + " has been terminated and cannot be resumed."
                    : "Session " + sessionId + " does not exist.");
            }
            return SessionResponse(session);
        }

        private string TerminateSession(JsonObject input, SandboxCredential caller)
        {
            var sessionId = RequiredString(input, "SessionId", "sessionId");
            Authorize(caller, "ssm:TerminateSession", SandboxArns.Session(World, sessionId));
            // TerminateSession models no DoesNotExistException (the SDK has no mapping for it there): like the
            // service, it answers with the id whether or not the session exists or has already ended.
            _host.Sessions.Terminate(sessionId, World.Clock.UtcNow);
            return new JsonObject { ["SessionId"] = sessionId }.ToJsonString();
        }

        private string SessionResponse(SandboxSession session) => new JsonObject
        {
            ["SessionId"] = session.SessionId,
            ["StreamUrl"] = _host.StreamUrlFor(session),
            ["TokenValue"] = session.CurrentToken,
        }.ToJsonString();

        // ---- DescribeSessions ----

        private static readonly string[] SessionStates = { "Active", "History" };
        private static readonly string[] SessionFilterKeys = { "InvokedAfter", "InvokedBefore", "Target", "Owner", "Status", "SessionId", "AccessType" };
        private static readonly string[] SessionStatuses = { "Connected", "Connecting", "Disconnected", "Terminated", "Terminating", "Failed" };

        /// <summary>
        /// DescribeSessions (ssm-2014-11-06): State Active (not ended) or History (ended), Filters of {key, value}
        /// (1 to 6; keys InvokedAfter/InvokedBefore take an ISO-8601 timestamp and compare with the start date),
        /// MaxResults 1..200, NextToken. Newest first. No resource-level permissions (the account is named).
        /// </summary>
        private string DescribeSessions(JsonObject input, SandboxCredential caller)
        {
            Authorize(caller, "ssm:DescribeSessions", SandboxArns.SsmAccount(World));
            var state = RequiredString(input, "State", "state");
            if (!SessionStates.Contains(state, StringComparer.Ordinal))
            {
                throw SandboxError.Validation("1 validation error detected: Value '" + state + "' at 'state' failed to satisfy constraint: Member must satisfy enum value set: [" + string.Join(", ", SessionStates) + "]");
            }
            var maxResults = 20;
            if (input["MaxResults"] is JsonNode m)
            {
                maxResults = ReadInt(m, "maxResults");
                if (maxResults < 1) throw SandboxError.Validation("1 validation error detected: Value '" + maxResults.ToString(CultureInfo.InvariantCulture) + "' at 'maxResults' failed to satisfy constraint: Member must have value greater than or equal to 1");
                if (maxResults > 200) throw SandboxError.Validation("1 validation error detected: Value '" + maxResults.ToString(CultureInfo.InvariantCulture) + "' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 200");
            }
            var predicates = new List<Func<SandboxSession, bool>>();
            if (input["Filters"] is JsonNode filtersNode)
            {
                if (filtersNode is not JsonArray filters) throw SandboxError.Coral("SerializationException", "Expected a list for filters.");
                if (filters.Count < 1 || filters.Count > 6)
                {
                    throw SandboxError.Validation("1 validation error detected: Value '" + filters.ToJsonString() + "' at 'filters' failed to satisfy constraint: Member must have length " + (filters.Count < 1 ? "greater than or equal to 1" : "less than or equal to 6"));
                }
                var n = 0;
                foreach (var node in filters)
                {
                    n++;
                    if (node is not JsonObject f) throw SandboxError.Coral("SerializationException", "Expected a structure for filters member.");
                    var key = f["key"] is JsonNode k ? ReadString(k, "key") : throw SandboxError.Validation("1 validation error detected: Value null at 'filters." + n.ToString(CultureInfo.InvariantCulture) + ".member.key' failed to satisfy constraint: Member must not be null");
                    var value = f["value"] is JsonNode v ? ReadString(v, "value") : throw SandboxError.Validation("1 validation error detected: Value null at 'filters." + n.ToString(CultureInfo.InvariantCulture) + ".member.value' failed to satisfy constraint: Member must not be null");
                    if (!SessionFilterKeys.Contains(key, StringComparer.Ordinal))
                    {
                        throw SandboxError.Validation("1 validation error detected: Value '" + key + "' at 'filters." + n.ToString(CultureInfo.InvariantCulture) + ".member.key' failed to satisfy constraint: Member must satisfy enum value set: [" + string.Join(", ", SessionFilterKeys) + "]");
                    }
                    if (value.Length < 1 || value.Length > 400)
                    {
                        throw SandboxError.Validation("1 validation error detected: Value '" + value + "' at 'filters." + n.ToString(CultureInfo.InvariantCulture) + ".member.value' failed to satisfy constraint: Member must have length " + (value.Length < 1 ? "greater than or equal to 1" : "less than or equal to 400"));
                    }
                    predicates.Add(SessionFilterPredicate(key, value));
                }
            }
            var history = state == "History";
            var matches = _host.Sessions.Snapshot()
                .Where(s => IsEndedState(s.State) == history && predicates.All(p => p(s)))
                .OrderByDescending(s => s.StartedUtc)
                .ToList();
            var start = DecodeNextToken(input["NextToken"]?.GetValue<string>(), matches.Count);
            var page = matches.Skip(start).Take(maxResults).ToList();
            var items = new JsonArray();
            foreach (var s in page)
            {
                var item = new JsonObject
                {
                    ["SessionId"] = s.SessionId,
                    ["Target"] = s.Target,
                    ["Status"] = SessionStatus(s.State),
                    ["StartDate"] = EpochSeconds(s.StartedUtc),
                    ["DocumentName"] = s.DocumentName,
                    ["Owner"] = s.OwnerArn,
                    ["AccessType"] = "Standard",
                };
                if (s.EndedUtc is DateTime ended) item["EndDate"] = EpochSeconds(ended);
                if (s.Reason != null) item["Reason"] = s.Reason;
                items.Add(item);
            }
            var result = new JsonObject { ["Sessions"] = items };
            if (start + page.Count < matches.Count) result["NextToken"] = EncodeNextToken(start + page.Count);
            return result.ToJsonString();
        }

        private static bool IsEndedState(SandboxSessionState state) => state == SandboxSessionState.Terminated || state == SandboxSessionState.TimedOut;

        /// <summary>SSM's SessionStatus of a sandbox session: a session that timed out is Terminated, as the service shows it.</summary>
        private static string SessionStatus(SandboxSessionState state) => state switch
        {
            SandboxSessionState.Connecting => "Connecting",
            SandboxSessionState.Connected => "Connected",
            SandboxSessionState.Disconnected => "Disconnected",
            _ => "Terminated",
        };

        private static Func<SandboxSession, bool> SessionFilterPredicate(string key, string value)
        {
            switch (key)
            {
                case "InvokedAfter":
                case "InvokedBefore":
                    if (!DateTime.TryParse(value, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out var when))
                    {
                        throw SandboxError.Validation("1 validation error detected: Value '" + value + "' at 'filters.member.value' for " + key + " is not a valid timestamp (use the ISO-8601 format, e.g. 2024-08-29T00:00:00Z)");
                    }
                    return key == "InvokedAfter" ? s => s.StartedUtc >= when : s => s.StartedUtc < when;
                case "Target":
                    return s => string.Equals(s.Target, value, StringComparison.Ordinal);
                case "Owner":
                    return s => string.Equals(s.OwnerArn, value, StringComparison.Ordinal);
                case "SessionId":
                    return s => string.Equals(s.SessionId, value, StringComparison.Ordinal);
                case "Status":
                    if (!SessionStatuses.Contains(value, StringComparer.Ordinal))
                    {
                        throw SandboxError.Validation("1 validation error detected: Value '" + value + "' for the Status filter failed to satisfy constraint: Member must satisfy enum value set: [" + string.Join(", ", SessionStatuses) + "]");
                    }
                    return s => SessionStatus(s.State) == value;
                case "AccessType":
                    return _ => value == "Standard";
                default:
                    throw SandboxError.Ssm("InvalidFilterKey", "The filter key " + key + " is not valid.");
            }
        }

        // ---- DescribeInstanceInformation ----

        private static readonly string[] ListFilterKeys = { "InstanceIds", "AgentVersion", "PingStatus", "PlatformTypes", "ActivationIds", "IamRole", "ResourceType", "AssociationStatus" };
        private static readonly string[] PingStatuses = { "Online", "ConnectionLost", "Inactive" };
        private static readonly string[] PlatformTypes = { "Windows", "Linux", "MacOS" };

        private string DescribeInstanceInformation(JsonObject input, SandboxCredential caller)
        {
            // No resource-level permissions: SSM names the account ("arn:aws:ssm:<region>:<account>:*") in its message.
            Authorize(caller, "ssm:DescribeInstanceInformation", SandboxArns.SsmAccount(World));
            var maxResults = 50;
            if (input["MaxResults"] is JsonNode m)
            {
                maxResults = ReadInt(m, "maxResults");
                if (maxResults < 5) throw SandboxError.Validation("1 validation error detected: Value '" + maxResults.ToString(CultureInfo.InvariantCulture) + "' at 'maxResults' failed to satisfy constraint: Member must have value greater than or equal to 5");
                if (maxResults > 50) throw SandboxError.Validation("1 validation error detected: Value '" + maxResults.ToString(CultureInfo.InvariantCulture) + "' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 50");
            }

            var predicates = new List<Func<SandboxInstance, bool>>();
            if (input["InstanceInformationFilterList"] is JsonArray list)
            {
                foreach (var f in list.OfType<JsonObject>())
                {
                    var key = f["key"]?.GetValue<string>() ?? throw SandboxError.Validation("1 validation error detected: Value null at 'instanceInformationFilterList.1.member.key' failed to satisfy constraint: Member must not be null");
                    if (!ListFilterKeys.Contains(key, StringComparer.Ordinal))
                    {
                        throw SandboxError.Validation("1 validation error detected: Value '" + key + "' at 'instanceInformationFilterList.1.member.key' failed to satisfy constraint: Member must satisfy enum value set: [" + string.Join(", ", ListFilterKeys) + "]");
                    }
                    predicates.Add(FilterPredicate(key, ReadStringArray(f["valueSet"])));
                }
            }
            if (input["Filters"] is JsonArray filters)
            {
                foreach (var f in filters.OfType<JsonObject>())
                {
                    var key = f["Key"]?.GetValue<string>() ?? throw SandboxError.Validation("1 validation error detected: Value null at 'filters.1.member.key' failed to satisfy constraint: Member must not be null");
                    predicates.Add(FilterPredicate(key, ReadStringArray(f["Values"])));
                }
            }

            var matches = World.Instances.Where(i => i.State != "terminated" && predicates.All(p => p(i))).ToList();
            var start = DecodeNextToken(input["NextToken"]?.GetValue<string>(), matches.Count);
            var page = matches.Skip(start).Take(maxResults).ToList();
            var items = new JsonArray();
            foreach (var i in page) items.Add(InstanceInformation(i));
            var result = new JsonObject { ["InstanceInformationList"] = items };
            if (start + page.Count < matches.Count) result["NextToken"] = EncodeNextToken(start + page.Count);
            return result.ToJsonString();
        }

        private Func<SandboxInstance, bool> FilterPredicate(string key, IReadOnlyList<string> values)
        {
            if (values.Count == 0) throw SandboxError.Ssm("InvalidInstanceInformationFilterValue", "The filter value set for " + key + " must not be empty.");
            switch (key)
            {
                case "InstanceIds":
                    return i => values.Contains(i.InstanceId, StringComparer.Ordinal);
                case "PingStatus":
                    foreach (var v in values)
                    {
                        if (!PingStatuses.Contains(v, StringComparer.Ordinal)) throw SandboxError.Ssm("InvalidInstanceInformationFilterValue", "The filter value " + v + " is not valid for PingStatus.");
                    }
                    return i => values.Contains(i.PingStatus, StringComparer.Ordinal);
                case "PlatformTypes":
                    foreach (var v in values)
                    {
                        if (!PlatformTypes.Contains(v, StringComparer.Ordinal)) throw SandboxError.Ssm("InvalidInstanceInformationFilterValue", "The filter value " + v + " is not valid for PlatformTypes.");
                    }
                    return i => values.Contains(i.PlatformType, StringComparer.Ordinal);
                case "AgentVersion":
                    return i => values.Contains(i.AgentVersion, StringComparer.Ordinal);
                case "ResourceType":
                    return i => values.Contains("EC2Instance", StringComparer.Ordinal);
                case "ActivationIds":
                case "IamRole":
                case "AssociationStatus":
                    // Not modelled: EC2 instances in the sandbox have no activation, role or association data.
                    return _ => false;
                case "tag-key":
                    return i => i.AllTags().Any(t => values.Contains(t.Key, StringComparer.Ordinal));
                default:
                    if (key.StartsWith("tag:", StringComparison.Ordinal) && key.Length > 4)
                    {
                        var tagKey = key.Substring(4);
                        return i => i.AllTags().Any(t => t.Key == tagKey && values.Contains(t.Value, StringComparer.Ordinal));
                    }
                    throw SandboxError.Ssm("InvalidFilterKey", "The filter key " + key + " is not valid.");
            }
        }

        private JsonObject InstanceInformation(SandboxInstance i)
        {
            var lastPing = i.PingStatus == "Online" ? World.Clock.UtcNow.AddSeconds(-30) : World.Clock.UtcNow.AddHours(-2);
            return new JsonObject
            {
                ["InstanceId"] = i.InstanceId,
                ["PingStatus"] = i.PingStatus,
                ["LastPingDateTime"] = EpochSeconds(lastPing),
                ["AgentVersion"] = i.AgentVersion,
                ["IsLatestVersion"] = false,
                ["PlatformType"] = i.PlatformType,
                ["PlatformName"] = i.PlatformName,
                ["PlatformVersion"] = i.PlatformVersion,
                ["ResourceType"] = "EC2Instance",
                ["IPAddress"] = i.PrivateIpAddress,
                ["ComputerName"] = i.PrivateDnsName(World.Region),
                ["SourceId"] = i.InstanceId,
                ["SourceType"] = "AWS::EC2::Instance",
            };
        }

        private static double EpochSeconds(DateTime utc) => Math.Round((utc - DateTime.UnixEpoch).TotalSeconds, 3);

        // ---- pagination tokens: opaque to clients, checked here ----

        private static string EncodeNextToken(int offset) =>
            Convert.ToBase64String(Encoding.UTF8.GetBytes("sandbox-ssm:" + offset.ToString(CultureInfo.InvariantCulture)));

        private static int DecodeNextToken(string? token, int count)
        {
            if (string.IsNullOrEmpty(token)) return 0;
            try
            {
                var text = Encoding.UTF8.GetString(Convert.FromBase64String(token));
                if (text.StartsWith("sandbox-ssm:", StringComparison.Ordinal)
                    && int.TryParse(text.Substring(12), NumberStyles.None, CultureInfo.InvariantCulture, out var offset)
                    && offset <= count)
                {
                    return offset;
                }
            }
            catch (FormatException)
            {
            }
            throw SandboxError.Ssm("InvalidNextToken", "The specified token isn't valid.");
        }

        // ---- input helpers ----

        private static string RequiredString(JsonObject input, string name, string wireName)
        {
            var node = input[name];
            if (node == null) throw SandboxError.Validation("1 validation error detected: Value null at '" + wireName + "' failed to satisfy constraint: Member must not be null");
            var value = ReadString(node, wireName);
            if (value.Length == 0) throw SandboxError.Validation("1 validation error detected: Value '' at '" + wireName + "' failed to satisfy constraint: Member must have length greater than or equal to 1");
            return value;
        }

        private static string? OptionalString(JsonObject input, string name) =>
            input[name] is JsonNode node ? ReadString(node, char.ToLowerInvariant(name[0]) + name.Substring(1)) : null;

        private static string ReadString(JsonNode node, string wireName)
        {
            if (node is JsonValue v && v.TryGetValue<string>(out var s)) return s;
            throw SandboxError.Coral("SerializationException", "Expected a string for " + wireName + ".");
        }

        private static int ReadInt(JsonNode node, string wireName)
        {
            if (node is JsonValue v && v.TryGetValue<int>(out var n)) return n;
            if (node is JsonValue d && d.TryGetValue<double>(out var x) && Math.Abs(x - Math.Round(x)) < double.Epsilon && x <= int.MaxValue && x >= int.MinValue) return (int)x;
            throw SandboxError.Coral("SerializationException", "Expected an integer for " + wireName + ".");
        }

        private static IReadOnlyList<string> ReadStringArray(JsonNode? node)
        {
            if (node == null) return Array.Empty<string>();
            if (node is not JsonArray a) throw SandboxError.Coral("SerializationException", "Expected a list of strings.");
            return a.Select(n => n == null ? throw SandboxError.Coral("SerializationException", "Expected a string.") : ReadString(n, "value")).ToList();
        }

        private static Dictionary<string, IReadOnlyList<string>> ReadParameters(JsonNode? node)
        {
            var result = new Dictionary<string, IReadOnlyList<string>>(StringComparer.Ordinal);
            if (node == null) return result;
            if (node is not JsonObject o) throw SandboxError.Coral("SerializationException", "Expected a map for parameters.");
            foreach (var kv in o) result[kv.Key] = ReadStringArray(kv.Value);
            return result;
        }

        internal static JsonObject ParseBody(string body)
        {
            if (string.IsNullOrWhiteSpace(body)) return new JsonObject();
            try
            {
                return JsonNode.Parse(body) as JsonObject ?? throw SandboxError.Coral("SerializationException", "Expected a JSON object.");
            }
            catch (JsonException)
            {
                throw SandboxError.Coral("SerializationException", "The request body is not valid JSON.");
            }
        }
    }
}
