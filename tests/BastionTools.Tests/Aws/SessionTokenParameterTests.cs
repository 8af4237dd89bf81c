using System;
using System.IO;
using System.Management.Automation;
using System.Management.Automation.Runspaces;
using BastionTools.Commands;
using Xunit;

namespace BastionTools.Tests.Aws
{
    /// <summary>-SessionToken alone, through a real PowerShell runspace: a terminating parameter error, never ignored.</summary>
    public sealed class SessionTokenParameterTests : IDisposable
    {
        private readonly string _credentials = Path.Combine(Path.GetTempPath(), "bt-creds-" + Guid.NewGuid().ToString("n"));

        public SessionTokenParameterTests()
        {
            // A profile that works on its own: before, a lone -SessionToken was dropped and this profile's keys used.
            File.WriteAllLines(_credentials, new[] { "[work]", "aws_access_key_id = AKIAPROFILEKEY000001", "aws_secret_access_key = profile-secret-0000000000000000000000" });
        }

        public void Dispose() => File.Delete(_credentials);

        [Fact]
        public void SessionTokenAlone_EndsTheCommand_WithAwsCredentialsIncomplete()
        {
            var iss = InitialSessionState.CreateDefault2();
            iss.Commands.Add(new SessionStateCmdletEntry("New-RdsIamToken", typeof(NewRdsIamTokenCommand), null));
            using var runspace = RunspaceFactory.CreateRunspace(iss);
            runspace.Open();
            using var ps = PowerShell.Create();
            ps.Runspace = runspace;
            ps.AddCommand("New-RdsIamToken")
                .AddParameter("Hostname", "demo.c0ffee123456.us-west-2.rds.amazonaws.com").AddParameter("UserName", "app")
                .AddParameter("ProfileName", "work").AddParameter("ProfileLocation", _credentials)
                .AddParameter("SessionToken", "lone-session-token-value");
            var ex = Assert.ThrowsAny<RuntimeException>(() => ps.Invoke());
            Assert.NotNull(ex.ErrorRecord);
            Assert.Equal("AwsCredentialsIncomplete,BastionTools.Commands.NewRdsIamTokenCommand", ex.ErrorRecord.FullyQualifiedErrorId);
            Assert.Equal(ErrorCategory.InvalidArgument, ex.ErrorRecord.CategoryInfo.Category);
            Assert.DoesNotContain("lone-session-token-value", ex.ErrorRecord.ToString());
        }
    }
}
