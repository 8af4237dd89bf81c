using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Ssm;
using Npgsql;

namespace BastionTools.Bench
{
    /// <summary>
    /// Concurrency benchmark (issue 11): the real pgbench (a <c>select 1;</c> script) with 1, 8, 32 and 64 clients
    /// against PostgreSQL directly on loopback and through one BastionTools tunnel (the sandbox agent in a process of
    /// its own), in rounds of direct/tunnel pairs per client count in the same run (median ratio); psql COPY of 300,000 rows out and in
    /// (median of 3, direct and tunnel back to back, the order swapped every other run); and the cost of the tunnel from this process's own counters: CPU
    /// per MB and per data-channel message, allocated bytes per message, memory per open connection, and the sandbox
    /// agent's CPU per transaction. Figures are printed, never asserted.
    /// </summary>
    internal static class ConcurrencyBench
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";

        public static async Task<int> RunAsync(string[] args)
        {
            string? sandboxDll = null;
            var clientCounts = new[] { 1, 8, 32, 64 };
            var seconds = 10;
            var protocol = "simple";
            var copyRows = 300_000;
            var copyRuns = 3;
            var rounds = 3;
            var rttMs = 0.0;
            var sendWindow = 0;
            var idleConnections = 64;
            var agentInlineCompletions = false;
            var inlineCompletions = true;
            var agentLog = false;
            var agentEnv = new Dictionary<string, string>();
            var sql = "select 1";
            string? plugin = null;
            var rate = 0;
            var agentCore = false;
            for (var i = 0; i < args.Length; i++)
            {
                if (args[i] == "--sandbox" && i + 1 < args.Length) sandboxDll = args[++i];
                else if (args[i] == "--clients" && i + 1 < args.Length) clientCounts = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
                else if (args[i] == "--seconds" && i + 1 < args.Length) seconds = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--protocol" && i + 1 < args.Length) protocol = args[++i];
                else if (args[i] == "--copy-rows" && i + 1 < args.Length) copyRows = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--copy-runs" && i + 1 < args.Length) copyRuns = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--rounds" && i + 1 < args.Length) rounds = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--rtt-ms" && i + 1 < args.Length) rttMs = double.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--send-window" && i + 1 < args.Length) sendWindow = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--idle-connections" && i + 1 < args.Length) idleConnections = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--agent-inline-socket-completions") agentInlineCompletions = true;
                else if (args[i] == "--no-inline-socket-completions") inlineCompletions = false;
                else if (args[i] == "--agent-log") agentLog = true;
                else if (args[i] == "--agent-env" && i + 1 < args.Length && args[i + 1].IndexOf('=', StringComparison.Ordinal) > 0)
                {
                    var pair = args[++i];
                    var eq = pair.IndexOf('=', StringComparison.Ordinal);
                    agentEnv[pair.Substring(0, eq)] = pair.Substring(eq + 1);
                }
                else if (args[i] == "--sql" && i + 1 < args.Length) sql = args[++i];
                else if (args[i] == "--plugin" && i + 1 < args.Length) plugin = args[++i];
                else if (args[i] == "--rate" && i + 1 < args.Length) rate = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--agent-core") agentCore = true;
                else
                {
                    Console.Error.WriteLine("concurrency: unknown argument '" + args[i] + "'");
                    return 2;
                }
            }
            if (sandboxDll == null || !File.Exists(sandboxDll))
            {
                Console.Error.WriteLine("concurrency: --sandbox <path to BastionTools.Sandbox.dll> is required");
                return 2;
            }
            if (protocol != "simple" && protocol != "extended" && protocol != "prepared")
            {
                Console.Error.WriteLine("concurrency: --protocol must be simple, extended or prepared");
                return 2;
            }
            if (clientCounts.Length == 0 || clientCounts.Any(c => c < 1 || c > 128) || seconds < 1 || copyRuns < 1 || copyRows < 1 || idleConnections < 1 || rounds < 1 || rttMs < 0 || rttMs > 2000 || rate < 0)
            {
                Console.Error.WriteLine("concurrency: --clients (1-128: the sandbox's PostgreSQL allows 150 connections), --seconds, --rounds, --copy-rows, --copy-runs and --idle-connections must be positive; --rtt-ms 0 to 2000; --rate 0 (closed loop) or more");
                return 2;
            }
            if (plugin != null && !File.Exists(plugin))
            {
                Console.Error.WriteLine("concurrency: --plugin must name the session-manager-plugin binary (built from aws/session-manager-plugin)");
                return 2;
            }
            if (agentCore && (!OperatingSystem.IsLinux() || Environment.ProcessorCount < 2 || !File.Exists("/usr/bin/taskset")))
            {
                Console.Error.WriteLine("concurrency: --agent-core needs Linux, 2 or more cores and taskset (util-linux)");
                return 2;
            }
            var tools = PgTools.Find();
            if (tools == null)
            {
                Console.Error.WriteLine("concurrency: pgbench and psql were not found ($BASTIONTOOLS_PG_BIN, /usr/lib/postgresql/*/bin, PATH): install the postgresql package.");
                return 2;
            }

            var work = Directory.CreateTempSubdirectory("bastiontools-bench-");
            try
            {
                return await RunCoreAsync(sandboxDll, tools, work.FullName, clientCounts, seconds, rounds, rttMs, sendWindow, protocol, copyRows, copyRuns, idleConnections, agentInlineCompletions, inlineCompletions, agentLog, agentEnv, sql, plugin, rate, agentCore).ConfigureAwait(false);
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

        private static async Task<int> RunCoreAsync(string sandboxDll, PgTools tools, string work, int[] clientCounts, int seconds, int rounds, double rttMs, int sendWindow, string protocol, int copyRows, int copyRuns, int idleConnections, bool agentInlineCompletions, bool inlineCompletions, bool agentLog, Dictionary<string, string> agentEnv, string sql, string? pluginPath, int rate, bool agentCore)
        {
            var loadStart = LoadAverage();
            // Fast mode: the agent without its real 1 ms pause per 1 KiB read, so the module is measured, not the agent's cap.
            // An experiment, off by default: the sandbox process (only) runs socket continuations on its epoll threads.
            // --rtt-ms: the sandbox's delay proxy sits in front of its host (SSM, the WebSocket) and of PostgreSQL.
            var sandboxArgs = new List<string> { "--postgres", "--output-read-pause-ms", "0" };
            if (rttMs > 0) sandboxArgs.Add("--fault-proxy");
            // --agent-log: the sandbox's own log (dials, resets, protocol errors) on this process's standard error.
            if (agentLog) sandboxArgs.Add("--verbose");
            if (agentInlineCompletions) agentEnv["DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS"] = "1";
            using var sandbox = Sandbox.Start(sandboxDll, agentEnv.Count > 0 ? agentEnv : null, sandboxArgs.ToArray());
            var info = sandbox.Info;
            if (agentInlineCompletions) Console.WriteLine("sandbox agent with DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 (its socket continuations run on its epoll threads; this process is unchanged)");
            foreach (var (name, value) in agentEnv) if (name != "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") Console.WriteLine($"sandbox agent environment: {name}={value} (its process only)");
            var pg = info.GetProperty("postgres");
            var pgPort = pg.GetProperty("port").GetInt32();
            // Where the direct runs connect: PostgreSQL itself, or across the same long link as the tunnel.
            var directPort = pgPort;
            if (rttMs > 0)
            {
                var proxy = info.GetProperty("proxy");
                directPort = proxy.GetProperty("postgresPort").GetInt32();
                await sandbox.PostAsync(new Uri(proxy.GetProperty("control").GetString()! + "/latency?ms=" + (rttMs / 2).ToString(CultureInfo.InvariantCulture))).ConfigureAwait(false);
            }
            var db = new PgTarget(pg.GetProperty("user").GetString()!, pg.GetProperty("password").GetString()!, pg.GetProperty("database").GetString()!);
            if (agentCore) Console.WriteLine(await PinAgentAsync(sandbox.Process.Id, pgPort).ConfigureAwait(false));
            var creds = new ResolvedCredentials(new BasicAWSCredentials(info.GetProperty("accessKeyId").GetString(), info.GetProperty("secretAccessKey").GetString()), "sandbox", null);
            using var api = new AwsApi(creds, info.GetProperty("region").GetString()!, info.GetProperty("ssm").GetString());

            Console.WriteLine($"machine: {Environment.ProcessorCount} cores, load average at start {loadStart}; PostgreSQL {pg.GetProperty("serverVersion").GetString()}, pgbench {tools.Version}");
            if (rttMs > 0)
            {
                Console.WriteLine($"link: {rttMs:F0} ms round trip ({rttMs / 2:F1} ms each way, the sandbox's delay proxy) between the clients and 'AWS': the tunnel's WebSocket and the direct runs' connections " +
                                  "cross it; the agent reaches PostgreSQL without it (the bastion sits next to the database). A closed-loop client does at most 1000/RTT transactions per second.");
            }
            Console.WriteLine("sandbox agent in FAST MODE (--output-read-pause-ms 0: no 1 ms pause per 1 KiB read, unlike the real agent): the module is measured, not the agent's pace");
            Console.WriteLine(rate > 0
                ? $"pgbench: script '{sql};', -n -M {protocol}, -T {seconds}, -j min(clients, 2), -R {rate} ({rate} transactions a second offered in all, spread over the clients, whatever their number: the same load for direct and tunnel), latency = pgbench's per-transaction time from each transaction's scheduled start (-l; schedule lag included); tunnel = one BastionTools port session hosted by this process"
                : $"pgbench: script '{sql};', -n -M {protocol}, -T {seconds}, -j min(clients, 2), latency = time between a client's consecutive completions in pgbench's per-transaction log (-l); tunnel = one BastionTools port session hosted by this process");

            var channelOptions = new DataChannelOptions();
            if (sendWindow > 0) channelOptions.SendWindow = channelOptions.MaxSendWindow = sendWindow;
            channelOptions.InlineSocketCompletions = inlineCompletions;
            Console.WriteLine(!inlineCompletions
                ? "tunnel sockets: completions handed to the thread pool (--no-inline-socket-completions)"
                : SocketCompletions.Supported
                    ? "tunnel sockets: local connections read by the session's reader thread, the WebSocket on the socket engine's thread (the default)"
                    : "tunnel sockets: completions handed to the thread pool (this runtime cannot run them inline)");
            Console.WriteLine(sendWindow > 0
                ? $"data channel: send window fixed at {sendWindow} messages (--send-window)"
                : $"data channel: send window {channelOptions.SendWindow} messages, growing up to {channelOptions.MaxSendWindow} on a long, fast path (the defaults)");
            var jit = new JitWatch(sandbox.Process.Id);
            // What the processes cost with nothing flowing: before the session (the baseline), and again with it open.
            var idleBefore = await IdleCost.MeasureAsync(sandbox.Process, jit).ConfigureAwait(false);
            var memoryBefore = MemorySnapshot.Take();
            var session = new PortForwardingSession(api, new PortForwardingRequest { Target = "i-0a1b2c3d4e5f60001", RemoteHost = Endpoint, RemotePort = pgPort }, channelOptions);
            await session.StartAsync(_ => { }, TimeSpan.FromSeconds(30), CancellationToken.None).ConfigureAwait(false);
            var tunnelPort = session.LocalEndPoint!.Port;
            Console.WriteLine($"tunnel: 127.0.0.1:{tunnelPort} -> {pgPort}, mode {session.Mode}, agent {session.AgentVersion}");

            var script = Path.Combine(work, "select1.sql");
            File.WriteAllText(script, sql + ";\n");
            var runs = 0;
            // A run's tps; its log (transactions, latencies) is read by ReadLog once the run's counters are taken.
            async Task<PgbenchResult> Pgbench(int port, int clients, int secs, bool warmUp = false)
            {
                var prefix = Path.Combine(work, "run" + (++runs).ToString(CultureInfo.InvariantCulture));
                // pgbench's -T includes connecting, which each of its threads does one client after another: across a long
                // link that is a few round trips per client (allowed 8), added so the transactions run for secs.
                var connecting = rttMs > 0 ? (int)Math.Ceiling(Math.Ceiling(clients / 2.0) * 8 * rttMs / 1000) : 0;
                try
                {
                    return await PgbenchResult.RunAsync(tools, db, port, script, protocol, clients, secs + connecting, prefix, warmUp ? 0 : rate).ConfigureAwait(false);
                }
                catch (InvalidOperationException ex) when (port == tunnelPort)
                {
                    throw WithTunnelEvents(ex);
                }
            }

            // A tunnel run without a transaction fails as a failed pgbench does.
            PgbenchResult ReadLog(PgbenchResult run, int port)
            {
                try
                {
                    return run.ReadLog();
                }
                catch (InvalidOperationException ex) when (port == tunnelPort)
                {
                    throw WithTunnelEvents(ex);
                }
            }

            // What the tunnel saw is the first thing to read when a client through it fails.
            InvalidOperationException WithTunnelEvents(InvalidOperationException ex)
            {
                var events = session.Events.Snapshot();
                return new InvalidOperationException(ex.Message + Environment.NewLine + $"tunnel connections: opened {session.Connections.Opened}, active {session.Connections.Active}, " +
                    $"failed {session.Connections.Failed}, reset {session.Connections.Reset}; the session's last events:" + Environment.NewLine +
                    string.Join(Environment.NewLine, events.TakeLast(40).Select(e => "  " + e)), ex);
            }

            // The counters are taken around every tunnel run (a request to the sandbox, in both processes): taken often enough
            // here that their paths are compiled optimised before the first measured run, not during one.
            for (var i = 0; i < 64; i++) Counters.Take(session, sandbox);

            // Warm-up (JIT, connection paths), not reported.
            ReadLog(await Pgbench(directPort, 1, 2, warmUp: true).ConfigureAwait(false), directPort);
            ReadLog(await Pgbench(tunnelPort, 1, 2, warmUp: true).ConfigureAwait(false), tunnelPort);

            var idleOpen = await IdleCost.MeasureAsync(sandbox.Process, jit).ConfigureAwait(false);
            Console.WriteLine(IdleCost.Describe(idleBefore, idleOpen));

            // ---- memory per open connection: idle connections held by pgbench (another process), before the heavy runs ----
            var idle = MemorySnapshot.Take();
            var held = await HoldIdleConnectionsAsync(tools, db, tunnelPort, work, idleConnections, session).ConfigureAwait(false);
            if (held.Snapshot is { } with)
            {
                Console.WriteLine($"memory (this process): before the session {memoryBefore.WorkingSetMB:F1} MB; session idle {idle.WorkingSetMB:F1} MB (managed {idle.ManagedMB:F1} MB); " +
                                  $"{idleConnections} idle connections open {with.WorkingSetMB:F1} MB (managed {with.ManagedMB:F1} MB): " +
                                  $"{(with.WorkingSetMB - idle.WorkingSetMB) / idleConnections * 1024:+0;-0} KB working set, {(with.ManagedMB - idle.ManagedMB) / idleConnections * 1024:+0;-0} KB managed per connection");
            }
            else
            {
                Console.WriteLine($"memory per open connection: not measured ({held.Failure})");
            }

            // --plugin: the official client through the same agent double, a third leg of every round and COPY run; started
            // after the idle and memory figures, which are this process's and the double's with one session.
            using var plugin = pluginPath == null ? null : await OfficialPlugin.StartAsync(pluginPath, api, info.GetProperty("region").GetString()!, info.GetProperty("ssm").GetString()!,
                info.GetProperty("accessKeyId").GetString()!, info.GetProperty("secretAccessKey").GetString()!, "i-0a1b2c3d4e5f60001", Endpoint, pgPort, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            if (plugin != null)
            {
                // What the agent double made of it: its port plugin's mode (mux for a client of 1.1.70 or later) and the client version it saw.
                var seen = await sandbox.GetJsonAsync(new Uri(new Uri(info.GetProperty("control").GetString()!), "sessions/" + Uri.EscapeDataString(plugin.SessionId))).ConfigureAwait(false);
                Console.WriteLine($"official plugin: session-manager-plugin {plugin.Version} (built from aws/session-manager-plugin), 127.0.0.1:{plugin.Port} -> {pgPort}, a session of its own through the same agent double " +
                                  $"(its port plugin: {seen.GetProperty("plugin")}, client version {seen.GetProperty("clientVersion")})");
                ReadLog(await Pgbench(plugin.Port, 1, 2, warmUp: true).ConfigureAwait(false), plugin.Port);
            }

            // ---- select 1 at 1, 8, 32, 64 clients, direct and tunnel alternating, in rounds ----
            // One pair is not a figure on a shared machine: the direct run alone moves by 25 % between pairs a minute apart.
            // Each round is a direct and a tunnel run back to back, the order swapped every other round so neither side
            // always runs first; the goal lines use the median over the rounds.
            Console.WriteLine();
            Console.WriteLine(plugin == null
                ? $"{rounds} round(s) per client count, each a direct and a tunnel run of {seconds} s back to back (the order swapped every other round)"
                : $"{rounds} round(s) per client count, each a direct, a tunnel and an official plugin run of {seconds} s back to back (the order turned every round; the plugin's line follows the round's)");
            Console.WriteLine("clients   round |      direct: tps    p50 ms   p99 ms |      tunnel: tps    p50 ms   p99 ms | tunnel % of direct | added p50 ms | tunnel cost: client CPU us/tx  us/msg  alloc B/msg  agent CPU us/tx  agent alloc B/msg  agent switches/tx");
            var rows = new List<(int Clients, PgbenchResult Direct, PgbenchResult Tunnel)>();
            var pluginRows = new List<(int Clients, PgbenchResult Direct, PgbenchResult Plugin, PgbenchResult Tunnel)>();
            var budgets = new List<string>();
            var ceilings = new List<(int Clients, double Ceiling)>();
            var summaries = new List<string>();
            foreach (var clients in clientCounts)
            {
                var ratios = new List<double>();
                var pluginRatios = new List<double>();
                for (var round = 1; round <= rounds; round++)
                {
                    PgbenchResult? direct = null, tunnel = null, viaPlugin = null;
                    MachineCpu machineDirect = default, machineTunnel = default;
                    var cost = default(Counters);
                    var pluginCost = default(PluginCost);
                    var legs = plugin == null ? 2 : 3;
                    for (var leg = 0; leg < legs; leg++)
                    {
                        // 0 direct, 1 tunnel, 2 the plugin: the order turns every round, so none always runs first.
                        var which = (leg + round - 1) % legs;
                        if (which == 2)
                        {
                            await jit.WaitQuietAsync().ConfigureAwait(false);
                            var before = PluginCost.Take(plugin!, sandbox);
                            viaPlugin = await Pgbench(plugin!.Port, clients, seconds).ConfigureAwait(false);
                            pluginCost = PluginCost.Take(plugin, sandbox) - before;
                            ReadLog(viaPlugin, plugin.Port);
                        }
                        else if (which == 0)
                        {
                            await jit.WaitQuietAsync().ConfigureAwait(false);
                            var machineBefore = MachineCpu.Take();
                            direct = await Pgbench(directPort, clients, seconds).ConfigureAwait(false);
                            machineDirect = MachineCpu.Take() - machineBefore;
                            ReadLog(direct, directPort);
                        }
                        else
                        {
                            await jit.WaitQuietAsync().ConfigureAwait(false);
                            var before = Counters.Take(session, sandbox);
                            var machineBefore = MachineCpu.Take();
                            tunnel = await Pgbench(tunnelPort, clients, seconds).ConfigureAwait(false);
                            machineTunnel = MachineCpu.Take() - machineBefore;
                            cost = Counters.Take(session, sandbox) - before;
                            // The log is read after the counters: its parsing is this process's work, not the tunnel's.
                            ReadLog(tunnel, tunnelPort);
                        }
                    }
                    rows.Add((clients, direct!, tunnel!));
                    ratios.Add(tunnel!.Tps / direct!.Tps);
                    var (budget, roundCeiling) = CpuBudget($"{clients,7} {round,3}/{rounds,-3}", direct, tunnel, machineDirect, machineTunnel, cost);
                    budgets.Add(budget);
                    if (roundCeiling is { } c) ceilings.Add((clients, c));
                    var tx = Math.Max(1, tunnel.Transactions);
                    var messages = Math.Max(1, cost.Messages);
                    Console.WriteLine($"{clients,7} {round,3}/{rounds,-3} | {direct.Tps,17:F0} {direct.P50Ms,9:F3} {direct.P99Ms,8:F3} | {tunnel.Tps,17:F0} {tunnel.P50Ms,9:F3} {tunnel.P99Ms,8:F3} | {tunnel.Tps / direct.Tps,18:P0} | {tunnel.P50Ms - direct.P50Ms,12:F3} | " +
                                      $"{cost.ClientCpu.TotalMilliseconds * 1000 / tx,28:F1} {cost.ClientCpu.TotalMilliseconds * 1000 / messages,7:F1} {(double)cost.Allocated / messages,12:F0} {cost.AgentCpu.TotalMilliseconds * 1000 / tx,16:F1} {AgentAllocated(cost, messages),18} {AgentSwitches(cost, tx),18}");
                    if (viaPlugin != null)
                    {
                        pluginRows.Add((clients, direct, viaPlugin, tunnel));
                        pluginRatios.Add(viaPlugin.Tps / direct.Tps);
                        var ptx = Math.Max(1, viaPlugin.Transactions);
                        Console.WriteLine($"{"",7} {"plugin",-7} | {"",17} {"",9} {"",8} | {viaPlugin.Tps,17:F0} {viaPlugin.P50Ms,9:F3} {viaPlugin.P99Ms,8:F3} | {viaPlugin.Tps / direct.Tps,18:P0} | {viaPlugin.P50Ms - direct.P50Ms,12:F3} | " +
                                          $"plugin CPU {pluginCost.PluginCpu.TotalMilliseconds * 1000 / ptx:F1} us/tx, agent CPU {pluginCost.AgentCpu.TotalMilliseconds * 1000 / ptx:F1} us/tx; BastionTools {tunnel.Tps / viaPlugin.Tps:F2}x the plugin's tps");
                    }
                }
                var ceiling = rttMs > 0 ? $"; the link allows at most {clients * 1000 / rttMs:F0} tps" : "";
                // A run that could not keep up with the offered rate piles up schedule lag: its latencies say so, not the path's.
                if (rate > 0)
                {
                    var behind = rows.Where(r => r.Clients == clients).SelectMany(r => LegsBehind(r, rate, seconds)).Distinct().ToList();
                    if (behind.Count > 0) ceiling += $"; BEHIND the offered {rate} tps ({string.Join(", ", behind)}): those latencies are mostly schedule lag";
                }
                if (rounds > 1 || rttMs > 0)
                    summaries.Add($"{clients,7} clients: tunnel % of direct {string.Join(" / ", ratios.Select(r => r.ToString("P0", CultureInfo.InvariantCulture)))}, median {MedianOf(ratios):P0}{ceiling}" +
                                  (pluginRatios.Count == 0 ? "" : $"; the official plugin {string.Join(" / ", pluginRatios.Select(r => r.ToString("P0", CultureInfo.InvariantCulture)))}, median {MedianOf(pluginRatios):P0}"));
            }
            foreach (var line in summaries) Console.WriteLine(line);
            Console.WriteLine("(tps: pgbench's, without initial connection time; p50/p99: time between a client's consecutive completions in pgbench's log (its own latency column reads 0 when the answer was already there); tunnel cost: this process's CPU time and");
            Console.WriteLine(" allocated bytes over the tunnel run, per pgbench transaction and per data-channel message sent or received; agent CPU and alloc: the sandbox process's CPU time and allocated bytes;");
            Console.WriteLine(" agent switches: the sandbox threads' voluntary context switches (each a thread that blocked, to be woken again later; /proc, n/a elsewhere))");
            if (budgets.All(b => b.Length > 0))
            {
                Console.WriteLine();
                Console.WriteLine("CPU budget (whole machine, /proc/stat): clients   round | busy % direct, tunnel | machine CPU us/tx direct, tunnel (of which this process, agent double) | tunnel % of direct with the agent's CPU elsewhere (estimate) | if this process cost nothing (ceiling, estimate)");
                foreach (var b in budgets) Console.WriteLine(b);
                Console.WriteLine("(every process shares these cores: pgbench, PostgreSQL, this process and the agent double, which on a real bastion runs on another machine. The estimate");
                Console.WriteLine(" scales the measured ratio by the tunnel's machine CPU per transaction without the agent's share; it holds only for a run that kept the cores busy, and is n/a below 80 % busy.");
                Console.WriteLine(" The ceiling does the same without this process's share instead: what a client that cost no CPU at all would read in the same run, with the agent double where it is)");
            }

            // ---- psql COPY out and in, median of 3, direct and tunnel alternating ----
            Console.WriteLine();
            await using (var c = new NpgsqlConnection(sandbox.PostgresConnectionString(pgPort)))
            {
                await c.OpenAsync().ConfigureAwait(false);
                await BenchDb.ExecAsync(c, $"drop table if exists bench_copy; create table bench_copy as select g as id, md5(g::text) as payload from generate_series(1, {copyRows}) g; " +
                                           "drop table if exists bench_copy_in; create table bench_copy_in (like bench_copy)").ConfigureAwait(false);
            }
            var outFile = Path.Combine(work, "copy-out.tsv");
            // Warm-up, not reported: the first bulk transfers run the tunnel's bulk paths on code the JIT has not yet
            // optimised (perf showed the tiered compiler thread at ~16 % of the process's samples during the first COPY runs).
            await Psql(tools, db, tunnelPort, $"\\copy bench_copy to '{outFile}'").ConfigureAwait(false);
            await TruncateAsync(sandbox, pgPort).ConfigureAwait(false);
            await Psql(tools, db, tunnelPort, $"\\copy bench_copy_in from '{outFile}'").ConfigureAwait(false);
            if (plugin != null)
            {
                await Psql(tools, db, plugin.Port, $"\\copy bench_copy to '{outFile}'").ConfigureAwait(false);
                await TruncateAsync(sandbox, pgPort).ConfigureAwait(false);
                await Psql(tools, db, plugin.Port, $"\\copy bench_copy_in from '{outFile}'").ConfigureAwait(false);
            }
            // Direct and tunnel back to back, the order swapped every other run.
            async Task<CopyRuns> MeasureCopyAsync(string command, bool truncateFirst)
            {
                var runs = new CopyRuns();
                for (var r = 0; r < copyRuns; r++)
                {
                    var legs = plugin == null ? 2 : 3;
                    for (var leg = 0; leg < legs; leg++)
                    {
                        if (truncateFirst) await TruncateAsync(sandbox, pgPort).ConfigureAwait(false);
                        // 0 direct, 1 tunnel, 2 the plugin, the order turned every run.
                        var which = (leg + r) % legs;
                        if (which == 2)
                        {
                            await jit.WaitQuietAsync().ConfigureAwait(false);
                            var pluginBefore = PluginCost.Take(plugin!, sandbox);
                            runs.Plugin.Add(await Psql(tools, db, plugin!.Port, command).ConfigureAwait(false));
                            runs.PluginCost += PluginCost.Take(plugin, sandbox) - pluginBefore;
                            continue;
                        }
                        var direct = which == 0;
                        // The tunnel's own counters only around tunnel runs (they cost a request to the sandbox).
                        await jit.WaitQuietAsync().ConfigureAwait(false);
                        var before = direct ? default : Counters.Take(session, sandbox);
                        var machine = MachineCpu.Take();
                        var jitBefore = jit.Take();
                        var time = await Psql(tools, db, direct ? directPort : tunnelPort, command).ConfigureAwait(false);
                        var used = MachineCpu.Take() - machine;
                        var compiled = jit.Take() - jitBefore;
                        if (direct)
                        {
                            runs.Direct.Add(time);
                            runs.MachineDirect += used;
                            runs.JitDirect += compiled;
                        }
                        else
                        {
                            runs.Tunnel.Add(time);
                            runs.MachineTunnel += used;
                            runs.JitTunnel += compiled;
                            runs.Cost += Counters.Take(session, sandbox) - before;
                        }
                    }
                }
                return runs;
            }
            var copyOut = await MeasureCopyAsync($"\\copy bench_copy to '{outFile}'", truncateFirst: false).ConfigureAwait(false);
            var fileBytes = new FileInfo(outFile).Length;
            var copyIn = await MeasureCopyAsync($"\\copy bench_copy_in from '{outFile}'", truncateFirst: true).ConfigureAwait(false);
            Console.WriteLine($"psql \\copy of {copyRows:N0} rows ({fileBytes / 1e6:F1} MB of text), median of {copyRuns} (psql start and connect included in both):");
            var copyOutFloor = PrintCopy("COPY out", copyOut.Direct, copyOut.Tunnel, copyOut.Cost, copyOut.MachineDirect, copyOut.MachineTunnel);
            PrintJit(jit, copyOut);
            PrintPluginCopy(copyOut, fileBytes);
            var copyInFloor = PrintCopy("COPY in ", copyIn.Direct, copyIn.Tunnel, copyIn.Cost, copyIn.MachineDirect, copyIn.MachineTunnel);
            PrintJit(jit, copyIn);
            PrintPluginCopy(copyIn, fileBytes);

            Console.WriteLine();
            Console.WriteLine($"data channel totals: {session.Channel!.MessagesSent:N0} messages sent, {session.Channel.MessagesReceived:N0} received, {session.Channel.Retransmissions} retransmissions; " +
                              $"send window now {session.Channel.SendWindow:N0}, at most {session.Channel.SendWindowPeak:N0}, most in flight {session.Channel.UnacknowledgedPeak:N0}; connections opened {session.Connections.Opened}, failed {session.Connections.Failed}, reset {session.Connections.Reset}");
            Console.WriteLine($"messages from the service (data and acknowledgements) handled on the socket engine's thread, not a pool thread: {session.Channel.MessagesHandledOffPool:N0}");
            if (rttMs > 0)
            {
                // What the delay proxy added beyond its latency (timer granularity, load), over the whole run: the
                // WebSocket's link carries the tunnel, the PostgreSQL link the direct runs.
                var link = await sandbox.GetJsonAsync(new Uri(info.GetProperty("proxy").GetProperty("control").GetString()!)).ConfigureAwait(false);
                static string Late(System.Text.Json.JsonElement p) => string.Format(CultureInfo.InvariantCulture, "{0:F2} ms on average, {1:F1} ms at most, over {2:N0} chunks",
                    p.GetProperty("delayLatenessAverageMs").GetDouble(), p.GetProperty("delayLatenessMaxMs").GetDouble(), p.GetProperty("delayedChunks").GetInt64());
                Console.WriteLine($"link: chunks written after their due time by {Late(link)} on the tunnel's path; {Late(link.GetProperty("postgresProxy"))} on the direct path");
            }
            if (jit.Known)
            {
                Console.WriteLine($"before every measured run the bench waited for the tiered compiler's threads of this process and the agent double to be idle for {JitWatch.QuietFor.TotalMilliseconds:F0} ms: " +
                                  $"{jit.Waited.TotalSeconds:F1} s in all, {jit.Waits} waits ({jit.GaveUp} gave up after {JitWatch.MaxWait.TotalSeconds:F0} s)");
            }
            if (agentCore) Console.WriteLine("(--agent-core: the agent double on a CPU of its own and the direct runs on one CPU; not the issue's setting, where every process shares every core)");
            PrintGoals(rows, ceilings, copyOut.Direct, copyOut.Tunnel, copyOutFloor, copyIn.Direct, copyIn.Tunnel, copyInFloor, rate, seconds);
            if (plugin != null) PrintPluginComparison(plugin, pluginRows, copyOut, copyIn);
            await session.StopAsync().ConfigureAwait(false);
            Console.WriteLine($"machine: load average at end {LoadAverage()}");
            return 0;
        }

        private static string AgentAllocated(Counters cost, long messages) =>
            cost.AgentAllocated < 0 ? "n/a" : ((double)cost.AgentAllocated / messages).ToString("F0", CultureInfo.InvariantCulture);

        private static string AgentSwitches(Counters cost, long per) =>
            cost.AgentSwitches < 0 ? "n/a" : ((double)cost.AgentSwitches / per).ToString("F2", CultureInfo.InvariantCulture);

        /// <summary>
        /// --agent-core: the agent double's process (with its delay proxy) on the last CPU, and everything else on the
        /// first: this process (the tunnel), PostgreSQL (its postmaster and every process it has; backends forked later
        /// inherit it) and, through this process, pgbench, psql and the plugin. The agent then runs on a machine of its own,
        /// as on a real bastion, and the direct runs have the first CPU alone, as the tunnel's client side has.
        /// </summary>
        private static async Task<string> PinAgentAsync(int sandboxPid, int pgPort)
        {
            var agentCpu = Environment.ProcessorCount - 1;
            // The postmaster, daemonised by pg_ctl: the postgres process started with "-p <port>".
            var postmasters = new List<int>();
            var port = pgPort.ToString(CultureInfo.InvariantCulture);
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)) continue;
                try
                {
                    var args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                    if (args.Length < 2 || Path.GetFileName(args[0]) != "postgres") continue;
                    for (var i = 0; i + 1 < args.Length; i++)
                    {
                        if (args[i] == "-p" && args[i + 1] == port) postmasters.Add(pid);
                    }
                }
                catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
                {
                    // A process that ended meanwhile.
                }
            }
            if (postmasters.Count == 0) throw new InvalidOperationException("--agent-core: the sandbox's PostgreSQL (postgres -p " + port + ") was not found");
            var clientSide = new List<int> { Environment.ProcessId };
            foreach (var postmaster in postmasters)
            {
                clientSide.Add(postmaster);
                // Its background processes (checkpointer, writers, launcher) already exist: pinned one by one.
                var children = Path.Combine("/proc", postmaster.ToString(CultureInfo.InvariantCulture), "task", postmaster.ToString(CultureInfo.InvariantCulture), "children");
                if (File.Exists(children)) clientSide.AddRange(File.ReadAllText(children).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(c => int.Parse(c, CultureInfo.InvariantCulture)));
            }
            async Task Pin(int pid, int cpu)
            {
                var psi = new ProcessStartInfo("/usr/bin/taskset") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                foreach (var a in new[] { "-a", "-cp", cpu.ToString(CultureInfo.InvariantCulture), pid.ToString(CultureInfo.InvariantCulture) }) psi.ArgumentList.Add(a);
                var (exit, _, stderr) = await RunAsync(psi).ConfigureAwait(false);
                if (exit != 0) throw new InvalidOperationException($"taskset could not pin process {pid} to CPU {cpu}: {stderr.Trim()}");
            }
            await Pin(sandboxPid, agentCpu).ConfigureAwait(false);
            foreach (var pid in clientSide) await Pin(pid, 0).ConfigureAwait(false);
            return $"cores (--agent-core): the agent double and its delay proxy on CPU {agentCpu}; this process (the tunnel), PostgreSQL ({clientSide.Count - 1} processes) and the clients it starts " +
                   "(pgbench, psql, the plugin) on CPU 0: the agent on a machine of its own, as on a real bastion, and the direct runs with CPU 0 alone as the tunnel's client side. " +
                   "Not the issue's setting (every process on every core): the goal lines read the same ratios, measured this way";
        }

        /// <summary>
        /// The voluntary context switches of the process's live threads (sum of /proc/PID/task/*/status); -1 where there is
        /// no /proc. Threads that ended are not counted, so take differences over a steady run.
        /// </summary>
        private static long VoluntarySwitches(int pid) => SumOverThreads(pid, "status", status =>
        {
            foreach (var line in status.Split('\n'))
            {
                if (line.StartsWith("voluntary_ctxt_switches:", StringComparison.Ordinal))
                    return long.Parse(line.AsSpan("voluntary_ctxt_switches:".Length).Trim(), NumberStyles.None, CultureInfo.InvariantCulture);
            }
            return 0;
        });

        /// <summary>
        /// The sum of <paramref name="read"/> over the text of /proc/PID/task/*/<paramref name="file"/> of the process's
        /// live threads (a thread that ends while being read counts 0); -1 where there is no /proc.
        /// </summary>
        private static long SumOverThreads(int pid, string file, Func<string, long> read)
        {
            try
            {
                long total = 0;
                foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
                {
                    try
                    {
                        total += read(File.ReadAllText(Path.Combine(task, file)));
                    }
                    catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
                    {
                        // The thread ended while being read.
                    }
                }
                return total;
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return -1;
            }
        }

        /// <summary>
        /// One round's line of the CPU budget, and the ceiling: the tunnel's % of direct had this process (the client)
        /// cost no CPU, all else as measured (null when the run did not keep the cores busy).
        /// </summary>
        private static (string Line, double? Ceiling) CpuBudget(string label, PgbenchResult direct, PgbenchResult tunnel, MachineCpu machineDirect, MachineCpu machineTunnel, Counters cost)
        {
            if (!machineDirect.Known || !machineTunnel.Known || direct.Transactions <= 0 || tunnel.Transactions <= 0) return ("", null);
            var directPerTx = machineDirect.Busy.TotalMilliseconds * 1000 / direct.Transactions;
            var tunnelPerTx = machineTunnel.Busy.TotalMilliseconds * 1000 / tunnel.Transactions;
            var clientPerTx = cost.ClientCpu.TotalMilliseconds * 1000 / tunnel.Transactions;
            var agentPerTx = cost.AgentCpu.TotalMilliseconds * 1000 / tunnel.Transactions;
            var withoutAgent = tunnel.Tps / direct.Tps / MachineCpu.WithoutShare(tunnelPerTx, agentPerTx);
            var withoutClient = tunnel.Tps / direct.Tps / MachineCpu.WithoutShare(tunnelPerTx, clientPerTx);
            // The estimates assume the tunnel run was bound by the cores; a run that left them idle (a long link, one client)
            // was bound by something else.
            var busy = machineTunnel.KeptBusy;
            var estimate = busy ? withoutAgent.ToString("P0", CultureInfo.InvariantCulture) : "n/a (cores not busy)";
            var ceiling = busy ? withoutClient.ToString("P0", CultureInfo.InvariantCulture) : "n/a";
            return (string.Format(CultureInfo.InvariantCulture, "{0} | {1,5:F0} % {2,5:F0} % | {3,8:F1} {4,8:F1} ({5:F1}, {6:F1}) | {7,6} | {8,6}",
                label, machineDirect.BusyFraction * 100, machineTunnel.BusyFraction * 100, directPerTx, tunnelPerTx, clientPerTx, agentPerTx, estimate, ceiling),
                busy ? withoutClient : null);
        }

        /// <summary>The whole machine's CPU time from /proc/stat (busy = all but idle and iowait); unknown elsewhere.</summary>
        private readonly struct MachineCpu
        {
            private MachineCpu(bool known, long busyTicks, long totalTicks)
            {
                Known = known;
                BusyTicks = busyTicks;
                TotalTicks = totalTicks;
            }

            public bool Known { get; }
            private long BusyTicks { get; }
            private long TotalTicks { get; }

            /// <summary>/proc/stat counts in USER_HZ, 100 per second on Linux.</summary>
            public TimeSpan Busy => TimeSpan.FromMilliseconds(BusyTicks * 10.0);

            public double BusyFraction => TotalTicks <= 0 ? 0 : (double)BusyTicks / TotalTicks;

            /// <summary>
            /// Whether the run kept the cores busy (80 % or more), so that it was bound by the machine's CPU: only then do
            /// the estimates that take a process's share away (<see cref="WithoutShare"/>) hold.
            /// </summary>
            public bool KeptBusy => BusyFraction >= 0.8;

            /// <summary>
            /// The factor by which a core-bound run's time shrinks had a process that used <paramref name="share"/> of the
            /// <paramref name="total"/> CPU cost nothing (its throughput grows by the inverse).
            /// </summary>
            public static double WithoutShare(double total, double share) => Math.Max(1e-9, total - share) / total;

            public static MachineCpu Take()
            {
                try
                {
                    var line = File.ReadLines("/proc/stat").First();
                    var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(8).Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
                    var total = fields.Sum();
                    return new MachineCpu(true, total - fields[3] - fields[4], total);
                }
                catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException || ex is FormatException || ex is InvalidOperationException)
                {
                    return default;
                }
            }

            /// <summary>A known zero, to add runs to.</summary>
            public static MachineCpu Zero => new(true, 0, 0);

            public static MachineCpu operator +(MachineCpu a, MachineCpu b) =>
                a.Known && b.Known ? new MachineCpu(true, a.BusyTicks + b.BusyTicks, a.TotalTicks + b.TotalTicks) : default;

            public static MachineCpu operator -(MachineCpu a, MachineCpu b) =>
                a.Known && b.Known ? new MachineCpu(true, a.BusyTicks - b.BusyTicks, a.TotalTicks - b.TotalTicks) : default;
        }

        /// <summary>
        /// Prints one direction's COPY figures. Returns the floor: the tunnel's time ratio had this process (the client)
        /// cost no CPU, all else as measured (null when the runs did not keep the cores busy, or /proc/stat is not there).
        /// </summary>
        private static double? PrintCopy(string what, List<TimeSpan> direct, List<TimeSpan> tunnel, Counters cost, MachineCpu machineDirect, MachineCpu machineTunnel)
        {
            var d = Median(direct);
            var t = Median(tunnel);
            var mb = Math.Max(1, cost.Bytes) / 1e6;
            var messages = Math.Max(1, cost.Messages);
            Console.WriteLine($"  {what}: direct {d.TotalMilliseconds,8:F0} ms   tunnel {t.TotalMilliseconds,8:F0} ms   ratio {t.TotalMilliseconds / d.TotalMilliseconds,5:F2}x (of each pair: {PairRatios(direct, tunnel)})   " +
                              $"tunnel cost: client CPU {cost.ClientCpu.TotalMilliseconds / mb,6:F1} ms/MB, {cost.ClientCpu.TotalMilliseconds * 1000 / messages,5:F1} us/msg, {(double)cost.Allocated / messages,6:F0} B allocated/msg; " +
                              $"agent CPU {cost.AgentCpu.TotalMilliseconds / mb,6:F1} ms/MB, {AgentAllocated(cost, messages)} B allocated/msg, {AgentSwitches(cost, messages)} switches/msg ({cost.Messages:N0} messages, {cost.Bytes / 1e6:F1} MB through the tunnel in {direct.Count} runs)");
            Console.WriteLine($"            client context switches {(cost.ContextSwitches < 0 ? "n/a" : (cost.ContextSwitches / mb).ToString("F0", CultureInfo.InvariantCulture))}/MB, " +
                              $"writes to local connections from the receive loop {cost.LocalWrites / mb:F0}/MB ({cost.LocalWrites:N0}), " +
                              $"gen0 collections {cost.Gen0Collections / mb:F2}/MB ({cost.Gen0Collections:N0}), thread-pool work items {cost.PoolItems / mb:F0}/MB ({cost.PoolItems:N0}, the bench's own included)");
            if (machineDirect.Known && machineTunnel.Known && direct.Count > 0 && machineTunnel.Busy > TimeSpan.Zero)
            {
                // As for the transactions: if the runs kept the cores busy, time goes with the machine's CPU per run.
                var directRun = machineDirect.Busy.TotalMilliseconds / direct.Count;
                var tunnelRun = machineTunnel.Busy.TotalMilliseconds / tunnel.Count;
                var agentRun = cost.AgentCpu.TotalMilliseconds / tunnel.Count;
                var clientRun = cost.ClientCpu.TotalMilliseconds / tunnel.Count;
                var ratio = t.TotalMilliseconds / d.TotalMilliseconds;
                var floor = ratio * MachineCpu.WithoutShare(tunnelRun, clientRun);
                var busy = machineTunnel.KeptBusy;
                Console.WriteLine($"            machine CPU per run (/proc/stat): direct {directRun:F0} ms ({machineDirect.BusyFraction:P0} busy), tunnel {tunnelRun:F0} ms ({machineTunnel.BusyFraction:P0} busy; " +
                                  $"this process {clientRun:F0} ms, agent double {agentRun:F0} ms); ratio with the agent's CPU elsewhere (estimate) " +
                                  $"{ratio * MachineCpu.WithoutShare(tunnelRun, agentRun):F2}x; if this process cost nothing (floor, estimate) {(busy ? floor.ToString("F2", CultureInfo.InvariantCulture) + "x" : "n/a (cores not busy)")}");
                return busy ? floor : null;
            }
            return null;
        }

        private static void PrintJit(JitWatch jit, CopyRuns runs)
        {
            if (!jit.Known) return;
            Console.WriteLine($"            tiered compilation during the runs (its background threads' CPU, /proc): direct runs: this process {runs.JitDirect.SelfMs} ms, agent double {runs.JitDirect.AgentMs} ms; " +
                              $"tunnel runs: this process {runs.JitTunnel.SelfMs} ms, agent double {runs.JitTunnel.AgentMs} ms (in all {runs.Direct.Count} + {runs.Tunnel.Count} runs)");
        }

        /// <summary>
        /// Whether a run at a fixed rate did clearly fewer transactions than offered: more than 10 % short, or three
        /// standard deviations of the schedule's own randomness (pgbench draws Poisson arrivals: rate × seconds of them).
        /// </summary>
        private static bool BehindRate(double tps, int rate, int seconds) => tps < rate * (1 - Math.Max(0.10, 3 / Math.Sqrt(rate * (double)seconds)));

        /// <summary>The legs of a round ("direct", "tunnel") that fell behind the offered rate (see <see cref="BehindRate"/>).</summary>
        private static IEnumerable<string> LegsBehind((int Clients, PgbenchResult Direct, PgbenchResult Tunnel) round, int rate, int seconds)
        {
            if (BehindRate(round.Direct.Tps, rate, seconds)) yield return "direct";
            if (BehindRate(round.Tunnel.Tps, rate, seconds)) yield return "tunnel";
        }

        private static void PrintGoals(List<(int Clients, PgbenchResult Direct, PgbenchResult Tunnel)> rows, List<(int Clients, double Ceiling)> ceilings,
            List<TimeSpan> outDirect, List<TimeSpan> outTunnel, double? outFloor, List<TimeSpan> inDirect, List<TimeSpan> inTunnel, double? inFloor, int rate, int seconds)
        {
            Console.WriteLine("issue 11 goals, measured (printed, not asserted; medians over the rounds):");
            var one = rows.Where(r => r.Clients == 1).ToList();
            var many = rows.Where(r => r.Clients == 32).ToList();
            // At a fixed rate both runs do the transactions offered: the tps goal is a closed loop's. A client count that
            // fell behind the rate has latencies of its schedule's lag: no latency goal is read from it.
            if (rate > 0)
            {
                Console.WriteLine($"  (at a fixed rate of {rate} tps: the tps goal needs a closed-loop run, without --rate; the latencies below are at the same offered load)");
                bool Behind(List<(int Clients, PgbenchResult Direct, PgbenchResult Tunnel)> set) => set.Any(r => LegsBehind(r, rate, seconds).Any());
                if (Behind(one))
                {
                    Console.WriteLine($"  1 client fell behind the offered {rate} tps: the latency goals need a rate it can keep up with");
                    one.Clear();
                }
                if (Behind(many))
                {
                    Console.WriteLine($"  32 clients fell behind the offered {rate} tps: the latency goals need a rate they can keep up with");
                    many.Clear();
                }
            }
            if (many.Count > 0)
            {
                if (rate == 0)
                {
                    Console.WriteLine($"  32 clients through one tunnel: {MedianOf(many.Select(r => r.Tunnel.Tps / r.Direct.Tps)):P0} of direct tps (goal >= 35 %; rounds {string.Join(" / ", many.Select(r => (r.Tunnel.Tps / r.Direct.Tps).ToString("P0", CultureInfo.InvariantCulture)))})");
                    // Only when every 32-client round kept the cores busy: a median of some rounds would read as all of them.
                    var ceiling = ceilings.Where(c => c.Clients == 32).Select(c => c.Ceiling).ToList();
                    if (ceiling.Count == many.Count)
                        Console.WriteLine($"    ceiling on this machine: {MedianOf(ceiling):P0} for a client that cost no CPU at all, the agent double sharing the cores as it did (estimate; rounds {string.Join(" / ", ceiling.Select(c => c.ToString("P0", CultureInfo.InvariantCulture)))})");
                }
                if (one.Count > 0)
                {
                    var manyP50 = MedianOf(many.Select(r => r.Tunnel.P50Ms));
                    var oneP50 = MedianOf(one.Select(r => r.Tunnel.P50Ms));
                    Console.WriteLine($"  32 clients tunnel p50 {manyP50:F3} ms vs 1 client tunnel p50 {oneP50:F3} ms: {manyP50 - oneP50:+0.000;-0.000} ms (goal <= +0.3 ms); direct: {MedianOf(many.Select(r => r.Direct.P50Ms)) - MedianOf(one.Select(r => r.Direct.P50Ms)):+0.000;-0.000} ms");
                }
            }
            if (one.Count > 0) Console.WriteLine($"  select 1, one client: tunnel p50 {MedianOf(one.Select(r => r.Tunnel.P50Ms - r.Direct.P50Ms)):+0.000;-0.000} ms over direct (goal <= 0.3 ms)");
            Console.WriteLine($"  COPY out {Median(outTunnel).TotalMilliseconds / Median(outDirect).TotalMilliseconds:F2}x direct time (goal <= 1.5x; of each pair {PairRatios(outDirect, outTunnel)}); " +
                              $"COPY in {Median(inTunnel).TotalMilliseconds / Median(inDirect).TotalMilliseconds:F2}x (goal <= 2x; of each pair {PairRatios(inDirect, inTunnel)})");
            if (outFloor != null || inFloor != null)
                Console.WriteLine($"    floor on this machine, for a client that cost no CPU at all (estimate): COPY out {Floor(outFloor)}, COPY in {Floor(inFloor)}");
            static string Floor(double? f) => f is { } v ? v.ToString("F2", CultureInfo.InvariantCulture) + "x" : "n/a (cores not busy)";
        }

        /// <summary>The official plugin's COPY runs beside the same run's direct and BastionTools runs (--plugin).</summary>
        private static void PrintPluginCopy(CopyRuns runs, long fileBytes)
        {
            if (runs.Plugin.Count == 0) return;
            var d = Median(runs.Direct);
            var p = Median(runs.Plugin);
            var t = Median(runs.Tunnel);
            var mb = Math.Max(1, fileBytes * runs.Plugin.Count) / 1e6;
            Console.WriteLine($"            official plugin {p.TotalMilliseconds,8:F0} ms   ratio {p.TotalMilliseconds / d.TotalMilliseconds,5:F2}x (of each pair: {PairRatios(runs.Direct, runs.Plugin)})   " +
                              $"plugin CPU {runs.PluginCost.PluginCpu.TotalMilliseconds / mb:F1} ms/MB, agent CPU {runs.PluginCost.AgentCpu.TotalMilliseconds / mb:F1} ms/MB; BastionTools' time {t.TotalMilliseconds / p.TotalMilliseconds:F2}x the plugin's");
        }

        /// <summary>The same run's figures for the official plugin beside BastionTools' (medians over the rounds).</summary>
        private static void PrintPluginComparison(OfficialPlugin plugin, List<(int Clients, PgbenchResult Direct, PgbenchResult Plugin, PgbenchResult Tunnel)> rows, CopyRuns copyOut, CopyRuns copyIn)
        {
            Console.WriteLine($"the official plugin {plugin.Version} in the same run, through the same agent double (medians over the rounds):");
            foreach (var clients in rows.Select(r => r.Clients).Distinct())
            {
                var these = rows.Where(r => r.Clients == clients).ToList();
                Console.WriteLine($"  {clients,3} clients: plugin {MedianOf(these.Select(r => r.Plugin.Tps / r.Direct.Tps)):P0} of direct tps, BastionTools {MedianOf(these.Select(r => r.Tunnel.Tps / r.Direct.Tps)):P0} " +
                                  $"({MedianOf(these.Select(r => r.Tunnel.Tps / r.Plugin.Tps)):F2}x the plugin's); added p50: plugin {MedianOf(these.Select(r => r.Plugin.P50Ms - r.Direct.P50Ms)):+0.000;-0.000} ms, " +
                                  $"BastionTools {MedianOf(these.Select(r => r.Tunnel.P50Ms - r.Direct.P50Ms)):+0.000;-0.000} ms");
            }
            static string Copy(CopyRuns runs) => $"plugin {Median(runs.Plugin).TotalMilliseconds / Median(runs.Direct).TotalMilliseconds:F2}x, BastionTools {Median(runs.Tunnel).TotalMilliseconds / Median(runs.Direct).TotalMilliseconds:F2}x direct time";
            Console.WriteLine($"  COPY out: {Copy(copyOut)}; COPY in: {Copy(copyIn)}");
        }

        /// <summary>The official plugin's process CPU and the agent double's, around a run through the plugin.</summary>
        private readonly record struct PluginCost(TimeSpan PluginCpu, TimeSpan AgentCpu)
        {
            public static PluginCost Take(OfficialPlugin plugin, Sandbox sandbox)
            {
                sandbox.Process.Refresh();
                return new PluginCost(plugin.Cpu, sandbox.Process.TotalProcessorTime);
            }

            public static PluginCost operator -(PluginCost a, PluginCost b) => new(a.PluginCpu - b.PluginCpu, a.AgentCpu - b.AgentCpu);
            public static PluginCost operator +(PluginCost a, PluginCost b) => new(a.PluginCpu + b.PluginCpu, a.AgentCpu + b.AgentCpu);
        }

        private static async Task TruncateAsync(Sandbox sandbox, int pgPort)
        {
            await using var c = new NpgsqlConnection(sandbox.PostgresConnectionString(pgPort));
            await c.OpenAsync().ConfigureAwait(false);
            await BenchDb.ExecAsync(c, "truncate bench_copy_in").ConfigureAwait(false);
        }

        /// <summary>psql running one command (a \copy), timed from start to exit.</summary>
        private static async Task<TimeSpan> Psql(PgTools tools, PgTarget db, int port, string command)
        {
            var psi = db.StartInfo(tools.Psql, port);
            foreach (var a in new[] { "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command }) psi.ArgumentList.Add(a);
            var sw = Stopwatch.StartNew();
            var (exit, _, stderr) = await RunAsync(psi).ConfigureAwait(false);
            var elapsed = sw.Elapsed;
            if (exit != 0) throw new InvalidOperationException($"psql failed (exit {exit}): {stderr.Trim()}");
            return elapsed;
        }

        /// <summary>
        /// pgbench with <paramref name="count"/> clients that connect and then sleep client-side: idle connections held
        /// by another process, so this process's memory is the tunnel's. Snapshot once all are open (the tunnel's own
        /// count of active connections), then pgbench is stopped.
        /// </summary>
        private static async Task<(MemorySnapshot? Snapshot, string? Failure)> HoldIdleConnectionsAsync(PgTools tools, PgTarget db, int port, string work, int count, PortForwardingSession session)
        {
            var script = Path.Combine(work, "sleep.sql");
            File.WriteAllText(script, "\\sleep 600 s\n");
            var psi = db.StartInfo(tools.Pgbench, port);
            foreach (var a in new[] { "-n", "-f", script, "-c", count.ToString(CultureInfo.InvariantCulture), "-j", Math.Min(count, 2).ToString(CultureInfo.InvariantCulture), "-t", "1" }) psi.ArgumentList.Add(a);
            var openedBefore = session.Connections.Opened;
            using var p = Process.Start(psi)!;
            var drain = Task.WhenAll(p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
            try
            {
                var deadline = Stopwatch.StartNew();
                // All of pgbench's connections accepted by the tunnel (opened since it started) and open at once.
                while (session.Connections.Opened - openedBefore < count || session.Connections.Active < count)
                {
                    if (p.HasExited) return (null, $"pgbench exited ({p.ExitCode}) with {session.Connections.Opened - openedBefore} of {count} connections opened: {(await drain.ConfigureAwait(false))[1].Trim()}");
                    if (deadline.Elapsed > TimeSpan.FromSeconds(120)) return (null, $"only {session.Connections.Opened - openedBefore} of {count} connections opened ({session.Connections.Active} active) after 120 s");
                    await Task.Delay(50).ConfigureAwait(false);
                }
                // Connected is not yet quiet: wait until nothing moves through the tunnel for a while.
                var last = -1L;
                while (true)
                {
                    var now = session.Connections.BytesIn + session.Connections.BytesOut;
                    if (now == last) break;
                    last = now;
                    await Task.Delay(500).ConfigureAwait(false);
                }
                return (MemorySnapshot.Take(), null);
            }
            finally
            {
                if (!p.HasExited) p.Kill();
                await p.WaitForExitAsync().ConfigureAwait(false);
                await drain.ConfigureAwait(false);
            }
        }

        internal static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(ProcessStartInfo psi)
        {
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            await p.WaitForExitAsync().ConfigureAwait(false);
            return (p.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
        }

        private static TimeSpan Median(List<TimeSpan> values)
        {
            var sorted = values.OrderBy(v => v).ToList();
            return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
        }

        private static double MedianOf(IEnumerable<double> values)
        {
            var sorted = values.OrderBy(v => v).ToList();
            return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
        }

        /// <summary>Tunnel/direct of each pair (run i of each list was taken back to back), as "median (min–max)".</summary>
        private static string PairRatios(List<TimeSpan> direct, List<TimeSpan> tunnel)
        {
            var ratios = direct.Zip(tunnel, (d, t) => t.TotalMilliseconds / d.TotalMilliseconds).ToList();
            return string.Format(CultureInfo.InvariantCulture, "{0:F2}x ({1:F2}x-{2:F2}x)", MedianOf(ratios), ratios.Min(), ratios.Max());
        }

        internal static string LoadAverage()
        {
            try
            {
                var parts = File.ReadAllText("/proc/loadavg").Split(' ');
                return $"{parts[0]} {parts[1]} {parts[2]} (1/5/15 min)";
            }
            catch (IOException)
            {
                return "unknown (no /proc/loadavg)";
            }
            catch (UnauthorizedAccessException)
            {
                return "unknown (no /proc/loadavg)";
            }
        }

        /// <summary>Where the PostgreSQL client tools are: $BASTIONTOOLS_PG_BIN, the newest /usr/lib/postgresql/*/bin, else PATH.</summary>
        internal sealed class PgTools
        {
            private PgTools(string pgbench, string psql, string version)
            {
                Pgbench = pgbench;
                Psql = psql;
                Version = version;
            }

            public string Pgbench { get; }
            public string Psql { get; }
            public string Version { get; }

            public static PgTools? Find()
            {
                var dirs = new List<string>();
                var fromEnv = Environment.GetEnvironmentVariable("BASTIONTOOLS_PG_BIN");
                if (!string.IsNullOrEmpty(fromEnv)) dirs.Add(fromEnv);
                if (Directory.Exists("/usr/lib/postgresql"))
                {
                    dirs.AddRange(Directory.GetDirectories("/usr/lib/postgresql")
                        .OrderByDescending(d => int.TryParse(Path.GetFileName(d).Split('.')[0], NumberStyles.None, CultureInfo.InvariantCulture, out var v) ? v : 0)
                        .Select(d => Path.Combine(d, "bin")));
                }
                dirs.AddRange((Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
                foreach (var dir in dirs)
                {
                    var pgbench = Path.Combine(dir, OperatingSystem.IsWindows() ? "pgbench.exe" : "pgbench");
                    var psql = Path.Combine(dir, OperatingSystem.IsWindows() ? "psql.exe" : "psql");
                    if (File.Exists(pgbench) && File.Exists(psql))
                    {
                        var psi = new ProcessStartInfo(pgbench) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                        psi.ArgumentList.Add("--version");
                        using var p = Process.Start(psi)!;
                        var version = p.StandardOutput.ReadToEnd().Trim();
                        p.WaitForExit();
                        return new PgTools(pgbench, psql, version.Replace("pgbench (PostgreSQL) ", "", StringComparison.Ordinal));
                    }
                }
                return null;
            }
        }

        /// <summary>The sandbox's throwaway superuser; its password goes into the child's environment only.</summary>
        internal sealed class PgTarget
        {
            private readonly string _password;

            public PgTarget(string user, string password, string database)
            {
                User = user;
                _password = password;
                Database = database;
            }

            public string User { get; }
            public string Database { get; }

            public ProcessStartInfo StartInfo(string tool, int port)
            {
                var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                // Where to connect through libpq's variables (pgbench's -d is --debug, not the database).
                psi.Environment["PGHOST"] = "127.0.0.1";
                psi.Environment["PGPORT"] = port.ToString(CultureInfo.InvariantCulture);
                psi.Environment["PGUSER"] = User;
                psi.Environment["PGDATABASE"] = Database;
                // The child's environment only (a copy of this process's), never this process's own.
                psi.Environment["PGPASSWORD"] = _password;
                psi.Environment["PGSSLMODE"] = "disable";
                psi.Environment["PGCONNECT_TIMEOUT"] = "60";
                return psi;
            }
        }

        internal sealed class PgbenchResult
        {
            public double Tps { get; private set; }
            public long Transactions { get; private set; }
            public double P50Ms { get; private set; }
            public double P99Ms { get; private set; }

            public static async Task<PgbenchResult> RunAsync(PgTools tools, PgTarget db, int port, string script, string protocol, int clients, int seconds, string logPrefix, int rate = 0)
            {
                var psi = db.StartInfo(tools.Pgbench, port);
                foreach (var a in new[]
                {
                    "-n", "-f", script, "-M", protocol, "-c", clients.ToString(CultureInfo.InvariantCulture),
                    "-j", Math.Min(clients, 2).ToString(CultureInfo.InvariantCulture), "-T", seconds.ToString(CultureInfo.InvariantCulture),
                    "-l", "--log-prefix=" + logPrefix,
                })
                {
                    psi.ArgumentList.Add(a);
                }
                if (rate > 0)
                {
                    psi.ArgumentList.Add("-R");
                    psi.ArgumentList.Add(rate.ToString(CultureInfo.InvariantCulture));
                }
                psi.WorkingDirectory = Path.GetDirectoryName(logPrefix);
                var (exit, stdout, stderr) = await ConcurrencyBench.RunAsync(psi).ConfigureAwait(false);
                if (exit != 0) throw new InvalidOperationException($"pgbench failed (exit {exit}): {stderr.Trim()}");

                // "tps = 12345.678901 (without initial connection time)"
                var tpsLine = stdout.Split('\n').FirstOrDefault(l => l.StartsWith("tps = ", StringComparison.Ordinal))
                              ?? throw new InvalidOperationException("pgbench printed no tps line: " + stdout + stderr);
                var tps = double.Parse(tpsLine.Substring(6).Split(' ')[0], CultureInfo.InvariantCulture);
                return new PgbenchResult { Tps = tps, _logPrefix = logPrefix, _scheduled = rate > 0 };
            }

            private string? _logPrefix;
            private bool _scheduled;

            /// <summary>
            /// Reads (and deletes) pgbench's per-transaction log: the transaction count and the p50/p99 latencies. Kept out
            /// of <see cref="RunAsync"/> so that a caller measuring this process's CPU and allocations over a run can take
            /// its counters first: parsing the log of a 5 s run at 12k tps (60,000 lines) is this process's work, not the
            /// tunnel's, and it was counted as the tunnel's (about 40 % of the bytes allocated over a 32-client run).
            /// </summary>
            public PgbenchResult ReadLog()
            {
                if (_logPrefix == null) return this;
                var logPrefix = _logPrefix;
                _logPrefix = null;

                // Per-transaction log lines: client_id transaction_no time script_no time_epoch time_us. pgbench's own
                // "time" column reads 0 us whenever the answer was already there when it looked (it reuses the clock
                // reading it took when it sent the query), which biases fast direct loopback figures low; so each
                // transaction's latency here is the time between two consecutive completions of the same client (the
                // time_epoch/time_us stamps): what a closed-loop client sees, pgbench's own turn-around included.
                var byClient = new Dictionary<int, List<(long Tx, long EndUs)>>();
                var latencies = new List<double>();
                long transactions = 0;
                var dir = Path.GetDirectoryName(logPrefix)!;
                var name = Path.GetFileName(logPrefix);
                foreach (var file in Directory.GetFiles(dir, name + ".*"))
                {
                    foreach (var line in File.ReadLines(file))
                    {
                        var f = line.Split(' ');
                        if (f.Length >= 6 && int.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out var client)
                            && long.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out var tx)
                            && long.TryParse(f[4], NumberStyles.None, CultureInfo.InvariantCulture, out var epoch)
                            && long.TryParse(f[5], NumberStyles.None, CultureInfo.InvariantCulture, out var us))
                        {
                            // At a fixed rate (-R) a client waits for its next scheduled start: its own "time" column
                            // (from the scheduled start, lag included) is the latency.
                            if (_scheduled)
                            {
                                if (!long.TryParse(f[2], NumberStyles.None, CultureInfo.InvariantCulture, out var timeUs)) continue;
                                latencies.Add(timeUs / 1000.0);
                                transactions++;
                                continue;
                            }
                            if (!byClient.TryGetValue(client, out var list)) byClient[client] = list = new List<(long, long)>();
                            list.Add((tx, epoch * 1_000_000 + us));
                        }
                    }
                    File.Delete(file);
                }
                foreach (var list in byClient.Values)
                {
                    transactions += list.Count;
                    list.Sort((a, b) => a.Tx.CompareTo(b.Tx));
                    for (var i = 1; i < list.Count; i++) latencies.Add((list[i].EndUs - list[i - 1].EndUs) / 1000.0);
                }
                if (latencies.Count == 0) throw new InvalidOperationException("pgbench wrote no per-transaction log under " + logPrefix);
                latencies.Sort();
                Transactions = transactions;
                P50Ms = Pct(latencies, 50);
                P99Ms = Pct(latencies, 99);
                return this;
            }

            private static double Pct(List<double> sorted, int p) => sorted[Math.Min(sorted.Count - 1, Math.Max(0, (int)Math.Ceiling(p / 100.0 * sorted.Count) - 1))];
        }

        /// <summary>This process's own counters (it hosts the tunnel) and the sandbox agent's CPU time.</summary>
        private readonly struct Counters
        {
            private Counters(TimeSpan clientCpu, TimeSpan agentCpu, long allocated, long messages, long bytes, long agentAllocated, long agentSwitches, long switches, long localWrites, long gen0, long poolItems)
            {
                PoolItems = poolItems;
                Gen0Collections = gen0;
                AgentSwitches = agentSwitches;
                AgentAllocated = agentAllocated;
                ClientCpu = clientCpu;
                AgentCpu = agentCpu;
                Allocated = allocated;
                Messages = messages;
                Bytes = bytes;
                ContextSwitches = switches;
                LocalWrites = localWrites;
            }

            public TimeSpan ClientCpu { get; }
            public TimeSpan AgentCpu { get; }
            public long Allocated { get; }
            public long Messages { get; }
            public long Bytes { get; }
            /// <summary>The sandbox process's allocated bytes; negative when it cannot tell.</summary>
            public long AgentAllocated { get; }
            /// <summary>The sandbox threads' voluntary context switches; negative when it cannot tell.</summary>
            public long AgentSwitches { get; }
            /// <summary>This process's context switches, voluntary and not (getrusage, all threads); negative when it cannot tell.</summary>
            public long ContextSwitches { get; }
            /// <summary>Writes the multiplexed forwarder made to local connections from the receive loop.</summary>
            public long LocalWrites { get; }
            /// <summary>This process's generation-0 garbage collections (each pauses its threads; fewer allocations, fewer of them).</summary>
            public long Gen0Collections { get; }
            /// <summary>Work items this process's thread pool completed (each a hop to a pool thread, which may have to be woken).</summary>
            public long PoolItems { get; }

            public static Counters Take(PortForwardingSession session, Sandbox sandbox)
            {
                using var self = Process.GetCurrentProcess();
                sandbox.Process.Refresh();
                return new Counters(self.TotalProcessorTime, sandbox.Process.TotalProcessorTime, GC.GetTotalAllocatedBytes(false),
                    session.Channel!.MessagesSent + session.Channel.MessagesReceived, session.Connections.BytesIn + session.Connections.BytesOut, sandbox.AllocatedBytes(),
                    VoluntarySwitches(sandbox.Process.Id), SelfContextSwitches(), (session.Forwarder as MuxPortForwarder)?.LocalSends ?? 0,
                    GC.CollectionCount(0), ThreadPool.CompletedWorkItemCount);
            }

            private static long SelfContextSwitches()
            {
                try
                {
                    return getrusage(0, out var usage) == 0 ? usage.NVcsw + usage.NIvcsw : -1;
                }
                catch (Exception ex) when (ex is DllNotFoundException || ex is EntryPointNotFoundException)
                {
                    return -1;
                }
            }

            [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
            private static extern int getrusage(int who, out RUsage usage);

            /// <summary>Linux x86-64/arm64 struct rusage: two timevals, then 14 longs.</summary>
            [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
            private struct RUsage
            {
                public long UtimeSec, UtimeUsec, StimeSec, StimeUsec;
                public long MaxRss, IxRss, IdRss, IsRss, MinFlt, MajFlt, NSwap, InBlock, OuBlock, MsgSnd, MsgRcv, NSignals, NVcsw, NIvcsw;
            }

            public static Counters operator -(Counters a, Counters b) =>
                new(a.ClientCpu - b.ClientCpu, a.AgentCpu - b.AgentCpu, a.Allocated - b.Allocated, a.Messages - b.Messages, a.Bytes - b.Bytes,
                    a.AgentAllocated < 0 || b.AgentAllocated < 0 ? -1 : a.AgentAllocated - b.AgentAllocated,
                    a.AgentSwitches < 0 || b.AgentSwitches < 0 ? -1 : a.AgentSwitches - b.AgentSwitches,
                    a.ContextSwitches < 0 || b.ContextSwitches < 0 ? -1 : a.ContextSwitches - b.ContextSwitches, a.LocalWrites - b.LocalWrites,
                    a.Gen0Collections - b.Gen0Collections, a.PoolItems - b.PoolItems);

            public static Counters operator +(Counters a, Counters b) =>
                new(a.ClientCpu + b.ClientCpu, a.AgentCpu + b.AgentCpu, a.Allocated + b.Allocated, a.Messages + b.Messages, a.Bytes + b.Bytes,
                    a.AgentAllocated < 0 || b.AgentAllocated < 0 ? -1 : a.AgentAllocated + b.AgentAllocated,
                    a.AgentSwitches < 0 || b.AgentSwitches < 0 ? -1 : a.AgentSwitches + b.AgentSwitches,
                    a.ContextSwitches < 0 || b.ContextSwitches < 0 ? -1 : a.ContextSwitches + b.ContextSwitches, a.LocalWrites + b.LocalWrites,
                    a.Gen0Collections + b.Gen0Collections, a.PoolItems + b.PoolItems);
        }

        /// <summary>CPU time (ms) of the tiered compiler's background threads of this process and of the agent double.</summary>
        private readonly struct JitWork
        {
            public JitWork(long selfMs, long agentMs)
            {
                SelfMs = selfMs;
                AgentMs = agentMs;
            }

            public long SelfMs { get; }
            public long AgentMs { get; }

            // A worker thread that exits (after seconds without work) takes its time with it: a difference is never below 0.
            public static JitWork operator -(JitWork a, JitWork b) => new(Math.Max(0, a.SelfMs - b.SelfMs), Math.Max(0, a.AgentMs - b.AgentMs));
            public static JitWork operator +(JitWork a, JitWork b) => new(a.SelfMs + b.SelfMs, a.AgentMs + b.AgentMs);
        }

        /// <summary>
        /// The runtime's tiered compilation compiles a method again, optimised, on a background thread once it has been
        /// called 30 times. The bench's own work between runs (a request to the sandbox for its counters, starting psql,
        /// reading /proc) keeps feeding that thread, in this process and in the agent double, long after the tunnel's paths
        /// are optimised: during the COPY runs it was 35-45 % of this process's CPU (perf; per-thread CPU from /proc), and
        /// its work landed on whichever run came next (10-90 ms of CPU within a 150-250 ms run, direct or tunnel). Before
        /// each measured run the bench waits until neither process's compiler thread has used CPU for a while (a condition,
        /// polled); what still runs during the runs is printed. Linux (/proc) only; elsewhere nothing is waited for.
        /// </summary>
        private sealed class JitWatch
        {
            public static readonly TimeSpan QuietFor = TimeSpan.FromMilliseconds(300);
            public static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(5);
            private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(50);
            private readonly int _agentPid;

            public JitWatch(int agentPid)
            {
                _agentPid = agentPid;
                Known = WorkerCpuMs(Environment.ProcessId) >= 0 && WorkerCpuMs(agentPid) >= 0;
            }

            public bool Known { get; }
            public TimeSpan Waited { get; private set; }
            public int Waits { get; private set; }
            public int GaveUp { get; private set; }

            public JitWork Take() => Known ? new JitWork(WorkerCpuMs(Environment.ProcessId), WorkerCpuMs(_agentPid)) : default;

            public async Task WaitQuietAsync()
            {
                if (!Known) return;
                var clock = Stopwatch.StartNew();
                var last = Take();
                var quietSince = TimeSpan.Zero;
                while (clock.Elapsed - quietSince < QuietFor)
                {
                    if (clock.Elapsed >= MaxWait)
                    {
                        GaveUp++;
                        break;
                    }
                    await Task.Delay(Poll).ConfigureAwait(false);
                    var now = Take();
                    if (now.SelfMs == last.SelfMs && now.AgentMs == last.AgentMs) continue;
                    last = now;
                    quietSince = clock.Elapsed;
                }
                Waits++;
                Waited += clock.Elapsed;
            }

            /// <summary>
            /// CPU time (utime + stime, ms) of the process's threads named ".NET Tiered Com…" (the runtime's tiered
            /// compilation worker, its name cut to 15 characters by Linux); -1 without /proc.
            /// </summary>
            private static long WorkerCpuMs(int pid) => SumOverThreads(pid, "stat", stat =>
            {
                var open = stat.IndexOf('(');
                var close = stat.LastIndexOf(')');
                if (open < 0 || close < open || !stat.AsSpan(open + 1, close - open - 1).StartsWith(".NET Tiered", StringComparison.Ordinal)) return 0;
                // After "(comm) ": state, ppid, …; utime and stime are fields 14 and 15 of the line, in USER_HZ (100 per second).
                var fields = stat.Substring(close + 2).Split(' ');
                return (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) * 10;
            });
        }

        /// <summary>
        /// CPU time and voluntary context switches (threads that blocked and were woken again: timers, pool threads) of this
        /// process and the agent double over a span with no traffic, taken once the tiered compiler's threads are quiet. The
        /// session's timers run whether or not anything flows: an open tunnel costs this much for as long as it is open.
        /// </summary>
        private readonly struct IdleCost
        {
            public static readonly TimeSpan Span = TimeSpan.FromSeconds(5);

            private IdleCost(ProcessRate self, ProcessRate agent, double jitMs)
            {
                Self = self;
                Agent = agent;
                JitMs = jitMs;
            }

            public ProcessRate Self { get; }
            public ProcessRate Agent { get; }
            /// <summary>The tiered compiler's CPU (both processes) within the span, included in the CPU figures.</summary>
            public double JitMs { get; }

            public static async Task<IdleCost> MeasureAsync(Process agent, JitWatch jit)
            {
                await jit.WaitQuietAsync().ConfigureAwait(false);
                using var self = Process.GetCurrentProcess();
                var self0 = ProcessSample.Take(self);
                var agent0 = ProcessSample.Take(agent);
                var jit0 = jit.Take();
                var clock = Stopwatch.StartNew();
                await Task.Delay(Span).ConfigureAwait(false);
                var seconds = clock.Elapsed.TotalSeconds;
                var jit1 = jit.Take();
                return new IdleCost(ProcessSample.Take(self).RateSince(self0, seconds), ProcessSample.Take(agent).RateSince(agent0, seconds),
                    Math.Max(0, jit1.SelfMs - jit0.SelfMs) + Math.Max(0, jit1.AgentMs - jit0.AgentMs));
            }

            public static string Describe(IdleCost before, IdleCost open) =>
                $"idle, nothing flowing ({Span.TotalSeconds:F0} s each; CPU ms per second, voluntary context switches per second): before the session this process {before.Self}, " +
                $"agent double {before.Agent}; session open this process {open.Self}, agent double {open.Agent} (tiered compilation within: {before.JitMs:F0} and {open.JitMs:F0} ms)";
        }

        /// <summary>A process's CPU time and its live threads' voluntary context switches (-1 without /proc) at one moment.</summary>
        private readonly struct ProcessSample
        {
            private ProcessSample(TimeSpan cpu, long switches)
            {
                Cpu = cpu;
                Switches = switches;
            }

            public TimeSpan Cpu { get; }
            public long Switches { get; }

            public static ProcessSample Take(Process process)
            {
                process.Refresh();
                return new ProcessSample(process.TotalProcessorTime, VoluntarySwitches(process.Id));
            }

            public ProcessRate RateSince(ProcessSample earlier, double seconds) => new(
                (Cpu - earlier.Cpu).TotalMilliseconds / seconds,
                Switches < 0 || earlier.Switches < 0 ? -1 : Math.Max(0, Switches - earlier.Switches) / seconds);
        }

        /// <summary>CPU ms and voluntary context switches per second (switches negative where unknown).</summary>
        private readonly struct ProcessRate
        {
            public ProcessRate(double cpuMsPerSecond, double switchesPerSecond)
            {
                CpuMsPerSecond = cpuMsPerSecond;
                SwitchesPerSecond = switchesPerSecond;
            }

            public double CpuMsPerSecond { get; }
            public double SwitchesPerSecond { get; }

            public override string ToString() =>
                $"{CpuMsPerSecond:F1} ms/s" + (SwitchesPerSecond < 0 ? "" : $" ({SwitchesPerSecond:F0} switches/s)");
        }

        /// <summary>One COPY direction's runs: times, the machine's CPU on each side, the tunnel's own counters, and the JIT work during the runs.</summary>
        private sealed class CopyRuns
        {
            public List<TimeSpan> Direct { get; } = new();
            public List<TimeSpan> Tunnel { get; } = new();
            /// <summary>Through the official plugin (--plugin); empty without it.</summary>
            public List<TimeSpan> Plugin { get; } = new();
            public PluginCost PluginCost { get; set; }
            public MachineCpu MachineDirect { get; set; } = MachineCpu.Zero;
            public MachineCpu MachineTunnel { get; set; } = MachineCpu.Zero;
            public Counters Cost { get; set; }
            public JitWork JitDirect { get; set; }
            public JitWork JitTunnel { get; set; }
        }

        private readonly struct MemorySnapshot
        {
            private MemorySnapshot(double ws, double managed)
            {
                WorkingSetMB = ws;
                ManagedMB = managed;
            }

            public double WorkingSetMB { get; }
            public double ManagedMB { get; }

            public static MemorySnapshot Take()
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                GC.Collect();
                using var p = Process.GetCurrentProcess();
                return new MemorySnapshot(p.WorkingSet64 / 1048576.0, GC.GetTotalMemory(false) / 1048576.0);
            }
        }
    }
}
