using System;
using System.Buffers;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Channels;
using System.Threading.Tasks;

namespace BastionTools.Sandbox
{
    /// <summary>One direction of a relayed TCP connection (<see cref="FaultProxy.HalfOpen"/>).</summary>
    public enum ProxyDirection
    {
        /// <summary>Bytes the client sends to the target.</summary>
        ClientToServer,
        /// <summary>Bytes the target sends back to the client.</summary>
        ServerToClient,
    }

    /// <summary>
    /// A TCP relay on 127.0.0.1 that forwards every accepted connection to a target and breaks the network the way
    /// laptops and Wi-Fi do, on demand and at any moment:
    /// <list type="bullet">
    /// <item><see cref="StartBlackout"/>/<see cref="EndBlackout"/>/<see cref="BlackoutAsync"/>: a silent outage. Every
    /// connection relaying at its start goes dead for good (bytes from either side are read and discarded; no FIN, no RST
    /// is passed on, also after the blackout), as after a Wi-Fi switch or VPN reconnect. Connections accepted during the
    /// blackout are held (no upstream connection, nothing relayed) and connect upstream when it ends, like a SYN that is
    /// retransmitted successfully; what the client sent meanwhile is kept (up to <see cref="MaxHeldBytes"/>, then the
    /// proxy stops reading until the connection is upstream, so nothing is lost) and delivered first.</item>
    /// <item><see cref="ResetAll"/>: every current connection is aborted with an RST on both sides.</item>
    /// <item><see cref="HalfOpen"/>/<see cref="Heal"/>: one direction is silently dropped on the existing connections and
    /// on those accepted until <see cref="Heal"/> (which does not revive the ones already half-open).</item>
    /// </list>
    /// <item><see cref="Latency"/>: a one-way delay in each direction (a round trip of twice that), as a link to another
    /// continent: each chunk read is written that long after it was read, in order, while the next ones are read
    /// meanwhile (the link carries <see cref="DelayLineChunks"/> chunks of up to 64 KiB in flight per direction, then the
    /// proxy stops reading until the oldest is delivered). A FIN is delayed the same way, after the bytes before it.</item>
    /// Otherwise it relays transparently: TCP_NODELAY on both sides, 64 KiB buffers, a FIN is passed on as a half-close
    /// (both sockets are closed when both directions ended), a reset on one side resets the other.
    /// A silenced connection (blackout or half-open) is kept open, with nothing told to either peer, until
    /// <see cref="ResetAll"/> or Dispose. Bytes the proxy had already read when a fault began may still be delivered
    /// (at most one buffer per direction: packets already on the wire). Thread-safe.
    /// </summary>
    public sealed class FaultProxy : IAsyncDisposable, IDisposable
    {
        /// <summary>Size of each relay buffer (one per direction and connection).</summary>
        public const int BufferSize = 64 * 1024;
        /// <summary>How much a held connection's client may send before the proxy stops reading from it.</summary>
        public const int MaxHeldBytes = 1 << 20;
        /// <summary>Chunks in flight on a delayed direction of one connection (<see cref="Latency"/>), at most.</summary>
        public const int DelayLineChunks = 256;

        private const int SilencedClientToServer = 1;
        private const int SilencedServerToClient = 2;
        private const int Blackholed = 4;

        private readonly object _gate = new();
        private readonly ConcurrentDictionary<Connection, byte> _connections = new();
        private readonly ConcurrentDictionary<Task, byte> _tasks = new();
        private readonly CancellationTokenSource _stopping = new();
        private readonly DelayClock _clock = new();
        private readonly Socket _listener;
        private readonly Action<string>? _log;
        private readonly Task _acceptLoop;
        // Guarded by _gate.
        private bool _blackout;
        private long _blackoutGeneration;
        private TaskCompletionSource _blackoutEnded = NewSignal(completed: true);
        private int _halfOpenMode;
        private bool _disposed;
        private int _disposeStarted;
        private long _accepted;
        private long _bytesClientToServer;
        private long _bytesServerToClient;
        private long _blackholed;
        private long _latencyTicks;
        private long _delayedChunks;
        private long _lateTicksTotal;
        private long _lateTicksMax;

        /// <summary>Starts listening on 127.0.0.1:<paramref name="port"/> (0: a free port) and relaying to <paramref name="target"/>.</summary>
        /// <exception cref="SocketException">The port cannot be bound.</exception>
        public FaultProxy(IPEndPoint target, int port = 0, Action<string>? log = null)
        {
            Target = target ?? throw new ArgumentNullException(nameof(target));
            if (port < 0 || port > 65535) throw new ArgumentOutOfRangeException(nameof(port), "Port must be 0..65535.");
            _log = log;
            var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                listener.Bind(new IPEndPoint(IPAddress.Loopback, port));
                listener.Listen(512);
            }
            catch (Exception)
            {
                listener.Dispose();
                throw;
            }
            _listener = listener;
            EndPoint = (IPEndPoint)listener.LocalEndPoint!;
            _acceptLoop = Task.Run(AcceptLoopAsync);
        }

        /// <summary>Where connections are relayed to.</summary>
        public IPEndPoint Target { get; }
        /// <summary>The proxy's own address (127.0.0.1 and <see cref="Port"/>): give this to clients.</summary>
        public IPEndPoint EndPoint { get; }
        public int Port => EndPoint.Port;

        /// <summary>Connections the proxy holds open: relaying, held by a blackout, or silenced and kept.</summary>
        public int ActiveConnections => _connections.Count;
        /// <summary>Connections accepted so far.</summary>
        public long Accepted => Interlocked.Read(ref _accepted);
        /// <summary>Bytes written to the target so far.</summary>
        public long BytesClientToServer => Interlocked.Read(ref _bytesClientToServer);
        /// <summary>Bytes written to clients so far.</summary>
        public long BytesServerToClient => Interlocked.Read(ref _bytesServerToClient);
        /// <summary>Connections blackouts have silenced so far.</summary>
        public long BlackholedConnections => Interlocked.Read(ref _blackholed);
        /// <summary>Client bytes kept by connections not yet upstream (a blackout holds them), to be delivered once they are.</summary>
        public long HeldBytes => _connections.Keys.Sum(c =>
        {
            lock (c.QueueLock) return (long)c.HeldBytes;
        });

        /// <summary>
        /// One-way delay added in each direction of every connection (zero: none), from the next chunk read on. Changing it
        /// never reorders bytes: a chunk is written after the one before it.
        /// </summary>
        public TimeSpan Latency
        {
            get => TimeSpan.FromTicks(Interlocked.Read(ref _latencyTicks));
            set
            {
                if (value < TimeSpan.Zero || value > TimeSpan.FromSeconds(10)) throw new ArgumentOutOfRangeException(nameof(value), "The latency is 0 to 10 seconds.");
                Interlocked.Exchange(ref _latencyTicks, value.Ticks);
            }
        }

        /// <summary>Chunks written through a delay line so far.</summary>
        public long DelayedChunks => Interlocked.Read(ref _delayedChunks);

        /// <summary>
        /// How much later than due the delayed chunks were written, on average and at most (timer granularity and the
        /// machine's load): what the link added beyond its latency.
        /// </summary>
        public (TimeSpan Average, TimeSpan Max) DelayLateness
        {
            get
            {
                var n = Interlocked.Read(ref _delayedChunks);
                var total = Interlocked.Read(ref _lateTicksTotal);
                var max = Interlocked.Read(ref _lateTicksMax);
                return (n == 0 ? TimeSpan.Zero : StopwatchSpan(total / (double)n), StopwatchSpan(max));
            }
        }

        private static TimeSpan StopwatchSpan(double ticks) => TimeSpan.FromSeconds(ticks / Stopwatch.Frequency);

        public bool IsBlackout
        {
            get
            {
                lock (_gate) return _blackout;
            }
        }

        /// <summary>Whether connections accepted now get <paramref name="direction"/> silenced (<see cref="HalfOpen"/> until <see cref="Heal"/>).</summary>
        public bool IsHalfOpen(ProxyDirection direction)
        {
            lock (_gate) return (_halfOpenMode & Bit(direction)) != 0;
        }

        /// <summary>Starts a silent outage (no-op while one lasts): every relaying connection goes dead for good; new ones are held.</summary>
        public void StartBlackout() => StartBlackoutCore();

        /// <summary>Ends the outage (no-op when none): held connections connect upstream, new ones relay normally; the dead stay dead.</summary>
        public void EndBlackout() => EndBlackoutCore(null);

        /// <summary>
        /// A blackout of <paramref name="duration"/>: starts it at once (before the first await; a blackout already on is
        /// joined) and ends it after the duration, unless it was ended (and perhaps another started) meanwhile.
        /// Completes early when the proxy is disposed.
        /// </summary>
        public async Task BlackoutAsync(TimeSpan duration)
        {
            if (duration < TimeSpan.Zero && duration != Timeout.InfiniteTimeSpan) throw new ArgumentOutOfRangeException(nameof(duration));
            var generation = StartBlackoutCore();
            if (generation < 0) return;
            try
            {
                await Task.Delay(duration, _stopping.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            EndBlackoutCore(generation);
        }

        /// <summary>Aborts every current connection with an RST to both peers (a held one only has its client).</summary>
        public void ResetAll()
        {
            foreach (var c in _connections.Keys) Abort(c, "reset by ResetAll");
        }

        /// <summary>
        /// Silently stops relaying <paramref name="direction"/> (bytes read and discarded, a FIN or reset not passed on) on
        /// every existing connection and on those accepted until <see cref="Heal"/>; the other direction keeps working.
        /// </summary>
        public void HalfOpen(ProxyDirection direction)
        {
            var bit = Bit(direction);
            lock (_gate)
            {
                _halfOpenMode |= bit;
                foreach (var c in _connections.Keys) c.Silence(bit);
            }
            _log?.Invoke("proxy: half-open " + direction.ToString());
        }

        /// <summary>Ends half-open mode for connections accepted from now on (the existing half-open ones stay so).</summary>
        public void Heal()
        {
            lock (_gate) _halfOpenMode = 0;
        }

        /// <summary>The counters and modes, camelCase (what GET /control/proxy answers).</summary>
        public JsonObject DescribeJson()
        {
            var lateness = DelayLateness;
            var halfOpen = new JsonArray();
            bool blackout;
            int mode;
            lock (_gate)
            {
                blackout = _blackout;
                mode = _halfOpenMode;
            }
            foreach (var d in new[] { ProxyDirection.ClientToServer, ProxyDirection.ServerToClient })
            {
                if ((mode & Bit(d)) != 0) halfOpen.Add(d.ToString());
            }
            return new JsonObject
            {
                ["port"] = Port,
                ["target"] = Target.ToString(),
                ["isBlackout"] = blackout,
                ["halfOpen"] = halfOpen,
                ["activeConnections"] = ActiveConnections,
                ["accepted"] = Accepted,
                ["bytesClientToServer"] = BytesClientToServer,
                ["bytesServerToClient"] = BytesServerToClient,
                ["blackholedConnections"] = BlackholedConnections,
                ["latencyMs"] = Latency.TotalMilliseconds,
                ["delayedChunks"] = DelayedChunks,
                ["delayLatenessAverageMs"] = lateness.Average.TotalMilliseconds,
                ["delayLatenessMaxMs"] = lateness.Max.TotalMilliseconds,
            };
        }

        private long StartBlackoutCore()
        {
            long generation;
            var silenced = 0;
            lock (_gate)
            {
                if (_disposed) return -1;
                if (_blackout) return _blackoutGeneration;
                _blackout = true;
                generation = ++_blackoutGeneration;
                _blackoutEnded = NewSignal(completed: false);
                foreach (var c in _connections.Keys)
                {
                    // New and held connections have no upstream yet: they are held until the blackout ends.
                    if (c.IsUpstream && c.Silence(Blackholed)) silenced++;
                }
                Interlocked.Add(ref _blackholed, silenced);
            }
            _log?.Invoke("proxy: blackout (" + silenced.ToString(CultureInfo.InvariantCulture) + " connection(s) silenced)");
            return generation;
        }

        private void EndBlackoutCore(long? generation)
        {
            TaskCompletionSource ended;
            lock (_gate)
            {
                if (!_blackout || (generation != null && generation.Value != _blackoutGeneration)) return;
                _blackout = false;
                ended = _blackoutEnded;
            }
            ended.TrySetResult();
            _log?.Invoke("proxy: blackout ended");
        }

        private static int Bit(ProxyDirection direction) => direction switch
        {
            ProxyDirection.ClientToServer => SilencedClientToServer,
            ProxyDirection.ServerToClient => SilencedServerToClient,
            _ => throw new ArgumentOutOfRangeException(nameof(direction)),
        };

        private static TaskCompletionSource NewSignal(bool completed)
        {
            var s = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (completed) s.TrySetResult();
            return s;
        }

        private async Task AcceptLoopAsync()
        {
            while (!_stopping.IsCancellationRequested)
            {
                Socket socket;
                try
                {
                    socket = await _listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
                }
                catch (Exception) when (_stopping.IsCancellationRequested)
                {
                    return;
                }
                catch (ObjectDisposedException)
                {
                    return;
                }
                catch (SocketException ex)
                {
                    // Reset by the client before it was accepted: keep listening.
                    _log?.Invoke("proxy: accept failed: " + ex.Message);
                    continue;
                }
                Interlocked.Increment(ref _accepted);
                try
                {
                    socket.NoDelay = true;
                }
                catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
                {
                    Reset(socket);
                    continue;
                }
                var c = new Connection(socket);
                lock (_gate)
                {
                    if (_disposed)
                    {
                        Reset(socket);
                        return;
                    }
                    c.Silence(_halfOpenMode);
                    _connections.TryAdd(c, 0);
                }
                Track(Task.Run(() => ClientToServerAsync(c)));
                Track(Task.Run(() => ConnectUpstreamAsync(c)));
            }
        }

        private void Track(Task task)
        {
            _tasks.TryAdd(task, 0);
            _ = task.ContinueWith(t =>
            {
                _tasks.TryRemove(t, out _);
                if (t.IsFaulted) _log?.Invoke("proxy: relay task failed: " + t.Exception!.GetBaseException().Message);
            }, TaskScheduler.Default);
        }

        /// <summary>Holds the connection while a blackout lasts, connects upstream, delivers what was kept, then starts the server-to-client relay.</summary>
        private async Task ConnectUpstreamAsync(Connection c)
        {
            while (true)
            {
                Task blackoutEnded;
                lock (_gate)
                {
                    if (c.IsClosed) return;
                    if (!_blackout)
                    {
                        c.IsUpstream = true;
                        break;
                    }
                    blackoutEnded = _blackoutEnded.Task;
                }
                await Task.WhenAny(blackoutEnded, c.ClosedTask).ConfigureAwait(false);
            }

            var server = new Socket(Target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                server.NoDelay = true;
                await server.ConnectAsync(Target, _stopping.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException || ex is OperationCanceledException || ex is ObjectDisposedException)
            {
                server.Dispose();
                Abort(c, "cannot connect to " + Target + ": " + ex.Message);
                return;
            }
            if (!c.AttachServer(server))
            {
                Reset(server);
                return;
            }
            Track(Task.Run(() => ServerToClientAsync(c, server)));

            // Deliver what the client sent before the connection was upstream, in order (after the latency, when one is
            // set: the bytes start across the link now); the reader queues while !Ready.
            while (true)
            {
                byte[] chunk;
                lock (c.QueueLock)
                {
                    if (c.Held.Count == 0)
                    {
                        c.Ready = true;
                        break;
                    }
                    chunk = c.Held.Dequeue();
                    c.HeldBytes -= chunk.Length;
                }
                if (c.IsSilenced(ProxyDirection.ClientToServer)) continue;
                if (!await ForwardAsync(c, server, chunk, chunk.Length, ProxyDirection.ClientToServer).ConfigureAwait(false)) break;
            }
            c.SignalReady();
        }

        private async Task ClientToServerAsync(Connection c)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                while (true)
                {
                    Task? readyTask = null;
                    lock (c.QueueLock)
                    {
                        if (!c.Ready && c.HeldBytes >= MaxHeldBytes) readyTask = c.ReadyTask;
                    }
                    if (readyTask != null)
                    {
                        // Enough kept: stop reading (the client's kernel holds the rest) until the connection is upstream.
                        await readyTask.ConfigureAwait(false);
                        if (c.IsClosed) return;
                    }
                    int n;
                    try
                    {
                        n = await c.Client.ReceiveAsync(buffer.AsMemory(0, BufferSize), SocketFlags.None).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (IsSocketFailure(ex))
                    {
                        ReadFailed(c, ProxyDirection.ClientToServer, ex);
                        return;
                    }
                    if (n == 0)
                    {
                        // The FIN goes after what was kept.
                        await c.ReadyTask.ConfigureAwait(false);
                        await ForwardEndAsync(c, ProxyDirection.ClientToServer, c.Server).ConfigureAwait(false);
                        return;
                    }
                    if (c.IsSilenced(ProxyDirection.ClientToServer)) continue;
                    var queued = false;
                    lock (c.QueueLock)
                    {
                        if (!c.Ready)
                        {
                            c.Held.Enqueue(buffer.AsSpan(0, n).ToArray());
                            c.HeldBytes += n;
                            queued = true;
                        }
                    }
                    if (queued) continue;
                    if (!await ForwardAsync(c, c.Server!, buffer, n, ProxyDirection.ClientToServer).ConfigureAwait(false)) return;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        private async Task ServerToClientAsync(Connection c, Socket server)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                while (true)
                {
                    int n;
                    try
                    {
                        n = await server.ReceiveAsync(buffer.AsMemory(0, BufferSize), SocketFlags.None).ConfigureAwait(false);
                    }
                    catch (Exception ex) when (IsSocketFailure(ex))
                    {
                        ReadFailed(c, ProxyDirection.ServerToClient, ex);
                        return;
                    }
                    if (n == 0)
                    {
                        await ForwardEndAsync(c, ProxyDirection.ServerToClient, c.Client).ConfigureAwait(false);
                        return;
                    }
                    if (c.IsSilenced(ProxyDirection.ServerToClient)) continue;
                    if (!await ForwardAsync(c, c.Client, buffer, n, ProxyDirection.ServerToClient).ConfigureAwait(false)) return;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        /// <summary>
        /// Passes a chunk on: at once without <see cref="Latency"/> (and no delay line yet), else through the direction's
        /// delay line (a copy; waits while the line is full). False when the relay in this direction must stop.
        /// </summary>
        private ValueTask<bool> ForwardAsync(Connection c, Socket destination, byte[] buffer, int count, ProxyDirection direction)
        {
            var line = c.Line(direction);
            var latency = Interlocked.Read(ref _latencyTicks);
            if (line == null && latency == 0) return SendAsync(c, destination, buffer, count, direction);
            var copy = ArrayPool<byte>.Shared.Rent(count);
            Buffer.BlockCopy(buffer, 0, copy, 0, count);
            return EnqueueAsync(c, line ?? StartLine(c, destination, direction), new Delayed(copy, count, Due(latency)));
        }

        /// <summary>The end of one direction: a FIN after what the delay line still carries, else at once.</summary>
        private async Task ForwardEndAsync(Connection c, ProxyDirection direction, Socket? destination)
        {
            var line = c.Line(direction);
            var latency = Interlocked.Read(ref _latencyTicks);
            if (destination == null || (line == null && latency == 0))
            {
                EndOfStream(c, direction, destination);
                return;
            }
            await EnqueueAsync(c, line ?? StartLine(c, destination, direction), new Delayed(null, 0, Due(latency))).ConfigureAwait(false);
        }

        private static long Due(long latencyTicks) => DelayClock.DueIn(TimeSpan.FromTicks(latencyTicks));

        private static async ValueTask<bool> EnqueueAsync(Connection c, Channel<Delayed> line, Delayed item)
        {
            try
            {
                await line.Writer.WriteAsync(item).ConfigureAwait(false);
                return true;
            }
            catch (ChannelClosedException)
            {
                // The connection closed: the line no longer delivers.
                if (item.Chunk != null) ArrayPool<byte>.Shared.Return(item.Chunk);
                return !c.IsClosed;
            }
        }

        private Channel<Delayed> StartLine(Connection c, Socket destination, ProxyDirection direction)
        {
            var line = Channel.CreateBounded<Delayed>(new BoundedChannelOptions(DelayLineChunks) { SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
            c.SetLine(direction, line);
            Track(Task.Run(() => DeliverAsync(c, line, destination, direction)));
            return line;
        }

        /// <summary>Writes each chunk of a delay line when it is due, in order; a FIN marker ends the direction.</summary>
        private async Task DeliverAsync(Connection c, Channel<Delayed> line, Socket destination, ProxyDirection direction)
        {
            try
            {
                await foreach (var item in line.Reader.ReadAllAsync().ConfigureAwait(false))
                {
                    // Never early; the clock's thread writes the chunk as soon as it is due (DelayClock).
                    await _clock.WhenDue(item.Due).ConfigureAwait(false);
                    // Closed meanwhile (on Dispose the clock lets its waits go early): not counted; nothing more is written below.
                    if (!c.IsClosed) NoteLateness(Stopwatch.GetTimestamp() - item.Due);
                    if (item.Chunk == null)
                    {
                        EndOfStream(c, direction, destination);
                        return;
                    }
                    try
                    {
                        if (c.IsClosed) return;
                        if (c.IsSilenced(direction)) continue;
                        if (!await SendAsync(c, destination, item.Chunk, item.Count, direction).ConfigureAwait(false)) return;
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(item.Chunk);
                    }
                }
            }
            finally
            {
                line.Writer.TryComplete();
                while (line.Reader.TryRead(out var left))
                {
                    if (left.Chunk != null) ArrayPool<byte>.Shared.Return(left.Chunk);
                }
            }
        }

        private void NoteLateness(long late)
        {
            Interlocked.Increment(ref _delayedChunks);
            Interlocked.Add(ref _lateTicksTotal, late);
            long max;
            while (late > (max = Interlocked.Read(ref _lateTicksMax)) && Interlocked.CompareExchange(ref _lateTicksMax, late, max) != max)
            {
            }
        }

        /// <summary>A chunk (null: the FIN) and when it is due (Stopwatch timestamp).</summary>
        private readonly record struct Delayed(byte[]? Chunk, int Count, long Due);

        /// <summary>Writes all <paramref name="count"/> bytes; false when the relay in this direction must stop.</summary>
        private async ValueTask<bool> SendAsync(Connection c, Socket destination, byte[] buffer, int count, ProxyDirection direction)
        {
            // Counted before the write (and taken back if it fails): whoever receives the bytes then reads a count that
            // already includes them.
            if (direction == ProxyDirection.ClientToServer) Interlocked.Add(ref _bytesClientToServer, count);
            else Interlocked.Add(ref _bytesServerToClient, count);
            var remaining = buffer.AsMemory(0, count);
            try
            {
                while (remaining.Length > 0)
                {
                    var sent = await destination.SendAsync(remaining, SocketFlags.None).ConfigureAwait(false);
                    remaining = remaining.Slice(sent);
                }
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
                if (direction == ProxyDirection.ClientToServer) Interlocked.Add(ref _bytesClientToServer, -remaining.Length);
                else Interlocked.Add(ref _bytesServerToClient, -remaining.Length);
                if (c.IsClosed) return false;
                // Silenced meanwhile: keep reading and discarding, tell nobody.
                if (c.IsSilenced(direction)) return true;
                Abort(c, direction.ToString() + " write failed: " + ex.Message);
                return false;
            }
            return true;
        }

        private void ReadFailed(Connection c, ProxyDirection direction, Exception ex)
        {
            if (c.IsClosed) return;
            if (c.IsSilenced(direction))
            {
                DirectionEnded(c, silenced: true);
                return;
            }
            // A reset on one side resets the other.
            Abort(c, direction.ToString() + " read failed: " + ex.Message);
        }

        private void EndOfStream(Connection c, ProxyDirection direction, Socket? destination)
        {
            if (c.IsClosed) return;
            if (c.IsSilenced(direction) || destination == null)
            {
                DirectionEnded(c, silenced: true);
                return;
            }
            try
            {
                destination.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
                Abort(c, direction.ToString() + " shutdown failed: " + ex.Message);
                return;
            }
            DirectionEnded(c, silenced: false);
        }

        /// <summary>Both directions ended with a FIN passed on: close both sockets. A silenced connection is kept (nobody is told).</summary>
        private void DirectionEnded(Connection c, bool silenced)
        {
            if (silenced) c.SilencedEnd = true;
            if (Interlocked.Increment(ref c.EndedDirections) < 2 || c.SilencedEnd) return;
            if (!c.TryClose()) return;
            _connections.TryRemove(c, out _);
            Close(c.Client);
            if (c.Server != null) Close(c.Server);
            c.SignalClosed();
        }

        private void Abort(Connection c, string reason)
        {
            if (!c.TryClose()) return;
            _connections.TryRemove(c, out _);
            Reset(c.Client);
            var server = c.DetachServerForClose();
            if (server != null) Reset(server);
            c.SignalClosed();
            _log?.Invoke("proxy: connection aborted (" + reason + ")");
        }

        private static void Reset(Socket socket)
        {
            try
            {
                socket.LingerState = new LingerOption(true, 0);
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
            }
            Close(socket);
        }

        private static void Close(Socket socket)
        {
            try
            {
                socket.Close();
            }
            catch (Exception ex) when (IsSocketFailure(ex))
            {
            }
        }

        private static bool IsSocketFailure(Exception ex) =>
            ex is SocketException || ex is ObjectDisposedException || ex is OperationCanceledException || ex is InvalidOperationException;

        /// <summary>Stops listening, resets every connection and waits (bounded) for the relay tasks.</summary>
        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _disposeStarted, 1) != 0) return;
            lock (_gate) _disposed = true;
            _stopping.Cancel();
            try
            {
                _listener.Dispose();
            }
            catch (SocketException)
            {
            }
            foreach (var c in _connections.Keys) Abort(c, "proxy disposed");
            // The delay lines' waits end now: their connections are closed, so nothing more is written.
            _clock.Dispose();
            var pending = _tasks.Keys.ToList();
            pending.Add(_acceptLoop);
            await Task.WhenAny(Task.WhenAll(pending), Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
            // Connections accepted while the listener was closing were reset by the accept loop itself.
            foreach (var c in _connections.Keys) Abort(c, "proxy disposed");
        }

        public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

        /// <summary>One accepted client and, once connected, its upstream socket.</summary>
        private sealed class Connection
        {
            private readonly TaskCompletionSource _ready = NewSignal(completed: false);
            private readonly TaskCompletionSource _closed = NewSignal(completed: false);
            private int _flags;
            private int _isClosed;
            private Socket? _server;

            public Connection(Socket client) => Client = client;

            public Socket Client { get; }
            public Socket? Server => Volatile.Read(ref _server);

            /// <summary>Set (under the proxy's gate) once the connection is no longer held: a blackout now silences it.</summary>
            public bool IsUpstream { get; set; }

            public readonly object QueueLock = new();
            /// <summary>Client bytes read before the connection was upstream (under QueueLock).</summary>
            public readonly Queue<byte[]> Held = new();
            public int HeldBytes;
            /// <summary>The held bytes were delivered: the reader writes directly (under QueueLock).</summary>
            public bool Ready;
            public int EndedDirections;
            public volatile bool SilencedEnd;

            /// <summary>Completes once the held bytes were delivered, or the connection closed.</summary>
            public Task ReadyTask => _ready.Task;
            public Task ClosedTask => _closed.Task;
            public bool IsClosed => Volatile.Read(ref _isClosed) != 0;

            /// <summary>Adds silence flags; true when <paramref name="bits"/> were not all set before.</summary>
            public bool Silence(int bits)
            {
                if (bits == 0) return false;
                var before = Interlocked.Or(ref _flags, bits);
                return (before & bits) != bits;
            }

            public bool IsSilenced(ProxyDirection direction)
            {
                var flags = Volatile.Read(ref _flags);
                return (flags & (Blackholed | Bit(direction))) != 0;
            }

            public bool TryClose() => Interlocked.Exchange(ref _isClosed, 1) == 0;

            public bool AttachServer(Socket server)
            {
                lock (QueueLock)
                {
                    if (IsClosed) return false;
                    Volatile.Write(ref _server, server);
                    return true;
                }
            }

            /// <summary>After TryClose: the upstream socket, if one was attached (none can be attached any more).</summary>
            public Socket? DetachServerForClose()
            {
                lock (QueueLock) return _server;
            }

            public void SignalReady() => _ready.TrySetResult();

            public void SignalClosed()
            {
                _closed.TrySetResult();
                _ready.TrySetResult();
                // Delay lines stop delivering (their readers return what they held); a reader waiting on a full line goes on.
                Volatile.Read(ref _toServer)?.Writer.TryComplete();
                Volatile.Read(ref _toClient)?.Writer.TryComplete();
            }

            private Channel<Delayed>? _toServer;
            private Channel<Delayed>? _toClient;

            /// <summary>The delay line of one direction, once latency was first applied to it (only its reader sets it).</summary>
            public Channel<Delayed>? Line(ProxyDirection direction) => Volatile.Read(ref direction == ProxyDirection.ClientToServer ? ref _toServer : ref _toClient);

            public void SetLine(ProxyDirection direction, Channel<Delayed> line)
            {
                if (direction == ProxyDirection.ClientToServer) Volatile.Write(ref _toServer, line);
                else Volatile.Write(ref _toClient, line);
                // Closed meanwhile: the new line must not wait for a delivery that will not come.
                if (IsClosed) line.Writer.TryComplete();
            }
        }
    }
}
