using System;
using System.Collections.Generic;
using System.IO;

namespace BastionTools.Aws
{
    /// <summary>Where environment variables come from: the process, or a fixed set in tests.</summary>
    internal interface IEnvironmentSource
    {
        string? Get(string name);
        string HomeDirectory { get; }
    }

    internal sealed class ProcessEnvironment : IEnvironmentSource
    {
        public static readonly ProcessEnvironment Instance = new();

        public string? Get(string name)
        {
            var v = Environment.GetEnvironmentVariable(name);
            return string.IsNullOrWhiteSpace(v) ? null : v;
        }

        public string HomeDirectory
        {
            get
            {
                var home = Environment.GetEnvironmentVariable("HOME");
                if (string.IsNullOrEmpty(home)) home = Environment.GetEnvironmentVariable("USERPROFILE");
                return string.IsNullOrEmpty(home) ? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) : home!;
            }
        }
    }

    internal sealed class FixedEnvironment : IEnvironmentSource
    {
        private readonly IDictionary<string, string> _values;

        public FixedEnvironment(IDictionary<string, string> values, string home)
        {
            _values = new Dictionary<string, string>(values, StringComparer.Ordinal);
            HomeDirectory = home;
        }

        public string? Get(string name) => _values.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v : null;

        public string HomeDirectory { get; }
    }

    internal static class AwsEnvironmentNames
    {
        public const string AccessKeyId = "AWS_ACCESS_KEY_ID";
        public const string SecretAccessKey = "AWS_SECRET_ACCESS_KEY";
        public const string SessionToken = "AWS_SESSION_TOKEN";
        public const string LegacyAccessKey = "AWS_ACCESS_KEY";
        public const string LegacySecretKey = "AWS_SECRET_KEY";
        public const string Profile = "AWS_PROFILE";
        public const string Region = "AWS_REGION";
        public const string DefaultRegion = "AWS_DEFAULT_REGION";
        public const string SharedCredentialsFile = "AWS_SHARED_CREDENTIALS_FILE";
        public const string ConfigFile = "AWS_CONFIG_FILE";
        public const string WebIdentityTokenFile = "AWS_WEB_IDENTITY_TOKEN_FILE";
        public const string RoleArn = "AWS_ROLE_ARN";
        public const string RoleSessionName = "AWS_ROLE_SESSION_NAME";
        public const string ContainerRelativeUri = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
        public const string ContainerFullUri = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
        public const string Ec2MetadataDisabled = "AWS_EC2_METADATA_DISABLED";

        public static bool MetadataDisabled(IEnvironmentSource env)
            => string.Equals(env.Get(Ec2MetadataDisabled), "true", StringComparison.OrdinalIgnoreCase);

        /// <summary>The credentials file the SDK reads when no location is given: AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials.</summary>
        public static string DefaultCredentialsFile(IEnvironmentSource env)
            => env.Get(SharedCredentialsFile) ?? Path.Combine(env.HomeDirectory, ".aws", "credentials");

        public static string DefaultConfigFile(IEnvironmentSource env)
            => env.Get(ConfigFile) ?? Path.Combine(env.HomeDirectory, ".aws", "config");
    }
}
