using System;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Ssm;
using Npgsql;

namespace BastionTools.Bench
{
    /// <summary>
    /// Resilience benchmark (issue 9): recovery time after a 30 s network blackout, throughput of one connection while
    /// another one's client has stopped reading (against the same transfer alone), and the client's peak memory and time
    /// for 100 MB each way under 5 % drop/duplicate/reorder plus a forced reconnect (against the same transfer without
    /// faults). The sandbox (agent, PostgreSQL, the TCP fault proxy) runs in its own process, so memory figures are the
    /// client's alone; they come from this process's own counters.
    /// </summary>
    internal static class ResilienceBench
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";

        public static async Task<int> RunAsync(string[] args)
        {
            string? sandboxDll = null;
            var megabytes = 100;
            var blackoutSeconds = 30;
            for (var i = 0; i < args.Length; i++)
            {
                if (args[i] == "--sandbox" && i + 1 < args.Length) sandboxDll = args[++i];
                else if (args[i] == "--megabytes" && i + 1 < args.Length) megabytes = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--blackout" && i + 1 < args.Length) blackoutSeconds = int.Parse(args[++i], CultureInfo.InvariantCulture);
            }
            if (sandboxDll == null || !File.Exists(sandboxDll))
            {
                Console.Error.WriteLine("resilience: --sandbox <path to BastionTools.Sandbox.dll> is required");
                return 2;
            }

            using var sandbox = Sandbox.Start(sandboxDll, "--postgres", "--fault-proxy");
            var info = sandbox.Info;
            var pgPort = info.GetProperty("postgres").GetProperty("port").GetInt32();
            var control = info.GetProperty("control").GetString()!.TrimEnd('/');
            using var http = new HttpClient { BaseAddress = new Uri(control + "/") };
            string Conn(int port, int commandTimeout = 300) => sandbox.PostgresConnectionString(port, commandTimeout);
            var creds = new ResolvedCredentials(new BasicAWSCredentials(info.GetProperty("accessKeyId").GetString(), info.GetProperty("secretAccessKey").GetString()), "sandbox", null);
            using var api = new AwsApi(creds, info.GetProperty("region").GetString()!, info.GetProperty("ssm").GetString());

            async Task<PortForwardingSession> Open(int remotePort, DataChannelOptions? options = null)
            {
                var s = new PortForwardingSession(api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Endpoint, RemotePort = remotePort }, options ?? new DataChannelOptions());
                await s.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None).ConfigureAwait(false);
                return s;
            }

            Console.WriteLine($"machine: {Environment.ProcessorCount} cores; sandbox agent and PostgreSQL in another process on the same cores");

            // ---- 1. recovery after a blackout (the agent at its real pace: 1 ms per 1 KiB read) ----
            await Post(http, "agent", "{\"outputReadPauseMs\":1}").ConfigureAwait(false);
            {
                var session = await Open(pgPort).ConfigureAwait(false);
                await using var conn = new NpgsqlConnection(Conn(session.LocalEndPoint!.Port));
                await conn.OpenAsync().ConfigureAwait(false);
                var baseline = new double[50];
                for (var i = 0; i < baseline.Length; i++)
                {
                    var q = Stopwatch.StartNew();
                    await Scalar(conn, "select 1").ConfigureAwait(false);
                    baseline[i] = q.Elapsed.TotalMilliseconds;
                }
                Array.Sort(baseline);
                var clock = Stopwatch.StartNew();
                await Post(http, $"proxy/blackout?seconds={blackoutSeconds}", "").ConfigureAwait(false);
                while (await IsBlackout(http).ConfigureAwait(false)) await Task.Delay(50).ConfigureAwait(false);
                var over = clock.Elapsed;
                var first = Stopwatch.StartNew();
                await Scalar(conn, "select 1").ConfigureAwait(false);
                var recovery = first.Elapsed;
                Console.WriteLine($"recovery after a {blackoutSeconds} s blackout (idle connection held open): first answer {recovery.TotalSeconds,6:F2} s after the network came back " +
                                  $"(baseline select 1 p50 {baseline[baseline.Length / 2]:F2} ms); dead WebSocket found: {session.Channel!.DeadConnectionsDetected}, " +
                                  $"resume attempts {session.Channel.ResumeAttempts}, reconnects {session.Channel.Reconnects} (blackout lasted {over.TotalSeconds:F1} s)");
                await session.StopAsync().ConfigureAwait(false);
            }

            // ---- 2. another connection's throughput while one client has stopped reading ----
            await Post(http, "agent", "{\"outputReadPauseMs\":0}").ConfigureAwait(false);
            await BenchDb.CreateRowsAsync(Conn(pgPort)).ConfigureAwait(false);
            {
                var session = await Open(pgPort).ConfigureAwait(false);
                var port = session.LocalEndPoint!.Port;
                var alone = Throughput.Best(await BenchDb.CopyOutAsync(Conn(port)).ConfigureAwait(false), await BenchDb.CopyOutAsync(Conn(port)).ConfigureAwait(false));
                // The stalled client: a COPY of ~1 GB that reads one line, then nothing.
                var stalled = new NpgsqlConnection(Conn(port, 0));
                await stalled.OpenAsync().ConfigureAwait(false);
                var export = await stalled.BeginTextExportAsync("COPY (SELECT g, repeat('x', 200) FROM generate_series(1, 5000000) g) TO STDOUT").ConfigureAwait(false);
                await export.ReadLineAsync().ConfigureAwait(false);
                var withStalled = await BenchDb.CopyOutAsync(Conn(port)).ConfigureAwait(false);
                var resetAfter = session.Connections.Reset;
                Console.WriteLine($"COPY out of {alone.Bytes / 1e6:F1} MB through the tunnel: alone {alone.MBps,7:F1} MB/s; while another client has stopped reading {withStalled.MBps,7:F1} MB/s " +
                                  $"(ratio {withStalled.MBps / alone.MBps:P0}); the stalled connection was reset: {(resetAfter > 0 ? "yes" : "not yet")}, peak queued {session.Connections.QueuedBytesPeak / 1048576.0:F1} MiB");
                try
                {
                    await stalled.DisposeAsync().ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // Reset, as intended.
                }
                await session.StopAsync().ConfigureAwait(false);
            }

            // ---- 3. 100 MB each way, without and with faults ----
            await Post(http, "agent", "{\"outputReadPauseMs\":0,\"resendAllDue\":true}").ConfigureAwait(false);
            var clean = await Transfer(Open, http, megabytes, faults: null).ConfigureAwait(false);
            var faulty = await Transfer(Open, http, megabytes, faults: "{\"dropRate\":0.05,\"duplicateRate\":0.05,\"reorderRate\":0.05,\"seed\":1234}").ConfigureAwait(false);
            await Post(http, "agent", "{\"outputReadPauseMs\":1,\"resendAllDue\":false}").ConfigureAwait(false);
            Console.WriteLine($"{megabytes} MB each way, no faults:            {clean.Seconds,7:F1} s, client peak working set {clean.PeakWorkingSetMB,7:F0} MB, peak managed heap {clean.PeakManagedMB,6:F0} MB");
            Console.WriteLine($"{megabytes} MB each way, 5 % drop/dup/reorder + 1 kill: {faulty.Seconds,7:F1} s (x{faulty.Seconds / clean.Seconds:F2}), client peak working set {faulty.PeakWorkingSetMB,7:F0} MB, peak managed heap {faulty.PeakManagedMB,6:F0} MB; " +
                              $"reconnects {faulty.Reconnects}, retransmissions {faulty.Retransmissions:N0}, reorder buffer peak {faulty.ReorderPeak:N0} messages, unacknowledged peak {faulty.UnackedPeak:N0}");
            return 0;
        }

        private sealed class Result
        {
            public double Seconds;
            public double PeakWorkingSetMB;
            public double PeakManagedMB;
            public long Reconnects;
            public long Retransmissions;
            public long ReorderPeak;
            public long UnackedPeak;
        }

        private static async Task<Result> Transfer(Func<int, DataChannelOptions?, Task<PortForwardingSession>> open, HttpClient http, int megabytes, string? faults)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            long size = megabytes * 1024L * 1024;
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var destination = Task.Run(async () =>
            {
                using var client = await listener.AcceptTcpClientAsync().ConfigureAwait(false);
                client.NoDelay = true;
                var s = client.GetStream();
                var send = Task.Run(() => WriteRandom(s, size, 11));
                var got = await ReadAll(s, size).ConfigureAwait(false);
                await send.ConfigureAwait(false);
                return got;
            });
            var session = await open(((IPEndPoint)listener.LocalEndpoint).Port, null).ConfigureAwait(false);
            if (faults != null) await Post(http, $"sessions/{session.SessionId}/faults", faults).ConfigureAwait(false);
            var peakManaged = 0L;
            var peakWorkingSet = 0L;
            var sampling = new CancellationTokenSource();
            var sampler = Task.Run(async () =>
            {
                while (!sampling.IsCancellationRequested)
                {
                    peakManaged = Math.Max(peakManaged, GC.GetTotalMemory(false));
                    peakWorkingSet = Math.Max(peakWorkingSet, Environment.WorkingSet);
                    try
                    {
                        await Task.Delay(50, sampling.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                    }
                }
            });
            var clock = Stopwatch.StartNew();
            using var local = new TcpClient { NoDelay = true };
            await local.ConnectAsync(IPAddress.Loopback, session.LocalEndPoint!.Port).ConfigureAwait(false);
            var stream = local.GetStream();
            var up = Task.Run(() => WriteRandom(stream, size, 22));
            var down = Task.Run(() => ReadAll(stream, size));
            if (faults != null)
            {
                while (session.Connections.BytesIn + session.Connections.BytesOut < size && !down.IsCompleted) await Task.Delay(50).ConfigureAwait(false);
                await Post(http, $"sessions/{session.SessionId}/kill", "").ConfigureAwait(false);
            }
            try
            {
                await Task.WhenAll(up, down, destination).ConfigureAwait(false);
            }
            catch (Exception)
            {
                foreach (var e in session.Events.Snapshot()) Console.Error.WriteLine("  event: " + e);
                Console.Error.WriteLine($"  queued peak {session.Connections.QueuedBytesPeak}, resets {session.Connections.Reset}");
                throw;
            }
            var seconds = clock.Elapsed.TotalSeconds;
            sampling.Cancel();
            await sampler.ConfigureAwait(false);
            var ch = session.Channel!;
            var result = new Result
            {
                Seconds = seconds,
                PeakWorkingSetMB = peakWorkingSet / 1048576.0,
                PeakManagedMB = peakManaged / 1048576.0,
                Reconnects = ch.Reconnects,
                Retransmissions = ch.Retransmissions,
                ReorderPeak = ch.ReorderBufferPeak,
                UnackedPeak = ch.UnacknowledgedPeak,
            };
            if (down.Result != size || destination.Result != size) throw new InvalidOperationException($"lost bytes: {down.Result} / {destination.Result} of {size}");
            await session.StopAsync().ConfigureAwait(false);
            return result;
        }

        private static async Task WriteRandom(NetworkStream stream, long size, int seed)
        {
            var rnd = new Random(seed);
            var buffer = new byte[64 * 1024];
            for (long sent = 0; sent < size;)
            {
                var n = (int)Math.Min(buffer.Length, size - sent);
                rnd.NextBytes(buffer.AsSpan(0, n));
                await stream.WriteAsync(buffer.AsMemory(0, n)).ConfigureAwait(false);
                sent += n;
            }
        }

        private static async Task<long> ReadAll(NetworkStream stream, long size)
        {
            var buffer = new byte[64 * 1024];
            long total = 0;
            int n;
            while (total < size && (n = await stream.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, size - total))).ConfigureAwait(false)) > 0) total += n;
            return total;
        }

        private static async Task Post(HttpClient http, string path, string body)
        {
            using var content = new StringContent(body, Encoding.UTF8, "application/json");
            using var response = await http.PostAsync(path, content).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"POST {path}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync().ConfigureAwait(false)}");
        }

        private static async Task<bool> IsBlackout(HttpClient http)
        {
            using var doc = JsonDocument.Parse(await http.GetStringAsync("proxy").ConfigureAwait(false));
            return doc.RootElement.GetProperty("isBlackout").GetBoolean();
        }

        private static async Task<object?> Scalar(NpgsqlConnection c, string sql)
        {
            await using var cmd = new NpgsqlCommand(sql, c);
            return await cmd.ExecuteScalarAsync().ConfigureAwait(false);
        }
    }
}
