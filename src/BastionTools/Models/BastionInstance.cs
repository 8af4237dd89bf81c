using System;
using System.Collections;

namespace BastionTools
{
    /// <summary>An EC2 instance usable as a bastion: EC2's view joined with Systems Manager's (Get-BastionInstance).</summary>
    public sealed class BastionInstance
    {
        public string InstanceId { get; internal set; } = "";
        public string? Name { get; internal set; }
        public string? State { get; internal set; }

        /// <summary>Systems Manager's view of the agent: Online, ConnectionLost, Inactive, or empty when not managed.</summary>
        public string? PingStatus { get; internal set; }

        public string? AgentVersion { get; internal set; }
        public string? PlatformType { get; internal set; }
        public string? PlatformName { get; internal set; }
        public string? PrivateIpAddress { get; internal set; }
        public DateTime? LastPingTime { get; internal set; }
        public Hashtable Tags { get; internal set; } = new(StringComparer.Ordinal);

        public bool IsOnline => string.Equals(PingStatus, "Online", StringComparison.Ordinal);

        public override string ToString() => Name == null ? InstanceId : InstanceId + " (" + Name + ")";

        internal static BastionInstance From(Aws.InstanceRecord r)
        {
            var tags = new Hashtable(StringComparer.Ordinal);
            foreach (var t in r.Tags) tags[t.Key] = t.Value;
            return new BastionInstance
            {
                InstanceId = r.InstanceId,
                Name = r.Name,
                State = r.State,
                PingStatus = r.PingStatus,
                AgentVersion = r.AgentVersion,
                PlatformType = r.PlatformType,
                PlatformName = r.PlatformName ?? r.PlatformDetails,
                PrivateIpAddress = r.PrivateIpAddress,
                LastPingTime = r.LastPingDateTime,
                Tags = tags,
            };
        }
    }
}
