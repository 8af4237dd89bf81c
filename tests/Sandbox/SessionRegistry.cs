using System;
using System.Collections.Generic;
using System.Linq;
using System.Security.Cryptography;
using BastionTools.Aws;

namespace BastionTools.Sandbox
{
    /// <summary>Life of a Session Manager session in the sandbox (the subset of SSM's SessionStatus that matters here).</summary>
    public enum SandboxSessionState
    {
        /// <summary>Started (or resumed) by the API, no data channel open yet.</summary>
        Connecting,
        /// <summary>A data channel is open (set by the WebSocket part).</summary>
        Connected,
        /// <summary>The data channel closed; ResumeSession can bring it back.</summary>
        Disconnected,
        /// <summary>Ended by TerminateSession (or by the agent); cannot be resumed.</summary>
        Terminated,
        /// <summary>
        /// Ended by the idle timeout (<see cref="SessionRegistry.TimeOut"/>): the data channel is gone and ResumeSession
        /// answers with the SessionId and no token (the official client then prints "Session: &lt;id&gt; timed out.").
        /// </summary>
        TimedOut,
    }

    /// <summary>One session started through StartSession. Token and state change under the registry's lock.</summary>
    public sealed class SandboxSession
    {
        internal SandboxSession(string sessionId, string target, string documentName, bool documentNameGiven,
            IReadOnlyDictionary<string, IReadOnlyList<string>> parameters, string? reason, string accessKeyId, DateTime startedUtc, string token)
        {
            SessionId = sessionId;
            Target = target;
            DocumentName = documentName;
            DocumentNameGiven = documentNameGiven;
            Parameters = parameters;
            Reason = reason;
            AccessKeyId = accessKeyId;
            StartedUtc = startedUtc;
            CurrentToken = token;
        }

        public string SessionId { get; }
        /// <summary>The instance id given as Target.</summary>
        public string Target { get; }
        /// <summary>The document in effect: SSM-SessionManagerRunShell when StartSession had no DocumentName.</summary>
        public string DocumentName { get; }
        public bool DocumentNameGiven { get; }
        /// <summary>Parameters as sent, with the document's defaults filled in (portNumber 80, localPortNumber 0 for port documents).</summary>
        public IReadOnlyDictionary<string, IReadOnlyList<string>> Parameters { get; }
        public string? Reason { get; }
        /// <summary>The access key id that started the session.</summary>
        public string AccessKeyId { get; }
        public DateTime StartedUtc { get; }
        /// <summary>The token the data channel must present in OpenDataChannel; replaced by ResumeSession.</summary>
        public string CurrentToken { get; internal set; }
        /// <summary>How many tokens were issued (1 after StartSession, +1 per ResumeSession).</summary>
        public int TokenCount { get; internal set; } = 1;
        public SandboxSessionState State { get; internal set; } = SandboxSessionState.Connecting;
        public DateTime? EndedUtc { get; internal set; }
        /// <summary>
        /// inputs.kmsKeyId of the session's document: the Session Manager preferences when the session started (the
        /// service merges them into the document the agent receives); null for no session encryption.
        /// </summary>
        public string? KmsKeyId { get; internal set; }
        /// <summary>The ARN of the identity that started the session (DescribeSessions' Owner).</summary>
        public string? OwnerArn { get; internal set; }

        public bool IsPortForwarding => DocumentName == SsmDocuments.PortForwarding || DocumentName == SsmDocuments.PortForwardingToRemoteHost;
        public bool IsShell => DocumentName == SsmDocuments.Shell;
        public bool IsNonInteractiveCommand => DocumentName == SsmDocuments.NonInteractiveCommand;

        /// <summary>The first value of a parameter, or null.</summary>
        public string? Parameter(string name) => Parameters.TryGetValue(name, out var v) && v.Count > 0 ? v[0] : null;

        public override string ToString() => SessionId + " (" + Target + ", " + DocumentName + ", " + State + ")";
    }

    /// <summary>The Session Manager documents the sandbox knows.</summary>
    public static class SsmDocuments
    {
        public const string PortForwarding = "AWS-StartPortForwardingSession";
        public const string PortForwardingToRemoteHost = "AWS-StartPortForwardingSessionToRemoteHost";
        public const string Shell = "SSM-SessionManagerRunShell";
        /// <summary>Runs one command without a terminal (parameter "command"); plugin NonInteractiveCommands.</summary>
        public const string NonInteractiveCommand = "AWS-StartNonInteractiveCommand";

        public static readonly IReadOnlyList<string> All = new[] { PortForwarding, PortForwardingToRemoteHost, Shell, NonInteractiveCommand };
    }

    /// <summary>
    /// Sessions started through the SSM API. The data-channel (WebSocket) part reads it: it checks the OpenDataChannel
    /// token with <see cref="TryValidateToken"/>, reports state with <see cref="MarkConnected"/> / <see cref="MarkDisconnected"/>,
    /// and listens to <see cref="SessionTerminated"/> to close channels when TerminateSession is called.
    /// </summary>
    public sealed class SessionRegistry
    {
        private readonly object _gate = new();
        private readonly Dictionary<string, SandboxSession> _sessions = new(StringComparer.Ordinal);

        /// <summary>Raised (outside the lock) when a session becomes Terminated.</summary>
        public event Action<SandboxSession>? SessionTerminated;

        /// <summary>Raised (outside the lock) when a session becomes TimedOut.</summary>
        public event Action<SandboxSession>? SessionTimedOut;

        public IReadOnlyList<SandboxSession> Snapshot()
        {
            lock (_gate) return _sessions.Values.OrderBy(s => s.StartedUtc).ToList();
        }

        public bool TryGet(string sessionId, out SandboxSession session)
        {
            lock (_gate) return _sessions.TryGetValue(sessionId, out session!);
        }

        /// <summary>True when the session exists, has not ended (terminated or timed out) and <paramref name="token"/> is its current token (constant-time compare).</summary>
        public bool TryValidateToken(string sessionId, string token, out SandboxSession session)
        {
            lock (_gate)
            {
                if (!_sessions.TryGetValue(sessionId, out session!)) return false;
                if (IsEnded(session.State)) return false;
                return token != null && SigV4.FixedTimeEquals(session.CurrentToken, token);
            }
        }

        public bool MarkConnected(string sessionId) => SetState(sessionId, SandboxSessionState.Connected);

        public bool MarkDisconnected(string sessionId) => SetState(sessionId, SandboxSessionState.Disconnected);

        private bool SetState(string sessionId, SandboxSessionState state)
        {
            lock (_gate)
            {
                if (!_sessions.TryGetValue(sessionId, out var s) || IsEnded(s.State)) return false;
                s.State = state;
                return true;
            }
        }

        private static bool IsEnded(SandboxSessionState state) => state == SandboxSessionState.Terminated || state == SandboxSessionState.TimedOut;

        /// <summary>
        /// The session timed out (as the idle timeout ends one): the agent ends the channel (no channel_closed; a current
        /// connection is dropped without a close frame), the token stops working and ResumeSession answers without a
        /// token. Idempotent; a terminated session stays terminated. Returns false for an unknown id.
        /// </summary>
        public bool TimeOut(string sessionId, DateTime whenUtc)
        {
            SandboxSession? timedOut = null;
            lock (_gate)
            {
                if (!_sessions.TryGetValue(sessionId, out var s)) return false;
                if (!IsEnded(s.State))
                {
                    s.State = SandboxSessionState.TimedOut;
                    s.EndedUtc = whenUtc;
                    timedOut = s;
                }
            }
            if (timedOut != null) SessionTimedOut?.Invoke(timedOut);
            return true;
        }

        /// <summary>Ends a session (idempotent; a timed-out session becomes terminated). Returns false for an unknown id.</summary>
        public bool Terminate(string sessionId, DateTime nowUtc)
        {
            SandboxSession? ended = null;
            lock (_gate)
            {
                if (!_sessions.TryGetValue(sessionId, out var s)) return false;
                if (s.State != SandboxSessionState.Terminated)
                {
                    s.State = SandboxSessionState.Terminated;
                    s.EndedUtc = nowUtc;
                    ended = s;
                }
            }
            if (ended != null) SessionTerminated?.Invoke(ended);
            return true;
        }

        internal SandboxSession Add(string userName, string target, string documentName, bool documentNameGiven,
            IReadOnlyDictionary<string, IReadOnlyList<string>> parameters, string? reason, string accessKeyId, DateTime nowUtc)
        {
            lock (_gate)
            {
                string id;
                do
                {
                    id = userName + "-" + RandomHex(17);
                } while (_sessions.ContainsKey(id));
                var session = new SandboxSession(id, target, documentName, documentNameGiven, parameters, reason, accessKeyId, nowUtc, NewToken());
                _sessions.Add(id, session);
                return session;
            }
        }

        /// <summary>
        /// Issues a new token for a session that has not ended; the old token stops working. False for an unknown,
        /// terminated (<paramref name="terminated"/>) or timed-out (<paramref name="timedOut"/>) session.
        /// </summary>
        internal bool TryResume(string sessionId, out SandboxSession session, out bool terminated, out bool timedOut)
        {
            lock (_gate)
            {
                terminated = false;
                timedOut = false;
                if (!_sessions.TryGetValue(sessionId, out session!)) return false;
                if (session.State == SandboxSessionState.Terminated)
                {
                    terminated = true;
                    return false;
                }
                if (session.State == SandboxSessionState.TimedOut)
                {
                    timedOut = true;
                    return false;
                }
                session.CurrentToken = NewToken();
                session.TokenCount++;
                session.State = SandboxSessionState.Connecting;
                return true;
            }
        }

        private static string RandomHex(int length)
        {
            var bytes = RandomNumberGenerator.GetBytes((length + 1) / 2);
            return SigV4.Hex(bytes).Substring(0, length);
        }

        /// <summary>An opaque token shaped like SSM's (base64 text starting with AAEAA).</summary>
        private static string NewToken()
        {
            var bytes = new byte[3 + 189];
            bytes[0] = 0x00; bytes[1] = 0x01; bytes[2] = 0x00;
            RandomNumberGenerator.Fill(bytes.AsSpan(3));
            return Convert.ToBase64String(bytes);
        }
    }
}
