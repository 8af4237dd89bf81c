using System;

namespace BastionTools
{
    /// <summary>
    /// A Session Manager session as Systems Manager recorded it (Get-BastionSession -History, from ssm:DescribeSessions):
    /// who started which session to which instance, with which document and reason, when, and how it ended.
    /// </summary>
    public sealed class BastionSessionHistory
    {
        public string SessionId { get; internal set; } = "";

        /// <summary>The instance the session connected to.</summary>
        public string? Target { get; internal set; }

        /// <summary>The ARN of the identity that started the session.</summary>
        public string? Owner { get; internal set; }

        public string? DocumentName { get; internal set; }

        /// <summary>The reason given when the session was started (Start-BastionSession -Reason), if any.</summary>
        public string? Reason { get; internal set; }

        /// <summary>Connected, Connecting, Disconnected, Terminated, Terminating or Failed.</summary>
        public string? Status { get; internal set; }

        /// <summary>When the session started (local time).</summary>
        public DateTime? StartTime { get; internal set; }

        /// <summary>When the session ended (local time); null while it is active.</summary>
        public DateTime? EndTime { get; internal set; }

        /// <summary>EndTime - StartTime; null while the session is active.</summary>
        public TimeSpan? Duration => StartTime is DateTime start && EndTime is DateTime end ? end - start : null;

        public override string ToString() => SessionId;

        internal static BastionSessionHistory From(Aws.SessionRecord r) => new()
        {
            SessionId = r.SessionId,
            Target = r.Target,
            Owner = r.Owner,
            DocumentName = r.DocumentName,
            Reason = r.Reason,
            Status = r.Status,
            StartTime = r.StartDate?.ToLocalTime(),
            EndTime = r.EndDate?.ToLocalTime(),
        };
    }
}
