using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Threading;

namespace BastionTools.Sandbox
{
    /// <summary>The sandbox's clock: real UTC time plus an offset, or a frozen instant plus an offset. Thread-safe.</summary>
    public sealed class SandboxClock
    {
        private readonly object _gate = new();
        private TimeSpan _offset;
        private DateTime? _frozen;

        public DateTime UtcNow
        {
            get
            {
                lock (_gate) return (_frozen ?? DateTime.UtcNow) + _offset;
            }
        }

        public TimeSpan Offset
        {
            get { lock (_gate) return _offset; }
            set { lock (_gate) _offset = value; }
        }

        /// <summary>Stops the clock at <paramref name="utc"/> (the offset still applies on top).</summary>
        public void Freeze(DateTime utc)
        {
            lock (_gate) _frozen = DateTime.SpecifyKind(utc, DateTimeKind.Utc);
        }

        public void Unfreeze()
        {
            lock (_gate) _frozen = null;
        }

        /// <summary>Moves the clock forward (frozen or not).</summary>
        public void Advance(TimeSpan by)
        {
            lock (_gate)
            {
                if (_frozen.HasValue) _frozen = _frozen.Value + by;
                else _offset += by;
            }
        }
    }

    /// <summary>One set of test credentials the sandbox accepts. <see cref="UserName"/> prefixes session ids, as SSM does with the caller's name.</summary>
    public sealed class SandboxCredential
    {
        public string AccessKeyId { get; set; } = "";
        public string SecretAccessKey { get; set; } = "";
        /// <summary>When set, requests signed with this key must carry exactly this X-Amz-Security-Token.</summary>
        public string? SessionToken { get; set; }
        public string UserName { get; set; } = "sandbox-user";
        /// <summary>The identity's ARN in IAM messages; null: arn:aws:iam::&lt;account&gt;:user/&lt;UserName&gt;.</summary>
        public string? Arn { get; set; }
        /// <summary>
        /// What this access key may do (<see cref="SandboxIamPolicy"/>); null: everything, as an administrator. Every
        /// sandbox service asks <see cref="SandboxIamPolicy.Authorize(SandboxWorld, SandboxCredential, string, string, IReadOnlyDictionary{string, string})"/>.
        /// Replaced whole (never changed in place), so a request sees one policy or the other.
        /// </summary>
        public SandboxIamPolicy? Policy { get; set; }
    }

    /// <summary>The inputs of the Session Manager preferences document the sandbox models.</summary>
    public sealed class SessionManagerPreferences
    {
        private string? _kmsKeyId;

        /// <summary>inputs.kmsKeyId: when set, the agent encrypts shell and command sessions with this key (not port sessions).</summary>
        public string? KmsKeyId
        {
            get => Volatile.Read(ref _kmsKeyId);
            set => Volatile.Write(ref _kmsKeyId, string.IsNullOrWhiteSpace(value) ? null : value);
        }
    }

    /// <summary>A managed EC2 instance as both EC2 (DescribeInstances) and SSM (DescribeInstanceInformation, StartSession) see it. Mutable at run time.</summary>
    public sealed class SandboxInstance
    {
        public string InstanceId { get; set; } = "";
        /// <summary>The Name tag (also returned in the tag set); null for no Name tag.</summary>
        public string? Name { get; set; }
        /// <summary>Other tags (Name is taken from <see cref="Name"/>).</summary>
        public Dictionary<string, string> Tags { get; set; } = new(StringComparer.Ordinal);
        /// <summary>SSM ping status: Online, ConnectionLost or Inactive. StartSession works only for Online.</summary>
        public string PingStatus { get; set; } = "Online";
        public string AgentVersion { get; set; } = "3.3.2299.0";
        public string PlatformType { get; set; } = "Linux";
        public string PlatformName { get; set; } = "Amazon Linux";
        public string PlatformVersion { get; set; } = "2023";
        /// <summary>EC2 platformDetails.</summary>
        public string PlatformDetails { get; set; } = "Linux/UNIX";
        public string PrivateIpAddress { get; set; } = "10.0.1.10";
        /// <summary>EC2 state name: pending, running, shutting-down, terminated, stopping, stopped.</summary>
        public string State { get; set; } = "running";
        public string InstanceType { get; set; } = "t3.micro";
        public string ImageId { get; set; } = "ami-0abcdef1234567890";
        public string VpcId { get; set; } = "vpc-0sandbox000000001";
        public string SubnetId { get; set; } = "subnet-0sandbox00000001";
        public string AvailabilityZone { get; set; } = "";
        public DateTime LaunchTime { get; set; } = new(2024, 1, 1, 0, 0, 0, DateTimeKind.Utc);

        /// <summary>All tags, Name first when set.</summary>
        public IEnumerable<KeyValuePair<string, string>> AllTags()
        {
            if (Name != null) yield return new KeyValuePair<string, string>("Name", Name);
            foreach (var t in Tags.OrderBy(t => t.Key, StringComparer.Ordinal))
            {
                if (t.Key == "Name") continue;
                yield return t;
            }
        }

        /// <summary>The instance profile's role name: the principal of the agent's own AWS calls (kms:Decrypt).</summary>
        public string IamRole { get; set; } = DefaultIamRole;

        public const string DefaultIamRole = "BastionInstanceRole";

        /// <summary>
        /// The identity policy of the instance's role (what IAM lets the agent's own calls do, e.g. kms:Decrypt on a key
        /// whose key policy lets IAM decide). Null: the role may do everything IAM decides, as a credential without a policy.
        /// </summary>
        public SandboxIamPolicy? RolePolicy { get; set; }

        public string PrivateDnsName(string region) =>
            "ip-" + PrivateIpAddress.Replace('.', '-') + "." + (region == "us-east-1" ? "ec2.internal" : region + ".compute.internal");
    }

    /// <summary>
    /// What the sandbox knows: region, account, accepted credentials, instances and the clock.
    /// Load one from JSON with <see cref="Load"/> or build it in code; <see cref="CreateDefault"/> gives the demo world.
    /// </summary>
    public sealed class SandboxWorld
    {
        private readonly object _gate = new();
        private readonly List<SandboxInstance> _instances = new();
        private readonly List<SandboxCredential> _credentials = new();

        private readonly Dictionary<string, string> _hostMap = new(StringComparer.OrdinalIgnoreCase);
        private readonly Dictionary<string, (string Address, int Port)> _portMap = new(StringComparer.OrdinalIgnoreCase);

        public SandboxWorld()
        {
            Kms = new SandboxKms(this);
        }

        public string Region { get; set; } = "us-west-2";
        public string AccountId { get; set; } = "123456789012";
        public SandboxClock Clock { get; } = new();

        /// <summary>How EC2's UnauthorizedOperation is worded (<see cref="SandboxEc2DenialMessage"/>; default Encoded).</summary>
        public SandboxEc2DenialMessage Ec2DenialMessage { get; set; } = SandboxEc2DenialMessage.Encoded;

        /// <summary>
        /// A signature mismatch also echoes the canonical request and string-to-sign AWS computed (with the session token
        /// header in it), as Coral services do (aws/aws-sdk-cpp#17 quotes cognito-sync's InvalidSignatureException; the
        /// same text in SDK issues for Lambda and API Gateway). Off by default: whether SSM and EC2 add it is not seen in
        /// public traces; the redaction tests turn it on for both, as the most revealing shape.
        /// </summary>
        public bool EchoCanonicalRequestOnSignatureMismatch { get; set; }

        /// <summary>The account's KMS keys (see <see cref="SandboxKms"/>).</summary>
        public SandboxKms Kms { get; }

        /// <summary>
        /// The account's Session Manager preferences (the SSM-SessionManagerRunShell document's inputs): the service puts
        /// them into every session's document, and the agent reads kmsKeyId from there (docparser.go
        /// parsePluginStateForStartSession → Configuration.KmsKeyId). Changes apply to sessions started afterwards.
        /// </summary>
        public SessionManagerPreferences Preferences { get; } = new();

        /// <summary>Accepted credentials; the first is the one printed as the sandbox's own.</summary>
        public IReadOnlyList<SandboxCredential> Credentials
        {
            get { lock (_gate) return _credentials.ToArray(); }
        }

        /// <summary>Instances in the order they were added (the order of paginated results).</summary>
        public IReadOnlyList<SandboxInstance> Instances
        {
            get { lock (_gate) return _instances.ToArray(); }
        }

        public SandboxWorld AddCredential(SandboxCredential credential)
        {
            if (string.IsNullOrWhiteSpace(credential.AccessKeyId) || string.IsNullOrWhiteSpace(credential.SecretAccessKey))
                throw new ArgumentException("A sandbox credential needs an access key id and a secret access key.", nameof(credential));
            lock (_gate) _credentials.Add(credential);
            return this;
        }

        /// <summary>Adds the credential, or replaces the one with the same access key id (keeping its place in the list).</summary>
        public SandboxWorld SetCredential(SandboxCredential credential)
        {
            if (string.IsNullOrWhiteSpace(credential.AccessKeyId) || string.IsNullOrWhiteSpace(credential.SecretAccessKey))
                throw new ArgumentException("A sandbox credential needs an access key id and a secret access key.", nameof(credential));
            lock (_gate)
            {
                var i = _credentials.FindIndex(c => string.Equals(c.AccessKeyId, credential.AccessKeyId, StringComparison.Ordinal));
                if (i < 0) _credentials.Add(credential);
                else _credentials[i] = credential;
            }
            return this;
        }

        /// <summary>Removes a credential (never the last one: the sandbox prints the first as its own).</summary>
        public bool RemoveCredential(string accessKeyId)
        {
            lock (_gate)
            {
                if (_credentials.Count <= 1) return false;
                return _credentials.RemoveAll(c => string.Equals(c.AccessKeyId, accessKeyId, StringComparison.Ordinal)) > 0;
            }
        }

        /// <summary>
        /// May access key <paramref name="accessKeyId"/> do <paramref name="action"/> on <paramref name="resource"/>, given the
        /// request's condition keys? (<see cref="SandboxIamPolicy.Authorize(SandboxWorld, string, string, string, IReadOnlyDictionary{string, string})"/>)
        /// </summary>
        public SandboxAuthorization Authorize(string accessKeyId, string action, string resource, IReadOnlyDictionary<string, string>? conditionValues = null) =>
            SandboxIamPolicy.Authorize(this, accessKeyId, action, resource, conditionValues);

        public SandboxWorld AddInstance(SandboxInstance instance)
        {
            if (string.IsNullOrWhiteSpace(instance.InstanceId)) throw new ArgumentException("A sandbox instance needs an instance id.", nameof(instance));
            lock (_gate)
            {
                if (_instances.Any(i => i.InstanceId == instance.InstanceId)) throw new ArgumentException("Duplicate instance id " + instance.InstanceId, nameof(instance));
                _instances.Add(instance);
            }
            return this;
        }

        public bool RemoveInstance(string instanceId)
        {
            lock (_gate) return _instances.RemoveAll(i => i.InstanceId == instanceId) > 0;
        }

        public SandboxInstance? FindInstance(string instanceId)
        {
            lock (_gate) return _instances.FirstOrDefault(i => string.Equals(i.InstanceId, instanceId, StringComparison.Ordinal));
        }

        public SandboxCredential? FindCredential(string accessKeyId)
        {
            lock (_gate) return _credentials.FirstOrDefault(c => string.Equals(c.AccessKeyId, accessKeyId, StringComparison.Ordinal));
        }

        /// <summary>
        /// Where the agent's port plugin connects for a destination host name: explicit entries of the host map first
        /// (<see cref="MapHost"/>), then the default rule (names ending in ".rds.amazonaws.com", "localhost" and
        /// loopback literals go to 127.0.0.1). Anything else does not resolve (null), as an unknown DNS name on a real
        /// instance. An empty host (AWS-StartPortForwardingSession) is the instance itself: 127.0.0.1.
        /// Only loopback addresses are ever returned, so the sandbox never connects anywhere else.
        /// </summary>
        public string? ResolveHost(string? host)
        {
            if (string.IsNullOrEmpty(host)) return "127.0.0.1";
            string? mapped;
            lock (_gate) _hostMap.TryGetValue(host!, out mapped);
            var candidate = mapped ?? host!;
            if (System.Net.IPAddress.TryParse(candidate, out var ip)) return System.Net.IPAddress.IsLoopback(ip) ? ip.ToString() : null;
            if (candidate.EndsWith(".rds.amazonaws.com", StringComparison.OrdinalIgnoreCase) || string.Equals(candidate, "localhost", StringComparison.OrdinalIgnoreCase)) return "127.0.0.1";
            return null;
        }

        /// <summary>
        /// Where the agent's port plugin connects for a destination host and port: an explicit host:port entry
        /// (<see cref="MapHostPort"/>, e.g. the RDS endpoint's 5432 → the RDS-IAM front's ephemeral port) first, else
        /// <see cref="ResolveHost"/> with the same port. Null when the host does not resolve. Only loopback addresses.
        /// </summary>
        public (string Address, int Port)? ResolveEndpoint(string? host, int port)
        {
            if (!string.IsNullOrEmpty(host))
            {
                (string Address, int Port) target;
                bool found;
                lock (_gate) found = _portMap.TryGetValue(HostPortKey(host!, port), out target);
                if (found)
                {
                    var address = ResolveHost(target.Address);
                    return address == null ? null : (address, target.Port);
                }
            }
            var resolved = ResolveHost(host);
            return resolved == null ? null : (resolved, port);
        }

        /// <summary>Maps a destination host:port to a loopback address (or a name the default rule resolves) and another port.</summary>
        public SandboxWorld MapHostPort(string host, int port, string address, int targetPort)
        {
            if (string.IsNullOrWhiteSpace(host)) throw new ArgumentException("A host name is needed.", nameof(host));
            if (port < 1 || port > 65535) throw new ArgumentOutOfRangeException(nameof(port));
            if (targetPort < 1 || targetPort > 65535) throw new ArgumentOutOfRangeException(nameof(targetPort));
            if (string.IsNullOrWhiteSpace(address)) throw new ArgumentException("An address is needed.", nameof(address));
            lock (_gate) _portMap[HostPortKey(host, port)] = (address, targetPort);
            return this;
        }

        public bool UnmapHostPort(string host, int port)
        {
            lock (_gate) return _portMap.Remove(HostPortKey(host, port));
        }

        /// <summary>The explicit host:port map entries ("host:port" → "address:port").</summary>
        public IReadOnlyDictionary<string, string> HostPortMap
        {
            get
            {
                lock (_gate)
                {
                    return _portMap.ToDictionary(e => e.Key, e => e.Value.Address + ":" + e.Value.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparer.OrdinalIgnoreCase);
                }
            }
        }

        private static string HostPortKey(string host, int port) => host.Trim() + ":" + port.ToString(System.Globalization.CultureInfo.InvariantCulture);

        /// <summary>Splits "name:port" (a name without ':' and a port 1..65535).</summary>
        internal static bool TrySplitHostPort(string value, out string host, out int port)
        {
            host = "";
            port = 0;
            var colon = value.LastIndexOf(':');
            if (colon <= 0 || value.IndexOf(':') != colon) return false;
            if (!int.TryParse(value.AsSpan(colon + 1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out port) || port < 1 || port > 65535) return false;
            host = value.Substring(0, colon);
            return true;
        }

        /// <summary>Maps a destination host name to a loopback address (or to another name the default rule resolves).</summary>
        public SandboxWorld MapHost(string host, string address)
        {
            if (string.IsNullOrWhiteSpace(host)) throw new ArgumentException("A host name is needed.", nameof(host));
            lock (_gate) _hostMap[host] = address;
            return this;
        }

        public bool UnmapHost(string host)
        {
            lock (_gate) return _hostMap.Remove(host);
        }

        /// <summary>The explicit host map entries.</summary>
        public IReadOnlyDictionary<string, string> HostMap
        {
            get { lock (_gate) return new Dictionary<string, string>(_hostMap, StringComparer.OrdinalIgnoreCase); }
        }

        public const string DefaultAccessKeyId = "AKIASANDBOXEXAMPLE01";
        public const string DefaultSecretAccessKey = "sandbox/Secret/Key/For/Tests/Only/000000";

        /// <summary>The demo world: one credential and three instances (a current agent, an old agent that only speaks basic port mode, one offline).</summary>
        public static SandboxWorld CreateDefault()
        {
            var world = new SandboxWorld();
            world.Kms.AddDefaults();
            world.AddCredential(new SandboxCredential { AccessKeyId = DefaultAccessKeyId, SecretAccessKey = DefaultSecretAccessKey, UserName = "sandbox-user" });
            world.AddInstance(new SandboxInstance
            {
                InstanceId = "i-0a1b2c3d4e5f60001", Name = "bastion", Tags = { ["Role"] = "bastion", ["Environment"] = "sandbox" },
                AgentVersion = "3.3.2299.0", PrivateIpAddress = "10.0.1.10",
            });
            world.AddInstance(new SandboxInstance
            {
                InstanceId = "i-0a1b2c3d4e5f60002", Name = "bastion-legacy", Tags = { ["Role"] = "bastion", ["Environment"] = "sandbox" },
                AgentVersion = "3.0.190.0", PrivateIpAddress = "10.0.1.11", PlatformVersion = "2",
            });
            world.AddInstance(new SandboxInstance
            {
                InstanceId = "i-0a1b2c3d4e5f60003", Name = "bastion-offline", Tags = { ["Role"] = "bastion", ["Environment"] = "sandbox" },
                PingStatus = "ConnectionLost", PrivateIpAddress = "10.0.1.12",
            });
            return world;
        }

        /// <summary>
        /// Reads a world from JSON: {"region","accountId","clockOffsetSeconds","ec2DenialMessage":"Encoded|Detailed|Bare",
        /// "credentials":[{accessKeyId,secretAccessKey,sessionToken,userName,arn,policy:{"Statement":[...]}}],
        /// "instances":[{instanceId,name,tags{},pingStatus,agentVersion,platformType,platformName,platformVersion,platformDetails,privateIpAddress,state,...}],
        /// "hostMap":{"db.example.internal":"127.0.0.1","db2.example.internal:5432":"127.0.0.1:15432"},
        /// "kms":{"keys":[{keyId,description,aliases:["alias/x"],enabled,policy:[{effect,principals:[arn|"*"],actions:["kms:GenerateDataKey"]}]}]},
        /// "sessionManagerPreferences":{"kmsKeyId":"alias/x"}}.
        /// Missing credentials, instances or KMS keys fall back to those of <see cref="CreateDefault"/>; no preferences by default.
        /// </summary>
        public static SandboxWorld Load(string json)
        {
            var options = new JsonSerializerOptions { PropertyNameCaseInsensitive = true, ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };
            var file = JsonSerializer.Deserialize<WorldFile>(json, options) ?? throw new InvalidDataException("The sandbox configuration is empty.");
            var defaults = CreateDefault();
            var world = new SandboxWorld
            {
                Region = string.IsNullOrWhiteSpace(file.Region) ? defaults.Region : file.Region!,
                AccountId = string.IsNullOrWhiteSpace(file.AccountId) ? defaults.AccountId : file.AccountId!,
            };
            world.Clock.Offset = TimeSpan.FromSeconds(file.ClockOffsetSeconds);
            if (!string.IsNullOrEmpty(file.Ec2DenialMessage))
            {
                if (!Enum.TryParse<SandboxEc2DenialMessage>(file.Ec2DenialMessage, ignoreCase: true, out var style) || !Enum.IsDefined(style))
                    throw new InvalidDataException("ec2DenialMessage must be Encoded, Detailed or Bare.");
                world.Ec2DenialMessage = style;
            }
            foreach (var c in file.Credentials is { Count: > 0 } ? file.Credentials : defaults.Credentials.ToList()) world.AddCredential(c);
            foreach (var i in file.Instances ?? defaults.Instances.ToList()) world.AddInstance(i);
            if (file.Kms?.Keys != null) world.Kms.Load(file.Kms.Keys);
            else world.Kms.AddDefaults();
            world.Preferences.KmsKeyId = file.SessionManagerPreferences?.KmsKeyId;
            if (file.HostMap != null)
            {
                foreach (var h in file.HostMap)
                {
                    // "name:port": "address:port" entries map one port; plain names map the host for every port.
                    if (TrySplitHostPort(h.Key, out var fromHost, out var fromPort))
                    {
                        if (!TrySplitHostPort(h.Value, out var toAddress, out var toPort)) throw new InvalidDataException("hostMap entry '" + h.Key + "' needs an \"address:port\" value.");
                        world.MapHostPort(fromHost, fromPort, toAddress, toPort);
                    }
                    else
                    {
                        world.MapHost(h.Key, h.Value);
                    }
                }
            }
            return world;
        }

        public static SandboxWorld LoadFile(string path) => Load(File.ReadAllText(path));

        private sealed class WorldFile
        {
            public string? Region { get; set; }
            public string? AccountId { get; set; }
            public double ClockOffsetSeconds { get; set; }
            public string? Ec2DenialMessage { get; set; }
            public List<SandboxCredential>? Credentials { get; set; }
            public List<SandboxInstance>? Instances { get; set; }
            public Dictionary<string, string>? HostMap { get; set; }
            public KmsFile? Kms { get; set; }
            public PreferencesFile? SessionManagerPreferences { get; set; }
        }

        private sealed class KmsFile
        {
            public List<SandboxKms.KeyFile>? Keys { get; set; }
        }

        private sealed class PreferencesFile
        {
            public string? KmsKeyId { get; set; }
        }
    }
}
