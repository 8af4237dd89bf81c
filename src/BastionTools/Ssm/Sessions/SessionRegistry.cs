using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;

namespace BastionTools.Ssm
{
    /// <summary>The sessions this PowerShell process has open (Get-BastionSession, Stop-BastionSession, module removal).</summary>
    internal static class SessionRegistry
    {
        private static readonly ConcurrentDictionary<string, BastionSession> Sessions = new();

        public static void Add(BastionSession session) => Sessions[session.SessionId] = session;

        public static void Remove(BastionSession session) => Sessions.TryRemove(session.SessionId, out _);

        public static IReadOnlyList<BastionSession> All() => Sessions.Values.OrderBy(s => s.Engine.StartedAtUtc).ToList();

        public static BastionSession? Find(string sessionId) => Sessions.TryGetValue(sessionId, out var s) ? s : null;

        /// <summary>Stops every session (module removal, process exit).</summary>
        public static void StopAll()
        {
            var all = Sessions.Values.ToList();
            Task.WaitAll(all.Select(s => s.Engine.StopAsync()).ToArray(), System.TimeSpan.FromSeconds(20));
            Sessions.Clear();
        }
    }
}
