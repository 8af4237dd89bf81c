using System;
using System.Collections.Generic;
using System.Linq;
using Amazon.CDK;
using Constructs;

namespace BastionTools.Infra
{
    /// <summary>
    /// cdk-nag acknowledgements, written where cdk-nag itself reads them: the resource's CloudFormation Metadata,
    /// <c>{"cdk_nag": {"rules_to_suppress": [{"id", "reason", "applies_to"?}]}}</c>. One call per finding, on the
    /// resource it concerns; a reason is mandatory (infra/nag/check.mjs rejects short ones too).
    /// </summary>
    public static class NagAcknowledgements
    {
        public const int MinimumReasonLength = 40;

        private sealed class Entry
        {
            public Entry(string id, string reason, string[] appliesTo)
            {
                Id = id;
                Reason = reason;
                AppliesTo = appliesTo;
            }

            public string Id { get; }
            public string Reason { get; }
            public string[] AppliesTo { get; }
        }

        private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<CfnResource, List<Entry>> Entries = new();

        /// <summary>
        /// Acknowledges <paramref name="ruleId"/> on the CloudFormation resource behind <paramref name="scope"/> (itself,
        /// or its default child). <paramref name="appliesTo"/> narrows it to those finding ids (IAM4/IAM5).
        /// </summary>
        public static void Acknowledge(IConstruct scope, string ruleId, string reason, params string[] appliesTo)
        {
            if (string.IsNullOrWhiteSpace(ruleId)) throw new ArgumentException("A rule id is required.", nameof(ruleId));
            if (reason == null || reason.Trim().Length < MinimumReasonLength)
                throw new ArgumentException($"The acknowledgement of {ruleId} needs a reason of at least {MinimumReasonLength} characters.", nameof(reason));
            var resource = scope as CfnResource ?? scope.Node.DefaultChild as CfnResource
                ?? throw new ArgumentException($"{scope.Node.Path} is not (and has no default child that is) a CloudFormation resource.", nameof(scope));

            var list = Entries.GetValue(resource, _ => new List<Entry>());
            list.Add(new Entry(ruleId, reason.Trim(), appliesTo));
            resource.AddMetadata("cdk_nag", new Dictionary<string, object>
            {
                ["rules_to_suppress"] = list.Select(ToJson).ToArray(),
            });
        }

        private static object ToJson(Entry e)
        {
            var d = new Dictionary<string, object> { ["id"] = e.Id, ["reason"] = e.Reason };
            if (e.AppliesTo.Length > 0) d["applies_to"] = e.AppliesTo.Cast<object>().ToArray();
            return d;
        }
    }
}
