using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using Npgsql;

namespace BastionTools.Bench
{
    /// <summary>
    /// <c>BastionTools.Bench plugin-check --sandbox &lt;dll&gt; --plugin &lt;session-manager-plugin&gt;</c>: the official
    /// client against the agent double, end to end, to check the double against a client it was not written with (the
    /// module's own tests only meet clients written here). The double runs as the tests run it (the real agent's 1 ms
    /// pause per read, not the bench's fast mode). Each check prints PASS or FAIL with what it saw; the exit code is the
    /// number of failures. Not part of the test suite: the plugin is not on NuGet or npm, and is built from its source
    /// with Go (bench/README.md).
    /// </summary>
    internal static class PluginCheck
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";
        private const string Bastion = "i-0a1b2c3d4e5f60001";       // agent 3.3.2299.0: smux (mux) port sessions
        private const string LegacyBastion = "i-0a1b2c3d4e5f60002"; // agent 3.0.190.0: basic port sessions

        public static async Task<int> RunAsync(string[] args)
        {
            string? sandboxDll = null, pluginPath = null;
            var rows = 100_000;
            for (var i = 0; i < args.Length; i++)
            {
                if (args[i] == "--sandbox" && i + 1 < args.Length) sandboxDll = args[++i];
                else if (args[i] == "--plugin" && i + 1 < args.Length) pluginPath = args[++i];
                else if (args[i] == "--rows" && i + 1 < args.Length) rows = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else
                {
                    Console.Error.WriteLine("plugin-check: unknown argument '" + args[i] + "'");
                    return 2;
                }
            }
            if (sandboxDll == null || !File.Exists(sandboxDll) || pluginPath == null || !File.Exists(pluginPath) || rows < 1)
            {
                Console.Error.WriteLine("plugin-check: --sandbox <BastionTools.Sandbox.dll> and --plugin <session-manager-plugin> are required; --rows must be positive");
                return 2;
            }
            var tools = ConcurrencyBench.PgTools.Find();
            if (tools == null)
            {
                Console.Error.WriteLine("plugin-check: pgbench and psql were not found: install the postgresql package.");
                return 2;
            }
            var work = Directory.CreateTempSubdirectory("bastiontools-plugin-check-");
            try
            {
                return await RunCoreAsync(sandboxDll, pluginPath, tools, work.FullName, rows).ConfigureAwait(false);
            }
            finally
            {
                try
                {
                    work.Delete(true);
                }
                catch (IOException)
                {
                }
            }
        }

        private static async Task<int> RunCoreAsync(string sandboxDll, string pluginPath, ConcurrencyBench.PgTools tools, string work, int rows)
        {
            using var sandbox = Sandbox.Start(sandboxDll, "--postgres");
            var info = sandbox.Info;
            var pg = info.GetProperty("postgres");
            var pgPort = pg.GetProperty("port").GetInt32();
            var db = new ConcurrencyBench.PgTarget(pg.GetProperty("user").GetString()!, pg.GetProperty("password").GetString()!, pg.GetProperty("database").GetString()!);
            var region = info.GetProperty("region").GetString()!;
            var ssm = info.GetProperty("ssm").GetString()!;
            var accessKey = info.GetProperty("accessKeyId").GetString()!;
            var secretKey = info.GetProperty("secretAccessKey").GetString()!;
            var creds = new ResolvedCredentials(new BasicAWSCredentials(accessKey, secretKey), "sandbox", null);
            using var api = new AwsApi(creds, region, ssm);
            var control = new Uri(info.GetProperty("control").GetString()!);
            Console.WriteLine($"official plugin {OfficialPlugin.VersionOf(pluginPath)} against the agent double (its default pacing: 1 ms after every read of <= 1 KiB); PostgreSQL {pg.GetProperty("serverVersion").GetString()}");

            await using (var c = new NpgsqlConnection(sandbox.PostgresConnectionString(pgPort)))
            {
                await c.OpenAsync().ConfigureAwait(false);
                await BenchDb.ExecAsync(c, $"drop table if exists check_rows; create table check_rows as select g as id, md5(g::text) as payload from generate_series(1, {rows}) g; " +
                                           "drop table if exists check_in; create table check_in (like check_rows)").ConfigureAwait(false);
            }
            var failures = 0;
            void Report(string check, bool ok, string detail)
            {
                if (!ok) failures++;
                Console.WriteLine($"{(ok ? "PASS" : "FAIL")}  {check}: {detail}");
            }
            async Task<System.Text.Json.JsonElement> Session(string id) =>
                await sandbox.GetJsonAsync(new Uri(control, "sessions/" + Uri.EscapeDataString(id))).ConfigureAwait(false);
            // The double's session state once it reads Terminated, or the last it read within the timeout.
            async Task<string> StateOnceTerminatedAsync(string id, TimeSpan timeout) =>
                (await PollAsync(async () => (await Session(id).ConfigureAwait(false)).GetProperty("state").GetString() ?? "", state => state == "Terminated", timeout).ConfigureAwait(false)).Last;

            // ---- 1. mux: the agent of 3.3 with a client of 1.2: smux over the data channel ----
            using (var plugin = await OfficialPlugin.StartAsync(pluginPath, api, region, ssm, accessKey, secretKey, Bastion, Endpoint, pgPort, TimeSpan.FromSeconds(30)).ConfigureAwait(false))
            {
                var seen = await Session(plugin.SessionId).ConfigureAwait(false);
                Report("mux handshake", seen.GetProperty("plugin").GetString() == "mux",
                       $"the double's port plugin '{seen.GetProperty("plugin")}', client version {seen.GetProperty("clientVersion")}, smux keepalive {seen.GetProperty("smuxKeepAlive")}");

                var (exit, stdout, stderr) = await Pgbench(tools, db, plugin.Port, work, clients: 8, seconds: 3).ConfigureAwait(false);
                var processed = Processed(stdout);
                Report("mux, 8 concurrent clients", exit == 0 && processed > 0, exit == 0 ? $"pgbench 'select 1' for 3 s: {processed:N0} transactions, none failed" : $"pgbench failed ({exit}): {Last(stderr)}");

                var viaPlugin = Path.Combine(work, "out-plugin.tsv");
                var direct = Path.Combine(work, "out-direct.tsv");
                var sw = Stopwatch.StartNew();
                var copyOut = await Psql(tools, db, plugin.Port, $"\\copy check_rows to '{viaPlugin}'").ConfigureAwait(false);
                var outTime = sw.Elapsed;
                await Psql(tools, db, pgPort, $"\\copy check_rows to '{direct}'").ConfigureAwait(false);
                var same = copyOut == null && File.Exists(viaPlugin) && Hash(viaPlugin) == Hash(direct);
                Report("mux, COPY out", same, copyOut ?? $"{new FileInfo(viaPlugin).Length / 1e6:F1} MB in {outTime.TotalSeconds:F1} s, {(same ? "byte for byte what a direct COPY wrote" : "NOT what a direct COPY wrote")}");

                sw.Restart();
                var copyIn = await Psql(tools, db, plugin.Port, $"\\copy check_in from '{direct}'").ConfigureAwait(false);
                var inTime = sw.Elapsed;
                var (sourceHash, sourceCount) = await TableHashAsync(sandbox, pgPort, "check_rows").ConfigureAwait(false);
                var (copiedHash, copiedCount) = await TableHashAsync(sandbox, pgPort, "check_in").ConfigureAwait(false);
                Report("mux, COPY in", copyIn == null && copiedCount == sourceCount && copiedHash == sourceHash,
                       copyIn ?? $"{copiedCount:N0} of {sourceCount:N0} rows in {inTime.TotalSeconds:F1} s, md5 of the table {(copiedHash == sourceHash ? "equal" : "different")}");

                // The double drops the WebSocket: the plugin calls ResumeSession (signed by the AWS SDK for Go) and reconnects.
                var before = await Session(plugin.SessionId).ConfigureAwait(false);
                await sandbox.PostAsync(new Uri(control, "sessions/" + Uri.EscapeDataString(plugin.SessionId) + "/kill")).ConfigureAwait(false);
                var after = (await PollAsync(() => Psql(tools, db, plugin.Port, "select 1"), error => error == null, TimeSpan.FromSeconds(60)).ConfigureAwait(false)).Last;
                var resumed = await Session(plugin.SessionId).ConfigureAwait(false);
                Report("resume after a dropped connection", after == null && Count(resumed, "connections") > Count(before, "connections"),
                       after ?? $"the next query answered through the plugin's new connection (the double's session: connections {Count(before, "connections")} -> {Count(resumed, "connections")}, kills {Count(resumed, "kills")})");
                Report("every message's digest", Count(resumed, "digestFailures") == 0 && Count(resumed, "messagesReceived") > 0,
                       $"{Count(resumed, "messagesReceived"):N0} messages from the plugin, {Count(resumed, "digestFailures")} digest failures; {Count(resumed, "retransmitted"):N0} resent by the double, {Count(resumed, "duplicatesReceived"):N0} duplicates received");

                // Ctrl-C: the plugin sends the TerminateSession flag and exits; the double ends the session.
                var sessionId = plugin.SessionId;
                var exited = await plugin.InterruptAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                var ended = await StateOnceTerminatedAsync(sessionId, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                Report("Ctrl-C ends the session", exited != null && ended == "Terminated",
                       $"the plugin {(exited == null ? "did not exit" : "exited " + exited)}; the double's session is {ended}");
            }

            // ---- 1b. mux to a port nobody listens on: the agent's ConnectToPortError flag, the session goes on ----
            var closedPort = OfficialPlugin.FreePort();
            using (var plugin = await OfficialPlugin.StartAsync(pluginPath, api, region, ssm, accessKey, secretKey, Bastion, "localhost", closedPort, TimeSpan.FromSeconds(30)).ConfigureAwait(false))
            {
                var refused = await Psql(tools, db, plugin.Port, "select 1").ConfigureAwait(false);
                var told = (await PollAsync(() => Task.FromResult(plugin.Output.Contains("Connection to destination port failed", StringComparison.Ordinal)), said => said, TimeSpan.FromSeconds(10)).ConfigureAwait(false)).Done;
                var still = await Session(plugin.SessionId).ConfigureAwait(false);
                Report("mux, the destination refuses", refused != null && told && still.GetProperty("state").GetString() == "Connected",
                       $"psql {(refused == null ? "connected (it should not have)" : "failed")}; the plugin {(told ? "printed 'Connection to destination port failed' (the flag, uint32 3 big-endian)" : "did not print the flag's message")}; the session is {still.GetProperty("state")}");
            }

            // ---- 2. basic: the agent of 3.0.190 has no smux; one TCP connection at a time ----
            using (var plugin = await OfficialPlugin.StartAsync(pluginPath, api, region, ssm, accessKey, secretKey, LegacyBastion, Endpoint, pgPort, TimeSpan.FromSeconds(30)).ConfigureAwait(false))
            {
                var seen = await Session(plugin.SessionId).ConfigureAwait(false);
                Report("basic handshake", seen.GetProperty("plugin").GetString() == "basic", $"the double's port plugin '{seen.GetProperty("plugin")}' for agent 3.0.190.0");
                var small = Path.Combine(work, "basic.tsv");
                var direct = Path.Combine(work, "basic-direct.tsv");
                var copyOut = await Psql(tools, db, plugin.Port, $"\\copy (select * from check_rows where id <= 5000) to '{small}'").ConfigureAwait(false);
                await Psql(tools, db, pgPort, $"\\copy (select * from check_rows where id <= 5000) to '{direct}'").ConfigureAwait(false);
                var same = copyOut == null && File.Exists(small) && Hash(small) == Hash(direct);
                Report("basic, COPY out", same, copyOut ?? $"{new FileInfo(small).Length / 1e3:F0} KB, {(same ? "byte for byte what a direct COPY wrote" : "NOT what a direct COPY wrote")}");
                // A second connection after the first closed: the agent dials the destination again.
                var again = await Psql(tools, db, plugin.Port, "select 1").ConfigureAwait(false);
                Report("basic, a second connection", again == null, again ?? "a new local connection after the first ended was answered");
            }

            // ---- 3. shell (no document): the plugin in a terminal, as a user runs it (tmux gives it one) ----
            if (!OperatingSystem.IsWindows() && Which("tmux") is { } tmux)
            {
                var shell = await api.StartSessionAsync(Bastion, null, new Dictionary<string, List<string>>(), null, default).ConfigureAwait(false);
                var tmuxName = "bastiontools-plugin-check-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
                var launch = new ProcessStartInfo(tmux) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
                // A 120x40 window: the plugin sends the size, the double sets it on the shell's terminal (TIOCSWINSZ).
                foreach (var a in new[] { "new-session", "-d", "-s", tmuxName, "-x", "120", "-y", "40",
                                          "-e", "AWS_SSM_START_SESSION_RESPONSE=" + OfficialPlugin.ResponseJson(shell),
                                          "-e", "AWS_ACCESS_KEY_ID=" + accessKey, "-e", "AWS_SECRET_ACCESS_KEY=" + secretKey,
                                          "-e", "HOME=" + OfficialPlugin.Home(),
                                          pluginPath, "AWS_SSM_START_SESSION_RESPONSE", region, "StartSession", "",
                                          OfficialPlugin.RequestJson(Bastion, null, new Dictionary<string, List<string>>()), ssm }) launch.ArgumentList.Add(a);
                var (started, _, startError) = await ConcurrencyBench.RunAsync(launch).ConfigureAwait(false);
                try
                {
                    if (started != 0)
                    {
                        Report("shell", false, "tmux could not start the plugin: " + Last(startError));
                    }
                    else
                    {
                        var prompt = await PollAsync(() => PaneAsync(tmux, tmuxName), text => text.Contains("Starting session with SessionId", StringComparison.Ordinal) && text.TrimEnd().EndsWith("$", StringComparison.Ordinal), TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                        await Tmux(tmux, "send-keys", "-t", tmuxName, "echo hello-$((6*7)); stty size", "Enter").ConfigureAwait(false);
                        var answered = await PollAsync(() => PaneAsync(tmux, tmuxName), text => text.Contains("hello-42", StringComparison.Ordinal) && text.Contains("40 120", StringComparison.Ordinal), TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                        Report("shell, a command and the terminal's size", prompt.Done && answered.Done,
                               answered.Done ? "the shell ran 'echo hello-$((6*7)); stty size': hello-42, 40 120 (the plugin's size payload)" : "the pane read: " + OneLine(answered.Last));
                        await Tmux(tmux, "send-keys", "-t", tmuxName, "exit", "Enter").ConfigureAwait(false);
                        var ended = await StateOnceTerminatedAsync(shell.SessionId, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                        var gone = (await PollAsync(() => Tmux(tmux, "has-session", "-t", tmuxName), exit => exit != 0, TimeSpan.FromSeconds(30)).ConfigureAwait(false)).Done;
                        Report("shell, exit ends the session", ended == "Terminated" && gone, $"the double's session is {ended}; the plugin {(gone ? "exited" : "is still running")}");
                    }
                }
                finally
                {
                    await Tmux(tmux, "kill-session", "-t", tmuxName).ConfigureAwait(false);
                }
            }
            else
            {
                Console.WriteLine("SKIP  shell: needs tmux (a terminal for the plugin); not counted");
            }

            // ---- 4. a non-interactive command (AWS-StartNonInteractiveCommand): output after it ended, then the session ends ----
            {
                var parameters = new Dictionary<string, List<string>> { ["command"] = new() { "sh -c 'echo out-$((6*7)); echo err-7 >&2'" } };
                const string document = "AWS-StartNonInteractiveCommand";
                var command = await api.StartSessionAsync(Bastion, document, parameters, null, default).ConfigureAwait(false);
                var psi = new ProcessStartInfo(pluginPath) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
                psi.Environment["AWS_SSM_START_SESSION_RESPONSE"] = OfficialPlugin.ResponseJson(command);
                psi.Environment["AWS_ACCESS_KEY_ID"] = accessKey;
                psi.Environment["AWS_SECRET_ACCESS_KEY"] = secretKey;
                psi.Environment["HOME"] = OfficialPlugin.Home();
                foreach (var a in new[] { "AWS_SSM_START_SESSION_RESPONSE", region, "StartSession", "", OfficialPlugin.RequestJson(Bastion, document, parameters), ssm }) psi.ArgumentList.Add(a);
                // Its standard input stays open, as a terminal's would: at end of input the plugin gives up on the session
                // ("Cannot perform start session: EOF"), whether or not the command's output has come.
                using var p = Process.Start(psi)!;
                var stdout = p.StandardOutput.ReadToEndAsync();
                var stderr = p.StandardError.ReadToEndAsync();
                using var cts = new System.Threading.CancellationTokenSource(TimeSpan.FromSeconds(30));
                var exited = true;
                try
                {
                    await p.WaitForExitAsync(cts.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    exited = false;
                    p.Kill(entireProcessTree: true);
                }
                p.StandardInput.Close();
                var output = await stdout.ConfigureAwait(false) + await stderr.ConfigureAwait(false);
                var ended = await StateOnceTerminatedAsync(command.SessionId, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                var printed = output.Contains("out-42", StringComparison.Ordinal) && output.Contains("err-7", StringComparison.Ordinal);
                Report("non-interactive command", exited && printed && ended == "Terminated",
                       exited ? $"the plugin {(printed ? "printed the command's output and error (out-42, err-7)" : "did not print the command's output: " + OneLine(output))}, then exited {p.ExitCode}; the double's session is {ended}"
                              : "the plugin had not exited after 30 s: " + OneLine(output));
            }

            Console.WriteLine(failures == 0 ? "all checks passed" : $"{failures} check(s) failed");
            return failures;
        }

        private static string? Which(string tool) =>
            (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
                .Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists);

        private static async Task<int> Tmux(string tmux, params string[] args)
        {
            var psi = new ProcessStartInfo(tmux) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in args) psi.ArgumentList.Add(a);
            return (await ConcurrencyBench.RunAsync(psi).ConfigureAwait(false)).Exit;
        }

        private static async Task<string> PaneAsync(string tmux, string name)
        {
            var psi = new ProcessStartInfo(tmux) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "capture-pane", "-p", "-t", name }) psi.ArgumentList.Add(a);
            return (await ConcurrencyBench.RunAsync(psi).ConfigureAwait(false)).Stdout;
        }

        /// <summary>Polls <paramref name="get"/> every 100 ms until <paramref name="done"/> holds or the timeout passes; the last value read.</summary>
        private static async Task<(bool Done, T Last)> PollAsync<T>(Func<Task<T>> get, Func<T, bool> done, TimeSpan timeout)
        {
            var clock = Stopwatch.StartNew();
            while (true)
            {
                var value = await get().ConfigureAwait(false);
                if (done(value)) return (true, value);
                if (clock.Elapsed > timeout) return (false, value);
                await Task.Delay(100).ConfigureAwait(false);
            }
        }

        private static string OneLine(string text) => string.Join(" | ", text.Split('\n').Select(l => l.TrimEnd()).Where(l => l.Length > 0));

        private static long Count(System.Text.Json.JsonElement session, string counter) =>
            session.TryGetProperty(counter, out var c) && c.ValueKind == System.Text.Json.JsonValueKind.Number ? c.GetInt64() : -1;

        /// <summary>psql running one command; null when it succeeded, else what it said.</summary>
        private static async Task<string?> Psql(ConcurrencyBench.PgTools tools, ConcurrencyBench.PgTarget db, int port, string command)
        {
            var psi = db.StartInfo(tools.Psql, port);
            foreach (var a in new[] { "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command }) psi.ArgumentList.Add(a);
            var (exit, _, stderr) = await ConcurrencyBench.RunAsync(psi).ConfigureAwait(false);
            return exit == 0 ? null : $"psql failed ({exit}): {Last(stderr)}";
        }

        private static async Task<(int Exit, string Stdout, string Stderr)> Pgbench(ConcurrencyBench.PgTools tools, ConcurrencyBench.PgTarget db, int port, string work, int clients, int seconds)
        {
            var script = Path.Combine(work, "select1.sql");
            File.WriteAllText(script, "select 1;\n");
            var psi = db.StartInfo(tools.Pgbench, port);
            foreach (var a in new[] { "-n", "-f", script, "-c", clients.ToString(CultureInfo.InvariantCulture), "-j", "2", "-T", seconds.ToString(CultureInfo.InvariantCulture) }) psi.ArgumentList.Add(a);
            return await ConcurrencyBench.RunAsync(psi).ConfigureAwait(false);
        }

        private static long Processed(string pgbenchOutput)
        {
            foreach (var line in pgbenchOutput.Split('\n'))
            {
                const string prefix = "number of transactions actually processed:";
                if (line.StartsWith(prefix, StringComparison.Ordinal))
                    return long.Parse(line.Substring(prefix.Length).Trim().Split(' ', '/')[0], NumberStyles.None, CultureInfo.InvariantCulture);
            }
            return 0;
        }

        private static async Task<(string Hash, long Count)> TableHashAsync(Sandbox sandbox, int pgPort, string table)
        {
            await using var c = new NpgsqlConnection(sandbox.PostgresConnectionString(pgPort));
            await c.OpenAsync().ConfigureAwait(false);
            // The table name is one of this file's two constants, quoted as an identifier.
            await using var cmd = new NpgsqlCommand($"select coalesce(md5(string_agg(id::text || ':' || payload, ',' order by id)), ''), count(*) from \"{table}\"", c);
            await using var r = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
            await r.ReadAsync().ConfigureAwait(false);
            return (r.GetString(0), r.GetInt64(1));
        }

        private static string Hash(string path)
        {
            using var f = File.OpenRead(path);
            return Convert.ToHexString(SHA256.HashData(f));
        }

        private static string Last(string text) => text.Trim().Split('\n').LastOrDefault()?.Trim() ?? "";
    }
}
