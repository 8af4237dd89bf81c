using System;
using System.Linq;
using System.Management.Automation;
using BastionTools.Aws;
using BastionTools.Ssm;

namespace BastionTools.Commands
{
    /// <summary>
    /// Get-BastionSession: the sessions this PowerShell session opened, live; with -History, the sessions Systems Manager
    /// recorded (ssm:DescribeSessions, state History: the ended sessions of the last 30 days, or -Active ones), whoever
    /// started them: the audit trail, filtered by target, owner, status and start time.
    /// </summary>
    [Cmdlet(VerbsCommon.Get, "BastionSession", DefaultParameterSetName = ParameterSets.Local)]
    [OutputType(typeof(BastionSession), ParameterSetName = new[] { ParameterSets.Local })]
    [OutputType(typeof(BastionSessionHistory), ParameterSetName = new[] { ParameterSets.History })]
    public sealed class GetBastionSessionCommand : AwsServiceCmdlet
    {
        internal static class ParameterSets
        {
            public const string Local = "Local";
            public const string History = "History";
        }

        [Parameter(Position = 0, ParameterSetName = ParameterSets.Local, ValueFromPipelineByPropertyName = true)]
        [Parameter(ParameterSetName = ParameterSets.History)]
        [ValidateNotNullOrEmpty]
        [SupportsWildcards]
        [ArgumentCompleter(typeof(BastionSessionCompleter))]
        public string[]? SessionId { get; set; }

        /// <summary>The sessions Systems Manager recorded (ssm:DescribeSessions) rather than this PowerShell session's.</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.History)]
        public SwitchParameter History { get; set; }

        /// <summary>With -History: the sessions still active (Connected, Connecting, Disconnected, Terminating) instead of the ended ones.</summary>
        [Parameter(ParameterSetName = ParameterSets.History)]
        public SwitchParameter Active { get; set; }

        /// <summary>Only sessions to this instance.</summary>
        [Parameter(ParameterSetName = ParameterSets.History, ValueFromPipelineByPropertyName = true)]
        [Alias("InstanceId")]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(BastionTargetCompleter))]
        public string? Target { get; set; }

        /// <summary>Only sessions started by this identity (its ARN, as the Owner property shows it).</summary>
        [Parameter(ParameterSetName = ParameterSets.History)]
        [ValidateNotNullOrEmpty]
        public string? Owner { get; set; }

        /// <summary>Only sessions with this status.</summary>
        [Parameter(ParameterSetName = ParameterSets.History)]
        [ValidateSet("Connected", "Connecting", "Disconnected", "Terminated", "Terminating", "Failed")]
        public string? Status { get; set; }

        /// <summary>Only sessions started at or after this time.</summary>
        [Parameter(ParameterSetName = ParameterSets.History)]
        public DateTime? After { get; set; }

        /// <summary>Only sessions started before this time.</summary>
        [Parameter(ParameterSetName = ParameterSets.History)]
        public DateTime? Before { get; set; }

        /// <summary>At most this many sessions (the newest first, as Systems Manager lists them).</summary>
        [Parameter(ParameterSetName = ParameterSets.History)]
        [ValidateRange(1, int.MaxValue)]
        public int? First { get; set; }

        protected override void ProcessRecord()
        {
            if (ParameterSetName == ParameterSets.History)
            {
                WriteHistory();
                return;
            }
            var all = SessionRegistry.All();
            if (SessionId == null)
            {
                WriteObject(all, enumerateCollection: true);
                return;
            }
            foreach (var id in SessionId)
            {
                var pattern = new WildcardPattern(id, WildcardOptions.IgnoreCase);
                var matches = all.Where(s => pattern.IsMatch(s.SessionId)).ToList();
                if (matches.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(id))
                {
                    WriteError(new BastionToolsException(ErrorIds.BastionSessionNotFound, ErrorCategory.ObjectNotFound,
                        $"No session '{id}' is open in this PowerShell session.", id, "List sessions with Get-BastionSession.").ToErrorRecord());
                }
                WriteObject(matches, enumerateCollection: true);
            }
        }

        private void WriteHistory()
        {
            if (After is DateTime a && Before is DateTime b && a >= b)
            {
                WriteError(new BastionToolsException(ErrorIds.SessionHistoryFilterInvalid, ErrorCategory.InvalidArgument,
                    $"-After ({a:o}) must be earlier than -Before ({b:o}).", After).ToErrorRecord());
                return;
            }
            var api = GetApi();
            // The service takes one SessionId per request; wildcards are matched here, on the listed sessions.
            var ids = SessionId ?? new[] { "*" };
            foreach (var id in ids)
            {
                var exact = !WildcardPattern.ContainsWildcardCharacters(id);
                var query = new SessionQuery
                {
                    History = !Active,
                    Target = Target,
                    Owner = Owner,
                    Status = Status,
                    After = After,
                    Before = Before,
                    SessionId = exact ? id : null,
                    Limit = exact || id == "*" ? First : null,
                };
                WriteVerboseSafe($"DescribeSessions, state {(Active ? "Active" : "History")}" + string.Concat(query.Filters().Select(f => $", {f.Key} {f.Value}")) + (First is int n ? $", at most {n}" : "") + ".");
                if (!TryRun(ct => api.DescribeSessionsAsync(query, ct), out var found)) return;
                var pattern = new WildcardPattern(id, WildcardOptions.IgnoreCase);
                var matches = found.Where(r => pattern.IsMatch(r.SessionId)).Select(BastionSessionHistory.From);
                if (First is int first) matches = matches.Take(first);
                var list = matches.ToList();
                if (list.Count == 0 && exact)
                {
                    WriteError(new BastionToolsException(ErrorIds.BastionSessionNotFound, ErrorCategory.ObjectNotFound,
                        $"Systems Manager lists no {(Active ? "active" : "ended")} session '{id}' that matches the filters.", id,
                        Active ? "Ended sessions are listed without -Active." : "Active sessions are listed with -Active; the history keeps 30 days.").ToErrorRecord());
                }
                WriteObject(list, enumerateCollection: true);
            }
        }
    }

    /// <summary>Stop-BastionSession: closes the listener and its connections, calls TerminateSession and ends the data channel.</summary>
    [Cmdlet(VerbsLifecycle.Stop, "BastionSession", DefaultParameterSetName = "Session", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
    [OutputType(typeof(BastionSession))]
    public sealed class StopBastionSessionCommand : PSCmdlet
    {
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = "Session", ValueFromPipeline = true)]
        [ValidateNotNull]
        public BastionSession[] Session { get; set; } = Array.Empty<BastionSession>();

        [Parameter(Mandatory = true, ParameterSetName = "Id", ValueFromPipelineByPropertyName = true)]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(BastionSessionCompleter))]
        public string[] SessionId { get; set; } = Array.Empty<string>();

        [Parameter(Mandatory = true, ParameterSetName = "All")]
        public SwitchParameter All { get; set; }

        /// <summary>Write the stopped sessions to the pipeline.</summary>
        [Parameter]
        public SwitchParameter PassThru { get; set; }

        protected override void ProcessRecord()
        {
            var targets = ParameterSetName switch
            {
                "Session" => Session.ToList(),
                "All" => SessionRegistry.All().ToList(),
                _ => SessionId.Select(id =>
                {
                    var s = SessionRegistry.Find(id);
                    if (s == null)
                    {
                        WriteError(new BastionToolsException(ErrorIds.BastionSessionNotFound, ErrorCategory.ObjectNotFound,
                            $"No session '{id}' is open in this PowerShell session.", id, "List sessions with Get-BastionSession.").ToErrorRecord());
                    }
                    return s;
                }).Where(s => s != null).Select(s => s!).ToList(),
            };
            foreach (var s in targets)
            {
                if (!ShouldProcess($"{s.SessionId} ({s.LocalEndpoint} -> {s.Remote})", "Stop the session")) continue;
                WriteVerbose($"Stopping session {s.SessionId}: closing {s.LocalEndpoint} and {s.ActiveConnections} connection(s), terminating the session.");
                s.Engine.StopAsync().GetAwaiter().GetResult();
                SessionRegistry.Remove(s);
                if (s.Engine.TerminateFailure is { } failure)
                {
                    // The listener and the data channel are closed; Systems Manager keeps the session until its idle timeout.
                    var known = failure as BastionToolsException;
                    WriteError(new BastionToolsException(known?.ErrorId ?? ErrorIds.AwsRequestFailed, known?.Category ?? ErrorCategory.NotSpecified,
                        $"The tunnel {s.LocalEndpoint} is closed, but TerminateSession failed, so Systems Manager keeps session {s.SessionId} until its idle timeout: {failure.Message}",
                        s.SessionId, known?.RecommendedAction, failure).ToErrorRecord());
                }
                if (PassThru) WriteObject(s);
            }
        }
    }
}
