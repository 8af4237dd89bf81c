using System;
using Amazon.Runtime;
using BastionTools.Aws;
using BastionTools.Sandbox;
using Npgsql;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// A sandbox (agent + PostgreSQL) for the engine's end-to-end tests, with the engine's AWS API pointed at it, and
    /// optionally the TCP fault proxy in front of it. BASTIONTOOLS_SANDBOX_LOG=&lt;file&gt; keeps the sandbox's log.
    /// </summary>
    public abstract class SandboxTunnelFixture : IDisposable
    {
        protected SandboxTunnelFixture(bool faultProxy)
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            Host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions { StartPostgres = true, FaultProxy = faultProxy, Log = DebugLog });
            Host.Start();
            var c = Host.World.Credentials[0];
            Api = new AwsApi(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), Host.World.Region, Host.SsmEndpoint.ToString());
        }

        private static void DebugLog(string line)
        {
            var path = Environment.GetEnvironmentVariable("BASTIONTOOLS_SANDBOX_LOG");
            if (path != null) lock (typeof(SandboxTunnelFixture)) System.IO.File.AppendAllText(path, line + "\n");
        }

        public SandboxHost Host { get; }
        internal AwsApi Api { get; }
        public PostgresCluster Postgres => Host.Postgres!;

        /// <summary>Npgsql to the sandbox's PostgreSQL on <paramref name="port"/> (a tunnel's listener, or the cluster itself).</summary>
        public string ConnectionString(int port, bool pooling = false, int commandTimeout = 30, int maxPoolSize = 32) => new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1",
            Port = port,
            Username = Postgres.SuperUser,
            Password = Postgres.SuperPassword,
            Database = Postgres.Database,
            Pooling = pooling,
            MaxPoolSize = maxPoolSize,
            SslMode = SslMode.Disable,
            Timeout = 60,
            CommandTimeout = commandTimeout,
        }.ConnectionString;

        public void Dispose()
        {
            Api.Dispose();
            Host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    /// <summary>The sandbox for <see cref="TunnelTests"/>.</summary>
    public sealed class TunnelFixture : SandboxTunnelFixture
    {
        public TunnelFixture()
            : base(faultProxy: false)
        {
        }
    }

    /// <summary>The sandbox for <see cref="ResilienceTests"/>: every byte a client exchanges with "AWS" crosses the fault proxy.</summary>
    public sealed class ResilienceFixture : SandboxTunnelFixture
    {
        public ResilienceFixture()
            : base(faultProxy: true)
        {
        }

        public FaultProxy Proxy => Host.Proxy!;
    }
}
