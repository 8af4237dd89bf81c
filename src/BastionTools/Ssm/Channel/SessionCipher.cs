using System;
using System.Security.Cryptography;
using Org.BouncyCastle.Crypto;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Modes;
using Org.BouncyCastle.Crypto.Parameters;

namespace BastionTools.Ssm
{
    /// <summary>
    /// Session data encryption as the agent and the session-manager-plugin do it (KMSEncryption in the handshake):
    /// a 64-byte KMS data key is split in two AES-256 keys. The first half is the agent's: it encrypts what the agent
    /// sends and the client decrypts with it; the second half is the client's: it encrypts what the client sends and
    /// the agent decrypts with it (amazon-ssm-agent agent/session/crypto/blockcipher.go UpdateEncryptionKey,
    /// session-manager-plugin src/encryption/encrypter.go generateEncryptionKey). Each message is AES-GCM with a
    /// 12-byte nonce, 16-byte tag and no associated data, laid out as nonce || ciphertext || tag.
    /// <para>
    /// Nonces: the agent (since 3.3.808.0, crypto/nonce.go) counts up from a random start (the 12 bytes as three
    /// little-endian 32-bit words, carry from the first); the official client draws 12 random bytes per message. Both
    /// are valid GCM nonces; this client counts like the agent, so a nonce never repeats under one key.
    /// </para>
    /// <para>
    /// AES-GCM comes from BouncyCastle.Cryptography: the module targets netstandard2.0 and runs on .NET Framework
    /// (Windows PowerShell 5.1), which has no AesGcm. The keys live only in this object and are cleared on Dispose.
    /// </para>
    /// </summary>
    internal sealed class SessionCipher : IDisposable
    {
        /// <summary>The data key size the agent and the client ask KMS for (KMSKeySizeInBytes).</summary>
        public const int DataKeySize = 64;

        public const int NonceSize = 12;
        public const int TagSize = 16;

        private readonly object _gate = new();
        private readonly byte[] _agentKey = new byte[32];
        private readonly byte[] _clientKey = new byte[32];
        private readonly uint[] _nonce = new uint[NonceSize / 4];
        private bool _disposed;

        private SessionCipher(byte[] dataKey)
        {
            Buffer.BlockCopy(dataKey, 0, _agentKey, 0, 32);
            Buffer.BlockCopy(dataKey, 32, _clientKey, 0, 32);
            var start = new byte[NonceSize];
            using (var rng = RandomNumberGenerator.Create()) rng.GetBytes(start);
            for (var i = 0; i < _nonce.Length; i++)
            {
                _nonce[i] = start[i * 4] | (uint)start[i * 4 + 1] << 8 | (uint)start[i * 4 + 2] << 16 | (uint)start[i * 4 + 3] << 24;
            }
        }

        /// <summary>A cipher from the plaintext of a 64-byte data key (copied; the caller clears its own copy).</summary>
        public static SessionCipher FromDataKey(byte[] dataKey)
        {
            if (dataKey == null) throw new ArgumentNullException(nameof(dataKey));
            if (dataKey.Length != DataKeySize) throw new ArgumentException($"A session data key has {DataKeySize} bytes, not {dataKey.Length}.", nameof(dataKey));
            return new SessionCipher(dataKey);
        }

        /// <summary>Encrypts a payload the client sends (with the client's half of the key).</summary>
        public byte[] Encrypt(byte[] plaintext) => Encrypt(plaintext, 0, plaintext.Length);

        public byte[] Encrypt(byte[] plaintext, int offset, int count)
        {
            byte[] nonce;
            lock (_gate)
            {
                ThrowIfDisposed();
                nonce = NextNonce();
            }
            return Seal(_clientKey, nonce, plaintext, offset, count);
        }

        /// <summary>Decrypts a payload the agent sent (with the agent's half of the key).</summary>
        /// <exception cref="SessionDecryptionException">Too short, altered, or encrypted with another key.</exception>
        public byte[] Decrypt(byte[] message)
        {
            lock (_gate) ThrowIfDisposed();
            return Open(_agentKey, message);
        }

        /// <summary>AES-256-GCM seal: nonce || ciphertext || tag.</summary>
        internal static byte[] Seal(byte[] key, byte[] nonce, byte[] plaintext, int offset, int count)
        {
            var gcm = new GcmBlockCipher(AesUtilities.CreateEngine());
            gcm.Init(true, new AeadParameters(new KeyParameter(key), TagSize * 8, nonce));
            var output = new byte[NonceSize + gcm.GetOutputSize(count)];
            Buffer.BlockCopy(nonce, 0, output, 0, NonceSize);
            var written = gcm.ProcessBytes(plaintext, offset, count, output, NonceSize);
            gcm.DoFinal(output, NonceSize + written);
            return output;
        }

        /// <summary>AES-256-GCM open of nonce || ciphertext || tag.</summary>
        internal static byte[] Open(byte[] key, byte[] message)
        {
            if (message == null || message.Length < NonceSize + TagSize)
            {
                throw new SessionDecryptionException($"An encrypted payload has at least {NonceSize + TagSize} bytes; this one has {message?.Length ?? 0}.");
            }
            var nonce = new byte[NonceSize];
            Buffer.BlockCopy(message, 0, nonce, 0, NonceSize);
            var gcm = new GcmBlockCipher(AesUtilities.CreateEngine());
            gcm.Init(false, new AeadParameters(new KeyParameter(key), TagSize * 8, nonce));
            var output = new byte[gcm.GetOutputSize(message.Length - NonceSize)];
            try
            {
                var written = gcm.ProcessBytes(message, NonceSize, message.Length - NonceSize, output, 0);
                written += gcm.DoFinal(output, written);
                if (written != output.Length) Array.Resize(ref output, written);
                return output;
            }
            catch (InvalidCipherTextException)
            {
                Array.Clear(output, 0, output.Length);
                throw new SessionDecryptionException("The payload failed AES-GCM authentication: it was altered, or encrypted with another key.");
            }
        }

        // crypto/nonce.go GenerateNonce: the current state (little-endian words), then increment with carry.
        private byte[] NextNonce()
        {
            var nonce = new byte[NonceSize];
            for (var i = 0; i < _nonce.Length; i++)
            {
                var w = _nonce[i];
                nonce[i * 4] = (byte)w;
                nonce[i * 4 + 1] = (byte)(w >> 8);
                nonce[i * 4 + 2] = (byte)(w >> 16);
                nonce[i * 4 + 3] = (byte)(w >> 24);
            }
            for (var i = 0; i < _nonce.Length; i++)
            {
                _nonce[i]++;
                if (_nonce[i] != 0) break;
            }
            return nonce;
        }

        private void ThrowIfDisposed()
        {
            if (_disposed) throw new ObjectDisposedException(nameof(SessionCipher));
        }

        public void Dispose()
        {
            lock (_gate)
            {
                _disposed = true;
                Array.Clear(_agentKey, 0, _agentKey.Length);
                Array.Clear(_clientKey, 0, _clientKey.Length);
            }
        }
    }

    /// <summary>An encrypted payload from the agent did not decrypt: altered in transit, or encrypted with another key.</summary>
    internal sealed class SessionDecryptionException : Exception
    {
        public SessionDecryptionException(string message)
            : base(message)
        {
        }
    }
}
