using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using BastionTools.Aws;

namespace BastionTools.Commands
{
    /// <summary>
    /// Get-BastionInstance: EC2 instances (by id, Name tag or tags) joined with Systems Manager's view of their agent
    /// (PingStatus, agent version, platform). Without a filter it lists the instances tagged as BastionTools bastions.
    /// </summary>
    [Cmdlet(VerbsCommon.Get, "BastionInstance", DefaultParameterSetName = ParameterSets.Default)]
    [OutputType(typeof(BastionInstance))]
    public sealed class GetBastionInstanceCommand : AwsServiceCmdlet
    {
        /// <summary>The tag the CDK app puts on the bastion, found by default.</summary>
        public const string DefaultTagKey = "bastiontools:role";
        public const string DefaultTagValue = "bastion";

        internal static class ParameterSets
        {
            public const string Default = "Default";
            public const string ById = "ById";
            public const string ByName = "ByName";
            public const string ByTag = "ByTag";
            public const string All = "All";
        }

        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.ById, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
        [Alias("Target", "InstanceIds")]
        [ValidateNotNullOrEmpty]
        public string[] InstanceId { get; set; } = Array.Empty<string>();

        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.ByName)]
        [ValidateNotNullOrEmpty]
        public string Name { get; set; } = "";

        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.ByTag)]
        [ValidateNotNull]
        public Hashtable Tag { get; set; } = new();

        /// <summary>Every instance, tagged or not.</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.All)]
        public SwitchParameter All { get; set; }

        protected override void ProcessRecord()
        {
            var api = GetApi();
            IReadOnlyCollection<string>? ids = null;
            string? name = null;
            Dictionary<string, string>? tags = null;
            switch (ParameterSetName)
            {
                case ParameterSets.ById:
                    ids = InstanceId;
                    break;
                case ParameterSets.ByName:
                    name = Name;
                    break;
                case ParameterSets.ByTag:
                    tags = TargetSelector.TagsFrom(Tag);
                    break;
                case ParameterSets.Default:
                    tags = new Dictionary<string, string> { [DefaultTagKey] = DefaultTagValue };
                    WriteVerboseSafe($"Listing instances tagged {DefaultTagKey}={DefaultTagValue} (use -All for every instance).");
                    break;
            }
            if (!TryRun(ct => api.FindInstancesAsync(ids, name, tags, ct), out var found)) return;
            foreach (var r in found.OrderBy(r => r.Name, StringComparer.OrdinalIgnoreCase).ThenBy(r => r.InstanceId, StringComparer.Ordinal))
            {
                WriteObject(BastionInstance.From(r));
            }
        }
    }
}
