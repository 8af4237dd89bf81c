using System;
using System.Collections.Generic;
using System.IO;
using System.Management.Automation;
using Amazon.Runtime;
using BastionTools.Aws;
using Xunit;

namespace BastionTools.Tests.Aws
{
    /// <summary>The AWS.Tools resolution order, with temporary shared credentials files and a fixed environment.</summary>
    public sealed class CredentialResolverTests : IDisposable
    {
        private readonly string _dir;
        private readonly string _credentials;

        public CredentialResolverTests()
        {
            _dir = Path.Combine(Path.GetTempPath(), "bt-cred-" + Guid.NewGuid().ToString("n"));
            Directory.CreateDirectory(_dir);
            _credentials = Path.Combine(_dir, "credentials");
            File.WriteAllText(_credentials, string.Join("\n",
                "[default]",
                "aws_access_key_id = AKIADEFAULTPROFILE01",
                "aws_secret_access_key = default-secret",
                "region = eu-west-1",
                "",
                "[dev]",
                "aws_access_key_id = AKIADEVPROFILE000001",
                "aws_secret_access_key = dev-secret",
                "aws_session_token = dev-token",
                "region = us-west-2",
                "",
                "[regiononly]",
                "region = ap-south-1",
                "",
                "[role]",
                "role_arn = arn:aws:iam::123456789012:role/ops",
                "source_profile = dev",
                "",
                "[sso]",
                "sso_start_url = https://example.awsapps.com/start",
                "sso_region = us-east-1",
                "sso_account_id = 123456789012",
                "sso_role_name = ReadOnly",
                "",
                "[proc]",
                "credential_process = " + WriteCredentialProcess(),
                ""));
        }

        public void Dispose()
        {
            try
            {
                Directory.Delete(_dir, true);
            }
            catch (IOException)
            {
            }
        }

        private string WriteCredentialProcess()
        {
            var script = Path.Combine(_dir, "cred-process.sh");
            File.WriteAllText(script, "#!/bin/sh\necho '{\"Version\":1,\"AccessKeyId\":\"AKIAFROMPROCESS00001\",\"SecretAccessKey\":\"process-secret\",\"SessionToken\":\"process-token\"}'\n");
            if (OperatingSystem.IsWindows())
            {
                var cmd = Path.Combine(_dir, "cred-process.cmd");
                File.WriteAllText(cmd, "@echo {\"Version\":1,\"AccessKeyId\":\"AKIAFROMPROCESS00001\",\"SecretAccessKey\":\"process-secret\",\"SessionToken\":\"process-token\"}\r\n");
                return cmd;
            }
            File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            return script;
        }

        private AwsCredentialResolver Resolver(Dictionary<string, string>? env = null, bool withFile = true, bool metadataDisabled = true)
        {
            var values = env ?? new Dictionary<string, string>();
            if (withFile) values[AwsEnvironmentNames.SharedCredentialsFile] = _credentials;
            else values[AwsEnvironmentNames.SharedCredentialsFile] = Path.Combine(_dir, "no-such-file");
            if (metadataDisabled) values[AwsEnvironmentNames.Ec2MetadataDisabled] = "true";
            return new AwsCredentialResolver(new FixedEnvironment(values, _dir));
        }

        private static Dictionary<string, string> EnvKeys() => new()
        {
            [AwsEnvironmentNames.AccessKeyId] = "AKIAENVIRONMENT00001",
            [AwsEnvironmentNames.SecretAccessKey] = "env-secret",
        };

        [Fact]
        public void ExplicitKeys_WinOverEverything()
        {
            var env = EnvKeys();
            env[AwsEnvironmentNames.Profile] = "dev";
            var r = Resolver(env).Resolve(new AwsParameters { AccessKey = "AKIAEXPLICIT00000001", SecretKey = "explicit-secret", StoredCredentials = "dev" });
            var keys = r.GetKeys();
            Assert.Equal("AKIAEXPLICIT00000001", keys.AccessKeyId);
            Assert.Null(keys.SessionToken);
            Assert.Contains("-AccessKey/-SecretKey", r.Source);
            Assert.DoesNotContain("explicit-secret", r.Source);
            Assert.DoesNotContain("AKIAEXPLICIT00000001", r.Source);
        }

        [Fact]
        public void ExplicitKeys_WithSessionToken_AreTemporary()
        {
            var keys = Resolver().Resolve(new AwsParameters { AccessKey = "ASIAEXPLICIT00000001", SecretKey = "s", SessionToken = "t0ken" }).GetKeys();
            Assert.Equal("t0ken", keys.SessionToken);
        }

        [Theory]
        [InlineData("AKIAONLYKEY000000001", null)]
        [InlineData(null, "only-secret")]
        public void HalfAKeyPair_IsAnError(string? ak, string? sk)
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver().Resolve(new AwsParameters { AccessKey = ak, SecretKey = sk }));
            Assert.Equal(ErrorIds.AwsCredentialsIncomplete, ex.ErrorId);
            Assert.DoesNotContain("only-secret", ex.Message);
        }

        [Fact]
        public void SessionTokenAlone_IsAnError_NotIgnored()
        {
            // With keys in the environment, a lone -SessionToken used to be dropped silently and the environment's keys used.
            var ex = Assert.Throws<BastionToolsException>(() => Resolver(EnvKeys()).Resolve(new AwsParameters { SessionToken = "lone-session-token" }));
            Assert.Equal(ErrorIds.AwsCredentialsIncomplete, ex.ErrorId);
            Assert.Equal(ErrorCategory.InvalidArgument, ex.Category);
            Assert.Contains("-SessionToken", ex.Message);
            Assert.DoesNotContain("lone-session-token", ex.Message);
        }

        [Fact]
        public void ExplicitProfile_IsUsed_OverStoredAndEnvironment()
        {
            var r = Resolver(EnvKeys()).Resolve(new AwsParameters { ProfileName = "dev", StoredCredentials = "default" });
            var keys = r.GetKeys();
            Assert.Equal("AKIADEVPROFILE000001", keys.AccessKeyId);
            Assert.Equal("dev-token", keys.SessionToken);
            Assert.Contains("'dev'", r.Source);
            Assert.Contains(_credentials, r.Source);
        }

        [Fact]
        public void ExplicitProfile_ThatDoesNotExist_IsAnError_NotAFallThrough()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver(EnvKeys()).Resolve(new AwsParameters { ProfileName = "nope" }));
            Assert.Equal(ErrorIds.AwsProfileNotFound, ex.ErrorId);
            Assert.Equal(ErrorCategory.ObjectNotFound, ex.Category);
            Assert.Contains("'nope'", ex.Message);
        }

        [Fact]
        public void ExplicitProfile_WithoutCredentials_IsAnError()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver().Resolve(new AwsParameters { ProfileName = "regiononly" }));
            Assert.Equal(ErrorIds.AwsCredentialsIncomplete, ex.ErrorId);
        }

        [Fact]
        public void ProfileLocation_ThatDoesNotExist_IsAnError()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver().Resolve(new AwsParameters { ProfileLocation = Path.Combine(_dir, "missing") }));
            Assert.Equal(ErrorIds.AwsProfileLocationNotFound, ex.ErrorId);
        }

        [Fact]
        public void ProfileLocation_Alone_UsesItsDefaultProfile()
        {
            var other = Path.Combine(_dir, "other-credentials");
            File.WriteAllText(other, "[default]\naws_access_key_id = AKIAOTHERFILE0000001\naws_secret_access_key = other-secret\n");
            var keys = Resolver(withFile: false).Resolve(new AwsParameters { ProfileLocation = other }).GetKeys();
            Assert.Equal("AKIAOTHERFILE0000001", keys.AccessKeyId);
        }

        [Fact]
        public void StoredCredentials_ProfileName_BeatsEnvironment()
        {
            var r = Resolver(EnvKeys()).Resolve(new AwsParameters { StoredCredentials = PSObject.AsPSObject("dev") });
            Assert.Equal("AKIADEVPROFILE000001", r.GetKeys().AccessKeyId);
            Assert.Contains("$StoredAWSCredentials", r.Source);
        }

        [Fact]
        public void StoredCredentials_UnknownProfileName_IsAnError()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver(EnvKeys()).Resolve(new AwsParameters { StoredCredentials = "ghost" }));
            Assert.Equal(ErrorIds.AwsProfileNotFound, ex.ErrorId);
        }

        /// <summary>Shaped like AWS.Tools' AWSPSCredentials: a Credentials property with GetCredentials().</summary>
        public sealed class FakeAwsToolsCredentials
        {
            public FakeAwsToolsCredentials(AWSCredentials credentials) => Credentials = credentials;

            public AWSCredentials Credentials { get; }

            public string? Name => null;
        }

        [Fact]
        public void StoredCredentials_AwsToolsObject_IsReadByShape()
        {
            var stored = new FakeAwsToolsCredentials(new SessionAWSCredentials("ASIASTOREDOBJECT0001", "stored-secret", "stored-token"));
            var r = Resolver(EnvKeys()).Resolve(new AwsParameters { StoredCredentials = stored });
            var keys = r.GetKeys();
            Assert.Equal("ASIASTOREDOBJECT0001", keys.AccessKeyId);
            Assert.Equal("stored-token", keys.SessionToken);
            Assert.DoesNotContain("stored-secret", r.Source);
        }

        [Fact]
        public void EnvironmentKeys_BeatAwsProfileAndDefaultProfile()
        {
            var env = EnvKeys();
            env[AwsEnvironmentNames.SessionToken] = "env-token";
            env[AwsEnvironmentNames.Profile] = "dev";
            var r = Resolver(env).Resolve(new AwsParameters());
            var keys = r.GetKeys();
            Assert.Equal("AKIAENVIRONMENT00001", keys.AccessKeyId);
            Assert.Equal("env-token", keys.SessionToken);
            Assert.Contains("AWS_ACCESS_KEY_ID", r.Source);
        }

        [Fact]
        public void EnvironmentKeys_HalfSet_IsAnError()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver(new Dictionary<string, string> { [AwsEnvironmentNames.AccessKeyId] = "AKIAHALF000000000001" }).Resolve(new AwsParameters()));
            Assert.Equal(ErrorIds.AwsCredentialsIncomplete, ex.ErrorId);
        }

        [Fact]
        public void AwsProfile_SelectsTheProfile_AndMustExist()
        {
            var r = Resolver(new Dictionary<string, string> { [AwsEnvironmentNames.Profile] = "dev" }).Resolve(new AwsParameters());
            Assert.Equal("AKIADEVPROFILE000001", r.GetKeys().AccessKeyId);
            Assert.Contains("AWS_PROFILE", r.Source);

            var ex = Assert.Throws<BastionToolsException>(() => Resolver(new Dictionary<string, string> { [AwsEnvironmentNames.Profile] = "ghost" }).Resolve(new AwsParameters()));
            Assert.Equal(ErrorIds.AwsProfileNotFound, ex.ErrorId);
        }

        [Fact]
        public void WebIdentity_FromEnvironment_BeatsDefaultProfile()
        {
            var tokenFile = Path.Combine(_dir, "oidc-token");
            File.WriteAllText(tokenFile, "eyJhbGciOi.fake.jwt");
            var r = Resolver(new Dictionary<string, string>
            {
                [AwsEnvironmentNames.WebIdentityTokenFile] = tokenFile,
                [AwsEnvironmentNames.RoleArn] = "arn:aws:iam::123456789012:role/github-deploy",
            }).Resolve(new AwsParameters());
            var web = Assert.IsType<AssumeRoleWithWebIdentityCredentials>(r.SdkCredentials);
            Assert.Equal("arn:aws:iam::123456789012:role/github-deploy", web.RoleArn);
            Assert.Equal(tokenFile, web.WebIdentityTokenFile);
            Assert.Contains("web identity", r.Source);
        }

        [Fact]
        public void WebIdentity_NeedsBothVariables()
        {
            var r = Resolver(new Dictionary<string, string> { [AwsEnvironmentNames.RoleArn] = "arn:aws:iam::123456789012:role/x" }).Resolve(new AwsParameters());
            Assert.Equal("AKIADEFAULTPROFILE01", r.GetKeys().AccessKeyId);
        }

        [Fact]
        public void DefaultProfile_IsUsedWhenNothingElseIsSet()
        {
            var r = Resolver().Resolve(new AwsParameters());
            Assert.Equal("AKIADEFAULTPROFILE01", r.GetKeys().AccessKeyId);
            Assert.Contains("'default'", r.Source);
        }

        [Fact]
        public void AssumeRoleProfile_ResolvesToTheSdkAssumeRoleProvider()
        {
            var r = Resolver().Resolve(new AwsParameters { ProfileName = "role" });
            Assert.IsType<AssumeRoleAWSCredentials>(r.SdkCredentials);
        }

        [Fact]
        public void SsoProfile_ResolvesToTheSdkSsoProvider_WithoutCallingSso()
        {
            var r = Resolver().Resolve(new AwsParameters { ProfileName = "sso" });
            Assert.IsType<SSOAWSCredentials>(r.SdkCredentials);
            Assert.Contains("'sso'", r.Source);
        }

        [Fact]
        public void CredentialProcessProfile_RunsTheProcess()
        {
            var keys = Resolver().Resolve(new AwsParameters { ProfileName = "proc" }).GetKeys();
            Assert.Equal("AKIAFROMPROCESS00001", keys.AccessKeyId);
            Assert.Equal("process-token", keys.SessionToken);
        }

        [Fact]
        public void ContainerCredentials_ComeAfterProfiles()
        {
            var env = new Dictionary<string, string> { [AwsEnvironmentNames.ContainerRelativeUri] = "/v2/credentials/abc" };
            Assert.Contains("'default'", Resolver(env).Resolve(new AwsParameters()).Source);
            var r = Resolver(env, withFile: false).Resolve(new AwsParameters());
            Assert.Equal("container", Assert.IsType<DeferredCredentials>(r.SdkCredentials).Kind);
        }

        [Fact]
        public void InstanceMetadata_IsLast_AndOnlyWhenEnabled()
        {
            // Choosing the source must not contact the metadata service (nor anything off this machine).
            var r = Resolver(withFile: false, metadataDisabled: false).Resolve(new AwsParameters());
            Assert.Equal("instance-metadata", Assert.IsType<DeferredCredentials>(r.SdkCredentials).Kind);
            Assert.Contains("instance", r.Source);
        }

        [Fact]
        public void NothingFound_IsAnErrorThatSaysWhatToSet()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver(withFile: false).Resolve(new AwsParameters()));
            Assert.Equal(ErrorIds.AwsCredentialsNotFound, ex.ErrorId);
            Assert.Equal(ErrorCategory.AuthenticationError, ex.Category);
            Assert.Contains("AWS_PROFILE", ex.RecommendedAction);
            Assert.Contains("-ProfileName", ex.RecommendedAction);
        }

        // Region

        [Fact]
        public void Region_Order_ParameterStoredEnvironmentProfile()
        {
            var env = new Dictionary<string, string> { [AwsEnvironmentNames.Region] = "ca-central-1", [AwsEnvironmentNames.DefaultRegion] = "sa-east-1" };
            var creds = Resolver(env).Resolve(new AwsParameters { ProfileName = "dev" });

            Assert.Equal("eu-north-1", Resolver(env).ResolveRegion(new AwsParameters { Region = "eu-north-1", StoredRegion = "me-south-1" }, creds).Name);
            var stored = Resolver(env).ResolveRegion(new AwsParameters { StoredRegion = PSObject.AsPSObject("me-south-1") }, creds);
            Assert.Equal("me-south-1", stored.Name);
            Assert.Contains("$StoredAWSRegion", stored.Source);
            Assert.Equal("ca-central-1", Resolver(env).ResolveRegion(new AwsParameters(), creds).Name);

            env.Remove(AwsEnvironmentNames.Region);
            var dflt = Resolver(env).ResolveRegion(new AwsParameters(), creds);
            Assert.Equal("sa-east-1", dflt.Name);
            Assert.Contains("AWS_DEFAULT_REGION", dflt.Source);

            env.Remove(AwsEnvironmentNames.DefaultRegion);
            var fromProfile = Resolver(env).ResolveRegion(new AwsParameters(), creds);
            Assert.Equal("us-west-2", fromProfile.Name);
            Assert.Contains("'dev'", fromProfile.Source);
        }

        [Fact]
        public void Region_FallsBackToTheDefaultProfilesRegion()
        {
            Assert.Equal("eu-west-1", Resolver().ResolveRegion(new AwsParameters(), null).Name);
            Assert.Equal("ap-south-1", Resolver(new Dictionary<string, string> { [AwsEnvironmentNames.Profile] = "regiononly" }).ResolveRegion(new AwsParameters(), null).Name);
        }

        [Fact]
        public void Region_Missing_IsAnErrorThatSaysWhatToSet()
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver(withFile: false).ResolveRegion(new AwsParameters(), null));
            Assert.Equal(ErrorIds.AwsRegionNotFound, ex.ErrorId);
            Assert.Contains("-Region", ex.RecommendedAction);
        }

        [Theory]
        [InlineData("us-west2")]
        [InlineData("US West")]
        [InlineData("uswest-2")]
        public void Region_Invalid_IsAnError(string region)
        {
            var ex = Assert.Throws<BastionToolsException>(() => Resolver().ResolveRegion(new AwsParameters { Region = region }, null));
            Assert.Equal(ErrorIds.AwsRegionInvalid, ex.ErrorId);
        }
    }
}
