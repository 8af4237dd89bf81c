using System;
using System.Management.Automation;
using System.Net;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Which data-channel URLs a session may use. The OpenDataChannel message carries the session token, and the
    /// channel carries the tunnel's bytes: a StreamUrl must be wss://. Plain ws:// is accepted only to a loopback IP
    /// address literal (127.0.0.0/8, ::1), where nothing crosses a network (the sandbox, a local test double). The name
    /// "localhost" is refused: it is resolved (hosts file, DNS) to whatever the machine says, which is not a guarantee.
    /// </summary>
    internal static class StreamUrlPolicy
    {
        /// <summary>Throws <see cref="ErrorIds.StreamUrlInsecure"/> (SecurityError) unless <paramref name="url"/> is allowed.</summary>
        public static void Check(Uri url, string sessionId)
        {
            if (url == null) throw new ArgumentNullException(nameof(url));
            if (!url.IsAbsoluteUri) throw Insecure(url, sessionId, "it is not an absolute URL");
            if (string.Equals(url.Scheme, "wss", StringComparison.OrdinalIgnoreCase)) return;
            if (!string.Equals(url.Scheme, "ws", StringComparison.OrdinalIgnoreCase))
            {
                throw Insecure(url, sessionId, $"its scheme is {url.Scheme}://, not wss://");
            }
            if (IsLoopbackLiteral(url)) return;
            throw Insecure(url, sessionId, $"it is plain ws:// to {url.Host}, which is not a loopback address: the session token and the tunnel's bytes would travel unencrypted");
        }

        /// <summary>True for an IP address literal in 127.0.0.0/8 or ::1 (never a name, not even "localhost").</summary>
        internal static bool IsLoopbackLiteral(Uri url)
        {
            if (url.HostNameType != UriHostNameType.IPv4 && url.HostNameType != UriHostNameType.IPv6) return false;
            var host = url.Host.Trim('[', ']');
            return IPAddress.TryParse(host, out var address) && IPAddress.IsLoopback(address);
        }

        private static BastionToolsException Insecure(Uri url, string sessionId, string why) =>
            new(ErrorIds.StreamUrlInsecure, ErrorCategory.SecurityError,
                // Scheme and authority only: the query of a data-channel URL is the service's business.
                $"Session Manager answered with a data channel URL the module will not use ({Display(url)}): {why}. Session {sessionId} was not opened.",
                Display(url),
                "Check -EndpointUrl and any proxy or endpoint override: Session Manager's data channel is always wss://ssmmessages.<region>.amazonaws.com.");

        private static string Display(Uri url) => url.IsAbsoluteUri ? url.Scheme + "://" + url.Authority : "(relative URL)";
    }
}
