using System;
using System.Threading.Tasks;
using Amazon.Runtime;

namespace BastionTools.Aws
{
    /// <summary>
    /// Credentials whose SDK provider is built on first use. Some providers do network work in their constructor
    /// (InstanceProfileAWSCredentials asks the metadata service for a token and a role at once); choosing a source
    /// must not touch the network, only using it may.
    /// </summary>
    internal sealed class DeferredCredentials : AWSCredentials
    {
        private readonly Lazy<AWSCredentials> _inner;

        public DeferredCredentials(string kind, Func<AWSCredentials> factory)
        {
            Kind = kind;
            _inner = new Lazy<AWSCredentials>(factory, isThreadSafe: true);
        }

        /// <summary>Which provider this stands for ("container", "instance-metadata").</summary>
        public string Kind { get; }

        public override ImmutableCredentials GetCredentials() => _inner.Value.GetCredentials();

        public override Task<ImmutableCredentials> GetCredentialsAsync() => _inner.Value.GetCredentialsAsync();
    }
}
