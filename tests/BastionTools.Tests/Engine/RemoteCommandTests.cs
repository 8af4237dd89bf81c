using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Ssm;
using BastionTools.Tests.Sandbox;
using BastionTools.Tests.Ssm;
using Xunit;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// AWS-StartNonInteractiveCommand through the engine (ShellSession + NonInteractiveCommand) against the sandbox agent:
    /// on Linux the wrapper is sh, on Windows it is PowerShell (the sandbox plays powershell.exe with a real PowerShell 7,
    /// reading the words as 5.1's command line does); the exit status comes back either way. Also the agent's ExitCode
    /// payload, its HandshakeComplete CustomerMessage, and when the terminal size is sent.
    /// </summary>
    public sealed class RemoteCommandTests : IDisposable
    {
        private const string Linux = "i-0a1b2c3d4e5f60001";
        private const string Windows = SandboxAgentWindowsTests.WindowsBastion;
        private readonly SandboxHost _host;
        private readonly AwsApi _api;

        public RemoteCommandTests()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            _host = SandboxAgentWindowsTests.StartWithWindows();
            var c = _host.World.Credentials[0];
            _api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), _host.World.Region, _host.SsmEndpoint.ToString());
        }

        public void Dispose()
        {
            _api.Dispose();
            _host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        private sealed class Result
        {
            public List<string> Lines { get; } = new();
            public List<string> Errors { get; } = new();
            public int? Marked { get; set; }
            public int? AgentExitCode { get; set; }
            public string? CustomerMessage { get; set; }
            public DataChannelClosure? Closure { get; set; }
        }

        private async Task<Result> RunAsync(string command, CommandPlatform platform, string target, IAwsApi? api = null, DataChannelOptions? options = null)
        {
            var wrapped = new NonInteractiveCommand(command, platform);
            var result = new Result();
            var terminal = new LineTerminal(line => wrapped.ReadLine(line, l => { lock (result.Lines) result.Lines.Add(l); }), result.Errors.Add);
            using var shell = new ShellSession(api ?? _api, target, wrapped.Wrapped, null, options ?? new DataChannelOptions(), terminal);
            var received = new ConcurrentQueue<string>();
            shell.CustomerMessageReceived += received.Enqueue;
            await shell.StartAsync(_ => { }, CancellationToken.None);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(50));
            result.Closure = await shell.WaitAsync(timeout.Token);
            terminal.Flush();
            wrapped.Finish(l => result.Lines.Add(l));
            result.Marked = wrapped.MarkedExitCode;
            result.AgentExitCode = shell.ExitCode;
            result.CustomerMessage = shell.CustomerMessage;
            Assert.Equal(shell.CustomerMessage == null ? Array.Empty<string>() : new[] { shell.CustomerMessage }, received.ToArray());
            return result;
        }

        [Fact(Timeout = 120_000)]
        public async Task Windows_TheCommandRunsInPowerShell_WithItsOutputAndExitStatus()
        {
            // Quotes of both kinds, $, backslashes, non-ASCII text and several lines reach PowerShell unchanged.
            var r = await RunAsync("$name = \"wörld\"\nWrite-Output \"hello $name\" 'single ''quoted''' 'C:\\temp\\x'\n$global:LASTEXITCODE = 4", CommandPlatform.Windows, Windows);
            Assert.Equal(new[] { "hello wörld", "single 'quoted'", "C:\\temp\\x" }, r.Lines);
            Assert.Equal(4, r.Marked);
            Assert.Empty(r.Errors);
            Assert.Null(r.Closure!.Error);
        }

        [Theory(Timeout = 120_000)]
        [InlineData("Write-Output before; exit 5; Write-Output after", new[] { "before" }, 5)]
        [InlineData("Write-Output ok", new[] { "ok" }, 0)]
        [InlineData("throw 'it broke'", new[] { "Exception: it broke" }, 1)]
        [InlineData("Write-Error 'not fatal'; Write-Output next", new[] { "Write-Error: not fatal", "next" }, 1)]
        [InlineData("Write-Host -NoNewline partial", new[] { "partial" }, 0)]
        public async Task Windows_ExitStatus_FollowsExitThrowAndErrors(string command, string[] expected, int exitCode)
        {
            var r = await RunAsync(command, CommandPlatform.Windows, Windows);
            Assert.Equal(expected, r.Lines);
            Assert.Equal(exitCode, r.Marked);
        }

        [Fact(Timeout = 120_000)]
        public async Task Linux_TheCommandRunsInSh_WithItsExitStatus()
        {
            var r = await RunAsync("echo \"it's\"; printf 'no newline'; exit 3", CommandPlatform.Linux, Linux);
            Assert.Equal(new[] { "it's", "no newline" }, r.Lines);
            Assert.Equal(3, r.Marked);
        }

        [Fact(Timeout = 120_000)]
        public async Task Linux_TrailingEmptyLinesOfTheCommandAreKept()
        {
            var r = await RunAsync("printf 'a\\n\\n'", CommandPlatform.Linux, Linux);
            Assert.Equal(new[] { "a", "" }, r.Lines);
            Assert.Equal(0, r.Marked);
        }

        /// <summary>The sandbox's SSM API with one more StartSession parameter (documents may take more than "command").</summary>
        private sealed class ExtraParameterApi : IAwsApi
        {
            private readonly IAwsApi _inner;
            private readonly string _name;
            private readonly string _value;

            public ExtraParameterApi(IAwsApi inner, string name, string value)
            {
                _inner = inner;
                _name = name;
                _value = value;
            }

            public Task<StreamEndpoint> StartSessionAsync(string target, string? documentName, IDictionary<string, List<string>> parameters, string? reason, CancellationToken cancellationToken)
            {
                parameters[_name] = new List<string> { _value };
                return _inner.StartSessionAsync(target, documentName, parameters, reason, cancellationToken);
            }

            public Task<StreamEndpoint?> ResumeSessionAsync(string sessionId, CancellationToken cancellationToken) => _inner.ResumeSessionAsync(sessionId, cancellationToken);
            public Task TerminateSessionAsync(string sessionId, CancellationToken cancellationToken) => _inner.TerminateSessionAsync(sessionId, cancellationToken);
            public Task<IReadOnlyList<InstanceRecord>> FindInstancesAsync(IReadOnlyCollection<string>? instanceIds, string? name, IDictionary<string, string>? tags, CancellationToken cancellationToken) => _inner.FindInstancesAsync(instanceIds, name, tags, cancellationToken);
            public Task<IReadOnlyList<InstanceRecord>> DescribeInstancesAsync(IReadOnlyCollection<string>? instanceIds, string? name, IDictionary<string, string>? tags, CancellationToken cancellationToken) => _inner.DescribeInstancesAsync(instanceIds, name, tags, cancellationToken);
            public Task JoinInstanceInformationAsync(IReadOnlyList<InstanceRecord> records, CancellationToken cancellationToken) => _inner.JoinInstanceInformationAsync(records, cancellationToken);
            public Task<DataKey> GenerateDataKeyAsync(string keyId, IDictionary<string, string> encryptionContext, int numberOfBytes, CancellationToken cancellationToken) => _inner.GenerateDataKeyAsync(keyId, encryptionContext, numberOfBytes, cancellationToken);
            public Task<IReadOnlyList<SessionRecord>> DescribeSessionsAsync(SessionQuery query, CancellationToken cancellationToken) => _inner.DescribeSessionsAsync(query, cancellationToken);
        }

        [Theory(Timeout = 120_000)]
        [InlineData(false, Linux)]
        [InlineData(true, Windows)]
        public async Task SeparateOutputStreams_TheAgentsExitCodePayload_IsRead(bool windows, string target)
        {
            var platform = windows ? CommandPlatform.Windows : CommandPlatform.Linux;
            // With separateOutputStream the agent ends with ExitCode "EXIT_CODE: n" (shell.go sendExitCode): the wrapper
            // exits with the command's status, so it is the same number as the marker's.
            var api = new ExtraParameterApi(_api, "separateOutputStream", "true");
            var r = await RunAsync(platform == CommandPlatform.Windows ? "Write-Output out; exit 6" : "echo out; exit 6", platform, target, api);
            Assert.Equal(new[] { "out" }, r.Lines);
            Assert.Equal(6, r.AgentExitCode);
            Assert.Equal(6, r.Marked);
        }

        [Theory]
        [InlineData("EXIT_CODE: 3", 3)]
        [InlineData("EXIT_CODE: -1", -1)]
        [InlineData("0", 0)]
        [InlineData("EXIT_CODE:", null)]
        [InlineData("three", null)]
        public void ExitCodePayload_IsReadAsTheAgentWritesIt(string payload, int? expected)
        {
            Assert.Equal(expected, ShellSession.ParseExitCode(Encoding.UTF8.GetBytes(payload)));
        }

        [Fact(Timeout = 120_000)]
        public async Task CustomerMessage_OfTheHandshakeComplete_IsKeptAndRaised()
        {
            // The agent asks a client of 1.2.295 or older to update when output streams are separate (datachannel.go
            // buildHandshakeCompletePayload); the official client prints the message.
            var api = new ExtraParameterApi(_api, "separateOutputStream", "true");
            var r = await RunAsync("echo hi", CommandPlatform.Linux, Linux, api, new DataChannelOptions { ClientVersion = "1.2.295" });
            Assert.Equal("Please update session manager plugin version (minimum required version 1.2.312.0) for fully support of separate StdOut/StdErr output.", r.CustomerMessage);
            var quiet = await RunAsync("echo hi", CommandPlatform.Linux, Linux, api);
            Assert.Null(quiet.CustomerMessage);
        }

        private sealed class SizedTerminal : IShellTerminal
        {
            public void Output(byte[] data)
            {
            }

            public void Error(byte[] data)
            {
            }

            public (int Cols, int Rows)? Size => (132, 43);
        }

        [Theory(Timeout = 60_000)]
        [InlineData(true)]
        [InlineData(false)]
        public async Task TerminalSize_IsSentOnlyOnceTheSessionTypeIsKnown(bool handshake)
        {
            // The agent ignores stream data that arrives before its handshake is complete (datachannel.go
            // processStreamDataMessage), so the size waits for HandshakeComplete — or, for a shell without handshake, the
            // first output — as in the official client (session.go Execute, sessionhandler.go ProcessFirstMessage).
            var service = new ScriptedService();
            var options = new DataChannelOptions { TransportFactory = service.OpenAsync };
            using var shell = new ShellSession(_api, Linux, null, null, options, new SizedTerminal());
            await shell.StartAsync(_ => { }, CancellationToken.None);
            var transport = service.Next();
            AgentMessage WaitForInput(int index, string what)
            {
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
                while (DateTime.UtcNow < deadline)
                {
                    var inputs = transport.Written.Where(m => m.MessageType == MessageTypes.InputStreamData).GroupBy(m => m.SequenceNumber).Select(g => g.First()).OrderBy(m => m.SequenceNumber).ToList();
                    if (inputs.Count > index) return inputs[index];
                    Thread.Sleep(10);
                }
                throw new TimeoutException("no " + what);
            }
            long seq = 0;
            if (handshake)
            {
                var request = "{\"AgentVersion\":\"3.3.2299.0\",\"RequestedClientActions\":[{\"ActionType\":\"SessionType\",\"ActionParameters\":{\"SessionType\":\"Standard_Stream\",\"Properties\":{}}}]}";
                transport.Deliver(AgentMessage.Create(MessageTypes.OutputStreamData, seq++, MessageFlags.Syn, PayloadType.HandshakeRequest, Encoding.UTF8.GetBytes(request)));
                // A size queued at start would have been numbered, and written, before the answer.
                Assert.Equal(PayloadType.HandshakeResponse, WaitForInput(0, "HandshakeResponse").PayloadType);
                transport.Deliver(AgentMessage.Create(MessageTypes.OutputStreamData, seq++, MessageFlags.Data, PayloadType.HandshakeComplete, Encoding.UTF8.GetBytes("{\"HandshakeTimeToComplete\":1000,\"CustomerMessage\":\"\"}")));
            }
            else
            {
                transport.Deliver(AgentMessage.Create(MessageTypes.OutputStreamData, seq++, MessageFlags.Syn, PayloadType.Output, Encoding.UTF8.GetBytes("$ ")));
            }
            var size = WaitForInput(handshake ? 1 : 0, "size");
            Assert.Equal(PayloadType.Size, size.PayloadType);
            Assert.Equal("{\"cols\":132,\"rows\":43}", Encoding.UTF8.GetString(size.Payload));
            await shell.StopAsync(terminate: true);
        }
    }
}
