using System;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Threading;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Lets the tunnel's own sockets run their completions on the socket engine's thread (.NET on Linux and macOS).
    /// </summary>
    /// <remarks>
    /// On Unix, .NET waits for every socket with one epoll (kqueue) thread and hands each completed read or write to the
    /// thread pool: a wake-up of a pool thread per completion, and that thread then spins a while for more work before it
    /// sleeps. A tunnel makes three such completions per small request and answer (the local client's request, the
    /// agent's answer, the agent's acknowledgement), so on a small machine that hand-over is most of what the tunnel
    /// costs: with it, one client of `select 1` measured 0.27-0.34 ms more per transaction than direct and 300-420 us of
    /// this process's CPU per transaction; run on the engine's thread, 0.17-0.27 ms and 100-190 us (issue 11's
    /// concurrency bench, runs of both kinds alternating on a 2-core VM; lower in every pair).
    /// <para>
    /// .NET has that per socket, <c>Socket.PreferInlineCompletions</c> (what DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS
    /// turns on for the whole process): an internal property that the runtime keeps for callers through reflection
    /// (its setter carries a DynamicDependency for that purpose). Where it is missing (.NET Framework, Windows, whose
    /// completion ports have no such hand-over, or a runtime without it) nothing changes.
    /// </para>
    /// <para>
    /// Inline, every socket's work runs on that one thread: with several local connections busy at once, their requests
    /// and answers are handled one after another instead of on every core, and across a 10 ms link 32 clients of
    /// `select 1` waited about 1 ms longer (p50) than with the pool. So a multiplexed port session reads its local
    /// connections on a thread of its own (<see cref="LocalReadReactor"/>) and keeps only the WebSocket here, whatever the
    /// number of connections; a basic session runs its sockets inline only while it carries at most
    /// <see cref="InlineSocketGroup.MaxInlineConnections"/> local connection and hands them back to the pool while more are
    /// open (<see cref="InlineSocketGroup"/>, which also decides where a multiplexed session's local sockets complete their
    /// queued writes).
    /// </para>
    /// <para>
    /// What runs inline must never block: it holds up every socket of the process. Only code whose continuations do
    /// not wait synchronously may use it: the port forwarding session's data channel and local connections (their work
    /// after a read is decoding, acknowledging and non-blocking writes). A shell session writes to the console on its
    /// receive path and does not use it.
    /// </para>
    /// </remarks>
    internal static class SocketCompletions
    {
        private static readonly MethodInfo? Setter = FindSetter();

        /// <summary>
        /// How many reads in a row that completed at once (data was waiting) a loop handles on the socket engine's thread
        /// before it yields to the thread pool once: such a loop never returns to the engine, so a bulk transfer would
        /// otherwise keep the thread that every other socket of the process waits on. A read that had to wait gave the
        /// thread back and starts the count again, so a request-and-answer exchange never pays the hop (a pool thread
        /// woken, then spinning for more work: on a 2-core VM a yield every 64 reads of every kind cost 20-35 us of CPU
        /// per transaction of one `select 1` client).
        /// </summary>
        public const int MaxTurn = 64;

        /// <summary>
        /// For a loop of reads, after each read: true when the loop should <c>await Task.Yield()</c> (which then goes to the
        /// pool): <see cref="MaxTurn"/> reads in a row completed at once (<paramref name="completedAtOnce"/>) on the socket
        /// engine's thread (off the thread pool, no synchronization context). Always false on a pool thread or on a thread
        /// with a context (Task.Yield would post to it).
        /// </summary>
        public static bool TakeTurn(ref int turn, bool completedAtOnce)
        {
            if (!completedAtOnce || Thread.CurrentThread.IsThreadPoolThread || SynchronizationContext.Current != null)
            {
                turn = 0;
                return false;
            }
            if (++turn < MaxTurn) return false;
            turn = 0;
            return true;
        }

        /// <summary>True where the runtime can run a socket's completions inline.</summary>
        public static bool Supported => Setter != null;

        /// <summary>
        /// Asks for <paramref name="socket"/>'s completions to run on the engine's thread (<paramref name="inline"/>) or to
        /// be handed to the thread pool again (the runtime looks at it for every event, so it can change at any time);
        /// false where that is not supported.
        /// </summary>
        public static bool SetInline(Socket socket, bool inline)
        {
            if (socket is null) throw new ArgumentNullException(nameof(socket));
            if (Setter == null) return false;
            try
            {
                Setter.Invoke(socket, new object[] { inline });
                return true;
            }
            catch (Exception ex) when (ex is TargetInvocationException || ex is MemberAccessException || ex is ArgumentException || ex is ObjectDisposedException)
            {
                return false;
            }
        }

        private static MethodInfo? FindSetter()
        {
            if (RuntimeInformation.IsOSPlatform(OSPlatform.Windows)) return null;
            try
            {
                var property = typeof(Socket).GetProperty("PreferInlineCompletions", BindingFlags.Instance | BindingFlags.NonPublic);
                return property != null && property.PropertyType == typeof(bool) ? property.GetSetMethod(nonPublic: true) : null;
            }
            catch (Exception ex) when (ex is AmbiguousMatchException || ex is MemberAccessException)
            {
                return null;
            }
        }
    }
}
