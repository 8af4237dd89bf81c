using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Reads the local connections of a multiplexed port session on one thread of its own, which waits for all of them
    /// at once (<see cref="Socket.Select"/>, a poll(2) on Unix), reads each one that is ready without waiting, and tells
    /// its reader once per wake-up that the reads are done (the forwarder then sends everything they queued together).
    /// </summary>
    /// <remarks>
    /// With .NET's own asynchronous reads, every read a local client's request completes is handed from the socket
    /// engine's thread to the thread pool: a pool thread woken per request, which then spins for more work before it
    /// sleeps, and a second read that finds nothing (the next read is tried before it waits). With 32 clients of
    /// `select 1` through one tunnel on a 2-core VM, a third of this process's CPU went to those spins. Here a wake-up
    /// reads every connection that is ready, each once, and nothing of it goes through the pool. Only for sockets that
    /// do not block (<see cref="Socket.Blocking"/> false); a connection's end, error or cancellation completes the task
    /// its <see cref="Register"/> returned, on the thread pool.
    /// </remarks>
    internal sealed class LocalReadReactor : IDisposable
    {
        internal interface IReader
        {
            /// <summary>
            /// Data read from <paramref name="connection"/> (the buffer is reused after this returns). May wait (for room in
            /// the outgoing stream): every connection waits then. An exception ends this connection's registration with it.
            /// </summary>
            void OnRead(object connection, byte[] buffer, int count);

            /// <summary>The reads of one wake-up are done.</summary>
            void OnReadsDone();
        }

        private sealed class Registration
        {
            public Registration(Socket socket, object connection)
            {
                Socket = socket;
                Connection = connection;
            }

            public Socket Socket { get; }
            public object Connection { get; }
            public TaskCompletionSource<bool> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
            public CancellationTokenRegistration Cancellation;
        }

        private readonly IReader _reader;
        private readonly byte[] _buffer;
        private readonly object _gate = new();
        private readonly Dictionary<Socket, Registration> _registrations = new();
        private readonly List<Socket> _ready = new();
        private readonly Socket _wakeReceiver;
        private readonly Socket _wakeSender;
        private readonly byte[] _wakeByte = new byte[1];
        private readonly Thread _thread;
        private int _wakePending;
        private volatile bool _disposed;
        private int _disposeCalled;

        /// <param name="reader">Where the data goes.</param>
        /// <param name="bufferSize">The largest read (one frame's payload).</param>
        public LocalReadReactor(IReader reader, int bufferSize)
        {
            _reader = reader ?? throw new ArgumentNullException(nameof(reader));
            _buffer = new byte[bufferSize];
            // The thread is woken for a new registration (and for Dispose) by a datagram to itself: the one portable way to
            // interrupt Socket.Select.
            _wakeReceiver = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            _wakeSender = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            try
            {
                _wakeReceiver.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                _wakeSender.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                _wakeSender.Connect(_wakeReceiver.LocalEndPoint!);
                _wakeReceiver.Connect(_wakeSender.LocalEndPoint!);
                _wakeReceiver.Blocking = false;
            }
            catch
            {
                _wakeReceiver.Dispose();
                _wakeSender.Dispose();
                throw;
            }
            _thread = new Thread(Run) { IsBackground = true, Name = "BastionTools tunnel reads" };
            _thread.Start();
        }

        /// <summary>Connections being read now.</summary>
        public int Count
        {
            get { lock (_gate) return _registrations.Count; }
        }

        /// <summary>
        /// Reads <paramref name="socket"/> (which must not block) from now on, handing the data to the reader with
        /// <paramref name="connection"/>. The task completes at the connection's end (or <see cref="Unregister"/>), faults
        /// with an <see cref="IOException"/> when a read fails (or with what the reader threw), and is cancelled with
        /// <paramref name="cancellationToken"/> or <see cref="Dispose"/>.
        /// </summary>
        public Task Register(Socket socket, object connection, CancellationToken cancellationToken)
        {
            if (socket is null) throw new ArgumentNullException(nameof(socket));
            if (socket.Blocking) throw new ArgumentException("The reader thread reads only sockets that do not block.", nameof(socket));
            var r = new Registration(socket, connection);
            lock (_gate)
            {
                if (_disposed) throw new ObjectDisposedException(nameof(LocalReadReactor));
                if (_registrations.ContainsKey(socket)) throw new InvalidOperationException("The socket is already being read.");
                _registrations.Add(socket, r);
            }
            if (cancellationToken.CanBeCanceled)
            {
                r.Cancellation = cancellationToken.Register(() => End(r, canceled: true));
            }
            Wake();
            return r.Done.Task;
        }

        /// <summary>Stops reading <paramref name="socket"/> (its task completes); nothing when it is not read.</summary>
        public void Unregister(Socket socket)
        {
            if (socket is null) return;
            Registration? r;
            lock (_gate)
            {
                if (!_registrations.TryGetValue(socket, out r)) return;
            }
            End(r);
        }

        /// <summary>Takes a registration out (once) and completes its task: result, fault or cancellation.</summary>
        private void End(Registration r, Exception? error = null, bool canceled = false)
        {
            lock (_gate)
            {
                if (!_registrations.TryGetValue(r.Socket, out var current) || !ReferenceEquals(current, r)) return;
                _registrations.Remove(r.Socket);
            }
            r.Cancellation.Dispose();
            // The thread may be waiting on this socket: it lets go of it (and a close of it takes effect) when it wakes.
            Wake();
            if (canceled) r.Done.TrySetCanceled();
            else if (error != null) r.Done.TrySetException(error);
            else r.Done.TrySetResult(true);
        }

        private void Wake()
        {
            if (Interlocked.Exchange(ref _wakePending, 1) != 0) return;
            try
            {
                _wakeSender.Send(_wakeByte);
            }
            catch (SocketException)
            {
                // No datagram went: the next wake must try again rather than count on one pending.
                Volatile.Write(ref _wakePending, 0);
            }
            catch (ObjectDisposedException)
            {
                // Disposed: the thread is ending anyway.
            }
        }

        /// <summary>For tests: runs on the thread while it takes in a wake-up.</summary>
        internal Action? WakeUpHandling;

        /// <summary>True once the thread has ended (disposed, or stopped by a failure it could not get past): registrations are refused.</summary>
        public bool IsStopped => _disposed;

        private void Run()
        {
            try
            {
                Loop();
            }
            catch (Exception ex)
            {
                // Nothing here is expected to throw; if something does, the connections fail rather than the process.
                Stop(new IOException("The tunnel's reader thread failed: " + ex.Message, ex));
            }
        }

        private void Loop()
        {
            var drain = new byte[16];
            while (!_disposed)
            {
                _ready.Clear();
                _ready.Add(_wakeReceiver);
                lock (_gate)
                {
                    foreach (var s in _registrations.Keys) _ready.Add(s);
                }
                try
                {
                    Socket.Select(_ready, null, null, -1);
                }
                catch (Exception ex) when (ex is ObjectDisposedException || ex is SocketException)
                {
                    // A socket was closed under the thread (its connection ended meanwhile): drop it, wait again. When
                    // none was, the wait itself fails: its connections fail, and the thread stops if even the wake-up
                    // socket alone cannot be waited on (no loop that spins).
                    if (_disposed || DropClosed() > 0) continue;
                    if (_ready.Count <= 1) throw;
                    EndAll(new IOException("The tunnel's reader thread could not wait for its connections: " + ex.Message, ex));
                    continue;
                }
                var read = false;
                foreach (var s in _ready)
                {
                    if (ReferenceEquals(s, _wakeReceiver))
                    {
                        // First the datagrams, then the flag: a wake asked for after the flag is down sends a datagram
                        // that stays for the next wait; one asked for before (flag still up) sends none, and its change
                        // is seen when the list is made again below. The other order lost wake-ups for good: a datagram
                        // sent between the two was drained here, leaving the flag up with nothing to wake the thread,
                        // so no later registration or end was seen until some connection happened to have data.
                        DrainWake(drain);
                        WakeUpHandling?.Invoke();
                        Interlocked.Exchange(ref _wakePending, 0);
                        continue;
                    }
                    Registration? r;
                    lock (_gate)
                    {
                        if (!_registrations.TryGetValue(s, out r)) continue;
                    }
                    read |= ReadOnce(r);
                }
                if (read) _reader.OnReadsDone();
            }
        }

        /// <summary>One read of a ready connection: its data to the reader, or its end. True when data was read.</summary>
        private bool ReadOnce(Registration r)
        {
            int n;
            SocketError error;
            try
            {
                n = r.Socket.Receive(_buffer, 0, _buffer.Length, SocketFlags.None, out error);
            }
            catch (ObjectDisposedException)
            {
                End(r);
                return false;
            }
            if (error == SocketError.WouldBlock) return false;
            if (error != SocketError.Success)
            {
                End(r, new IOException($"The local connection failed ({error}).", new SocketException((int)error)));
                return false;
            }
            if (n == 0)
            {
                End(r);
                return false;
            }
            try
            {
                _reader.OnRead(r.Connection, _buffer, n);
                return true;
            }
            catch (Exception ex)
            {
                End(r, ex);
                return true;
            }
        }

        private void DrainWake(byte[] drain)
        {
            try
            {
                while (_wakeReceiver.Receive(drain, 0, drain.Length, SocketFlags.None, out var error) > 0 && error == SocketError.Success)
                {
                }
            }
            catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
            {
            }
        }

        /// <summary>Ends the registrations whose socket was closed while they were read; how many.</summary>
        private int DropClosed()
        {
            var closed = new List<Registration>();
            lock (_gate)
            {
                foreach (var r in _registrations.Values)
                {
                    try
                    {
                        _ = r.Socket.Available;
                    }
                    catch (Exception ex) when (ex is ObjectDisposedException || ex is SocketException)
                    {
                        closed.Add(r);
                    }
                }
            }
            foreach (var r in closed) End(r);
            return closed.Count;
        }

        private void EndAll(Exception? error = null, bool canceled = false)
        {
            List<Registration> all;
            lock (_gate) all = new List<Registration>(_registrations.Values);
            foreach (var r in all) End(r, error, canceled);
        }

        /// <summary>The thread ends after a failure: what it reads fails with <paramref name="error"/>, and no more is taken.</summary>
        private void Stop(Exception error)
        {
            lock (_gate) _disposed = true;
            EndAll(error);
        }

        /// <summary>Ends the thread; connections still read have their tasks cancelled.</summary>
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposeCalled, 1) != 0) return;
            // Register checks the flag under the same lock: nothing is added after it is set.
            lock (_gate) _disposed = true;
            EndAll(canceled: true);
            Wake();
            if (Thread.CurrentThread != _thread) _thread.Join(TimeSpan.FromSeconds(5));
            _wakeSender.Dispose();
            _wakeReceiver.Dispose();
        }
    }
}
