using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Text.Json;
using System.Threading.Tasks;
using Npgsql;

namespace BastionTools.Bench
{
    /// <summary>The sandbox in a process of its own (so the client's memory is the client's alone).</summary>
    internal sealed class Sandbox : IDisposable
    {
        private Sandbox(Process process, JsonElement info)
        {
            Process = process;
            Info = info;
        }

        public Process Process { get; }
        public JsonElement Info { get; }

        public static Sandbox Start(string dll, params string[] arguments) => Start(dll, null, arguments);

        /// <summary>Starts the sandbox with extra environment variables for its process only.</summary>
        public static Sandbox Start(string dll, IReadOnlyDictionary<string, string>? environment, params string[] arguments)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = false, UseShellExecute = false };
            if (environment != null)
            {
                foreach (var (name, value) in environment) psi.Environment[name] = value;
            }
            psi.ArgumentList.Add(dll);
            foreach (var a in arguments) psi.ArgumentList.Add(a);
            var p = Process.Start(psi)!;
            var line = p.StandardOutput.ReadLine() ?? throw new InvalidOperationException("The sandbox printed nothing.");
            return new Sandbox(p, JsonDocument.Parse(line).RootElement.Clone());
        }

        private static readonly System.Net.Http.HttpClient Control = new() { Timeout = TimeSpan.FromSeconds(30) };

        /// <summary>
        /// Bytes the sandbox process has allocated so far (its <c>GET /control/process</c>); -1 when the sandbox has no
        /// such endpoint (an older build).
        /// </summary>
        public long AllocatedBytes()
        {
            try
            {
                var uri = new Uri(new Uri(Info.GetProperty("control").GetString()!), "process");
                var json = Control.GetStringAsync(uri).GetAwaiter().GetResult();
                using var doc = JsonDocument.Parse(json);
                return doc.RootElement.TryGetProperty("allocatedBytes", out var a) ? a.GetInt64() : -1;
            }
            catch (Exception ex) when (ex is System.Net.Http.HttpRequestException || ex is JsonException || ex is InvalidOperationException || ex is TaskCanceledException)
            {
                return -1;
            }
        }

        /// <summary>POSTs to a control endpoint of the sandbox; throws unless it answers 2xx.</summary>
        public async Task PostAsync(Uri uri)
        {
            using var response = await Control.PostAsync(uri, null).ConfigureAwait(false);
            response.EnsureSuccessStatusCode();
        }

        /// <summary>GETs a control endpoint of the sandbox and parses its JSON answer.</summary>
        public async Task<JsonElement> GetJsonAsync(Uri uri)
        {
            var json = await Control.GetStringAsync(uri).ConfigureAwait(false);
            using var doc = JsonDocument.Parse(json);
            return doc.RootElement.Clone();
        }

        /// <summary>A connection string to the sandbox's PostgreSQL, directly (its port) or through a tunnel (the listener's).</summary>
        public string PostgresConnectionString(int port, int commandTimeout = 120)
        {
            var pg = Info.GetProperty("postgres");
            return new NpgsqlConnectionStringBuilder
            {
                Host = "127.0.0.1",
                Port = port,
                Username = pg.GetProperty("user").GetString(),
                Password = pg.GetProperty("password").GetString(),
                Database = pg.GetProperty("database").GetString(),
                Pooling = false,
                SslMode = SslMode.Disable,
                Timeout = 120,
                CommandTimeout = commandTimeout,
            }.ConnectionString;
        }

        public void Dispose()
        {
            try
            {
                Process.StandardInput.Close();
                if (!Process.WaitForExit(20000)) Process.Kill(true);
            }
            catch (InvalidOperationException)
            {
            }
        }
    }

    internal readonly struct Throughput
    {
        public Throughput(long bytes, TimeSpan elapsed)
        {
            Bytes = bytes;
            Elapsed = elapsed;
        }

        public long Bytes { get; }
        public TimeSpan Elapsed { get; }
        public double MBps => Bytes / 1e6 / Elapsed.TotalSeconds;

        public static Throughput Best(Throughput a, Throughput b) => a.MBps >= b.MBps ? a : b;
    }

    /// <summary>The PostgreSQL work the benchmarks share.</summary>
    internal static class BenchDb
    {
        public static async Task ExecAsync(NpgsqlConnection c, string sql)
        {
            await using var cmd = new NpgsqlCommand(sql, c);
            await cmd.ExecuteNonQueryAsync().ConfigureAwait(false);
        }

        /// <summary>About 12 MB of rows in bench_rows (and an empty bench_in like it).</summary>
        public static async Task CreateRowsAsync(string conn)
        {
            await using var c = new NpgsqlConnection(conn);
            await c.OpenAsync().ConfigureAwait(false);
            await ExecAsync(c, "drop table if exists bench_rows; create table bench_rows as select g as id, md5(g::text) || repeat('x', 60) as payload from generate_series(1, 130000) g; create table if not exists bench_in (like bench_rows)").ConfigureAwait(false);
        }

        /// <summary>COPY bench_rows out (binary), timed.</summary>
        public static async Task<Throughput> CopyOutAsync(string conn)
        {
            await using var c = new NpgsqlConnection(conn);
            await c.OpenAsync().ConfigureAwait(false);
            var sw = Stopwatch.StartNew();
            long total = 0;
            await using (var raw = await c.BeginRawBinaryCopyAsync("COPY bench_rows TO STDOUT (FORMAT binary)").ConfigureAwait(false))
            {
                var buffer = new byte[64 * 1024];
                int n;
                while ((n = await raw.ReadAsync(buffer, 0, buffer.Length).ConfigureAwait(false)) > 0) total += n;
            }
            return new Throughput(total, sw.Elapsed);
        }
    }
}
