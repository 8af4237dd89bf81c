using System;
using System.Management.Automation;
using BastionTools.Aws;
using BastionTools.Ssm;

namespace BastionTools.Commands
{
    /// <summary>An AWS-facing cmdlet that calls services: adds -EndpointUrl and builds the service clients.</summary>
    public abstract class AwsServiceCmdlet : AwsCmdlet
    {
        private AwsApi? _api;
        private bool _keepApi;

        /// <summary>The endpoint to send the module's service calls to (VPC endpoints, or a local double).</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string? EndpointUrl { get; set; }

        internal CmdletPump Pump { get; } = new();

        /// <summary>Set by <see cref="GetApi"/>: the credentials and region the service calls use.</summary>
        internal ResolvedCredentials? ApiCredentials { get; private set; }

        internal string? ApiRegion { get; private set; }

        /// <summary>Credentials, region and clients, resolved once per command (a failure ends the command).</summary>
        internal IAwsApi GetApi()
        {
            if (_api != null) return _api;
            if (!string.IsNullOrEmpty(EndpointUrl) && !Uri.TryCreate(EndpointUrl, UriKind.Absolute, out _))
            {
                ThrowTerminatingError(new BastionToolsException(ErrorIds.AwsEndpointUrlInvalid, ErrorCategory.InvalidArgument,
                    $"-EndpointUrl '{EndpointUrl}' is not an absolute URL.", EndpointUrl).ToErrorRecord());
            }
            var credentials = ResolveCredentials();
            var region = ResolveRegion(credentials);
            ApiCredentials = credentials;
            ApiRegion = region.Name;
            if (!string.IsNullOrEmpty(EndpointUrl)) WriteDebugSafe("Endpoint: " + EndpointUrl);
            _api = new AwsApi(credentials, region.Name, EndpointUrl);
            return _api;
        }

        private RdsApiClient? _rds;

        /// <summary>The RDS Query client (DescribeDBInstances/DescribeDBClusters), with the command's credentials, region and -EndpointUrl.</summary>
        internal RdsApiClient GetRdsClient()
        {
            if (_rds != null) return _rds;
            GetApi();
            var credentials = ApiCredentials!;
            var redactor = Redactor;
            _rds = new RdsApiClient(() =>
            {
                var keys = credentials.GetKeys();
                redactor.Add(keys.SecretAccessKey);
                redactor.Add(keys.SessionToken);
                return keys;
            }, ApiRegion!, EndpointUrl);
            return _rds;
        }

        /// <summary>
        /// How long a session's lost connection is resumed for (tunnel-making cmdlets expose it as -ReconnectTimeoutSec);
        /// null keeps the default of <see cref="DataChannelOptions.ReconnectTimeout"/>.
        /// </summary>
        internal virtual int? ReconnectTimeoutSeconds => null;

        /// <summary>
        /// -KeepAlive on the tunnel-making cmdlets: an idle tunnel sends a smux NOP every
        /// <see cref="DataChannelOptions.RequestedKeepAliveInterval"/>, overriding the administrator's idle session timeout.
        /// </summary>
        internal virtual bool KeepAliveRequested => false;

        /// <summary>The data channel options of a session this command opens.</summary>
        internal DataChannelOptions NewChannelOptions()
        {
            var options = new DataChannelOptions();
            if (ReconnectTimeoutSeconds is int seconds) options.ReconnectTimeout = TimeSpan.FromSeconds(seconds);
            if (KeepAliveRequested) options.IdleKeepAlive = DataChannelOptions.RequestedKeepAliveInterval;
            return options;
        }

        /// <summary>The clients are now owned by something that outlives the command (a running session).</summary>
        internal void KeepApiAlive() => _keepApi = true;

        protected override void StopProcessing() => Pump.Cancel();

        protected override void EndProcessing()
        {
            if (!_keepApi) _api?.Dispose();
            _rds?.Dispose();
            Pump.Dispose();
        }

        /// <summary>
        /// Finds the bastion, starts a port-forwarding session (with progress and narration) and registers it, or writes
        /// the error and returns null. <paramref name="request"/>'s Target is filled in from the resolved instance.
        /// </summary>
        internal BastionSession? StartPortForwarding(TargetSelector selector, PortForwardingRequest request, string activityName)
        {
            var api = GetApi();
            const int activity = 1;
            void Progress(string status, int percent) => Pump.Post(() => WriteProgress(new ProgressRecord(activity, activityName, status) { PercentComplete = percent }));
            void Complete(string status) => Pump.Post(() => WriteProgress(new ProgressRecord(activity, activityName, status) { RecordType = ProgressRecordType.Completed }));

            Progress("Finding the bastion", 5);
            if (!TryRun(ct => TargetResolver.ResolveAsync(api, selector, ct, NarrateLookup), out var instance))
            {
                Complete("Failed");
                Pump.Drain();
                return null;
            }
            Pump.Drain();
            WriteVerboseSafe($"Bastion: {instance.InstanceId}{(instance.Name == null ? "" : " (" + instance.Name + ")")}, agent {instance.AgentVersion ?? "not looked up"}, {instance.PingStatus ?? "status not looked up"}.");
            request.Target = instance.InstanceId;

            var engine = new PortForwardingSession(api, request, NewChannelOptions());
            void Narrate(string line) => Pump.Post(() => WriteVerboseSafe(line));
            engine.Events.Written += Narrate;
            void Stage(SessionStage stage)
            {
                switch (stage)
                {
                    case SessionStage.Listener: Progress("Opening the local listener", 10); break;
                    case SessionStage.StartSession: Progress("StartSession", 25); break;
                    case SessionStage.WebSocket: Progress("Opening the data channel (WebSocket)", 50); break;
                    case SessionStage.Handshake: Progress("Handshake with the agent", 75); break;
                    case SessionStage.Ready: Progress("Ready", 100); break;
                }
            }

            var started = TryRun(async ct =>
            {
                await engine.StartAsync(Stage, TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
                return true;
            }, out _);
            engine.Events.Written -= Narrate;
            Complete(started ? "Ready" : "Failed");
            Pump.Drain();
            if (!started) return null;

            if (engine.CustomerMessage is { } message) WriteCustomerMessage(message);
            if (KeepAliveRequested && engine.Mode == PortForwardingMode.Basic)
            {
                WriteWarningSafe($"-KeepAlive has no effect: this session forwards in basic mode (agent {engine.AgentVersion}: up to 3.0.196.0, or a session document whose type is not LocalPortForwarding), which has no no-op message; the idle session timeout applies.");
            }

            // The session outlives this command: keep the AWS clients for ResumeSession/TerminateSession.
            KeepApiAlive();
            var session = new BastionSession(engine, BastionInstance.From(instance));
            SessionRegistry.Add(session);
            return session;
        }

        /// <summary>
        /// The agent's HandshakeComplete CustomerMessage ("This session is encrypted using AWS KMS.", …), shown on the host
        /// as the official client prints it to the terminal: the Information stream, tagged PSHOST and
        /// BastionTools.CustomerMessage. Known secret shapes were masked when it was read.
        /// </summary>
        internal void WriteCustomerMessage(string text) =>
            WriteInformation(new HostInformationMessage { Message = text, NoNewLine = false }, new[] { "PSHOST", "BastionTools.CustomerMessage" });

        /// <summary>What the target look-up skipped (a denied describe call with -Target), on Verbose.</summary>
        internal void NarrateLookup(string line) => Pump.Post(() => WriteVerboseSafe(line));

        /// <summary>
        /// After stopping a session this command (or an earlier one) started: a TerminateSession that failed (denied, for
        /// one) leaves the session open in Systems Manager until its idle timeout. The tunnel itself is closed either way.
        /// </summary>
        internal void WarnIfNotTerminated(BastionSession session)
        {
            var failure = session.Engine.TerminateFailure;
            if (failure == null) return;
            WriteWarningSafe($"The tunnel is closed, but TerminateSession failed, so Systems Manager keeps session {session.SessionId} until its idle timeout: {failure.Message}");
        }

        /// <summary>Runs engine work through the pump, turning engine failures into this cmdlet's errors.</summary>
        internal bool TryRun<T>(Func<System.Threading.CancellationToken, System.Threading.Tasks.Task<T>> work, out T result, bool terminating = false)
        {
            try
            {
                result = Pump.Run(work);
                return true;
            }
            catch (BastionToolsException ex)
            {
                if (terminating) ThrowTerminatingError(ex.ToErrorRecord());
                WriteError(ex.ToErrorRecord());
            }
            catch (OperationCanceledException) when (Pump.Token.IsCancellationRequested)
            {
                // Ctrl-C: PowerShell stops the pipeline.
            }
            catch (Exception ex) when (!(ex is OperationCanceledException) && !(ex is RuntimeException))
            {
                // Anything the engine did not turn into a BastionToolsException (an SDK, Npgsql or socket exception)
                // would reach the user raw, message and inner exceptions unredacted: end the command with a redacted copy.
                ThrowTerminatingError(new BastionToolsException(ErrorIds.UnexpectedError, ErrorCategory.NotSpecified,
                    "The operation failed: " + ex.Message, null, null, ex).ToErrorRecord());
            }
            result = default!;
            return false;
        }
    }
}
