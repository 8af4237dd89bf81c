using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
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
    /// Tunnel benchmark: PostgreSQL through BastionTools' data channel (sandbox agent on loopback) against a direct
    /// loopback connection to the same server, measured in the same run. The sandbox runs in its own process so
    /// the client's memory is the client's alone.
    /// </summary>
    internal static class TunnelBench
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";

        public static async Task<int> RunAsync(string[] args)
        {
            string? sandboxDll = null;
            var roundTrips = 2000;
            var maxPayload = 1024;
            for (var i = 0; i < args.Length; i++)
            {
                if (args[i] == "--sandbox" && i + 1 < args.Length) sandboxDll = args[++i];
                else if (args[i] == "--round-trips" && i + 1 < args.Length) roundTrips = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--max-payload" && i + 1 < args.Length) maxPayload = int.Parse(args[++i], CultureInfo.InvariantCulture);
            }
            if (sandboxDll == null || !File.Exists(sandboxDll))
            {
                Console.Error.WriteLine("tunnel: --sandbox <path to BastionTools.Sandbox.dll> is required");
                return 2;
            }

            // The agent without its 1 ms pause per 1 KiB read: the client is measured, not the agent's ~1 MB/s cap.
            using var sandbox = Sandbox.Start(sandboxDll, "--postgres", "--output-read-pause-ms", "0");
            var info = sandbox.Info;
            var pg = info.GetProperty("postgres");
            var pgPort = pg.GetProperty("port").GetInt32();
            string Conn(int port) => sandbox.PostgresConnectionString(port);

            var creds = new ResolvedCredentials(new BasicAWSCredentials(info.GetProperty("accessKeyId").GetString(), info.GetProperty("secretAccessKey").GetString()), "sandbox", null);
            using var api = new AwsApi(creds, info.GetProperty("region").GetString()!, info.GetProperty("ssm").GetString());

            // Setup data: about 12 MB of rows.
            await BenchDb.CreateRowsAsync(Conn(pgPort)).ConfigureAwait(false);

            var memoryBefore = Snapshot();
            var sw = Stopwatch.StartNew();
            var request = new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Endpoint, RemotePort = pgPort };
            // --max-payload N: input messages of N bytes instead of the official 1024 (what the sandbox agent accepts;
            // the service's limit is not known, so the module keeps 1024).
            var session = new PortForwardingSession(api, request, new DataChannelOptions { MaxPayloadSize = maxPayload });
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None).ConfigureAwait(false);
            var tunnelPort = session.LocalEndPoint!.Port;
            await using (var first = new NpgsqlConnection(Conn(tunnelPort)))
            {
                await first.OpenAsync().ConfigureAwait(false);
                await using var cmd = new NpgsqlCommand("select 1", first);
                await cmd.ExecuteScalarAsync().ConfigureAwait(false);
            }
            var toFirstRow = sw.Elapsed;
            Console.WriteLine($"start session -> first row of SELECT 1           {toFirstRow.TotalMilliseconds,10:F0} ms (StartSession, WebSocket, handshake, connect, query)");

            // COPY out and in, direct then tunnel (alternating twice, best of two).
            var outDirect = Throughput.Best(await BenchDb.CopyOutAsync(Conn(pgPort)).ConfigureAwait(false), await BenchDb.CopyOutAsync(Conn(pgPort)).ConfigureAwait(false));
            var outTunnel = Throughput.Best(await BenchDb.CopyOutAsync(Conn(tunnelPort)).ConfigureAwait(false), await BenchDb.CopyOutAsync(Conn(tunnelPort)).ConfigureAwait(false));
            var data = await CopyOutDataAsync(Conn(pgPort)).ConfigureAwait(false);
            var inDirect = Throughput.Best(await CopyInAsync(Conn(pgPort), data).ConfigureAwait(false), await CopyInAsync(Conn(pgPort), data).ConfigureAwait(false));
            var inTunnel = Throughput.Best(await CopyInAsync(Conn(tunnelPort), data).ConfigureAwait(false), await CopyInAsync(Conn(tunnelPort), data).ConfigureAwait(false));
            Console.WriteLine($"COPY out ({outDirect.Bytes / 1e6:F1} MB)  direct {outDirect.MBps,8:F1} MB/s   tunnel {outTunnel.MBps,8:F1} MB/s   ratio {outTunnel.MBps / outDirect.MBps:P0}");
            Console.WriteLine($"COPY in  ({inDirect.Bytes / 1e6:F1} MB)  direct {inDirect.MBps,8:F1} MB/s   tunnel {inTunnel.MBps,8:F1} MB/s   ratio {inTunnel.MBps / inDirect.MBps:P0}");

            var rtDirect = await RoundTripsAsync(Conn(pgPort), roundTrips).ConfigureAwait(false);
            var rtTunnel = await RoundTripsAsync(Conn(tunnelPort), roundTrips).ConfigureAwait(false);
            Console.WriteLine($"SELECT 1 round trip ({roundTrips})   direct p50 {Pct(rtDirect, 50),7:F3} ms p99 {Pct(rtDirect, 99),7:F3} ms   tunnel p50 {Pct(rtTunnel, 50),7:F3} ms p99 {Pct(rtTunnel, 99),7:F3} ms   added p50 {Pct(rtTunnel, 50) - Pct(rtDirect, 50),7:F3} ms");

            // Memory with 64 open connections through one tunnel.
            var idle = Snapshot();
            var open = new List<NpgsqlConnection>();
            for (var i = 0; i < 64; i++)
            {
                var c = new NpgsqlConnection(Conn(tunnelPort));
                await c.OpenAsync().ConfigureAwait(false);
                await using (var cmd = new NpgsqlCommand("select 1", c)) await cmd.ExecuteScalarAsync().ConfigureAwait(false);
                open.Add(c);
            }
            var with64 = Snapshot();
            Console.WriteLine($"client memory: before session {memoryBefore.WorkingSetMB:F1} MB; session idle {idle.WorkingSetMB:F1} MB (managed {idle.ManagedMB:F1} MB); 64 open connections {with64.WorkingSetMB:F1} MB (managed {with64.ManagedMB:F1} MB), +{(with64.WorkingSetMB - idle.WorkingSetMB) / 64 * 1024:F0} KB per connection");
            foreach (var c in open) await c.DisposeAsync().ConfigureAwait(false);

            Console.WriteLine($"data channel: {session.Channel!.MessagesSent:N0} messages sent, {session.Channel.MessagesReceived:N0} received, {session.Channel.Retransmissions} retransmissions");
            await session.StopAsync().ConfigureAwait(false);
            return 0;
        }

        private static async Task<byte[]> CopyOutDataAsync(string conn)
        {
            await using var c = new NpgsqlConnection(conn);
            await c.OpenAsync().ConfigureAwait(false);
            using var ms = new MemoryStream();
            await using (var raw = await c.BeginRawBinaryCopyAsync("COPY bench_rows TO STDOUT (FORMAT binary)").ConfigureAwait(false))
            {
                await raw.CopyToAsync(ms).ConfigureAwait(false);
            }
            return ms.ToArray();
        }

        private static async Task<Throughput> CopyInAsync(string conn, byte[] data)
        {
            await using var c = new NpgsqlConnection(conn);
            await c.OpenAsync().ConfigureAwait(false);
            await BenchDb.ExecAsync(c, "truncate bench_in").ConfigureAwait(false);
            var sw = Stopwatch.StartNew();
            await using (var raw = await c.BeginRawBinaryCopyAsync("COPY bench_in FROM STDIN (FORMAT binary)").ConfigureAwait(false))
            {
                for (var off = 0; off < data.Length; off += 64 * 1024)
                {
                    await raw.WriteAsync(data, off, Math.Min(64 * 1024, data.Length - off)).ConfigureAwait(false);
                }
            }
            return new Throughput(data.Length, sw.Elapsed);
        }

        private static async Task<double[]> RoundTripsAsync(string conn, int count)
        {
            await using var c = new NpgsqlConnection(conn);
            await c.OpenAsync().ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand("select 1", c);
            for (var i = 0; i < 100; i++) await cmd.ExecuteScalarAsync().ConfigureAwait(false);
            var samples = new double[count];
            for (var i = 0; i < count; i++)
            {
                var sw = Stopwatch.StartNew();
                await cmd.ExecuteScalarAsync().ConfigureAwait(false);
                samples[i] = sw.Elapsed.TotalMilliseconds;
            }
            Array.Sort(samples);
            return samples;
        }

        private static double Pct(double[] sorted, int p) => sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(p / 100.0 * sorted.Length) - 1)];

        private readonly struct Memory
        {
            public Memory(double ws, double managed)
            {
                WorkingSetMB = ws;
                ManagedMB = managed;
            }

            public double WorkingSetMB { get; }
            public double ManagedMB { get; }
        }

        private static Memory Snapshot()
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            using var p = Process.GetCurrentProcess();
            return new Memory(p.WorkingSet64 / 1048576.0, GC.GetTotalMemory(false) / 1048576.0);
        }
    }
}
