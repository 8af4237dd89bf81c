using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace BastionTools.Sandbox
{
    /// <summary>Which server certificate the RDS-IAM front presents (see <see cref="SandboxCertificates"/>).</summary>
    public enum RdsCertificateChoice
    {
        /// <summary>Issued by the sandbox CA (the one in <see cref="SandboxCertificates.CaBundlePath"/>) for the endpoint name.</summary>
        Valid,
        /// <summary>For the endpoint name, but issued by a second, unrelated CA that is not in the bundle.</summary>
        UntrustedCa,
        /// <summary>Issued by the sandbox CA, but for another host name (<see cref="SandboxCertificates.OtherHostName"/>).</summary>
        WrongHost,
    }

    /// <summary>
    /// Throwaway TLS material for the RDS-IAM front, generated in memory at start (ECDSA P-256, no network, no files
    /// except the PEM bundles): the sandbox root CA and a server certificate it issued for the endpoint name(s); a
    /// second, unrelated CA with a server certificate for the same names ("CA outside the bundle"); and a certificate
    /// from the sandbox CA for another host name ("certificate for another hostname"). The sandbox CA's PEM is written
    /// to <see cref="CaBundlePath"/> in a private temp directory (deleted by <see cref="Dispose"/>).
    /// </summary>
    public sealed class SandboxCertificates : IDisposable
    {
        /// <summary>The prefix of the temp directory holding the PEM files.</summary>
        public const string DirectoryPrefix = "bastiontools-rds-";

        private SandboxCertificates(string directory, IReadOnlyList<string> names, string otherHostName,
            X509Certificate2 ca, X509Certificate2 server, X509Certificate2 otherCa, X509Certificate2 otherCaServer, X509Certificate2 wrongHost)
        {
            Directory = directory;
            Names = names;
            OtherHostName = otherHostName;
            CaCertificate = ca;
            ServerCertificate = server;
            OtherCaCertificate = otherCa;
            OtherCaServerCertificate = otherCaServer;
            WrongHostCertificate = wrongHost;
            CaPem = ca.ExportCertificatePem() + "\n";
            OtherCaPem = otherCa.ExportCertificatePem() + "\n";
            CaBundlePath = Path.Combine(directory, "sandbox-rds-ca.pem");
            OtherCaBundlePath = Path.Combine(directory, "other-ca.pem");
            File.WriteAllText(CaBundlePath, CaPem);
            File.WriteAllText(OtherCaBundlePath, OtherCaPem);
            if (!OperatingSystem.IsWindows())
            {
                // Public certificates: readable by any client process (psql run as another user, for instance).
                var readable = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
                File.SetUnixFileMode(CaBundlePath, readable);
                File.SetUnixFileMode(OtherCaBundlePath, readable);
            }
        }

        /// <summary>The temp directory with the PEM files.</summary>
        public string Directory { get; }
        /// <summary>The DNS names of the valid (and the other-CA) server certificate; the first is the endpoint.</summary>
        public IReadOnlyList<string> Names { get; }
        /// <summary>The single DNS name of <see cref="WrongHostCertificate"/>.</summary>
        public string OtherHostName { get; }
        /// <summary>The sandbox root CA (public part only).</summary>
        public X509Certificate2 CaCertificate { get; }
        /// <summary>The sandbox CA in PEM, as written to <see cref="CaBundlePath"/>.</summary>
        public string CaPem { get; }
        /// <summary>The CA bundle a client must trust (sslrootcert): the sandbox CA only.</summary>
        public string CaBundlePath { get; }
        /// <summary>Issued by the sandbox CA for <see cref="Names"/> (with private key).</summary>
        public X509Certificate2 ServerCertificate { get; }
        /// <summary>A second, unrelated root CA (public part only).</summary>
        public X509Certificate2 OtherCaCertificate { get; }
        public string OtherCaPem { get; }
        /// <summary>The other CA's PEM (for tests that want to show a client trusting it instead).</summary>
        public string OtherCaBundlePath { get; }
        /// <summary>Issued by the other CA for <see cref="Names"/> (with private key).</summary>
        public X509Certificate2 OtherCaServerCertificate { get; }
        /// <summary>Issued by the sandbox CA for <see cref="OtherHostName"/> (with private key).</summary>
        public X509Certificate2 WrongHostCertificate { get; }

        /// <summary>The server certificate (with private key) for a choice.</summary>
        public X509Certificate2 For(RdsCertificateChoice choice) => choice switch
        {
            RdsCertificateChoice.Valid => ServerCertificate,
            RdsCertificateChoice.UntrustedCa => OtherCaServerCertificate,
            RdsCertificateChoice.WrongHost => WrongHostCertificate,
            _ => throw new ArgumentOutOfRangeException(nameof(choice), choice, "Unknown certificate choice."),
        };

        /// <summary>
        /// Generates all certificates and writes the PEM bundles to a new temp directory under <paramref name="tempRoot"/>
        /// (null: the system temp directory). <paramref name="names"/> are the server certificate's DNS names (at least one;
        /// the first is the endpoint); <paramref name="otherHostName"/> null derives "other-" + the first label.
        /// </summary>
        public static SandboxCertificates Create(IReadOnlyList<string> names, string? otherHostName = null, string? tempRoot = null)
        {
            if (names == null || names.Count == 0) throw new ArgumentException("At least one DNS name is needed.", nameof(names));
            foreach (var n in names)
            {
                if (string.IsNullOrWhiteSpace(n) || n.Contains(' ', StringComparison.Ordinal)) throw new ArgumentException("Invalid DNS name '" + n + "'.", nameof(names));
            }
            otherHostName ??= "other-" + names[0];
            var notBefore = DateTimeOffset.UtcNow.AddDays(-1);
            var notAfter = DateTimeOffset.UtcNow.AddDays(365);

            using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            using var ca = CreateRoot("BastionTools Sandbox RDS Root CA", caKey, notBefore, notAfter.AddDays(30));
            using var otherKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            using var otherCa = CreateRoot("Unrelated Sandbox Root CA", otherKey, notBefore, notAfter.AddDays(30));

            var server = CreateLeaf(ca, caKey, names, notBefore, notAfter);
            var otherCaServer = CreateLeaf(otherCa, otherKey, names, notBefore, notAfter);
            var wrongHost = CreateLeaf(ca, caKey, new[] { otherHostName }, notBefore, notAfter);

            var root = Path.GetFullPath(tempRoot ?? Path.GetTempPath());
            CleanupStale(root);
            var dir = Path.Combine(root, DirectoryPrefix + Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(4)).ToLowerInvariant());
            if (OperatingSystem.IsWindows())
            {
                System.IO.Directory.CreateDirectory(dir);
            }
            else
            {
                // World-traversable (not listable) so a client running as another OS user can read the bundle by path.
                System.IO.Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
            }
            return new SandboxCertificates(dir, names, otherHostName,
                X509CertificateLoader.LoadCertificate(ca.RawData), server,
                X509CertificateLoader.LoadCertificate(otherCa.RawData), otherCaServer, wrongHost);
        }

        /// <summary>Removes PEM directories left by processes that are gone (a killed sandbox cannot clean up after itself).</summary>
        private static void CleanupStale(string root)
        {
            string[] candidates;
            try
            {
                candidates = System.IO.Directory.GetDirectories(root, DirectoryPrefix + "*");
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                return;
            }
            foreach (var dir in candidates)
            {
                var rest = Path.GetFileName(dir).Substring(DirectoryPrefix.Length);
                var dash = rest.IndexOf('-');
                if (dash <= 0 || !int.TryParse(rest.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out var owner)) continue;
                if (owner == Environment.ProcessId || PostgresCluster.IsAlive(owner)) continue;
                try
                {
                    System.IO.Directory.Delete(dir, recursive: true);
                }
                catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
                {
                    // Someone else's, or busy: leave it.
                }
            }
        }

        private static X509Certificate2 CreateRoot(string commonName, ECDsa key, DateTimeOffset notBefore, DateTimeOffset notAfter)
        {
            var request = new CertificateRequest(new X500DistinguishedName("CN=" + commonName + ", O=BastionTools Sandbox, C=US"), key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign | X509KeyUsageFlags.DigitalSignature, critical: true));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
            return request.CreateSelfSigned(notBefore, notAfter);
        }

        private static X509Certificate2 CreateLeaf(X509Certificate2 issuer, ECDsa issuerKey, IReadOnlyList<string> names, DateTimeOffset notBefore, DateTimeOffset notAfter)
        {
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest(new X500DistinguishedName("CN=" + names[0] + ", O=BastionTools Sandbox, C=US"), key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: false, hasPathLengthConstraint: false, pathLengthConstraint: 0, critical: true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, critical: true));
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection { new Oid("1.3.6.1.5.5.7.3.1", "Server Authentication") }, critical: false));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
            request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer, includeKeyIdentifier: true, includeIssuerAndSerial: false));
            var san = new SubjectAlternativeNameBuilder();
            foreach (var n in names) san.AddDnsName(n);
            request.CertificateExtensions.Add(san.Build(critical: false));
            var serial = RandomNumberGenerator.GetBytes(16);
            serial[0] &= 0x7F;
            var generator = X509SignatureGenerator.CreateForECDsa(issuerKey);
            using var publicOnly = request.Create(issuer.SubjectName, generator, notBefore, notAfter > issuer.NotAfter ? issuer.NotAfter : notAfter, serial);
            using var withKey = publicOnly.CopyWithPrivateKey(key);
            // A PKCS#12 round trip gives a key SslStream can use on every platform (an ephemeral key is not enough on Windows).
            return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
        }

        /// <summary>Whether <paramref name="certificate"/> chains to <paramref name="root"/> alone (no system roots, no revocation) — a helper for clients and tests.</summary>
        public static bool ChainsTo(X509Certificate2 certificate, X509Certificate2 root, out string detail)
        {
            using var chain = new X509Chain();
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.Add(root);
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            var ok = chain.Build(certificate);
            var sb = new StringBuilder();
            foreach (var s in chain.ChainStatus) sb.Append(s.Status).Append(": ").Append(s.StatusInformation.Trim()).Append("; ");
            detail = sb.ToString();
            return ok;
        }

        public void Dispose()
        {
            ServerCertificate.Dispose();
            OtherCaServerCertificate.Dispose();
            WrongHostCertificate.Dispose();
            CaCertificate.Dispose();
            OtherCaCertificate.Dispose();
            try
            {
                if (System.IO.Directory.Exists(Directory)) System.IO.Directory.Delete(Directory, recursive: true);
            }
            catch (Exception ex) when (ex is IOException || ex is UnauthorizedAccessException)
            {
                // A temp directory: best effort.
            }
        }
    }
}
