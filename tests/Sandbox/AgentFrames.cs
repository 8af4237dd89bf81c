using System;
using System.Buffers.Binary;
using System.Buffers.Text;
using System.Security.Cryptography;
using BastionTools.Ssm;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The agent double's per-message encoding and decoding, without the intermediate objects of the general codec:
    /// an outgoing frame is written in one array (header, payload, SHA-256 straight into the digest field), an
    /// acknowledgement's JSON is written as bytes, and a standard incoming frame of a known type is decoded without
    /// copying the whole frame first. The bytes written and the messages read are exactly those of
    /// <see cref="AgentMessageCodec"/>, <see cref="AgentMessage.Create"/> and <see cref="ClientMessages.Acknowledge(AgentMessage, Guid?, ulong?)"/>
    /// (tests compare them); anything unusual goes through those as before.
    /// </summary>
    internal static class AgentFrames
    {
        private const int HeaderLength = (int)AgentMessageCodec.StandardHeaderLength;
        private const int PayloadOffset = HeaderLength + AgentMessageCodec.PayloadLengthLength;

        private static readonly byte[] InputStreamDataField = PaddedType(MessageTypes.InputStreamData);
        private static readonly byte[] AcknowledgeField = PaddedType(MessageTypes.Acknowledge);

        private static byte[] PaddedType(string type)
        {
            var field = new byte[AgentMessageCodec.MessageTypeLength];
            field.AsSpan().Fill((byte)' ');
            for (var i = 0; i < type.Length; i++) field[i] = (byte)type[i];
            return field;
        }

        /// <summary>
        /// <c>AgentMessageCodec.Encode(AgentMessage.Create(messageType, sequenceNumber, flags, payloadType, payload, messageId, createdDate))</c>
        /// in one allocation. <paramref name="messageType"/> must be a valid MessageType (the callers pass constants).
        /// </summary>
        public static byte[] Encode(string messageType, long sequenceNumber, ulong flags, PayloadType payloadType, ReadOnlySpan<byte> payload,
            Guid? messageId = null, ulong? createdDate = null)
        {
            // Unique ids without a system call per message (Guid.NewGuid reads /dev/urandom here: 8 % of the double's CPU
            // during a COPY out, perf); the real agent draws a random UUID per message on its own machine.
            var id = messageId ?? AgentMessage.NextMessageId();
            var date = createdDate ?? (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            var frame = new byte[PayloadOffset + payload.Length];
            var span = frame.AsSpan();
            BinaryPrimitives.WriteUInt32BigEndian(span, AgentMessageCodec.StandardHeaderLength);
            var typeField = span.Slice(AgentMessageCodec.MessageTypeOffset, AgentMessageCodec.MessageTypeLength);
            typeField.Fill((byte)' ');
            for (var i = 0; i < messageType.Length; i++) typeField[i] = (byte)messageType[i];
            BinaryPrimitives.WriteUInt32BigEndian(span.Slice(AgentMessageCodec.SchemaVersionOffset), AgentMessage.CurrentSchemaVersion);
            BinaryPrimitives.WriteUInt64BigEndian(span.Slice(AgentMessageCodec.CreatedDateOffset), date);
            BinaryPrimitives.WriteInt64BigEndian(span.Slice(AgentMessageCodec.SequenceNumberOffset), sequenceNumber);
            BinaryPrimitives.WriteUInt64BigEndian(span.Slice(AgentMessageCodec.FlagsOffset), flags);
            MessageIdCodec.Write(id, frame, AgentMessageCodec.MessageIdOffset);
            BinaryPrimitives.WriteUInt32BigEndian(span.Slice(AgentMessageCodec.PayloadTypeOffset), (uint)payloadType);
            BinaryPrimitives.WriteUInt32BigEndian(span.Slice(HeaderLength), (uint)payload.Length);
            payload.CopyTo(span.Slice(PayloadOffset));
            Sha256(payload, span.Slice(AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength));
            return frame;
        }

        [ThreadStatic]
        private static IncrementalHash? t_sha;

        /// <summary>
        /// SHA-256 with one hasher per thread: the one-shot SHA256.HashData makes and frees an OpenSSL context and clears
        /// its error queue on every call (3 % of the double's CPU during a COPY out, perf).
        /// </summary>
        private static void Sha256(ReadOnlySpan<byte> data, Span<byte> destination)
        {
            var sha = t_sha ??= IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            sha.AppendData(data);
            sha.GetHashAndReset(destination);
        }

        /// <summary>A 116-byte header whose PayloadLength matches the frame: the only shape read here.</summary>
        private static bool IsStandard(ReadOnlySpan<byte> span) =>
            span.Length >= PayloadOffset
            && BinaryPrimitives.ReadUInt32BigEndian(span) == AgentMessageCodec.StandardHeaderLength
            && (long)BinaryPrimitives.ReadUInt32BigEndian(span.Slice(HeaderLength)) + PayloadOffset == span.Length;

        /// <summary>The payload's SHA-256 is the digest field (an empty payload counts as valid, as in the codec).</summary>
        private static bool DigestHolds(ReadOnlySpan<byte> span)
        {
            var payload = span.Slice(PayloadOffset);
            if (payload.Length == 0) return true;
            Span<byte> computed = stackalloc byte[32];
            Sha256(payload, computed);
            return CryptographicOperations.FixedTimeEquals(computed, span.Slice(AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength));
        }

        private static ReadOnlySpan<byte> AckPart1 => "{\"AcknowledgedMessageType\":\""u8;
        private static ReadOnlySpan<byte> AckPart2 => "\",\"AcknowledgedMessageId\":\""u8;
        private static ReadOnlySpan<byte> AckPart3 => "\",\"AcknowledgedMessageSequenceNumber\":"u8;
        private static ReadOnlySpan<byte> AckPart4 => ",\"IsSequentialMessage\":true}"u8;

        /// <summary>
        /// The frame of <c>ClientMessages.Acknowledge(received)</c> (the agent's acknowledge is field for field the
        /// client's), written directly. Null when the acknowledged type is not plain ASCII (the caller then uses
        /// ClientMessages, which serializes that case).
        /// </summary>
        public static byte[]? EncodeAcknowledge(string acknowledgedType, Guid acknowledgedId, long acknowledgedSequence, Guid? messageId = null, ulong? createdDate = null)
        {
            if (acknowledgedType.Length > 64) return null;
            foreach (var c in acknowledgedType)
            {
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return null;
            }
            Span<byte> json = stackalloc byte[256];
            var n = 0;
            AckPart1.CopyTo(json);
            n += AckPart1.Length;
            for (var i = 0; i < acknowledgedType.Length; i++) json[n++] = (byte)acknowledgedType[i];
            AckPart2.CopyTo(json.Slice(n));
            n += AckPart2.Length;
            acknowledgedId.TryFormat(json.Slice(n), out var written, "D");
            n += written;
            AckPart3.CopyTo(json.Slice(n));
            n += AckPart3.Length;
            Utf8Formatter.TryFormat(acknowledgedSequence, json.Slice(n), out written);
            n += written;
            AckPart4.CopyTo(json.Slice(n));
            n += AckPart4.Length;
            return Encode(MessageTypes.Acknowledge, 0, MessageFlags.Ack, PayloadType.None, json.Slice(0, n), messageId, createdDate);
        }

        /// <summary>
        /// <c>AgentMessageCodec.Decode(frame)</c>: a standard 116-byte header of input_stream_data or acknowledge is read
        /// here (the payload copied out once); every other frame, well-formed or not, goes to the codec (same result, same
        /// exceptions).
        /// </summary>
        public static AgentMessage Decode(ArraySegment<byte> frame)
        {
            ReadOnlySpan<byte> span = frame.AsSpan();
            if (!IsStandard(span)) return AgentMessageCodec.Decode(frame);
            var typeField = span.Slice(AgentMessageCodec.MessageTypeOffset, AgentMessageCodec.MessageTypeLength);
            string messageType;
            if (typeField.SequenceEqual(InputStreamDataField)) messageType = MessageTypes.InputStreamData;
            else if (typeField.SequenceEqual(AcknowledgeField)) messageType = MessageTypes.Acknowledge;
            else return AgentMessageCodec.Decode(frame);

            return new AgentMessage(
                AgentMessageCodec.StandardHeaderLength,
                messageType,
                BinaryPrimitives.ReadUInt32BigEndian(span.Slice(AgentMessageCodec.SchemaVersionOffset)),
                BinaryPrimitives.ReadUInt64BigEndian(span.Slice(AgentMessageCodec.CreatedDateOffset)),
                BinaryPrimitives.ReadInt64BigEndian(span.Slice(AgentMessageCodec.SequenceNumberOffset)),
                BinaryPrimitives.ReadUInt64BigEndian(span.Slice(AgentMessageCodec.FlagsOffset)),
                MessageIdCodec.Read(frame.Array!, frame.Offset + AgentMessageCodec.MessageIdOffset),
                span.Slice(AgentMessageCodec.PayloadDigestOffset, AgentMessageCodec.PayloadDigestLength).ToArray(),
                (PayloadType)BinaryPrimitives.ReadUInt32BigEndian(span.Slice(AgentMessageCodec.PayloadTypeOffset)),
                span.Slice(PayloadOffset).ToArray(),
                DigestHolds(span));
        }

        /// <summary>
        /// Whether <paramref name="frame"/> is an acknowledge with the standard 116-byte header and a consistent
        /// PayloadLength (what <see cref="Decode"/> reads itself), with its payload and whether the digest holds (an empty
        /// payload counts as valid, as in <see cref="AgentMessageCodec"/>).
        /// </summary>
        public static bool TryReadStandardAcknowledge(ArraySegment<byte> frame, out bool digestValid, out ReadOnlySpan<byte> payload)
        {
            digestValid = false;
            payload = default;
            ReadOnlySpan<byte> span = frame.AsSpan();
            if (!IsStandard(span) || !span.Slice(AgentMessageCodec.MessageTypeOffset, AgentMessageCodec.MessageTypeLength).SequenceEqual(AcknowledgeField))
                return false;
            payload = span.Slice(PayloadOffset);
            digestValid = DigestHolds(span);
            return true;
        }

        /// <summary>
        /// The AcknowledgedMessageSequenceNumber of an acknowledgement payload in the exact form clients write
        /// (<see cref="ClientMessages.Acknowledge(AgentMessage, Guid?, ulong?)"/>, the official plugin): plain-ASCII type,
        /// a 36-character lower-case id, a number without sign or leading zero, IsSequentialMessage true or false. False for
        /// anything else: the caller then parses it with <see cref="SsmJson"/> as before.
        /// </summary>
        public static bool TryReadCanonicalAcknowledge(ReadOnlySpan<byte> json, out long sequenceNumber)
        {
            sequenceNumber = 0;
            if (!json.StartsWith(AckPart1)) return false;
            var rest = json.Slice(AckPart1.Length);
            var i = 0;
            while (i < rest.Length && IsTypeChar(rest[i])) i++;
            if (i == 0) return false;
            rest = rest.Slice(i);
            if (!rest.StartsWith(AckPart2)) return false;
            rest = rest.Slice(AckPart2.Length);
            if (rest.Length < 36) return false;
            for (i = 0; i < 36; i++)
            {
                var b = rest[i];
                var ok = (i == 8 || i == 13 || i == 18 || i == 23) ? b == (byte)'-' : (b >= (byte)'0' && b <= (byte)'9') || (b >= (byte)'a' && b <= (byte)'f');
                if (!ok) return false;
            }
            rest = rest.Slice(36);
            if (!rest.StartsWith(AckPart3)) return false;
            rest = rest.Slice(AckPart3.Length);
            var digits = 0;
            while (digits < rest.Length && rest[digits] >= (byte)'0' && rest[digits] <= (byte)'9') digits++;
            if (digits == 0 || digits > 18 || (digits > 1 && rest[0] == (byte)'0')) return false;
            long value = 0;
            for (i = 0; i < digits; i++) value = value * 10 + (rest[i] - (byte)'0');
            rest = rest.Slice(digits);
            if (!rest.SequenceEqual(AckPart4) && !rest.SequenceEqual(",\"IsSequentialMessage\":false}"u8)) return false;
            sequenceNumber = value;
            return true;
        }

        private static bool IsTypeChar(byte b) =>
            (b >= (byte)'a' && b <= (byte)'z') || (b >= (byte)'A' && b <= (byte)'Z') || (b >= (byte)'0' && b <= (byte)'9') || b == (byte)'_';
    }
}
