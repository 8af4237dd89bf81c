using System;
using System.Buffers.Binary;
using System.Collections.Generic;

namespace BastionTools.Ssm
{
    /// <summary>
    /// smux v1 framing (github.com/xtaci/smux, as used by the SSM agent's port plugin in mux mode). In mux mode the
    /// Output payloads of each direction form one byte stream of these frames; frame and message boundaries are unrelated.
    /// </summary>
    internal static class SmuxCodec
    {
        public const byte Version1 = 1;
        public const int HeaderLength = 8;
        public const int MaxPayloadLength = ushort.MaxValue;

        /// <summary>The frame's bytes: header then payload.</summary>
        public static byte[] Encode(SmuxFrame frame)
        {
            var result = new byte[HeaderLength + frame.Payload.Length];
            WriteHeader(result, 0, frame.Command, frame.StreamId, frame.Payload.Length);
            Buffer.BlockCopy(frame.Payload, 0, result, HeaderLength, frame.Payload.Length);
            return result;
        }

        /// <summary>Several frames back to back.</summary>
        public static byte[] Encode(IEnumerable<SmuxFrame> frames)
        {
            if (frames is null) throw new ArgumentNullException(nameof(frames));
            var list = new List<SmuxFrame>(frames);
            int total = 0;
            foreach (var f in list) total = checked(total + HeaderLength + f.Payload.Length);
            var result = new byte[total];
            int offset = 0;
            foreach (var f in list)
            {
                WriteHeader(result, offset, f.Command, f.StreamId, f.Payload.Length);
                Buffer.BlockCopy(f.Payload, 0, result, offset + HeaderLength, f.Payload.Length);
                offset += HeaderLength + f.Payload.Length;
            }
            return result;
        }

        /// <summary>Writes an 8-byte v1 header at <paramref name="offset"/> (for callers that place the payload themselves).</summary>
        public static void WriteHeader(byte[] buffer, int offset, SmuxCommand command, uint streamId, int payloadLength)
        {
            if (buffer is null) throw new ArgumentNullException(nameof(buffer));
            if (offset < 0 || buffer.Length - offset < HeaderLength) throw new ArgumentOutOfRangeException(nameof(offset));
            if (payloadLength < 0 || payloadLength > MaxPayloadLength) throw new ArgumentOutOfRangeException(nameof(payloadLength));
            buffer[offset] = Version1;
            buffer[offset + 1] = (byte)command;
            BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(offset + 2), (ushort)payloadLength);
            BinaryPrimitives.WriteUInt32LittleEndian(buffer.AsSpan(offset + 4), streamId);
        }
    }

    /// <summary>
    /// Incremental smux v1 decoder: feed it the stream's bytes in chunks of any size (a frame may span many chunks,
    /// a chunk may hold many frames) and it returns each frame once complete. Input that is not smux v1 (another
    /// version, an unknown command, a payload on a frame that takes none) throws <see cref="SsmProtocolException"/>
    /// and leaves the decoder faulted, since the stream can no longer be framed.
    /// </summary>
    internal sealed class SmuxDecoder
    {
        private readonly byte[] _header = new byte[SmuxCodec.HeaderLength];
        private int _headerFilled;
        private SmuxCommand _command;
        private uint _streamId;
        private byte[]? _payload;
        private int _payloadFilled;
        private string? _fault;

        /// <summary>True between frames (no partial header or payload buffered).</summary>
        public bool IsAtFrameBoundary => _headerFilled == 0 && _payload is null;

        /// <summary>Bytes of the current, incomplete frame held so far (header included).</summary>
        public int BufferedByteCount => _headerFilled + _payloadFilled;

        /// <summary>Decodes a whole chunk.</summary>
        public IReadOnlyList<SmuxFrame> Feed(byte[] chunk)
        {
            if (chunk is null) throw new ArgumentNullException(nameof(chunk));
            return Feed(chunk, 0, chunk.Length);
        }

        /// <summary>Consumes <paramref name="count"/> bytes and returns the frames completed by them, in order.</summary>
        /// <exception cref="SsmProtocolException">The bytes are not smux v1; the decoder is faulted from then on.</exception>
        public IReadOnlyList<SmuxFrame> Feed(byte[] buffer, int offset, int count)
        {
            if (buffer is null) throw new ArgumentNullException(nameof(buffer));
            if (offset < 0 || count < 0 || buffer.Length - offset < count) throw new ArgumentOutOfRangeException(nameof(count));
            if (_fault != null) throw new SsmProtocolException("The smux stream is already broken: " + _fault);

            var frames = new List<SmuxFrame>();
            int end = offset + count;
            while (offset < end)
            {
                if (_headerFilled < SmuxCodec.HeaderLength)
                {
                    int take = Math.Min(SmuxCodec.HeaderLength - _headerFilled, end - offset);
                    Buffer.BlockCopy(buffer, offset, _header, _headerFilled, take);
                    _headerFilled += take;
                    offset += take;
                    if (_headerFilled < SmuxCodec.HeaderLength) break;

                    int length = ParseHeader();
                    if (length == 0)
                    {
                        frames.Add(new SmuxFrame(_command, _streamId));
                        _headerFilled = 0;
                        continue;
                    }
                    _payload = new byte[length];
                    _payloadFilled = 0;
                }

                var payload = _payload!;
                int copy = Math.Min(payload.Length - _payloadFilled, end - offset);
                Buffer.BlockCopy(buffer, offset, payload, _payloadFilled, copy);
                _payloadFilled += copy;
                offset += copy;
                if (_payloadFilled == payload.Length)
                {
                    frames.Add(new SmuxFrame(_command, _streamId, payload));
                    _payload = null;
                    _payloadFilled = 0;
                    _headerFilled = 0;
                }
            }
            return frames;
        }

        // Validates the buffered header, sets command and stream id, and returns the payload length.
        private int ParseHeader()
        {
            byte version = _header[0];
            byte command = _header[1];
            int length = BinaryPrimitives.ReadUInt16LittleEndian(_header.AsSpan(2));
            uint streamId = BinaryPrimitives.ReadUInt32LittleEndian(_header.AsSpan(4));

            if (version != SmuxCodec.Version1)
                Fail($"smux version {version} where 1 was expected (header {ToHex(_header)}).");
            if (command > (byte)SmuxCommand.Nop)
                Fail($"Unknown smux v1 command {command} (header {ToHex(_header)}).");
            // smux reads a payload only for PSH; a length on SYN/FIN/NOP would desynchronise a real peer.
            if (command != (byte)SmuxCommand.Psh && length != 0)
                Fail($"smux {(SmuxCommand)command} frame with a {length}-byte payload (header {ToHex(_header)}).");

            _command = (SmuxCommand)command;
            _streamId = streamId;
            return length;
        }

        private void Fail(string message)
        {
            _fault = message;
            throw new SsmProtocolException(message);
        }

        private static string ToHex(byte[] bytes) => BitConverter.ToString(bytes).Replace("-", "").ToLowerInvariant();
    }
}
