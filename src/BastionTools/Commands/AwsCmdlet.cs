using System;
using System.Management.Automation;
using BastionTools.Aws;

namespace BastionTools.Commands
{
    /// <summary>
    /// The AWS.Tools credential and region parameters, shared by every AWS-facing cmdlet, and the plumbing that
    /// keeps secrets out of the output streams: every Verbose/Debug/Warning message passes through a
    /// <see cref="Redactor"/> that knows this command's secrets.
    /// </summary>
    public abstract class AwsCmdlet : PSCmdlet
    {
        private ResolvedCredentials? _credentials;

        /// <summary>The AWS access key id (with -SecretKey).</summary>
        [Parameter]
        [Alias("AK")]
        [ValidateNotNullOrEmpty]
        public string? AccessKey { get; set; }

        /// <summary>The AWS secret access key (with -AccessKey).</summary>
        [Parameter]
        [Alias("SK", "SecretAccessKey")]
        [ValidateNotNullOrEmpty]
        public string? SecretKey { get; set; }

        /// <summary>The session token of temporary credentials.</summary>
        [Parameter]
        [Alias("ST")]
        [ValidateNotNullOrEmpty]
        public string? SessionToken { get; set; }

        /// <summary>A named profile of the AWS shared config/credentials files.</summary>
        [Parameter]
        [Alias("StoredCredentials", "AWSProfileName")]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(AwsProfileCompleter))]
        public string? ProfileName { get; set; }

        /// <summary>The credentials file to read the profile from.</summary>
        [Parameter]
        [Alias("AWSProfilesLocation", "ProfilesLocation")]
        [ValidateNotNullOrEmpty]
        public string? ProfileLocation { get; set; }

        /// <summary>The AWS region.</summary>
        [Parameter]
        [Alias("RegionToCall")]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(AwsRegionCompleter))]
        public string? Region { get; set; }

        internal Redactor Redactor { get; } = new();

        internal IEnvironmentSource Environment { get; set; } = ProcessEnvironment.Instance;

        protected override void BeginProcessing()
        {
            Redactor.Add(SecretKey);
            Redactor.Add(SessionToken);
            // A parameter error, whatever the command goes on to do (some never resolve credentials, e.g. with -Session).
            if (!string.IsNullOrEmpty(SessionToken) && string.IsNullOrEmpty(AccessKey) && string.IsNullOrEmpty(SecretKey))
            {
                ThrowTerminatingError(AwsCredentialResolver.SessionTokenAlone().ToErrorRecord());
            }
        }

        internal AwsParameters GetAwsParameters() => new()
        {
            AccessKey = AccessKey,
            SecretKey = SecretKey,
            SessionToken = SessionToken,
            ProfileName = ProfileName,
            ProfileLocation = ProfileLocation,
            Region = Region,
            StoredCredentials = SessionState.PSVariable.GetValue("StoredAWSCredentials"),
            StoredRegion = SessionState.PSVariable.GetValue("StoredAWSRegion"),
        };

        /// <summary>Resolves credentials once per command; a failure ends the command (nothing can go on without them).</summary>
        internal ResolvedCredentials ResolveCredentials()
        {
            if (_credentials != null) return _credentials;
            if (!string.IsNullOrEmpty(AccessKey) && !string.IsNullOrEmpty(ProfileName))
            {
                WriteWarningSafe("-AccessKey/-SecretKey were given, so -ProfileName is ignored.");
            }
            try
            {
                _credentials = new AwsCredentialResolver(Environment).Resolve(GetAwsParameters());
            }
            catch (BastionToolsException ex)
            {
                ThrowTerminatingError(ex.ToErrorRecord());
                throw; // not reached
            }
            WriteDebugSafe("Credentials: from " + _credentials.Source + ".");
            return _credentials;
        }

        /// <summary>Fetches the keys and registers their secret parts with the redactor.</summary>
        internal AwsKeys GetKeys(ResolvedCredentials credentials)
        {
            AwsKeys keys;
            try
            {
                keys = credentials.GetKeys();
            }
            catch (BastionToolsException ex)
            {
                ThrowTerminatingError(ex.ToErrorRecord());
                throw;
            }
            Redactor.Add(keys.SecretAccessKey);
            Redactor.Add(keys.SessionToken);
            return keys;
        }

        internal ResolvedRegion ResolveRegion(ResolvedCredentials? credentials)
        {
            ResolvedRegion region;
            try
            {
                region = new AwsCredentialResolver(Environment).ResolveRegion(GetAwsParameters(), credentials);
            }
            catch (BastionToolsException ex)
            {
                ThrowTerminatingError(ex.ToErrorRecord());
                throw;
            }
            WriteDebugSafe($"Region: {region.Name}, from {region.Source}.");
            return region;
        }

        internal void WriteDebugSafe(string message) => WriteDebug(Redactor.Redact(message));

        /// <summary>
        /// Verbose narration. Under -Debug without -Verbose, PowerShell sets a binary cmdlet's verbose preference to
        /// Inquire (a prompt per message, and an error in non-interactive hosts): write to the debug stream instead,
        /// which -Debug shows without prompting.
        /// </summary>
        internal void WriteVerboseSafe(string message)
        {
            var bound = MyInvocation.BoundParameters;
            var debug = bound.TryGetValue("Debug", out var d) && d is SwitchParameter ds && ds.IsPresent;
            if (debug && !bound.ContainsKey("Verbose"))
            {
                WriteDebug(Redactor.Redact(message));
                return;
            }
            WriteVerbose(Redactor.Redact(message));
        }

        internal void WriteWarningSafe(string message) => WriteWarning(Redactor.Redact(message));

        /// <summary>Writes a non-terminating error for one pipeline item.</summary>
        internal void WriteErrorSafe(BastionToolsException ex) => WriteError(ex.ToErrorRecord());

        /// <summary>
        /// Every error of an AWS-facing cmdlet goes out through here (it hides Cmdlet.WriteError): the message, the
        /// recommended action and the whole inner-exception chain are redacted with this command's own secrets too.
        /// </summary>
        public new void WriteError(ErrorRecord errorRecord) => base.WriteError(RedactRecord(errorRecord));

        /// <summary>As <see cref="WriteError"/>, for terminating errors (it hides Cmdlet.ThrowTerminatingError).</summary>
        public new void ThrowTerminatingError(ErrorRecord errorRecord) => base.ThrowTerminatingError(RedactRecord(errorRecord));

        private ErrorRecord RedactRecord(ErrorRecord record) =>
            record.Exception is BastionToolsException b ? b.ToErrorRecord(Redactor) : record;
    }
}
