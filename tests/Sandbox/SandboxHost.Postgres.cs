using System;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    public sealed partial class SandboxHostOptions
    {
        /// <summary>Also start a local PostgreSQL cluster (<see cref="SandboxHost.Postgres"/>) with the host, and stop it with the host.</summary>
        public bool StartPostgres { get; set; }
        /// <summary>Options for that cluster; null for the defaults (its Log defaults to <see cref="Log"/>).</summary>
        public PostgresClusterOptions? PostgresOptions { get; set; }
    }

    public sealed partial class SandboxHost
    {
        private PostgresCluster? _postgres;

        /// <summary>The host's PostgreSQL cluster when <see cref="SandboxHostOptions.StartPostgres"/> is set (after Start), else null.</summary>
        public PostgresCluster? Postgres => Volatile.Read(ref _postgres);

        /// <summary>Starts the cluster when the options ask for it (blocks; bounded by the cluster's StartTimeout).</summary>
        private void StartPostgresIfRequested()
        {
            if (_options.StartRdsProxy && !_options.StartPostgres) throw new InvalidOperationException("SandboxHostOptions.StartRdsProxy requires StartPostgres (the front relays to the host's own cluster).");
            if (!_options.StartPostgres || _postgres != null) return;
            var options = _options.PostgresOptions ?? new PostgresClusterOptions();
            if (options.Log == null && _options.Log != null) options.Log = _options.Log;
            var cluster = Task.Run(() => PostgresCluster.StartAsync(options, CancellationToken.None)).GetAwaiter().GetResult();
            Volatile.Write(ref _postgres, cluster);
            StartRdsProxyIfRequested();
        }

        private async Task StopPostgresAsync()
        {
            await StopRdsProxyAsync().ConfigureAwait(false);
            var cluster = Interlocked.Exchange(ref _postgres, null);
            if (cluster != null) await cluster.StopAsync().ConfigureAwait(false);
        }
    }
}
