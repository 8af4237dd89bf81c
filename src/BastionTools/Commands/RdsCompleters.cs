using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using System.Management.Automation.Language;
using BastionTools.Aws;

namespace BastionTools.Commands
{
    /// <summary>
    /// Completes RDS identifiers from DescribeDBInstances/DescribeDBClusters (default credentials, or -ProfileName,
    /// -Region and -EndpointUrl already typed): DB instance identifiers for -DbInstanceIdentifier, cluster identifiers for
    /// -DbClusterIdentifier, both for Get-RdsIamDatabase -Name. Never throws.
    /// </summary>
    public sealed class RdsDatabaseCompleter : IArgumentCompleter
    {
        public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
        {
            try
            {
                var p = new AwsParameters
                {
                    ProfileName = fakeBoundParameters?["ProfileName"] as string,
                    Region = fakeBoundParameters?["Region"] as string,
                };
                var resolver = new AwsCredentialResolver(ProcessEnvironment.Instance);
                var creds = resolver.Resolve(p);
                var region = resolver.ResolveRegion(p, creds);
                using var client = new RdsApiClient(creds.GetKeys, region.Name, fakeBoundParameters?["EndpointUrl"] as string);
                using var cts = new System.Threading.CancellationTokenSource(TimeSpan.FromSeconds(5));
                IEnumerable<RdsIamDatabase> found;
                if (parameterName == "DbInstanceIdentifier") found = client.DescribeInstancesAsync(null, cts.Token).GetAwaiter().GetResult();
                else if (parameterName == "DbClusterIdentifier") found = client.DescribeClustersAsync(null, cts.Token).GetAwaiter().GetResult();
                else found = new RdsDatabaseResolver(client).ListAsync(null, cts.Token).GetAwaiter().GetResult();
                var word = wordToComplete.Trim('\'', '"');
                return found
                    .Where(d => d.Identifier.StartsWith(word, StringComparison.OrdinalIgnoreCase))
                    .Select(d => new CompletionResult(d.Identifier, d.Identifier, CompletionResultType.ParameterValue,
                        $"{d.Kind} {d.Identifier} {d.Engine} {d.Endpoint} IAM {(d.IamAuthenticationEnabled ? "on" : "off")}"))
                    .ToList();
            }
            catch (Exception)
            {
                // Completion must never throw: no credentials, no permission, no network: nothing to offer.
                return Array.Empty<CompletionResult>();
            }
        }
    }
}

namespace BastionTools.Commands
{
    /// <summary>Completes -ClusterEndpoint: Writer, Reader, and the custom endpoints of the -DbClusterIdentifier typed (when it can be looked up).</summary>
    public sealed class ClusterEndpointCompleter : IArgumentCompleter
    {
        public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
        {
            var names = new List<string> { "Writer", "Reader" };
            try
            {
                if (fakeBoundParameters?["DbClusterIdentifier"] is string cluster)
                {
                    var p = new AwsParameters { ProfileName = fakeBoundParameters["ProfileName"] as string, Region = fakeBoundParameters["Region"] as string };
                    var resolver = new AwsCredentialResolver(ProcessEnvironment.Instance);
                    var creds = resolver.Resolve(p);
                    var region = resolver.ResolveRegion(p, creds);
                    using var client = new RdsApiClient(creds.GetKeys, region.Name, fakeBoundParameters["EndpointUrl"] as string);
                    using var cts = new System.Threading.CancellationTokenSource(TimeSpan.FromSeconds(5));
                    var found = client.DescribeClustersAsync(cluster, cts.Token).GetAwaiter().GetResult();
                    names.AddRange(found.SelectMany(c => c.CustomEndpoints).Select(e => e.Split('.')[0]));
                }
            }
            catch (Exception)
            {
                // Completion must never throw.
            }
            var word = wordToComplete.Trim('\'', '"');
            return names.Where(n => n.StartsWith(word, StringComparison.OrdinalIgnoreCase))
                .Select(n => new CompletionResult(n, n, CompletionResultType.ParameterValue, n));
        }
    }
}
