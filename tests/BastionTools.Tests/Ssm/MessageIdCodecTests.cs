using System;
using System.Linq;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    public class MessageIdCodecTests
    {
        [Fact]
        public void KnownVectorFromTheRecording()
        {
            // client->agent acknowledge, official-client-mux.jsonl line 3: id vs raw bytes 64..79.
            var id = Guid.Parse("dbbd100f-a983-4ba9-bcc3-10a8559499f7");
            var wire = Convert.FromHexString("bcc310a8559499f7dbbd100fa9834ba9");

            var buffer = new byte[20];
            MessageIdCodec.Write(id, buffer, 2);
            Assert.Equal(wire, buffer.Skip(2).Take(16));
            Assert.Equal(id, MessageIdCodec.Read(buffer, 2));
        }

        [Fact]
        public void Rfc4122BytesFollowTheTextForm()
        {
            var id = Guid.Parse("00112233-4455-6677-8899-aabbccddeeff");
            Assert.Equal(Convert.FromHexString("00112233445566778899aabbccddeeff"), MessageIdCodec.ToRfc4122Bytes(id));
            Assert.Equal(id, MessageIdCodec.FromRfc4122Bytes(MessageIdCodec.ToRfc4122Bytes(id)));
        }

        [Fact]
        public void HalfSwapRoundTripsForRandomIds()
        {
            var random = new Random(7);
            var buffer = new byte[16];
            for (int i = 0; i < 1000; i++)
            {
                var raw = new byte[16];
                random.NextBytes(raw);
                var id = new Guid(raw);
                MessageIdCodec.Write(id, buffer, 0);
                Assert.Equal(id, MessageIdCodec.Read(buffer, 0));

                var text = Convert.FromHexString(id.ToString("N"));
                Assert.Equal(text.Skip(8).Concat(text.Take(8)), buffer);
            }
        }

        [Fact]
        public void OutOfRangeOffsetsAreRejected()
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => MessageIdCodec.Read(new byte[16], 1));
            Assert.Throws<ArgumentOutOfRangeException>(() => MessageIdCodec.Write(Guid.NewGuid(), new byte[15], 0));
        }
    }
}
