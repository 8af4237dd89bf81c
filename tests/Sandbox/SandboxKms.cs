using System;
using System.Collections.Generic;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// One statement of a sandbox key policy: Effect Allow or Deny, principals (ARNs, or "*" for anyone in the account)
    /// and actions ("kms:GenerateDataKey", "kms:Decrypt", "kms:*"). A role ARN (arn:aws:iam::acct:role/Name) also matches
    /// that role's sessions (arn:aws:sts::acct:assumed-role/Name/...), as in a real key policy. The account principal
    /// (arn:aws:iam::acct:root, or the bare account id) grants no one by itself: an Allow with it lets the account's IAM
    /// policies decide ("Enable IAM User Permissions", the default key policy of KMS and of the CDK); a Deny with it
    /// applies to every principal of the account.
    /// </summary>
    public sealed class SandboxKmsPolicyStatement
    {
        public string Effect { get; set; } = "Allow";
        public List<string> Principals { get; set; } = new();
        public List<string> Actions { get; set; } = new();

        internal bool IsAllow => string.Equals(Effect, "Allow", StringComparison.OrdinalIgnoreCase);
        internal bool IsDeny => string.Equals(Effect, "Deny", StringComparison.OrdinalIgnoreCase);

        private bool NamesAction(string action) => Actions.Any(a => a == "kms:*" || a == "*" || string.Equals(a, action, StringComparison.OrdinalIgnoreCase));

        /// <summary>The statement names <paramref name="principalArn"/> itself (or "*", or its role).</summary>
        internal bool Matches(string principalArn, string action) =>
            NamesAction(action) && Principals.Any(p => p == "*" || string.Equals(p, principalArn, StringComparison.Ordinal) || RoleMatches(p, principalArn));

        /// <summary>The statement names the account <paramref name="accountId"/> (arn:aws:iam::&lt;account&gt;:root or the bare id).</summary>
        internal bool NamesAccount(string accountId, string action) =>
            NamesAction(action) && Principals.Any(p => p == accountId || p == "arn:aws:iam::" + accountId + ":root");

        // arn:aws:iam::123:role/Name matches arn:aws:sts::123:assumed-role/Name/session.
        private static bool RoleMatches(string policyPrincipal, string principalArn)
        {
            const string iamRole = ":role/";
            const string stsRole = ":assumed-role/";
            var r = policyPrincipal.IndexOf(iamRole, StringComparison.Ordinal);
            var s = principalArn.IndexOf(stsRole, StringComparison.Ordinal);
            if (r < 0 || s < 0 || !policyPrincipal.StartsWith("arn:aws:iam::", StringComparison.Ordinal) || !principalArn.StartsWith("arn:aws:sts::", StringComparison.Ordinal)) return false;
            var account = policyPrincipal.Substring("arn:aws:iam::".Length, r - "arn:aws:iam::".Length);
            var sessionAccount = principalArn.Substring("arn:aws:sts::".Length, s - "arn:aws:sts::".Length);
            var role = policyPrincipal.Substring(r + iamRole.Length);
            var rest = principalArn.Substring(s + stsRole.Length);
            var slash = rest.IndexOf('/');
            return account == sessionAccount && slash > 0 && rest.Substring(0, slash) == role;
        }
    }

    /// <summary>A symmetric KMS key of the sandbox: id, aliases, state, key policy, and its (sandbox-only) key material.</summary>
    public sealed class SandboxKmsKey
    {
        public string KeyId { get; set; } = Guid.NewGuid().ToString("D");
        public string Description { get; set; } = "";
        /// <summary>"alias/name" entries.</summary>
        public List<string> Aliases { get; set; } = new();
        public bool Enabled { get; set; } = true;
        public bool KeyRotationEnabled { get; set; } = true;
        public List<SandboxKmsPolicyStatement> Policy { get; set; } = new();

        /// <summary>AES-256 material: data keys are sealed under it (never leaves the sandbox).</summary>
        internal byte[] Material { get; } = RandomNumberGenerator.GetBytes(32);

        public string Arn(string region, string accountId) => "arn:aws:kms:" + region + ":" + accountId + ":key/" + KeyId;

        /// <summary>A Deny statement names the principal (itself, its role, "*", or its account).</summary>
        internal bool Denies(string principalArn, string accountId, string action) =>
            Policy.Any(s => s.IsDeny && (s.Matches(principalArn, action) || s.NamesAccount(accountId, action)));

        /// <summary>An Allow statement names the principal itself (its role, or "*"): no IAM policy is needed in the key's account.</summary>
        internal bool AllowsDirectly(string principalArn, string action) => Policy.Any(s => s.IsAllow && s.Matches(principalArn, action));

        /// <summary>An Allow statement names the account: the account's IAM identity policies decide.</summary>
        internal bool DelegatesToIam(string accountId, string action) => Policy.Any(s => s.IsAllow && s.NamesAccount(accountId, action));
    }

    /// <summary>One KMS call the sandbox answered (the client's over HTTP, the agent's in process).</summary>
    public sealed class SandboxKmsCall
    {
        public SandboxKmsCall(string operation, string principal, string? keyArn, string? errorCode, IReadOnlyDictionary<string, string> encryptionContext)
        {
            Operation = operation;
            Principal = principal;
            KeyArn = keyArn;
            ErrorCode = errorCode;
            EncryptionContext = encryptionContext;
        }

        public string Operation { get; }
        public string Principal { get; }
        public string? KeyArn { get; }
        /// <summary>Null on success.</summary>
        public string? ErrorCode { get; }
        public IReadOnlyDictionary<string, string> EncryptionContext { get; }

        public override string ToString() => "kms " + Operation + " by " + Principal + " -> " + (ErrorCode ?? "OK");
    }

    /// <summary>
    /// The sandbox's AWS KMS: symmetric keys with aliases and key policies, GenerateDataKey and Decrypt. A ciphertext
    /// blob is the key id and the data key sealed with AES-256-GCM under the key's material, the encryption context
    /// (sorted, as JSON) being the associated data: Decrypt with another context, another key or an altered blob fails
    /// with InvalidCiphertextException / IncorrectKeyException, as KMS does.
    /// Authorization (<see cref="Authorize"/>) as KMS does it for a principal of the key's account (AWS KMS developer
    /// guide, "Key policies": "Unless the key policy explicitly allows it, you cannot use IAM policies to allow access to
    /// a KMS key ... You can use an IAM policy to deny a permission to a KMS key without permission from a key policy";
    /// "KMS key access and permissions": in one account the key policy alone can control access): an explicit Deny in the
    /// key policy or the caller's identity policy refuses; an Allow in the key policy naming the caller allows; an Allow
    /// naming the account lets the caller's identity policy (the sandbox IAM engine, <see cref="SandboxIamPolicy"/>, with
    /// the kms:EncryptionContext:&lt;key&gt; condition keys) decide; otherwise "no resource-based policy allows".
    /// </summary>
    public sealed class SandboxKms
    {
        private const byte BlobVersion = 1;
        private readonly object _gate = new();
        private readonly List<SandboxKmsKey> _keys = new();
        private readonly List<SandboxKmsCall> _calls = new();
        private readonly List<(byte[] Plaintext, byte[] Blob)> _issued = new();
        private readonly SandboxWorld _world;

        internal SandboxKms(SandboxWorld world) => _world = world;

        public IReadOnlyList<SandboxKmsKey> Keys
        {
            get { lock (_gate) return _keys.ToArray(); }
        }

        public IReadOnlyList<SandboxKmsCall> Calls
        {
            get { lock (_gate) return _calls.ToArray(); }
        }

        /// <summary>
        /// Every data key GenerateDataKey handed out (plaintext and blob), so tests can check that none of it shows up
        /// where it must not (streams, logs, errors).
        /// </summary>
        public IReadOnlyList<(byte[] Plaintext, byte[] Blob)> IssuedDataKeys
        {
            get { lock (_gate) return _issued.Select(i => ((byte[])i.Plaintext.Clone(), (byte[])i.Blob.Clone())).ToArray(); }
        }

        public SandboxKmsKey AddKey(SandboxKmsKey key)
        {
            lock (_gate)
            {
                if (_keys.Any(k => k.KeyId == key.KeyId)) throw new ArgumentException("Duplicate KMS key id " + key.KeyId, nameof(key));
                foreach (var alias in key.Aliases)
                {
                    if (!alias.StartsWith("alias/", StringComparison.Ordinal)) throw new ArgumentException("An alias starts with alias/: " + alias, nameof(key));
                    if (_keys.Any(k => k.Aliases.Contains(alias, StringComparer.Ordinal))) throw new ArgumentException("Duplicate KMS alias " + alias, nameof(key));
                }
                _keys.Add(key);
            }
            return key;
        }

        public string Arn(SandboxKmsKey key) => key.Arn(_world.Region, _world.AccountId);

        /// <summary>The ARN a caller with these credentials has (<see cref="SandboxIamPolicy.CallerArn"/>: its Arn, else an IAM user of the sandbox account).</summary>
        public string UserArn(SandboxCredential credential) => SandboxIamPolicy.CallerArn(_world, credential);

        /// <summary>The ARN of an instance's role session, as the agent calls KMS with it.</summary>
        public string InstanceRoleArn(SandboxInstance instance) =>
            "arn:aws:sts::" + _world.AccountId + ":assumed-role/" + instance.IamRole + "/" + instance.InstanceId;

        /// <summary>
        /// Resolves a KeyId as KMS takes it: key id, key ARN, alias name ("alias/x") or alias ARN. Throws NotFoundException
        /// in KMS's wording.
        /// </summary>
        public SandboxKmsKey Resolve(string keyId)
        {
            var region = _world.Region;
            var account = _world.AccountId;
            var aliasArnPrefix = "arn:aws:kms:" + region + ":" + account + ":";
            var keyArnPrefix = aliasArnPrefix + "key/";
            lock (_gate)
            {
                if (keyId.StartsWith("alias/", StringComparison.Ordinal) || keyId.StartsWith(aliasArnPrefix + "alias/", StringComparison.Ordinal))
                {
                    var alias = keyId.StartsWith("alias/", StringComparison.Ordinal) ? keyId : keyId.Substring(aliasArnPrefix.Length);
                    return _keys.FirstOrDefault(k => k.Aliases.Contains(alias, StringComparer.Ordinal))
                        ?? throw Kms("NotFoundException", "Alias " + aliasArnPrefix + alias + " is not found.");
                }
                var id = keyId.StartsWith(keyArnPrefix, StringComparison.Ordinal) ? keyId.Substring(keyArnPrefix.Length) : keyId;
                return _keys.FirstOrDefault(k => string.Equals(k.KeyId, id, StringComparison.OrdinalIgnoreCase))
                    ?? throw Kms("NotFoundException", "Key '" + keyArnPrefix + id + "' does not exist");
            }
        }

        /// <summary>GenerateDataKey by a caller with sandbox credentials (its identity policy is <see cref="SandboxCredential.Policy"/>).</summary>
        public (byte[] CiphertextBlob, byte[] Plaintext, string KeyArn) GenerateDataKey(SandboxCredential caller, string keyId, int numberOfBytes, IReadOnlyDictionary<string, string> context) =>
            GenerateDataKey(Caller.Of(_world, caller), keyId, numberOfBytes, context);

        /// <summary>Decrypt by a caller with sandbox credentials.</summary>
        public (byte[] Plaintext, string KeyArn) Decrypt(SandboxCredential caller, byte[] blob, IReadOnlyDictionary<string, string> context, string? keyId) =>
            Decrypt(Caller.Of(_world, caller), blob, context, keyId);

        /// <summary>Decrypt by an instance's role session (the agent's call; its identity policy is <see cref="SandboxInstance.RolePolicy"/>).</summary>
        public (byte[] Plaintext, string KeyArn) Decrypt(SandboxInstance instance, byte[] blob, IReadOnlyDictionary<string, string> context, string? keyId) =>
            Decrypt(new Caller(InstanceRoleArn(instance), instance.RolePolicy, null), blob, context, keyId);

        /// <summary>Who calls: the ARN KMS names, the identity policy IAM evaluates (null: unrestricted), the credential (for ${aws:username}).</summary>
        private sealed class Caller
        {
            public Caller(string arn, SandboxIamPolicy? policy, SandboxCredential? credential)
            {
                Arn = arn;
                Policy = policy;
                Credential = credential;
            }

            public string Arn { get; }
            public SandboxIamPolicy? Policy { get; }
            public SandboxCredential? Credential { get; }

            public static Caller Of(SandboxWorld world, SandboxCredential credential) => new(SandboxIamPolicy.CallerArn(world, credential), credential.Policy, credential);
        }

        /// <summary>GenerateDataKey: a random data key, returned in plaintext and sealed under the key with the context.</summary>
        private (byte[] CiphertextBlob, byte[] Plaintext, string KeyArn) GenerateDataKey(Caller caller, string keyId, int numberOfBytes, IReadOnlyDictionary<string, string> context)
        {
            var principalArn = caller.Arn;
            SandboxKmsKey? key = null;
            try
            {
                if (numberOfBytes < 1 || numberOfBytes > 1024)
                {
                    throw Kms("ValidationException", "1 validation error detected: Value '" + numberOfBytes + "' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024");
                }
                key = Resolve(keyId);
                Authorize(key, caller, "kms:GenerateDataKey", context);
                var plaintext = RandomNumberGenerator.GetBytes(numberOfBytes);
                var blob = Seal(key, plaintext, context);
                lock (_gate) _issued.Add(((byte[])plaintext.Clone(), (byte[])blob.Clone()));
                Log("GenerateDataKey", principalArn, key, null, context);
                return (blob, plaintext, Arn(key));
            }
            catch (SandboxError error)
            {
                Log("GenerateDataKey", principalArn, key, error.Code, context);
                throw;
            }
        }

        /// <summary>Decrypt: opens a blob with the context it was sealed with; <paramref name="keyId"/>, when given, must name the blob's key.</summary>
        private (byte[] Plaintext, string KeyArn) Decrypt(Caller caller, byte[] blob, IReadOnlyDictionary<string, string> context, string? keyId)
        {
            var principalArn = caller.Arn;
            SandboxKmsKey? key = null;
            try
            {
                key = KeyOfBlob(blob) ?? throw Kms("InvalidCiphertextException", null);
                if (!string.IsNullOrEmpty(keyId))
                {
                    var named = Resolve(keyId!);
                    if (!ReferenceEquals(named, key)) throw Kms("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.");
                }
                Authorize(key, caller, "kms:Decrypt", context);
                var plaintext = Open(key, blob, context) ?? throw Kms("InvalidCiphertextException", null);
                Log("Decrypt", principalArn, key, null, context);
                return (plaintext, Arn(key));
            }
            catch (SandboxError error)
            {
                Log("Decrypt", principalArn, key, error.Code, context);
                throw;
            }
        }

        /// <summary>
        /// The key policy and the caller's identity policy together (see the class summary), then the key's state. The
        /// identity policy is asked on the key ARN with the request's kms:EncryptionContext:&lt;key&gt; condition keys.
        /// Denials in KMS's wording: "User: &lt;arn&gt; is not authorized to perform: &lt;action&gt; on resource: &lt;key arn&gt;"
        /// + " because no resource-based policy allows the &lt;action&gt; action" (the key policy neither names the caller nor
        /// lets IAM decide), " because no identity-based policy allows …" (it lets IAM decide, and IAM does not allow), or
        /// " with an explicit deny in a resource-based / an identity-based policy".
        /// </summary>
        private void Authorize(SandboxKmsKey key, Caller caller, string action, IReadOnlyDictionary<string, string> context)
        {
            var keyArn = Arn(key);
            var identity = caller.Policy?.Evaluate(action, keyArn, caller.Credential, SandboxIamPolicy.EncryptionContextConditions(context)) ?? SandboxIamDecision.Allowed;
            string? why = null;
            if (key.Denies(caller.Arn, _world.AccountId, action)) why = " with an explicit deny in a resource-based policy";
            else if (identity == SandboxIamDecision.ExplicitDeny) why = " with an explicit deny in an identity-based policy";
            else if (key.AllowsDirectly(caller.Arn, action)) why = null;
            else if (key.DelegatesToIam(_world.AccountId, action)) why = identity == SandboxIamDecision.Allowed ? null : " because no identity-based policy allows the " + action + " action";
            else why = " because no resource-based policy allows the " + action + " action";
            if (why != null) throw Kms("AccessDeniedException", "User: " + caller.Arn + " is not authorized to perform: " + action + " on resource: " + keyArn + why);
            if (!key.Enabled) throw Kms("DisabledException", keyArn + " is disabled.");
        }

        private void Log(string operation, string principal, SandboxKmsKey? key, string? errorCode, IReadOnlyDictionary<string, string> context)
        {
            var call = new SandboxKmsCall(operation, principal, key == null ? null : Arn(key), errorCode, new Dictionary<string, string>(context, StringComparer.Ordinal));
            lock (_gate) _calls.Add(call);
        }

        internal static SandboxError Kms(string code, string? message) => new(400, code, message, typePrefix: null, lowerCaseMessage: true);

        // ---- blobs: version(1) | key id (16, GUID bytes) | nonce (12) | sealed data key | tag (16) ----

        private static byte[] AssociatedData(IReadOnlyDictionary<string, string> context)
        {
            var o = new JsonObject();
            foreach (var kv in context.OrderBy(kv => kv.Key, StringComparer.Ordinal)) o[kv.Key] = kv.Value;
            return Encoding.UTF8.GetBytes(o.ToJsonString());
        }

        private static byte[] Seal(SandboxKmsKey key, byte[] plaintext, IReadOnlyDictionary<string, string> context)
        {
            var blob = new byte[1 + 16 + 12 + plaintext.Length + 16];
            blob[0] = BlobVersion;
            Guid.Parse(key.KeyId).TryWriteBytes(blob.AsSpan(1, 16));
            RandomNumberGenerator.Fill(blob.AsSpan(17, 12));
            using var gcm = new AesGcm(key.Material, 16);
            gcm.Encrypt(blob.AsSpan(17, 12), plaintext, blob.AsSpan(29, plaintext.Length), blob.AsSpan(29 + plaintext.Length, 16), AssociatedData(context));
            return blob;
        }

        private SandboxKmsKey? KeyOfBlob(byte[] blob)
        {
            if (blob.Length < 1 + 16 + 12 + 16 || blob[0] != BlobVersion) return null;
            var id = new Guid(blob.AsSpan(1, 16)).ToString("D");
            lock (_gate) return _keys.FirstOrDefault(k => string.Equals(k.KeyId, id, StringComparison.OrdinalIgnoreCase));
        }

        private static byte[]? Open(SandboxKmsKey key, byte[] blob, IReadOnlyDictionary<string, string> context)
        {
            var length = blob.Length - (1 + 16 + 12 + 16);
            var plaintext = new byte[length];
            try
            {
                using var gcm = new AesGcm(key.Material, 16);
                gcm.Decrypt(blob.AsSpan(17, 12), blob.AsSpan(29, length), blob.AsSpan(29 + length, 16), plaintext, AssociatedData(context));
                return plaintext;
            }
            catch (AuthenticationTagMismatchException)
            {
                return null;
            }
        }

        // ---- configuration ----

        /// <summary>
        /// The demo keys: the session-data key (its key policy lets the sandbox user ask for data keys and instance roles
        /// decrypt them, whatever their IAM policies), the IAM-decided one (the default key policy: "Enable IAM User
        /// Permissions", the account root with kms:*, as <c>new Key(...)</c> in the CDK synthesizes it, so each caller's
        /// identity policy decides) and a locked one (no GenerateDataKey for anyone).
        /// </summary>
        internal void AddDefaults()
        {
            var user = "arn:aws:iam::" + _world.AccountId + ":user/sandbox-user";
            var role = "arn:aws:iam::" + _world.AccountId + ":role/" + SandboxInstance.DefaultIamRole;
            AddKey(new SandboxKmsKey
            {
                KeyId = DefaultKeyId,
                Description = "Session Manager session data",
                Aliases = { DefaultAlias },
                Policy =
                {
                    new SandboxKmsPolicyStatement { Principals = { user }, Actions = { "kms:GenerateDataKey" } },
                    new SandboxKmsPolicyStatement { Principals = { role }, Actions = { "kms:Decrypt" } },
                },
            });
            AddKey(new SandboxKmsKey
            {
                KeyId = IamKeyId,
                Description = "The default key policy of KMS and the CDK (infra/'s session-data key): the account's IAM policies decide",
                Aliases = { IamAlias },
                Policy = { new SandboxKmsPolicyStatement { Principals = { "arn:aws:iam::" + _world.AccountId + ":root" }, Actions = { "kms:*" } } },
            });
            AddKey(new SandboxKmsKey
            {
                KeyId = LockedKeyId,
                Description = "A key whose policy lets no operator generate data keys",
                Aliases = { LockedAlias },
                Policy = { new SandboxKmsPolicyStatement { Principals = { role }, Actions = { "kms:Decrypt" } } },
            });
        }

        public const string DefaultKeyId = "0b5e55a0-0000-4000-8000-00000000d47a";
        public const string DefaultAlias = "alias/bastion-session-data";
        public const string LockedKeyId = "0b5e55a0-0000-4000-8000-0000000010cc";
        public const string IamKeyId = "0b5e55a0-0000-4000-8000-000000000da1";
        public const string IamAlias = "alias/bastion-session-data-iam";
        public const string LockedAlias = "alias/bastion-session-data-locked";

        internal sealed class KeyFile
        {
            public string? KeyId { get; set; }
            public string? Description { get; set; }
            public List<string>? Aliases { get; set; }
            public bool? Enabled { get; set; }
            public List<SandboxKmsPolicyStatement>? Policy { get; set; }
        }

        internal void Load(List<KeyFile> keys)
        {
            foreach (var k in keys)
            {
                AddKey(new SandboxKmsKey
                {
                    KeyId = string.IsNullOrWhiteSpace(k.KeyId) ? Guid.NewGuid().ToString("D") : k.KeyId!,
                    Description = k.Description ?? "",
                    Aliases = k.Aliases ?? new List<string>(),
                    Enabled = k.Enabled ?? true,
                    Policy = k.Policy ?? new List<SandboxKmsPolicyStatement>(),
                });
            }
        }

        public JsonObject Describe()
        {
            var keys = new JsonArray();
            foreach (var k in Keys)
            {
                keys.Add(new JsonObject
                {
                    ["keyId"] = k.KeyId,
                    ["arn"] = Arn(k),
                    ["aliases"] = new JsonArray(k.Aliases.Select(a => (JsonNode?)JsonValue.Create(a)).ToArray()),
                    ["enabled"] = k.Enabled,
                    ["policy"] = JsonSerializer.SerializeToNode(k.Policy, new JsonSerializerOptions(JsonSerializerDefaults.Web)),
                });
            }
            var calls = new JsonArray();
            foreach (var c in Calls)
            {
                var context = new JsonObject();
                foreach (var kv in c.EncryptionContext) context[kv.Key] = kv.Value;
                calls.Add(new JsonObject { ["operation"] = c.Operation, ["principal"] = c.Principal, ["keyArn"] = c.KeyArn, ["errorCode"] = c.ErrorCode, ["encryptionContext"] = context });
            }
            return new JsonObject { ["keys"] = keys, ["calls"] = calls };
        }
    }
}
