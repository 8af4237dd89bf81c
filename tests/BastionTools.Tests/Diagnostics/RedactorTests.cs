using BastionTools.Aws;
using Xunit;

namespace BastionTools.Tests.Diagnostics
{
    public class RedactorTests
    {
        [Fact]
        public void KnownSecrets_AreMasked_LongestFirst()
        {
            var r = new Redactor();
            r.Add("secret-key-value");
            r.Add("secret-key-value-and-more");
            var text = r.Redact("a=secret-key-value-and-more b=secret-key-value");
            Assert.Equal("a=**** b=****", text);
        }

        [Fact]
        public void ShortValues_AreNotRegistered()
        {
            var r = new Redactor();
            r.Add("ab");
            Assert.Equal("abcab", r.Redact("abcab"));
        }

        [Fact]
        public void TokenQueryParameters_AreMasked()
        {
            var token = "db.x.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=u&X-Amz-Security-Token=IQoJ%2Babc&X-Amz-Signature=0123456789abcdef0123";
            var text = Redactor.RedactPatterns("token: " + token);
            Assert.DoesNotContain("IQoJ", text);
            Assert.DoesNotContain("0123456789abcdef0123", text);
            Assert.Contains("DBUser=u", text);
        }

        [Theory]
        [InlineData("Host=127.0.0.1;Password=hunter2secret;Username=u", "hunter2secret")]
        [InlineData("PGPASSWORD=hunter2secret psql", "hunter2secret")]
        [InlineData("{\"TokenValue\":\"abcdefSECRET\",\"SessionId\":\"s\"}", "abcdefSECRET")]
        [InlineData("aws_secret_access_key = wJalrXUtnFEMI", "wJalrXUtnFEMI")]
        [InlineData("Authorization: AWS4-HMAC-SHA256 Credential=AKID/x, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a", "5fa00fa31553b73ebf1942676e86291e8372ff2a")]
        public void SecretLookingText_IsMasked(string text, string secret)
        {
            Assert.DoesNotContain(secret, Redactor.RedactPatterns(text));
        }

        [Fact]
        public void AwsKeys_ToString_ShowsNoSecret()
        {
            var keys = new AwsKeys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "session-token-value");
            var s = keys.ToString();
            Assert.DoesNotContain("wJalr", s);
            Assert.DoesNotContain("session-token-value", s);
            Assert.DoesNotContain("AKIAIOSFODNN7", s);
            Assert.Contains("MPLE", s);
        }

        [Theory]
        [InlineData("AKIAIOSFODNN7EXAMPLE", "****MPLE")]
        [InlineData("abc", "****")]
        [InlineData("", "")]
        public void MaskIdentifier_KeepsOnlyTheLastFour(string input, string expected)
        {
            Assert.Equal(expected, Redactor.MaskIdentifier(input));
        }
    }
}
