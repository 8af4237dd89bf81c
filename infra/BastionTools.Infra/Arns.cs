using Amazon.CDK;

namespace BastionTools.Infra
{
    /// <summary>
    /// ARNs built from the AWS::Partition/Region/AccountId pseudo parameters, so the template (and the cdk-nag finding
    /// ids its acknowledgements name) is the same for every environment.
    /// </summary>
    internal static class Arns
    {
        public static string Regional(string service, string resource) =>
            $"arn:{Aws.PARTITION}:{service}:{Aws.REGION}:{Aws.ACCOUNT_ID}:{resource}";

        /// <summary>AWS-owned SSM documents have no account in their ARN.</summary>
        public static string AwsDocument(string name) => $"arn:{Aws.PARTITION}:ssm:{Aws.REGION}::document/{name}";

        /// <summary>How cdk-nag spells a pseudo-parameter ARN in IAM4/IAM5 finding ids (for applies_to).</summary>
        public static string NagRegional(string service, string resource) =>
            $"arn:<AWS::Partition>:{service}:<AWS::Region>:<AWS::AccountId>:{resource}";
    }
}
