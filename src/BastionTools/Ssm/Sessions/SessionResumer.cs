using System.Threading;
using System.Threading.Tasks;
using BastionTools.Aws;

namespace BastionTools.Ssm
{
    /// <summary>The resume callback every session gives its data channel: ResumeSession, with the answers that end retrying.</summary>
    internal static class SessionResumer
    {
        /// <summary>
        /// A new endpoint for <paramref name="sessionId"/>; null when the service answers without a token (timed out).
        /// A session the service does not know any more, or that the caller may not resume, throws
        /// <see cref="SessionResumeRefusedException"/> (the channel then ends at once); anything else (network, throttling,
        /// a service error) is left to the channel's retries.
        /// </summary>
        public static async Task<StreamEndpoint?> ResumeAsync(IAwsApi api, string sessionId, CancellationToken cancellationToken)
        {
            try
            {
                return await api.ResumeSessionAsync(sessionId, cancellationToken).ConfigureAwait(false);
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.BastionSessionNotFound)
            {
                throw new SessionResumeRefusedException(
                    $"Session {sessionId} can no longer be resumed: the service says it has ended ({ex.Message}).", sessionGone: true, ex);
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.AwsAccessDenied || ex.ErrorId == ErrorIds.AwsAuthenticationFailed ||
                                                   ex.ErrorId == ErrorIds.AwsCredentialsUnavailable || ex.ErrorId == ErrorIds.AwsCredentialsNotFound)
            {
                throw new SessionResumeRefusedException(
                    $"Session {sessionId} could not be resumed: {ex.Message} (ssm:ResumeSession needs valid credentials that allow it).", sessionGone: false, ex);
            }
            catch (BastionToolsException ex) when (ex.ErrorId == ErrorIds.StreamUrlInsecure)
            {
                // Never retried: the token would go over a channel that is not encrypted.
                throw new SessionResumeRefusedException(ex.Message, sessionGone: false, ex);
            }
        }
    }
}
