using System;
using System.Buffers;
using System.Buffers.Binary;
using System.Buffers.Text;
using System.Text;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Encodes and decodes the binary agent message (all integers big-endian):
    /// <code>
    /// off  len  field
    ///   0    4  HeaderLength (116; counts everything before PayloadLength)
    ///   4   32  MessageType, ASCII, right-padded with spaces
    ///  36    4  SchemaVersion (1)
    ///  40    8  CreatedDate, epoch ms
    ///  48    8  SequenceNumber (signed)
    ///  56    8  Flags
    ///  64   16  MessageId (UUID, 8-byte halves swapped: see MessageIdCodec)
    ///  80   32  PayloadDigest, SHA-256 of Payload
    /// 112    4  PayloadType
    ///  HL    4  PayloadLength
    /// HL+4   n  Payload
    /// </code>
    /// </summary>
    internal static class AgentMessageCodec
    {
        public const uint StandardHeaderLength = 116;

        /// <summary>The shortest header accepted: everything up to the digest, without PayloadType (reported for channel_closed).</summary>
        public const uint MinimumHeaderLength = 112;

        public const int MessageTypeOffset = 4;
        public const int MessageTypeLength = 32;
        public const int SchemaVersionOffset = 36;
        public const int CreatedDateOffset = 40;
        public const int SequenceNumberOffset = 48;
        public const int FlagsOffset = 56;
        public const int MessageIdOffset = 64;
        public const int PayloadDigestOffset = 80;
        public const int PayloadDigestLength = 32;
        public const int PayloadTypeOffset = 112;
        public const int PayloadLengthLength = 4;

        /// <summary>
        /// Serializes <paramref name="message"/> with the standard 116-byte header. The digest written is the
        /// message's <see cref="AgentMessage.PayloadDigest"/> (computed by <see cref="AgentMessage.Create"/>), so a
        /// decoded message re-encodes to the bytes it came from when its header was standard.
        /// </summary>
        public static byte[] Encode(AgentMessage message)
        {
            if (message is null) throw new ArgumentNullException(nameof(message));
            ValidateMessageType(message.MessageType);
            if (message.PayloadDigest.Length != PayloadDigestLength)
                throw new ArgumentException("The payload digest must be 32 bytes.", nameof(message));

            var payload = message.Payload;
            var result = new byte[StandardHeaderLength + PayloadLengthLength + payload.Length];
            WriteStandardHeader(result, message.MessageType, message.SchemaVersion, message.CreatedDate, message.SequenceNumber,
                message.Flags, message.MessageId, message.PayloadType, payload.Length);
            Buffer.BlockCopy(message.PayloadDigest, 0, result, PayloadDigestOffset, PayloadDigestLength);
            Buffer.BlockCopy(payload, 0, result, (int)StandardHeaderLength + PayloadLengthLength, payload.Length);
            return result;
        }

        // Everything before the payload but the digest, with the standard 116-byte header.
        private static void WriteStandardHeader(byte[] result, string messageType, uint schemaVersion, ulong createdDate,
            long sequenceNumber, ulong flags, Guid messageId, PayloadType payloadType, int payloadLength)
        {
            var span = result.AsSpan();
            BinaryPrimitives.WriteUInt32BigEndian(span, StandardHeaderLength);
            span.Slice(MessageTypeOffset, MessageTypeLength).Fill((byte)' ');
            Encoding.ASCII.GetBytes(messageType, 0, messageType.Length, result, MessageTypeOffset);
            BinaryPrimitives.WriteUInt32BigEndian(span.Slice(SchemaVersionOffset), schemaVersion);
            BinaryPrimitives.WriteUInt64BigEndian(span.Slice(CreatedDateOffset), createdDate);
            BinaryPrimitives.WriteInt64BigEndian(span.Slice(SequenceNumberOffset), sequenceNumber);
            BinaryPrimitives.WriteUInt64BigEndian(span.Slice(FlagsOffset), flags);
            MessageIdCodec.Write(messageId, result, MessageIdOffset);
            BinaryPrimitives.WriteUInt32BigEndian(span.Slice(PayloadTypeOffset), (uint)payloadType);
            BinaryPrimitives.WriteUInt32BigEndian(span.Slice((int)StandardHeaderLength), (uint)payloadLength);
        }

        /// <summary>
        /// The bytes of <c>Encode(ClientMessages.InputStreamData(sequenceNumber, payloadType, payload[offset..offset+count]))</c>
        /// written straight into one array (no copy of the payload on its own, no message object), with the id drawn
        /// for it in <paramref name="messageId"/>: what the data channel sends for every chunk of a stream.
        /// </summary>
        public static byte[] EncodeInputStreamData(long sequenceNumber, PayloadType payloadType, byte[] payload, int offset, int count,
            out Guid messageId, ulong? createdDate = null)
        {
            messageId = AgentMessage.NextMessageId();
            return EncodeInputStreamData(sequenceNumber, payloadType, payload, offset, count, messageId,
                createdDate ?? (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        }

        /// <summary>As above with a given id and date (tests compare it with the recorded frames and the general path).</summary>
        public static byte[] EncodeInputStreamData(long sequenceNumber, PayloadType payloadType, byte[] payload, int offset, int count,
            Guid messageId, ulong date)
        {
            if (payload is null) throw new ArgumentNullException(nameof(payload));
            if (sequenceNumber < 0) throw new ArgumentOutOfRangeException(nameof(sequenceNumber));
            if (offset < 0 || count < 0 || payload.Length - offset < count) throw new ArgumentOutOfRangeException(nameof(count));
            if (messageId == Guid.Empty) throw new ArgumentException("The MessageId must not be the nil UUID.", nameof(messageId));
            int start = (int)StandardHeaderLength + PayloadLengthLength;
            var result = new byte[start + count];
            WriteStandardHeader(result, MessageTypes.InputStreamData, AgentMessage.CurrentSchemaVersion, date, sequenceNumber,
                MessageFlags.Data, messageId, payloadType, count);
            Buffer.BlockCopy(payload, offset, result, start, count);
            var digest = AgentMessage.ComputeDigest(result, start, count);
            Buffer.BlockCopy(digest, 0, result, PayloadDigestOffset, PayloadDigestLength);
            return result;
        }

        private static readonly byte[] AckJson1 = Encoding.ASCII.GetBytes("{\"AcknowledgedMessageType\":\"");
        private static readonly byte[] AckJson2 = Encoding.ASCII.GetBytes("\",\"AcknowledgedMessageId\":\"");
        private static readonly byte[] AckJson3 = Encoding.ASCII.GetBytes("\",\"AcknowledgedMessageSequenceNumber\":");
        private static readonly byte[] AckJson4 = Encoding.ASCII.GetBytes(",\"IsSequentialMessage\":true}");

        /// <summary>
        /// The bytes of <c>Encode(ClientMessages.Acknowledge(...))</c> written straight into one array: the JSON as bytes,
        /// the digest computed in place. Every received message is acknowledged, and the general path builds the JSON as
        /// a string, then its bytes, a message and the frame (about 1 KB allocated per acknowledgement against 0.35 KB).
        /// A type that is not plain ASCII (never one the agent sends) goes the general way.
        /// </summary>
        public static byte[] EncodeAcknowledgement(string acknowledgedMessageType, Guid acknowledgedMessageId, long acknowledgedSequenceNumber,
            Guid? messageId = null, ulong? createdDate = null)
        {
            if (acknowledgedMessageType is null) throw new ArgumentNullException(nameof(acknowledgedMessageType));
            if (!ClientMessages.IsPlainAscii(acknowledgedMessageType) || acknowledgedMessageType.Length > MessageTypeLength)
            {
                return Encode(ClientMessages.Acknowledge(acknowledgedMessageType, acknowledgedMessageId, acknowledgedSequenceNumber, messageId, createdDate));
            }
            var id = messageId ?? AgentMessage.NextMessageId();
            if (id == Guid.Empty) throw new ArgumentException("The MessageId must not be the nil UUID.", nameof(messageId));
            var date = createdDate ?? (ulong)DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

            Span<byte> number = stackalloc byte[20];
            Utf8Formatter.TryFormat(acknowledgedSequenceNumber, number, out var numberLength);
            int jsonLength = AckJson1.Length + acknowledgedMessageType.Length + AckJson2.Length + 36 + AckJson3.Length + numberLength + AckJson4.Length;
            int start = (int)StandardHeaderLength + PayloadLengthLength;
            var result = new byte[start + jsonLength];
            WriteStandardHeader(result, MessageTypes.Acknowledge, AgentMessage.CurrentSchemaVersion, date, 0, MessageFlags.Ack, id,
                PayloadType.None, jsonLength);

            var json = result.AsSpan(start);
            var n = Append(json, 0, AckJson1);
            for (var i = 0; i < acknowledgedMessageType.Length; i++) json[n++] = (byte)acknowledgedMessageType[i];
            n = Append(json, n, AckJson2);
            Utf8Formatter.TryFormat(acknowledgedMessageId, json.Slice(n), out var idLength, new StandardFormat('D'));
            n += idLength;
            n = Append(json, n, AckJson3);
            number.Slice(0, numberLength).CopyTo(json.Slice(n));
            n += numberLength;
            Append(json, n, AckJson4);

            var digest = AgentMessage.ComputeDigest(result, start, jsonLength);
            Buffer.BlockCopy(digest, 0, result, PayloadDigestOffset, PayloadDigestLength);
            return result;
        }

        private static int Append(Span<byte> target, int at, byte[] part)
        {
            part.CopyTo(target.Slice(at));
            return at + part.Length;
        }

        /// <summary>Decodes one whole binary WebSocket message.</summary>
        /// <exception cref="SsmProtocolException">The bytes are not a well-formed agent message.</exception>
        public static AgentMessage Decode(byte[] frame)
        {
            if (frame is null) throw new ArgumentNullException(nameof(frame));
            return Decode(new ArraySegment<byte>(frame));
        }

        /// <summary>Decodes one whole binary WebSocket message held in a segment (the payload is copied out).</summary>
        /// <exception cref="SsmProtocolException">The bytes are not a well-formed agent message.</exception>
        public static AgentMessage Decode(ArraySegment<byte> frame)
        {
            if (frame.Array is null) throw new ArgumentNullException(nameof(frame));
            ReadOnlySpan<byte> span = frame.AsSpan();

            if (span.Length < MinimumHeaderLength + PayloadLengthLength)
                throw new SsmProtocolException($"Agent message too short: {span.Length} bytes, at least {MinimumHeaderLength + PayloadLengthLength} needed.");

            uint headerLength = BinaryPrimitives.ReadUInt32BigEndian(span);
            if (headerLength < MinimumHeaderLength)
                throw new SsmProtocolException($"Agent message header length {headerLength} is below the minimum of {MinimumHeaderLength}.");
            // long arithmetic: a hostile HeaderLength near uint.MaxValue must not wrap around.
            if ((long)headerLength + PayloadLengthLength > span.Length)
                throw new SsmProtocolException($"Agent message header length {headerLength} runs past the end of the {span.Length}-byte message.");

            uint payloadLength = BinaryPrimitives.ReadUInt32BigEndian(span.Slice((int)headerLength));
            long expected = (long)headerLength + PayloadLengthLength + payloadLength;
            if (expected != span.Length)
                throw new SsmProtocolException(
                    $"Agent message payload length {payloadLength} does not match the message: {span.Length} bytes received, {expected} expected.");

            string messageType = ReadMessageType(span.Slice(MessageTypeOffset, MessageTypeLength));
            if (messageType.Length == 0)
                throw new SsmProtocolException("Agent message has an empty MessageType.");

            uint schemaVersion = BinaryPrimitives.ReadUInt32BigEndian(span.Slice(SchemaVersionOffset));
            ulong createdDate = BinaryPrimitives.ReadUInt64BigEndian(span.Slice(CreatedDateOffset));
            long sequenceNumber = BinaryPrimitives.ReadInt64BigEndian(span.Slice(SequenceNumberOffset));
            ulong flags = BinaryPrimitives.ReadUInt64BigEndian(span.Slice(FlagsOffset));
            Guid messageId = MessageIdCodec.Read(frame.Array, frame.Offset + MessageIdOffset);
            byte[] digest = span.Slice(PayloadDigestOffset, PayloadDigestLength).ToArray();
            // A 112-byte header has no PayloadType field; the 4 bytes at 112 are the PayloadLength then.
            var payloadType = headerLength >= StandardHeaderLength
                ? (PayloadType)BinaryPrimitives.ReadUInt32BigEndian(span.Slice(PayloadTypeOffset))
                : PayloadType.None;

            int payloadOffset = (int)headerLength + PayloadLengthLength;
            byte[] payload = span.Slice(payloadOffset).ToArray();
            bool digestValid = payload.Length == 0 || DigestEquals(digest, AgentMessage.ComputeDigest(payload, 0, payload.Length));

            return new AgentMessage(headerLength, messageType, schemaVersion, createdDate, sequenceNumber, flags,
                messageId, digest, payloadType, payload, digestValid);
        }

        /// <summary>
        /// The MessageType field of a binary message, read without checking anything else (null when the message is too
        /// short to hold it). start_publication and pause_publication are acted on from this alone, as the official client
        /// skips validation for them (its own tests build them without a header length or a date).
        /// </summary>
        public static string? PeekMessageType(ArraySegment<byte> frame)
        {
            if (frame.Array is null || frame.Count < MessageTypeOffset + MessageTypeLength) return null;
            return ReadMessageType(frame.AsSpan().Slice(MessageTypeOffset, MessageTypeLength));
        }

        /// <summary>Checks that a MessageType fits the 32-byte field as printable ASCII.</summary>
        internal static void ValidateMessageType(string messageType)
        {
            if (messageType.Length == 0 || messageType.Length > MessageTypeLength)
                throw new ArgumentException($"A MessageType has 1 to {MessageTypeLength} characters.", nameof(messageType));
            foreach (char c in messageType)
            {
                if (c <= ' ' || c > '~')
                    throw new ArgumentException("A MessageType is printable ASCII without spaces.", nameof(messageType));
            }
        }

        // The field is space-padded by the official client; other senders have been seen to pad with NULs. Trim both
        // from both ends. Bytes outside ASCII are kept as U+FFFD so garbage is visible in logs but never throws.
        private static string ReadMessageType(ReadOnlySpan<byte> field)
        {
            int start = 0, end = field.Length;
            while (start < end && (field[start] == 0 || field[start] == (byte)' ')) start++;
            while (end > start && (field[end - 1] == 0 || field[end - 1] == (byte)' ')) end--;
            // The known types come back as the shared constants: no string per message.
            var trimmed = field.Slice(start, end - start);
            foreach (var known in KnownTypes)
            {
                if (known.Bytes.Length == trimmed.Length && trimmed.SequenceEqual(known.Bytes)) return known.Name;
            }
            var chars = new char[end - start];
            for (int i = 0; i < chars.Length; i++)
            {
                byte b = field[start + i];
                chars[i] = b < 0x80 ? (char)b : '\uFFFD';
            }
            return new string(chars);
        }

        private static readonly (string Name, byte[] Bytes)[] KnownTypes =
        {
            (MessageTypes.OutputStreamData, Encoding.ASCII.GetBytes(MessageTypes.OutputStreamData)),
            (MessageTypes.Acknowledge, Encoding.ASCII.GetBytes(MessageTypes.Acknowledge)),
            (MessageTypes.InputStreamData, Encoding.ASCII.GetBytes(MessageTypes.InputStreamData)),
            (MessageTypes.ChannelClosed, Encoding.ASCII.GetBytes(MessageTypes.ChannelClosed)),
            (MessageTypes.StartPublication, Encoding.ASCII.GetBytes(MessageTypes.StartPublication)),
            (MessageTypes.PausePublication, Encoding.ASCII.GetBytes(MessageTypes.PausePublication)),
        };

        /// <summary>
        /// For the receive loop's in-place paths: true when <paramref name="frame"/> has the standard 116-byte header and
        /// exactly the payload its PayloadLength announces, with where that payload lies in the frame's array. Nothing else
        /// is checked (not the digest: a path checks what is cheaper first).
        /// </summary>
        internal static bool TryLocateStandardPayload(ArraySegment<byte> frame, out int offset, out int count)
        {
            const int payloadStart = (int)StandardHeaderLength + PayloadLengthLength;
            offset = 0;
            count = 0;
            var span = frame.AsSpan();
            if (frame.Array == null || span.Length < payloadStart || BinaryPrimitives.ReadUInt32BigEndian(span) != StandardHeaderLength) return false;
            var length = BinaryPrimitives.ReadUInt32BigEndian(span.Slice((int)StandardHeaderLength));
            if ((long)length + payloadStart != span.Length) return false;
            offset = frame.Offset + payloadStart;
            count = (int)length;
            return true;
        }

        /// <summary>Whether <paramref name="digest"/> is the SHA-256 of the <paramref name="count"/> bytes at <paramref name="offset"/> (constant time).</summary>
        internal static bool DigestHolds(ReadOnlySpan<byte> digest, byte[] buffer, int offset, int count)
        {
            var computed = AgentMessage.ComputeDigest(buffer, offset, count);
            if (digest.Length != computed.Length) return false;
            int diff = 0;
            for (int i = 0; i < computed.Length; i++) diff |= digest[i] ^ computed[i];
            return diff == 0;
        }

        private static bool DigestEquals(byte[] a, byte[] b)
        {
            if (a.Length != b.Length) return false;
            int diff = 0;
            for (int i = 0; i < a.Length; i++) diff |= a[i] ^ b[i];
            return diff == 0;
        }
    }
}
