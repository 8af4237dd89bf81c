using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq.Expressions;
using System.Management.Automation;
using System.Runtime.ExceptionServices;
using System.Threading;
using System.Threading.Tasks;
using Npgsql;

namespace BastionTools.Postgres
{
    /// <summary>
    /// Streams the rows of a command as PowerShell objects from a reader thread of its own to the pipeline thread,
    /// in batches: the reader thread runs Npgsql and builds each row's PSObject while the pipeline thread only writes
    /// them out, so the two halves of the work run side by side (Invoke-IamPostgresQuery).
    /// <para>A batch is handed over when it is full, when the next row is not in Npgsql's buffer yet (the reader
    /// would block: the rows read so far go out first), at the end of a result set, or when its first row has waited
    /// <see cref="MaxHold"/>. The first batch of each result set is small, so the first row comes out promptly.
    /// At most <see cref="MaxBatchesInFlight"/> batches wait for the pipeline: a slow pipeline holds the reader back
    /// (a million rows never sit in memory).</para>
    /// <para>The command starts on the consumer's thread (the first <see cref="Next"/>), which also reads rows for as
    /// long as they are already there, up to the first batch: a small result (a `select 1`, a lookup) is read, built
    /// and ended there, without a reader thread or a hand-over. The reader thread starts only when more rows follow, or
    /// when the next row or result set has not arrived yet (that read goes on on the reader thread).</para>
    /// <para>Rows, result sets and errors keep their order: an error the reader meets is thrown by <see cref="Next"/>
    /// after the rows before it. <see cref="Stop"/> (Ctrl-C) cancels the query on the server; <see cref="Dispose"/>
    /// without it (the pipeline wanted no more rows, e.g. Select-Object -First) lets Npgsql finish the command as it
    /// did before (the remaining rows are read and dropped, later statements still run).</para>
    /// </summary>
    internal sealed class RowStream : IDisposable
    {
        public const int BatchRows = 512;
        public const int FirstBatchRows = 16;
        public const int MaxBatchesInFlight = 4;
        public static readonly TimeSpan MaxHold = TimeSpan.FromMilliseconds(10);

        private static readonly Func<int, PSObject> NewRow = RowFactory();
        private static readonly long MaxHoldTicks = (long)(MaxHold.TotalSeconds * Stopwatch.Frequency);

        private readonly NpgsqlCommand _command;
        private readonly BlockingCollection<Batch> _ready = new(MaxBatchesInFlight);
        private readonly ConcurrentQueue<PSObject[]> _free = new();
        private readonly CancellationTokenSource _leave = new();   // the consumer has gone: stop waiting on the queue
        private volatile bool _stopped;                            // Ctrl-C: the query was cancelled
        private readonly Thread _thread;
        private ExceptionDispatchInfo? _error;
        private int _finished;

        private PSObject[] _rows = Array.Empty<PSObject>();
        private int _count;
        private long _firstAt;

        // Where the consumer's thread left the command for the reader thread (BeginInline).
        private bool _begun;
        private NpgsqlDataReader? _reader;
        private RowShape? _shape;
        private Task<bool>? _pendingRead;
        private Task<bool>? _pendingNextResult;

        public RowStream(NpgsqlCommand command)
        {
            _command = command;
            _thread = new Thread(Produce) { IsBackground = true, Name = "BastionTools row reader" };
        }

        /// <summary>Tests: true once the reader thread has been started (a result larger than what the first <see cref="Next"/> reads).</summary>
        internal bool ReaderThreadStarted => (_thread.ThreadState & System.Threading.ThreadState.Unstarted) == 0;

        /// <summary>
        /// The next batch of rows on the consumer's thread (blocks until there is one), or false at the end. The first
        /// call runs the command. Throws what the reader met after the rows before it; throws
        /// <see cref="OperationCanceledException"/> after <see cref="Stop"/>. Hand the batch back with <see cref="Return"/>
        /// once written.
        /// </summary>
        public bool Next(out Batch batch)
        {
            if (!_begun)
            {
                _begun = true;
                if (BeginInline(out batch)) return true;
            }
            batch = default;
            // Without a reader thread everything was read on this thread.
            if (ReaderThreadStarted)
            {
                try
                {
                    if (_ready.TryTake(out batch, Timeout.Infinite, _leave.Token)) return true;
                }
                catch (OperationCanceledException)
                {
                    _thread.Join();
                    throw;
                }
                _thread.Join();
            }
            _error?.Throw();
            if (_stopped) throw new OperationCanceledException();
            return false;
        }

        /// <summary>A written batch's array back for reuse (its rows let go).</summary>
        public void Return(Batch batch)
        {
            Array.Clear(batch.Rows, 0, batch.Count);
            if (batch.Rows.Length == BatchRows) _free.Enqueue(batch.Rows);
        }

        /// <summary>Ctrl-C (from any thread): the query is cancelled on the server and <see cref="Next"/> stops.</summary>
        public void Stop()
        {
            if (Volatile.Read(ref _finished) != 0) return;
            try
            {
                // One cancel request (NpgsqlCommand.Cancel): it ends ExecuteReader, a row wait or NextResult alike.
                _stopped = true;
                _leave.Cancel();
                _command.Cancel();
            }
            catch (Exception)
            {
                // Best effort: the pipeline is stopping anyway.
            }
        }

        public void Dispose()
        {
            if (ReaderThreadStarted)
            {
                _leave.Cancel();
                _thread.Join();
            }
            _leave.Dispose();
            _ready.Dispose();
        }

        /// <summary>
        /// The first call of <see cref="Next"/>, on the consumer's thread: runs the command and reads the rows that are
        /// already there, up to <see cref="FirstBatchRows"/>, across result sets. When the command ends meanwhile, the
        /// reader is disposed here and no thread starts. Otherwise the reader thread takes over where this left off (a row
        /// or NextResult still in flight goes with it). True with the rows read; false with none (then the reader thread,
        /// if started, has the rest).
        /// </summary>
        private bool BeginInline(out Batch batch)
        {
            batch = default;
            NpgsqlDataReader? reader = null;
            PSObject[]? rows = null;
            var count = 0;
            try
            {
                // Ctrl-C before the command was sent: Npgsql's Cancel had nothing to cancel yet.
                if (_stopped) throw new OperationCanceledException();
                reader = _command.ExecuteReader();
                var shape = new RowShape(reader);
                while (true)
                {
                    var next = reader.ReadAsync(CancellationToken.None);
                    if (!next.IsCompleted)
                    {
                        HandOver(reader, shape, next, null);
                        break;
                    }
                    if (next.GetAwaiter().GetResult())
                    {
                        if (count == FirstBatchRows)
                        {
                            // More rows than the first batch: the reader thread builds the one the reader is on, and the rest.
                            HandOver(reader, shape, next, null);
                            break;
                        }
                        rows ??= new PSObject[FirstBatchRows];
                        rows[count++] = shape.Build(reader);
                        continue;
                    }
                    var more = reader.NextResultAsync(CancellationToken.None);
                    if (!more.IsCompleted)
                    {
                        HandOver(reader, null, null, more);
                        break;
                    }
                    if (!more.GetAwaiter().GetResult())
                    {
                        // The command has ended: nothing for a reader thread to do.
                        Volatile.Write(ref _finished, 1);
                        reader.Dispose();
                        break;
                    }
                    shape = new RowShape(reader);
                }
            }
            catch (Exception ex)
            {
                Volatile.Write(ref _finished, 1);
                try
                {
                    reader?.Dispose();
                }
                catch (Exception)
                {
                    // The command's own error is the one to report.
                }
                if (_stopped) throw new OperationCanceledException("The query was cancelled.", ex);
                // The rows read before the error go out first (Next throws it after them).
                if (count == 0) throw;
                _error = ExceptionDispatchInfo.Capture(ex);
            }
            if (count == 0) return false;
            batch = new Batch(rows!, count);
            return true;
        }

        private void HandOver(NpgsqlDataReader reader, RowShape? shape, Task<bool>? pendingRead, Task<bool>? pendingNextResult)
        {
            _reader = reader;
            _shape = shape;
            _pendingRead = pendingRead;
            _pendingNextResult = pendingNextResult;
            _thread.Start();
        }

        private void Produce()
        {
            try
            {
                using var reader = _reader!;
                var pendingRead = _pendingRead;
                var more = _pendingNextResult;
                _reader = null;
                _pendingRead = _pendingNextResult = null;
                if (more == null)
                {
                    // The first batch went out from the consumer's thread: full batches from here on.
                    ReadResultSet(reader, _shape!, BatchRows, pendingRead);
                }
                _shape = null;
                while (!_leave.IsCancellationRequested && (more != null ? more.GetAwaiter().GetResult() : reader.NextResult()))
                {
                    more = null;
                    ReadResultSet(reader, new RowShape(reader), FirstBatchRows, null);
                }
                // The consumer left before a NextResult handed over was looked at: it finishes before the reader is disposed.
                if (more != null) Settle(more);
            }
            catch (Exception ex)
            {
                // After Stop or Dispose nobody waits for the error (the query was cancelled, or the pipeline is done).
                // Otherwise the rows read before it go out first, then the error.
                if (!_leave.IsCancellationRequested)
                {
                    _error = ExceptionDispatchInfo.Capture(ex);
                    try
                    {
                        if (_count > 0) Flush();
                    }
                    catch (OperationCanceledException)
                    {
                        // The consumer left meanwhile.
                    }
                }
            }
            finally
            {
                Volatile.Write(ref _finished, 1);
                _ready.CompleteAdding();
            }
        }

        /// <summary>The rows of one result set (from a row read in flight, if given), in batches; the first holds up to <paramref name="limit"/> rows.</summary>
        private void ReadResultSet(NpgsqlDataReader reader, RowShape shape, int limit, Task<bool>? next)
        {
            while (!_leave.IsCancellationRequested)
            {
                next ??= reader.ReadAsync(CancellationToken.None);
                if (!next.IsCompleted && _count > 0) FlushWhileReading(next);
                var hasRow = next.GetAwaiter().GetResult();
                next = null;
                if (!hasRow) break;
                if (_count == 0)
                {
                    if (_rows.Length == 0 && !_free.TryDequeue(out _rows!)) _rows = new PSObject[BatchRows];
                    _firstAt = Stopwatch.GetTimestamp();
                }
                _rows[_count++] = shape.Build(reader);
                if (_count >= limit || Stopwatch.GetTimestamp() - _firstAt > MaxHoldTicks)
                {
                    Flush();
                    limit = BatchRows;
                }
            }
            // The consumer left before a read handed over was looked at: it finishes before the reader is disposed.
            if (next != null) Settle(next);
            if (_count > 0) Flush();
        }

        /// <summary>Waits for a read in flight to end, whatever its outcome: an Npgsql reader disposed with a read in flight leaves the connection busy.</summary>
        private static void Settle(Task<bool> pending)
        {
            try
            {
                pending.GetAwaiter().GetResult();
            }
            catch (Exception)
            {
                // The query's own error: nobody waits for it any more.
            }
        }

        /// <summary>Tests: called on the reader thread before a batch goes out while a row read is in flight, with the batches queued then.</summary>
        internal Action<int>? BeforeFlushWithReadInFlight { get; set; }

        /// <summary>Tests: true once Dispose or Stop has told the reader thread to leave.</summary>
        internal bool IsLeaving => _leave.IsCancellationRequested;

        /// <summary>
        /// Hands the batch over while a row read is in flight. When the consumer leaves meanwhile (Dispose, Stop) the wait
        /// for room ends with OperationCanceledException: the read is let finish first, since disposing an Npgsql reader
        /// with a read in flight leaves the connection busy (the next command fails with "A command is already in progress").
        /// </summary>
        private void FlushWhileReading(Task<bool> pending)
        {
            BeforeFlushWithReadInFlight?.Invoke(_ready.Count);
            try
            {
                Flush();
            }
            catch (OperationCanceledException)
            {
                Settle(pending);
                throw;
            }
        }

        private void Flush()
        {
            var batch = new Batch(_rows, _count);
            _rows = Array.Empty<PSObject>();
            _count = 0;
            _ready.Add(batch, _leave.Token);
        }

        /// <summary>PSObject(int capacity) where PowerShell has it (7.x: sized once, no growth); new PSObject() in 5.1.</summary>
        private static Func<int, PSObject> RowFactory()
        {
            var ctor = typeof(PSObject).GetConstructor(new[] { typeof(int) });
            if (ctor == null) return _ => new PSObject();
            var capacity = Expression.Parameter(typeof(int), "capacity");
            return Expression.Lambda<Func<int, PSObject>>(Expression.New(ctor, capacity), capacity).Compile();
        }

        /// <summary>A run of rows for the pipeline thread: Rows[0..Count).</summary>
        internal readonly struct Batch
        {
            public Batch(PSObject[] rows, int count)
            {
                Rows = rows;
                Count = count;
            }

            public PSObject[] Rows { get; }
            public int Count { get; }
        }

        /// <summary>One result set's columns: unique property names (made once) and how each value becomes PowerShell's.</summary>
        private sealed class RowShape
        {
            private readonly string[] _names;
            private readonly Type?[] _lastType;
            private readonly bool[] _asText;

            public RowShape(NpgsqlDataReader reader)
            {
                _names = UniqueNames(reader);
                _lastType = new Type?[_names.Length];
                _asText = new bool[_names.Length];
            }

            public PSObject Build(NpgsqlDataReader reader)
            {
                var row = NewRow(_names.Length);
                for (var i = 0; i < _names.Length; i++)
                {
                    var value = reader.GetValue(i);
                    object? shown;
                    if (value is DBNull)
                    {
                        shown = null;
                    }
                    else
                    {
                        var type = value.GetType();
                        if (!ReferenceEquals(type, _lastType[i]))
                        {
                            _asText[i] = IsNpgsqlType(type);
                            _lastType[i] = type;
                        }
                        shown = _asText[i] ? value.ToString() : value;
                    }
                    // Names are unique (UniqueNames), so PowerShell's duplicate check is not needed.
                    row.Properties.Add(new PSNoteProperty(_names[i], shown), true);
                }
                return row;
            }
        }

        internal static bool IsNpgsqlType(Type type) => type.Assembly == typeof(NpgsqlConnection).Assembly;

        /// <summary>Column names as property names: unnamed columns become ColumnN, repeats get 2, 3, … (case-insensitive, as PowerShell's properties).</summary>
        internal static string[] UniqueNames(NpgsqlDataReader reader)
        {
            var names = new string[reader.FieldCount];
            var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            for (var i = 0; i < reader.FieldCount; i++)
            {
                var name = reader.GetName(i);
                if (string.IsNullOrEmpty(name) || name == "?column?") name = "Column" + (i + 1);
                var unique = name;
                for (var n = 2; !seen.Add(unique); n++) unique = name + n;
                names[i] = unique;
            }
            return names;
        }
    }
}
