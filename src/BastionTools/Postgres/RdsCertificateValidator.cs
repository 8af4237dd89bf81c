using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace BastionTools.Postgres
{
    /// <summary>How strictly the database's TLS certificate is checked. Weaker modes exist only by name, with a warning.</summary>
    public enum RdsSslMode
    {
        /// <summary>The chain ends in a root of the trust bundle, and the certificate names the RDS endpoint (default).</summary>
        VerifyFull = 0,

        /// <summary>The chain ends in a root of the trust bundle; the name is not checked.</summary>
        VerifyCA = 1,

        /// <summary>Encrypted, nothing checked: anyone on the path can impersonate the database.</summary>
        Require = 2,
    }

    /// <summary>
    /// TLS validation for a database reached through a tunnel: the socket goes to 127.0.0.1, so the platform's name
    /// check can't be used. The chain must end in one of the roots of the RDS CA bundle (shipped with the module, or
    /// given), and under verify-full the certificate must name the RDS endpoint (subjectAltName DNS entries, RFC 6125
    /// wildcard rules; the common name only when there is no DNS entry).
    /// </summary>
    internal sealed class RdsCertificateValidator
    {
        private readonly X509Certificate2Collection _roots;
        private readonly HashSet<string> _rootThumbprints;

        public RdsCertificateValidator(X509Certificate2Collection roots, string expectedHost, RdsSslMode mode)
        {
            _roots = roots;
            _rootThumbprints = new HashSet<string>(roots.Cast<X509Certificate2>().Select(c => c.Thumbprint), StringComparer.OrdinalIgnoreCase);
            ExpectedHost = expectedHost.TrimEnd('.');
            Mode = mode;
        }

        public string ExpectedHost { get; }
        public RdsSslMode Mode { get; }

        /// <summary>Why the last validation failed (for the error the user sees); null after a success.</summary>
        public string? LastFailure { get; private set; }

        /// <summary>Reads every certificate of a PEM bundle.</summary>
        public static X509Certificate2Collection LoadBundle(string path)
        {
            var text = File.ReadAllText(path);
            var result = new X509Certificate2Collection();
            const string begin = "-----BEGIN CERTIFICATE-----";
            const string end = "-----END CERTIFICATE-----";
            var at = 0;
            while ((at = text.IndexOf(begin, at, StringComparison.Ordinal)) >= 0)
            {
                var stop = text.IndexOf(end, at, StringComparison.Ordinal);
                if (stop < 0) break;
                var base64 = text.Substring(at + begin.Length, stop - at - begin.Length);
                result.Add(new X509Certificate2(Convert.FromBase64String(string.Concat(base64.Where(c => !char.IsWhiteSpace(c))))));
                at = stop + end.Length;
            }
            if (result.Count == 0) throw new InvalidDataException($"'{path}' holds no PEM certificate.");
            return result;
        }

        /// <summary>The callback for Npgsql / SslStream.</summary>
        public bool Validate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
        {
            if (certificate == null)
            {
                LastFailure = "the server presented no certificate";
                return false;
            }
            using var leaf = new X509Certificate2(certificate);
            var ok = Validate(leaf, chain?.ChainElements.Cast<X509ChainElement>().Skip(1).Select(e => e.Certificate));
            return ok;
        }

        public bool Validate(X509Certificate2 leaf, IEnumerable<X509Certificate2>? intermediates)
        {
            LastFailure = null;
            if (Mode == RdsSslMode.Require) return true;

            using (var chain = new X509Chain())
            {
                chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                chain.ChainPolicy.VerificationFlags = X509VerificationFlags.AllowUnknownCertificateAuthority;
                chain.ChainPolicy.ExtraStore.AddRange(_roots);
                if (intermediates != null)
                {
                    foreach (var c in intermediates) chain.ChainPolicy.ExtraStore.Add(c);
                }
                chain.Build(leaf);
                var elements = chain.ChainElements.Cast<X509ChainElement>().ToList();
                var root = elements.Count > 0 ? elements[elements.Count - 1].Certificate : null;
                if (root == null || !_rootThumbprints.Contains(root.Thumbprint))
                {
                    LastFailure = $"its certificate ({leaf.Subject}) does not chain to a root in the trust bundle";
                    return false;
                }
                foreach (var status in chain.ChainStatus)
                {
                    if (status.Status == X509ChainStatusFlags.NoError || status.Status == X509ChainStatusFlags.UntrustedRoot) continue;
                    LastFailure = $"its certificate chain is not valid ({status.Status}: {status.StatusInformation.Trim()})";
                    return false;
                }
            }

            if (Mode == RdsSslMode.VerifyFull && !NamesHost(leaf, ExpectedHost))
            {
                LastFailure = $"its certificate does not name {ExpectedHost} (it names {string.Join(", ", DnsNames(leaf).DefaultIfEmpty(leaf.GetNameInfo(X509NameType.SimpleName, false)))})";
                return false;
            }
            return true;
        }

        /// <summary>True when the certificate names <paramref name="host"/>.</summary>
        public static bool NamesHost(X509Certificate2 certificate, string host)
        {
            var names = DnsNames(certificate).ToList();
            if (names.Count == 0)
            {
                var cn = certificate.GetNameInfo(X509NameType.SimpleName, false);
                if (!string.IsNullOrEmpty(cn)) names.Add(cn);
            }
            return names.Any(n => HostMatches(n, host));
        }

        /// <summary>RFC 6125 matching: case-insensitive; a wildcard only as the whole left-most label, matching one label.</summary>
        public static bool HostMatches(string pattern, string host)
        {
            pattern = pattern.TrimEnd('.').ToLowerInvariant();
            host = host.TrimEnd('.').ToLowerInvariant();
            if (!pattern.StartsWith("*.", StringComparison.Ordinal)) return pattern == host;
            var dot = host.IndexOf('.');
            if (dot <= 0) return false;
            var suffix = pattern.Substring(1);
            return host.Substring(dot) == suffix && suffix.Count(c => c == '.') >= 2;
        }

        /// <summary>The dNSName entries of the subjectAltName extension (decoded from DER: netstandard2.0 has no API for it).</summary>
        public static IEnumerable<string> DnsNames(X509Certificate2 certificate)
        {
            var ext = certificate.Extensions.Cast<X509Extension>().FirstOrDefault(e => e.Oid?.Value == "2.5.29.17");
            if (ext == null) yield break;
            var der = ext.RawData;
            var pos = 0;
            if (der.Length < 2 || der[pos++] != 0x30) yield break;
            var seqLength = ReadLength(der, ref pos);
            var end = Math.Min(der.Length, pos + seqLength);
            while (pos < end)
            {
                var tag = der[pos++];
                var length = ReadLength(der, ref pos);
                if (length < 0 || pos + length > der.Length) yield break;
                if (tag == 0x82) yield return Encoding.ASCII.GetString(der, pos, length); // [2] IA5String dNSName
                pos += length;
            }
        }

        private static int ReadLength(byte[] der, ref int pos)
        {
            if (pos >= der.Length) return -1;
            int b = der[pos++];
            if (b < 0x80) return b;
            var count = b & 0x7f;
            if (count > 3) return -1;
            var length = 0;
            for (var i = 0; i < count && pos < der.Length; i++) length = (length << 8) | der[pos++];
            return length;
        }
    }
}
