using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;

namespace BastionTools.Sandbox
{
    /// <summary>What IAM decided for one request.</summary>
    public enum SandboxIamDecision
    {
        Allowed,
        /// <summary>No statement allows the action on the resource ("because no identity-based policy allows …").</summary>
        ImplicitDeny,
        /// <summary>A Deny statement matches ("with an explicit deny in an identity-based policy").</summary>
        ExplicitDeny,
    }

    /// <summary>How EC2 words an UnauthorizedOperation message (the sandbox's choice; see tests/Sandbox/AGENT.md).</summary>
    public enum SandboxEc2DenialMessage
    {
        /// <summary>"You are not authorized to perform this operation. User: … because no identity-based policy allows the ec2:X action. Encoded authorization failure message: …" (default).</summary>
        Encoded,
        /// <summary>The same without the encoded part.</summary>
        Detailed,
        /// <summary>"You are not authorized to perform this operation." and nothing else, as EC2 answered before the added context.</summary>
        Bare,
    }

    /// <summary>
    /// One condition of a statement: <c>StringEquals</c> or <c>StringLike</c> on <c>kms:EncryptionContext:&lt;key&gt;</c>, the
    /// only condition keys the sandbox models (KMS evaluates them against the request's encryption context; the infra/
    /// operator policy binds kms:GenerateDataKey to the bastion with <c>kms:EncryptionContext:aws:ssm:TargetId</c>).
    /// True when the request has the key and its value equals (StringEquals, case-sensitive) or matches (StringLike, *
    /// and ? wildcards, case-sensitive) one of <see cref="Values"/>; a request without the key does not match.
    /// </summary>
    public sealed class SandboxIamCondition
    {
        public const string EncryptionContextPrefix = "kms:EncryptionContext:";

        public SandboxIamCondition(string @operator, string key, IEnumerable<string> values)
        {
            if (@operator != "StringEquals" && @operator != "StringLike")
            {
                throw new ArgumentException("Condition operator '" + @operator + "' is not modelled by the sandbox (only StringEquals and StringLike on " + EncryptionContextPrefix + "<key> are).", nameof(@operator));
            }
            if (!key.StartsWith(EncryptionContextPrefix, StringComparison.OrdinalIgnoreCase) || key.Length == EncryptionContextPrefix.Length)
            {
                throw new ArgumentException("Condition key '" + key + "' is not modelled by the sandbox (only " + EncryptionContextPrefix + "<key> is).", nameof(key));
            }
            Operator = @operator;
            Key = key;
            Values = values.ToList();
            if (Values.Count == 0) throw new ArgumentException("Condition " + @operator + " " + key + " needs at least one value.", nameof(values));
        }

        public string Operator { get; }
        /// <summary>The condition key, e.g. kms:EncryptionContext:aws:ssm:TargetId; looked up without regard to case, as IAM does.</summary>
        public string Key { get; }
        public IReadOnlyList<string> Values { get; }

        internal bool Matches(IReadOnlyDictionary<string, string>? request)
        {
            if (request == null || !request.TryGetValue(Key, out var actual)) return false;
            return Operator == "StringEquals"
                ? Values.Any(v => string.Equals(v, actual, StringComparison.Ordinal))
                : Values.Any(v => SandboxIamPolicy.Glob(v, ignoreCase: false).IsMatch(actual));
        }
    }

    /// <summary>
    /// One statement of a sandbox identity policy: Effect, Action patterns, Resource patterns, and optionally
    /// <see cref="SandboxIamCondition"/>s (all must hold). Nothing else is modelled.
    /// </summary>
    public sealed class SandboxIamStatement
    {
        public SandboxIamStatement(string effect, IEnumerable<string> actions, IEnumerable<string> resources, string? sid = null, IEnumerable<SandboxIamCondition>? conditions = null)
        {
            if (effect != "Allow" && effect != "Deny") throw new ArgumentException("Effect must be Allow or Deny, not '" + effect + "'.", nameof(effect));
            Effect = effect;
            Actions = actions.ToList();
            Resources = resources.ToList();
            Sid = sid;
            Conditions = conditions?.ToList() ?? new List<SandboxIamCondition>();
            if (Actions.Count == 0) throw new ArgumentException("A statement needs at least one action.", nameof(actions));
            if (Resources.Count == 0) throw new ArgumentException("A statement needs at least one resource.", nameof(resources));
            foreach (var a in Actions)
            {
                if (a != "*" && a.IndexOf(':') <= 0) throw new ArgumentException("An action is service:Name (or *), not '" + a + "'.", nameof(actions));
            }
        }

        public string Effect { get; }
        /// <summary>"service:Action" patterns; * and ? are wildcards; matched without regard to case, as IAM does.</summary>
        public IReadOnlyList<string> Actions { get; }
        /// <summary>ARN patterns (or *); * and ? are wildcards; case-sensitive; <c>${aws:username}</c> is the caller's user name.</summary>
        public IReadOnlyList<string> Resources { get; }
        public string? Sid { get; }
        /// <summary>Conditions that must all hold for the statement to apply (empty: none).</summary>
        public IReadOnlyList<SandboxIamCondition> Conditions { get; }

        internal bool Matches(string action, string resource, SandboxCredential? caller, IReadOnlyDictionary<string, string>? conditionValues) =>
            Actions.Any(p => SandboxIamPolicy.Glob(p, ignoreCase: true).IsMatch(action))
            && Resources.Any(p => SandboxIamPolicy.Substitute(p, caller) is string pattern && SandboxIamPolicy.Glob(pattern, ignoreCase: false).IsMatch(resource))
            && Conditions.All(c => c.Matches(conditionValues));

        internal JsonObject ToJson()
        {
            var o = new JsonObject();
            if (Sid != null) o["Sid"] = Sid;
            o["Effect"] = Effect;
            o["Action"] = new JsonArray(Actions.Select(a => (JsonNode)JsonValue.Create(a)!).ToArray());
            o["Resource"] = new JsonArray(Resources.Select(r => (JsonNode)JsonValue.Create(r)!).ToArray());
            if (Conditions.Count > 0)
            {
                var condition = new JsonObject();
                foreach (var byOperator in Conditions.GroupBy(c => c.Operator))
                {
                    var block = new JsonObject();
                    foreach (var c in byOperator) block[c.Key] = new JsonArray(c.Values.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray());
                    condition[byOperator.Key] = block;
                }
                o["Condition"] = condition;
            }
            return o;
        }
    }

    /// <summary>
    /// The sandbox's IAM: a small identity policy per access key (<see cref="SandboxCredential.Policy"/>) and the one
    /// question every sandbox service asks, <see cref="Authorize"/>: may access key K do action A on resource R?
    /// A credential without a policy may do everything (as an administrator); one with a policy may do only what an Allow
    /// statement names and no Deny statement names. Only Effect, Action and Resource are modelled (with * and ?
    /// wildcards and the <c>${aws:username}</c> variable), and one kind of Condition: StringEquals / StringLike on
    /// <c>kms:EncryptionContext:&lt;key&gt;</c> (<see cref="SandboxIamCondition"/>), which the KMS double supplies. A policy
    /// with any other Condition, NotAction, NotResource or Principal is refused when it is read, so nothing is silently
    /// allowed that AWS would not allow.
    /// The JSON form is IAM's: <c>{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ssm:StartSession"],"Resource":["arn:…"]}]}</c>
    /// (Action and Resource may be a string or a list; Statement an object or a list).
    /// </summary>
    [JsonConverter(typeof(SandboxIamPolicyJsonConverter))]
    public sealed class SandboxIamPolicy
    {
        public SandboxIamPolicy(IEnumerable<SandboxIamStatement> statements)
        {
            Statements = statements.ToList();
        }

        public IReadOnlyList<SandboxIamStatement> Statements { get; }

        /// <summary>A policy of one Allow statement.</summary>
        public static SandboxIamPolicy Allow(IEnumerable<string> actions, params string[] resources) =>
            new(new[] { new SandboxIamStatement("Allow", actions, resources.Length == 0 ? new[] { "*" } : resources) });

        /// <summary>
        /// Implicit deny unless an Allow statement matches; an explicit Deny always wins. <paramref name="conditionValues"/>:
        /// the request's condition keys (e.g. kms:EncryptionContext:aws:ssm:TargetId → i-…), looked up without regard to
        /// case; null or missing keys make statements with conditions on them not apply. <paramref name="caller"/> null:
        /// an identity without a user name (an instance role), for which <c>${aws:username}</c> matches nothing.
        /// </summary>
        public SandboxIamDecision Evaluate(string action, string resource, SandboxCredential? caller, IReadOnlyDictionary<string, string>? conditionValues = null)
        {
            var values = conditionValues == null ? null : new Dictionary<string, string>(conditionValues, StringComparer.OrdinalIgnoreCase);
            if (Statements.Any(s => s.Effect == "Deny" && s.Matches(action, resource, caller, values))) return SandboxIamDecision.ExplicitDeny;
            return Statements.Any(s => s.Effect == "Allow" && s.Matches(action, resource, caller, values)) ? SandboxIamDecision.Allowed : SandboxIamDecision.ImplicitDeny;
        }

        /// <summary>
        /// May <paramref name="caller"/> do <paramref name="action"/> (e.g. "ssm:StartSession") on <paramref name="resource"/>
        /// (an ARN, or "*" for actions without resource-level permissions)? The answer carries the message AWS writes.
        /// </summary>
        /// <remarks><paramref name="conditionValues"/>: the request's condition keys (see <see cref="Evaluate"/>).</remarks>
        public static SandboxAuthorization Authorize(SandboxWorld world, SandboxCredential caller, string action, string resource, IReadOnlyDictionary<string, string>? conditionValues = null)
        {
            var policy = caller.Policy;
            var decision = policy == null ? SandboxIamDecision.Allowed : policy.Evaluate(action, resource, caller, conditionValues);
            return new SandboxAuthorization(decision, caller.AccessKeyId, CallerArn(world, caller), action, resource);
        }

        /// <summary>The same, for an access key id (an unknown key is denied: it has no identity).</summary>
        public static SandboxAuthorization Authorize(SandboxWorld world, string accessKeyId, string action, string resource, IReadOnlyDictionary<string, string>? conditionValues = null)
        {
            var caller = world.FindCredential(accessKeyId);
            if (caller == null) return new SandboxAuthorization(SandboxIamDecision.ImplicitDeny, accessKeyId, "arn:aws:iam::" + world.AccountId + ":unknown/" + accessKeyId, action, resource);
            return Authorize(world, caller, action, resource, conditionValues);
        }

        /// <summary>
        /// The condition keys KMS supplies for a request with this encryption context: kms:EncryptionContext:&lt;key&gt; → value
        /// for each pair (AWS KMS developer guide, "kms:EncryptionContext:context-key").
        /// </summary>
        public static IReadOnlyDictionary<string, string> EncryptionContextConditions(IReadOnlyDictionary<string, string> encryptionContext)
        {
            var values = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
            foreach (var kv in encryptionContext) values.TryAdd(SandboxIamCondition.EncryptionContextPrefix + kv.Key, kv.Value);
            return values;
        }

        /// <summary>The caller's ARN as IAM names it in messages: <see cref="SandboxCredential.Arn"/>, else arn:aws:iam::&lt;account&gt;:user/&lt;UserName&gt;.</summary>
        public static string CallerArn(SandboxWorld world, SandboxCredential caller) =>
            string.IsNullOrEmpty(caller.Arn) ? "arn:aws:iam::" + world.AccountId + ":user/" + caller.UserName : caller.Arn!;

        /// <summary>Reads the IAM JSON form (see the class summary).</summary>
        public static SandboxIamPolicy Parse(string json)
        {
            JsonNode? node;
            try
            {
                node = JsonNode.Parse(json);
            }
            catch (JsonException ex)
            {
                throw new InvalidDataException("The policy is not valid JSON: " + ex.Message, ex);
            }
            return FromJson(node);
        }

        public static SandboxIamPolicy FromJson(JsonNode? node)
        {
            if (node is not JsonObject doc) throw new InvalidDataException("A policy is a JSON object with a Statement.");
            foreach (var key in doc.Select(p => p.Key))
            {
                if (key != "Version" && key != "Statement" && key != "Id") throw new InvalidDataException("Policy element '" + key + "' is not modelled by the sandbox.");
            }
            var statements = doc["Statement"] switch
            {
                JsonArray a => a.ToList(),
                JsonObject o => new List<JsonNode?> { o },
                _ => throw new InvalidDataException("A policy needs a Statement (an object or a list)."),
            };
            return new SandboxIamPolicy(statements.Select(ReadStatement));
        }

        private static SandboxIamStatement ReadStatement(JsonNode? node)
        {
            if (node is not JsonObject s) throw new InvalidDataException("A statement is a JSON object.");
            foreach (var key in s.Select(p => p.Key))
            {
                if (key != "Sid" && key != "Effect" && key != "Action" && key != "Resource" && key != "Condition")
                {
                    throw new InvalidDataException("Statement element '" + key + "' is not modelled by the sandbox (only Sid, Effect, Action, Resource and Condition on kms:EncryptionContext are).");
                }
            }
            var effect = s["Effect"]?.GetValue<string>() ?? throw new InvalidDataException("A statement needs an Effect.");
            try
            {
                return new SandboxIamStatement(effect, Strings(s["Action"], "Action"), Strings(s["Resource"], "Resource"), s["Sid"]?.GetValue<string>(), ReadConditions(s["Condition"]));
            }
            catch (ArgumentException ex)
            {
                throw new InvalidDataException(ex.Message, ex);
            }
        }

        /// <summary>{"StringEquals":{"kms:EncryptionContext:k":"v"|["v",…]},"StringLike":{…}}; anything else is refused.</summary>
        private static List<SandboxIamCondition> ReadConditions(JsonNode? node)
        {
            var conditions = new List<SandboxIamCondition>();
            if (node == null) return conditions;
            if (node is not JsonObject blocks || blocks.Count == 0) throw new InvalidDataException("A Condition is an object of operators (the sandbox models StringEquals and StringLike on kms:EncryptionContext:<key>).");
            foreach (var block in blocks)
            {
                if (block.Value is not JsonObject keys || keys.Count == 0) throw new InvalidDataException("Condition operator '" + block.Key + "' needs an object of condition keys.");
                foreach (var key in keys) conditions.Add(new SandboxIamCondition(block.Key, key.Key, Strings(key.Value, "Condition " + block.Key + " " + key.Key)));
            }
            return conditions;
        }

        private static List<string> Strings(JsonNode? node, string name) => node switch
        {
            JsonValue v when v.TryGetValue<string>(out var one) => new List<string> { one },
            JsonArray a => a.Select(n => n is JsonValue x && x.TryGetValue<string>(out var t) ? t : throw new InvalidDataException(name + " entries are strings.")).ToList(),
            _ => throw new InvalidDataException("A statement needs " + name + " (a string or a list of strings)."),
        };

        public JsonObject ToJson() => new()
        {
            ["Version"] = "2012-10-17",
            ["Statement"] = new JsonArray(Statements.Select(s => (JsonNode)s.ToJson()).ToArray()),
        };

        public override string ToString() => ToJson().ToJsonString();

        /// <summary>
        /// The policy variables the sandbox knows: ${aws:username} (the credential's UserName). Without a user (an
        /// instance role) a pattern that uses it matches nothing (null), as IAM treats a resource with a variable that has
        /// no value.
        /// </summary>
        internal static string? Substitute(string pattern, SandboxCredential? caller)
        {
            const string variable = "${aws:username}";
            if (pattern.IndexOf(variable, StringComparison.Ordinal) < 0) return pattern;
            return caller == null ? null : pattern.Replace(variable, caller.UserName, StringComparison.Ordinal);
        }

        internal static Regex Glob(string pattern, bool ignoreCase)
        {
            var sb = new StringBuilder("^");
            foreach (var c in pattern)
            {
                sb.Append(c switch
                {
                    '*' => ".*",
                    '?' => ".",
                    _ => Regex.Escape(c.ToString()),
                });
            }
            sb.Append('$');
            return new Regex(sb.ToString(), RegexOptions.CultureInvariant | RegexOptions.Singleline | (ignoreCase ? RegexOptions.IgnoreCase : RegexOptions.None));
        }
    }

    /// <summary>One authorization answer, with the message AWS writes when it is a denial.</summary>
    public sealed class SandboxAuthorization
    {
        internal SandboxAuthorization(SandboxIamDecision decision, string accessKeyId, string callerArn, string action, string resource)
        {
            Decision = decision;
            AccessKeyId = accessKeyId;
            CallerArn = callerArn;
            Action = action;
            Resource = resource;
        }

        public SandboxIamDecision Decision { get; }
        public bool Allowed => Decision == SandboxIamDecision.Allowed;
        public string AccessKeyId { get; }
        public string CallerArn { get; }
        public string Action { get; }
        public string Resource { get; }

        /// <summary>
        /// IAM's wording: "User: &lt;arn&gt; is not authorized to perform: &lt;action&gt; on resource: &lt;arn&gt; because no
        /// identity-based policy allows the &lt;action&gt; action" (or "with an explicit deny in an identity-based policy");
        /// without "on resource" for actions that have no resource-level permissions (resource "*").
        /// </summary>
        public string Message =>
            "User: " + CallerArn + " is not authorized to perform: " + Action + (Resource == "*" ? "" : " on resource: " + Resource)
            + (Decision == SandboxIamDecision.ExplicitDeny
                ? " with an explicit deny in an identity-based policy"
                : " because no identity-based policy allows the " + Action + " action");

        /// <summary>Throws the JSON 1.1 (Coral) AccessDeniedException when denied: HTTP 400, __type com.amazon.coral.service#AccessDeniedException, "Message".</summary>
        public void ThrowIfDeniedJson11()
        {
            if (!Allowed) throw new SandboxError(400, "AccessDeniedException", Message, SandboxError.CoralService);
        }

        /// <summary>Throws EC2's UnauthorizedOperation (HTTP 403, XML) when denied, worded as <paramref name="style"/> says.</summary>
        public void ThrowIfDeniedEc2(SandboxEc2DenialMessage style)
        {
            if (Allowed) return;
            const string lead = "You are not authorized to perform this operation.";
            var text = style switch
            {
                SandboxEc2DenialMessage.Bare => lead,
                SandboxEc2DenialMessage.Detailed => lead + " " + Message,
                _ => lead + " " + Message + ". Encoded authorization failure message: " + EncodedMessage(),
            };
            throw SandboxError.Ec2(403, "UnauthorizedOperation", text);
        }

        /// <summary>
        /// An opaque stand-in for the encoded authorization message (STS DecodeAuthorizationMessage is not modelled):
        /// URL-safe base64 of random bytes, about as long as EC2's.
        /// </summary>
        private static string EncodedMessage()
        {
            var bytes = RandomNumberGenerator.GetBytes(300);
            return Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');
        }

        public override string ToString() => Decision + ": " + AccessKeyId + " " + Action + " " + Resource;
    }

    /// <summary>The ARNs the sandbox's services authorize against (the resource types of the IAM service authorization reference).</summary>
    public static class SandboxArns
    {
        /// <summary>arn:aws:ec2:&lt;region&gt;:&lt;account&gt;:instance/i-… (mi-… is a managed-instance of ssm).</summary>
        public static string Instance(SandboxWorld world, string target) =>
            target.StartsWith("mi-", StringComparison.Ordinal)
                ? "arn:aws:ssm:" + world.Region + ":" + world.AccountId + ":managed-instance/" + target
                : "arn:aws:ec2:" + world.Region + ":" + world.AccountId + ":instance/" + target;

        /// <summary>AWS-owned documents (AWS-…) have no account in their ARN; the account's own (SSM-SessionManagerRunShell) have it.</summary>
        public static string Document(SandboxWorld world, string name) =>
            "arn:aws:ssm:" + world.Region + ":" + (name.StartsWith("AWS-", StringComparison.Ordinal) ? "" : world.AccountId) + ":document/" + name;

        public static string Session(SandboxWorld world, string sessionId) => "arn:aws:ssm:" + world.Region + ":" + world.AccountId + ":session/" + sessionId;

        /// <summary>What SSM names as the resource of actions without resource-level permissions (DescribeInstanceInformation).</summary>
        public static string SsmAccount(SandboxWorld world) => "arn:aws:ssm:" + world.Region + ":" + world.AccountId + ":*";

        /// <summary>arn:aws:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;DbiResourceId&gt;/&lt;db user&gt; (rds-db:connect).</summary>
        public static string DbUser(SandboxWorld world, string dbiResourceId, string dbUser) =>
            "arn:aws:rds-db:" + world.Region + ":" + world.AccountId + ":dbuser:" + dbiResourceId + "/" + dbUser;
    }

    /// <summary>Reads and writes <see cref="SandboxIamPolicy"/> in IAM's JSON form (world files, the control endpoint).</summary>
    public sealed class SandboxIamPolicyJsonConverter : JsonConverter<SandboxIamPolicy>
    {
        public override SandboxIamPolicy? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            var node = JsonNode.Parse(ref reader);
            if (node == null) return null;
            try
            {
                return SandboxIamPolicy.FromJson(node);
            }
            catch (InvalidDataException ex)
            {
                throw new JsonException(ex.Message, ex);
            }
        }

        public override void Write(Utf8JsonWriter writer, SandboxIamPolicy value, JsonSerializerOptions options) => value.ToJson().WriteTo(writer, options);
    }
}
