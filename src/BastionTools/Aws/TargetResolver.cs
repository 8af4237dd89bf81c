using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Aws
{
    /// <summary>How the user named the bastion: an instance id, a Name tag, or a set of tags.</summary>
    internal sealed class TargetSelector
    {
        public string? InstanceId { get; set; }
        public string? Name { get; set; }
        public Dictionary<string, string>? Tags { get; set; }

        public static Dictionary<string, string> TagsFrom(Hashtable table)
        {
            var tags = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (DictionaryEntry e in table) tags[e.Key?.ToString() ?? ""] = e.Value?.ToString() ?? "";
            return tags;
        }

        public override string ToString()
        {
            if (InstanceId != null) return InstanceId;
            if (Name != null) return "Name=" + Name;
            return string.Join(", ", (Tags ?? new Dictionary<string, string>()).Select(t => t.Key + "=" + t.Value));
        }
    }

    /// <summary>
    /// Finds the one bastion a selector names, and checks that its agent is online before any session is started.
    /// With an instance id the look-ups (ec2:DescribeInstances, ssm:DescribeInstanceInformation) only improve the error
    /// messages, so a least-privilege operator who may only ssm:StartSession is not stopped by them: AccessDenied there
    /// is narrated and the session goes ahead unchecked. A Name tag or tags can only be resolved by them: a denial is an
    /// error that names both actions and the -Target alternative.
    /// </summary>
    internal static class TargetResolver
    {
        public static async Task<InstanceRecord> ResolveAsync(IAwsApi api, TargetSelector selector, CancellationToken cancellationToken, Action<string>? narrate = null)
        {
            var byId = selector.InstanceId != null;
            var ids = byId ? new[] { selector.InstanceId! } : null;
            IReadOnlyList<InstanceRecord> found;
            try
            {
                found = await api.DescribeInstancesAsync(ids, selector.Name, selector.Tags, cancellationToken).ConfigureAwait(false);
            }
            catch (BastionToolsException ex) when (ex.InnerException is Amazon.Runtime.AmazonServiceException sx && (sx.ErrorCode?.StartsWith("InvalidInstanceID", StringComparison.Ordinal) ?? false))
            {
                found = Array.Empty<InstanceRecord>();
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.AwsAccessDenied)
            {
                if (!byId) throw LookupDenied(selector, ex);
                narrate?.Invoke($"AWS denied {IamActions.DescribeInstances}, which -Target does not need: {selector.InstanceId} is not looked up in EC2.");
                found = new[] { new InstanceRecord { InstanceId = selector.InstanceId! } };
                if (!await TryJoinAsync(api, found, selector, narrate, cancellationToken).ConfigureAwait(false) || found[0].PingStatus == null)
                {
                    // Nothing says whether it exists or is online: StartSession will (TargetNotConnected).
                    narrate?.Invoke($"Starting the session on {selector.InstanceId} without checking its agent first.");
                    return found[0];
                }
                return CheckOnline(found[0]);
            }
            if (found.Count == 0)
            {
                throw new BastionToolsException(ErrorIds.BastionTargetNotFound, ErrorCategory.ObjectNotFound,
                    $"No instance matches {selector}.", selector.ToString(),
                    "List candidates with Get-BastionInstance, and check the region (-Region).");
            }
            if (!await TryJoinAsync(api, found, selector, narrate, cancellationToken).ConfigureAwait(false))
            {
                narrate?.Invoke($"Starting the session on {found[0].InstanceId} without checking its agent first.");
                return found[0];
            }
            if (found.Count > 1) throw Ambiguous(selector, found);
            return CheckOnline(found[0]);
        }

        /// <summary>
        /// SSM's view of <paramref name="found"/>. False when it was denied and the selector is an instance id (narrated;
        /// the online check is skipped). For a Name tag or tags a denial is the error (several matches can only be told
        /// apart by their ping status).
        /// </summary>
        private static async Task<bool> TryJoinAsync(IAwsApi api, IReadOnlyList<InstanceRecord> found, TargetSelector selector, Action<string>? narrate, CancellationToken cancellationToken)
        {
            try
            {
                await api.JoinInstanceInformationAsync(found, cancellationToken).ConfigureAwait(false);
                return true;
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.AwsAccessDenied)
            {
                if (selector.InstanceId == null) throw LookupDenied(selector, ex);
                narrate?.Invoke($"AWS denied {IamActions.DescribeInstanceInformation}, which -Target does not need: the agent of {selector.InstanceId} is not checked first.");
                return false;
            }
        }

        private static InstanceRecord CheckOnline(InstanceRecord chosen)
        {
            if (!string.Equals(chosen.PingStatus, "Online", StringComparison.Ordinal))
            {
                throw new BastionToolsException(ErrorIds.BastionTargetOffline, ErrorCategory.ResourceUnavailable,
                    $"The bastion {chosen.InstanceId}{(chosen.Name == null ? "" : " (" + chosen.Name + ")")} is not online in Systems Manager (PingStatus: {chosen.PingStatus ?? "not a managed instance"}, state: {chosen.State ?? "unknown"}). No session was started.",
                    chosen.InstanceId, "Start the instance, or check its SSM agent, instance profile and network path to Systems Manager.");
            }
            return chosen;
        }

        /// <summary>
        /// More than one instance matches a Name tag or tags: an error, never a guess. Picking "the only one online" would
        /// hand the tunnel to anyone who can launch an SSM-managed instance with the same tags while the real bastion is
        /// stopped. The message lists every match (id, Name, state, agent status) so the user can name one.
        /// </summary>
        private static BastionToolsException Ambiguous(TargetSelector selector, IReadOnlyList<InstanceRecord> found) =>
            new(ErrorIds.BastionTargetAmbiguous, ErrorCategory.InvalidArgument,
                $"{found.Count.ToString(System.Globalization.CultureInfo.InvariantCulture)} instances match {selector}: " +
                string.Join("; ", found.Select(f => $"{f.InstanceId} ({f.Name ?? "no Name tag"}, {f.State ?? "state unknown"}, {f.PingStatus ?? "not a managed instance"})")) +
                ". No session was started: a bastion must be named unambiguously.",
                selector.ToString(),
                "Name one with -Target <instance id>, or add tags with -Tag until only one instance matches (Get-BastionInstance lists them).");

        /// <summary>-Name and -Tag need both look-ups: the error names the denied one, both, and the way around them.</summary>
        private static BastionToolsException LookupDenied(TargetSelector selector, BastionToolsException denial) =>
            new(ErrorIds.AwsAccessDenied, ErrorCategory.PermissionDenied,
                $"Finding the bastion by {(selector.Name != null ? "-Name" : "-Tag")} needs {IamActions.DescribeInstances} and {IamActions.DescribeInstanceInformation}, and {denial.Message}",
                selector.ToString(),
                $"Ask for {IamActions.DescribeInstances} and {IamActions.DescribeInstanceInformation} (Resource \"*\"), or name the bastion with -Target <instance id>, which needs only ssm:StartSession. {AwsErrors.PermissionsHelp}",
                denial.InnerException ?? denial);
    }
}
