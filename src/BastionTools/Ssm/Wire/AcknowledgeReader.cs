using System;
using System.Buffers.Text;
using System.Text.Json;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Reads the acknowledgement JSON the agent sends for every message (Go's encoding/json of its AcknowledgeContent:
    /// <c>{"AcknowledgedMessageType":"input_stream_data","AcknowledgedMessageId":"…","AcknowledgedMessageSequenceNumber":7,"IsSequentialMessage":true}</c>)
    /// where it lies, without the serializer: one acknowledgement per message sent made
    /// <see cref="SsmJson.Deserialize{T}"/> (an object, two strings, a Guid parse) about a tenth of the socket thread's
    /// time with 32 clients across a 10 ms link (perf).
    /// </summary>
    /// <remarks>
    /// It takes only what it can read unambiguously, and says no to everything else, for the general path to decide as it
    /// always has: exactly one JSON object; the four property names spelt exactly (the serializer's case-insensitive
    /// matching is left to it), each at most once and none other; the message type a string, the id a string holding a
    /// GUID in its 36-character form (no escapes), the sequence number an integer that fits 64 bits, IsSequentialMessage
    /// true or false; id and sequence number present. For every payload it accepts, the general path reads the same
    /// sequence number and id (AcknowledgeReaderTests checks them side by side).
    /// </remarks>
    internal static class AcknowledgeReader
    {
        private const int TypeSeen = 1, IdSeen = 2, SequenceSeen = 4, SequentialSeen = 8;

        private static readonly byte[] TypeName = System.Text.Encoding.ASCII.GetBytes("AcknowledgedMessageType");
        private static readonly byte[] IdName = System.Text.Encoding.ASCII.GetBytes("AcknowledgedMessageId");
        private static readonly byte[] SequenceName = System.Text.Encoding.ASCII.GetBytes("AcknowledgedMessageSequenceNumber");
        private static readonly byte[] SequentialName = System.Text.Encoding.ASCII.GetBytes("IsSequentialMessage");

        /// <summary>
        /// True with the acknowledged sequence number and message id when <paramref name="frame"/> (a whole binary message,
        /// its type already seen to be <c>acknowledge</c>) has the standard 116-byte header, a payload of the length it
        /// announces whose SHA-256 is the header's digest, and that payload is an acknowledgement of the plain shape.
        /// Nothing is copied.
        /// </summary>
        public static bool TryReadFrame(ArraySegment<byte> frame, out long sequence, out Guid id)
        {
            sequence = 0;
            id = Guid.Empty;
            if (!AgentMessageCodec.TryLocateStandardPayload(frame, out var offset, out var count) || count == 0) return false;
            if (!AgentMessageCodec.DigestHolds(frame.AsSpan(AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength), frame.Array!, offset, count)) return false;
            return TryRead(new ReadOnlySpan<byte>(frame.Array, offset, count), out sequence, out id);
        }

        /// <summary>True with the acknowledged sequence number and message id when the payload is an acknowledgement of the plain shape above.</summary>
        public static bool TryRead(ReadOnlySpan<byte> json, out long sequence, out Guid id)
        {
            sequence = 0;
            id = Guid.Empty;
            try
            {
                var reader = new Utf8JsonReader(json, isFinalBlock: true, state: default);
                if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return false;
                var seen = 0;
                while (true)
                {
                    if (!reader.Read()) return false;
                    if (reader.TokenType == JsonTokenType.EndObject) break;
                    if (reader.TokenType != JsonTokenType.PropertyName) return false;
                    int property;
                    if (reader.ValueTextEquals(IdName)) property = IdSeen;
                    else if (reader.ValueTextEquals(SequenceName)) property = SequenceSeen;
                    else if (reader.ValueTextEquals(TypeName)) property = TypeSeen;
                    else if (reader.ValueTextEquals(SequentialName)) property = SequentialSeen;
                    else return false;
                    if ((seen & property) != 0) return false;
                    seen |= property;
                    if (!reader.Read()) return false;
                    switch (property)
                    {
                        case TypeSeen:
                            if (reader.TokenType != JsonTokenType.String) return false;
                            break;
                        case IdSeen:
                            // The raw bytes: an escape (a backslash) is not a hex digit, so an escaped id fails here.
                            if (reader.TokenType != JsonTokenType.String || reader.HasValueSequence) return false;
                            var raw = reader.ValueSpan;
                            if (raw.Length != 36 || !Utf8Parser.TryParse(raw, out id, out var consumed, 'D') || consumed != raw.Length) return false;
                            break;
                        case SequenceSeen:
                            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out sequence)) return false;
                            break;
                        default:
                            if (reader.TokenType != JsonTokenType.True && reader.TokenType != JsonTokenType.False) return false;
                            break;
                    }
                }
                // Nothing may follow the object but white space (the reader throws on anything else).
                if (reader.Read()) return false;
                return (seen & (IdSeen | SequenceSeen)) == (IdSeen | SequenceSeen);
            }
            catch (JsonException)
            {
                return false;
            }
        }
    }
}
