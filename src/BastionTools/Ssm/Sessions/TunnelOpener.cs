using System;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Opens a port-forwarding session again and again for one destination: the bastion is found anew each time (a
    /// replaced bastion with the same name or tags is found), and the listener takes the port of the session it replaces
    /// when it is still free. Used by connections that reopen their tunnel after it ended.
    /// </summary>
    internal sealed class TunnelOpener
    {
        private readonly IAwsApi _api;
        private readonly TargetSelector _selector;
        private readonly PortForwardingRequest _template;
        private readonly DataChannelOptions _options;

        public TunnelOpener(IAwsApi api, TargetSelector selector, PortForwardingRequest template, DataChannelOptions options)
        {
            _api = api;
            _selector = selector;
            _template = template;
            _options = options;
        }

        /// <summary>How long the agent has for the handshake.</summary>
        public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(30);

        /// <summary>
        /// Finds the bastion, starts a session listening on <paramref name="localPort"/> (another free port if that one
        /// is taken; 0 for any) and returns it once the agent is ready. The new session's events go to <paramref name="log"/>
        /// while it starts.
        /// </summary>
        /// <exception cref="BastionToolsException">The bastion can't be found or is offline, or the session can't start.</exception>
        public async Task<BastionSession> OpenAsync(int localPort, Action<string> log, CancellationToken cancellationToken)
        {
            var instance = await TargetResolver.ResolveAsync(_api, _selector, cancellationToken).ConfigureAwait(false);
            try
            {
                return await StartAsync(instance, localPort, log, cancellationToken).ConfigureAwait(false);
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.LocalPortUnavailable && localPort != 0)
            {
                log($"127.0.0.1:{localPort} is taken now: the new session listens on another port.");
                return await StartAsync(instance, 0, log, cancellationToken).ConfigureAwait(false);
            }
        }

        private async Task<BastionSession> StartAsync(InstanceRecord instance, int localPort, Action<string> log, CancellationToken cancellationToken)
        {
            var request = new PortForwardingRequest
            {
                Target = instance.InstanceId,
                RemoteHost = _template.RemoteHost,
                RemotePort = _template.RemotePort,
                LocalPort = localPort,
                BindAddress = _template.BindAddress,
                Reason = _template.Reason,
            };
            var engine = new PortForwardingSession(_api, request, _options);
            engine.Events.Written += log;
            try
            {
                await engine.StartAsync(_ => { }, HandshakeTimeout, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                engine.Events.Written -= log;
            }
            return new BastionSession(engine, BastionInstance.From(instance));
        }
    }
}
