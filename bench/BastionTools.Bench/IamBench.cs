using System;
using System.Diagnostics;
using System.IO;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Postgres;
using BastionTools.Ssm;
using Npgsql;

namespace BastionTools.Bench
{
    /// <summary>
    /// IAM PostgreSQL through the tunnel and the RDS-IAM double (TLS, token per physical connection) against a direct
    /// loopback connection to the same PostgreSQL, in the same run.
    /// </summary>
    internal static class IamBench
    {
        public static async Task<int> RunAsync(string[] args)
        {
            string? sandboxDll = null;
            for (var i = 0; i < args.Length; i++) if (args[i] == "--sandbox" && i + 1 < args.Length) sandboxDll = args[++i];
            if (sandboxDll == null || !File.Exists(sandboxDll))
            {
                Console.Error.WriteLine("iam: --sandbox <path to BastionTools.Sandbox.dll> is required");
                return 2;
            }
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
            psi.ArgumentList.Add(sandboxDll);
            psi.ArgumentList.Add("--rds");
            // The agent without its 1 ms pause per 1 KiB read: the client is measured, not the agent's ~1 MB/s cap.
            psi.ArgumentList.Add("--output-read-pause-ms");
            psi.ArgumentList.Add("0");
            using var sandbox = Process.Start(psi)!;
            try
            {
                var info = JsonDocument.Parse(sandbox.StandardOutput.ReadLine()!).RootElement;
                var pg = info.GetProperty("postgres");
                var rds = info.GetProperty("rds");
                var direct = new NpgsqlConnectionStringBuilder
                {
                    Host = "127.0.0.1", Port = pg.GetProperty("port").GetInt32(), Username = pg.GetProperty("user").GetString(),
                    Password = pg.GetProperty("password").GetString(), Database = pg.GetProperty("database").GetString(), SslMode = SslMode.Disable,
                }.ConnectionString;
                await using (var admin = NpgsqlDataSource.Create(direct))
                await using (var cmd = admin.CreateCommand("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_iam') THEN CREATE ROLE bench_iam LOGIN; END IF; END $$; GRANT rds_iam TO bench_iam"))
                {
                    await cmd.ExecuteNonQueryAsync().ConfigureAwait(false);
                }

                var accessKey = info.GetProperty("accessKeyId").GetString()!;
                var secret = info.GetProperty("secretAccessKey").GetString()!;
                var creds = new ResolvedCredentials(new BasicAWSCredentials(accessKey, secret), "sandbox", null);
                using var api = new AwsApi(creds, info.GetProperty("region").GetString()!, info.GetProperty("ssm").GetString());

                var sw = Stopwatch.StartNew();
                var session = new PortForwardingSession(api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = rds.GetProperty("endpoint").GetString(), RemotePort = 5432 }, new DataChannelOptions());
                await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None).ConfigureAwait(false);
                // The same IAM login and TLS to the database's endpoint, reached at host:port (the tunnel's, or the double's own).
                IamDataSource IamSource(string host, int port) => new(new IamDataSourceOptions
                {
                    Endpoint = rds.GetProperty("endpoint").GetString()!, EndpointPort = 5432, ConnectHost = host, ConnectPort = port,
                    UserName = "bench_iam", Database = pg.GetProperty("database").GetString()!, Region = info.GetProperty("region").GetString()!,
                    RootCertificatePath = rds.GetProperty("caBundle").GetString()!,
                }, () => new AwsKeys(accessKey, secret, null), new Redactor());
                var source = IamSource("127.0.0.1", session.LocalEndPoint!.Port);
                await using (var first = await source.OpenAsync(CancellationToken.None).ConfigureAwait(false))
                await using (var cmd = new NpgsqlCommand("select 1", first))
                {
                    await cmd.ExecuteScalarAsync().ConfigureAwait(false);
                }
                Console.WriteLine($"cold: session + TLS + IAM login -> first row   {sw.Elapsed.TotalMilliseconds,8:F0} ms");

                await using var directSource = NpgsqlDataSource.Create(direct);
                // The same IAM login and TLS straight to the RDS-IAM double, without the tunnel: what the tunnel itself adds
                // is the difference between this column and IAM+tunnel (the double's TLS relay is in both).
                await using var noTunnel = IamSource(rds.GetProperty("proxyHost").GetString()!, rds.GetProperty("proxyPort").GetInt32());
                var tDirect = await SmallQueriesAsync(() => directSource.OpenConnectionAsync().AsTask()).ConfigureAwait(false);
                var tNoTunnel = await SmallQueriesAsync(() => noTunnel.OpenAsync(CancellationToken.None)).ConfigureAwait(false);
                var stats = session.Channel!;
                long sent0 = stats.MessagesSent, received0 = stats.MessagesReceived, bytes0 = stats.PayloadBytesSent + stats.PayloadBytesReceived;
                var tTunnel = await SmallQueriesAsync(() => source.OpenAsync(CancellationToken.None)).ConfigureAwait(false);
                // Warm-up queries included: data messages (not acknowledgements) and payload bytes per query.
                const double Queries = WarmUpQueries + MeasuredQueries;
                double sentPer = (stats.MessagesSent - sent0) / Queries, receivedPer = (stats.MessagesReceived - received0) / Queries;
                double bytesPer = (stats.PayloadBytesSent + stats.PayloadBytesReceived - bytes0) / Queries;
                Console.WriteLine($"1000 small queries (pooled, sequential)   direct {tDirect.TotalMilliseconds,7:F0} ms   IAM without tunnel {tNoTunnel.TotalMilliseconds,7:F0} ms   IAM+tunnel {tTunnel.TotalMilliseconds,7:F0} ms   ratio {tTunnel.TotalMilliseconds / tDirect.TotalMilliseconds:F1}x   the tunnel's part {(tTunnel - tNoTunnel).TotalMilliseconds / MeasuredQueries:F3} ms per query ({sentPer:F1} data messages sent and {receivedPer:F1} received per query, {bytesPer:F0} payload bytes; acknowledgements not counted)");
                // The same through RowStream as Invoke-IamPostgresQuery runs them (the command and its rows on the calling
                // thread, rows built as the cmdlet's PSObjects): what the cmdlet adds to a small query below PowerShell.
                var tRows = await Task.Run(() => SmallRowStreamQueries(() => source.OpenAsync(CancellationToken.None).GetAwaiter().GetResult())).ConfigureAwait(false);
                Console.WriteLine($"1000 small queries through RowStream (the cmdlet's path, no pipeline)   IAM+tunnel {tRows.TotalMilliseconds,7:F0} ms   ({tRows.TotalMilliseconds / tTunnel.TotalMilliseconds:F2}x the line above)");

                var (rDirect, cpuDirect) = await StreamAsync(() => directSource.OpenConnectionAsync().AsTask()).ConfigureAwait(false);
                var (rNoTunnel, cpuNoTunnel) = await StreamAsync(() => noTunnel.OpenAsync(CancellationToken.None)).ConfigureAwait(false);
                var (rTunnel, cpuTunnel) = await StreamAsync(() => source.OpenAsync(CancellationToken.None)).ConfigureAwait(false);
                Console.WriteLine($"1M-row streamed query   direct {rDirect,10:N0} rows/s   IAM without tunnel {rNoTunnel,10:N0} rows/s   IAM+tunnel {rTunnel,10:N0} rows/s   ratio {rTunnel / rDirect:P0}   process CPU per 1M rows: direct {cpuDirect:N0} ms, IAM without tunnel {cpuNoTunnel:N0} ms, IAM+tunnel {cpuTunnel:N0} ms");
                // Under Invoke-IamPostgresQuery without PowerShell's pipeline: the cmdlet's query through RowStream (its
                // reader thread, each row built as the cmdlet's PSObject), batches taken and dropped on this thread.
                var (rRows, cpuRows) = await RowStreamAsync(() => source.OpenAsync(CancellationToken.None)).ConfigureAwait(false);
                Console.WriteLine($"1M rows as PSObjects, no pipeline (RowStream, rows dropped)   IAM+tunnel {rRows,10:N0} rows/s   process CPU per 1M rows {cpuRows,6:N0} ms");
                Console.WriteLine($"tokens signed: {source.TokensIssued} (one per physical connection)");
                await source.DisposeAsync().ConfigureAwait(false);
                await session.StopAsync().ConfigureAwait(false);
                return 0;
            }
            finally
            {
                sandbox.StandardInput.Close();
                if (!sandbox.WaitForExit(20000)) sandbox.Kill(true);
            }
        }

        private const int WarmUpQueries = 50;
        private const int MeasuredQueries = 1000;

        private static async Task<TimeSpan> SmallQueriesAsync(Func<Task<NpgsqlConnection>> open)
        {
            for (var i = 0; i < WarmUpQueries; i++) await OneAsync(open).ConfigureAwait(false);
            var sw = Stopwatch.StartNew();
            for (var i = 0; i < MeasuredQueries; i++) await OneAsync(open).ConfigureAwait(false);
            return sw.Elapsed;
        }

        private static TimeSpan SmallRowStreamQueries(Func<NpgsqlConnection> open)
        {
            for (var i = 0; i < WarmUpQueries; i++) OneRowStream(open);
            var sw = Stopwatch.StartNew();
            for (var i = 0; i < MeasuredQueries; i++) OneRowStream(open);
            return sw.Elapsed;
        }

        private static void OneRowStream(Func<NpgsqlConnection> open)
        {
            using var c = open();
            using var cmd = new NpgsqlCommand("select 1", c);
            if (Drain(cmd) != 1) throw new InvalidOperationException("select 1 gave no row");
        }

        private static async Task OneAsync(Func<Task<NpgsqlConnection>> open)
        {
            await using var c = await open().ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand("select 1", c);
            await cmd.ExecuteScalarAsync().ConfigureAwait(false);
        }

        /// <summary>The cmdlet's 1M-row query through <see cref="RowStream"/>, its rows dropped: rows/s and this process's CPU ms per 1M rows.</summary>
        private static async Task<(double Rows, double CpuMs)> RowStreamAsync(Func<Task<NpgsqlConnection>> open)
        {
            await using var c = await open().ConfigureAwait(false);
            const string Query = "select g, 'row ' || g as label from generate_series(1, 1000000) g";
            // Warm-up (tiered JIT), as the cmdlet's figure is taken after warm-up pipelines.
            for (var w = 0; w < 2; w++)
            {
                await using var warm = new NpgsqlCommand(Query.Replace("1000000", "200000"), c);
                await Task.Run(() => Drain(warm)).ConfigureAwait(false);
            }
            await using var cmd = new NpgsqlCommand(Query, c);
            using var self = Process.GetCurrentProcess();
            var cpu0 = self.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            var n = await Task.Run(() => Drain(cmd)).ConfigureAwait(false);
            sw.Stop();
            self.Refresh();
            return (n / sw.Elapsed.TotalSeconds, (self.TotalProcessorTime - cpu0).TotalMilliseconds * 1e6 / n);
        }

        private static long Drain(NpgsqlCommand cmd)
        {
            long n = 0;
            using var rows = new RowStream(cmd);
            while (rows.Next(out var batch))
            {
                n += batch.Count;
                rows.Return(batch);
            }
            return n;
        }

        private static async Task<(double Rows, double CpuMs)> StreamAsync(Func<Task<NpgsqlConnection>> open)
        {
            await using var c = await open().ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand("select g, 'row ' || g from generate_series(1, 1000000) g", c);
            using var self = Process.GetCurrentProcess();
            var cpu0 = self.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            long n = 0;
            await using (var r = await cmd.ExecuteReaderAsync().ConfigureAwait(false))
            {
                while (await r.ReadAsync().ConfigureAwait(false))
                {
                    n += r.GetInt32(0) > 0 ? 1 : 0;
                    _ = r.GetString(1);
                }
            }
            sw.Stop();
            self.Refresh();
            return (n / sw.Elapsed.TotalSeconds, (self.TotalProcessorTime - cpu0).TotalMilliseconds * 1e6 / n);
        }
    }
}
