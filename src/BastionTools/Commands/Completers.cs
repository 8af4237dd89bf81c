using System;
using System.Collections;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Management.Automation;
using System.Management.Automation.Language;
using System.Management.Automation.Runspaces;
using System.Text.RegularExpressions;
using BastionTools.Aws;

namespace BastionTools.Commands
{
    /// <summary>Completes profile names from the AWS shared config and credentials files (read as text: no SDK needed).</summary>
    public sealed class AwsProfileCompleter : IArgumentCompleter
    {
        private static readonly Regex Section = new(@"^\s*\[\s*(?:profile\s+)?(?<name>[^\]]+?)\s*\]\s*$", RegexOptions.CultureInvariant);

        public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
        {
            var env = ProcessEnvironment.Instance;
            var files = new List<string> { AwsEnvironmentNames.DefaultCredentialsFile(env), AwsEnvironmentNames.DefaultConfigFile(env) };
            if (fakeBoundParameters?["ProfileLocation"] is string loc) files.Insert(0, loc);
            return ProfileNames(files)
                .Where(n => n.StartsWith(wordToComplete.Trim('\'', '"').Replace("''", "'"), StringComparison.OrdinalIgnoreCase))
                .Select(n => new CompletionResult(CompletionText.Quote(n), n, CompletionResultType.ParameterValue, "AWS profile " + n));
        }

        internal static IEnumerable<string> ProfileNames(IEnumerable<string> files)
        {
            var names = new SortedSet<string>(StringComparer.OrdinalIgnoreCase);
            foreach (var f in files)
            {
                try
                {
                    if (!File.Exists(f)) continue;
                    foreach (var line in File.ReadAllLines(f))
                    {
                        var m = Section.Match(line);
                        if (m.Success && !m.Groups["name"].Value.StartsWith("sso-session ", StringComparison.Ordinal) && !m.Groups["name"].Value.StartsWith("services ", StringComparison.Ordinal))
                            names.Add(m.Groups["name"].Value);
                    }
                }
                catch (IOException)
                {
                }
                catch (UnauthorizedAccessException)
                {
                }
            }
            return names;
        }
    }

    /// <summary>What a completer inserts for a string value: the value itself when PowerShell reads it back unchanged as a bare word, else a single-quoted string.</summary>
    internal static class CompletionText
    {
        // Bare words PowerShell reads back as the same string: a letter or _ first (a digit could start a number,
        // 1e5; -, @, $, ( and quotes open something else), then letters, digits, _, - and dots.
        private static readonly Regex Bare = new(@"^[\p{L}_][\p{L}\p{N}_.\-]*$", RegexOptions.CultureInvariant);

        /// <summary>
        /// Single quotes unless <paramref name="value"/> is a plain word. Inside single quotes PowerShell expands nothing;
        /// a quote (' and its typographic forms ‘ ’ ‚ ‛, which PowerShell also treats as quotes) is doubled.
        /// </summary>
        public static string Quote(string value)
        {
            if (value.Length > 0 && Bare.IsMatch(value)) return value;
            var sb = new System.Text.StringBuilder(value.Length + 2);
            sb.Append('\'');
            foreach (var c in value)
            {
                if (c == '\'' || c == '\u2018' || c == '\u2019' || c == '\u201A' || c == '\u201B') sb.Append(c);
                sb.Append(c);
            }
            sb.Append('\'');
            return sb.ToString();
        }
    }

    /// <summary>Completes the ids of the sessions open in this PowerShell session.</summary>
    public sealed class BastionSessionCompleter : IArgumentCompleter
    {
        public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
            => Ssm.SessionRegistry.All()
                .Where(s => s.SessionId.StartsWith(wordToComplete.Trim('\'', '"'), StringComparison.OrdinalIgnoreCase))
                .Select(s => new CompletionResult(CompletionText.Quote(s.SessionId), s.SessionId, CompletionResultType.ParameterValue, s.ToString()));
    }

    /// <summary>Completes bastion targets: instance ids with their Name tags, from EC2 and SSM (uses the default credentials and region).</summary>
    public sealed class BastionTargetCompleter : IArgumentCompleter
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
                using var api = new AwsApi(creds, region.Name, fakeBoundParameters?["EndpointUrl"] as string);
                using var cts = new System.Threading.CancellationTokenSource(TimeSpan.FromSeconds(5));
                var found = api.DescribeInstancesAsync(null, null, null, cts.Token).GetAwaiter().GetResult();
                try
                {
                    api.JoinInstanceInformationAsync(found, cts.Token).GetAwaiter().GetResult();
                }
                catch (BastionToolsException)
                {
                    // ssm:DescribeInstanceInformation denied (or failing): the ids and names are still worth offering.
                }
                var word = wordToComplete.Trim('\'', '"');
                return found
                    .Where(i => i.InstanceId.StartsWith(word, StringComparison.OrdinalIgnoreCase) || (i.Name ?? "").StartsWith(word, StringComparison.OrdinalIgnoreCase))
                    .Select(i => new CompletionResult(CompletionText.Quote(i.InstanceId), i.InstanceId + (i.Name == null ? "" : " (" + i.Name + ")"), CompletionResultType.ParameterValue,
                        $"{i.InstanceId} {i.Name} {i.PingStatus ?? "not managed"}"))
                    .ToList();
            }
            catch (Exception)
            {
                // Completion must never throw: no credentials, no network, nothing to offer.
                return Array.Empty<CompletionResult>();
            }
        }
    }

    /// <summary>Completes -Connection with the variables of this session that hold an open IAM connection.</summary>
    public sealed class IamConnectionCompleter : IArgumentCompleter
    {
        public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
        {
            var word = wordToComplete.TrimStart('$');
            var results = new List<CompletionResult>();
            try
            {
                using var ps = System.Management.Automation.PowerShell.Create(RunspaceMode.CurrentRunspace);
                ps.AddCommand("Get-Variable").AddParameter("Scope", "Global");
                foreach (var item in ps.Invoke())
                {
                    if (item?.BaseObject is not PSVariable v || v.Value is not IamPostgresConnection c && (v.Value as PSObject)?.BaseObject is not IamPostgresConnection) continue;
                    var connection = v.Value as IamPostgresConnection ?? (IamPostgresConnection)((PSObject)v.Value).BaseObject;
                    if (!connection.IsOpen || !v.Name.StartsWith(word, StringComparison.OrdinalIgnoreCase)) continue;
                    results.Add(new CompletionResult("$" + v.Name, "$" + v.Name, CompletionResultType.Variable, connection.ToString()));
                }
            }
            catch (Exception)
            {
                // Completion must never throw.
            }
            return results;
        }
    }

    /// <summary>Completes AWS region codes.</summary>
    public sealed class AwsRegionCompleter : IArgumentCompleter
    {
        internal static readonly string[] Regions =
        {
            "af-south-1", "ap-east-1", "ap-east-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1", "ap-south-2",
            "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5", "ap-southeast-7",
            "ca-central-1", "ca-west-1", "cn-north-1", "cn-northwest-1", "eu-central-1", "eu-central-2", "eu-north-1",
            "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-2", "eu-west-3", "il-central-1", "me-central-1", "me-south-1",
            "mx-central-1", "sa-east-1", "us-east-1", "us-east-2", "us-gov-east-1", "us-gov-west-1", "us-west-1", "us-west-2",
        };

        public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
            => Regions.Where(r => r.StartsWith(wordToComplete.Trim('\'', '"'), StringComparison.OrdinalIgnoreCase))
                .Select(r => new CompletionResult(CompletionText.Quote(r), r, CompletionResultType.ParameterValue, r));
    }
}
