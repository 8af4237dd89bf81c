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
    /// Receives what <see cref="SmuxDecoder.Feed(byte[], int, int, ISmuxFrameSink)"/> decodes, in stream order. The bytes
    /// handed over are valid only during the call unless the caller of Feed says otherwise.
    /// </summary>
    internal interface ISmuxFrameSink
    {
        /// <summary>A whole frame without payload: SYN, FIN, NOP, or a PSH of length 0.</summary>
        void OnFrame(SmuxCommand command, uint streamId);

        /// <summary>
        /// A piece of a PSH frame's payload (count &gt; 0): the whole payload when the frame lies within one chunk,
        /// otherwise the part each chunk holds, in order. <paramref name="endOfFrame"/> marks the frame's last piece.
        /// </summary>
        void OnData(uint streamId, byte[] buffer, int offset, int count, bool endOfFrame);
    }

    /// <summary>
    /// Incremental smux v1 decoder: feed it the stream's bytes in chunks of any size (a frame may span many chunks,
    /// a chunk may hold many frames). Input that is not smux v1 (another version, an unknown command, a payload on a
    /// frame that takes none) throws <see cref="SsmProtocolException"/> and leaves the decoder faulted, since the stream
    /// can no longer be framed.
    /// </summary>
    internal sealed class SmuxDecoder
    {
        private readonly byte[] _header = new byte[SmuxCodec.HeaderLength];
        private int _headerFilled;
        private SmuxCommand _command;
        private uint _streamId;
        private int _payloadLength;
        private int _payloadFilled;
        private bool _inPayload;
        private string? _fault;

        /// <summary>True between frames (no partial header or payload buffered).</summary>
        public bool IsAtFrameBoundary => _headerFilled == 0 && !_inPayload;

        /// <summary>Bytes of the current, incomplete frame consumed so far (header included).</summary>
        public int BufferedByteCount => _inPayload ? SmuxCodec.HeaderLength + _payloadFilled : _headerFilled;

        /// <summary>Decodes a whole chunk.</summary>
        public IReadOnlyList<SmuxFrame> Feed(byte[] chunk)
        {
            if (chunk is null) throw new ArgumentNullException(nameof(chunk));
            return Feed(chunk, 0, chunk.Length);
        }

        /// <summary>
        /// Consumes <paramref name="count"/> bytes and returns the frames completed by them, in order, each with a
        /// payload of its own (a frame that spans chunks is kept until complete).
        /// </summary>
        /// <exception cref="SsmProtocolException">The bytes are not smux v1; the decoder is faulted from then on.</exception>
        public IReadOnlyList<SmuxFrame> Feed(byte[] buffer, int offset, int count)
        {
            var collector = _collector ??= new FrameCollector();
            collector.Frames = new List<SmuxFrame>();
            Feed(buffer, offset, count, collector);
            return collector.Frames;
        }

        private FrameCollector? _collector;

        /// <summary>
        /// Consumes <paramref name="count"/> bytes and hands each frame to <paramref name="sink"/> as it is decoded,
        /// without copying: a PSH payload is handed over as the pieces of <paramref name="buffer"/> that hold it. Frames
        /// decoded before a protocol error are handed over before the exception.
        /// </summary>
        /// <exception cref="SsmProtocolException">The bytes are not smux v1; the decoder is faulted from then on.</exception>
        public void Feed(byte[] buffer, int offset, int count, ISmuxFrameSink sink)
        {
            if (buffer is null) throw new ArgumentNullException(nameof(buffer));
            if (sink is null) throw new ArgumentNullException(nameof(sink));
            if (offset < 0 || count < 0 || buffer.Length - offset < count) throw new ArgumentOutOfRangeException(nameof(count));
            if (_fault != null) throw new SsmProtocolException("The smux stream is already broken: " + _fault);

            int end = offset + count;
            while (offset < end)
            {
                if (!_inPayload)
                {
                    int take = Math.Min(SmuxCodec.HeaderLength - _headerFilled, end - offset);
                    Buffer.BlockCopy(buffer, offset, _header, _headerFilled, take);
                    _headerFilled += take;
                    offset += take;
                    if (_headerFilled < SmuxCodec.HeaderLength) break;

                    int length = ParseHeader();
                    _headerFilled = 0;
                    if (length == 0)
                    {
                        sink.OnFrame(_command, _streamId);
                        continue;
                    }
                    _inPayload = true;
                    _payloadLength = length;
                    _payloadFilled = 0;
                }

                int piece = Math.Min(_payloadLength - _payloadFilled, end - offset);
                _payloadFilled += piece;
                bool last = _payloadFilled == _payloadLength;
                if (last)
                {
                    // The state is between frames before the sink runs: an exception there leaves the decoder usable.
                    _inPayload = false;
                    _payloadFilled = 0;
                }
                sink.OnData(_streamId, buffer, offset, piece, last);
                offset += piece;
            }
        }

        /// <summary>Joins the pieces of each frame into a payload of its own, for the list-returning Feed.</summary>
        private sealed class FrameCollector : ISmuxFrameSink
        {
            public List<SmuxFrame> Frames = new();
            private byte[]? _scratch;
            private int _filled;

            public void OnFrame(SmuxCommand command, uint streamId) => Frames.Add(new SmuxFrame(command, streamId));

            public void OnData(uint streamId, byte[] buffer, int offset, int count, bool endOfFrame)
            {
                if (_filled == 0 && endOfFrame)
                {
                    Frames.Add(new SmuxFrame(SmuxCommand.Psh, streamId, buffer.AsSpan(offset, count).ToArray()));
                    return;
                }
                // A frame that spans chunks: its pieces are joined in one buffer kept for the next such frame.
                _scratch ??= new byte[SmuxCodec.MaxPayloadLength];
                Buffer.BlockCopy(buffer, offset, _scratch, _filled, count);
                _filled += count;
                if (!endOfFrame) return;
                Frames.Add(new SmuxFrame(SmuxCommand.Psh, streamId, _scratch.AsSpan(0, _filled).ToArray()));
                _filled = 0;
            }
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
