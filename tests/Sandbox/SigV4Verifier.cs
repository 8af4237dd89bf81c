using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using BastionTools.Aws;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// Checks the SigV4 Authorization header of a request the way AWS does, recomputing the signature with
    /// BastionTools' own <see cref="SigV4"/>. Failures are thrown as <see cref="SandboxError"/> in the wire form of the
    /// service: JSON 1.1 (SSM) or EC2 Query.
    /// </summary>
    public static class SigV4Verifier
    {
        public static readonly TimeSpan AllowedSkew = TimeSpan.FromMinutes(15);

        public const string SignatureMismatchMessage =
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
        public const string InvalidTokenMessage = "The security token included in the request is invalid.";
        public const string Ec2AuthFailureMessage = "AWS was not able to validate the provided access credentials";

        /// <summary>The parsed parts of an "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=..." header.</summary>
        public sealed class ParsedAuthorization
        {
            public string AccessKeyId { get; internal set; } = "";
            public string Date { get; internal set; } = "";
            public string Region { get; internal set; } = "";
            public string Service { get; internal set; } = "";
            public IReadOnlyList<string> SignedHeaders { get; internal set; } = Array.Empty<string>();
            public string Signature { get; internal set; } = "";
        }

        /// <summary>Verifies <paramref name="request"/>; returns the credential that signed it or throws <see cref="SandboxError"/>.</summary>
        public static SandboxCredential Verify(SandboxRequest request, SandboxProtocol protocol, string service, SandboxWorld world)
        {
            var now = world.Clock.UtcNow;
            var authorization = request.Header("Authorization");
            if (string.IsNullOrWhiteSpace(authorization))
            {
                throw protocol == SandboxProtocol.Json11
                    ? SandboxError.Coral("MissingAuthenticationTokenException", "Missing Authentication Token")
                    : SandboxError.Ec2(401, "MissingAuthenticationToken", "Request is missing Authentication Token");
            }

            var auth = Parse(authorization!, protocol);

            var amzDate = request.Header("X-Amz-Date");
            if (string.IsNullOrEmpty(amzDate))
            {
                throw Incomplete(protocol, "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.");
            }
            if (!DateTime.TryParseExact(amzDate, SigV4.DateTimeFormat, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var signedAt))
            {
                throw Incomplete(protocol, "Date must be in ISO-8601 'basic format'. Got '" + amzDate + "'. See http://en.wikipedia.org/wiki/ISO_8601");
            }

            var credential = world.FindCredential(auth.AccessKeyId);
            if (credential == null) throw InvalidToken(protocol);

            var token = request.Header("X-Amz-Security-Token");
            if (credential.SessionToken != null || token != null)
            {
                if (token == null || credential.SessionToken == null || !SigV4.FixedTimeEquals(token, credential.SessionToken)) throw InvalidToken(protocol);
            }

            var expectedDate = signedAt.ToString(SigV4.DateFormat, CultureInfo.InvariantCulture);
            if (auth.Date != expectedDate)
            {
                throw BadSignature(protocol, "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '" + auth.Date + "' != '" + expectedDate + "', from '" + amzDate + "'.");
            }
            if (auth.Service != service)
            {
                throw BadSignature(protocol, "Credential should be scoped to correct service: '" + service + "'. ");
            }
            if (auth.Region != world.Region)
            {
                throw BadSignature(protocol, "Credential should be scoped to a valid region. ");
            }

            var nowText = now.ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
            if (signedAt < now - AllowedSkew)
            {
                var earliest = (now - AllowedSkew).ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
                throw protocol == SandboxProtocol.Json11
                    ? SandboxError.Coral("InvalidSignatureException", "Signature expired: " + amzDate + " is now earlier than " + earliest + " (" + nowText + " - 15 min.)")
                    : SandboxError.Ec2(400, "RequestExpired", "Request has expired.");
            }
            if (signedAt > now + AllowedSkew)
            {
                var latest = (now + AllowedSkew).ToString(SigV4.DateTimeFormat, CultureInfo.InvariantCulture);
                throw protocol == SandboxProtocol.Json11
                    ? SandboxError.Coral("InvalidSignatureException", "Signature not yet current: " + amzDate + " is still later than " + latest + " (" + nowText + " + 15 min.)")
                    : SandboxError.Ec2(400, "RequestInTheFuture", "Request is not yet valid.");
            }

            if (!auth.SignedHeaders.Contains("host"))
            {
                throw BadSignature(protocol, "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.");
            }

            var headerPairs = new List<KeyValuePair<string, string>>();
            foreach (var name in auth.SignedHeaders)
            {
                var values = request.HeaderValues(name);
                if (values.Count == 0)
                {
                    // A signed header that did not arrive cannot match what the client signed.
                    throw BadSignature(protocol, SignatureMismatchMessage);
                }
                foreach (var v in values) headerPairs.Add(new KeyValuePair<string, string>(name, v));
            }

            var (canonicalHeaders, signedHeaders) = SigV4.CanonicalHeaders(headerPairs);
            var canonicalRequest = SigV4.CanonicalRequest(
                request.Method,
                SigV4.CanonicalPath(request.RawPath),
                SigV4.CanonicalQueryString(request.QueryParameters()),
                canonicalHeaders,
                signedHeaders,
                SigV4.Sha256Hex(request.Body));
            var scope = SigV4.Scope(auth.Date, auth.Region, auth.Service);
            var stringToSign = SigV4.StringToSign(amzDate!, scope, canonicalRequest);
            var expected = SigV4.Signature(credential.SecretAccessKey, auth.Date, auth.Region, auth.Service, stringToSign);
            if (!SigV4.FixedTimeEquals(expected, auth.Signature.ToLowerInvariant()))
            {
                if (!world.EchoCanonicalRequestOnSignatureMismatch) throw BadSignature(protocol, SignatureMismatchMessage);
                var echoed = SignatureMismatchMessage + "\n\nThe Canonical String for this request should have been\n'" + canonicalRequest
                    + "'\n\nThe String-to-Sign should have been\n'" + stringToSign + "'\n";
                throw protocol == SandboxProtocol.Json11
                    ? SandboxError.Coral("InvalidSignatureException", echoed)
                    : SandboxError.Ec2(403, "SignatureDoesNotMatch", echoed);
            }
            return credential;
        }

        /// <summary>Parses the Authorization header; malformed ones throw IncompleteSignature(Exception).</summary>
        public static ParsedAuthorization Parse(string authorization, SandboxProtocol protocol)
        {
            var text = authorization.Trim();
            if (!text.StartsWith(SigV4.Algorithm + " ", StringComparison.Ordinal))
            {
                throw Incomplete(protocol, "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter.");
            }
            var parts = text.Substring(SigV4.Algorithm.Length).Split(',')
                .Select(p => p.Trim())
                .Where(p => p.Length > 0)
                .Select(p =>
                {
                    var eq = p.IndexOf('=');
                    return eq < 0 ? new KeyValuePair<string, string>(p, "") : new KeyValuePair<string, string>(p.Substring(0, eq).Trim(), p.Substring(eq + 1).Trim());
                })
                .ToList();
            string? Get(string name) => parts.Where(p => p.Key == name).Select(p => p.Value).FirstOrDefault();
            var credential = Get("Credential");
            var signedHeaders = Get("SignedHeaders");
            var signature = Get("Signature");
            var missing = new List<string>();
            if (string.IsNullOrEmpty(credential)) missing.Add("Authorization header requires 'Credential' parameter.");
            if (string.IsNullOrEmpty(signature)) missing.Add("Authorization header requires 'Signature' parameter.");
            if (string.IsNullOrEmpty(signedHeaders)) missing.Add("Authorization header requires 'SignedHeaders' parameter.");
            if (missing.Count > 0) throw Incomplete(protocol, string.Join(" ", missing));

            var scope = credential!.Split('/');
            if (scope.Length != 5 || scope[4] != "aws4_request" || scope.Any(s => s.Length == 0))
            {
                throw Incomplete(protocol, "Credential should be scoped to a valid region, not 'no region'. Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '" + credential + "'");
            }
            return new ParsedAuthorization
            {
                AccessKeyId = scope[0],
                Date = scope[1],
                Region = scope[2],
                Service = scope[3],
                SignedHeaders = signedHeaders!.Split(';').Select(h => h.Trim().ToLowerInvariant()).ToList(),
                Signature = signature!,
            };
        }

        private static SandboxError Incomplete(SandboxProtocol protocol, string message) =>
            protocol == SandboxProtocol.Json11
                ? SandboxError.Coral("IncompleteSignatureException", message)
                : SandboxError.Ec2(400, "IncompleteSignature", message);

        private static SandboxError InvalidToken(SandboxProtocol protocol) =>
            protocol == SandboxProtocol.Json11
                ? SandboxError.Coral("UnrecognizedClientException", InvalidTokenMessage)
                : SandboxError.Ec2(401, "AuthFailure", Ec2AuthFailureMessage);

        private static SandboxError BadSignature(SandboxProtocol protocol, string message) =>
            protocol == SandboxProtocol.Json11
                ? SandboxError.Coral("InvalidSignatureException", message)
                : message == SignatureMismatchMessage
                    ? SandboxError.Ec2(403, "SignatureDoesNotMatch", message)
                    : SandboxError.Ec2(401, "AuthFailure", message);
    }
}
