using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;

namespace BastionTools.Ssm
{
    /// <summary>Where a shell session's output goes, and where its input comes from.</summary>
    internal interface IShellTerminal
    {
        /// <summary>Terminal output from the remote shell (PayloadType 1).</summary>
        void Output(byte[] data);

        /// <summary>Standard error of a non-interactive command (PayloadType 11).</summary>
        void Error(byte[] data);

        /// <summary>The current size, or null when there is no terminal.</summary>
        (int Cols, int Rows)? Size { get; }
    }

    /// <summary>
    /// A shell session (interactive, on a terminal) or a non-interactive command (AWS-StartNonInteractiveCommand):
    /// keystrokes go out as input_stream_data PayloadType 1, the terminal size as PayloadType 3 at start and on
    /// change, output comes back as PayloadType 1 (and 11 for stderr, 12 for the exit code), and the session ends
    /// with channel_closed, whose Output is shown.
    /// </summary>
    internal sealed class ShellSession : IDisposable
    {
        public const string NonInteractiveDocument = "AWS-StartNonInteractiveCommand";

        private readonly IAwsApi _api;
        private readonly string _target;
        private readonly string? _command;
        private readonly string? _reason;
        private readonly DataChannelOptions _options;
        private readonly IShellTerminal _terminal;
        private readonly TaskCompletionSource<bool> _inputReady = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private DataChannel? _channel;
        private (int Cols, int Rows)? _lastSize;
        private Handshake.Answer? _handshake;
        private volatile bool _handshakeStarted;
        private volatile bool _handshakeCompleted;
        private Exception? _failure;

        public ShellSession(IAwsApi api, string target, string? command, string? reason, DataChannelOptions options, IShellTerminal terminal)
        {
            _api = api;
            _target = target;
            _command = command;
            _reason = reason;
            _options = options;
            _terminal = terminal;
        }

        public SessionEventLog Events { get; } = new();
        public string? SessionId { get; private set; }
        public int? ExitCode { get; private set; }
        public string? ClosingOutput { get; private set; }
        public Exception? Failure { get; private set; }

        /// <summary>True when the agent encrypts the session's data with KMS (known once the handshake completed).</summary>
        public bool Encrypted { get; private set; }

        /// <summary>The key the agent named for encryption, when it asked for it.</summary>
        public string? KmsKeyId => _handshake?.Kms?.KmsKeyId;

        /// <summary>
        /// True once keystrokes can go out: the agent has sent its first output (a shell without a handshake) or
        /// completed the handshake (a command, or an encrypted shell: the agent ignores input until then, and input
        /// must be encrypted, so none is sent before).
        /// </summary>
        public bool AcceptsInput => _inputReady.Task.IsCompleted;

        public Task<DataChannelClosure> Completion => _channel?.Completion ?? Task.FromResult(new DataChannelClosure(ChannelEnd.ClosedByClient, null, null));

        public async Task StartAsync(Action<SessionStage> progress, CancellationToken cancellationToken)
        {
            progress(SessionStage.StartSession);
            var parameters = new Dictionary<string, List<string>>();
            string? document = null;
            if (_command != null)
            {
                document = NonInteractiveDocument;
                parameters["command"] = new List<string> { _command };
            }
            var endpoint = await _api.StartSessionAsync(_target, document, parameters, _reason, cancellationToken).ConfigureAwait(false);
            SessionId = endpoint.SessionId;
            Events.Write($"Session {SessionId} started on {_target} ({document ?? "shell"}).");
            progress(SessionStage.WebSocket);
            _channel = new DataChannel(endpoint, _options, OnStreamMessage, ct => SessionResumer.ResumeAsync(_api, SessionId!, ct), Events.Write);
            await _channel.OpenAsync(cancellationToken).ConfigureAwait(false);
            await SendSizeIfChangedAsync(cancellationToken).ConfigureAwait(false);
            progress(SessionStage.Ready);
        }

        /// <summary>Runs on the data channel's receive loop: terminal writes only, replies go out from their own task.</summary>
        private void OnStreamMessage(AgentMessage message)
        {
            if (!_handshakeStarted && message.PayloadType != PayloadType.HandshakeRequest) _inputReady.TrySetResult(true);
            switch (message.PayloadType)
            {
                case PayloadType.Output:
                    _terminal.Output(message.Payload);
                    break;
                case PayloadType.StdErr:
                case PayloadType.Error:
                    _terminal.Error(message.Payload);
                    break;
                case PayloadType.ExitCode:
                    var text = System.Text.Encoding.UTF8.GetString(message.Payload).Trim();
                    if (int.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var code)) ExitCode = code;
                    else if (message.Payload.Length == 4) ExitCode = BinaryPrimitives.ReadInt32BigEndian(message.Payload);
                    break;
                case PayloadType.HandshakeRequest:
                    if (_handshakeStarted) break;
                    _handshakeStarted = true;
                    _ = Task.Run(() => RespondToHandshakeAsync(message));
                    break;
                case PayloadType.EncChallengeRequest:
                    var answer = _handshake;
                    _ = Task.Run(async () =>
                    {
                        var failure = await Handshake.AnswerChallengeAsync(_channel!, answer?.Cipher, message, Events.Write).ConfigureAwait(false);
                        if (failure != null) await FailAsync(failure).ConfigureAwait(false);
                    });
                    break;
                case PayloadType.HandshakeComplete:
                    OnHandshakeComplete(message);
                    break;
                case PayloadType.Flag:
                    if (message.Payload.Length >= 4 && (PayloadTypeFlag)BinaryPrimitives.ReadUInt32BigEndian(message.Payload) == PayloadTypeFlag.TerminateSession)
                    {
                        _ = _channel!.CloseAsync();
                    }
                    break;
            }
        }

        private async Task RespondToHandshakeAsync(AgentMessage message)
        {
            var answer = Handshake.Read(message, Events.Write);
            if (answer == null) return;
            _handshake = answer;
            try
            {
                var failure = await Handshake.RespondAsync(_channel!, _options.ClientVersion, answer, _api, _target, Events.Write, MarkFailed).ConfigureAwait(false);
                if (failure != null) await FailAsync(failure).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is System.IO.IOException || ex is OperationCanceledException)
            {
                Events.Write("The handshake response could not be sent: " + ex.Message);
            }
        }

        private void OnHandshakeComplete(AgentMessage message)
        {
            try
            {
                var complete = SsmJson.Deserialize<HandshakeCompletePayload>(message.Payload);
                if (!string.IsNullOrWhiteSpace(complete.CustomerMessage)) Events.Write("Agent: " + complete.CustomerMessage.Trim());
            }
            catch (SsmProtocolException ex)
            {
                Events.Write("Unreadable HandshakeComplete: " + ex.Message);
            }
            Encrypted = _channel!.IsEncrypted;
            Events.Write(Encrypted ? $"Handshake complete: the session is encrypted with AWS KMS ({KmsKeyId})." : "Handshake complete.");
            _handshakeCompleted = true;
            // The agent ignored what came before the handshake completed (datachannel.go processStreamDataMessage):
            // the terminal size goes again.
            _lastSize = null;
            _inputReady.TrySetResult(true);
            _ = Task.Run(async () =>
            {
                try
                {
                    await SendSizeIfChangedAsync(CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is System.IO.IOException || ex is OperationCanceledException)
                {
                    Events.Write("The terminal size could not be sent: " + ex.Message);
                }
            });
        }

        /// <summary>The session must end because of <paramref name="failure"/>: it is what WaitAsync reports.</summary>
        private void MarkFailed(Exception failure)
        {
            // Input stays held (AcceptsInput false): the session is ending.
            Interlocked.CompareExchange(ref _failure, failure, null);
        }

        private async Task FailAsync(Exception failure)
        {
            MarkFailed(failure);
            // Let what was sent (the HandshakeResponse that tells the agent why) reach it first, briefly.
            await _channel!.FlushAsync(TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(false);
            await _channel.FailAsync(failure).ConfigureAwait(false);
        }

        /// <summary>Sends keystrokes (raw bytes, as a terminal would send them).</summary>
        public async Task SendInputAsync(byte[] data, CancellationToken cancellationToken)
        {
            if (!_inputReady.Task.IsCompleted)
            {
                await Task.WhenAny(_inputReady.Task, _channel!.Completion, Task.Delay(Timeout.Infinite, cancellationToken)).ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
            }
            await _channel!.SendAsync(PayloadType.Output, data, 0, data.Length, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>Sends the terminal size when it differs from the last one sent.</summary>
        public async Task SendSizeIfChangedAsync(CancellationToken cancellationToken)
        {
            var size = _terminal.Size;
            if (size == null || size == _lastSize) return;
            // During a handshake the agent drops it; it goes when the handshake completes.
            if (_handshakeStarted && !_handshakeCompleted) return;
            _lastSize = size;
            var payload = SsmJson.SerializeToUtf8(new SizeData { Cols = (uint)size.Value.Cols, Rows = (uint)size.Value.Rows });
            await _channel!.SendAsync(PayloadType.Size, payload, 0, payload.Length, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>Waits for the session to end and records why.</summary>
        public async Task<DataChannelClosure> WaitAsync(CancellationToken cancellationToken)
        {
            var cancelled = new TaskCompletionSource<DataChannelClosure>(TaskCreationOptions.RunContinuationsAsynchronously);
            using (cancellationToken.Register(() => cancelled.TrySetCanceled()))
            {
                var done = await Task.WhenAny(_channel!.Completion, cancelled.Task).ConfigureAwait(false);
                var closure = await done.ConfigureAwait(false);
                var failure = Volatile.Read(ref _failure);
                if (failure != null && !ReferenceEquals(closure.Error, failure))
                {
                    // The agent may have closed the channel first (it cancels a session whose handshake failed).
                    closure = new DataChannelClosure(ChannelEnd.Failed, closure.Output, failure);
                }
                ClosingOutput = closure.Output;
                Failure = closure.Error;
                return closure;
            }
        }

        public async Task StopAsync(bool terminate)
        {
            if (terminate && SessionId != null)
            {
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                    await _api.TerminateSessionAsync(SessionId, cts.Token).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    Events.Write("TerminateSession failed: " + ex.Message);
                }
            }
            if (_channel != null) await _channel.CloseAsync().ConfigureAwait(false);
        }

        public void Dispose()
        {
            StopAsync(terminate: false).GetAwaiter().GetResult();
            _channel?.Dispose();
        }
    }
}
