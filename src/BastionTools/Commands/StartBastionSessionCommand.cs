using System;
using System.Collections;
using System.Management.Automation;
using System.Net;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;
using BastionTools.Ssm;

namespace BastionTools.Commands
{
    /// <summary>
    /// Start-BastionSession: a Session Manager port-forwarding session through a bastion, spoken natively (no
    /// session-manager-plugin). Returns a BastionSession at once; the tunnel keeps running in the background of the
    /// PowerShell session until Stop-BastionSession, Remove-Module or the end of the process. -Wait blocks until Ctrl-C.
    /// </summary>
    [Cmdlet(VerbsLifecycle.Start, "BastionSession", DefaultParameterSetName = ParameterSets.TargetShell, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low)]
    [OutputType(typeof(BastionSession))]
    public sealed class StartBastionSessionCommand : AwsServiceCmdlet
    {
        internal static class ParameterSets
        {
            public const string TargetRemoteHost = "TargetRemoteHost";
            public const string NameRemoteHost = "NameRemoteHost";
            public const string TagRemoteHost = "TagRemoteHost";
            public const string TargetPort = "TargetPort";
            public const string NamePort = "NamePort";
            public const string TagPort = "TagPort";
            public const string TargetShell = "TargetShell";
            public const string NameShell = "NameShell";
            public const string TagShell = "TagShell";
            public const string TargetDbInstance = "TargetDbInstance";
            public const string NameDbInstance = "NameDbInstance";
            public const string TagDbInstance = "TagDbInstance";
            public const string TargetDbCluster = "TargetDbCluster";
            public const string NameDbCluster = "NameDbCluster";
            public const string TagDbCluster = "TagDbCluster";

            /// <summary>The sets that forward to a database named by identifier (looked up).</summary>
            public static bool IsDatabase(string set) => set.EndsWith("DbInstance", StringComparison.Ordinal) || set.EndsWith("DbCluster", StringComparison.Ordinal);
        }

        /// <summary>The bastion's instance id.</summary>
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.TargetRemoteHost, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.TargetPort, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.TargetShell, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.TargetDbInstance, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, Position = 0, ParameterSetName = ParameterSets.TargetDbCluster, ValueFromPipelineByPropertyName = true)]
        [Alias("InstanceId")]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(BastionTargetCompleter))]
        public string Target { get; set; } = "";

        /// <summary>The bastion's Name tag.</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NamePort)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameShell)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameDbInstance)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameDbCluster)]
        [ValidateNotNullOrEmpty]
        public string Name { get; set; } = "";

        /// <summary>Tags that single out the bastion.</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagRemoteHost)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagPort)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagShell)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagDbInstance)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagDbCluster)]
        [ValidateNotNull]
        public Hashtable Tag { get; set; } = new();

        /// <summary>The destination the bastion connects to: the RDS endpoint name.</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TargetRemoteHost)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagRemoteHost)]
        [Alias("DbHost", "Endpoint")]
        [ValidateNotNullOrEmpty]
        public string RemoteHost { get; set; } = "";

        /// <summary>The destination port (default 5432; with an identifier, the database's port unless given).</summary>
        [Parameter(ParameterSetName = ParameterSets.TargetRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TagRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.NameDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TagDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.NameDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.TagDbCluster)]
        [Alias("DbPort")]
        [ValidateRange(1, 65535)]
        public int RemotePort { get; set; } = 5432;

        /// <summary>
        /// An RDS DB instance (or Aurora member instance) whose endpoint and port are looked up (rds:DescribeDBInstances);
        /// from the pipeline: a database from Get-RdsIamDatabase. Empty (a piped cluster has none) defers to -DbClusterIdentifier.
        /// </summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TargetDbInstance, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameDbInstance, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagDbInstance, ValueFromPipelineByPropertyName = true)]
        [AllowNull]
        [AllowEmptyString]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string? DbInstanceIdentifier { get; set; }

        /// <summary>
        /// An Aurora DB cluster whose endpoint (-ClusterEndpoint) and port are looked up (rds:DescribeDBClusters). With
        /// -DbInstanceIdentifier too (an Aurora member instance piped in), the instance is meant.
        /// </summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TargetDbCluster, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NameDbCluster, ValueFromPipelineByPropertyName = true)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagDbCluster, ValueFromPipelineByPropertyName = true)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbInstance, ValueFromPipelineByPropertyName = true)]
        [Parameter(ParameterSetName = ParameterSets.NameDbInstance, ValueFromPipelineByPropertyName = true)]
        [Parameter(ParameterSetName = ParameterSets.TagDbInstance, ValueFromPipelineByPropertyName = true)]
        [AllowNull]
        [AllowEmptyString]
        [ArgumentCompleter(typeof(RdsDatabaseCompleter))]
        public string? DbClusterIdentifier { get; set; }

        /// <summary>With -DbClusterIdentifier: Writer (default), Reader, or a custom endpoint's identifier.</summary>
        [Parameter(ParameterSetName = ParameterSets.TargetDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.NameDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.TagDbCluster)]
        [ValidateNotNullOrEmpty]
        [ArgumentCompleter(typeof(ClusterEndpointCompleter))]
        public string? ClusterEndpoint { get; set; }

        /// <summary>A port on the bastion itself (AWS-StartPortForwardingSession).</summary>
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TargetPort)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.NamePort)]
        [Parameter(Mandatory = true, ParameterSetName = ParameterSets.TagPort)]
        [ValidateRange(1, 65535)]
        public int PortNumber { get; set; }

        /// <summary>Run this command without a terminal (AWS-StartNonInteractiveCommand) and return its output lines.</summary>
        [Parameter(ParameterSetName = ParameterSets.TargetShell)]
        [Parameter(ParameterSetName = ParameterSets.NameShell)]
        [Parameter(ParameterSetName = ParameterSets.TagShell)]
        [ValidateNotNullOrEmpty]
        public string? Command { get; set; }

        /// <summary>
        /// The bastion's operating system, which decides how -Command is run: Linux (in sh) or Windows (in Windows
        /// PowerShell). By default it comes from Systems Manager (ssm:DescribeInstanceInformation) or EC2
        /// (ec2:DescribeInstances); when neither may be read, Linux is assumed.
        /// </summary>
        [Parameter(ParameterSetName = ParameterSets.TargetShell)]
        [Parameter(ParameterSetName = ParameterSets.NameShell)]
        [Parameter(ParameterSetName = ParameterSets.TagShell)]
        [ValidateSet("Linux", "Windows")]
        public string? Platform { get; set; }

        /// <summary>The local port to listen on; 0 (the default) picks a free one.</summary>
        [Parameter(ParameterSetName = ParameterSets.TargetRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TagRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TargetPort)]
        [Parameter(ParameterSetName = ParameterSets.NamePort)]
        [Parameter(ParameterSetName = ParameterSets.TagPort)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.NameDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TagDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.NameDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.TagDbCluster)]
        [ValidateRange(0, 65535)]
        public int LocalPort { get; set; }

        /// <summary>The local address to listen on (default 127.0.0.1: only this machine can connect).</summary>
        [Parameter(ParameterSetName = ParameterSets.TargetRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TagRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TargetPort)]
        [Parameter(ParameterSetName = ParameterSets.NamePort)]
        [Parameter(ParameterSetName = ParameterSets.TagPort)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.NameDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TagDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.NameDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.TagDbCluster)]
        [ValidateNotNull]
        public IPAddress ListenAddress { get; set; } = IPAddress.Loopback;

        /// <summary>The reason recorded with the session in Systems Manager.</summary>
        [Parameter]
        [ValidateNotNullOrEmpty]
        public string? Reason { get; set; }

        /// <summary>
        /// How long, in seconds, a lost connection (network outage, sleep, Wi-Fi change, the service's hourly close) is
        /// resumed for before the session is given up. Open connections wait meanwhile. Default 600; 0 gives up at once.
        /// </summary>
        [Parameter]
        [ValidateRange(0, 7 * 24 * 3600)]
        public int ReconnectTimeoutSec { get; set; } = 600;

        internal override int? ReconnectTimeoutSeconds => ReconnectTimeoutSec;

        /// <summary>
        /// Keep the tunnel open while idle by sending a no-op every 30 s of silence. This overrides the idle session
        /// timeout your administrator set in Session Manager (a security control): use it only where that is allowed.
        /// Without it, an idle tunnel ends at that timeout (State Closed, ClosedErrorId BastionSessionTimedOut).
        /// </summary>
        [Parameter(ParameterSetName = ParameterSets.TargetRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TagRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TargetPort)]
        [Parameter(ParameterSetName = ParameterSets.NamePort)]
        [Parameter(ParameterSetName = ParameterSets.TagPort)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.NameDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TagDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.NameDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.TagDbCluster)]
        public SwitchParameter KeepAlive { get; set; }

        internal override bool KeepAliveRequested => KeepAlive.IsPresent;

        /// <summary>Block until Ctrl-C, then stop the session.</summary>
        [Parameter(ParameterSetName = ParameterSets.TargetRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.NameRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TagRemoteHost)]
        [Parameter(ParameterSetName = ParameterSets.TargetPort)]
        [Parameter(ParameterSetName = ParameterSets.NamePort)]
        [Parameter(ParameterSetName = ParameterSets.TagPort)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.NameDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TagDbInstance)]
        [Parameter(ParameterSetName = ParameterSets.TargetDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.NameDbCluster)]
        [Parameter(ParameterSetName = ParameterSets.TagDbCluster)]
        public SwitchParameter Wait { get; set; }

        protected override void ProcessRecord()
        {
            var selector = new TargetSelector();
            if (ParameterSetName.StartsWith("Target", StringComparison.Ordinal)) selector.InstanceId = Target;
            else if (ParameterSetName.StartsWith("Name", StringComparison.Ordinal)) selector.Name = Name;
            else selector.Tags = TargetSelector.TagsFrom(Tag);
            if (ParameterSetName.EndsWith("Shell", StringComparison.Ordinal))
            {
                RunShell(selector);
                return;
            }
            var toDatabase = ParameterSets.IsDatabase(ParameterSetName);
            var toRemoteHost = toDatabase || ParameterSetName.EndsWith("RemoteHost", StringComparison.Ordinal);
            var remoteHost = RemoteHost;
            var remotePort = RemotePort;
            if (toDatabase && !ResolveDatabase(ref remoteHost, ref remotePort)) return;
            var remote = toRemoteHost ? remoteHost + ":" + remotePort : "port " + PortNumber + " of the bastion";

            if (!ShouldProcess(selector.ToString(), "Start a port-forwarding session to " + remote)) return;
            if (!Equals(ListenAddress, IPAddress.Loopback) && !Equals(ListenAddress, IPAddress.IPv6Loopback))
            {
                WriteWarningSafe($"Listening on {ListenAddress}: other machines that reach this address can use the tunnel.");
            }

            var session = StartPortForwarding(selector, new PortForwardingRequest
            {
                RemoteHost = toRemoteHost ? remoteHost : null,
                RemotePort = toRemoteHost ? remotePort : PortNumber,
                LocalPort = LocalPort,
                BindAddress = ListenAddress,
                Reason = Reason,
            }, "Start-BastionSession");
            if (session == null) return;
            WriteInformation(new HostInformationMessage
            {
                Message = $"Connect to {session.LocalEndpoint} for {session.Remote} (session {session.SessionId} via {session.Target}{(session.TargetName == null ? "" : " " + session.TargetName)}). Stop it with Stop-BastionSession.",
                NoNewLine = false,
            }, new[] { "PSHOST" });
            WriteObject(session);

            if (Wait)
            {
                WaitUntilStopped(session);
            }
        }

        /// <summary>
        /// The endpoint and port of the database -DbInstanceIdentifier / -DbClusterIdentifier name (or a database piped from
        /// Get-RdsIamDatabase), looked up as the database cmdlets do; -RemotePort, when given, wins. A database without IAM
        /// authentication is a warning, not an error: a tunnel to it still serves password logins. False: the error is written.
        /// </summary>
        private bool ResolveDatabase(ref string host, ref int port)
        {
            var choice = RdsTargetChoice.Check(false, DbInstanceIdentifier, DbClusterIdentifier, ClusterEndpoint);
            if (choice.Error != null)
            {
                WriteErrorSafe(choice.Error);
                return false;
            }
            var resolver = new RdsDatabaseResolver(GetRdsClient());
            if (!TryRun(ct => resolver.ResolveAsync(choice, ClusterEndpoint, ct, requireIam: false), out var resolved)) return false;
            host = resolved.Host;
            if (!MyInvocation.BoundParameters.ContainsKey(nameof(RemotePort))) port = resolved.Port;
            WriteVerboseSafe($"{resolved.Database.Kind} {resolved.Database.Identifier}: {host}:{port}.");
            if (!resolved.Database.IamAuthenticationEnabled)
            {
                var off = RdsDatabaseResolver.IamDisabled(resolved.Database);
                WriteWarningSafe($"IAM database authentication is off on the {(resolved.Database.Kind == "Cluster" ? "Aurora cluster" : "DB instance")} {resolved.Database.Identifier}: the tunnel serves password logins, but RDS refuses IAM tokens (New-RdsIamToken, Connect-IamPostgres) for it. {off.RecommendedAction}");
            }
            return true;
        }

        private void RunShell(TargetSelector selector)
        {
            var interactive = Command == null;
            if (!ShouldProcess(selector.ToString(), interactive ? "Start an interactive shell session" : "Run a command: " + Command)) return;
            if (interactive && (Console.IsInputRedirected || Console.IsOutputRedirected || !System.Environment.UserInteractive))
            {
                ThrowTerminatingError(new BastionToolsException(ErrorIds.ShellNeedsTerminal, ErrorCategory.InvalidOperation,
                    "An interactive shell needs a terminal, and this PowerShell has none (its input or output is redirected).",
                    selector.ToString(), "Pass -Command to run a command without a terminal, or -RemoteHost/-PortNumber for a tunnel.").ToErrorRecord());
            }
            var api = GetApi();
            if (!TryRun(ct => TargetResolver.ResolveAsync(api, selector, ct, NarrateLookup), out var instance)) return;
            Pump.Drain();
            WriteVerboseSafe($"Bastion: {instance.InstanceId}{(instance.Name == null ? "" : " (" + instance.Name + ")")}, agent {instance.AgentVersion ?? "not looked up"}.");

            IShellTerminal terminal;
            LineTerminal? lines = null;
            NonInteractiveCommand? wrapped = null;
            var platformAssumed = false;
            if (interactive)
            {
                terminal = new ConsoleTerminal();
            }
            else
            {
                var platform = NonInteractiveCommand.Resolve(Platform, instance, out var platformSource, out platformAssumed);
                WriteVerboseSafe($"Running the command in {(platform == CommandPlatform.Windows ? "Windows PowerShell" : "sh")} ({platformSource}).");
                wrapped = new NonInteractiveCommand(Command!, platform);
                void Emit(string line) => Pump.Post(() => WriteObject(line));
                lines = new LineTerminal(line => wrapped.ReadLine(line, Emit), line => Pump.Post(() => WriteError(new ErrorRecord(
                    new RemoteStandardErrorException(line), ErrorIds.RemoteStandardError, ErrorCategory.NotSpecified, instance.InstanceId))));
                terminal = lines;
            }
            var shell = new ShellSession(api, instance.InstanceId, wrapped?.Wrapped, Reason, NewChannelOptions(), terminal);
            shell.Events.Written += line => Pump.Post(() => WriteDebugSafe(line));
            // The agent's words for the user (HandshakeComplete CustomerMessage), shown as the official client prints them.
            shell.CustomerMessageReceived += text => Pump.Post(() => WriteCustomerMessage(text));
            if (!TryRun(async ct =>
                {
                    await shell.StartAsync(_ => { }, ct).ConfigureAwait(false);
                    return true;
                }, out _))
            {
                return;
            }
            DataChannelClosure? closure = null;
            try
            {
                if (interactive)
                {
                    closure = RunInteractive(shell);
                }
                else
                {
                    TryRun(ct => shell.WaitAsync(ct), out closure);
                    lines!.Flush();
                    wrapped!.Finish(line => Pump.Post(() => WriteObject(line)));
                    Pump.Drain();
                }
            }
            finally
            {
                shell.StopAsync(terminate: closure == null || !closure.ByRemote).GetAwaiter().GetResult();
            }
            if (shell.Encrypted) WriteVerboseSafe($"Session data was encrypted with AWS KMS ({shell.KmsKeyId}) as the account's Session Manager preferences ask.");
            if (closure?.Error is BastionToolsException known)
            {
                // Session encryption refused or broken, and other failures that know their ErrorId.
                WriteError(known.ToErrorRecord());
            }
            else if (closure?.Error != null)
            {
                var timedOut = closure.End == ChannelEnd.SessionExpired;
                WriteError(new BastionToolsException(timedOut ? ErrorIds.BastionSessionTimedOut : ErrorIds.BastionSessionFailed,
                    timedOut ? ErrorCategory.OperationTimeout : ErrorCategory.ConnectionError,
                    "The session failed: " + closure.Error.Message, shell.SessionId).ToErrorRecord());
            }
            if (interactive && !string.IsNullOrEmpty(closure?.Output)) Host.UI.WriteLine(closure!.Output!.Trim());
            var markedExitCode = wrapped?.MarkedExitCode;
            if (wrapped != null && markedExitCode == null && shell.ExitCode == null && closure?.Error == null)
            {
                var hint = platformAssumed
                    ? $"No exit status came back from {instance.InstanceId}, whose platform could not be looked up: if it runs Windows, pass -Platform Windows."
                    : $"No exit status came back from {instance.InstanceId}: the command's output was cut short.";
                if (platformAssumed) WriteWarningSafe(hint);
                else WriteVerboseSafe(hint);
            }
            // The wrapper's marker is the command's own status; an ExitCode payload (separate output streams) is the wrapper's.
            if ((markedExitCode ?? shell.ExitCode) is int code)
            {
                SessionState.PSVariable.Set(new PSVariable("global:LASTEXITCODE", code));
                if (code != 0)
                {
                    WriteError(new BastionToolsException(ErrorIds.RemoteCommandFailed, ErrorCategory.NotSpecified,
                        $"The command exited with code {code} on {instance.InstanceId}.", Command).ToErrorRecord());
                }
            }
        }

        private DataChannelClosure? RunInteractive(ShellSession shell)
        {
            var previous = Console.TreatControlCAsInput;
            Console.TreatControlCAsInput = true;
            try
            {
                var lastSizeCheck = DateTime.UtcNow;
                var completion = shell.Completion;
                var batch = new System.Collections.Generic.List<byte>();
                while (!completion.IsCompleted)
                {
                    batch.Clear();
                    // Keys wait in the console until the agent takes input (after the handshake of an encrypted session).
                    while (shell.AcceptsInput && Console.KeyAvailable && batch.Count < 4096) batch.AddRange(KeyMapper.Map(Console.ReadKey(intercept: true)));
                    if (batch.Count > 0) shell.SendInputAsync(batch.ToArray(), CancellationToken.None).GetAwaiter().GetResult();
                    if (DateTime.UtcNow - lastSizeCheck > TimeSpan.FromMilliseconds(250))
                    {
                        shell.SendSizeIfChangedAsync(CancellationToken.None).GetAwaiter().GetResult();
                        lastSizeCheck = DateTime.UtcNow;
                    }
                    completion.Wait(10);
                    Pump.Drain();
                }
                return shell.WaitAsync(CancellationToken.None).GetAwaiter().GetResult();
            }
            finally
            {
                Console.TreatControlCAsInput = previous;
            }
        }

        private void WaitUntilStopped(BastionSession session)
        {
            // While waiting, the session's events (reconnects, connections reset, the end) are narrated on Verbose.
            void Narrate(string line) => Pump.Post(() => WriteVerboseSafe(line));
            session.Engine.Events.Written += Narrate;
            try
            {
                Pump.Run(async ct =>
                {
                    var stopped = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                    using (ct.Register(() => stopped.TrySetResult(true)))
                    {
                        await Task.WhenAny(session.Engine.Completion, stopped.Task).ConfigureAwait(false);
                    }
                    return true;
                });
            }
            finally
            {
                session.Engine.Events.Written -= Narrate;
                if (!session.Engine.Completion.IsCompleted)
                {
                    session.Engine.StopAsync().GetAwaiter().GetResult();
                }
                SessionRegistry.Remove(session);
                try
                {
                    Pump.Drain();
                }
                catch (PipelineStoppedException)
                {
                    // Ctrl-C: nothing more is written.
                }
            }
            WriteSessionEnd(session);
        }

        /// <summary>A session that ended on its own (not stopped by the user) says why, with its ErrorId.</summary>
        private void WriteSessionEnd(BastionSession session)
        {
            var errorId = session.Engine.ClosedErrorId;
            if (errorId == null) return;
            var (category, action) = errorId switch
            {
                ErrorIds.BastionSessionTimedOut => (ErrorCategory.OperationTimeout,
                    "Session Manager's idle session timeout ended it. Start a new session; -KeepAlive keeps an idle tunnel open where your administrator allows it, and Connect-IamPostgres connections reopen their tunnel on their own."),
                ErrorIds.BastionSessionTerminated => (ErrorCategory.OperationStopped,
                    "The session was terminated (TerminateSession by an administrator, or the bastion's agent stopped or restarted). Start a new session."),
                ErrorIds.AwsAccessDenied => (ErrorCategory.PermissionDenied,
                    "Ask for ssm:ResumeSession on your own sessions (arn:aws:ssm:<region>:<account>:session/<user name>-*), then start a new session."),
                _ => (ErrorCategory.ConnectionError, "Check the network path to Systems Manager, then start a new session."),
            };
            WriteError(new BastionToolsException(errorId, category, session.Engine.ClosedReason ?? "The session ended.", session.SessionId, action).ToErrorRecord());
        }
    }
}
