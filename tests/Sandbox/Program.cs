using System;
using System.Globalization;
using System.IO;
using System.Runtime.InteropServices;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// dotnet run --project tests/Sandbox -- [--port N] [--config world.json] [--faults '{"dropRate":0.1,...}'] [--verbose] [--no-stdin] [--postgres] [--rds] [--fault-proxy] [--windows-powershell PATH]
    /// Prints one line of JSON (endpoints, region, fake credentials, instances) on stdout, then serves until stdin
    /// closes (unless --no-stdin), or SIGINT/SIGTERM. Logs go to stderr. --postgres also starts a throwaway local
    /// PostgreSQL cluster (see <see cref="PostgresCluster"/>), adds "postgres":{...} to the JSON and stops it on exit.
    /// --rds (implies --postgres) also starts the RDS-IAM front (see <see cref="RdsIamProxy"/>) and adds
    /// "rds":{"endpoint","port","proxyPort","caBundle","iamRole",...} and "rdsCaBundle" to the JSON; port-forwarding
    /// sessions to endpoint:port reach it through the agent double.
    /// --fault-proxy puts a TCP fault proxy (see <see cref="FaultProxy"/>) in front of the host: "ssm", "ec2" and
    /// "streamUrlBase" (and the StreamUrl of sessions) go through it, "control" stays direct, and the JSON gets
    /// "proxy":{"port","control"}; POST /control/proxy/blackout[?seconds=N], /restore, /reset,
    /// /halfopen?direction=ClientToServer|ServerToClient and GET /control/proxy drive it.
    /// --windows-powershell PATH (a pwsh executable or pwsh.dll) is what instances whose PlatformType is Windows run as
    /// powershell.exe for AWS-StartNonInteractiveCommand (see <see cref="WindowsPowerShell"/>); without it one is looked up.
    /// IAM: each credential of the world file may carry an IAM "policy" (none: it may do everything); /control/iam
    /// changes them at run time (see <see cref="SandboxIamPolicy"/> and AGENT.md).
    /// </summary>
    public static class Program
    {
        public static async Task<int> Main(string[] args)
        {
            int port = 0;
            string? config = null;
            string? faults = null;
            var verbose = false;
            var watchStdin = true;
            var postgres = false;
            var rds = false;
            var faultProxy = false;
            TimeSpan? outputReadPause = null;
            string? windowsPowerShell = null;
            for (var i = 0; i < args.Length; i++)
            {
                switch (args[i])
                {
                    case "--port" when i + 1 < args.Length && int.TryParse(args[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out var p) && p <= 65535:
                        port = p;
                        i++;
                        break;
                    case "--config" when i + 1 < args.Length:
                        config = args[++i];
                        break;
                    case "--faults" when i + 1 < args.Length:
                        faults = args[++i];
                        break;
                    case "--verbose":
                        verbose = true;
                        break;
                    case "--no-stdin":
                        watchStdin = false;
                        break;
                    case "--postgres":
                        postgres = true;
                        break;
                    case "--rds":
                        rds = true;
                        postgres = true;
                        break;
                    case "--fault-proxy":
                        faultProxy = true;
                        break;
                    case "--output-read-pause-ms" when i + 1 < args.Length && int.TryParse(args[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out var pauseMs):
                        // SandboxAgentOptions.OutputReadPause: the agent's 1 ms sleep after each read; 0 is the faster mode.
                        outputReadPause = TimeSpan.FromMilliseconds(pauseMs);
                        i++;
                        break;
                    case "--windows-powershell" when i + 1 < args.Length:
                        // SandboxAgentOptions.WindowsPowerShell: the PowerShell that Windows instances run as powershell.exe.
                        windowsPowerShell = args[++i];
                        break;
                    case "--help":
                    case "-h":
                        Console.Out.WriteLine("usage: BastionTools.Sandbox [--port N] [--config world.json] [--faults JSON] [--verbose] [--no-stdin] [--postgres] [--rds] [--fault-proxy] [--output-read-pause-ms N] [--windows-powershell PATH]");
                        return 0;
                    default:
                        Console.Error.WriteLine("sandbox: unknown or incomplete argument '" + args[i] + "' (see --help)");
                        return 2;
                }
            }

            SandboxWorld world;
            try
            {
                world = config == null ? SandboxWorld.CreateDefault() : SandboxWorld.LoadFile(config);
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException || ex is System.Text.Json.JsonException || ex is InvalidDataException || ex is ArgumentException)
            {
                Console.Error.WriteLine("sandbox: cannot read configuration '" + config + "': " + ex.Message);
                return 2;
            }

            var options = new SandboxHostOptions { Port = port, StartPostgres = postgres, StartRdsProxy = rds, FaultProxy = faultProxy };
            if (verbose) options.Log = line => Console.Error.WriteLine("sandbox: " + line);
            await using var host = new SandboxHost(world, options);
            if (outputReadPause is { } readPause) host.Agent.Options.OutputReadPause = readPause;
            if (windowsPowerShell != null) host.Agent.Options.WindowsPowerShell = WindowsPowerShell.FromPath(windowsPowerShell);
            if (faults != null)
            {
                try
                {
                    host.Agent.Faults = SandboxFaultOptions.FromJson(faults);
                }
                catch (ArgumentException ex)
                {
                    Console.Error.WriteLine("sandbox: " + ex.Message);
                    return 2;
                }
            }
            try
            {
                host.Start();
            }
            catch (System.Net.Sockets.SocketException ex)
            {
                Console.Error.WriteLine("sandbox: cannot listen on 127.0.0.1:" + port.ToString(CultureInfo.InvariantCulture) + ": " + ex.Message);
                return 1;
            }
            catch (PostgresClusterException ex)
            {
                Console.Error.WriteLine("sandbox: " + ex.Message);
                return 1;
            }
            catch (RdsIamProxyException ex)
            {
                Console.Error.WriteLine("sandbox: " + ex.Message);
                return 1;
            }

            var stop = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; stop.TrySetResult("SIGTERM"); });
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, ctx => { ctx.Cancel = true; stop.TrySetResult("SIGINT"); });

            Console.Out.WriteLine(host.DescribeJson());
            Console.Out.Flush();

            if (watchStdin)
            {
                _ = Task.Run(async () =>
                {
                    try
                    {
                        using var stdin = Console.OpenStandardInput();
                        var buffer = new byte[4096];
                        while (await stdin.ReadAsync(buffer, 0, buffer.Length).ConfigureAwait(false) > 0)
                        {
                        }
                    }
                    catch (IOException)
                    {
                    }
                    stop.TrySetResult("stdin closed");
                });
            }

            var reason = await stop.Task.ConfigureAwait(false);
            if (verbose) Console.Error.WriteLine("sandbox: stopping (" + reason + ")");
            await host.StopAsync().ConfigureAwait(false);
            return 0;
        }
    }
}
