using System;
using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading;
using System.Threading.Channels;
using System.Threading.Tasks;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class FaultProxyTests
    {
        /// <summary>How long a read must stay pending to count as "nothing arrived" (no data, no FIN, no RST).</summary>
        private static readonly TimeSpan SilenceGuard = TimeSpan.FromMilliseconds(1500);
        /// <summary>Upper bound for things that must happen (never a performance assertion).</summary>
        private static readonly TimeSpan Generous = TimeSpan.FromSeconds(20);

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Relay_BothWays_BytesUnchanged_AndHalfClosePassesThrough()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);

            var up = RandomBytes(4 * 1024 * 1024 + 17, seed: 1);
            var down = RandomBytes(3 * 1024 * 1024 + 5, seed: 2);

            // The server sends its payload while it reads everything; after the client's FIN it answers the hash of what it read.
            var serverSide = Task.Run(async () =>
            {
                var sending = SendAllAsync(upstream, down);
                var received = await ReceiveToEndAsync(upstream);
                await sending;
                await SendAllAsync(upstream, SHA256.HashData(received));
                upstream.Shutdown(SocketShutdown.Send);
                upstream.Close();
                return received.Length;
            });
            var clientReading = Task.Run(() => ReceiveToEndAsync(client));
            await SendAllAsync(client, up);
            client.Shutdown(SocketShutdown.Send);

            var got = await clientReading.WaitAsync(Generous);
            Assert.Equal(up.Length, await serverSide.WaitAsync(Generous));
            Assert.Equal(down.Length + 32, got.Length);
            Assert.Equal(SHA256.HashData(down), SHA256.HashData(got.AsSpan(0, down.Length)));
            Assert.Equal(SHA256.HashData(up), got.AsSpan(down.Length).ToArray());

            // The client saw the FIN the proxy passed on after its last write: the counters are final.
            Assert.Equal(up.Length, proxy.BytesClientToServer);
            Assert.Equal(down.Length + 32, proxy.BytesServerToClient);
            Assert.Equal(1, proxy.Accepted);
            await WaitUntilAsync(() => proxy.ActiveConnections == 0, "the connection is closed once both directions ended");
            Assert.Equal(0, proxy.BlackholedConnections);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Blackout_ExistingConnection_GoesSilent_AndStaysDeadAfterwards()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);
            await PingPongAsync(client, upstream, "ping", "pong");

            proxy.StartBlackout();
            Assert.True(proxy.IsBlackout);
            Assert.Equal(1, proxy.BlackholedConnections);

            var clientRead = client.ReceiveAsync(new byte[64], SocketFlags.None);
            var serverRead = upstream.ReceiveAsync(new byte[64], SocketFlags.None);
            await SendAllAsync(client, Encoding.ASCII.GetBytes("lost-1"));
            await SendAllAsync(upstream, Encoding.ASCII.GetBytes("lost-2"));
            // Not even a FIN gets through.
            upstream.Shutdown(SocketShutdown.Send);
            await AssertPendingAsync(clientRead, "the client must see no data, no FIN and no reset during the blackout");
            await AssertPendingAsync(serverRead, "the server must see no data during the blackout");

            proxy.EndBlackout();
            Assert.False(proxy.IsBlackout);
            await SendAllAsync(client, Encoding.ASCII.GetBytes("lost-3"));
            client.Shutdown(SocketShutdown.Send);
            await AssertPendingAsync(clientRead, "the connection stays dead after the blackout");
            await AssertPendingAsync(serverRead, "the connection stays dead after the blackout");

            Assert.Equal(4, proxy.BytesClientToServer);
            Assert.Equal(4, proxy.BytesServerToClient);
            Assert.Equal(1, proxy.ActiveConnections); // kept open: nobody is told

            // A connection made after the blackout works.
            using var fresh = await ConnectAsync(proxy);
            var freshUpstream = await server.AcceptAsync(Generous);
            await PingPongAsync(fresh, freshUpstream, "again", "works");

            await proxy.DisposeAsync();
            await Observe(clientRead, serverRead);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Blackout_NewConnection_IsHeldUntilTheEnd_ThenDeliversWhatWasSent()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            proxy.StartBlackout();

            using var client = await ConnectAsync(proxy);
            // More than the proxy keeps (1 MiB): beyond that it stops reading, and nothing may be lost.
            var early = RandomBytes(3 * 1024 * 1024, seed: 3);
            var sending = SendAllAsync(client, early);
            await WaitUntilAsync(() => proxy.Accepted == 1, "the proxy accepts during a blackout");
            var accepting = server.AcceptAsync(Timeout.InfiniteTimeSpan);
            await Task.WhenAny(accepting, Task.Delay(SilenceGuard));
            Assert.False(accepting.IsCompleted, "a connection accepted during a blackout must not reach the server before it ends");
            Assert.Equal(0, server.Accepted);
            Assert.Equal(1, proxy.ActiveConnections);
            Assert.Equal(0, proxy.BlackholedConnections);

            proxy.EndBlackout();
            var upstream = await accepting.WaitAsync(Generous);
            var received = await ReceiveExactlyAsync(upstream, early.Length);
            Assert.Equal(SHA256.HashData(early), SHA256.HashData(received));
            await sending.WaitAsync(Generous);
            await PingPongAsync(client, upstream, "after", "works");
            Assert.Equal(early.Length + 5, proxy.BytesClientToServer);
            Assert.Equal(0, proxy.BlackholedConnections);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task BlackoutAsync_EndsByItself_NewConnectionsWork_OldOneStaysDead()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);
            await PingPongAsync(client, upstream, "a", "b");

            var blackout = proxy.BlackoutAsync(TimeSpan.FromMilliseconds(300));
            Assert.True(proxy.IsBlackout);
            await blackout.WaitAsync(Generous);
            Assert.False(proxy.IsBlackout);
            Assert.Equal(1, proxy.BlackholedConnections);

            var clientRead = client.ReceiveAsync(new byte[16], SocketFlags.None);
            await SendAllAsync(upstream, Encoding.ASCII.GetBytes("x"));
            await AssertPendingAsync(clientRead, "a connection silenced by a blackout stays dead");

            using var fresh = await ConnectAsync(proxy);
            var freshUpstream = await server.AcceptAsync(Generous);
            await PingPongAsync(fresh, freshUpstream, "c", "d");

            await proxy.DisposeAsync();
            await Observe(clientRead);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ResetAll_BothPeersSeeAReset()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);
            await PingPongAsync(client, upstream, "ping", "pong");

            var clientRead = client.ReceiveAsync(new byte[16], SocketFlags.None);
            var serverRead = upstream.ReceiveAsync(new byte[16], SocketFlags.None);
            proxy.ResetAll();

            var clientError = await Assert.ThrowsAsync<SocketException>(() => clientRead.WaitAsync(Generous));
            Assert.Equal(SocketError.ConnectionReset, clientError.SocketErrorCode);
            var serverError = await Assert.ThrowsAsync<SocketException>(() => serverRead.WaitAsync(Generous));
            Assert.Equal(SocketError.ConnectionReset, serverError.SocketErrorCode);
            await WaitUntilAsync(() => proxy.ActiveConnections == 0, "reset connections are gone");

            using var fresh = await ConnectAsync(proxy);
            var freshUpstream = await server.AcceptAsync(Generous);
            await PingPongAsync(fresh, freshUpstream, "still", "works");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ResetByTheServer_ResetsTheClient()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);
            await PingPongAsync(client, upstream, "ping", "pong");

            var clientRead = client.ReceiveAsync(new byte[16], SocketFlags.None);
            upstream.LingerState = new LingerOption(true, 0);
            upstream.Close();

            var error = await Assert.ThrowsAsync<SocketException>(() => clientRead.WaitAsync(Generous));
            Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
            await WaitUntilAsync(() => proxy.ActiveConnections == 0, "the reset connection is gone");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task HalfOpen_ServerToClient_ClientBytesArrive_ClientReceivesNothing()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);
            await PingPongAsync(client, upstream, "ping", "pong");

            proxy.HalfOpen(ProxyDirection.ServerToClient);
            Assert.True(proxy.IsHalfOpen(ProxyDirection.ServerToClient));
            Assert.False(proxy.IsHalfOpen(ProxyDirection.ClientToServer));

            var clientRead = client.ReceiveAsync(new byte[16], SocketFlags.None);
            await SendAllAsync(client, Encoding.ASCII.GetBytes("hello"));
            Assert.Equal("hello", Encoding.ASCII.GetString(await ReceiveExactlyAsync(upstream, 5)));
            await SendAllAsync(upstream, Encoding.ASCII.GetBytes("reply"));
            upstream.Shutdown(SocketShutdown.Send);
            await AssertPendingAsync(clientRead, "the server-to-client direction is silently dropped (data and FIN)");
            Assert.Equal(4, proxy.BytesServerToClient); // "pong" only: "reply" was dropped
            Assert.Equal(9, proxy.BytesClientToServer);

            // Heal: new connections are whole again; the half-open one stays so.
            proxy.Heal();
            Assert.False(proxy.IsHalfOpen(ProxyDirection.ServerToClient));
            using var fresh = await ConnectAsync(proxy);
            var freshUpstream = await server.AcceptAsync(Generous);
            await PingPongAsync(fresh, freshUpstream, "new", "fine");
            await SendAllAsync(client, Encoding.ASCII.GetBytes("more"));
            Assert.Equal("more", Encoding.ASCII.GetString(await ReceiveExactlyAsync(upstream, 4)));
            Assert.False(clientRead.IsCompleted, "the half-open connection stays half-open after Heal");

            await proxy.DisposeAsync();
            await Observe(clientRead);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Latency_DelaysEachDirection_NeverEarly_KeepsOrder_AndDelaysTheFin()
        {
            var latency = TimeSpan.FromMilliseconds(120);
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint) { Latency = latency };
            Assert.Equal(latency, proxy.Latency);
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);

            // One way: the server gets the bytes no sooner than the latency after they were sent.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            await SendAllAsync(client, Encoding.ASCII.GetBytes("ping"));
            Assert.Equal("ping", Encoding.ASCII.GetString(await ReceiveExactlyAsync(upstream, 4)));
            var oneWay = clock.Elapsed;
            Assert.True(oneWay >= latency, $"the bytes arrived after {oneWay.TotalMilliseconds:F1} ms, before the latency");

            // A round trip: at least twice the latency.
            clock.Restart();
            await PingPongAsync(client, upstream, "again", "pong");
            Assert.True(clock.Elapsed >= 2 * latency, $"the round trip took {clock.Elapsed.TotalMilliseconds:F1} ms, less than twice the latency");

            // Many chunks both ways at once: every byte, in order, whatever the timers do.
            var up = RandomBytes(2 * 1024 * 1024 + 3, seed: 5);
            var down = RandomBytes(1024 * 1024 + 9, seed: 6);
            var serverReading = Task.Run(() => ReceiveToEndAsync(upstream));
            var clientReading = Task.Run(() => ReceiveExactlyAsync(client, down.Length));
            var serverSending = Task.Run(async () =>
            {
                for (var offset = 0; offset < down.Length; offset += 4096)
                    await SendAllAsync(upstream, down.AsSpan(offset, Math.Min(4096, down.Length - offset)).ToArray());
            });
            await SendAllAsync(client, up);

            // The FIN comes after the bytes before it, and a latency after it was sent.
            var finSent = System.Diagnostics.Stopwatch.StartNew();
            client.Shutdown(SocketShutdown.Send);
            var gotUp = await serverReading.WaitAsync(Generous);
            var finAfter = finSent.Elapsed;
            Assert.Equal(SHA256.HashData(up), SHA256.HashData(gotUp));
            Assert.True(finAfter >= latency, $"the FIN arrived {finAfter.TotalMilliseconds:F1} ms after it was sent, before the latency");
            await serverSending.WaitAsync(Generous);
            Assert.Equal(SHA256.HashData(down), SHA256.HashData(await clientReading.WaitAsync(Generous)));
            upstream.Shutdown(SocketShutdown.Send);
            Assert.Empty(await ReceiveToEndAsync(client).WaitAsync(Generous));
            await WaitUntilAsync(() => proxy.ActiveConnections == 0, "the connection is closed once both FINs were delivered");
            Assert.Equal(up.Length + 9, proxy.BytesClientToServer);
            Assert.Equal(down.Length + 4, proxy.BytesServerToClient);

            Assert.Throws<ArgumentOutOfRangeException>(() => proxy.Latency = TimeSpan.FromMilliseconds(-1));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Latency_BytesKeptWhileTheConnectionWasHeld_AreDelayedToo()
        {
            // CI caught "ping" 13.5 ms after it was sent with a 120 ms latency: the client's first bytes were read before
            // the connection was upstream and delivered from the held queue, past the delay line.
            var latency = TimeSpan.FromMilliseconds(120);
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint) { Latency = latency };
            proxy.StartBlackout();
            using var client = await ConnectAsync(proxy);
            await SendAllAsync(client, Encoding.ASCII.GetBytes("early"));
            await WaitUntilAsync(() => proxy.HeldBytes == 5, "the proxy keeps the bytes of the held connection");

            var released = System.Diagnostics.Stopwatch.StartNew();
            proxy.EndBlackout();
            var upstream = await server.AcceptAsync(Generous);
            Assert.Equal("early", Encoding.ASCII.GetString(await ReceiveExactlyAsync(upstream, 5)));
            var after = released.Elapsed;
            Assert.True(after >= latency, $"the kept bytes arrived {after.TotalMilliseconds:F1} ms after the connection went upstream, before the latency");
            Assert.Equal(0, proxy.HeldBytes);
            await PingPongAsync(client, upstream, "next", "pong");
            Assert.Equal(9, proxy.BytesClientToServer);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Latency_AResetStillPassesOn_WhileBytesAreInFlight()
        {
            await using var server = new TestServer();
            await using var proxy = new FaultProxy(server.EndPoint) { Latency = TimeSpan.FromMilliseconds(200) };
            using var client = await ConnectAsync(proxy);
            var upstream = await server.AcceptAsync(Generous);
            await SendAllAsync(client, RandomBytes(64 * 1024, seed: 7));
            // The server resets while the client's bytes are still on the long link: the client sees the reset, and the
            // connection ends (the delayed bytes are lost with it, as on a real link).
            upstream.LingerState = new LingerOption(true, 0);
            upstream.Close();
            var read = ReceiveToEndAsync(client);
            await Assert.ThrowsAnyAsync<SocketException>(() => read.WaitAsync(Generous));
            await WaitUntilAsync(() => proxy.ActiveConnections == 0, "the aborted connection is gone");
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task SandboxHost_WithFaultProxy_RoutesClientsThroughIt_AndServesTheControls()
        {
            await using var host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions { FaultProxy = true });
            host.Start();
            var proxy = host.Proxy;
            Assert.NotNull(proxy);
            Assert.NotEqual(host.Port, proxy!.Port);
            Assert.Equal(host.Port, proxy.Target.Port);
            Assert.Equal(proxy.Port, host.ClientPort);
            Assert.Equal(proxy.Port, host.SsmEndpoint.Port);
            Assert.Equal(proxy.Port, host.Ec2Endpoint.Port);
            Assert.Equal(host.Port, host.ControlEndpoint.Port);
            Assert.StartsWith("ws://127.0.0.1:" + proxy.Port + "/streams", host.StreamUrlBase);

            using (var described = JsonDocument.Parse(host.DescribeJson()))
            {
                var p = described.RootElement.GetProperty("proxy");
                Assert.Equal(proxy.Port, p.GetProperty("port").GetInt32());
                Assert.Equal("http://127.0.0.1:" + host.Port + "/control/proxy", p.GetProperty("control").GetString());
                Assert.Equal(host.SsmEndpoint.ToString(), described.RootElement.GetProperty("ssm").GetString());
            }

            using (var ssm = SsmClient(host))
            {
                var started = await ssm.StartSessionAsync(new StartSessionRequest { Target = "i-0a1b2c3d4e5f60001" });
                Assert.StartsWith("ws://127.0.0.1:" + proxy.Port + "/streams/" + started.SessionId + "?", started.StreamUrl);
            }
            Assert.Contains(host.Calls, c => c.Operation == "StartSession" && c.Status == 200);
            Assert.True(proxy.Accepted >= 1);
            Assert.True(proxy.BytesClientToServer > 0);
            Assert.True(proxy.BytesServerToClient > 0);

            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var control = new Uri(host.ControlEndpoint, "proxy");

            var (status, json) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/blackout?seconds=0.5"));
            Assert.Equal(200, status);
            Assert.True(json.GetProperty("isBlackout").GetBoolean());
            // The blackout ends by itself; the control endpoint stays reachable meanwhile (it is direct).
            await WaitUntilAsync(async () =>
            {
                var (s, j) = await SendAsync(http, HttpMethod.Get, control);
                return s == 200 && !j.GetProperty("isBlackout").GetBoolean();
            }, "the blackout ends after 0.5 s");
            Assert.False(proxy.IsBlackout);

            (status, json) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/blackout"));
            Assert.Equal(200, status);
            Assert.True(proxy.IsBlackout);
            (status, json) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/halfopen?direction=ServerToClient"));
            Assert.Equal(200, status);
            Assert.Equal("ServerToClient", Assert.Single(json.GetProperty("halfOpen").EnumerateArray()).GetString());
            (status, json) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/restore"));
            Assert.Equal(200, status);
            Assert.False(json.GetProperty("isBlackout").GetBoolean());
            Assert.Equal(0, json.GetProperty("halfOpen").GetArrayLength());
            Assert.False(proxy.IsBlackout);
            Assert.False(proxy.IsHalfOpen(ProxyDirection.ServerToClient));

            (status, json) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/latency?ms=25"));
            Assert.Equal(200, status);
            Assert.Equal(25, json.GetProperty("latencyMs").GetDouble());
            Assert.Equal(TimeSpan.FromMilliseconds(25), proxy.Latency);
            (status, _) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/latency?ms=-1"));
            Assert.Equal(400, status);
            (status, _) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/latency"));
            Assert.Equal(400, status);
            // Without PostgreSQL there is no second proxy.
            using (var described = JsonDocument.Parse(host.DescribeJson()))
                Assert.Equal(JsonValueKind.Null, described.RootElement.GetProperty("proxy").GetProperty("postgresPort").ValueKind);

            (status, json) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/reset"));
            Assert.Equal(200, status);
            Assert.True(json.GetProperty("accepted").GetInt64() >= 1);

            (status, _) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/halfopen?direction=Sideways"));
            Assert.Equal(400, status);
            (status, _) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/blackout?seconds=soon"));
            Assert.Equal(400, status);
            (status, _) = await SendAsync(http, HttpMethod.Post, new Uri(control + "/nonsense"));
            Assert.Equal(404, status);

            // After the faults, new connections through the proxy work again.
            using (var ssm = SsmClient(host))
            {
                await ssm.DescribeInstanceInformationAsync(new DescribeInstanceInformationRequest());
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task SandboxHost_WithoutFaultProxy_ControlAnswers404()
        {
            await using var host = Start();
            Assert.Null(host.Proxy);
            Assert.Equal(host.Port, host.SsmEndpoint.Port);
            Assert.DoesNotContain("\"proxy\"", host.DescribeJson());
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
            var (status, json) = await SendAsync(http, HttpMethod.Get, new Uri(host.ControlEndpoint, "proxy"));
            Assert.Equal(404, status);
            Assert.Contains("fault proxy", json.GetProperty("error").GetString());
        }

        private static async Task<(int Status, JsonElement Json)> SendAsync(HttpClient http, HttpMethod method, Uri uri)
        {
            using var response = await http.SendAsync(new HttpRequestMessage(method, uri));
            var text = await response.Content.ReadAsStringAsync();
            using var doc = JsonDocument.Parse(text);
            return ((int)response.StatusCode, doc.RootElement.Clone());
        }

        private static async Task<Socket> ConnectAsync(FaultProxy proxy)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            using var timeout = new CancellationTokenSource(Generous);
            await socket.ConnectAsync(proxy.EndPoint, timeout.Token);
            return socket;
        }

        private static async Task PingPongAsync(Socket client, Socket upstream, string ping, string pong)
        {
            await SendAllAsync(client, Encoding.ASCII.GetBytes(ping));
            Assert.Equal(ping, Encoding.ASCII.GetString(await ReceiveExactlyAsync(upstream, ping.Length)));
            await SendAllAsync(upstream, Encoding.ASCII.GetBytes(pong));
            Assert.Equal(pong, Encoding.ASCII.GetString(await ReceiveExactlyAsync(client, pong.Length)));
        }

        private static async Task SendAllAsync(Socket socket, byte[] data)
        {
            var remaining = data.AsMemory();
            while (remaining.Length > 0)
            {
                var sent = await socket.SendAsync(remaining, SocketFlags.None);
                remaining = remaining.Slice(sent);
            }
        }

        private static async Task<byte[]> ReceiveExactlyAsync(Socket socket, int count)
        {
            var buffer = new byte[count];
            var read = 0;
            while (read < count)
            {
                var n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None).AsTask().WaitAsync(Generous);
                if (n == 0) throw new Xunit.Sdk.XunitException("Connection closed after " + read + " of " + count + " bytes.");
                read += n;
            }
            return buffer;
        }

        private static async Task<byte[]> ReceiveToEndAsync(Socket socket)
        {
            var result = new List<byte>(1 << 20);
            var buffer = new byte[64 * 1024];
            while (true)
            {
                var n = await socket.ReceiveAsync(buffer, SocketFlags.None);
                if (n == 0) return result.ToArray();
                result.AddRange(new ArraySegment<byte>(buffer, 0, n));
            }
        }

        /// <summary>The read must neither complete (data or FIN) nor fail (reset) within the guard.</summary>
        private static async Task AssertPendingAsync(Task read, string because)
        {
            var first = await Task.WhenAny(read, Task.Delay(SilenceGuard));
            if (first == read)
            {
                var outcome = read.IsFaulted ? "failed: " + read.Exception!.GetBaseException().Message : "completed (data or FIN)";
                throw new Xunit.Sdk.XunitException(because + "; the read " + outcome);
            }
        }

        private static Task WaitUntilAsync(Func<bool> condition, string what) =>
            WaitUntilAsync(() => Task.FromResult(condition()), what);

        private static Task WaitUntilAsync(Func<Task<bool>> condition, string what) =>
            SandboxTestSupport.WaitUntilAsync(condition, what, Generous);

        /// <summary>Lets reads left pending end (the proxy was disposed) and observes their outcome.</summary>
        private static async Task Observe(params Task[] tasks)
        {
            foreach (var t in tasks)
            {
                try
                {
                    await t.WaitAsync(Generous);
                }
                catch (Exception ex) when (ex is SocketException || ex is ObjectDisposedException || ex is OperationCanceledException)
                {
                }
            }
        }

        private static byte[] RandomBytes(int count, int seed)
        {
            var bytes = new byte[count];
            new Random(seed).NextBytes(bytes);
            return bytes;
        }

        /// <summary>A listener on 127.0.0.1 that hands each accepted socket to the test.</summary>
        private sealed class TestServer : IAsyncDisposable
        {
            private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            private readonly Channel<Socket> _accepted = Channel.CreateUnbounded<Socket>();
            private readonly List<Socket> _all = new();
            private readonly CancellationTokenSource _stop = new();
            private readonly Task _loop;
            private int _count;

            public TestServer()
            {
                _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                _listener.Listen(64);
                EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
                _loop = Task.Run(async () =>
                {
                    while (true)
                    {
                        Socket s;
                        try
                        {
                            s = await _listener.AcceptAsync(_stop.Token);
                        }
                        catch (Exception)
                        {
                            return;
                        }
                        s.NoDelay = true;
                        lock (_all) _all.Add(s);
                        Interlocked.Increment(ref _count);
                        _accepted.Writer.TryWrite(s);
                    }
                });
            }

            public IPEndPoint EndPoint { get; }
            public int Accepted => Volatile.Read(ref _count);

            public async Task<Socket> AcceptAsync(TimeSpan timeout)
            {
                using var cts = timeout == Timeout.InfiniteTimeSpan ? new CancellationTokenSource() : new CancellationTokenSource(timeout);
                return await _accepted.Reader.ReadAsync(cts.Token);
            }

            public async ValueTask DisposeAsync()
            {
                _stop.Cancel();
                _listener.Dispose();
                await _loop;
                lock (_all)
                {
                    foreach (var s in _all) s.Dispose();
                }
                _stop.Dispose();
            }
        }
    }
}
