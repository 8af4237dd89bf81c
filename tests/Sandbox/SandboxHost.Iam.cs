using System;
using System.IO;
using System.Linq;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace BastionTools.Sandbox
{
    public sealed partial class SandboxHost
    {
        private const string IamControlPath = "/control/iam";

        private static bool IsIamControl(string path) =>
            path == IamControlPath || path.StartsWith(IamControlPath + "/", StringComparison.Ordinal);

        /// <summary>
        /// The sandbox's IAM at run time (no secrets in any answer):
        /// GET /control/iam — the credentials (access key id, user name, ARN, policy) and the EC2 denial wording;
        /// PUT /control/iam {"ec2DenialMessage":"Encoded|Detailed|Bare"};
        /// PUT /control/iam/credentials/&lt;accessKeyId&gt; {"secretAccessKey","sessionToken"?,"userName"?,"arn"?,"policy"?} — adds or
        /// replaces a credential (no "policy", or null: it may do everything);
        /// PUT /control/iam/credentials/&lt;accessKeyId&gt;/policy &lt;policy JSON or null&gt; — replaces the policy of an existing one;
        /// DELETE /control/iam/credentials/&lt;accessKeyId&gt;.
        /// </summary>
        private (int Status, string Json) HandleIamControl(string method, string path, string body)
        {
            var parts = path.Trim('/').Split('/').Select(Uri.UnescapeDataString).ToArray();
            try
            {
                if (parts.Length == 2)
                {
                    if (method == "PUT" || method == "POST")
                    {
                        var o = JsonNode.Parse(body) as JsonObject ?? throw new InvalidDataException("Expected a JSON object.");
                        if (o["ec2DenialMessage"] is JsonNode style)
                        {
                            if (!Enum.TryParse<SandboxEc2DenialMessage>(style.GetValue<string>(), ignoreCase: true, out var parsed) || !Enum.IsDefined(parsed))
                                throw new InvalidDataException("ec2DenialMessage must be Encoded, Detailed or Bare.");
                            World.Ec2DenialMessage = parsed;
                        }
                    }
                    else if (method != "GET")
                    {
                        return (405, IamError("Method not allowed."));
                    }
                    return (200, DescribeIam().ToJsonString());
                }
                if (parts.Length >= 4 && parts[2] == "credentials")
                {
                    var accessKeyId = parts[3];
                    if (parts.Length == 4 && method == "PUT")
                    {
                        var o = JsonNode.Parse(body) as JsonObject ?? throw new InvalidDataException("Expected a JSON object.");
                        var credential = new SandboxCredential
                        {
                            AccessKeyId = accessKeyId,
                            SecretAccessKey = o["secretAccessKey"]?.GetValue<string>() ?? throw new InvalidDataException("secretAccessKey is required."),
                            SessionToken = o["sessionToken"]?.GetValue<string>(),
                            UserName = o["userName"]?.GetValue<string>() ?? "sandbox-user",
                            Arn = o["arn"]?.GetValue<string>(),
                            Policy = o["policy"] is JsonNode p ? SandboxIamPolicy.FromJson(p) : null,
                        };
                        World.SetCredential(credential);
                        _options.Log?.Invoke("iam: credential " + accessKeyId + (credential.Policy == null ? " (unrestricted)" : " " + credential.Policy));
                        return (200, DescribeCredential(credential).ToJsonString());
                    }
                    if (parts.Length == 4 && method == "DELETE")
                    {
                        return World.RemoveCredential(accessKeyId)
                            ? (200, new JsonObject { ["removed"] = accessKeyId }.ToJsonString())
                            : (404, IamError("No removable credential " + accessKeyId + " (the last one stays)."));
                    }
                    if (parts.Length == 5 && parts[4] == "policy" && method == "PUT")
                    {
                        var credential = World.FindCredential(accessKeyId);
                        if (credential == null) return (404, IamError("No credential " + accessKeyId + "."));
                        var node = string.IsNullOrWhiteSpace(body) ? null : JsonNode.Parse(body);
                        credential.Policy = node == null ? null : SandboxIamPolicy.FromJson(node);
                        _options.Log?.Invoke("iam: policy of " + accessKeyId + " " + (credential.Policy?.ToString() ?? "(unrestricted)"));
                        return (200, DescribeCredential(credential).ToJsonString());
                    }
                }
                return (404, IamError("Unknown IAM control path " + path + "."));
            }
            catch (Exception ex) when (ex is JsonException || ex is InvalidDataException || ex is InvalidOperationException || ex is ArgumentException || ex is FormatException)
            {
                return (400, IamError(ex.Message));
            }
        }

        private JsonObject DescribeIam()
        {
            var list = new JsonArray();
            foreach (var c in World.Credentials) list.Add(DescribeCredential(c));
            return new JsonObject { ["ec2DenialMessage"] = World.Ec2DenialMessage.ToString(), ["credentials"] = list };
        }

        private JsonObject DescribeCredential(SandboxCredential c) => new()
        {
            ["accessKeyId"] = c.AccessKeyId,
            ["userName"] = c.UserName,
            ["arn"] = SandboxIamPolicy.CallerArn(World, c),
            ["temporary"] = c.SessionToken != null,
            ["policy"] = c.Policy?.ToJson(),
        };

        private static string IamError(string message) => new JsonObject { ["error"] = message }.ToJsonString();
    }
}
