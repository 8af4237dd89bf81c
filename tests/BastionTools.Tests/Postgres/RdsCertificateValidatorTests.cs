using System;
using System.IO;
using System.Linq;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using BastionTools.Postgres;
using Xunit;

namespace BastionTools.Tests.Postgres
{
    public class RdsCertificateValidatorTests
    {
        private const string Endpoint = "demo.c0ffee123456.us-west-2.rds.amazonaws.com";

        private static X509Certificate2 Ca(string name, DateTimeOffset? notAfter = null)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var req = new CertificateRequest("CN=" + name, key, HashAlgorithmName.SHA256);
            req.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
            req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            return req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-60), notAfter ?? DateTimeOffset.UtcNow.AddYears(5));
        }

        private static X509Certificate2 Leaf(X509Certificate2 issuer, string cn, string[] dnsNames, DateTimeOffset? notAfter = null)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var req = new CertificateRequest("CN=" + cn, key, HashAlgorithmName.SHA256);
            if (dnsNames.Length > 0)
            {
                var san = new SubjectAlternativeNameBuilder();
                foreach (var d in dnsNames) san.AddDnsName(d);
                san.AddIpAddress(System.Net.IPAddress.Loopback);
                req.CertificateExtensions.Add(san.Build());
            }
            req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
            var serial = BitConverter.GetBytes(DateTime.UtcNow.Ticks);
            return req.Create(issuer, DateTimeOffset.UtcNow.AddHours(-1), notAfter ?? DateTimeOffset.UtcNow.AddYears(1), serial);
        }

        private static RdsCertificateValidator Validator(X509Certificate2 root, RdsSslMode mode = RdsSslMode.VerifyFull)
            => new(new X509Certificate2Collection(X509CertificateLoader.LoadCertificate(root.RawData)), Endpoint, mode);

        [Fact]
        public void ShippedBundle_LoadsAllRoots()
        {
            var path = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "module", "certs", "rds-global-bundle.pem");
            var bundle = RdsCertificateValidator.LoadBundle(path);
            Assert.Equal(102, bundle.Count);
            Assert.All(bundle.Cast<X509Certificate2>(), c => Assert.Equal(c.Subject, c.Issuer));
        }

        [Fact]
        public void ChainToTheBundle_AndTheEndpointName_IsAccepted()
        {
            var ca = Ca("Sandbox RDS Root");
            var leaf = Leaf(ca, Endpoint, new[] { Endpoint });
            var v = Validator(ca);
            Assert.True(v.Validate(leaf, null), v.LastFailure);
            Assert.Null(v.LastFailure);
        }

        [Fact]
        public void CertificateFromACaOutsideTheBundle_IsRefused_InEveryVerifyingMode()
        {
            var trusted = Ca("Trusted Root");
            var other = Ca("Other Root");
            var leaf = Leaf(other, Endpoint, new[] { Endpoint });
            foreach (var mode in new[] { RdsSslMode.VerifyFull, RdsSslMode.VerifyCA })
            {
                var v = Validator(trusted, mode);
                Assert.False(v.Validate(leaf, null));
                Assert.Contains("does not chain to a root in the trust bundle", v.LastFailure);
            }
            Assert.True(Validator(trusted, RdsSslMode.Require).Validate(leaf, null));
        }

        [Fact]
        public void CertificateForAnotherHost_IsRefusedUnderVerifyFull_OnlyByName()
        {
            var ca = Ca("Sandbox RDS Root");
            var leaf = Leaf(ca, "other.c0ffee123456.us-west-2.rds.amazonaws.com", new[] { "other.c0ffee123456.us-west-2.rds.amazonaws.com" });
            var full = Validator(ca);
            Assert.False(full.Validate(leaf, null));
            Assert.Contains("does not name " + Endpoint, full.LastFailure);
            Assert.True(Validator(ca, RdsSslMode.VerifyCA).Validate(leaf, null));
        }

        [Fact]
        public void ExpiredCertificate_IsRefused()
        {
            var ca = Ca("Sandbox RDS Root");
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var req = new CertificateRequest("CN=" + Endpoint, key, HashAlgorithmName.SHA256);
            var san = new SubjectAlternativeNameBuilder();
            san.AddDnsName(Endpoint);
            req.CertificateExtensions.Add(san.Build());
            var leaf = req.Create(ca, DateTimeOffset.UtcNow.AddDays(-30), DateTimeOffset.UtcNow.AddDays(-1), new byte[] { 1, 2, 3 });
            var v = Validator(ca);
            Assert.False(v.Validate(leaf, null));
            Assert.Contains("NotTimeValid", v.LastFailure);
        }

        [Fact]
        public void SubjectAltNames_AreDecoded_AndTheCommonNameIsUsedOnlyWithoutThem()
        {
            var ca = Ca("Root");
            var leaf = Leaf(ca, "ignored.example.com", new[] { "a.example.com", "*.c0ffee123456.us-west-2.rds.amazonaws.com" });
            Assert.Equal(new[] { "a.example.com", "*.c0ffee123456.us-west-2.rds.amazonaws.com" }, RdsCertificateValidator.DnsNames(leaf).ToArray());
            Assert.True(RdsCertificateValidator.NamesHost(leaf, Endpoint));
            Assert.False(RdsCertificateValidator.NamesHost(leaf, "ignored.example.com"));
            var cnOnly = Leaf(ca, Endpoint, Array.Empty<string>());
            Assert.Empty(RdsCertificateValidator.DnsNames(cnOnly));
            Assert.True(RdsCertificateValidator.NamesHost(cnOnly, Endpoint));
        }

        [Theory]
        [InlineData("demo.example.com", "DEMO.example.com.", true)]
        [InlineData("*.example.com", "demo.example.com", true)]
        [InlineData("*.example.com", "a.b.example.com", false)]
        [InlineData("*.example.com", "example.com", false)]
        [InlineData("*.com", "example.com", false)]
        [InlineData("d*.example.com", "demo.example.com", false)]
        [InlineData("demo.example.com", "demo.example.com.evil.net", false)]
        public void HostMatching_FollowsRfc6125(string pattern, string host, bool matches)
        {
            Assert.Equal(matches, RdsCertificateValidator.HostMatches(pattern, host));
        }
    }
}
