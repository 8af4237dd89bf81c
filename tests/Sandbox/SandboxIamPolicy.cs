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

    /// <summary>One statement of a sandbox identity policy: Effect, Action patterns, Resource patterns. Nothing else is modelled.</summary>
    public sealed class SandboxIamStatement
    {
        public SandboxIamStatement(string effect, IEnumerable<string> actions, IEnumerable<string> resources, string? sid = null)
        {
            if (effect != "Allow" && effect != "Deny") throw new ArgumentException("Effect must be Allow or Deny, not '" + effect + "'.", nameof(effect));
            Effect = effect;
            Actions = actions.ToList();
            Resources = resources.ToList();
            Sid = sid;
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

        internal bool Matches(string action, string resource, SandboxCredential caller) =>
            Actions.Any(p => SandboxIamPolicy.Glob(p, ignoreCase: true).IsMatch(action))
            && Resources.Any(p => SandboxIamPolicy.Glob(SandboxIamPolicy.Substitute(p, caller), ignoreCase: false).IsMatch(resource));

        internal JsonObject ToJson()
        {
            var o = new JsonObject();
            if (Sid != null) o["Sid"] = Sid;
            o["Effect"] = Effect;
            o["Action"] = new JsonArray(Actions.Select(a => (JsonNode)JsonValue.Create(a)!).ToArray());
            o["Resource"] = new JsonArray(Resources.Select(r => (JsonNode)JsonValue.Create(r)!).ToArray());
            return o;
        }
    }

    /// <summary>
    /// The sandbox's IAM: a small identity policy per access key (<see cref="SandboxCredential.Policy"/>) and the one
    /// question every sandbox service asks, <see cref="Authorize"/>: may access key K do action A on resource R?
    /// A credential without a policy may do everything (as an administrator); one with a policy may do only what an Allow
    /// statement names and no Deny statement names. Only Effect, Action and Resource are modelled (with * and ?
    /// wildcards and the <c>${aws:username}</c> variable): a policy with Condition, NotAction, NotResource or Principal is
    /// refused when it is read, so nothing is silently allowed that AWS would not allow.
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

        /// <summary>Implicit deny unless an Allow statement matches; an explicit Deny always wins.</summary>
        public SandboxIamDecision Evaluate(string action, string resource, SandboxCredential caller)
        {
            if (Statements.Any(s => s.Effect == "Deny" && s.Matches(action, resource, caller))) return SandboxIamDecision.ExplicitDeny;
            return Statements.Any(s => s.Effect == "Allow" && s.Matches(action, resource, caller)) ? SandboxIamDecision.Allowed : SandboxIamDecision.ImplicitDeny;
        }

        /// <summary>
        /// May <paramref name="caller"/> do <paramref name="action"/> (e.g. "ssm:StartSession") on <paramref name="resource"/>
        /// (an ARN, or "*" for actions without resource-level permissions)? The answer carries the message AWS writes.
        /// </summary>
        public static SandboxAuthorization Authorize(SandboxWorld world, SandboxCredential caller, string action, string resource)
        {
            var policy = caller.Policy;
            var decision = policy == null ? SandboxIamDecision.Allowed : policy.Evaluate(action, resource, caller);
            return new SandboxAuthorization(decision, caller.AccessKeyId, CallerArn(world, caller), action, resource);
        }

        /// <summary>The same, for an access key id (an unknown key is denied: it has no identity).</summary>
        public static SandboxAuthorization Authorize(SandboxWorld world, string accessKeyId, string action, string resource)
        {
            var caller = world.FindCredential(accessKeyId);
            if (caller == null) return new SandboxAuthorization(SandboxIamDecision.ImplicitDeny, accessKeyId, "arn:aws:iam::" + world.AccountId + ":unknown/" + accessKeyId, action, resource);
            return Authorize(world, caller, action, resource);
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
                if (key != "Sid" && key != "Effect" && key != "Action" && key != "Resource")
                {
                    throw new InvalidDataException("Statement element '" + key + "' is not modelled by the sandbox (only Sid, Effect, Action and Resource are).");
                }
            }
            var effect = s["Effect"]?.GetValue<string>() ?? throw new InvalidDataException("A statement needs an Effect.");
            try
            {
                return new SandboxIamStatement(effect, Strings(s["Action"], "Action"), Strings(s["Resource"], "Resource"), s["Sid"]?.GetValue<string>());
            }
            catch (ArgumentException ex)
            {
                throw new InvalidDataException(ex.Message, ex);
            }
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

        /// <summary>The policy variables the sandbox knows: ${aws:username} (the credential's UserName).</summary>
        internal static string Substitute(string pattern, SandboxCredential caller) =>
            pattern.Replace("${aws:username}", caller.UserName, StringComparison.Ordinal);

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
