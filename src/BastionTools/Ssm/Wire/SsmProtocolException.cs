using System;

namespace BastionTools.Ssm
{
    /// <summary>
    /// A data-channel frame (binary agent message, smux frame or JSON payload) that does not follow the wire format.
    /// Decoders throw only this type for bad input, so callers can drop or report the frame without guessing.
    /// </summary>
    internal sealed class SsmProtocolException : Exception
    {
        public SsmProtocolException(string message)
            : base(message)
        {
        }

        public SsmProtocolException(string message, Exception inner)
            : base(message, inner)
        {
        }
    }
}
