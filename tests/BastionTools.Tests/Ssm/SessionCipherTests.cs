using System;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// The session cipher against the published GCM vectors and against .NET's own AesGcm playing the agent
    /// (first half of the data key for agent-to-client, second half for client-to-agent, nonce || ciphertext || tag).
    /// </summary>
    public class SessionCipherTests
    {
        // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 15 (AES-256, 96-bit IV, no AAD).
        private static readonly byte[] Key15 = Convert.FromHexString("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        private static readonly byte[] Iv15 = Convert.FromHexString("cafebabefacedbaddecaf888");
        private static readonly byte[] Plain15 = Convert.FromHexString("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255");
        private static readonly byte[] Cipher15 = Convert.FromHexString("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad");
        private static readonly byte[] Tag15 = Convert.FromHexString("b094dac5d93471bdec1a502270e3cc6c");

        private static byte[] DataKey(byte[] agentHalf, byte[] clientHalf) => agentHalf.Concat(clientHalf).ToArray();

        [Fact]
        public void Decrypt_OpensThePublishedVector_WithTheFirstHalfOfTheDataKey()
        {
            using var cipher = SessionCipher.FromDataKey(DataKey(Key15, new byte[32]));
            var message = Iv15.Concat(Cipher15).Concat(Tag15).ToArray();
            Assert.Equal(Plain15, cipher.Decrypt(message));
        }

        [Fact]
        public void Seal_ProducesThePublishedVector()
        {
            var sealedMessage = SessionCipher.Seal(Key15, Iv15, Plain15, 0, Plain15.Length);
            Assert.Equal(Iv15.Concat(Cipher15).Concat(Tag15).ToArray(), sealedMessage);
        }

        [Fact]
        public void Encrypt_UsesTheSecondHalf_AndTheAgentsLayout()
        {
            var agentHalf = RandomNumberGenerator.GetBytes(32);
            var clientHalf = RandomNumberGenerator.GetBytes(32);
            using var cipher = SessionCipher.FromDataKey(DataKey(agentHalf, clientHalf));
            var plain = Encoding.UTF8.GetBytes("ls -la\r");
            var message = cipher.Encrypt(plain);
            Assert.Equal(12 + plain.Length + 16, message.Length);

            // What the agent does (blockcipher.go DecryptWithAESGCM with its decryption key, the second half).
            using var agent = new AesGcm(clientHalf, 16);
            var opened = new byte[plain.Length];
            agent.Decrypt(message.AsSpan(0, 12), message.AsSpan(12, plain.Length), message.AsSpan(12 + plain.Length), opened);
            Assert.Equal(plain, opened);

            // The first half does not open it.
            using var wrong = new AesGcm(agentHalf, 16);
            Assert.ThrowsAny<CryptographicException>(() => wrong.Decrypt(message.AsSpan(0, 12), message.AsSpan(12, plain.Length), message.AsSpan(12 + plain.Length), new byte[plain.Length]));
        }

        [Fact]
        public void Decrypt_OpensWhatTheAgentSeals_AndRejectsEveryAlteredByte()
        {
            var agentHalf = RandomNumberGenerator.GetBytes(32);
            using var cipher = SessionCipher.FromDataKey(DataKey(agentHalf, RandomNumberGenerator.GetBytes(32)));
            var plain = Encoding.UTF8.GetBytes("$ whoami\r\nssm-user\r\n");
            var nonce = RandomNumberGenerator.GetBytes(12);
            var message = new byte[12 + plain.Length + 16];
            nonce.CopyTo(message, 0);
            using (var agent = new AesGcm(agentHalf, 16)) agent.Encrypt(nonce, plain, message.AsSpan(12, plain.Length), message.AsSpan(12 + plain.Length));
            Assert.Equal(plain, cipher.Decrypt(message));

            for (var i = 0; i < message.Length; i++)
            {
                var altered = (byte[])message.Clone();
                altered[i] ^= 0x80;
                Assert.Throws<SessionDecryptionException>(() => cipher.Decrypt(altered));
            }
            Assert.Throws<SessionDecryptionException>(() => cipher.Decrypt(message.AsSpan(0, 27).ToArray()));
            Assert.Throws<SessionDecryptionException>(() => cipher.Decrypt(message.AsSpan(0, message.Length - 1).ToArray()));
        }

        [Fact]
        public void Decrypt_RejectsAPayloadUnderAnotherDataKey()
        {
            using var ours = SessionCipher.FromDataKey(RandomNumberGenerator.GetBytes(64));
            var theirs = RandomNumberGenerator.GetBytes(64);
            var message = SessionCipher.Seal(theirs.AsSpan(0, 32).ToArray(), RandomNumberGenerator.GetBytes(12), new byte[] { 1, 2, 3 }, 0, 3);
            var ex = Assert.Throws<SessionDecryptionException>(() => ours.Decrypt(message));
            Assert.Contains("another key", ex.Message);
        }

        [Fact]
        public void Nonces_CountUpLikeTheAgents_FromARandomStart()
        {
            using var a = SessionCipher.FromDataKey(RandomNumberGenerator.GetBytes(64));
            using var b = SessionCipher.FromDataKey(RandomNumberGenerator.GetBytes(64));
            var first = a.Encrypt(new byte[] { 1 }).AsSpan(0, 12).ToArray();
            var second = a.Encrypt(new byte[] { 1 }).AsSpan(0, 12).ToArray();
            // crypto/nonce.go: three little-endian uint32 words, the first incremented (with carry into the next).
            var w0 = BitConverter.ToUInt32(first, 0);
            Assert.Equal(unchecked(w0 + 1), BitConverter.ToUInt32(second, 0));
            if (w0 != uint.MaxValue) Assert.Equal(first.AsSpan(4).ToArray(), second.AsSpan(4).ToArray());
            Assert.NotEqual(first, b.Encrypt(new byte[] { 1 }).AsSpan(0, 12).ToArray());
        }

        [Fact]
        public void FromDataKey_NeedsSixtyFourBytes_AndADisposedCipherRefuses()
        {
            Assert.Throws<ArgumentException>(() => SessionCipher.FromDataKey(new byte[32]));
            var cipher = SessionCipher.FromDataKey(new byte[64]);
            cipher.Dispose();
            Assert.Throws<ObjectDisposedException>(() => cipher.Encrypt(new byte[] { 1 }));
        }

        [Fact]
        public void KmsActionResult_IsWhatTheAgentUnmarshals()
        {
            var result = new KmsEncryptionResponse { KmsCipherTextKey = new byte[] { 1, 2, 3, 250 }, ChallengeAcknowledgement = true };
            Assert.Equal("{\"KMSCipherTextKey\":\"AQID+g==\",\"KMSCipherTextHash\":null,\"ChallengeAcknowledgement\":true}", SsmJson.Serialize(result));
            var challenge = SsmJson.Deserialize<EncryptionChallengePayload>(Encoding.UTF8.GetBytes("{\"Challenge\":\"AQID+g==\"}"));
            Assert.Equal(new byte[] { 1, 2, 3, 250 }, challenge.Challenge);
            var request = JsonSerializer.Deserialize<KmsEncryptionRequest>("{\"KMSKeyId\":\"alias/x\",\"Challenge\":\"c2VjcmV0\"}", SsmJson.Options)!;
            Assert.Equal(("alias/x", "c2VjcmV0"), (request.KmsKeyId, request.Challenge));
        }
    }
}
