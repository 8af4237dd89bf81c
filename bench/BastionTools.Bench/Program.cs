using System;
using System.Linq;
using System.Threading.Tasks;

namespace BastionTools.Bench
{
    internal static class Program
    {
        private static async Task<int> Main(string[] args)
        {
            var what = args.Length > 0 ? args[0] : "token";
            var rest = args.Skip(1).ToArray();
            switch (what)
            {
                case "token":
                    return TokenBench.Run(rest);
                case "tunnel":
                    return await TunnelBench.RunAsync(rest).ConfigureAwait(false);
                case "iam":
                    return await IamBench.RunAsync(rest).ConfigureAwait(false);
                case "concurrency":
                    return await ConcurrencyBench.RunAsync(rest).ConfigureAwait(false);
                case "ack":
                    return AckBench.Run(rest);
                case "plugin-check":
                    return await PluginCheck.RunAsync(rest).ConfigureAwait(false);
                case "resilience":
                    return await ResilienceBench.RunAsync(rest).ConfigureAwait(false);
                default:
                    Console.Error.WriteLine("usage: BastionTools.Bench token [seconds] | tunnel --sandbox <dll> | iam --sandbox <dll> | concurrency --sandbox <dll> [--clients 1,8,32,64] [--seconds N] [--protocol simple|extended|prepared] [--sql SQL] [--copy-rows N] [--copy-runs N] [--idle-connections N] | resilience --sandbox <dll> [--megabytes N] [--blackout S] | ack [rounds] | plugin-check --sandbox <dll> --plugin <session-manager-plugin> [--rows N]");
                    return 2;
            }
        }
    }
}
