using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Security.Cryptography;
using System.Text;

namespace BastionTools.Aws
{
    /// <summary>
    /// AWS Signature Version 4, the parts BastionTools needs: canonical encoding, key derivation,
    /// header signatures (checked by the sandbox) and query-string presigning (RDS IAM tokens).
    /// Checked against AWS's published test-suite vectors and against AWSSDK.Core's own signer.
    /// </summary>
    internal static class SigV4
    {
        public const string Algorithm = "AWS4-HMAC-SHA256";
        public const string EmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        public const string DateTimeFormat = "yyyyMMdd'T'HHmmss'Z'";
        public const string DateFormat = "yyyyMMdd";

        /// <summary>RFC 3986 encoding as AWS defines it: unreserved characters stay, every other UTF-8 byte becomes %XX (upper case).</summary>
        public static string UriEncode(string value, bool encodeSlash = true)
        {
            var bytes = Encoding.UTF8.GetBytes(value);
            var sb = new StringBuilder(bytes.Length * 3);
            foreach (var b in bytes)
            {
                var c = (char)b;
                if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~' || (c == '/' && !encodeSlash))
                {
                    sb.Append(c);
                }
                else
                {
                    sb.Append('%').Append(((int)b).ToString("X2", CultureInfo.InvariantCulture));
                }
            }
            return sb.ToString();
        }

        /// <summary>Decodes %XX sequences (and nothing else: '+' stays '+', as AWS reads query strings).</summary>
        public static string UriDecode(string value)
        {
            if (value.IndexOf('%') < 0) return value;
            var bytes = new List<byte>(value.Length);
            for (var i = 0; i < value.Length; i++)
            {
                var c = value[i];
                if (c == '%' && i + 2 < value.Length && IsHex(value[i + 1]) && IsHex(value[i + 2]))
                {
                    bytes.Add(byte.Parse(value.Substring(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    i += 2;
                }
                else
                {
                    bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
                }
            }
            return Encoding.UTF8.GetString(bytes.ToArray());
        }

        private static bool IsHex(char c) => (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');

        public static string Hex(byte[] bytes)
        {
            var sb = new StringBuilder(bytes.Length * 2);
            foreach (var b in bytes) sb.Append(b.ToString("x2", CultureInfo.InvariantCulture));
            return sb.ToString();
        }

        public static string Sha256Hex(byte[] data)
        {
            using var sha = SHA256.Create();
            return Hex(sha.ComputeHash(data));
        }

        public static string Sha256Hex(string data) => Sha256Hex(Encoding.UTF8.GetBytes(data));

        public static byte[] HmacSha256(byte[] key, string data)
        {
            using var hmac = new HMACSHA256(key);
            return hmac.ComputeHash(Encoding.UTF8.GetBytes(data));
        }

        private sealed class CachedKey
        {
            public CachedKey(string secretKey, string date, string region, string service, byte[] key)
            {
                SecretKey = secretKey;
                Date = date;
                Region = region;
                Service = service;
                Key = key;
            }

            public string SecretKey { get; }
            public string Date { get; }
            public string Region { get; }
            public string Service { get; }
            public byte[] Key { get; }
        }

        // The derived key only changes with the day, the region, the service and the secret: keep the last one
        // (four HMACs saved per signature; a token refresh loop signs with the same key all day).
        private static CachedKey? s_lastKey;

        /// <summary>The signing key, from a one-entry cache when the inputs are those of the previous call.</summary>
        public static byte[] SigningKey(string secretKey, string date, string region, string service)
        {
            var last = s_lastKey;
            if (last != null && last.Date == date && last.Region == region && last.Service == service && FixedTimeEquals(last.SecretKey, secretKey))
            {
                return last.Key;
            }
            var key = DeriveSigningKey(secretKey, date, region, service);
            s_lastKey = new CachedKey(secretKey, date, region, service, key);
            return key;
        }

        public static byte[] DeriveSigningKey(string secretKey, string date, string region, string service)
        {
            var kDate = HmacSha256(Encoding.UTF8.GetBytes("AWS4" + secretKey), date);
            var kRegion = HmacSha256(kDate, region);
            var kService = HmacSha256(kRegion, service);
            return HmacSha256(kService, "aws4_request");
        }

        public static string Scope(string date, string region, string service) => date + "/" + region + "/" + service + "/aws4_request";

        /// <summary>Canonical query string: each name and value encoded, then sorted by encoded name, then value (ordinal).</summary>
        public static string CanonicalQueryString(IEnumerable<KeyValuePair<string, string>> parameters)
        {
            var encoded = parameters.Select(p => new KeyValuePair<string, string>(UriEncode(p.Key), UriEncode(p.Value))).ToList();
            encoded.Sort((a, b) =>
            {
                var byKey = string.CompareOrdinal(a.Key, b.Key);
                return byKey != 0 ? byKey : string.CompareOrdinal(a.Value, b.Value);
            });
            return string.Join("&", encoded.Select(p => p.Key + "=" + p.Value));
        }

        /// <summary>Canonical path for non-S3 services: each segment encoded (already-encoded input is encoded again, as AWS does).</summary>
        public static string CanonicalPath(string path)
        {
            if (string.IsNullOrEmpty(path)) return "/";
            return UriEncode(path, encodeSlash: false);
        }

        /// <summary>Canonical headers and the signed-headers list from (name, value) pairs; names lower-cased, values trimmed with inner runs of spaces folded, duplicates joined with commas.</summary>
        public static (string CanonicalHeaders, string SignedHeaders) CanonicalHeaders(IEnumerable<KeyValuePair<string, string>> headers)
        {
            var map = new SortedDictionary<string, List<string>>(StringComparer.Ordinal);
            foreach (var h in headers)
            {
                var name = h.Key.Trim().ToLowerInvariant();
                if (!map.TryGetValue(name, out var list)) map[name] = list = new List<string>();
                list.Add(FoldSpaces(h.Value));
            }
            var canonical = new StringBuilder();
            foreach (var kv in map) canonical.Append(kv.Key).Append(':').Append(string.Join(",", kv.Value)).Append('\n');
            return (canonical.ToString(), string.Join(";", map.Keys));
        }

        private static string FoldSpaces(string value)
        {
            var sb = new StringBuilder(value.Length);
            var lastSpace = false;
            foreach (var c in value.Trim())
            {
                if (c == ' ')
                {
                    if (!lastSpace) sb.Append(c);
                    lastSpace = true;
                }
                else
                {
                    sb.Append(c);
                    lastSpace = false;
                }
            }
            return sb.ToString();
        }

        public static string CanonicalRequest(string method, string canonicalPath, string canonicalQuery, string canonicalHeaders, string signedHeaders, string payloadHash)
            => method + "\n" + canonicalPath + "\n" + canonicalQuery + "\n" + canonicalHeaders + "\n" + signedHeaders + "\n" + payloadHash;

        public static string StringToSign(string amzDate, string scope, string canonicalRequest)
            => Algorithm + "\n" + amzDate + "\n" + scope + "\n" + Sha256Hex(canonicalRequest);

        public static string Signature(string secretKey, string date, string region, string service, string stringToSign)
            => Hex(HmacSha256(SigningKey(secretKey, date, region, service), stringToSign));

        /// <summary>Constant-time comparison for signatures (sandbox verification).</summary>
        public static bool FixedTimeEquals(string a, string b)
        {
            if (a.Length != b.Length) return false;
            var diff = 0;
            for (var i = 0; i < a.Length; i++) diff |= a[i] ^ b[i];
            return diff == 0;
        }

        /// <summary>
        /// Presigns a GET request in the query string (SigV4 query auth), returning the query string in the order
        /// botocore writes it: the operation parameters, then X-Amz-Algorithm, -Credential, -Date, -Expires,
        /// -SignedHeaders, -Security-Token (temporary credentials), and last X-Amz-Signature.
        /// The only signed header is host (with :port when the port is given).
        /// </summary>
        public static string PresignQuery(
            string hostHeader,
            string path,
            IReadOnlyList<KeyValuePair<string, string>> operationParameters,
            AwsKeys keys,
            string region,
            string service,
            DateTime signedAtUtc,
            int expiresSeconds,
            string payloadHash = EmptyPayloadHash)
        {
            var amzDate = signedAtUtc.ToString(DateTimeFormat, CultureInfo.InvariantCulture);
            var date = signedAtUtc.ToString(DateFormat, CultureInfo.InvariantCulture);
            var scope = Scope(date, region, service);

            var auth = new List<KeyValuePair<string, string>>
            {
                new("X-Amz-Algorithm", Algorithm),
                new("X-Amz-Credential", keys.AccessKeyId + "/" + scope),
                new("X-Amz-Date", amzDate),
                new("X-Amz-Expires", expiresSeconds.ToString(CultureInfo.InvariantCulture)),
                new("X-Amz-SignedHeaders", "host"),
            };
            if (!string.IsNullOrEmpty(keys.SessionToken)) auth.Add(new("X-Amz-Security-Token", keys.SessionToken!));

            var all = operationParameters.Concat(auth).ToList();
            var (canonicalHeaders, signedHeaders) = CanonicalHeaders(new[] { new KeyValuePair<string, string>("host", hostHeader) });
            var canonicalRequest = CanonicalRequest("GET", CanonicalPath(path), CanonicalQueryString(all), canonicalHeaders, signedHeaders, payloadHash);
            var signature = Signature(keys.SecretAccessKey, date, region, service, StringToSign(amzDate, scope, canonicalRequest));

            var query = string.Join("&", all.Select(p => UriEncode(p.Key) + "=" + UriEncode(p.Value)));
            return query + "&X-Amz-Signature=" + signature;
        }
    }
}
