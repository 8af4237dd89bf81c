using System;
using System.Collections.Generic;
using System.Text.Json.Nodes;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The KMS operations of the sandbox (AWS JSON 1.1, X-Amz-Target: TrentService.&lt;Op&gt;, SigV4 service "kms"):
    /// GenerateDataKey and Decrypt over <see cref="SandboxKms"/>, as the SigV4-verified caller: the key policy and that
    /// caller's identity policy (the sandbox IAM engine) both take part, once the KeyId is resolved to the key ARN IAM
    /// authorizes on. Errors are KMS's JSON: HTTP 400, {"__type":"AccessDeniedException","message":"..."}.
    /// </summary>
    internal sealed class KmsApi
    {
        public const string TargetPrefix = "TrentService.";
        private readonly SandboxHost _host;

        public KmsApi(SandboxHost host) => _host = host;

        private SandboxKms Kms => _host.World.Kms;

        public string Handle(string operation, JsonObject input, SandboxCredential caller)
        {
            switch (operation)
            {
                case "GenerateDataKey":
                {
                    var keyId = RequiredString(input, "KeyId", "keyId");
                    var bytes = NumberOfBytes(input);
                    var context = ReadContext(input["EncryptionContext"]);
                    var (blob, plaintext, arn) = Kms.GenerateDataKey(caller, keyId, bytes, context);
                    return new JsonObject
                    {
                        ["CiphertextBlob"] = Convert.ToBase64String(blob),
                        ["KeyId"] = arn,
                        ["Plaintext"] = Convert.ToBase64String(plaintext),
                    }.ToJsonString();
                }
                case "Decrypt":
                {
                    var blobText = RequiredString(input, "CiphertextBlob", "ciphertextBlob");
                    byte[] blob;
                    try
                    {
                        blob = Convert.FromBase64String(blobText);
                    }
                    catch (FormatException)
                    {
                        throw SandboxError.Coral("SerializationException", "Could not read the ciphertextBlob as base64.");
                    }
                    var keyId = input["KeyId"]?.GetValue<string>();
                    var (plaintext, arn) = Kms.Decrypt(caller, blob, ReadContext(input["EncryptionContext"]), keyId);
                    return new JsonObject
                    {
                        ["EncryptionAlgorithm"] = "SYMMETRIC_DEFAULT",
                        ["KeyId"] = arn,
                        ["Plaintext"] = Convert.ToBase64String(plaintext),
                    }.ToJsonString();
                }
                default:
                    throw SandboxError.Coral("UnknownOperationException", null);
            }
        }

        private static int NumberOfBytes(JsonObject input)
        {
            var spec = input["KeySpec"]?.GetValue<string>();
            if (input["NumberOfBytes"] is JsonValue n)
            {
                if (spec != null) throw SandboxKms.Kms("ValidationException", "Please specify either number of bytes or key spec.");
                return n.TryGetValue<int>(out var count) ? count : throw SandboxError.Coral("SerializationException", "Expected an integer for numberOfBytes.");
            }
            return spec switch
            {
                "AES_256" => 32,
                "AES_128" => 16,
                null => throw SandboxKms.Kms("ValidationException", "Please specify either number of bytes or key spec."),
                _ => throw SandboxKms.Kms("ValidationException", "1 validation error detected: Value '" + spec + "' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"),
            };
        }

        private static Dictionary<string, string> ReadContext(JsonNode? node)
        {
            var context = new Dictionary<string, string>(StringComparer.Ordinal);
            if (node == null) return context;
            if (node is not JsonObject o) throw SandboxError.Coral("SerializationException", "Expected a map for encryptionContext.");
            foreach (var kv in o)
            {
                if (kv.Value is JsonValue v && v.TryGetValue<string>(out var s)) context[kv.Key] = s;
                else throw SandboxError.Coral("SerializationException", "Expected string values in encryptionContext.");
            }
            return context;
        }

        private static string RequiredString(JsonObject input, string name, string wireName)
        {
            if (input[name] is JsonValue v && v.TryGetValue<string>(out var s) && s.Length > 0) return s;
            throw SandboxError.Validation("1 validation error detected: Value null at '" + wireName + "' failed to satisfy constraint: Member must not be null");
        }
    }
}
