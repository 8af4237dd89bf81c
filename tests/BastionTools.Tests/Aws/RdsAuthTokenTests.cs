using System;
using System.Collections.Generic;
using System.Linq;
using Amazon.Runtime;
using Amazon.Runtime.Internal;
using Amazon.Runtime.Internal.Auth;
using Amazon.Runtime.Internal.Util;
using BastionTools.Aws;
using Xunit;

namespace BastionTools.Tests.Aws
{
    public class RdsAuthTokenTests
    {
        private static readonly DateTime At = new(2024, 3, 1, 12, 34, 56, DateTimeKind.Utc);
        private static readonly AwsKeys Static = new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", null);
        private static readonly AwsKeys Temporary = new("ASIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjE/+token==");

        private sealed class ConnectRequest : AmazonWebServiceRequest
        {
        }

        /// <summary>The signature AWSSDK.Core's own presigner (the one AWSSDK.RDS's token generator uses) computes for the same request.</summary>
        private static string SdkSignature(string host, int port, string user, string region, AwsKeys keys, DateTime at)
        {
            var request = new DefaultRequest(new ConnectRequest(), "rds-db")
            {
                UseQueryString = true,
                HttpMethod = "GET",
                Endpoint = new UriBuilder("https", host, port).Uri,
                ResourcePath = "/",
            };
            request.Parameters.Add("X-Amz-Expires", "900");
            request.Parameters.Add("DBUser", user);
            request.Parameters.Add("Action", "connect");
            if (keys.SessionToken != null) request.Parameters.Add("X-Amz-Security-Token", keys.SessionToken);
            var result = AWS4PreSignedUrlSigner.SignRequest(request, null, new RequestMetrics(), keys.AccessKeyId, keys.SecretAccessKey, "rds-db", region, at);
            return result.Signature;
        }

        private static Dictionary<string, string> Query(string token)
        {
            var q = token.Substring(token.IndexOf("/?", StringComparison.Ordinal) + 2);
            return q.Split('&').Select(p => p.Split(new[] { '=' }, 2)).ToDictionary(p => p[0], p => SigV4.UriDecode(p[1]));
        }

        [Theory]
        [InlineData("mydb.c0ffee123456.us-west-2.rds.amazonaws.com", 5432, "app_user", "us-west-2", false)]
        [InlineData("mydb.c0ffee123456.us-west-2.rds.amazonaws.com", 5432, "app_user", "us-west-2", true)]
        [InlineData("prod.cluster-abc.eu-central-1.rds.amazonaws.com", 6543, "jane.doe@example.com", "eu-central-1", true)]
        [InlineData("db.xyz.cn-north-1.rds.amazonaws.com.cn", 5432, "o'brien; drop", "cn-north-1", false)]
        [InlineData("db.xyz.us-east-1.rds.amazonaws.com", 5432, "用户 with space+plus/slash", "us-east-1", true)]
        public void Token_SignatureEqualsAwsSdkPresigner(string host, int port, string user, string region, bool temporary)
        {
            var keys = temporary ? Temporary : Static;
            var token = RdsAuthToken.Generate(host, port, user, region, keys, At);
            Assert.Equal(SdkSignature(host, port, user, region, keys, At), Query(token)["X-Amz-Signature"]);
        }

        [Fact]
        public void Token_HasTheShapeTheAwsCliPrints()
        {
            var token = RdsAuthToken.Generate("mydb.c0ffee123456.us-west-2.rds.amazonaws.com", 5432, "app_user", "us-west-2", Temporary, At);
            Assert.StartsWith("mydb.c0ffee123456.us-west-2.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user&X-Amz-Algorithm=AWS4-HMAC-SHA256" +
                "&X-Amz-Credential=ASIAIOSFODNN7EXAMPLE%2F20240301%2Fus-west-2%2Frds-db%2Faws4_request&X-Amz-Date=20240301T123456Z" +
                "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjE%2F%2Btoken%3D%3D&X-Amz-Signature=", token);
            Assert.DoesNotContain("https://", token);
            Assert.Matches("X-Amz-Signature=[0-9a-f]{64}$", token);
        }

        [Fact]
        public void Token_WithoutSessionToken_HasNoSecurityTokenParameter()
        {
            var token = RdsAuthToken.Generate("a.b.us-east-1.rds.amazonaws.com", 5432, "u", "us-east-1", Static, At);
            Assert.DoesNotContain("X-Amz-Security-Token", token);
            Assert.DoesNotContain(Static.SecretAccessKey, token);
            Assert.DoesNotContain(SigV4.UriEncode(Static.SecretAccessKey), token);
        }

        [Fact]
        public void Token_EncodesUserNameAsAws()
        {
            var token = RdsAuthToken.Generate("a.b.us-east-1.rds.amazonaws.com", 5432, "a b+c/d=é", "us-east-1", Static, At);
            Assert.Contains("&DBUser=a%20b%2Bc%2Fd%3D%C3%A9&", token);
        }

        [Fact]
        public void Token_ChangesWithEveryInput()
        {
            var baseline = RdsAuthToken.Generate("a.b.us-east-1.rds.amazonaws.com", 5432, "u", "us-east-1", Static, At);
            Assert.NotEqual(baseline, RdsAuthToken.Generate("a.b.us-east-1.rds.amazonaws.com", 5433, "u", "us-east-1", Static, At));
            Assert.NotEqual(baseline, RdsAuthToken.Generate("a.b.us-east-1.rds.amazonaws.com", 5432, "v", "us-east-1", Static, At));
            Assert.NotEqual(baseline, RdsAuthToken.Generate("a.c.us-east-1.rds.amazonaws.com", 5432, "u", "us-east-1", Static, At));
            Assert.NotEqual(baseline, RdsAuthToken.Generate("a.b.us-east-1.rds.amazonaws.com", 5432, "u", "us-east-1", Static, At.AddSeconds(1)));
        }

        [Theory]
        [InlineData("not a host", 5432, "u", "us-east-1")]
        [InlineData("a.b.us-east-1.rds.amazonaws.com", 0, "u", "us-east-1")]
        [InlineData("a.b.us-east-1.rds.amazonaws.com", 5432, "", "us-east-1")]
        [InlineData("a.b.us-east-1.rds.amazonaws.com", 5432, "u", "useast1")]
        public void Token_RejectsBadInput(string host, int port, string user, string region)
        {
            Assert.ThrowsAny<ArgumentException>(() => RdsAuthToken.Generate(host, port, user, region, Static, At));
        }

        [Fact]
        public void Token_ForIpv6Literal_BracketsTheHost()
        {
            var token = RdsAuthToken.Generate("::1", 5432, "u", "us-east-1", Static, At);
            Assert.StartsWith("[::1]:5432/?Action=connect", token);
        }
    }
}
