using System.Linq;
using Xunit;

namespace BastionTools.Infra.Tests
{
    /// <summary>The outputs are what the cmdlets take: the README's runbook reads them by these names.</summary>
    [Collection(InfraCollection.Name)]
    public sealed class OutputsTests
    {
        private readonly Stacks _stacks;

        public OutputsTests(Stacks stacks) => _stacks = stacks;

        private static string Output(Synthesized s, string name) =>
            Synthesized.Render(s.Json.GetProperty("Outputs").GetProperty(name).GetProperty("Value"));

        [Fact]
        public void Outputs_carry_what_the_cmdlets_take()
        {
            var s = _stacks.Default;
            var db = s.Id(s.Stack.Database.Instance);
            Assert.Equal("{" + s.Id(s.Stack.Bastion.Instance) + "}", Output(s, "Target"));
            Assert.Equal("bastiontools:role=bastion", Output(s, "BastionTag"));
            Assert.Equal("bastion", Output(s, "BastionName"));
            Assert.Equal("{" + db + ".Endpoint.Address}", Output(s, "DbHost"));
            Assert.Equal("{" + db + ".Endpoint.Port}", Output(s, "DbPort"));
            Assert.Equal("app", Output(s, "Database"));
            Assert.Equal("{" + db + ".DbiResourceId}", Output(s, "DbiResourceId"));
            Assert.Equal("{AWS::AccountId}", Output(s, "AccountId"));
            Assert.Equal("postgres", Output(s, "MasterUserName"));
            Assert.Equal("{" + db + ".MasterUserSecret.SecretArn}", Output(s, "MasterSecretArn"));
            Assert.Equal("{" + s.Id(s.Stack.Logging.LogGroup) + "}", Output(s, "SessionLogGroup"));
            Assert.Equal("{" + s.Id(s.Stack.Access.Policy) + "}", Output(s, "OperatorPolicyArn"));
            Assert.Equal(12, s.Json.GetProperty("Outputs").EnumerateObject().Count());
        }

        [Fact]
        public void Role_outputs_appear_with_their_roles()
        {
            var s = _stacks.Github;
            Assert.Equal("{" + s.Id(s.Stack.Access.OperatorRole!) + ".Arn}", Output(s, "OperatorRoleArn"));
            Assert.Equal("{" + s.Id(s.Stack.Access.GithubRole!) + ".Arn}", Output(s, "GithubRoleArn"));
            Assert.False(_stacks.Default.Json.GetProperty("Outputs").TryGetProperty("GithubRoleArn", out _));
        }
    }
}
