using System;
using System.Management.Automation;
using BastionTools.Aws;

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
            if (!string.IsNullOrEmpty(EndpointUrl)) WriteDebugSafe("Endpoint: " + EndpointUrl);
            _api = new AwsApi(credentials, region.Name, EndpointUrl);
            return _api;
        }

        /// <summary>The clients are now owned by something that outlives the command (a running session).</summary>
        internal void KeepApiAlive() => _keepApi = true;

        protected override void StopProcessing() => Pump.Cancel();

        protected override void EndProcessing()
        {
            if (!_keepApi) _api?.Dispose();
            Pump.Dispose();
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
            result = default!;
            return false;
        }
    }
}
