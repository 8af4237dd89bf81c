using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The WebSocket client against real sockets on 127.0.0.1: well-behaved servers are .NET's own server-side WebSocket
    /// (after a hand-written upgrade), hostile ones write raw bytes. No timing margins: waits are on conditions, and the
    /// timeouts are failure guards only.
    /// </summary>
    public class WebSocketTransportTests
    {
        private const string Secret = "SECRET-TOKEN-4711";
        private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

        // ---- well-behaved peers ----

        [Fact]
        public async Task BinaryAndTextMessagesRoundTripIncludingOneMebibyteMinusOne()
        {
            string? request = null;
            using var server = new TestServer(async stream =>
            {
                request = await AcceptUpgradeAsync(stream);
                using var ws = ServerSocket(stream);
                for (var i = 0; i < 3; i++)
                {
                    var (type, data) = await ReceiveWholeAsync(ws);
                    await ws.SendAsync(data, type, endOfMessage: true, CancellationToken.None);
                }
                await ExpectCloseAsync(ws);
            });
            using var client = await ConnectAsync(server.Url());

            await client.SendTextAsync("{\"MessageSchemaVersion\":\"1.0\"}", CancellationToken.None);
            var text = await ReceiveAsync(client);
            Assert.Equal(TransportMessageKind.Text, text.Kind);
            Assert.Equal("{\"MessageSchemaVersion\":\"1.0\"}", Encoding.UTF8.GetString(text.Data.Array!, text.Data.Offset, text.Data.Count));

            var small = new byte[] { 1, 2, 3, 4, 5 };
            await client.SendBinaryAsync(new[] { new ArraySegment<byte>(small) }, CancellationToken.None);
            var echoed = await ReceiveAsync(client);
            Assert.Equal(TransportMessageKind.Binary, echoed.Kind);
            Assert.Equal(small, echoed.Data.ToArray());

            var large = RandomBytes(ChannelLimits.MaxServiceMessageBytes - 1, seed: 1);
            await client.SendBinaryAsync(new[] { new ArraySegment<byte>(large) }, CancellationToken.None);
            var big = await ReceiveAsync(client);
            Assert.Equal(TransportMessageKind.Binary, big.Kind);
            Assert.True(large.AsSpan().SequenceEqual(big.Data.AsSpan()));
            Assert.True(client.MessageBufferLength <= ChannelLimits.MaxServiceMessageBytes);

            await client.CloseAsync(1000, "done", CancellationToken.None);
            await server.Task.WaitAsync(Guard);

            Assert.NotNull(request);
            Assert.StartsWith($"GET /v1/data-channel/s-0123?role=publish_subscribe&token={Secret} HTTP/1.1\r\n", request);
            Assert.Contains($"\r\nHost: 127.0.0.1:{server.Port}\r\n", request);
            Assert.Contains("\r\nSec-WebSocket-Version: 13\r\n", request);
        }

        [Fact]
        public async Task HasBufferedMessage_IsTrueOnlyWhenAWholeDataMessageIsAlreadyRead()
        {
            // The data channel holds its acknowledgements while this is true: it must never be true when the next receive
            // would read the socket (a control frame, a fragment, a partial frame).
            var firstWritten = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            var writeRest = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            var last = Frame(0x82, RandomBytes(300, seed: 7));
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                // One write (on loopback, in the client's socket buffer when it returns): a, b (200 bytes, 16-bit length),
                // a ping, "x" + continuation "y", "z", and the first 10 bytes of a 300-byte message.
                await WriteRawAsync(stream, Frame(0x82, Encoding.ASCII.GetBytes("abc"))
                    .Concat(Frame(0x82, RandomBytes(200, seed: 3)))
                    .Concat(Frame(0x89, new byte[] { 1 }))
                    .Concat(Frame(0x02, Encoding.ASCII.GetBytes("x")))
                    .Concat(Frame(0x80, Encoding.ASCII.GetBytes("y")))
                    .Concat(Frame(0x82, Encoding.ASCII.GetBytes("z")))
                    .Concat(last.Take(10)).ToArray());
                firstWritten.TrySetResult(true);
                await writeRest.Task;
                await WriteRawAsync(stream, last.Skip(10).ToArray());
                while ((await ReadClientFrameAsync(stream)).Opcode != 0x8) { } // the pong, in any order with the close
            });
            using var client = await ConnectAsync(server.Url());
            await firstWritten.Task.WaitAsync(Guard);

            Assert.Equal("abc", Encoding.ASCII.GetString((await ReceiveAsync(client)).Data.ToArray()));
            Assert.True(client.HasBufferedMessage); // b, whole
            Assert.Equal(200, (await ReceiveAsync(client)).Data.Count);
            Assert.False(client.HasBufferedMessage); // a ping comes first
            Assert.Equal("xy", Encoding.ASCII.GetString((await ReceiveAsync(client)).Data.ToArray()));
            Assert.True(client.HasBufferedMessage); // z
            Assert.Equal("z", Encoding.ASCII.GetString((await ReceiveAsync(client)).Data.ToArray()));
            Assert.False(client.HasBufferedMessage); // 10 of 304 bytes
            writeRest.TrySetResult(true);
            Assert.Equal(300, (await ReceiveAsync(client)).Data.Count);
            Assert.False(client.HasBufferedMessage);
            await client.CloseAsync(1000, "done", CancellationToken.None);
            await server.Task.WaitAsync(Guard);
        }

        [Fact]
        public async Task SeveralMessagesInOneSendArriveInOrderAndTheCallersBuffersAreUnchanged()
        {
            var sizes = new[] { 0, 1, 7, 125, 126, 65535, 65536, 100_000 };
            var received = new List<byte[]>();
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                using var ws = ServerSocket(stream);
                for (var i = 0; i < sizes.Length; i++)
                {
                    var (type, data) = await ReceiveWholeAsync(ws);
                    Assert.Equal(WebSocketMessageType.Binary, type);
                    lock (received) received.Add(data.ToArray());
                }
                await ExpectCloseAsync(ws);
            });
            using var client = await ConnectAsync(server.Url());

            // Segments at odd offsets inside larger arrays, as the channel keeps them for resends.
            var segments = sizes.Select((size, i) => new ArraySegment<byte>(RandomBytes(size + 10, seed: 100 + i), 3, size)).ToArray();
            var copies = segments.Select(s => s.Array!.ToArray()).ToArray();
            await client.SendBinaryAsync(segments, CancellationToken.None);
            for (var i = 0; i < segments.Length; i++) Assert.Equal(copies[i], segments[i].Array);
            // The close handshake waits about 2 s for the server's answer: let a slow (loaded) server read everything first.
            await WaitUntilAsync(() => { lock (received) return received.Count == sizes.Length; });

            await client.CloseAsync(1000, "done", CancellationToken.None);
            await server.Task.WaitAsync(Guard);
            Assert.Equal(sizes.Length, received.Count);
            for (var i = 0; i < sizes.Length; i++) Assert.Equal(segments[i].ToArray(), received[i]);
        }

        [Fact]
        public async Task ConcurrentSendersAndPingsNeverInterleaveFrames()
        {
            const int Senders = 4;
            const int Batches = 50;
            var received = new List<byte[]>();
            var receivedCount = 0;
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                using var ws = ServerSocket(stream);
                for (var i = 0; i < Senders * Batches * 3; i++)
                {
                    received.Add((await ReceiveWholeAsync(ws)).Data.ToArray());
                    Interlocked.Increment(ref receivedCount);
                }
                await ExpectCloseAsync(ws);
            });
            using var client = await ConnectAsync(server.Url());
            var receive = client.ReceiveAsync(CancellationToken.None); // reads the pongs

            // Message = [sender, sequence, filler...]: each sender's messages must arrive whole and in its order.
            var senders = Enumerable.Range(0, Senders).Select(sender => Task.Run(async () =>
            {
                for (var batch = 0; batch < Batches; batch++)
                {
                    var messages = Enumerable.Range(0, 3).Select(k =>
                    {
                        var message = new byte[2 + ((batch * 3 + k) * 97 % 3000)];
                        Array.Fill(message, (byte)(sender * 3 + k));
                        message[0] = (byte)sender;
                        message[1] = (byte)(batch * 3 + k);
                        return new ArraySegment<byte>(message);
                    }).ToArray();
                    await client.SendBinaryAsync(messages, CancellationToken.None);
                    if (batch % 10 == 0) await client.PingAsync(CancellationToken.None);
                }
            })).ToArray();
            await Task.WhenAll(senders).WaitAsync(Guard);
            // The close handshake waits about 2 s for the server's answer: let a slow (loaded) server read everything first.
            await WaitUntilAsync(() => Volatile.Read(ref receivedCount) == Senders * Batches * 3);

            await client.CloseAsync(1000, "done", CancellationToken.None);
            await server.Task.WaitAsync(Guard);
            Assert.Equal(TransportMessageKind.Close, (await receive.WaitAsync(Guard)).Kind);
            for (var sender = 0; sender < Senders; sender++)
            {
                var mine = received.Where(m => m[0] == sender).ToList();
                Assert.Equal(Batches * 3, mine.Count);
                for (var n = 0; n < mine.Count; n++)
                {
                    Assert.Equal((byte)n, mine[n][1]);
                    Assert.Equal(2 + (n * 97 % 3000), mine[n].Length);
                    Assert.All(mine[n].Skip(2), b => Assert.Equal((byte)(sender * 3 + n % 3), b));
                }
            }
        }

        [Fact]
        public void MaskingCopiesEveryLengthAndAlignmentWithoutTouchingTheSource()
        {
            var key = new byte[] { 0x00, 0xA5, 0x3C, 0xFF, 0x12, 0x34, 0x56, 0x78 };
            var source = RandomBytes(100, seed: 7);
            var original = source.ToArray();
            for (var offset = 0; offset < 9; offset++)
            {
                for (var count = 0; offset + count <= source.Length; count++)
                {
                    var target = new byte[count + 5];
                    WebSocketTransport.CopyMasked(source, offset, target, 2, count, key, 4);
                    for (var i = 0; i < count; i++) Assert.Equal((byte)(source[offset + i] ^ key[4 + (i % 4)]), target[2 + i]);
                }
            }
            Assert.Equal(original, source);
        }

        [Fact]
        public async Task ServerPingIsAnsweredWithAMaskedPongAndMovesLastReceived()
        {
            var ping = Encoding.ASCII.GetBytes("are-you-there");
            var pongSeen = new TaskCompletionSource<RawFrame>(TaskCreationOptions.RunContinuationsAsynchronously);
            var sendPing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                await sendPing.Task;
                await WriteRawAsync(stream, Frame(0x89, ping));
                pongSeen.SetResult(await ReadClientFrameAsync(stream));
                await WriteRawAsync(stream, Frame(0x82, new byte[] { 42 }));
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());
            var before = client.LastReceivedTimestamp;
            SpinWait.SpinUntil(() => Stopwatch.GetTimestamp() > before);

            var receive = client.ReceiveAsync(CancellationToken.None);
            sendPing.SetResult();
            var pong = await pongSeen.Task.WaitAsync(Guard);
            Assert.True(pong.Fin);
            Assert.True(pong.Masked);
            Assert.Equal(0xA, pong.Opcode);
            Assert.Equal(ping, pong.Payload);
            Assert.True(client.LastReceivedTimestamp > before);

            var message = await receive.WaitAsync(Guard);
            Assert.Equal(new byte[] { 42 }, message.Data.ToArray());
            client.Abort();
            await server.Task.WaitAsync(Guard);
        }

        [Fact]
        public async Task APingWhileASendIsStuck_NeverStopsTheReader()
        {
            // The server stops reading (a congested peer): the client's sends fill the socket and block. A ping then a
            // message from the server must still be received: the pong waits for the write lock on its own, not in the
            // reader.
            var serverSentPing = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                await serverSentPing.Task;
                await WriteRawAsync(stream, Frame(0x89, Encoding.ASCII.GetBytes("ping")));
                await WriteRawAsync(stream, Frame(0x82, new byte[] { 7 }));
                await release.Task;
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());
            var big = new byte[1024 * 1024];
            var sends = Task.Run(async () =>
            {
                for (var i = 0; i < 64; i++) await client.SendBinaryAsync(new[] { new ArraySegment<byte>(big) }, CancellationToken.None);
            });
            // Wait until the sender is stuck on the full socket (it cannot finish 64 MiB while nobody reads).
            await WaitUntilAsync(() => !sends.IsCompleted);
            await Task.Delay(200);
            Assert.False(sends.IsCompleted);
            serverSentPing.SetResult();
            var message = await ReceiveAsync(client);
            Assert.Equal(new byte[] { 7 }, message.Data.ToArray());
            Assert.False(sends.IsCompleted);
            release.SetResult();
            await sends.WaitAsync(Guard);
            client.Abort();
            await server.Task.WaitAsync(Guard);
        }

        [Fact]
        public async Task ClientPingGetsThePongAndMovesLastReceived()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                using var ws = ServerSocket(stream);
                await ExpectCloseAsync(ws); // .NET answers pings while it reads
            });
            using var client = await ConnectAsync(server.Url());
            var receive = client.ReceiveAsync(CancellationToken.None);
            var before = client.LastReceivedTimestamp;
            SpinWait.SpinUntil(() => Stopwatch.GetTimestamp() > before);

            await client.PingAsync(CancellationToken.None);
            await WaitUntilAsync(() => client.LastReceivedTimestamp > before);
            Assert.False(receive.IsCompleted); // the pong is not a message

            await client.CloseAsync(1000, "done", CancellationToken.None);
            var close = await receive.WaitAsync(Guard);
            Assert.Equal(TransportMessageKind.Close, close.Kind);
            await server.Task.WaitAsync(Guard);
        }

        [Fact]
        public async Task ServerInitiatedCloseReturnsTheStatusAndIsAnswered()
        {
            WebSocketState serverState = default;
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                using var ws = ServerSocket(stream);
                await ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "Bye", CancellationToken.None); // waits for our answer
                serverState = ws.State;
            });
            using var client = await ConnectAsync(server.Url());

            var close = await ReceiveAsync(client);
            Assert.Equal(TransportMessageKind.Close, close.Kind);
            Assert.Equal(1000, close.CloseStatus);
            Assert.Equal("Bye", close.CloseDescription);
            await server.Task.WaitAsync(Guard);
            Assert.Equal(WebSocketState.Closed, serverState);

            await Assert.ThrowsAnyAsync<IOException>(() => client.ReceiveAsync(CancellationToken.None));
            await Assert.ThrowsAnyAsync<IOException>(() => client.SendBinaryAsync(new[] { new ArraySegment<byte>(new byte[1]) }, CancellationToken.None));
        }

        [Fact]
        public async Task ClientCloseCompletesTheHandshakeWithoutAndWithAPendingReceive()
        {
            foreach (var pendingReceive in new[] { false, true })
            {
                WebSocketReceiveResult? seen = null;
                using var server = new TestServer(async stream =>
                {
                    await AcceptUpgradeAsync(stream);
                    using var ws = ServerSocket(stream);
                    seen = await ws.ReceiveAsync(new byte[16], CancellationToken.None);
                    await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "ok", CancellationToken.None);
                });
                using var client = await ConnectAsync(server.Url());
                var receive = pendingReceive ? client.ReceiveAsync(CancellationToken.None) : null;

                await client.CloseAsync(1001, "going away", CancellationToken.None).WaitAsync(Guard);
                await server.Task.WaitAsync(Guard);
                Assert.Equal(WebSocketMessageType.Close, seen!.MessageType);
                Assert.Equal(WebSocketCloseStatus.EndpointUnavailable, seen.CloseStatus);
                Assert.Equal("going away", seen.CloseStatusDescription);
                if (receive != null)
                {
                    var close = await receive.WaitAsync(Guard);
                    Assert.Equal(TransportMessageKind.Close, close.Kind);
                    Assert.Equal(1000, close.CloseStatus);
                    Assert.Equal("ok", close.CloseDescription);
                }
                await Assert.ThrowsAnyAsync<IOException>(() => client.SendTextAsync("late", CancellationToken.None));
            }
        }

        [Fact]
        public async Task FragmentsAreJoinedAcrossPingsAndEveryLengthEncoding()
        {
            var part1 = RandomBytes(3, seed: 11);
            var part2 = RandomBytes(300, seed: 12); // 16-bit length
            var part3 = RandomBytes(70_000, seed: 13); // 64-bit length
            var pongSeen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                var header = new byte[10];
                header[0] = 0x80;
                header[1] = 127;
                BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(2), (ulong)part3.Length);
                await WriteRawAsync(stream, Frame(0x02, part1).Concat(Frame(0x89, new byte[] { 5 })).Concat(Frame(0x00, part2))
                    .Concat(Frame(0x8A, Array.Empty<byte>())).Concat(header).Concat(part3).Concat(Frame(0x81, Encoding.UTF8.GetBytes("next"))).ToArray());
                Assert.Equal(0xA, (await ReadClientFrameAsync(stream)).Opcode);
                pongSeen.SetResult();
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());

            var joined = await ReceiveAsync(client);
            Assert.Equal(TransportMessageKind.Binary, joined.Kind);
            Assert.Equal(part1.Concat(part2).Concat(part3).ToArray(), joined.Data.ToArray());
            await WaitUntilAsync(() => client.HasPendingInput); // "next" is unread
            var next = await ReceiveAsync(client);
            Assert.Equal(TransportMessageKind.Text, next.Kind);
            Assert.Equal("next", Encoding.UTF8.GetString(next.Data.ToArray()));
            Assert.False(client.HasPendingInput);
            // The pong goes out on its own task (the reader never waits for the write lock).
            await pongSeen.Task.WaitAsync(Guard);
            client.Abort();
            await server.Task.WaitAsync(Guard);
        }

        // ---- hostile peers ----

        [Theory]
        [InlineData("82 81 01 02 03 04 2a", "masked")]
        [InlineData("c2 01 2a", "reserved")]
        [InlineData("92 01 2a", "reserved")]
        [InlineData("83 01 2a", "opcode 3")]
        [InlineData("8b 00", "opcode 11")]
        [InlineData("80 01 2a", "continuation")]
        [InlineData("02 01 2a 82 01 2a", "inside a fragmented")]
        [InlineData("09 00", "control frame")]
        [InlineData("89 7e 00 7e", "control frame")]
        [InlineData("82 7f 80 00 00 00 00 00 00 00", "top bit")]
        [InlineData("88 01 03", "1-byte")]
        public async Task ProtocolViolationsFailTheConnection(string hex, string expected)
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                await WriteRawAsync(stream, Convert.FromHexString(hex.Replace(" ", "")));
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());
            var ex = await Assert.ThrowsAsync<TransportProtocolException>(() => ReceiveAsync(client));
            Assert.Contains(expected, ex.Message);
            await server.Task.WaitAsync(Guard); // the client dropped the connection
            await Assert.ThrowsAnyAsync<IOException>(() => client.ReceiveAsync(CancellationToken.None));
        }

        [Fact]
        public async Task EndOfStreamWithoutCloseIsAnIOException()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                await WriteRawAsync(stream, Frame(0x82, new byte[] { 1 }).Concat(new byte[] { 0x82, 0x05, 1, 2 }).ToArray()); // truncated
            });
            using var client = await ConnectAsync(server.Url());
            Assert.Equal(new byte[] { 1 }, (await ReceiveAsync(client)).Data.ToArray());
            var ex = await Assert.ThrowsAnyAsync<IOException>(() => ReceiveAsync(client));
            Assert.IsNotType<TransportProtocolException>(ex);
        }

        [Fact]
        public async Task BadSecWebSocketAcceptIsRefused()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream, acceptOverride: Convert.ToBase64String(new byte[20]));
                await DrainAsync(stream);
            });
            var ex = await Assert.ThrowsAsync<TransportProtocolException>(() => ConnectAsync(server.Url()));
            Assert.Contains("Sec-WebSocket-Accept", ex.Message);
            Assert.DoesNotContain(Secret, ex.Message);
        }

        [Fact]
        public async Task ForbiddenUpgradeExposesTheStatusAndTheStartOfTheBody()
        {
            var body = "{\"message\":\"The security token included in the request is invalid.\"}" + new string('x', 500);
            using var server = new TestServer(async stream =>
            {
                await ReadHeadAsync(stream);
                var bytes = Encoding.UTF8.GetBytes(body);
                await WriteRawAsync(stream, Encoding.ASCII.GetBytes($"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\n\r\n"));
                await WriteRawAsync(stream, bytes);
                await DrainAsync(stream);
            });
            var ex = await Assert.ThrowsAsync<WebSocketUpgradeException>(() => ConnectAsync(server.Url()));
            Assert.Equal(403, ex.StatusCode);
            Assert.Contains("403", ex.Message);
            Assert.Contains("The security token included in the request is invalid.", ex.Message);
            Assert.DoesNotContain(new string('x', 201), ex.Message);
            Assert.Contains($"127.0.0.1:{server.Port}/v1/data-channel/s-0123", ex.Message);
            Assert.DoesNotContain(Secret, ex.Message);
            Assert.DoesNotContain("role=", ex.Message);
        }

        [Fact]
        public async Task EndlessFragmentedMessageFailsAtTheCapWithoutBufferingMore()
        {
            const int Cap = 64 * 1024;
            const int Fragment = 8 * 1024;
            var sent = 0;
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                var payload = new byte[Fragment];
                try
                {
                    for (var opcode = 0x02; sent < 4 * Cap; opcode = 0x00)
                    {
                        // Each fragment is followed by a ping; the next one goes only when the pong proves the client read it.
                        await WriteRawAsync(stream, Frame((byte)opcode, payload));
                        sent += Fragment;
                        await WriteRawAsync(stream, Frame(0x89, new byte[] { 1 }));
                        var pong = await ReadClientFrameAsync(stream);
                        Assert.Equal(0xA, pong.Opcode);
                    }
                }
                catch (IOException)
                {
                    // The client gave up: expected.
                }
            });
            using var client = await ConnectAsync(server.Url(), new WebSocketTransportOptions { MaxMessageBytes = Cap, UseProxy = false });
            var ex = await Assert.ThrowsAsync<TransportMessageTooLargeException>(() => ReceiveAsync(client));
            Assert.Contains(Cap.ToString(), ex.Message);
            await server.Task.WaitAsync(Guard);
            Assert.True(sent < 4 * Cap, $"the server could send {sent} bytes");
            Assert.Equal(Cap + Fragment, sent); // refused at the header of the first fragment beyond the cap
            Assert.True(client.MessageBufferLength <= Cap);
        }

        [Fact]
        public async Task SingleFrameAnnouncedBeyondTheCapFailsAtItsHeader()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                var header = new byte[10];
                header[0] = 0x82;
                header[1] = 127;
                BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(2), 10UL * 1024 * 1024);
                await WriteRawAsync(stream, header); // no payload follows: only the header can fail it
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());
            await Assert.ThrowsAsync<TransportMessageTooLargeException>(() => ReceiveAsync(client));
            Assert.Equal(0, client.MessageBufferLength);
            await server.Task.WaitAsync(Guard);
        }

        [Fact]
        public async Task AbortFailsAPendingReceive()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());
            var receive = client.ReceiveAsync(CancellationToken.None);
            client.Abort();
            await Assert.ThrowsAnyAsync<IOException>(() => receive.WaitAsync(Guard));
            await server.Task.WaitAsync(Guard);
            await Assert.ThrowsAnyAsync<IOException>(() => client.PingAsync(CancellationToken.None));
        }

        [Fact]
        public async Task CancellingAPendingReceiveThrowsOperationCanceled()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                await DrainAsync(stream);
            });
            using var client = await ConnectAsync(server.Url());
            using var cts = new CancellationTokenSource();
            var receive = client.ReceiveAsync(cts.Token);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => receive.WaitAsync(Guard));
        }

        [Fact]
        public async Task UpgradeThatNeverComesTimesOut()
        {
            using var server = new TestServer(DrainAsync); // reads the upgrade request and never answers
            var options = new WebSocketTransportOptions { ConnectTimeout = TimeSpan.FromMilliseconds(500), UseProxy = false };
            var ex = await Assert.ThrowsAnyAsync<IOException>(() => ConnectAsync(server.Url(), options).WaitAsync(Guard));
            Assert.IsType<TimeoutException>(ex.InnerException);
            Assert.Contains("timed out", ex.Message);
            Assert.DoesNotContain(Secret, ex.Message);
            await server.Task.WaitAsync(Guard); // the half-open connection was dropped
        }

        [Fact]
        public async Task RefusedAndCancelledConnectsFailCleanly()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var port = ((IPEndPoint)listener.LocalEndpoint).Port;
            listener.Stop();
            var url = new Uri($"ws://127.0.0.1:{port}/v1/data-channel/s-0123?token={Secret}");
            var refused = await Assert.ThrowsAnyAsync<IOException>(() => ConnectAsync(url));
            Assert.IsType<SocketException>(refused.InnerException);
            Assert.Contains($"127.0.0.1:{port}", refused.Message);
            Assert.DoesNotContain(Secret, refused.Message);

            // Cancelled at whatever stage it has reached (the server may see the connection or not).
            using var server = new TestServer(DrainAsync);
            using var cts = new CancellationTokenSource();
            var connect = WebSocketTransport.ConnectAsync(server.Url(), new WebSocketTransportOptions { UseProxy = false }, cts.Token);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connect.WaitAsync(Guard));
        }

        // ---- TLS and proxies ----

        [Fact]
        public async Task WssVerifiesTheCertificateByDefaultAndAcceptsATrustedOne()
        {
            using var certificate = CreateCertificate();
            var upgradeRequested = false;
            using (var server = new TestServer(async stream =>
            {
                using var ssl = new SslStream(stream);
                try
                {
                    // Depending on the platform the client refuses the certificate during or right after the handshake.
                    await ssl.AuthenticateAsServerAsync(certificate);
                    await ReadHeadAsync(ssl);
                    upgradeRequested = true;
                }
                catch (Exception ex) when (ex is IOException || ex is AuthenticationException)
                {
                }
            }))
            {
                var ex = await Assert.ThrowsAnyAsync<IOException>(() => ConnectAsync(server.Url("wss")));
                Assert.IsAssignableFrom<AuthenticationException>(ex.InnerException);
                Assert.DoesNotContain(Secret, ex.Message);
                await server.Task.WaitAsync(Guard);
                Assert.False(upgradeRequested);
            }

            using (var server = new TestServer(async stream =>
            {
                using var ssl = new SslStream(stream);
                await ssl.AuthenticateAsServerAsync(certificate);
                await AcceptUpgradeAsync(ssl);
                using var ws = ServerSocket(ssl);
                var (type, data) = await ReceiveWholeAsync(ws);
                await ws.SendAsync(data, type, endOfMessage: true, CancellationToken.None);
                await ExpectCloseAsync(ws);
            }))
            {
                var options = new WebSocketTransportOptions
                {
                    UseProxy = false,

                    // Trust exactly this certificate; the host name is still checked (the certificate is for 127.0.0.1).
                    ServerCertificateValidation = (_, presented, _, errors) =>
                        presented != null && presented.GetCertHashString() == certificate.GetCertHashString()
                        && (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) == SslPolicyErrors.None,
                };
                using var client = await ConnectAsync(server.Url("wss"), options);
                await client.SendBinaryAsync(new[] { new ArraySegment<byte>(new byte[] { 9, 8, 7 }) }, CancellationToken.None);
                Assert.Equal(new byte[] { 9, 8, 7 }, (await ReceiveAsync(client)).Data.ToArray());
                await client.CloseAsync(1000, "done", CancellationToken.None);
                await server.Task.WaitAsync(Guard);
            }
        }

        [Fact]
        public async Task ConnectProxyIsUsedWhenConfigured()
        {
            using var server = new TestServer(async stream =>
            {
                await AcceptUpgradeAsync(stream);
                using var ws = ServerSocket(stream);
                var (type, data) = await ReceiveWholeAsync(ws);
                await ws.SendAsync(data, type, endOfMessage: true, CancellationToken.None);
                await ExpectCloseAsync(ws);
            });
            string? proxyRequest = null;
            using var proxy = new TestServer(async stream =>
            {
                proxyRequest = await ReadHeadAsync(stream);
                using var upstream = new TcpClient();
                await upstream.ConnectAsync(IPAddress.Loopback, server.Port);
                await WriteRawAsync(stream, Encoding.ASCII.GetBytes("HTTP/1.1 200 Connection established\r\n\r\n"));
                var up = upstream.GetStream();
                await Task.WhenAny(RelayAsync(stream, up, upstream.Client), RelayAsync(up, stream, null));
            });

            var options = new WebSocketTransportOptions { Proxy = new WebProxy($"http://127.0.0.1:{proxy.Port}") };
            using (var client = await ConnectAsync(server.Url(), options))
            {
                await client.SendTextAsync("through the tunnel", CancellationToken.None);
                var echoed = await ReceiveAsync(client);
                Assert.Equal("through the tunnel", Encoding.UTF8.GetString(echoed.Data.ToArray()));
                await client.CloseAsync(1000, "done", CancellationToken.None);
            }
            await server.Task.WaitAsync(Guard);
            Assert.NotNull(proxyRequest);
            Assert.StartsWith($"CONNECT 127.0.0.1:{server.Port} HTTP/1.1\r\n", proxyRequest);
            Assert.Contains($"\r\nHost: 127.0.0.1:{server.Port}\r\n", proxyRequest);
            Assert.DoesNotContain("Proxy-Authorization", proxyRequest);
        }

        [Fact]
        public async Task ProxyRefusalIsAClearErrorWithoutCredentials()
        {
            const string User = "alice-proxy-user";
            const string Password = "pa55-w0rd-9876";
            string? proxyRequest = null;
            using var proxy = new TestServer(async stream =>
            {
                proxyRequest = await ReadHeadAsync(stream);
                await WriteRawAsync(stream, Encoding.ASCII.GetBytes(
                    "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n"));
                await DrainAsync(stream);
            });
            var options = new WebSocketTransportOptions
            {
                Proxy = new WebProxy($"http://127.0.0.1:{proxy.Port}") { Credentials = new NetworkCredential(User, Password) },
            };
            var target = new Uri($"ws://127.0.0.1:1/v1/data-channel/s-0123?token={Secret}");
            var ex = await Assert.ThrowsAnyAsync<IOException>(() => ConnectAsync(target, options));
            Assert.Contains("407", ex.Message);
            Assert.Contains($"127.0.0.1:{proxy.Port}", ex.Message);
            var basic = Convert.ToBase64String(Encoding.UTF8.GetBytes(User + ":" + Password));
            foreach (var secret in new[] { User, Password, basic, Secret }) Assert.DoesNotContain(secret, ex.ToString());
            Assert.Contains($"\r\nProxy-Authorization: Basic {basic}\r\n", proxyRequest);
        }

        // ---- helpers ----

        private static Task<WebSocketTransport> ConnectAsync(Uri url, WebSocketTransportOptions? options = null)
            => WebSocketTransport.ConnectAsync(url, options ?? new WebSocketTransportOptions { UseProxy = false }, CancellationToken.None).WaitAsync(Guard);

        private static Task<TransportMessage> ReceiveAsync(WebSocketTransport client) => client.ReceiveAsync(CancellationToken.None).WaitAsync(Guard);

        private static async Task WaitUntilAsync(Func<bool> condition)
        {
            var watch = Stopwatch.StartNew();
            while (!condition())
            {
                Assert.True(watch.Elapsed < Guard, "condition not met in time");
                await Task.Delay(5);
            }
        }

        private static byte[] RandomBytes(int count, int seed)
        {
            var bytes = new byte[count];
            new Random(seed).NextBytes(bytes);
            return bytes;
        }

        private static WebSocket ServerSocket(Stream stream)
            => WebSocket.CreateFromStream(stream, isServer: true, subProtocol: null, keepAliveInterval: TimeSpan.Zero);

        private static async Task<(WebSocketMessageType Type, ArraySegment<byte> Data)> ReceiveWholeAsync(WebSocket ws)
        {
            var buffer = new byte[2 * 1024 * 1024];
            var count = 0;
            while (true)
            {
                var result = await ws.ReceiveAsync(new ArraySegment<byte>(buffer, count, buffer.Length - count), CancellationToken.None);
                count += result.Count;
                if (result.MessageType == WebSocketMessageType.Close) throw new IOException("unexpected close");
                if (result.EndOfMessage) return (result.MessageType, new ArraySegment<byte>(buffer, 0, count));
            }
        }

        /// <summary>Reads until the client's close, answers it, and returns.</summary>
        private static async Task ExpectCloseAsync(WebSocket ws)
        {
            var result = await ws.ReceiveAsync(new byte[1024], CancellationToken.None);
            Assert.Equal(WebSocketMessageType.Close, result.MessageType);
            await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "ok", CancellationToken.None);
        }

        /// <summary>Reads an HTTP head byte by byte (nothing past it is consumed).</summary>
        private static async Task<string> ReadHeadAsync(Stream stream)
        {
            var head = new List<byte>();
            var one = new byte[1];
            while (head.Count < 4 || head[^4] != '\r' || head[^3] != '\n' || head[^2] != '\r' || head[^1] != '\n')
            {
                if (await stream.ReadAsync(one) == 0) throw new IOException("EOF in the request head");
                head.Add(one[0]);
            }
            return Encoding.ASCII.GetString(head.ToArray());
        }

        /// <summary>Reads the upgrade request and answers 101 with the right (or the given) Sec-WebSocket-Accept; returns the request.</summary>
        private static async Task<string> AcceptUpgradeAsync(Stream stream, string? acceptOverride = null)
        {
            var request = await ReadHeadAsync(stream);
            var key = request.Split("\r\n").Single(l => l.StartsWith("Sec-WebSocket-Key:", StringComparison.OrdinalIgnoreCase)).Substring(18).Trim();
            Assert.Equal(16, Convert.FromBase64String(key).Length);
            var accept = acceptOverride ?? Convert.ToBase64String(SHA1.HashData(Encoding.ASCII.GetBytes(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")));
            await WriteRawAsync(stream, Encoding.ASCII.GetBytes(
                $"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"));
            return request;
        }

        private static async Task WriteRawAsync(Stream stream, byte[] bytes)
        {
            await stream.WriteAsync(bytes);
            await stream.FlushAsync();
        }

        /// <summary>An unmasked server frame.</summary>
        private static byte[] Frame(byte first, byte[] payload)
        {
            var header = payload.Length < 126 ? new byte[] { first, (byte)payload.Length }
                : payload.Length <= ushort.MaxValue ? new byte[] { first, 126, (byte)(payload.Length >> 8), (byte)payload.Length }
                : throw new ArgumentOutOfRangeException(nameof(payload));
            return header.Concat(payload).ToArray();
        }

        private sealed record RawFrame(bool Fin, int Opcode, bool Masked, byte[] Payload);

        private static async Task<RawFrame> ReadClientFrameAsync(Stream stream)
        {
            var head = new byte[2];
            await stream.ReadExactlyAsync(head);
            long length = head[1] & 0x7F;
            if (length == 126)
            {
                var ext = new byte[2];
                await stream.ReadExactlyAsync(ext);
                length = BinaryPrimitives.ReadUInt16BigEndian(ext);
            }
            else if (length == 127)
            {
                var ext = new byte[8];
                await stream.ReadExactlyAsync(ext);
                length = (long)BinaryPrimitives.ReadUInt64BigEndian(ext);
            }
            var masked = (head[1] & 0x80) != 0;
            var key = new byte[4];
            if (masked) await stream.ReadExactlyAsync(key);
            var payload = new byte[length];
            await stream.ReadExactlyAsync(payload);
            for (var i = 0; i < payload.Length; i++) payload[i] ^= key[i % 4];
            return new RawFrame((head[0] & 0x80) != 0, head[0] & 0x0F, masked, payload);
        }

        /// <summary>Reads and drops until the client goes away.</summary>
        private static async Task DrainAsync(Stream stream)
        {
            var buffer = new byte[4096];
            try
            {
                while (await stream.ReadAsync(buffer) > 0)
                {
                }
            }
            catch (IOException)
            {
            }
        }

        private static async Task RelayAsync(Stream from, Stream to, Socket? shutdown)
        {
            try
            {
                await from.CopyToAsync(to);
            }
            catch (Exception ex) when (ex is IOException || ex is ObjectDisposedException || ex is SocketException)
            {
            }
            try
            {
                shutdown?.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is ObjectDisposedException || ex is SocketException)
            {
            }
        }

        private static X509Certificate2 CreateCertificate()
        {
            using var key = RSA.Create(2048);
            var request = new CertificateRequest("CN=BastionTools test server", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
            var names = new SubjectAlternativeNameBuilder();
            names.AddIpAddress(IPAddress.Loopback);
            request.CertificateExtensions.Add(names.Build());
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection { new Oid("1.3.6.1.5.5.7.3.1") }, false));
            using var created = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
            return X509CertificateLoader.LoadPkcs12(created.Export(X509ContentType.Pfx), null);
        }

        /// <summary>A listener on 127.0.0.1 that runs <c>handler</c> for the first connection (the test awaits <see cref="Task"/>).</summary>
        private sealed class TestServer : IDisposable
        {
            private readonly TcpListener _listener = new(IPAddress.Loopback, 0);

            public TestServer(Func<Stream, Task> handler)
            {
                _listener.Start();
                Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
                Task = RunAsync(handler);
            }

            public int Port { get; }

            public Task Task { get; }

            public Uri Url(string scheme = "ws") => new($"{scheme}://127.0.0.1:{Port}/v1/data-channel/s-0123?role=publish_subscribe&token={Secret}");

            public void Dispose() => _listener.Dispose();

            private async Task RunAsync(Func<Stream, Task> handler)
            {
                using var connection = await _listener.AcceptTcpClientAsync();
                connection.NoDelay = true;
                using var stream = connection.GetStream();
                await handler(stream);
            }
        }
    }
}
