using System;
using System.Collections.Generic;
using System.Net.Sockets;

namespace BastionTools.Ssm
{
    /// <summary>
    /// The sockets of one port session (its local connections, and the data channel's WebSocket through
    /// <see cref="InlineChanged"/>): inline completions (<see cref="SocketCompletions"/>) while the session carries at most
    /// <see cref="MaxInlineConnections"/> local connection, the thread pool while it carries more, so that busy
    /// connections are handled on every core. A multiplexed session that reads its connections on its reader thread
    /// (<see cref="LocalReadReactor"/>) keeps its WebSocket inline whatever this says: no local read competes for it.
    /// </summary>
    internal sealed class InlineSocketGroup
    {
        /// <summary>
        /// One: a single connection asks and waits, so nothing runs beside its work and the hand-over to the pool is pure
        /// cost (+0.27-0.34 ms per `select 1` on loopback, 0.17-0.27 inline); 32 connections across a 10 ms link waited
        /// about 1 ms longer inline (p50) than with the pool; 8 measured the same either way.
        /// </summary>
        public const int MaxInlineConnections = 1;

        private readonly object _gate = new();
        private readonly HashSet<Socket> _sockets = new();
        private readonly bool _enabled;
        private bool _inline;

        /// <param name="enabled">False: every socket keeps the pool (<see cref="DataChannelOptions.InlineSocketCompletions"/> off, or a runtime without it).</param>
        public InlineSocketGroup(bool enabled)
        {
            _enabled = enabled && SocketCompletions.Supported;
            _inline = _enabled;
        }

        /// <summary>Whether the group's sockets run their completions inline now.</summary>
        public bool Inline
        {
            get { lock (_gate) return _inline; }
        }

        /// <summary>Raised (under the group's lock, so in order) when <see cref="Inline"/> changes: the data channel follows it.</summary>
        public event Action<bool>? InlineChanged;

        /// <summary>A local connection was accepted: before its first read, it takes the group's mode, which it may change.</summary>
        public void Add(Socket socket)
        {
            if (socket is null) throw new ArgumentNullException(nameof(socket));
            lock (_gate)
            {
                _sockets.Add(socket);
                if (!Update()) SocketCompletions.SetInline(socket, _inline);
            }
        }

        /// <summary>A local connection ended.</summary>
        public void Remove(Socket socket)
        {
            if (socket is null) throw new ArgumentNullException(nameof(socket));
            lock (_gate)
            {
                if (_sockets.Remove(socket)) Update();
            }
        }

        /// <summary>Sets every socket's mode when the count crossed the limit; true when it did.</summary>
        private bool Update()
        {
            var wanted = _enabled && _sockets.Count <= MaxInlineConnections;
            if (wanted == _inline) return false;
            _inline = wanted;
            foreach (var s in _sockets) SocketCompletions.SetInline(s, wanted);
            InlineChanged?.Invoke(wanted);
            return true;
        }
    }
}
