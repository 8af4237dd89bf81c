using System;
using System.Security.Cryptography;

namespace BastionTools.Sandbox
{
    /// <summary>
    /// The agent's BlockCipher (agent/session/crypto/blockcipher.go, nonce.go), with .NET's own AesGcm, independent of
    /// the client's implementation: the 64-byte data key from kms:Decrypt is split, the first half encrypts what the
    /// agent sends, the second half decrypts what the client sends; AES-GCM, 12-byte nonce first, 16-byte tag last, no
    /// associated data. Nonces count up from a random start (three little-endian 32-bit words, carry from the first).
    /// </summary>
    internal sealed class AgentBlockCipher : IDisposable
    {
        public const int NonceSize = 12;
        public const int TagSize = 16;

        private readonly object _gate = new();
        private readonly AesGcm _encrypt;
        private readonly AesGcm _decrypt;
        private readonly uint[] _nonce = new uint[3];

        public AgentBlockCipher(byte[] dataKey)
        {
            if (dataKey.Length != 64) throw new ArgumentException("KMSKeySizeInBytes is 64.", nameof(dataKey));
            _encrypt = new AesGcm(dataKey.AsSpan(0, 32), TagSize);
            _decrypt = new AesGcm(dataKey.AsSpan(32, 32), TagSize);
            var start = RandomNumberGenerator.GetBytes(NonceSize);
            for (var i = 0; i < 3; i++) _nonce[i] = BitConverterLittleEndian(start, i * 4);
        }

        private static uint BitConverterLittleEndian(byte[] b, int i) => b[i] | (uint)b[i + 1] << 8 | (uint)b[i + 2] << 16 | (uint)b[i + 3] << 24;

        /// <summary>EncryptWithAESGCM: nonce || ciphertext || tag.</summary>
        public byte[] Encrypt(byte[] plaintext)
        {
            var output = new byte[NonceSize + plaintext.Length + TagSize];
            lock (_gate)
            {
                for (var i = 0; i < 3; i++)
                {
                    var w = _nonce[i];
                    output[i * 4] = (byte)w;
                    output[i * 4 + 1] = (byte)(w >> 8);
                    output[i * 4 + 2] = (byte)(w >> 16);
                    output[i * 4 + 3] = (byte)(w >> 24);
                }
                for (var i = 0; i < 3; i++)
                {
                    _nonce[i]++;
                    if (_nonce[i] != 0) break;
                }
                _encrypt.Encrypt(output.AsSpan(0, NonceSize), plaintext, output.AsSpan(NonceSize, plaintext.Length), output.AsSpan(NonceSize + plaintext.Length, TagSize));
            }
            return output;
        }

        /// <summary>DecryptWithAESGCM; null when the payload does not authenticate ("Error decrypting encrypted text").</summary>
        public byte[]? Decrypt(byte[] message)
        {
            if (message.Length < NonceSize + TagSize) return null;
            var length = message.Length - NonceSize - TagSize;
            var plaintext = new byte[length];
            try
            {
                lock (_gate) _decrypt.Decrypt(message.AsSpan(0, NonceSize), message.AsSpan(NonceSize, length), message.AsSpan(NonceSize + length, TagSize), plaintext);
                return plaintext;
            }
            catch (AuthenticationTagMismatchException)
            {
                return null;
            }
        }

        /// <summary>A sealed message under a key that is not the session's (for the WrongKeyChallenge fault).</summary>
        public static byte[] EncryptWithRandomKey(byte[] plaintext)
        {
            using var other = new AgentBlockCipher(RandomNumberGenerator.GetBytes(64));
            return other.Encrypt(plaintext);
        }

        public void Dispose()
        {
            _encrypt.Dispose();
            _decrypt.Dispose();
        }
    }

    /// <summary>Faults of the agent's session encryption (non-default; a test names its choice).</summary>
    public enum SandboxEncryptionFault
    {
        None,
        /// <summary>The first encrypted Output payload the agent sends has one ciphertext bit flipped (the digest is of the altered payload).</summary>
        TamperOutput,
        /// <summary>The encryption challenge is encrypted with a random key instead of the session's.</summary>
        WrongKeyChallenge,
    }
}
