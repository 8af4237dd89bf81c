using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Basic port forwarding for agents without smux: one local connection at a time carried as raw bytes; when it
    /// ends the client sends DisconnectToPort and the next connection's first bytes make the agent dial again.
    /// Further local connections wait their turn. What arrives for the current connection is queued for it up to the
    /// same bound as a multiplexed stream; past it, that connection is reset (and DisconnectToPort sent): the data
    /// channel's receive loop never waits on a local client. Output that arrives while no connection is current, or
    /// before the current one has sent its first bytes, belongs to a connection that has ended and is dropped.
    /// </summary>
    internal sealed class BasicPortForwarder : IPortForwarder
    {
        private const int WriteBatchBytes = 64 * 1024;

        private sealed class Current
        {
            public Current(TcpClient client, ConnectionQueue queue)
            {
                Client = client;
                Queue = queue;
            }

            public TcpClient Client { get; }
            public ConnectionQueue Queue { get; }
            public int Reset;

            /// <summary>1 once the connection's first bytes are on their way to the agent: only then can output be its own.</summary>
            public int Started;
        }

        private readonly IStreamSender _sender;
        private readonly ConnectionStatistics _stats;
        private readonly Action<string> _log;
        private readonly ConnectionQueuePolicy _queues;
        private readonly SemaphoreSlim _turn = new(1, 1);
        private readonly CancellationTokenSource _lifetime = new();
        private volatile Current? _current;
        private int _anyConnection;

        public BasicPortForwarder(IStreamSender sender, ConnectionStatistics stats, Action<string> log, ConnectionQueuePolicy? queues = null)
        {
            _sender = sender;
            _stats = stats;
            _log = log;
            _queues = queues ?? new ConnectionQueuePolicy();
        }

        public PortForwardingMode Mode => PortForwardingMode.Basic;

        public async Task HandleConnectionAsync(TcpClient client, CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            await _turn.WaitAsync(linked.Token).ConfigureAwait(false);
            _stats.Open();
            var current = new Current(client, new ConnectionQueue(_queues, _stats));
            // The agent dials the first destination connection when the session starts (port_basic.go
            // InitializeSession), so a destination that speaks first may answer the first local connection before it
            // sends anything; later ones are dialled on their first bytes.
            if (Interlocked.Exchange(ref _anyConnection, 1) == 0) current.Started = 1;
            Task? download = null;
            try
            {
                client.NoDelay = true;
                var network = client.GetStream();
                _current = current;
                download = PumpRemoteToLocalAsync(current, network, linked.Token);
                var buffer = new byte[16 * 1024];
                try
                {
                    while (true)
                    {
                        var n = await network.ReadAsync(buffer, 0, buffer.Length, linked.Token).ConfigureAwait(false);
                        if (n == 0) break;
                        _stats.Out(n);
                        // Before the send: the destination's answer may arrive before SendAsync returns.
                        Volatile.Write(ref current.Started, 1);
                        await _sender.SendAsync(PayloadType.Output, buffer, 0, n, linked.Token).ConfigureAwait(false);
                    }
                }
                catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException)
                {
                    _log("Local connection ended: " + ex.Message);
                }
                _current = null;
                current.Queue.Complete();
                if (!linked.IsCancellationRequested && Volatile.Read(ref current.Reset) == 0)
                {
                    await _sender.SendFlagAsync(PayloadTypeFlag.DisconnectToPort, linked.Token).ConfigureAwait(false);
                }
                await Task.WhenAny(download, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None)).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException || ex is OperationCanceledException || ex is ObjectDisposedException)
            {
                _log("Local connection ended: " + ex.Message);
            }
            finally
            {
                if (ReferenceEquals(_current, current)) _current = null;
                current.Queue.Fail();
                _stats.Close();
                client.Dispose();
                _turn.Release();
            }
        }

        private async Task PumpRemoteToLocalAsync(Current current, NetworkStream network, CancellationToken cancellationToken)
        {
            var batch = new List<byte[]>();
            try
            {
                while (await current.Queue.TakeAsync(batch, WriteBatchBytes, cancellationToken).ConfigureAwait(false))
                {
                    foreach (var b in batch)
                    {
                        await network.WriteAsync(b, 0, b.Length, cancellationToken).ConfigureAwait(false);
                        current.Queue.Progress();
                        _stats.In(b.Length);
                    }
                    batch.Clear();
                }
            }
            catch (Exception ex) when (ex is IOException || ex is SocketException || ex is ObjectDisposedException || ex is OperationCanceledException)
            {
                _log("Could not write to the local connection: " + ex.Message);
            }
        }

        public void OnOutput(byte[] buffer, int offset, int count)
        {
            var current = _current;
            // Nothing says which connection output belongs to. The agent dials the destination again only on the first
            // bytes after DisconnectToPort (port_basic.go HandleStreamMessage, reconnectToPort), so output that arrives
            // before the current connection has sent anything is the previous connection's (read before the agent closed
            // it): dropped, never written to this one. (The first connection of a session is exempt, see above.)
            if (current == null || Volatile.Read(ref current.Started) == 0)
            {
                _stats.Dropped(count);
                return;
            }
            // The queue keeps it: a copy (the buffer is the caller's again when this returns).
            var refused = current.Queue.RefusalReason(current.Queue.TryEnqueue(buffer.AsSpan(offset, count).ToArray()));
            if (refused != null) ResetCurrent(current, refused);
        }

        private void ResetCurrent(Current current, string reason)
        {
            if (Interlocked.Exchange(ref current.Reset, 1) != 0) return;
            _stats.ResetOne();
            _stats.Fail();
            _log($"The local connection was reset: {reason}. The tunnel goes on.");
            current.Queue.Fail();
            Abort(current.Client);
            if (!_lifetime.IsCancellationRequested) _ = DisconnectQuietlyAsync();
        }

        private async Task DisconnectQuietlyAsync()
        {
            try
            {
                await _sender.SendFlagAsync(PayloadTypeFlag.DisconnectToPort, _lifetime.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException || ex is OperationCanceledException || ex is ObjectDisposedException)
            {
            }
        }

        /// <inheritdoc />
        /// <remarks>Basic mode writes each Output as it comes: nothing is held.</remarks>
        public void WriteHeldOutput()
        {
        }

        public void OnFlag(PayloadTypeFlag flag)
        {
            if (flag != PayloadTypeFlag.ConnectToPortError) return;
            var current = _current;
            if (current == null) return;
            _stats.Fail();
            _log("The bastion could not connect to the destination port.");
            current.Queue.Fail();
            Abort(current.Client);
        }

        private static void Abort(TcpClient client)
        {
            try
            {
                client.Client.LingerState = new LingerOption(true, 0);
                client.Client.Close();
            }
            catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            _lifetime.Cancel();
            var current = _current;
            if (current != null)
            {
                current.Queue.Fail();
                current.Client.Dispose();
            }
        }
    }
}
