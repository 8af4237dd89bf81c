using System.Net;
using System.Net.Sockets;
using System.Threading.Tasks;
using BastionTools.Sandbox;

namespace BastionTools.Tests.Sandbox
{
    /// <summary>Whether a stopped listener's port still takes connections.</summary>
    internal static class LoopbackProbe
    {
        /// <summary>
        /// True when nothing accepts on <paramref name="address"/>:<paramref name="port"/>: the connection is refused, or
        /// the probe met itself. With nothing bound to a port in the ephemeral range, Linux may give the connecting socket
        /// that very port as its own, and its SYN then meets itself (TCP simultaneous open) and "connects": a false
        /// "still listening" now and then, not something listening. A listener that still accepts makes it false.
        /// </summary>
        public static async Task<bool> RefusedAsync(IPAddress address, int port)
        {
            using var probe = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await probe.ConnectAsync(address, port);
            }
            catch (SocketException)
            {
                return true;
            }
            return PostgresCluster.IsSelfConnection(probe);
        }
    }
}
