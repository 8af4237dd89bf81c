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

    /// <summary>Finds the one bastion a selector names, and checks that its agent is online before any session is started.</summary>
    internal static class TargetResolver
    {
        public static async Task<InstanceRecord> ResolveAsync(IAwsApi api, TargetSelector selector, CancellationToken cancellationToken)
        {
            var ids = selector.InstanceId != null ? new[] { selector.InstanceId } : null;
            IReadOnlyList<InstanceRecord> found;
            try
            {
                found = await api.FindInstancesAsync(ids, selector.Name, selector.Tags, cancellationToken).ConfigureAwait(false);
            }
            catch (BastionToolsException ex) when (ex.InnerException is Amazon.Runtime.AmazonServiceException sx && (sx.ErrorCode?.StartsWith("InvalidInstanceID", StringComparison.Ordinal) ?? false))
            {
                found = Array.Empty<InstanceRecord>();
            }
            if (found.Count == 0)
            {
                throw new BastionToolsException(ErrorIds.BastionTargetNotFound, ErrorCategory.ObjectNotFound,
                    $"No instance matches {selector}.", selector.ToString(),
                    "List candidates with Get-BastionInstance, and check the region (-Region).");
            }
            var online = found.Where(f => string.Equals(f.PingStatus, "Online", StringComparison.Ordinal)).ToList();
            if (found.Count > 1 && online.Count != 1)
            {
                throw new BastionToolsException(ErrorIds.BastionTargetAmbiguous, ErrorCategory.InvalidArgument,
                    $"{found.Count} instances match {selector} ({string.Join(", ", found.Select(f => f.InstanceId + " " + (f.PingStatus ?? "unmanaged")))}), and {(online.Count == 0 ? "none" : online.Count.ToString(System.Globalization.CultureInfo.InvariantCulture))} of them is online.",
                    selector.ToString(), "Name one with -Target <instance id>.");
            }
            var chosen = found.Count == 1 ? found[0] : online[0];
            if (!string.Equals(chosen.PingStatus, "Online", StringComparison.Ordinal))
            {
                throw new BastionToolsException(ErrorIds.BastionTargetOffline, ErrorCategory.ResourceUnavailable,
                    $"The bastion {chosen.InstanceId}{(chosen.Name == null ? "" : " (" + chosen.Name + ")")} is not online in Systems Manager (PingStatus: {chosen.PingStatus ?? "not a managed instance"}, state: {chosen.State ?? "unknown"}). No session was started.",
                    chosen.InstanceId, "Start the instance, or check its SSM agent, instance profile and network path to Systems Manager.");
            }
            return chosen;
        }
    }
}
