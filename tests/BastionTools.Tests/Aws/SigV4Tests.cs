using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using Amazon.Runtime;
using Amazon.Runtime.Internal;
using Amazon.Runtime.Internal.Auth;
using Amazon.Runtime.Internal.Util;
using BastionTools.Aws;
using Xunit;

namespace BastionTools.Tests.Aws
{
    /// <summary>Our SigV4 against AWS's published vectors, and against AWSSDK.Core's independent signer.</summary>
    public class SigV4Tests
    {
        // The aws-sig-v4-test-suite credentials and scope.
        private const string SuiteKeyId = "AKIDEXAMPLE";
        private const string SuiteSecret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        private const string SuiteDate = "20150830T123600Z";

        private static string SuiteSignature(string method, string rawPath, IEnumerable<KeyValuePair<string, string>> query)
        {
            var (headers, signed) = SigV4.CanonicalHeaders(new[]
            {
                new KeyValuePair<string, string>("Host", "example.amazonaws.com"),
                new KeyValuePair<string, string>("X-Amz-Date", SuiteDate),
            });
            var canonical = SigV4.CanonicalRequest(method, SigV4.CanonicalPath(rawPath), SigV4.CanonicalQueryString(query), headers, signed, SigV4.EmptyPayloadHash);
            var scope = SigV4.Scope("20150830", "us-east-1", "service");
            return SigV4.Signature(SuiteSecret, "20150830", "us-east-1", "service", SigV4.StringToSign(SuiteDate, scope, canonical));
        }

        [Fact]
        public void GetVanilla_MatchesPublishedSignature()
        {
            Assert.Equal("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                SuiteSignature("GET", "/", Array.Empty<KeyValuePair<string, string>>()));
        }

        [Fact]
        public void GetVanillaQueryOrderKeyCase_SortsParameters()
        {
            var query = new[] { new KeyValuePair<string, string>("Param2", "value2"), new KeyValuePair<string, string>("Param1", "value1") };
            Assert.Equal("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500", SuiteSignature("GET", "/", query));
        }

        [Fact]
        public void PostVanilla_MatchesPublishedSignature()
        {
            Assert.Equal("5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
                SuiteSignature("POST", "/", Array.Empty<KeyValuePair<string, string>>()));
        }

        [Fact]
        public void GetUtf8_EncodesPathAsUtf8()
        {
            Assert.Equal("8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
                SuiteSignature("GET", "/\u1234", Array.Empty<KeyValuePair<string, string>>()));
        }

        [Fact]
        public void QueryStringPresign_MatchesAwsDocumentationExample()
        {
            // "Authenticating Requests: Using Query Parameters" (S3, GET /test.txt, 24 May 2013, 86400 s).
            var keys = new AwsKeys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", null);
            var query = SigV4.PresignQuery("examplebucket.s3.amazonaws.com", "/test.txt", Array.Empty<KeyValuePair<string, string>>(), keys,
                "us-east-1", "s3", new DateTime(2013, 5, 24, 0, 0, 0, DateTimeKind.Utc), 86400, payloadHash: "UNSIGNED-PAYLOAD");
            Assert.Equal(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request" +
                "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host" +
                "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
                query);
        }

        [Theory]
        [InlineData("abcXYZ019-_.~", "abcXYZ019-_.~")]
        [InlineData("a b", "a%20b")]
        [InlineData("a+b=c&d", "a%2Bb%3Dc%26d")]
        [InlineData("a/b", "a%2Fb")]
        [InlineData("é", "%C3%A9")]
        [InlineData("用户", "%E7%94%A8%E6%88%B7")]
        [InlineData("o'brien;--", "o%27brien%3B--")]
        [InlineData("*", "%2A")]
        public void UriEncode_FollowsAwsRules(string input, string expected)
        {
            Assert.Equal(expected, SigV4.UriEncode(input));
            Assert.Equal(input, SigV4.UriDecode(expected));
        }

        [Fact]
        public void SigningKey_MatchesAwsSdk()
        {
            var ours = SigV4.DeriveSigningKey(SuiteSecret, "20150830", "us-east-1", "iam");
            var sdk = AWS4Signer.ComposeSigningKey(SuiteSecret, "us-east-1", "20150830", "iam");
            Assert.Equal(sdk, ours);
            // The worked example in AWS's documentation for deriving the signing key.
            Assert.Equal("c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9", SigV4.Hex(ours));
        }

        [Fact]
        public void Signature_MatchesAwsSdkOnRandomCanonicalRequests()
        {
            var rnd = new Random(1234);
            for (var i = 0; i < 50; i++)
            {
                var canonical = "GET\n/" + rnd.Next() + "\nA=" + rnd.Next() + "\nhost:h" + rnd.Next() + "\n\nhost\n" + SigV4.EmptyPayloadHash;
                var at = new DateTime(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc).AddSeconds(rnd.Next(0, 200_000_000));
                var secret = "secret" + rnd.Next();
                var region = i % 2 == 0 ? "eu-west-1" : "cn-north-1";
                var sdk = AWS4Signer.ComputeSignature("AKID", secret, region, at, "rds-db", "host", canonical);
                var date = at.ToString(SigV4.DateFormat, CultureInfo.InvariantCulture);
                var ours = SigV4.Signature(secret, date, region, "rds-db",
                    SigV4.StringToSign(at.ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture), SigV4.Scope(date, region, "rds-db"), canonical));
                Assert.Equal(sdk.Signature, ours);
            }
        }
    }
}
