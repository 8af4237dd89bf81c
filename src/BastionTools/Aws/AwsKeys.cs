using System;

namespace BastionTools.Aws
{
    /// <summary>
    /// A resolved set of AWS keys. Never printed: <see cref="ToString"/> shows only where the keys came from
    /// and the last four characters of the access key id.
    /// </summary>
    internal sealed class AwsKeys
    {
        public AwsKeys(string accessKeyId, string secretAccessKey, string? sessionToken)
        {
            if (string.IsNullOrWhiteSpace(accessKeyId)) throw new ArgumentException("The access key id is empty.", nameof(accessKeyId));
            if (string.IsNullOrWhiteSpace(secretAccessKey)) throw new ArgumentException("The secret access key is empty.", nameof(secretAccessKey));
            AccessKeyId = accessKeyId.Trim();
            SecretAccessKey = secretAccessKey.Trim();
            SessionToken = string.IsNullOrWhiteSpace(sessionToken) ? null : sessionToken!.Trim();
        }

        public string AccessKeyId { get; }
        public string SecretAccessKey { get; }
        public string? SessionToken { get; }
        public bool IsTemporary => SessionToken != null;

        /// <summary>The access key id with all but its last four characters hidden.</summary>
        public string MaskedAccessKeyId => Redactor.MaskIdentifier(AccessKeyId);

        public override string ToString() => "AwsKeys(" + MaskedAccessKeyId + (IsTemporary ? ", temporary" : "") + ")";
    }
}
