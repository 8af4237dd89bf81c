using System;
using System.IO;
using System.Management.Automation;
using System.Reflection;
using Amazon.Runtime;
using Amazon.Runtime.CredentialManagement;

namespace BastionTools.Aws
{
    /// <summary>What the user gave on the command line and in the AWS.Tools session variables.</summary>
    internal sealed class AwsParameters
    {
        public string? AccessKey { get; set; }
        public string? SecretKey { get; set; }
        public string? SessionToken { get; set; }
        public string? ProfileName { get; set; }
        public string? ProfileLocation { get; set; }
        public string? Region { get; set; }

        /// <summary>The value of $StoredAWSCredentials: a profile name, or an AWS.Tools credentials object.</summary>
        public object? StoredCredentials { get; set; }

        /// <summary>The value of $StoredAWSRegion.</summary>
        public object? StoredRegion { get; set; }
    }

    /// <summary>Credentials found by the resolver, with a description of where they came from that is safe to print.</summary>
    internal sealed class ResolvedCredentials
    {
        internal ResolvedCredentials(AWSCredentials credentials, string source, CredentialProfile? profile, bool fromMetadata = false)
        {
            SdkCredentials = credentials;
            Source = source;
            Profile = profile;
            FromMetadata = fromMetadata;
        }

        /// <summary>For AWSSDK service clients. Never leaves the engine.</summary>
        internal AWSCredentials SdkCredentials { get; }

        public string Source { get; }
        internal CredentialProfile? Profile { get; }
        internal bool FromMetadata { get; }

        /// <summary>Fetches the keys (this may call STS, SSO, a credential process or the metadata service).</summary>
        public AwsKeys GetKeys()
        {
            ImmutableCredentials keys;
            try
            {
                keys = SdkCredentials.GetCredentials();
            }
            catch (Exception ex)
            {
                if (FromMetadata) throw AwsCredentialResolver.NotFound(ex);
                throw new BastionToolsException(
                    ErrorIds.AwsCredentialsUnavailable,
                    ErrorCategory.AuthenticationError,
                    $"The credentials from {Source} could not be obtained: {Redactor.RedactPatterns(ex.Message)}",
                    recommendedAction: "Check that the profile or role can be used (for SSO, run 'aws sso login'), or pass -AccessKey/-SecretKey.",
                    inner: null);
            }
            if (keys == null || string.IsNullOrEmpty(keys.AccessKey) || string.IsNullOrEmpty(keys.SecretKey))
            {
                throw new BastionToolsException(ErrorIds.AwsCredentialsUnavailable, ErrorCategory.AuthenticationError,
                    $"The credentials from {Source} are empty.");
            }
            return new AwsKeys(keys.AccessKey, keys.SecretKey, keys.UseToken ? keys.Token : null);
        }
    }

    internal sealed class ResolvedRegion
    {
        public ResolvedRegion(string name, string source)
        {
            Name = name;
            Source = source;
        }

        public string Name { get; }
        public string Source { get; }
    }

    /// <summary>
    /// Credential and region resolution in the order AWS.Tools uses, built from AWSSDK.Core's own providers:
    /// explicit keys; explicit profile (-ProfileName/-ProfileLocation; a missing one is an error);
    /// $StoredAWSCredentials; environment variables (keys, AWS_PROFILE, web identity);
    /// the default profile (static keys, SSO, credential_process, assume-role);
    /// container credentials; the EC2 instance metadata service (unless AWS_EC2_METADATA_DISABLED=true).
    /// It reports where credentials came from, never their values.
    /// </summary>
    internal sealed class AwsCredentialResolver
    {
        internal const string DefaultProfileName = "default";
        internal const string AwsPowerShellDefaultProfileName = "AWS PS Default";

        private readonly IEnvironmentSource _env;

        public AwsCredentialResolver(IEnvironmentSource env)
        {
            _env = env;
        }

        /// <summary>-SessionToken without -AccessKey and -SecretKey: the parameters are incomplete (never ignored).</summary>
        internal static BastionToolsException SessionTokenAlone() =>
            new(ErrorIds.AwsCredentialsIncomplete, ErrorCategory.InvalidArgument,
                "-SessionToken was given without -AccessKey and -SecretKey: a session token belongs to the temporary keys it was issued with.",
                recommendedAction: "Pass -AccessKey and -SecretKey with -SessionToken, or leave -SessionToken out.");

        public ResolvedCredentials Resolve(AwsParameters p)
        {
            // -SessionToken alone would be silently ignored (the profile or environment keys would be used instead).
            if (!string.IsNullOrWhiteSpace(p.SessionToken) && string.IsNullOrWhiteSpace(p.AccessKey) && string.IsNullOrWhiteSpace(p.SecretKey))
            {
                throw SessionTokenAlone();
            }

            // 1. Literal keys on the command line.
            if (!string.IsNullOrWhiteSpace(p.AccessKey) || !string.IsNullOrWhiteSpace(p.SecretKey))
            {
                if (string.IsNullOrWhiteSpace(p.AccessKey) || string.IsNullOrWhiteSpace(p.SecretKey))
                {
                    throw new BastionToolsException(ErrorIds.AwsCredentialsIncomplete, ErrorCategory.InvalidArgument,
                        "-AccessKey and -SecretKey go together: give both, or neither.",
                        recommendedAction: "Pass both -AccessKey and -SecretKey (and -SessionToken for temporary credentials).");
                }
                var keys = new AwsKeys(p.AccessKey!, p.SecretKey!, p.SessionToken);
                AWSCredentials creds = keys.IsTemporary
                    ? new SessionAWSCredentials(keys.AccessKeyId, keys.SecretAccessKey, keys.SessionToken)
                    : new BasicAWSCredentials(keys.AccessKeyId, keys.SecretAccessKey);
                return new ResolvedCredentials(creds,
                    $"the -AccessKey/-SecretKey parameters (access key {keys.MaskedAccessKeyId}{(keys.IsTemporary ? ", with -SessionToken" : "")})",
                    null);
            }

            // 2. An explicit profile: it must exist.
            if (!string.IsNullOrWhiteSpace(p.ProfileName) || !string.IsNullOrWhiteSpace(p.ProfileLocation))
            {
                var name = string.IsNullOrWhiteSpace(p.ProfileName) ? DefaultProfileName : p.ProfileName!.Trim();
                string? location = null;
                if (!string.IsNullOrWhiteSpace(p.ProfileLocation))
                {
                    location = Path.GetFullPath(p.ProfileLocation!.Trim());
                    if (!File.Exists(location))
                    {
                        throw new BastionToolsException(ErrorIds.AwsProfileLocationNotFound, ErrorCategory.ObjectNotFound,
                            $"The credentials file '{location}' given by -ProfileLocation does not exist.",
                            location, "Pass the path of an existing AWS shared credentials file, or leave -ProfileLocation out.");
                    }
                }
                return FromProfile(name, location ?? DefaultLocation(), "-ProfileName", required: true)!;
            }

            // 3. $StoredAWSCredentials (Set-AWSCredential).
            if (p.StoredCredentials != null)
            {
                var stored = FromStoredVariable(p.StoredCredentials);
                if (stored != null) return stored;
            }

            // 4. Environment variables.
            var envCreds = FromEnvironment();
            if (envCreds != null) return envCreds;

            // 5. The default profile (static keys, SSO, credential_process, assume-role).
            foreach (var name in new[] { DefaultProfileName, AwsPowerShellDefaultProfileName })
            {
                var profile = FromProfile(name, DefaultLocation(), "default profile", required: false);
                if (profile != null) return profile;
            }

            // 6. Container credentials (ECS, CodeBuild, EKS Pod Identity).
            if (_env.Get(AwsEnvironmentNames.ContainerRelativeUri) != null || _env.Get(AwsEnvironmentNames.ContainerFullUri) != null)
            {
                return new ResolvedCredentials(new DeferredCredentials("container", () => new GenericContainerCredentials()), "the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_*)", null);
            }

            // 7. EC2 instance metadata (IMDSv2), unless disabled.
            if (!AwsEnvironmentNames.MetadataDisabled(_env))
            {
                return new ResolvedCredentials(new DeferredCredentials("instance-metadata", () => new InstanceProfileAWSCredentials()), "the EC2 instance profile (instance metadata service)", null, fromMetadata: true);
            }

            throw NotFound(null);
        }

        internal static BastionToolsException NotFound(Exception? cause)
            => new(ErrorIds.AwsCredentialsNotFound, ErrorCategory.AuthenticationError,
                "No AWS credentials were found. Looked at: -AccessKey/-SecretKey, -ProfileName, $StoredAWSCredentials, " +
                "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), " +
                "the 'default' profile of the AWS shared config and credentials files, container credentials" +
                (cause == null ? " (the instance metadata service is disabled by AWS_EC2_METADATA_DISABLED)." : " and the instance metadata service."),
                recommendedAction: "Pass -ProfileName or -AccessKey/-SecretKey, run Set-AWSCredential, set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or configure a 'default' profile ('aws configure' or 'aws configure sso').");

        /// <summary>The credentials file to read when none is given: AWS_SHARED_CREDENTIALS_FILE, else the SDK's default (which on Windows also reads the SDK store).</summary>
        private string? DefaultLocation() => _env.Get(AwsEnvironmentNames.SharedCredentialsFile);

        private ResolvedCredentials? FromProfile(string name, string? location, string how, bool required)
        {
            var chain = location == null ? new CredentialProfileStoreChain() : new CredentialProfileStoreChain(location);
            var where = location ?? "the AWS shared credentials and config files";
            if (!chain.TryGetProfile(name, out var profile))
            {
                if (!required) return null;
                throw new BastionToolsException(ErrorIds.AwsProfileNotFound, ErrorCategory.ObjectNotFound,
                    $"The AWS profile '{name}' ({how}) was not found in {where}.",
                    name, "Check the name with 'Get-Content ~/.aws/config' or 'aws configure list-profiles', or pass -ProfileLocation.");
            }
            if (!profile.CanCreateAWSCredentials || !chain.TryGetAWSCredentials(name, out var creds))
            {
                if (!required) return null;
                throw new BastionToolsException(ErrorIds.AwsCredentialsIncomplete, ErrorCategory.InvalidData,
                    $"The AWS profile '{name}' in {where} holds no usable credentials (keys, sso_*, credential_process or role_arn).",
                    name, "Complete the profile, or choose another with -ProfileName.");
            }
            return new ResolvedCredentials(creds, $"the profile '{name}' ({how}) in {where}", profile);
        }

        private ResolvedCredentials? FromStoredVariable(object value)
        {
            var raw = value is PSObject pso ? pso.BaseObject : value;
            if (raw is string name)
            {
                if (string.IsNullOrWhiteSpace(name)) return null;
                return FromProfile(name.Trim(), DefaultLocation(), "$StoredAWSCredentials", required: true);
            }

            // An AWS.Tools AWSPSCredentials object: its Credentials property is an AWSCredentials from AWS.Tools' own
            // AWSSDK.Core (another assembly, maybe another version), so read it by reflection rather than by type.
            var credsObject = raw.GetType().GetProperty("Credentials", BindingFlags.Public | BindingFlags.Instance)?.GetValue(raw);
            var getCredentials = credsObject?.GetType().GetMethod("GetCredentials", BindingFlags.Public | BindingFlags.Instance, null, Type.EmptyTypes, null);
            if (credsObject != null && getCredentials != null)
            {
                object? immutable;
                try
                {
                    immutable = getCredentials.Invoke(credsObject, null);
                }
                catch (TargetInvocationException ex)
                {
                    throw new BastionToolsException(ErrorIds.AwsCredentialsUnavailable, ErrorCategory.AuthenticationError,
                        "The credentials in $StoredAWSCredentials could not be obtained: " + Redactor.RedactPatterns(ex.InnerException?.Message ?? ex.Message));
                }
                string? Read(string prop) => immutable?.GetType().GetProperty(prop)?.GetValue(immutable) as string;
                var ak = Read("AccessKey");
                var sk = Read("SecretKey");
                if (!string.IsNullOrEmpty(ak) && !string.IsNullOrEmpty(sk))
                {
                    var keys = new AwsKeys(ak!, sk!, Read("Token"));
                    AWSCredentials c = keys.IsTemporary
                        ? new SessionAWSCredentials(keys.AccessKeyId, keys.SecretAccessKey, keys.SessionToken)
                        : new BasicAWSCredentials(keys.AccessKeyId, keys.SecretAccessKey);
                    return new ResolvedCredentials(c, $"$StoredAWSCredentials (Set-AWSCredential, access key {keys.MaskedAccessKeyId})", null);
                }
            }

            var profileName = raw.GetType().GetProperty("Name")?.GetValue(raw) as string;
            if (!string.IsNullOrWhiteSpace(profileName))
            {
                return FromProfile(profileName!.Trim(), DefaultLocation(), "$StoredAWSCredentials", required: true);
            }
            return null;
        }

        private ResolvedCredentials? FromEnvironment()
        {
            var ak = _env.Get(AwsEnvironmentNames.AccessKeyId) ?? _env.Get(AwsEnvironmentNames.LegacyAccessKey);
            var sk = _env.Get(AwsEnvironmentNames.SecretAccessKey) ?? _env.Get(AwsEnvironmentNames.LegacySecretKey);
            if (ak != null || sk != null)
            {
                if (ak == null || sk == null)
                {
                    throw new BastionToolsException(ErrorIds.AwsCredentialsIncomplete, ErrorCategory.InvalidData,
                        "Only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set in the environment.",
                        recommendedAction: "Set both variables, or remove both.");
                }
                var keys = new AwsKeys(ak, sk, _env.Get(AwsEnvironmentNames.SessionToken));
                AWSCredentials c = keys.IsTemporary
                    ? new SessionAWSCredentials(keys.AccessKeyId, keys.SecretAccessKey, keys.SessionToken)
                    : new BasicAWSCredentials(keys.AccessKeyId, keys.SecretAccessKey);
                return new ResolvedCredentials(c,
                    $"the environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY{(keys.IsTemporary ? "/AWS_SESSION_TOKEN" : "")} (access key {keys.MaskedAccessKeyId})",
                    null);
            }

            var profile = _env.Get(AwsEnvironmentNames.Profile);
            if (profile != null) return FromProfile(profile.Trim(), DefaultLocation(), "AWS_PROFILE", required: true);

            var tokenFile = _env.Get(AwsEnvironmentNames.WebIdentityTokenFile);
            var roleArn = _env.Get(AwsEnvironmentNames.RoleArn);
            if (tokenFile != null && roleArn != null)
            {
                var session = _env.Get(AwsEnvironmentNames.RoleSessionName) ?? "BastionTools-" + DateTime.UtcNow.ToString("yyyyMMddHHmmss", System.Globalization.CultureInfo.InvariantCulture);
                return new ResolvedCredentials(new AssumeRoleWithWebIdentityCredentials(tokenFile, roleArn, session),
                    $"web identity (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, role {roleArn})", null);
            }
            return null;
        }

        /// <summary>
        /// Region in the AWS.Tools order: -Region, $StoredAWSRegion, AWS_REGION, AWS_DEFAULT_REGION, the region of the
        /// profile in use (or of AWS_PROFILE / 'default'), then the instance metadata service unless disabled.
        /// </summary>
        public ResolvedRegion ResolveRegion(AwsParameters p, ResolvedCredentials? credentials)
        {
            if (!string.IsNullOrWhiteSpace(p.Region)) return Checked(p.Region!, "the -Region parameter");

            var stored = p.StoredRegion is PSObject pso ? pso.BaseObject : p.StoredRegion;
            var storedName = stored as string ?? stored?.GetType().GetProperty("Region")?.GetValue(stored) as string ?? stored?.GetType().GetProperty("SystemName")?.GetValue(stored) as string;
            if (!string.IsNullOrWhiteSpace(storedName)) return Checked(storedName!, "$StoredAWSRegion (Set-DefaultAWSRegion)");

            var envRegion = _env.Get(AwsEnvironmentNames.Region);
            if (envRegion != null) return Checked(envRegion, "the environment variable AWS_REGION");
            envRegion = _env.Get(AwsEnvironmentNames.DefaultRegion);
            if (envRegion != null) return Checked(envRegion, "the environment variable AWS_DEFAULT_REGION");

            if (credentials?.Profile?.Region != null)
                return Checked(credentials.Profile.Region.SystemName, $"the profile '{credentials.Profile.Name}'");

            var profileName = _env.Get(AwsEnvironmentNames.Profile) ?? DefaultProfileName;
            var location = DefaultLocation();
            var chain = location == null ? new CredentialProfileStoreChain() : new CredentialProfileStoreChain(location);
            if (chain.TryGetProfile(profileName, out var profile) && profile.Region != null)
                return Checked(profile.Region.SystemName, $"the profile '{profileName}'");

            if (!AwsEnvironmentNames.MetadataDisabled(_env))
            {
                try
                {
                    var imds = Amazon.Util.EC2InstanceMetadata.Region;
                    if (imds != null) return Checked(imds.SystemName, "the EC2 instance metadata service");
                }
                catch (Exception)
                {
                    // Not on EC2: fall through to the error below.
                }
            }

            throw new BastionToolsException(ErrorIds.AwsRegionNotFound, ErrorCategory.InvalidArgument,
                "No AWS region was given or configured. Looked at: -Region, $StoredAWSRegion, AWS_REGION, AWS_DEFAULT_REGION, the profile's region" +
                (AwsEnvironmentNames.MetadataDisabled(_env) ? "." : " and the instance metadata service."),
                recommendedAction: "Pass -Region (for example -Region us-east-1), run Set-DefaultAWSRegion, set AWS_REGION, or add 'region = ...' to your profile.");
        }

        internal static ResolvedRegion Checked(string region, string source)
        {
            var name = region.Trim().ToLowerInvariant();
            if (!RdsEndpoint.IsValidRegionName(name))
            {
                throw new BastionToolsException(ErrorIds.AwsRegionInvalid, ErrorCategory.InvalidArgument,
                    $"'{region}' (from {source}) is not an AWS region name.", region,
                    "Use a region code such as us-east-1, eu-west-2 or cn-north-1.");
            }
            return new ResolvedRegion(name, source);
        }
    }
}
