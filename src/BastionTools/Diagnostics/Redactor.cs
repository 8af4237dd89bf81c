using System;
using System.Collections.Generic;
using System.Linq;
using System.Text.RegularExpressions;

namespace BastionTools
{
    /// <summary>
    /// Keeps secrets out of anything a user or a log can see. Every message BastionTools writes to the
    /// Verbose/Debug/Warning/Information streams, and every error message it builds, passes through here.
    /// Two layers: the exact secret values the current command knows about (secret key, session token,
    /// generated tokens, passwords) and patterns that look like secrets whatever their origin
    /// (signatures and security tokens in query strings, passwords in connection strings, AWS secret keys).
    /// </summary>
    internal sealed class Redactor
    {
        public const string Mask = "****";

        private static readonly Regex[] Patterns =
        {
            // SigV4 query auth and the RDS IAM token: hide the signature, the security token and credential scope keys.
            new(@"(?i)(X-Amz-(?:Signature|Security-Token)=)[^&\s""']+", RegexOptions.Compiled | RegexOptions.CultureInvariant),
            // The session token as a header line: AWS's signature-mismatch messages echo the canonical request
            // ("x-amz-security-token:<token>"), and SDK request dumps print headers the same way.
            new(@"(?i)(x-amz-security-token\s*:\s*)[^\s'""]+", RegexOptions.Compiled | RegexOptions.CultureInvariant),
            // Authorization header signatures.
            new(@"(?i)(Signature=)[0-9a-f]{16,}", RegexOptions.Compiled | RegexOptions.CultureInvariant),
            // Connection strings and key=value settings.
            new(@"(?i)\b((?:password|pwd|secret[_-]?(?:access[_-]?)?key|session[_-]?token|aws_secret_access_key|aws_session_token|PGPASSWORD)\s*[=:]\s*)(""[^""]*""|'[^']*'|[^;,\s&]+)", RegexOptions.Compiled | RegexOptions.CultureInvariant),
            // JSON fields that carry tokens (SSM TokenValue, STS SessionToken, SecretAccessKey).
            new(@"(?i)(""(?:TokenValue|SessionToken|SecretAccessKey|Token|Password)""\s*:\s*"")[^""]*", RegexOptions.Compiled | RegexOptions.CultureInvariant),
        };

        private readonly object _gate = new();
        private readonly List<string> _secrets = new();

        /// <summary>Registers an exact value that must never be shown. Short values (under 4 characters) are ignored: masking them would shred ordinary text.</summary>
        public void Add(string? secret)
        {
            if (string.IsNullOrEmpty(secret) || secret!.Length < 4) return;
            lock (_gate)
            {
                if (!_secrets.Contains(secret)) _secrets.Add(secret);
                _secrets.Sort((a, b) => b.Length.CompareTo(a.Length));
            }
        }

        public string Redact(string? text)
        {
            if (string.IsNullOrEmpty(text)) return text ?? string.Empty;
            string[] secrets;
            lock (_gate) secrets = _secrets.ToArray();
            var result = text!;
            foreach (var s in secrets)
            {
                result = result.Replace(s, Mask);
            }
            return RedactPatterns(result);
        }

        /// <summary>Pattern-only redaction, for text whose secrets are not known in advance.</summary>
        public static string RedactPatterns(string text)
        {
            var result = text;
            foreach (var p in Patterns)
            {
                result = p.Replace(result, m => m.Groups[1].Value + Mask);
            }
            return result;
        }

        /// <summary>Shows only the last four characters of an identifier, e.g. an access key id: "****MPLE".</summary>
        public static string MaskIdentifier(string? value)
        {
            if (string.IsNullOrEmpty(value)) return string.Empty;
            return value!.Length <= 4 ? Mask : Mask + value.Substring(value.Length - 4);
        }

        public bool Contains(string text)
        {
            lock (_gate) return _secrets.Any(s => text.IndexOf(s, StringComparison.Ordinal) >= 0);
        }
    }
}
