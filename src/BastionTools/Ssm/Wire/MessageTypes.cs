namespace BastionTools.Ssm
{
    /// <summary>Values of the 32-byte MessageType field of an agent message.</summary>
    internal static class MessageTypes
    {
        /// <summary>Stream data from the client to the agent.</summary>
        public const string InputStreamData = "input_stream_data";

        /// <summary>Stream data from the agent to the client.</summary>
        public const string OutputStreamData = "output_stream_data";

        /// <summary>Acknowledgement of one stream message (either direction).</summary>
        public const string Acknowledge = "acknowledge";

        /// <summary>Sent by the service when the session ends; the payload is a JSON <see cref="ChannelClosedPayload"/>.</summary>
        public const string ChannelClosed = "channel_closed";

        /// <summary>The service tells the client it may send stream messages again.</summary>
        public const string StartPublication = "start_publication";

        /// <summary>The service tells the client to stop sending stream messages (the agent side is not connected).</summary>
        public const string PausePublication = "pause_publication";
    }

    /// <summary>The PayloadType field of an agent message.</summary>
    internal enum PayloadType : uint
    {
        /// <summary>Not set: acknowledge messages carry 0 (the recorded official client and agent both send 0).</summary>
        None = 0,
        Output = 1,
        Error = 2,
        Size = 3,
        Parameter = 4,
        HandshakeRequest = 5,
        HandshakeResponse = 6,
        HandshakeComplete = 7,
        EncChallengeRequest = 8,
        EncChallengeResponse = 9,
        Flag = 10,
        StdErr = 11,
        ExitCode = 12,
    }

    /// <summary>The big-endian uint32 carried by a <see cref="PayloadType.Flag"/> message.</summary>
    internal enum PayloadTypeFlag : uint
    {
        /// <summary>Basic port mode: the local TCP connection closed; the agent drops its side and redials on the next data.</summary>
        DisconnectToPort = 1,

        /// <summary>The client ends the session (newer agents).</summary>
        TerminateSession = 2,

        /// <summary>Agent to client: the agent could not connect to the destination port.</summary>
        ConnectToPortError = 3,
    }

    /// <summary>
    /// Values of the 64-bit Flags field. Bit 0 is SYN (first message of a stream), bit 1 is FIN (last message);
    /// acknowledgements carry both bits. In the recordings the agent's stream message 0 carries SYN, the
    /// client's stream messages carry 0 and every acknowledge carries 3.
    /// </summary>
    internal static class MessageFlags
    {
        public const ulong Data = 0;
        public const ulong Syn = 1;
        public const ulong Fin = 2;
        public const ulong Ack = Syn | Fin;
    }
}
