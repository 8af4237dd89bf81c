using System;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading;

namespace BastionTools.Sandbox
{
    /// <summary>Which direction a message fault applies to.</summary>
    public enum FaultDirection
    {
        Both,
        /// <summary>Messages the agent/MGS sends to the client, as they are sent.</summary>
        AgentToClient,
        /// <summary>Messages the client sends, as they are received (before the agent sees them).</summary>
        ClientToAgent,
    }

    /// <summary>
    /// Faults the sandbox's MGS WebSocket injects. Set globally (<see cref="SandboxAgent.Faults"/>), per session
    /// (<see cref="SandboxAgent.SetSessionFaults"/>) or over HTTP (POST /control/faults, /control/sessions/&lt;id&gt;/faults
    /// with this object as JSON, camelCase). Rates are probabilities 0..1 drawn per binary message from a per-session
    /// RNG seeded with <see cref="Seed"/> (reproducible) or randomly. channel_closed is never faulted.
    /// </summary>
    public sealed class SandboxFaultOptions
    {
        /// <summary>Probability a message is dropped.</summary>
        public double DropRate { get; set; }
        /// <summary>Probability a message is delivered twice.</summary>
        public double DuplicateRate { get; set; }
        /// <summary>Probability a message is held back and delivered after the next one (or after 200 ms when none follows).</summary>
        public double ReorderRate { get; set; }
        /// <summary>Which messages the three rates apply to.</summary>
        public FaultDirection Direction { get; set; } = FaultDirection.Both;
        /// <summary>Delay before the agent sends each acknowledge, in ms (0: at once).</summary>
        public int AckDelayMs { get; set; }
        /// <summary>Close each WebSocket with 1000 "Bye" (as the service does hourly) this many ms after it opened (0: never).</summary>
        public int ByeAfterMs { get; set; }
        /// <summary>Abort each WebSocket (no close frame) once this many bytes have crossed it in either direction (0: never).</summary>
        public long KillAfterBytes { get; set; }
        /// <summary>Seed for the fault RNG; null for a random seed.</summary>
        public int? Seed { get; set; }

        public bool IsMessageFaulting => DropRate > 0 || DuplicateRate > 0 || ReorderRate > 0;

        internal bool Applies(bool outbound) =>
            Direction == FaultDirection.Both || (outbound ? Direction == FaultDirection.AgentToClient : Direction == FaultDirection.ClientToAgent);

        public SandboxFaultOptions Clone() => (SandboxFaultOptions)MemberwiseClone();

        private static readonly JsonSerializerOptions JsonOptions = new()
        {
            PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
            PropertyNameCaseInsensitive = true,
            Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() },
        };

        public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

        /// <summary>Parses the JSON form (missing fields take their defaults).</summary>
        /// <exception cref="ArgumentException">Not valid fault options.</exception>
        public static SandboxFaultOptions FromJson(string json)
        {
            SandboxFaultOptions? options;
            try
            {
                options = JsonSerializer.Deserialize<SandboxFaultOptions>(string.IsNullOrWhiteSpace(json) ? "{}" : json, JsonOptions);
            }
            catch (JsonException ex)
            {
                throw new ArgumentException("Invalid fault options: " + ex.Message, nameof(json), ex);
            }
            if (options == null) throw new ArgumentException("Fault options are null.", nameof(json));
            options.Validate();
            return options;
        }

        public void Validate()
        {
            foreach (var rate in new[] { DropRate, DuplicateRate, ReorderRate })
            {
                if (double.IsNaN(rate) || rate < 0 || rate > 1) throw new ArgumentException("Fault rates are between 0 and 1.");
            }
            if (AckDelayMs < 0 || ByeAfterMs < 0 || KillAfterBytes < 0) throw new ArgumentException("Delays and byte counts are not negative.");
        }
    }

    /// <summary>What happened on one session's data channel (all connections together). Thread-safe.</summary>
    public sealed class SandboxChannelCounters
    {
        internal long _connections, _messagesSent, _messagesReceived, _dataSent, _dataReceived, _acksSent, _acksReceived,
            _dropped, _duplicated, _reordered, _retransmitted, _duplicatesReceived, _outOfOrderReceived, _digestFailures, _decryptionFailures,
            _bytesSent, _bytesReceived, _kills, _byes, _unbuffered, _streamBytesCreated, _queuedBytes, _queuedBytesPeak,
            _sendWaiters, _sendWaits, _discardedAfterStall, _maxResendBurst, _smuxBufferedBytes, _smuxReceiveStalls, _smuxReceiveWaiting,
            _injected, _smuxNopsSent, _smuxNopsReceived, _smuxKeepAliveChecks, _smuxKeepAliveCloses, _idleTimeouts, _destinationReadsEnded, _inputNotReady;

        /// <summary>WebSocket connections accepted with a valid token.</summary>
        public long Connections => Interlocked.Read(ref _connections);
        /// <summary>Binary messages put on the wire by the sandbox (retransmissions and duplicates included).</summary>
        public long MessagesSent => Interlocked.Read(ref _messagesSent);
        /// <summary>Binary messages received from the client (before fault injection).</summary>
        public long MessagesReceived => Interlocked.Read(ref _messagesReceived);
        /// <summary>New output_stream_data messages created by the agent (sequence numbers used).</summary>
        public long StreamMessagesCreated => Interlocked.Read(ref _dataSent);
        /// <summary>input_stream_data messages delivered in order to the plugin.</summary>
        public long StreamMessagesDelivered => Interlocked.Read(ref _dataReceived);
        public long AcksSent => Interlocked.Read(ref _acksSent);
        public long AcksReceived => Interlocked.Read(ref _acksReceived);
        /// <summary>Messages dropped by fault injection (both directions).</summary>
        private readonly System.Collections.Generic.List<long> _droppedInput = new System.Collections.Generic.List<long>();

        internal void RecordDroppedInput(long sequenceNumber)
        {
            lock (_droppedInput) _droppedInput.Add(sequenceNumber);
        }

        /// <summary>Sequence numbers of the client's input_stream_data messages the faults dropped (each time one was dropped).</summary>
        public long[] DroppedInputSequenceNumbers
        {
            get
            {
                lock (_droppedInput) return _droppedInput.ToArray();
            }
        }

        public long Dropped => Interlocked.Read(ref _dropped);
        /// <summary>Messages duplicated by fault injection (both directions).</summary>
        public long Duplicated => Interlocked.Read(ref _duplicated);
        /// <summary>Messages held back and delivered late by fault injection (both directions).</summary>
        public long Reordered => Interlocked.Read(ref _reordered);
        /// <summary>output_stream_data messages the agent sent again after its retransmission timeout.</summary>
        public long Retransmitted => Interlocked.Read(ref _retransmitted);
        /// <summary>input_stream_data already delivered that arrived again (acknowledged again, dropped).</summary>
        public long DuplicatesReceived => Interlocked.Read(ref _duplicatesReceived);
        /// <summary>input_stream_data that arrived ahead of the expected sequence number (acknowledged, buffered).</summary>
        public long OutOfOrderReceived => Interlocked.Read(ref _outOfOrderReceived);
        /// <summary>Received messages whose SHA-256 digest did not match (discarded without acknowledgement).</summary>
        public long DigestFailures => Interlocked.Read(ref _digestFailures);
        /// <summary>Client payloads (Output, the challenge response) that did not decrypt with the session's key.</summary>
        public long DecryptionFailures => Interlocked.Read(ref _decryptionFailures);
        public long BytesSent => Interlocked.Read(ref _bytesSent);
        public long BytesReceived => Interlocked.Read(ref _bytesReceived);
        /// <summary>Connections aborted (KillAfterBytes or a kill request).</summary>
        public long Kills => Interlocked.Read(ref _kills);
        /// <summary>Connections closed with 1000 "Bye" (ByeAfterMs or a bye request).</summary>
        public long Byes => Interlocked.Read(ref _byes);
        /// <summary>
        /// Stream messages sent (or, without a connection, not sent) but not kept because the unacknowledged list was
        /// full (OutgoingMessageBufferCapacity): they are never resent.
        /// </summary>
        public long Unbuffered => Interlocked.Read(ref _unbuffered);
        /// <summary>Payload bytes of the stream messages the agent created.</summary>
        public long StreamBytesCreated => Interlocked.Read(ref _streamBytesCreated);
        /// <summary>
        /// Basic port sessions: destination connections the output pump has stopped reading (closed by DisconnectToPort or
        /// by the destination); their last output was created before this counts them.
        /// </summary>
        public long DestinationReadsEnded => Interlocked.Read(ref _destinationReadsEnded);
        /// <summary>Basic port sessions: input refused because the first destination connection was not dialled yet (not acknowledged).</summary>
        public long InputNotReady => Interlocked.Read(ref _inputNotReady);
        /// <summary>Bytes of frames queued for the WebSocket and not yet written (now; bounded by ConnectionQueueBytes plus one frame).</summary>
        public long QueuedBytes => Interlocked.Read(ref _queuedBytes);
        /// <summary>The largest <see cref="QueuedBytes"/> seen.</summary>
        public long QueuedBytesPeak => Interlocked.Read(ref _queuedBytesPeak);
        /// <summary>Producers (output pumps, acknowledgements, resends) waiting for room in the WebSocket queue now.</summary>
        public long SendWaiters => Interlocked.Read(ref _sendWaiters);
        /// <summary>How often a producer had to wait for room.</summary>
        public long SendWaits => Interlocked.Read(ref _sendWaits);
        /// <summary>Frames not written because the connection was stalled by an endless-fragments injection.</summary>
        public long DiscardedAfterStall => Interlocked.Read(ref _discardedAfterStall);
        /// <summary>The most messages the resend scheduler sent in one round (1 for the agent's pace).</summary>
        public long MaxResendBurst => Interlocked.Read(ref _maxResendBurst);
        /// <summary>Mux: bytes delivered to smux streams and not yet taken by their destination writers (the smux bucket in use).</summary>
        public long SmuxBufferedBytes => Interlocked.Read(ref _smuxBufferedBytes);
        /// <summary>Mux: how often the smux receive loop stopped because its bucket (MaxReceiveBuffer) was used up.</summary>
        public long SmuxReceiveStalls => Interlocked.Read(ref _smuxReceiveStalls);
        /// <summary>Mux: 1 while the smux receive loop waits for its bucket (the channel reads and acknowledges nothing then).</summary>
        public long SmuxReceiveWaiting => Interlocked.Read(ref _smuxReceiveWaiting);
        /// <summary>Messages (or fragments) sent by hostile injections.</summary>
        public long Injected => Interlocked.Read(ref _injected);
        /// <summary>Mux with smux keepalive: NOP frames the agent's keepalive wrote.</summary>
        public long SmuxNopsSent => Interlocked.Read(ref _smuxNopsSent);
        /// <summary>Mux: NOP frames received from the client.</summary>
        public long SmuxNopsReceived => Interlocked.Read(ref _smuxNopsReceived);
        /// <summary>Mux with smux keepalive: timeout checks (one per KeepAliveTimeout) that found a frame from the client and kept the session.</summary>
        public long SmuxKeepAliveChecks => Interlocked.Read(ref _smuxKeepAliveChecks);
        /// <summary>Mux with smux keepalive: 1 once the agent closed the mux session because nothing had arrived for KeepAliveTimeout.</summary>
        public long SmuxKeepAliveCloses => Interlocked.Read(ref _smuxKeepAliveCloses);
        /// <summary>1 once the idle session timeout ended the session.</summary>
        public long IdleTimeouts => Interlocked.Read(ref _idleTimeouts);

        internal void ObserveResendBurst(long count)
        {
            long max;
            while (count > (max = Interlocked.Read(ref _maxResendBurst)))
            {
                if (Interlocked.CompareExchange(ref _maxResendBurst, count, max) == max) return;
            }
        }

        public JsonObject ToJson() => new()
        {
            ["connections"] = Connections,
            ["messagesSent"] = MessagesSent,
            ["messagesReceived"] = MessagesReceived,
            ["streamMessagesCreated"] = StreamMessagesCreated,
            ["streamMessagesDelivered"] = StreamMessagesDelivered,
            ["acksSent"] = AcksSent,
            ["acksReceived"] = AcksReceived,
            ["dropped"] = Dropped,
            ["duplicated"] = Duplicated,
            ["reordered"] = Reordered,
            ["retransmitted"] = Retransmitted,
            ["duplicatesReceived"] = DuplicatesReceived,
            ["outOfOrderReceived"] = OutOfOrderReceived,
            ["digestFailures"] = DigestFailures,
            ["decryptionFailures"] = DecryptionFailures,
            ["bytesSent"] = BytesSent,
            ["bytesReceived"] = BytesReceived,
            ["kills"] = Kills,
            ["byes"] = Byes,
            ["unbuffered"] = Unbuffered,
            ["streamBytesCreated"] = StreamBytesCreated,
            ["destinationReadsEnded"] = DestinationReadsEnded,
            ["inputNotReady"] = InputNotReady,
            ["queuedBytes"] = QueuedBytes,
            ["queuedBytesPeak"] = QueuedBytesPeak,
            ["sendWaiters"] = SendWaiters,
            ["sendWaits"] = SendWaits,
            ["discardedAfterStall"] = DiscardedAfterStall,
            ["maxResendBurst"] = MaxResendBurst,
            ["smuxBufferedBytes"] = SmuxBufferedBytes,
            ["smuxReceiveStalls"] = SmuxReceiveStalls,
            ["smuxReceiveWaiting"] = SmuxReceiveWaiting,
            ["injected"] = Injected,
            ["smuxNopsSent"] = SmuxNopsSent,
            ["smuxNopsReceived"] = SmuxNopsReceived,
            ["smuxKeepAliveChecks"] = SmuxKeepAliveChecks,
            ["smuxKeepAliveCloses"] = SmuxKeepAliveCloses,
            ["idleTimeouts"] = IdleTimeouts,
        };
    }
}
