using System;

namespace BastionTools.Ssm
{
    /// <summary>
    /// The 16-byte MessageId field. The wire holds the UUID's RFC 4122 bytes (the order of its text form) with the
    /// two 8-byte halves swapped: bytes 8..15 of the UUID first, then bytes 0..7. The official client writes the
    /// "least significant" half first and reads it back the same way.
    /// Example: UUID dbbd100f-a983-4ba9-bcc3-10a8559499f7 is sent as bc c3 10 a8 55 94 99 f7 db bd 10 0f a9 83 4b a9.
    /// </summary>
    internal static class MessageIdCodec
    {
        public const int Length = 16;

        /// <summary>Writes <paramref name="id"/> in wire order at <paramref name="offset"/>.</summary>
        public static void Write(Guid id, byte[] buffer, int offset)
        {
            if (buffer is null) throw new ArgumentNullException(nameof(buffer));
            if (offset < 0 || buffer.Length - offset < Length) throw new ArgumentOutOfRangeException(nameof(offset));
            var rfc = ToRfc4122Bytes(id);
            Buffer.BlockCopy(rfc, 8, buffer, offset, 8);
            Buffer.BlockCopy(rfc, 0, buffer, offset + 8, 8);
        }

        /// <summary>Reads a MessageId in wire order from <paramref name="offset"/>.</summary>
        public static Guid Read(byte[] buffer, int offset)
        {
            if (buffer is null) throw new ArgumentNullException(nameof(buffer));
            if (offset < 0 || buffer.Length - offset < Length) throw new ArgumentOutOfRangeException(nameof(offset));
            var rfc = new byte[Length];
            Buffer.BlockCopy(buffer, offset + 8, rfc, 0, 8);
            Buffer.BlockCopy(buffer, offset, rfc, 8, 8);
            return FromRfc4122Bytes(rfc);
        }

        /// <summary>
        /// The UUID's bytes in RFC 4122 (big-endian, text) order. <see cref="Guid.ToByteArray"/> stores the first three
        /// groups little-endian, so those 4 + 2 + 2 bytes are reversed here; the last 8 bytes are the same in both.
        /// </summary>
        public static byte[] ToRfc4122Bytes(Guid id)
        {
            var b = id.ToByteArray();
            Array.Reverse(b, 0, 4);
            Array.Reverse(b, 4, 2);
            Array.Reverse(b, 6, 2);
            return b;
        }

        /// <summary>The inverse of <see cref="ToRfc4122Bytes"/>.</summary>
        public static Guid FromRfc4122Bytes(byte[] rfc)
        {
            if (rfc is null) throw new ArgumentNullException(nameof(rfc));
            if (rfc.Length != Length) throw new ArgumentException("A UUID has 16 bytes.", nameof(rfc));
            var b = (byte[])rfc.Clone();
            Array.Reverse(b, 0, 4);
            Array.Reverse(b, 4, 2);
            Array.Reverse(b, 6, 2);
            return new Guid(b);
        }
    }
}
