using System;
using System.Diagnostics;
using Amazon.Runtime;
using Amazon.Runtime.Internal;
using Amazon.Runtime.Internal.Auth;
using Amazon.Runtime.Internal.Util;
using BastionTools.Aws;

namespace BastionTools.Bench
{
    /// <summary>
    /// Token signing throughput: BastionTools' RdsAuthToken against AWSSDK.Core's AWS4PreSignedUrlSigner
    /// (the signer AWSSDK.RDS's token generator uses) on the same machine, in the same run.
    /// </summary>
    internal static class TokenBench
    {
        private sealed class ConnectRequest : AmazonWebServiceRequest
        {
        }

        public static int Run(string[] args)
        {
            var seconds = args.Length > 0 ? double.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 2.0;
            var keys = new AwsKeys("ASIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLETOKEN");
            const string host = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";

            string Ours(int i) => RdsAuthToken.Generate(host, 5432, "user" + (i & 63), "us-west-2", keys, DateTime.UtcNow);

            string Sdk(int i)
            {
                var request = new DefaultRequest(new ConnectRequest(), "rds-db")
                {
                    UseQueryString = true,
                    HttpMethod = "GET",
                    Endpoint = new UriBuilder("https", host, 5432).Uri,
                    ResourcePath = "/",
                };
                request.Parameters.Add("X-Amz-Expires", "900");
                request.Parameters.Add("DBUser", "user" + (i & 63));
                request.Parameters.Add("Action", "connect");
                request.Parameters.Add("X-Amz-Security-Token", keys.SessionToken);
                var result = AWS4PreSignedUrlSigner.SignRequest(request, null, new RequestMetrics(), keys.AccessKeyId, keys.SecretAccessKey, "rds-db", "us-west-2");
                return host + ":5432/?" + result.ForQueryParameters;
            }

            var ours = Measure("BastionTools RdsAuthToken.Generate", Ours, seconds);
            var sdk = Measure("AWSSDK.Core AWS4PreSignedUrlSigner (baseline)", Sdk, seconds);
            Console.WriteLine($"ratio (BastionTools / AWSSDK.Core): {ours / sdk:F2}");
            return 0;
        }

        private static double Measure(string name, Func<int, string> sign, double seconds)
        {
            for (var i = 0; i < 2000; i++) sign(i); // warm-up
            var sw = Stopwatch.StartNew();
            var n = 0;
            var length = 0L;
            while (sw.Elapsed.TotalSeconds < seconds)
            {
                for (var j = 0; j < 500; j++) length += sign(n++).Length;
            }
            var rate = n / sw.Elapsed.TotalSeconds;
            Console.WriteLine($"{name,-48} {rate,12:N0} tokens/s  ({n:N0} in {sw.Elapsed.TotalSeconds:F2} s, avg {length / n} chars)");
            return rate;
        }
    }
}
