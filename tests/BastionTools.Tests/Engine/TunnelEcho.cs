using System;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Tests.Engine
{
    /// <summary>One round trip through a port-forwarding session's listener to an echo server behind it.</summary>
    internal static class TunnelEcho
    {
        /// <summary>Writes <paramref name="text"/> and returns what came back (at most as many bytes; less if the tunnel closed).</summary>
        public static async Task<string> RoundTripAsync(PortForwardingSession session, string text)
        {
            using var client = new TcpClient();
            await client.ConnectAsync(IPAddress.Loopback, session.LocalEndPoint!.Port);
            var stream = client.GetStream();
            var bytes = Encoding.UTF8.GetBytes(text);
            await stream.WriteAsync(bytes);
            var back = new byte[bytes.Length];
            var read = 0;
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            while (read < back.Length)
            {
                var n = await stream.ReadAsync(back.AsMemory(read), timeout.Token);
                if (n == 0) break;
                read += n;
            }
            return Encoding.UTF8.GetString(back, 0, read);
        }
    }
}
