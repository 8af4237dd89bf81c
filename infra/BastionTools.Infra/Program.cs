using System;
using Amazon.CDK;

namespace BastionTools.Infra
{
    /// <summary>The CDK app ('npx cdk synth|deploy' runs it through cdk.json). Settings come from the CDK context.</summary>
    internal static class Program
    {
        private static int Main()
        {
            var app = new App();
            BastionSettings settings;
            try
            {
                settings = BastionSettings.FromContext(key => app.Node.TryGetContext(key));
            }
            catch (ArgumentException ex)
            {
                Console.Error.WriteLine("BastionTools.Infra: " + ex.Message);
                return 2;
            }
            var stackName = app.Node.TryGetContext("stackName") as string ?? "BastionTools";
            _ = new BastionStack(app, stackName, new BastionStackProps
            {
                Settings = settings,
                Description = "BastionTools: private RDS PostgreSQL behind a Session Manager bastion with IAM database authentication",
                Env = new Amazon.CDK.Environment
                {
                    Account = System.Environment.GetEnvironmentVariable("CDK_DEFAULT_ACCOUNT"),
                    Region = System.Environment.GetEnvironmentVariable("CDK_DEFAULT_REGION"),
                },
            });
            app.Synth();
            return 0;
        }
    }
}
