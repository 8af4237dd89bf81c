using System;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace BastionTools.Ssm
{
    /// <summary>
    /// JSON for data-channel payloads. Output is compact, in declaration order, with nulls written
    /// (<c>"ActionResult":null</c>, <c>"Errors":null</c>) — byte for byte what the official client (Go encoding/json)
    /// sends for the recorded payloads. The encoder leaves '+', '/' and non-ASCII unescaped as Go does (the default
    /// System.Text.Json encoder would turn the '+' of a token into \u002B). Go additionally escapes &lt; &gt; &amp;
    /// as \u003c…; none of the fields the client sends (ids, versions, tokens, message types) can hold them, and
    /// the agent parses either form. Reading is case-insensitive, like Go's json.Unmarshal.
    /// </summary>
    internal static class SsmJson
    {
        internal static readonly JsonSerializerOptions Options = new()
        {
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
            DefaultIgnoreCondition = JsonIgnoreCondition.Never,
            PropertyNameCaseInsensitive = true,
            WriteIndented = false,
        };

        public static byte[] SerializeToUtf8(object value) =>
            JsonSerializer.SerializeToUtf8Bytes(value, value.GetType(), Options);

        public static string Serialize(object value) => Encoding.UTF8.GetString(SerializeToUtf8(value));

        /// <summary>Parses a UTF-8 JSON payload.</summary>
        /// <exception cref="SsmProtocolException">The payload is not JSON of the expected shape.</exception>
        public static T Deserialize<T>(byte[] utf8Json)
            where T : class
        {
            if (utf8Json is null) throw new ArgumentNullException(nameof(utf8Json));
            try
            {
                return JsonSerializer.Deserialize<T>(utf8Json, Options)
                    ?? throw new SsmProtocolException($"Payload is JSON null where a {typeof(T).Name} was expected.");
            }
            catch (JsonException ex)
            {
                throw new SsmProtocolException($"Payload is not a valid {typeof(T).Name}: {ex.Message}", ex);
            }
        }
    }
}
