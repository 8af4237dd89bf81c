using System;
using System.Collections.Generic;
using System.Linq;
using System.Text;

namespace BastionTools.Sandbox
{
    /// <summary>An HTTP request as the sandbox checks it: method, raw path and query as sent, every header line, the body.</summary>
    public sealed class SandboxRequest
    {
        public SandboxRequest(string method, string rawPath, string rawQuery, IReadOnlyList<KeyValuePair<string, string>> headers, byte[] body)
        {
            Method = method;
            RawPath = string.IsNullOrEmpty(rawPath) ? "/" : rawPath;
            RawQuery = rawQuery.StartsWith("?", StringComparison.Ordinal) ? rawQuery.Substring(1) : rawQuery;
            Headers = headers;
            Body = body;
        }

        public string Method { get; }
        /// <summary>The path exactly as on the request line (still percent-encoded).</summary>
        public string RawPath { get; }
        /// <summary>The query string as sent, without '?'.</summary>
        public string RawQuery { get; }
        public IReadOnlyList<KeyValuePair<string, string>> Headers { get; }
        public byte[] Body { get; }

        public string BodyText => Encoding.UTF8.GetString(Body);

        /// <summary>All values of a header (case-insensitive name), in order.</summary>
        public IReadOnlyList<string> HeaderValues(string name) =>
            Headers.Where(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Select(h => h.Value).ToList();

        public string? Header(string name)
        {
            var values = HeaderValues(name);
            return values.Count == 0 ? null : string.Join(",", values);
        }

        /// <summary>Query parameters, percent-decoded ('+' kept, as AWS reads it).</summary>
        public IReadOnlyList<KeyValuePair<string, string>> QueryParameters() => ParseForm(RawQuery, plusIsSpace: false);

        /// <summary>Parses application/x-www-form-urlencoded text (or a query string).</summary>
        public static List<KeyValuePair<string, string>> ParseForm(string text, bool plusIsSpace)
        {
            var result = new List<KeyValuePair<string, string>>();
            if (string.IsNullOrEmpty(text)) return result;
            foreach (var part in text.Split('&'))
            {
                if (part.Length == 0) continue;
                var eq = part.IndexOf('=');
                var name = eq < 0 ? part : part.Substring(0, eq);
                var value = eq < 0 ? "" : part.Substring(eq + 1);
                if (plusIsSpace)
                {
                    name = name.Replace('+', ' ');
                    value = value.Replace('+', ' ');
                }
                result.Add(new KeyValuePair<string, string>(Aws.SigV4.UriDecode(name), Aws.SigV4.UriDecode(value)));
            }
            return result;
        }

        internal static SandboxRequest From(SandboxHttpRequest request) =>
            new(request.HttpMethod, request.Path, request.Query, request.Headers, request.Body);
    }

    /// <summary>The two wire forms of AWS errors the sandbox speaks.</summary>
    public enum SandboxProtocol
    {
        /// <summary>SSM: AWS JSON 1.1.</summary>
        Json11,
        /// <summary>EC2: the EC2 Query protocol (XML errors).</summary>
        Ec2Query,
    }

    /// <summary>An error as the service returns it: HTTP status, error code, message.</summary>
    public sealed class SandboxError : Exception
    {
        public SandboxError(int status, string code, string? message, string? typePrefix = null, bool lowerCaseMessage = false) : base(message ?? code)
        {
            Status = status;
            Code = code;
            ErrorMessage = message;
            TypePrefix = typePrefix;
            LowerCaseMessageField = lowerCaseMessage;
        }

        public int Status { get; }
        public string Code { get; }
        /// <summary>The message; null when the service sends none (UnknownOperationException).</summary>
        public string? ErrorMessage { get; }
        /// <summary>For JSON: a namespace such as "com.amazon.coral.service" that AWS puts before '#' in __type (service-framework errors).</summary>
        public string? TypePrefix { get; }
        /// <summary>JSON framework errors use "message", SSM's modelled errors use "Message".</summary>
        public bool LowerCaseMessageField { get; }

        // ---- SSM (JSON 1.1) errors ----
        internal const string CoralService = "com.amazon.coral.service";
        internal const string CoralValidate = "com.amazon.coral.validate";

        public static SandboxError Coral(string code, string? message) => new(400, code, message, CoralService, lowerCaseMessage: true);
        public static SandboxError Validation(string message) => new(400, "ValidationException", message, CoralValidate, lowerCaseMessage: true);
        public static SandboxError Ssm(string code, string message) => new(400, code, message);

        // ---- EC2 errors ----
        public static SandboxError Ec2(int status, string code, string message) => new(status, code, message);
    }
}
