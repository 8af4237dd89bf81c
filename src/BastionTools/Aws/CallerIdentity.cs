using System;
using System.Management.Automation;
using System.Threading;
using System.Threading.Tasks;
using Amazon;
using Amazon.Runtime;
using Amazon.SecurityToken;
using Amazon.SecurityToken.Model;

namespace BastionTools.Aws
{
    /// <summary>
    /// sts:GetCallerIdentity: the account of the credentials in use. AWS needs no permission for it (an explicit deny does
    /// not stop it), so it is how Grant-RdsIamUser completes the rds-db:connect policy when no account id was given.
    /// </summary>
    internal static class CallerIdentity
    {
        public static async Task<string> AccountAsync(ResolvedCredentials credentials, string region, string? endpointUrl, CancellationToken ct)
        {
            var config = new AmazonSecurityTokenServiceConfig { MaxErrorRetry = 2, Timeout = TimeSpan.FromSeconds(30) };
            if (!string.IsNullOrEmpty(endpointUrl))
            {
                config.ServiceURL = AwsApi.ServiceUrl(endpointUrl!, "sts");
                config.AuthenticationRegion = region;
            }
            else
            {
                config.RegionEndpoint = RegionEndpoint.GetBySystemName(region);
            }
            using var sts = new AmazonSecurityTokenServiceClient(credentials.SdkCredentials, config);
            try
            {
                var response = await sts.GetCallerIdentityAsync(new GetCallerIdentityRequest(), ct).ConfigureAwait(false);
                return response.Account;
            }
            catch (AmazonServiceException ex)
            {
                throw AwsErrors.Map(ex, "sts:GetCallerIdentity");
            }
            catch (AmazonClientException ex)
            {
                throw new BastionToolsException(ErrorIds.AwsServiceUnreachable, ErrorCategory.ConnectionError,
                    "STS could not be reached for the account id: " + ex.Message, "sts:GetCallerIdentity", "Pass -AccountId.", ex);
            }
        }
    }
}
