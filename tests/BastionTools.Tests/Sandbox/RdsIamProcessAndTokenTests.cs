using System;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;
using BastionTools.Sandbox;
using Xunit;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>The token check on its own (temporary credentials) and the standalone sandbox with --rds.</summary>
    public sealed class RdsIamProcessAndTokenTests
    {
        private const string Endpoint = RdsIamProxyOptions.DefaultEndpointName;

        [Fact]
        public void TemporaryCredentials_NeedTheirSecurityToken_InTheSignedToken()
        {
            var world = new SandboxWorld();
            world.AddCredential(new SandboxCredential { AccessKeyId = "ASIASANDBOXTEMP00001", SecretAccessKey = "temp/secret/key/for/tests/0000000000000", SessionToken = "FwoGZXIvYXdzEXAMPLE+/=token" });
            var now = new DateTime(2025, 3, 4, 5, 6, 7, DateTimeKind.Utc);
            var keys = new AwsKeys("ASIASANDBOXTEMP00001", "temp/secret/key/for/tests/0000000000000", "FwoGZXIvYXdzEXAMPLE+/=token");
            var token = RdsAuthToken.Generate(Endpoint, 5432, "app", "us-west-2", keys, now);
            Assert.Contains("X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE%2B%2F%3Dtoken", token, StringComparison.Ordinal);
            Assert.Null(RdsIamToken.Validate(token, "app", Endpoint, 5432, world, now.AddMinutes(14)));
            Assert.Null(RdsIamToken.Validate(token, "app", Endpoint.ToUpperInvariant(), 5432, world, now));

            var withoutSessionToken = RdsAuthToken.Generate(Endpoint, 5432, "app", "us-west-2", new AwsKeys(keys.AccessKeyId, keys.SecretAccessKey, null), now);
            Assert.Contains("temporary", RdsIamToken.Validate(withoutSessionToken, "app", Endpoint, 5432, world, now), StringComparison.Ordinal);
            var otherSessionToken = RdsAuthToken.Generate(Endpoint, 5432, "app", "us-west-2", new AwsKeys(keys.AccessKeyId, keys.SecretAccessKey, "another"), now);
            Assert.Contains("does not match", RdsIamToken.Validate(otherSessionToken, "app", Endpoint, 5432, world, now), StringComparison.Ordinal);
            Assert.Contains("scheme", RdsIamToken.Validate("https://" + token, "app", Endpoint, 5432, world, now), StringComparison.Ordinal);
            Assert.Contains("unknown access key id", RdsIamToken.Validate(
                RdsAuthToken.Generate(Endpoint, 5432, "app", "us-west-2", new AwsKeys("AKIAUNKNOWN000000001", "x", null), now), "app", Endpoint, 5432, world, now), StringComparison.Ordinal);
            Assert.Contains("expired", RdsIamToken.Validate(token, "app", Endpoint, 5432, world, now.AddSeconds(901)), StringComparison.Ordinal);
            Assert.Null(RdsIamToken.Validate(token, "app", Endpoint, 5432, world, now.AddSeconds(900)));
            Assert.Null(RdsIamToken.Validate(token, "app", Endpoint, 5432, world, now.AddMinutes(-5)));
            Assert.Contains("more than 5 minutes", RdsIamToken.Validate(token, "app", Endpoint, 5432, world, now.AddMinutes(-5).AddSeconds(-1)), StringComparison.Ordinal);
            Assert.True(RdsIamToken.LooksLikeToken(token));
            Assert.False(RdsIamToken.LooksLikeToken("correct horse battery staple"));
        }

        [Fact(Timeout = 30_000)]
        public async Task StartRdsProxy_WithoutStartPostgres_IsRefused()
        {
            await using var host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions { StartRdsProxy = true });
            var error = Assert.Throws<InvalidOperationException>(host.Start);
            Assert.Contains("requires StartPostgres", error.Message, StringComparison.Ordinal);
            Assert.Null(host.RdsProxy);
        }

        [Fact(Timeout = 120_000)]
        public async Task Executable_WithRds_PrintsTheFront_ServesPsqlVerifyFull_AndCleansUpOnExit()
        {
            var dll = Path.Combine(AppContext.BaseDirectory, "BastionTools.Sandbox.dll");
            var psi = new ProcessStartInfo(Environment.ProcessPath != null && Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath : "dotnet")
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            psi.ArgumentList.Add(dll);
            psi.ArgumentList.Add("--rds");
            psi.Environment["AWS_EC2_METADATA_DISABLED"] = "true";
            using var process = Process.Start(psi)!;
            var stderr = process.StandardError.ReadToEndAsync();
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(90));
                var line = await process.StandardOutput.ReadLineAsync(cts.Token);
                Assert.False(string.IsNullOrEmpty(line), "no JSON line; stderr: " + (process.HasExited ? await stderr : ""));
                using var doc = JsonDocument.Parse(line!);
                var root = doc.RootElement;
                var rds = root.GetProperty("rds");
                Assert.Equal(Endpoint, rds.GetProperty("endpoint").GetString());
                Assert.Equal(5432, rds.GetProperty("port").GetInt32());
                Assert.Equal("rds_iam", rds.GetProperty("iamRole").GetString());
                var proxyPort = rds.GetProperty("proxyPort").GetInt32();
                var caBundle = rds.GetProperty("caBundle").GetString()!;
                Assert.Equal(caBundle, root.GetProperty("rdsCaBundle").GetString());
                Assert.True(File.Exists(caBundle));
                var pg = root.GetProperty("postgres");
                var dataDirectory = pg.GetProperty("dataDirectory").GetString()!;

                // The master user with its password, through TLS verified against the printed bundle and the endpoint name.
                var psql = new ProcessStartInfo(FindPsql()) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
                foreach (var key in psql.Environment.Keys.Where(k => k.StartsWith("PG", StringComparison.Ordinal)).ToList()) psql.Environment.Remove(key);
                psql.Environment["PGPASSWORD"] = pg.GetProperty("password").GetString();
                psql.Environment["PGCONNECT_TIMEOUT"] = "10";
                foreach (var a in new[] { "-X", "-A", "-t", "-w", "-c", "SELECT count(*) FROM seed_items",
                    "host=" + Endpoint + " hostaddr=127.0.0.1 port=" + proxyPort.ToString(CultureInfo.InvariantCulture) + " user=" + pg.GetProperty("user").GetString()
                    + " dbname=" + pg.GetProperty("database").GetString() + " sslmode=verify-full sslrootcert=" + caBundle })
                {
                    psql.ArgumentList.Add(a);
                }
                using (var client = Process.Start(psql)!)
                {
                    client.StandardInput.Close();
                    var output = client.StandardOutput.ReadToEndAsync();
                    var errors = client.StandardError.ReadToEndAsync();
                    using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                    await client.WaitForExitAsync(wait.Token);
                    Assert.True(client.ExitCode == 0, "psql failed: " + await errors);
                    Assert.Equal("3", (await output).Trim());
                }

                process.StandardInput.Close();
                using var exit = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await process.WaitForExitAsync(exit.Token);
                Assert.Equal(0, process.ExitCode);
                Assert.False(File.Exists(caBundle), "the CA bundle directory outlived the sandbox");
                Assert.False(Directory.Exists(dataDirectory), "the cluster outlived the sandbox");
            }
            finally
            {
                if (!process.HasExited) process.Kill(entireProcessTree: true);
            }
        }

        private static string FindPsql()
        {
            foreach (var dir in Directory.Exists("/usr/lib/postgresql") ? Directory.GetDirectories("/usr/lib/postgresql").OrderByDescending(d => d, StringComparer.Ordinal) : Enumerable.Empty<string>())
            {
                var candidate = Path.Combine(dir, "bin", "psql");
                if (File.Exists(candidate)) return candidate;
            }
            return File.Exists("/usr/bin/psql") ? "/usr/bin/psql" : "psql";
        }
    }
}
