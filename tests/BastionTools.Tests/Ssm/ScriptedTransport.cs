using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;
using System.Threading.Channels;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// An in-memory transport for the reliable channel's unit tests: the test plays the service, feeding messages in and
    /// reading what the channel wrote, with control over pings, blocked writes and pending input. (The end-to-end tests
    /// use the real WebSocket and the sandbox agent; this isolates the channel's own rules.)
    /// </summary>
    internal sealed class ScriptedTransport : IMessageTransport
    {
        private readonly Channel<TransportMessage> _inbound = Channel.CreateUnbounded<TransportMessage>();
        private readonly CancellationTokenSource _aborted = new();
        private long _lastReceived = Stopwatch.GetTimestamp();
        private TaskCompletionSource<bool> _writesOpen = Completed();

        public ScriptedTransport(int number) => Number = number;

        public int Number { get; }

        /// <summary>Every binary message written, decoded, in order.</summary>
        public ConcurrentQueue<AgentMessage> Written { get; } = new();

        public ConcurrentQueue<string> TextWritten { get; } = new();

        /// <summary>How many binary messages each write (each call of SendBinaryAsync) carried, in order.</summary>
        public ConcurrentQueue<int> WriteSizes { get; } = new();

        public int Pings;
        public bool AnswerPings { get; set; } = true;
        public bool PendingInput { get; set; }
        public bool IsAborted => _aborted.IsCancellationRequested;

        /// <summary>A receive ended by <see cref="Abort"/> throws only once this completes (completed unless a test replaces it).</summary>
        public TaskCompletionSource<bool> HoldAbortedReceive { get; set; } = Completed();

        public event Action<AgentMessage>? OnWritten;

        private static TaskCompletionSource<bool> Completed()
        {
            var t = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            t.TrySetResult(true);
            return t;
        }

        /// <summary>Writes block (as on a socket whose peer stopped reading) until <see cref="UnblockWrites"/>.</summary>
        public void BlockWrites() => Interlocked.Exchange(ref _writesOpen, new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));

        public void UnblockWrites() => Volatile.Read(ref _writesOpen).TrySetResult(true);

        public void Deliver(AgentMessage message) => DeliverRaw(AgentMessageCodec.Encode(message));

        public void DeliverRaw(byte[] bytes) => _inbound.Writer.TryWrite(new TransportMessage(TransportMessageKind.Binary, new ArraySegment<byte>(bytes)));

        public void DeliverClose(int status, string description) =>
            _inbound.Writer.TryWrite(new TransportMessage(TransportMessageKind.Close, default, status, description));

        public void Fail(Exception error) => _inbound.Writer.TryComplete(error);

        public async Task<TransportMessage> ReceiveAsync(CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _aborted.Token);
            try
            {
                var m = await _inbound.Reader.ReadAsync(linked.Token).ConfigureAwait(false);
                Interlocked.Exchange(ref _lastReceived, Stopwatch.GetTimestamp());
                return m;
            }
            catch (OperationCanceledException) when (_aborted.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                // A socket whose abort the receive loop sees only later (a busy machine).
                await HoldAbortedReceive.Task.ConfigureAwait(false);
                throw new IOException("aborted");
            }
            catch (ChannelClosedException ex)
            {
                throw ex.InnerException ?? new IOException("closed");
            }
        }

        public async Task SendBinaryAsync(IReadOnlyList<ArraySegment<byte>> messages, CancellationToken cancellationToken)
        {
            if (IsAborted) throw new IOException("aborted");
            var gate = Volatile.Read(ref _writesOpen).Task;
            if (!gate.IsCompleted)
            {
                var aborted = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                using (_aborted.Token.Register(() => aborted.TrySetResult(true)))
                using (cancellationToken.Register(() => aborted.TrySetResult(true)))
                {
                    await Task.WhenAny(gate, aborted.Task).ConfigureAwait(false);
                }
                if (IsAborted) throw new IOException("aborted");
                cancellationToken.ThrowIfCancellationRequested();
            }
            WriteSizes.Enqueue(messages.Count);
            foreach (var segment in messages)
            {
                var m = AgentMessageCodec.Decode(segment);
                Written.Enqueue(m);
                OnWritten?.Invoke(m);
            }
        }

        public Task SendTextAsync(string text, CancellationToken cancellationToken)
        {
            if (IsAborted) throw new IOException("aborted");
            TextWritten.Enqueue(text);
            return Task.CompletedTask;
        }

        public Task PingAsync(CancellationToken cancellationToken)
        {
            if (IsAborted) throw new IOException("aborted");
            Interlocked.Increment(ref Pings);
            if (AnswerPings) Interlocked.Exchange(ref _lastReceived, Stopwatch.GetTimestamp());
            return Task.CompletedTask;
        }

        public long LastReceivedTimestamp => Interlocked.Read(ref _lastReceived);

        public bool HasPendingInput => PendingInput;
        /// <summary>As a WebSocket whose read buffer holds more whole messages: whatever was delivered and not yet received.</summary>
        public bool HasBufferedMessage => _inbound.Reader.Count > 0;

        public Task CloseAsync(int status, string description, CancellationToken cancellationToken)
        {
            Abort();
            return Task.CompletedTask;
        }

        public void Abort() => _aborted.Cancel();

        public void Dispose() => Abort();
    }

    /// <summary>Plays the service side for a <see cref="DataChannel"/>: transports it opens, resumes it answers.</summary>
    internal sealed class ScriptedService
    {
        private int _count;

        public ConcurrentQueue<ScriptedTransport> Transports { get; } = new();

        public BlockingCollection<ScriptedTransport> Opened { get; } = new();

        /// <summary>Set by the test: what ResumeSession does (default: a new endpoint).</summary>
        public Func<CancellationToken, Task<StreamEndpoint?>> Resume { get; set; }

        public int ResumeCalls;

        /// <summary>Messages each new transport holds before the channel's first receive: a burst read at once.</summary>
        public List<AgentMessage> Preload { get; } = new();

        public ScriptedService()
        {
            Resume = _ => Task.FromResult<StreamEndpoint?>(Endpoint());
        }

        public static StreamEndpoint Endpoint() => new("s-1", new Uri("wss://ssmmessages.example.invalid/v1/data-channel/s-1"), "token");

        public Task<IMessageTransport> OpenAsync(Uri url, CancellationToken cancellationToken)
        {
            var t = new ScriptedTransport(Interlocked.Increment(ref _count));
            foreach (var m in Preload) t.Deliver(m);
            Transports.Enqueue(t);
            Opened.Add(t);
            return Task.FromResult<IMessageTransport>(t);
        }

        public Task<StreamEndpoint?> ResumeAsync(CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref ResumeCalls);
            return Resume(cancellationToken);
        }

        public ScriptedTransport Next(TimeSpan? timeout = null)
        {
            if (!Opened.TryTake(out var t, timeout ?? TimeSpan.FromSeconds(30))) throw new TimeoutException("no transport was opened");
            return t;
        }

        public DataChannel NewChannel(DataChannelOptions options, Action<AgentMessage>? onMessage = null, List<string>? log = null, Action? onRunDelivered = null,
            Action<byte[], int, int>? onOutputInPlace = null)
        {
            options.TransportFactory = OpenAsync;
            return new DataChannel(Endpoint(), options, onMessage ?? (_ => { }), ResumeAsync, line =>
            {
                if (log != null) lock (log) log.Add(line);
            }, onRunDelivered, onOutputInPlace);
        }
    }
}
