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
    /// keystrokes go out as input_stream_data PayloadType 1, the terminal size as PayloadType 3 once the session type
    /// is known and on change (both wait for the agent's handshake to complete), output comes back as PayloadType 1
    /// (and 11 for stderr, 12 for the exit code), and the session ends with channel_closed, whose Output is shown.
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
        // The session type is known: the agent completed its handshake (HandshakeComplete), or a session without handshake
        // sent its first message (ProcessFirstMessage). Only then do keystrokes and the terminal size go out, as the
        // official client does: the agent ignores stream data before its handshake ends (datachannel.go
        // processStreamDataMessage), and in an encrypted session input must be encrypted with the handshake's key.
        private readonly TaskCompletionSource<bool> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly SemaphoreSlim _sizeLock = new(1, 1);
        // The first size has been numbered (or there is none, or the session ended first): keystrokes wait for it, so the
        // agent applies the size before it runs what was typed ahead (messages are taken in sequence order).
        private readonly TaskCompletionSource<bool> _inputOpen = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private DataChannel? _channel;
        private (int Cols, int Rows)? _lastSize;
        private Handshake.Answer? _handshake;
        private volatile bool _handshakeStarted;
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

        /// <summary>The agent's HandshakeComplete CustomerMessage, when it sent one (the official client prints it).</summary>
        public string? CustomerMessage { get; private set; }

        /// <summary>Raised (on the receive loop) with a non-empty HandshakeComplete CustomerMessage.</summary>
        public event Action<string>? CustomerMessageReceived;

        /// <summary>True when the agent encrypts the session's data with KMS (known once the handshake completed).</summary>
        public bool Encrypted { get; private set; }

        /// <summary>The key the agent named for encryption, when it asked for it.</summary>
        public string? KmsKeyId => _handshake?.Kms?.KmsKeyId;

        /// <summary>
        /// True once keystrokes can go out: the agent has sent its first output (a shell without a handshake) or
        /// completed the handshake (a command, or an encrypted shell: the agent ignores input until then, and input
        /// must be encrypted, so none is sent before).
        /// </summary>
        public bool AcceptsInput => _inputOpen.Task.IsCompleted;

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
            _ = SendInitialSizeAsync();
            progress(SessionStage.Ready);
        }

        /// <summary>Runs on the data channel's receive loop: terminal writes only, replies go out from their own task.</summary>
        private void OnStreamMessage(AgentMessage message)
        {
            // A session without handshake: its first message (a shell's prompt) says it runs (ProcessFirstMessage).
            if (!_handshakeStarted && message.PayloadType != PayloadType.HandshakeRequest) _ready.TrySetResult(true);
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
                    if (ParseExitCode(message.Payload) is int code) ExitCode = code;
                    else Events.Write("Unreadable exit code payload from the agent (" + message.Payload.Length + " bytes).");
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

        /// <summary>
        /// The exit code in an ExitCode payload (PayloadType 12): the agent sends the text "EXIT_CODE: n"
        /// (shell.go sendExitCode); a bare number is read too. Null when it is neither.
        /// </summary>
        internal static int? ParseExitCode(byte[] payload)
        {
            var text = System.Text.Encoding.UTF8.GetString(payload).Trim();
            const string prefix = "EXIT_CODE:";
            if (text.StartsWith(prefix, StringComparison.Ordinal)) text = text.Substring(prefix.Length).Trim();
            return int.TryParse(text, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out var code) ? code : null;
        }

        /// <summary>The first size goes out once the session type is known (never before the agent's handshake is over).</summary>
        private async Task SendInitialSizeAsync()
        {
            try
            {
                await Task.WhenAny(_ready.Task, _channel!.Completion).ConfigureAwait(false);
                if (_ready.Task.IsCompleted) await SendSizeIfChangedAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is System.IO.IOException || ex is OperationCanceledException || ex is ObjectDisposedException)
            {
                Events.Write("The terminal size could not be sent: " + ex.Message);
            }
            finally
            {
                _inputOpen.TrySetResult(true);
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

        /// <summary>
        /// HandshakeComplete: the session type is known, keystrokes and the first terminal size may go (nothing was sent
        /// before, so the size goes once). Its CustomerMessage ("This session is encrypted using AWS KMS.", a request to
        /// update the client) is kept and raised for the cmdlet to show.
        /// </summary>
        private void OnHandshakeComplete(AgentMessage message)
        {
            var text = Handshake.ReadCustomerMessage(message, Events.Write);
            Encrypted = _channel!.IsEncrypted;
            Events.Write(Encrypted ? $"Handshake complete: the session is encrypted with AWS KMS ({KmsKeyId})." : "Handshake complete.");
            if (text != null)
            {
                CustomerMessage = text;
                CustomerMessageReceived?.Invoke(text);
            }
            _ready.TrySetResult(true);
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
            if (!_inputOpen.Task.IsCompleted)
            {
                await Task.WhenAny(_inputOpen.Task, _channel!.Completion, Task.Delay(Timeout.Infinite, cancellationToken)).ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
            }
            await _channel!.SendAsync(PayloadType.Output, data, 0, data.Length, cancellationToken).ConfigureAwait(false);
        }

        /// <summary>Sends the terminal size when it differs from the last one sent (nothing before the session type is known).</summary>
        public async Task SendSizeIfChangedAsync(CancellationToken cancellationToken)
        {
            if (!_ready.Task.IsCompleted) return;
            await _sizeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                var size = _terminal.Size;
                if (size == null || size == _lastSize) return;
                _lastSize = size;
                var payload = SsmJson.SerializeToUtf8(new SizeData { Cols = (uint)size.Value.Cols, Rows = (uint)size.Value.Rows });
                await _channel!.SendAsync(PayloadType.Size, payload, 0, payload.Length, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _sizeLock.Release();
            }
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
