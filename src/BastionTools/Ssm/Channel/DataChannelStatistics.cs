using System;
using System.Threading;

namespace BastionTools.Ssm
{
    /// <summary>Why a data channel ended.</summary>
    internal enum ChannelEnd
    {
        /// <summary>The service or agent closed the channel (channel_closed), e.g. the session was terminated.</summary>
        ClosedByService,

        /// <summary>This side closed it.</summary>
        ClosedByClient,

        /// <summary>The session timed out or was terminated while the connection was lost: the service no longer knows it.</summary>
        SessionExpired,

        /// <summary>The channel broke and could not be repaired (resume budget spent, agent stuck, hostile peer).</summary>
        Failed,
    }

    /// <summary>Why a data channel ended.</summary>
    internal sealed class DataChannelClosure
    {
        public DataChannelClosure(ChannelEnd end, string? output, Exception? error)
        {
            End = end;
            Output = output;
            Error = error;
        }

        public ChannelEnd End { get; }

        /// <summary>The service or agent closed the channel (channel_closed).</summary>
        public bool ByRemote => End == ChannelEnd.ClosedByService;

        /// <summary>The Output of channel_closed, shown to the user.</summary>
        public string? Output { get; }

        /// <summary>Set when the channel broke or the session expired.</summary>
        public Exception? Error { get; }
    }

    /// <summary>Whether the data channel has a working WebSocket.</summary>
    internal enum ChannelState
    {
        Connecting,
        Connected,
        Reconnecting,
        Closed,
    }

    /// <summary>Counters of a data channel, read by Get-BastionSession, the tests and the benchmarks.</summary>
    internal sealed class DataChannelStatistics
    {
        private long _messagesSent;
        private long _messagesReceived;
        private long _payloadBytesSent;
        private long _payloadBytesReceived;
        private long _retransmissions;
        private long _duplicatesReceived;
        private long _outOfOrderReceived;
        private long _ignoredBeyondWindow;
        private long _acknowledgementsDropped;
        private long _reconnects;
        private long _resumeAttempts;
        private long _pingsSent;
        private long _deadConnections;
        private long _pauses;
        private long _malformed;
        private long _reorderPeak;
        private long _unackedPeak;
        private long _sendWindow;
        private long _sendWindowPeak;
        private long _handledOffPool;

        public long MessagesSent => Interlocked.Read(ref _messagesSent);

        /// <summary>
        /// WebSocket messages from the service that the receive loop handled on a thread outside the thread pool: the
        /// socket engine's, when the socket runs its completions inline (<see cref="DataChannelOptions.InlineSocketCompletions"/>).
        /// </summary>
        public long MessagesHandledOffPool => Interlocked.Read(ref _handledOffPool);
        public long MessagesReceived => Interlocked.Read(ref _messagesReceived);
        public long PayloadBytesSent => Interlocked.Read(ref _payloadBytesSent);
        public long PayloadBytesReceived => Interlocked.Read(ref _payloadBytesReceived);
        public long Retransmissions => Interlocked.Read(ref _retransmissions);
        public long DuplicatesReceived => Interlocked.Read(ref _duplicatesReceived);
        public long OutOfOrderReceived => Interlocked.Read(ref _outOfOrderReceived);

        /// <summary>Stream messages too far ahead of the expected one: ignored and not acknowledged.</summary>
        public long IgnoredBeyondWindow => Interlocked.Read(ref _ignoredBeyondWindow);

        /// <summary>Acknowledgements dropped because too many were waiting for the socket.</summary>
        public long AcknowledgementsDropped => Interlocked.Read(ref _acknowledgementsDropped);

        /// <summary>Connections resumed after a loss.</summary>
        public long Reconnects => Interlocked.Read(ref _reconnects);

        /// <summary>ResumeSession + WebSocket attempts, successful or not.</summary>
        public long ResumeAttempts => Interlocked.Read(ref _resumeAttempts);

        public long PingsSent => Interlocked.Read(ref _pingsSent);

        /// <summary>Connections found silently dead (nothing received after a ping) and dropped.</summary>
        public long DeadConnectionsDetected => Interlocked.Read(ref _deadConnections);

        public long PausesReceived => Interlocked.Read(ref _pauses);

        /// <summary>Binary messages from the service that could not be decoded (or had a wrong digest) and were dropped.</summary>
        public long MalformedReceived => Interlocked.Read(ref _malformed);

        /// <summary>Most messages ever held in the reorder buffer at once.</summary>
        public long ReorderBufferPeak => Interlocked.Read(ref _reorderPeak);

        /// <summary>Most messages ever sent and unacknowledged at once.</summary>
        public long UnacknowledgedPeak => Interlocked.Read(ref _unackedPeak);

        /// <summary>The send window now (messages; see <see cref="DataChannelOptions.SendWindow"/>).</summary>
        public long SendWindow => Interlocked.Read(ref _sendWindow);

        /// <summary>The largest the send window has been.</summary>
        public long SendWindowPeak => Interlocked.Read(ref _sendWindowPeak);

        internal void Sent(int payload)
        {
            Interlocked.Increment(ref _messagesSent);
            Interlocked.Add(ref _payloadBytesSent, payload);
        }

        internal void Received(int payload)
        {
            Interlocked.Increment(ref _messagesReceived);
            Interlocked.Add(ref _payloadBytesReceived, payload);
        }

        internal void Retransmitted(int count = 1) => Interlocked.Add(ref _retransmissions, count);
        internal void Duplicate() => Interlocked.Increment(ref _duplicatesReceived);
        internal void OutOfOrder() => Interlocked.Increment(ref _outOfOrderReceived);
        internal void IgnoredAhead() => Interlocked.Increment(ref _ignoredBeyondWindow);
        internal void AcknowledgementDropped() => Interlocked.Increment(ref _acknowledgementsDropped);
        internal void Reconnected() => Interlocked.Increment(ref _reconnects);
        internal void ResumeAttempted() => Interlocked.Increment(ref _resumeAttempts);
        internal void PingSent() => Interlocked.Increment(ref _pingsSent);
        internal void DeadConnection() => Interlocked.Increment(ref _deadConnections);
        internal void Paused() => Interlocked.Increment(ref _pauses);
        internal void Malformed() => Interlocked.Increment(ref _malformed);
        internal void HandledOffPool() => Interlocked.Increment(ref _handledOffPool);

        internal void ReorderHeld(int count) => Max(ref _reorderPeak, count);
        internal void UnackedHeld(int count) => Max(ref _unackedPeak, count);

        internal void SendWindowIs(int size)
        {
            Interlocked.Exchange(ref _sendWindow, size);
            Max(ref _sendWindowPeak, size);
        }

        private static void Max(ref long field, long value)
        {
            var current = Interlocked.Read(ref field);
            while (value > current)
            {
                var seen = Interlocked.CompareExchange(ref field, value, current);
                if (seen == current) return;
                current = seen;
            }
        }
    }
}
