using System;

namespace BastionTools.Ssm
{
    /// <summary>smux commands. Version 1 knows SYN, FIN, PSH and NOP; UPD (window update) exists only in version 2.</summary>
    internal enum SmuxCommand : byte
    {
        /// <summary>Open a stream (no payload).</summary>
        Syn = 0,

        /// <summary>Close a stream for writing (no payload).</summary>
        Fin = 1,

        /// <summary>Stream data.</summary>
        Psh = 2,

        /// <summary>Keepalive (no payload).</summary>
        Nop = 3,
    }

    /// <summary>One smux v1 frame: header <c>ver(1) | cmd(1) | length(2, LE) | streamId(4, LE)</c>, then length bytes.</summary>
    internal readonly struct SmuxFrame
    {
        private static readonly byte[] NoPayload = new byte[0];

        private readonly byte[]? _payload;

        public SmuxFrame(SmuxCommand command, uint streamId, byte[]? payload = null)
        {
            if ((byte)command > (byte)SmuxCommand.Nop)
                throw new ArgumentOutOfRangeException(nameof(command), command, "Unknown smux v1 command.");
            payload ??= NoPayload;
            if (payload.Length > SmuxCodec.MaxPayloadLength)
                throw new ArgumentException($"An smux frame carries at most {SmuxCodec.MaxPayloadLength} bytes.", nameof(payload));
            if (command != SmuxCommand.Psh && payload.Length != 0)
                throw new ArgumentException($"An smux {command} frame has no payload.", nameof(payload));
            Command = command;
            StreamId = streamId;
            _payload = payload;
        }

        public SmuxCommand Command { get; }

        public uint StreamId { get; }

        /// <summary>The frame's data; empty for everything but PSH (and for default(SmuxFrame)).</summary>
        public byte[] Payload => _payload ?? NoPayload;

        public override string ToString() => $"{Command} stream={StreamId} len={Payload.Length}";
    }
}
