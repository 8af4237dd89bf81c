using System;
using System.Linq;
using System.Management.Automation;
using BastionTools.Ssm;

namespace BastionTools.Commands
{
    /// <summary>Get-BastionSession: the sessions this PowerShell session opened, live.</summary>
    [Cmdlet(VerbsCommon.Get, "BastionSession")]
    [OutputType(typeof(BastionSession))]
    public sealed class GetBastionSessionCommand : PSCmdlet
    {
        [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
        [ValidateNotNullOrEmpty]
        [SupportsWildcards]
        [ArgumentCompleter(typeof(BastionSessionCompleter))]
        public string[]? SessionId { get; set; }

        protected override void ProcessRecord()
        {
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
