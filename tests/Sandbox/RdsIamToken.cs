using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using BastionTools.Aws;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// Checks an RDS IAM authentication token as RDS does: the shape the product (and <c>aws rds generate-db-auth-token</c>)
    /// writes — <c>host:port/?Action=connect&amp;DBUser=…&amp;X-Amz-Algorithm=…&amp;X-Amz-Credential=…&amp;X-Amz-Date=…&amp;X-Amz-Expires=…&amp;X-Amz-SignedHeaders=host[&amp;X-Amz-Security-Token=…]&amp;X-Amz-Signature=…</c> —
    /// with a SigV4 signature (BastionTools' own <see cref="SigV4"/>, used here for verifying) by one of the world's
    /// credentials for service rds-db in the world's region, signed host:port equal to the endpoint the client meant,
    /// DBUser equal to the startup user, not expired (X-Amz-Date + X-Amz-Expires, at most 900 s, against the sandbox
    /// clock) and not signed more than five minutes in the future. The result is a precise reason for the log; it
    /// never contains the token, the signature or the security token.
    /// </summary>
    public static class RdsIamToken
    {
        public const string Service = "rds-db";
        public const int MaxExpiresSeconds = 900;
        /// <summary>How far in the future X-Amz-Date may be (clock skew AWS tolerates).</summary>
        public static readonly TimeSpan MaxFutureSkew = TimeSpan.FromMinutes(5);

        /// <summary>Whether a password has the shape of a presigned RDS token (used to answer a non-IAM user's token attempt as RDS's PAM path does).</summary>
        public static bool LooksLikeToken(string password) =>
            password.Contains("X-Amz-Signature=", StringComparison.Ordinal) || password.Contains("X-Amz-Credential=", StringComparison.Ordinal);

        /// <summary>
        /// After <see cref="Validate"/>: null when the token's access key may rds-db:connect as <paramref name="user"/>
        /// (<see cref="SandboxIamPolicy"/>, resource arn:aws:rds-db:&lt;region&gt;:&lt;account&gt;:dbuser:&lt;DbiResourceId&gt;/&lt;user&gt;);
        /// otherwise IAM's message, for the log. RDS itself tells the client no more than "PAM authentication failed".
        /// </summary>
        public static string? AuthorizeConnect(string token, string user, string dbiResourceId, SandboxWorld world)
        {
            var q = token.IndexOf("/?", StringComparison.Ordinal);
            var credential = q < 0 ? null : token.Substring(q + 2).Split('&')
                .Where(p => p.StartsWith("X-Amz-Credential=", StringComparison.Ordinal))
                .Select(p => SigV4.UriDecode(p.Substring("X-Amz-Credential=".Length)))
                .FirstOrDefault();
            if (credential == null) return "no X-Amz-Credential";
            var authorization = world.Authorize(credential.Split('/')[0], "rds-db:connect", SandboxArns.DbUser(world, dbiResourceId, user));
            return authorization.Allowed ? null : "IAM: " + authorization.Message;
        }

        /// <summary>The host (without the port) a token-shaped password is signed for, or null.</summary>
        public static string? SignedHost(string token)
        {
            var q = token.IndexOf("/?", StringComparison.Ordinal);
            if (q <= 0) return null;
            var hostPort = token.Substring(0, q);
            var colon = hostPort.LastIndexOf(':');
            return colon <= 0 ? hostPort : hostPort.Substring(0, colon);
        }

        /// <summary>Null when <paramref name="token"/> is valid for <paramref name="user"/> at <paramref name="endpoint"/>:<paramref name="port"/>; otherwise why not.</summary>
        public static string? Validate(string token, string user, string endpoint, int port, SandboxWorld world, DateTime nowUtc)
        {
            if (string.IsNullOrEmpty(token)) return "empty password";
            var q = token.IndexOf("/?", StringComparison.Ordinal);
            if (q <= 0) return "the password is not a presigned token (no \"host:port/?\")";
            var hostPort = token.Substring(0, q);
            if (hostPort.Contains("://", StringComparison.Ordinal)) return "the token starts with a scheme (" + hostPort.Substring(0, hostPort.IndexOf("://", StringComparison.Ordinal)) + "://)";
            var expected = endpoint + ":" + port.ToString(CultureInfo.InvariantCulture);
            if (!string.Equals(hostPort, expected, StringComparison.OrdinalIgnoreCase)) return "the token is signed for " + hostPort + ", but the client connected to " + expected;

            var parameters = new List<KeyValuePair<string, string>>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            string? signature = null;
            foreach (var part in token.Substring(q + 2).Split('&'))
            {
                if (part.Length == 0) continue;
                var eq = part.IndexOf('=');
                var name = SigV4.UriDecode(eq < 0 ? part : part.Substring(0, eq));
                var value = eq < 0 ? "" : SigV4.UriDecode(part.Substring(eq + 1));
                if (!seen.Add(name)) return "parameter " + name + " appears twice";
                if (name == "X-Amz-Signature") signature = value;
                else parameters.Add(new KeyValuePair<string, string>(name, value));
            }
            string? Get(string name) => parameters.Where(p => p.Key == name).Select(p => p.Value).FirstOrDefault();

            var action = Get("Action");
            if (action != "connect") return action == null ? "no Action parameter" : "Action is '" + action + "', not 'connect'";
            var dbUser = Get("DBUser");
            if (string.IsNullOrEmpty(dbUser)) return "no DBUser parameter";
            if (Get("X-Amz-Algorithm") != SigV4.Algorithm) return "X-Amz-Algorithm is not " + SigV4.Algorithm;
            if (Get("X-Amz-SignedHeaders") != "host") return "X-Amz-SignedHeaders is '" + Get("X-Amz-SignedHeaders") + "', not 'host'";
            if (string.IsNullOrEmpty(signature)) return "no X-Amz-Signature";
            if (signature!.Length != 64 || !signature.All(c => (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return "X-Amz-Signature is not 64 lower-case hex digits";

            var credentialParam = Get("X-Amz-Credential");
            if (credentialParam == null) return "no X-Amz-Credential";
            var scope = credentialParam.Split('/');
            if (scope.Length != 5 || scope[4] != "aws4_request") return "X-Amz-Credential is not AKID/date/region/service/aws4_request";
            var credential = world.FindCredential(scope[0]);
            if (credential == null) return "unknown access key id " + scope[0];
            if (scope[2] != world.Region) return "the token is signed for region " + scope[2] + ", the sandbox's region is " + world.Region;
            if (scope[3] != Service) return "the token is signed for service " + scope[3] + ", not " + Service;

            var amzDate = Get("X-Amz-Date");
            if (amzDate == null || !DateTime.TryParseExact(amzDate, SigV4.DateTimeFormat, CultureInfo.InvariantCulture,
                    DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out var signedAt))
            {
                return "X-Amz-Date is missing or not yyyyMMddTHHmmssZ";
            }
            if (scope[1] != amzDate.Substring(0, 8)) return "the credential scope date " + scope[1] + " is not the date of X-Amz-Date " + amzDate;
            var expiresText = Get("X-Amz-Expires");
            if (expiresText == null || !int.TryParse(expiresText, NumberStyles.None, CultureInfo.InvariantCulture, out var expires) || expires < 1)
            {
                return "X-Amz-Expires is missing or not a positive number";
            }
            if (expires > MaxExpiresSeconds) return "X-Amz-Expires " + expiresText + " exceeds " + MaxExpiresSeconds.ToString(CultureInfo.InvariantCulture) + " seconds";

            var securityToken = Get("X-Amz-Security-Token");
            if (credential.SessionToken != null)
            {
                if (securityToken == null) return "the credential " + credential.AccessKeyId + " is temporary, but the token has no X-Amz-Security-Token";
                if (!SigV4.FixedTimeEquals(securityToken, credential.SessionToken)) return "X-Amz-Security-Token does not match the credential " + credential.AccessKeyId;
            }
            else if (securityToken != null)
            {
                return "the token carries an X-Amz-Security-Token, but " + credential.AccessKeyId + " is not a temporary credential";
            }

            var (canonicalHeaders, signedHeaders) = SigV4.CanonicalHeaders(new[] { new KeyValuePair<string, string>("host", hostPort) });
            var canonicalRequest = SigV4.CanonicalRequest("GET", "/", SigV4.CanonicalQueryString(parameters), canonicalHeaders, signedHeaders, SigV4.EmptyPayloadHash);
            var stringToSign = SigV4.StringToSign(amzDate, SigV4.Scope(scope[1], scope[2], scope[3]), canonicalRequest);
            var computed = SigV4.Hex(SigV4.HmacSha256(SigV4.DeriveSigningKey(credential.SecretAccessKey, scope[1], scope[2], scope[3]), stringToSign));
            if (!SigV4.FixedTimeEquals(computed, signature)) return "the signature does not match (signed with another secret key, or the token was altered)";

            var now = DateTime.SpecifyKind(nowUtc, DateTimeKind.Utc);
            var expiresAt = signedAt.AddSeconds(expires);
            if (now > expiresAt)
            {
                return "the token expired at " + expiresAt.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture)
                    + " (sandbox clock " + now.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture) + ")";
            }
            if (signedAt > now + MaxFutureSkew)
            {
                return "the token is signed at " + amzDate + ", more than 5 minutes after the sandbox clock " + now.ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
            }
            if (!string.Equals(dbUser, user, StringComparison.Ordinal)) return "the token is for DBUser \"" + dbUser + "\", the startup user is \"" + user + "\"";
            return null;
        }
    }
}
