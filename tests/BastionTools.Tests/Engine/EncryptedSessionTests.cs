using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// KMS-encrypted shell and command sessions (the Session Manager preferences name a key), end to end: the engine's
    /// ShellSession and DataChannel against the sandbox's agent (its own AES-GCM, kms:Decrypt with the instance role)
    /// and KMS double (SigV4, key policy, encryption context).
    /// </summary>
    public sealed class EncryptedSessionTests : IAsyncLifetime
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private const string LegacyBastion = "i-0a1b2c3d4e5f60002";
        private SandboxHost _host = null!;
        private AwsApi _api = null!;

        public Task InitializeAsync()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            _host = new SandboxHost(SandboxWorld.CreateDefault());
            _host.Start();
            var c = _host.World.Credentials[0];
            _api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), _host.World.Region, _host.SsmEndpoint.ToString());
            return Task.CompletedTask;
        }

        public async Task DisposeAsync()
        {
            _api.Dispose();
            await _host.DisposeAsync();
        }

        private sealed class CapturingTerminal : IShellTerminal
        {
            private readonly object _gate = new();
            private readonly StringBuilder _output = new();

            public CapturingTerminal((int, int)? size) => Size = size;

            public (int Cols, int Rows)? Size { get; set; }

            public string Text
            {
                get { lock (_gate) return _output.ToString(); }
            }

            public void Output(byte[] data)
            {
                lock (_gate) _output.Append(Encoding.UTF8.GetString(data));
            }

            public void Error(byte[] data) => Output(data);

            public async Task<string> WaitForAsync(string text, Task ended)
            {
                while (!Text.Contains(text, StringComparison.Ordinal))
                {
                    if (ended.IsCompleted) throw new Xunit.Sdk.XunitException("The session ended before \"" + text + "\" appeared; output so far:\n" + Text);
                    await Task.Delay(20);
                }
                return Text;
            }
        }

        /// <summary>Records every binary frame that crosses the WebSocket, both ways, to check what the wire carries.</summary>
        private sealed class RecordingTransport : IMessageTransport
        {
            private readonly IMessageTransport _inner;
            public RecordingTransport(IMessageTransport inner) => _inner = inner;
            public ConcurrentQueue<byte[]> Frames { get; } = new();

            public async Task<TransportMessage> ReceiveAsync(CancellationToken cancellationToken)
            {
                var m = await _inner.ReceiveAsync(cancellationToken);
                if (m.Kind == TransportMessageKind.Binary) Frames.Enqueue(m.Data.ToArray());
                return m;
            }

            public Task SendBinaryAsync(IReadOnlyList<ArraySegment<byte>> messages, CancellationToken cancellationToken)
            {
                foreach (var m in messages) Frames.Enqueue(m.ToArray());
                return _inner.SendBinaryAsync(messages, cancellationToken);
            }

            public Task SendTextAsync(string text, CancellationToken cancellationToken) => _inner.SendTextAsync(text, cancellationToken);
            public Task PingAsync(CancellationToken cancellationToken) => _inner.PingAsync(cancellationToken);
            public long LastReceivedTimestamp => _inner.LastReceivedTimestamp;
            public bool HasPendingInput => _inner.HasPendingInput;
            public bool HasBufferedMessage => _inner.HasBufferedMessage;
            public Task CloseAsync(int status, string description, CancellationToken cancellationToken) => _inner.CloseAsync(status, description, cancellationToken);
            public void Abort() => _inner.Abort();
            public void Dispose() => _inner.Dispose();
        }

        private static DataChannelOptions Recording(List<RecordingTransport> transports)
        {
            var options = new DataChannelOptions();
            options.TransportFactory = async (url, ct) =>
            {
                var t = new RecordingTransport(await WebSocketTransport.ConnectAsync(url, options.Transport, ct));
                lock (transports) transports.Add(t);
                return t;
            };
            return options;
        }

        private static bool Contains(byte[] haystack, byte[] needle) => haystack.AsSpan().IndexOf(needle) >= 0;

        private static BastionToolsException FailureOf(DataChannelClosure closure)
        {
            Assert.Equal(ChannelEnd.Failed, closure.End);
            return Assert.IsType<BastionToolsException>(closure.Error);
        }

        [Fact]
        public async Task ACommand_IsEncryptedWithTheKmsDataKey_AndTheWireCarriesNoPlaintext()
        {
            _host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;
            // The agent insists on the random challenge in the encryption context (appconfig RequireKMSChallengeResponse).
            _host.Agent.Options.RequireKmsChallengeResponse = true;
            var transports = new List<RecordingTransport>();
            var terminal = new CapturingTerminal(null);
            using var shell = new ShellSession(_api, Bastion, "sh -c 'echo secret-$((6*7))-marker; echo err-$((3+4))-marker 1>&2'", null, Recording(transports), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);

            Assert.Null(closure.Error);
            Assert.Contains("secret-42-marker", terminal.Text);
            Assert.Contains("err-7-marker", terminal.Text);
            Assert.True(shell.Encrypted);
            Assert.Equal(SandboxKms.DefaultAlias, shell.KmsKeyId);

            // The client asked for the data key with the session's context, the agent decrypted it with its role and the same context.
            var calls = _host.World.Kms.Calls;
            var generate = Assert.Single(calls, c => c.Operation == "GenerateDataKey");
            var decrypt = Assert.Single(calls, c => c.Operation == "Decrypt");
            Assert.Null(generate.ErrorCode);
            Assert.Null(decrypt.ErrorCode);
            Assert.Equal("arn:aws:iam::123456789012:user/sandbox-user", generate.Principal);
            Assert.StartsWith("arn:aws:sts::123456789012:assumed-role/BastionInstanceRole/" + Bastion, decrypt.Principal);
            Assert.Equal(shell.SessionId, generate.EncryptionContext["aws:ssm:SessionId"]);
            Assert.Equal(Bastion, generate.EncryptionContext["aws:ssm:TargetId"]);
            Assert.True(generate.EncryptionContext.ContainsKey("aws:ssm:RandomChallenge"));
            Assert.Equal(generate.EncryptionContext.OrderBy(kv => kv.Key), decrypt.EncryptionContext.OrderBy(kv => kv.Key));

            // Neither the output nor the data key crossed the wire in clear.
            var frames = transports.SelectMany(t => t.Frames).ToList();
            Assert.NotEmpty(frames);
            var (plainKey, blob) = Assert.Single(_host.World.Kms.IssuedDataKeys);
            Assert.DoesNotContain(frames, f => Contains(f, Encoding.ASCII.GetBytes("secret-42-marker")));
            Assert.DoesNotContain(frames, f => Contains(f, Encoding.ASCII.GetBytes("err-7-marker")));
            Assert.DoesNotContain(frames, f => Contains(f, plainKey.AsSpan(0, 16).ToArray()));
            Assert.DoesNotContain(frames, f => Contains(f, Encoding.ASCII.GetBytes(Convert.ToBase64String(plainKey))));
            // The blob went to the agent (base64 in the HandshakeResponse), and nowhere in the session's log.
            Assert.Contains(frames, f => Contains(f, Encoding.ASCII.GetBytes(Convert.ToBase64String(blob))));
            var log = string.Join("\n", shell.Events.Snapshot());
            Assert.DoesNotContain(Convert.ToBase64String(plainKey), log);
            Assert.DoesNotContain(Convert.ToBase64String(blob), log);
            Assert.Contains("encrypted with AWS KMS", log);
        }

        [Fact]
        public async Task AnInteractiveShell_IsEncrypted_TakesInputAndItsSizeAfterTheHandshake()
        {
            _host.World.Preferences.KmsKeyId = "arn:aws:kms:us-west-2:123456789012:key/" + SandboxKms.DefaultKeyId;
            var terminal = new CapturingTerminal((100, 30));
            var transports = new List<RecordingTransport>();
            using var shell = new ShellSession(_api, Bastion, null, null, Recording(transports), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            // Typed at once: held until the agent takes input (after the handshake), then encrypted.
            var typed = shell.SendInputAsync(Encoding.ASCII.GetBytes("stty size; echo typed-$((2+3))\r"), CancellationToken.None);
            var text = await terminal.WaitForAsync("typed-5", shell.Completion);
            await typed;
            Assert.True(shell.Encrypted);
            // The size went once the handshake completed (the agent would drop one sent before) and reached the PTY.
            Assert.Matches(@"(?m)(^|\$ )30 100\r?$", text);
            Assert.Equal("This session is encrypted using AWS KMS.", shell.CustomerMessage);
            // One size, once: sent after the agent's HandshakeComplete arrived (the frames are recorded in causal order:
            // a received frame before what its handling sends), never before it and never again.
            var messages = transports.SelectMany(t => t.Frames).Select(AgentMessageCodec.Decode).ToList();
            var complete = messages.FindIndex(m => m.MessageType == MessageTypes.OutputStreamData && m.PayloadType == PayloadType.HandshakeComplete);
            var sizes = messages.Select((m, i) => (m, i)).Where(x => x.m.MessageType == MessageTypes.InputStreamData && x.m.PayloadType == PayloadType.Size).ToList();
            Assert.True(complete >= 0, "no HandshakeComplete");
            Assert.Single(sizes.Select(x => x.m.SequenceNumber).Distinct());
            Assert.True(sizes[0].i > complete, "the size went before the handshake completed");
            await shell.SendInputAsync(Encoding.ASCII.GetBytes("exit\r"), CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);
            Assert.Null(closure.Error);
            Assert.True(closure.ByRemote);
            Assert.Equal(0, _host.Agent.Counters(shell.SessionId!)!.DecryptionFailures);
        }

        [Fact]
        public async Task AnOldAgentWithoutTheChallenge_GetsADataKeyWithoutIt()
        {
            _host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;
            var terminal = new CapturingTerminal(null);
            using var shell = new ShellSession(_api, LegacyBastion, "echo legacy-ok", null, new DataChannelOptions(), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);
            Assert.Null(closure.Error);
            Assert.Contains("legacy-ok", terminal.Text);
            var generate = Assert.Single(_host.World.Kms.Calls, c => c.Operation == "GenerateDataKey");
            Assert.Equal(new[] { "aws:ssm:SessionId", "aws:ssm:TargetId" }, generate.EncryptionContext.Keys.OrderBy(k => k, StringComparer.Ordinal));
        }

        [Fact]
        public async Task WithoutPreferences_NothingIsEncrypted_AndKmsIsNotCalled()
        {
            var terminal = new CapturingTerminal(null);
            using var shell = new ShellSession(_api, Bastion, "echo plain-ok", null, new DataChannelOptions(), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);
            Assert.Null(closure.Error);
            Assert.Contains("plain-ok", terminal.Text);
            Assert.False(shell.Encrypted);
            Assert.Empty(_host.World.Kms.Calls);
        }

        [Fact]
        public async Task ADeniedGenerateDataKey_EndsTheSessionWithSessionEncryptionDenied_AndLeaksNothing()
        {
            // The locked key's policy lets nobody generate data keys.
            _host.World.Preferences.KmsKeyId = SandboxKms.LockedAlias;
            var terminal = new CapturingTerminal(null);
            using var shell = new ShellSession(_api, Bastion, "echo must-not-run", null, new DataChannelOptions(), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);

            var error = FailureOf(closure);
            Assert.Equal(ErrorIds.SessionEncryptionDenied, error.ErrorId);
            Assert.Equal(ErrorCategory.PermissionDenied, error.Category);
            Assert.Contains("kms:GenerateDataKey", error.Message);
            Assert.Contains(SandboxKms.LockedAlias, error.Message);
            Assert.Equal(ErrorIds.SessionEncryptionDenied, error.ToErrorRecord().FullyQualifiedErrorId);
            Assert.DoesNotContain("must-not-run", terminal.Text);

            var generate = Assert.Single(_host.World.Kms.Calls);
            Assert.Equal(("GenerateDataKey", "AccessDeniedException"), (generate.Operation, generate.ErrorCode));
            Assert.Empty(_host.World.Kms.IssuedDataKeys);
            // The agent was told (the HandshakeResponse with ActionStatus Failed reached it) and the session ended.
            Assert.Equal(1, _host.Agent.Counters(shell.SessionId!)!.StreamMessagesDelivered);
            await WaitUntil(() => _host.Sessions.TryGet(shell.SessionId!, out var s) && s.State == SandboxSessionState.Terminated);

            var secret = _host.World.Credentials[0].SecretAccessKey;
            var everything = string.Join("\n", shell.Events.Snapshot()) + "\n" + error + "\n" + terminal.Text;
            Assert.DoesNotContain(secret, everything);
        }

        [Fact]
        public async Task ATamperedAgentPayload_IsRejectedWithSessionDecryptionFailed()
        {
            _host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;
            _host.Agent.Options.EncryptionFault = SandboxEncryptionFault.TamperOutput;
            var terminal = new CapturingTerminal(null);
            using var shell = new ShellSession(_api, Bastion, "echo tampered-text", null, new DataChannelOptions(), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);

            var error = FailureOf(closure);
            Assert.Equal(ErrorIds.SessionDecryptionFailed, error.ErrorId);
            Assert.Equal(ErrorCategory.SecurityError, error.Category);
            Assert.Contains("AES-GCM", error.Message);
            Assert.DoesNotContain("tampered-text", terminal.Text);
            Assert.Equal(string.Empty, terminal.Text);
        }

        [Fact]
        public async Task AChallengeUnderAnotherKey_IsRejectedWithSessionDecryptionFailed()
        {
            _host.World.Preferences.KmsKeyId = SandboxKms.DefaultAlias;
            _host.Agent.Options.EncryptionFault = SandboxEncryptionFault.WrongKeyChallenge;
            var terminal = new CapturingTerminal(null);
            using var shell = new ShellSession(_api, Bastion, "echo wrong-key", null, new DataChannelOptions(), terminal);
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var closure = await shell.WaitAsync(CancellationToken.None);

            var error = FailureOf(closure);
            Assert.Equal(ErrorIds.SessionDecryptionFailed, error.ErrorId);
            Assert.Equal(ErrorCategory.SecurityError, error.Category);
            Assert.Contains("challenge", error.Message);
            Assert.Equal(string.Empty, terminal.Text);
        }

        private static async Task WaitUntil(Func<bool> condition)
        {
            while (!condition()) await Task.Delay(20);
        }
    }
}
