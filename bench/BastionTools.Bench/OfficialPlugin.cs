using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;

namespace BastionTools.Bench
{
    /// <summary>
    /// The official session-manager-plugin (a binary built from aws/session-manager-plugin, given with --plugin) as a
    /// second tunnel through the same agent double, so the bench can put it beside BastionTools in one run. It is started
    /// as the AWS CLI starts it: the StartSession response, the region, the operation, a profile, the request and the
    /// endpoint as its arguments; it listens on the localPortNumber of the request.
    /// </summary>
    internal sealed class OfficialPlugin : IDisposable
    {
        private readonly Process _process;
        private readonly Task _drain;
        private readonly StringWriterLines _output = new();

        private OfficialPlugin(Process process, int port, string version, string sessionId)
        {
            _process = process;
            SessionId = sessionId;
            Port = port;
            Version = version;
            _drain = Task.WhenAll(Pump(process.StandardOutput), Pump(process.StandardError));
        }

        public int Port { get; }
        public string SessionId { get; }
        public string Version { get; }
        public int ProcessId => _process.Id;

        /// <summary>The last lines the plugin printed (standard output and error).</summary>
        public string Output => _output.Text();

        /// <summary>The plugin process's CPU time so far (user and system, all its threads).</summary>
        public TimeSpan Cpu
        {
            get
            {
                _process.Refresh();
                return _process.TotalProcessorTime;
            }
        }

        public static string VersionOf(string path)
        {
            var psi = new ProcessStartInfo(path) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add("--version");
            using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start " + path);
            var version = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return version;
        }

        /// <summary>Starts a port session for the plugin and waits until it accepts connections on its local port.</summary>
        public static async Task<OfficialPlugin> StartAsync(string path, AwsApi api, string region, string ssmEndpoint, string accessKeyId, string secretAccessKey,
                                                            string target, string remoteHost, int remotePort, TimeSpan timeout)
        {
            var version = VersionOf(path);
            var localPort = FreePort();
            const string document = "AWS-StartPortForwardingSessionToRemoteHost";
            var parameters = new Dictionary<string, List<string>>
            {
                ["host"] = new() { remoteHost },
                ["portNumber"] = new() { remotePort.ToString(CultureInfo.InvariantCulture) },
                ["localPortNumber"] = new() { localPort.ToString(CultureInfo.InvariantCulture) },
            };
            using var cts = new CancellationTokenSource(timeout);
            var stream = await api.StartSessionAsync(target, document, parameters, null, cts.Token).ConfigureAwait(false);
            var response = ResponseJson(stream);
            var request = RequestJson(target, document, parameters);
            var psi = new ProcessStartInfo(path) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
            // The AWS CLI hands the response over in an environment variable the plugin reads and unsets.
            psi.Environment["AWS_SSM_START_SESSION_RESPONSE"] = response;
            foreach (var a in new[] { "AWS_SSM_START_SESSION_RESPONSE", region, "StartSession", "", request, ssmEndpoint }) psi.ArgumentList.Add(a);
            // Its TerminateSession and ResumeSession calls: the sandbox's credentials, from this process's environment only.
            psi.Environment["AWS_ACCESS_KEY_ID"] = accessKeyId;
            psi.Environment["AWS_SECRET_ACCESS_KEY"] = secretAccessKey;
            psi.Environment.Remove("AWS_SESSION_TOKEN");
            psi.Environment.Remove("AWS_PROFILE");
            psi.Environment["HOME"] = Home();
            var process = Process.Start(psi) ?? throw new InvalidOperationException("could not start " + path);
            var plugin = new OfficialPlugin(process, localPort, version, stream.SessionId);
            var clock = Stopwatch.StartNew();
            while (true)
            {
                if (process.HasExited)
                    throw new InvalidOperationException($"the plugin exited ({process.ExitCode}) before it listened on {localPort}: " + plugin._output.Text());
                // Printed once it listens, in mux and basic mode alike. No probe connection: in basic mode the plugin takes
                // the first connection it accepts as the session's one.
                if (plugin._output.Text().Contains($"Port {localPort} opened", StringComparison.Ordinal)) return plugin;
                if (clock.Elapsed > timeout)
                {
                    plugin.Dispose();
                    throw new TimeoutException($"the plugin did not listen on {localPort} within {timeout.TotalSeconds:F0} s: " + plugin._output.Text());
                }
                await Task.Delay(50).ConfigureAwait(false);
            }
        }

        /// <summary>The StartSession response as the AWS CLI hands it to the plugin.</summary>
        public static string ResponseJson(BastionTools.Ssm.StreamEndpoint stream) => JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["SessionId"] = stream.SessionId,
            ["TokenValue"] = stream.TokenValue,
            ["StreamUrl"] = stream.StreamUrl.ToString(),
        });

        /// <summary>The StartSession request (the plugin reads its Target).</summary>
        public static string RequestJson(string target, string? document, Dictionary<string, List<string>> parameters)
        {
            var request = new Dictionary<string, object> { ["Target"] = target, ["Parameters"] = parameters };
            if (document != null) request["DocumentName"] = document;
            return JsonSerializer.Serialize(request);
        }

        /// <summary>A home of its own for the plugin (its log and configuration), not the user's.</summary>
        public static string Home()
        {
            var home = Path.Combine(Path.GetTempPath(), "bastiontools-bench-plugin-home");
            Directory.CreateDirectory(home);
            return home;
        }

        /// <summary>Ctrl-C (SIGINT) to the plugin, then its exit: "with code N", or null if it had not exited within <paramref name="timeout"/>.</summary>
        public async Task<string?> InterruptAsync(TimeSpan timeout)
        {
            if (!OperatingSystem.IsWindows() && !_process.HasExited) _ = Kill(_process.Id, 2);
            using var cts = new CancellationTokenSource(timeout);
            try
            {
                await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
                return "with code " + _process.ExitCode.ToString(CultureInfo.InvariantCulture);
            }
            catch (OperationCanceledException)
            {
                return null;
            }
        }

        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
        private static extern int Kill(int pid, int signal);

        internal static int FreePort()
        {
            var l = new TcpListener(IPAddress.Loopback, 0);
            l.Start();
            var port = ((IPEndPoint)l.LocalEndpoint).Port;
            l.Stop();
            return port;
        }

        private async Task Pump(StreamReader reader)
        {
            string? line;
            while ((line = await reader.ReadLineAsync().ConfigureAwait(false)) != null) _output.Add(line);
        }

        public void Dispose()
        {
            try
            {
                if (!_process.HasExited)
                {
                    _process.Kill(entireProcessTree: true);
                    _process.WaitForExit(5000);
                }
            }
            catch (InvalidOperationException)
            {
            }
            _drain.Wait(TimeSpan.FromSeconds(5));
            _process.Dispose();
        }

        /// <summary>The plugin's output lines (the last 50), for errors.</summary>
        private sealed class StringWriterLines
        {
            private readonly Queue<string> _lines = new();

            public void Add(string line)
            {
                lock (_lines)
                {
                    _lines.Enqueue(line);
                    while (_lines.Count > 50) _lines.Dequeue();
                }
            }

            public string Text()
            {
                lock (_lines) return string.Join(Environment.NewLine, _lines);
            }
        }
    }
}
