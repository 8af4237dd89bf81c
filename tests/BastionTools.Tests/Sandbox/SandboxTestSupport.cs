using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Text;
using System.Threading.Tasks;
using Amazon.EC2;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using BastionTools.Aws;
using BastionTools.Sandbox;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>Starts sandbox hosts and builds real AWSSDK clients pointed at them (never at AWS).</summary>
    internal static class SandboxTestSupport
    {
        public const int TestTimeoutMs = 60_000;

        static SandboxTestSupport()
        {
            // The SDK must never probe the EC2 instance metadata service from a test machine.
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
        }

        public static SandboxHost Start(SandboxWorld? world = null)
        {
            var host = new SandboxHost(world ?? SandboxWorld.CreateDefault());
            host.Start();
            return host;
        }

        public static AWSCredentials DefaultCredentials(SandboxHost host)
        {
            var c = host.World.Credentials[0];
            return c.SessionToken == null ? new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey) : new SessionAWSCredentials(c.AccessKeyId, c.SecretAccessKey, c.SessionToken);
        }

        public static AmazonSimpleSystemsManagementClient SsmClient(SandboxHost host, AWSCredentials? credentials = null, int maxErrorRetry = 0)
        {
            var config = new AmazonSimpleSystemsManagementConfig
            {
                ServiceURL = host.SsmEndpoint.ToString(),
                AuthenticationRegion = host.World.Region,
                MaxErrorRetry = maxErrorRetry,
                Timeout = TimeSpan.FromSeconds(15),
            };
            return new AmazonSimpleSystemsManagementClient(credentials ?? DefaultCredentials(host), config);
        }

        public static AmazonEC2Client Ec2(SandboxHost host, AWSCredentials? credentials = null, int maxErrorRetry = 0)
        {
            var config = new AmazonEC2Config
            {
                ServiceURL = host.Ec2Endpoint.ToString(),
                AuthenticationRegion = host.World.Region,
                MaxErrorRetry = maxErrorRetry,
                Timeout = TimeSpan.FromSeconds(15),
            };
            return new AmazonEC2Client(credentials ?? DefaultCredentials(host), config);
        }

        /// <summary>A world with <paramref name="count"/> Online instances i-00000000000000001.. (for pagination).</summary>
        public static SandboxWorld ManyInstances(int count)
        {
            var world = new SandboxWorld();
            world.AddCredential(new SandboxCredential { AccessKeyId = SandboxWorld.DefaultAccessKeyId, SecretAccessKey = SandboxWorld.DefaultSecretAccessKey });
            for (var n = 1; n <= count; n++)
            {
                world.AddInstance(new SandboxInstance
                {
                    InstanceId = "i-" + n.ToString("x17", CultureInfo.InvariantCulture),
                    Name = "node-" + n.ToString(CultureInfo.InvariantCulture),
                    PrivateIpAddress = "10.0.2." + n.ToString(CultureInfo.InvariantCulture),
                });
            }
            return world;
        }

        /// <summary>
        /// Sends an SSM JSON 1.1 request signed by hand with BastionTools' SigV4 (header auth), so tests control the date,
        /// the key and the body independently of the SDK.
        /// </summary>
        public static async Task<(int Status, string Body, HttpResponseMessage Response)> SendSignedSsmAsync(
            SandboxHost host, string operation, string json, DateTime signedAtUtc, string? secretOverride = null, string? bodyAfterSigning = null)
        {
            var credential = host.World.Credentials[0];
            var amzDate = signedAtUtc.ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
            var date = signedAtUtc.ToString(SigV4.DateFormat, CultureInfo.InvariantCulture);
            var hostHeader = "127.0.0.1:" + host.Port.ToString(CultureInfo.InvariantCulture);
            var target = "AmazonSSM." + operation;
            var headers = new List<KeyValuePair<string, string>>
            {
                new("host", hostHeader),
                new("x-amz-date", amzDate),
                new("x-amz-target", target),
            };
            var (canonicalHeaders, signedHeaders) = SigV4.CanonicalHeaders(headers);
            var canonical = SigV4.CanonicalRequest("POST", SigV4.CanonicalPath("/ssm"), "", canonicalHeaders, signedHeaders, SigV4.Sha256Hex(json));
            var scope = SigV4.Scope(date, host.World.Region, "ssm");
            var signature = SigV4.Signature(secretOverride ?? credential.SecretAccessKey, date, host.World.Region, "ssm", SigV4.StringToSign(amzDate, scope, canonical));

            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var request = new HttpRequestMessage(HttpMethod.Post, host.SsmEndpoint)
            {
                Content = new ByteArrayContent(Encoding.UTF8.GetBytes(bodyAfterSigning ?? json)),
            };
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/x-amz-json-1.1");
            request.Headers.TryAddWithoutValidation("X-Amz-Date", amzDate);
            request.Headers.TryAddWithoutValidation("X-Amz-Target", target);
            request.Headers.TryAddWithoutValidation("Authorization",
                SigV4.Algorithm + " Credential=" + credential.AccessKeyId + "/" + scope + ", SignedHeaders=" + signedHeaders + ", Signature=" + signature);
            var response = await http.SendAsync(request).ConfigureAwait(false);
            var body = await response.Content.ReadAsStringAsync().ConfigureAwait(false);
            return ((int)response.StatusCode, body, response);
        }

        /// <summary>Waits until an asynchronous condition holds (polled every 20 ms); fails the test naming what it waited for after <paramref name="limit"/>.</summary>
        public static async Task WaitUntilAsync(Func<Task<bool>> condition, string what, TimeSpan limit)
        {
            var deadline = DateTime.UtcNow + limit;
            while (!await condition())
            {
                if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException("Timed out waiting: " + what + ".");
                await Task.Delay(20);
            }
        }
    }
}
