using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using System.Management.Automation;
using System.Management.Automation.Runspaces;
using BastionTools.Commands;
using BastionTools.Sandbox;
using Xunit;

namespace BastionTools.Tests.Diagnostics
{
    /// <summary>
    /// What reaches an ErrorRecord is redacted at every level: the message, ErrorDetails, and the whole inner-exception
    /// chain (AWS SDK and Npgsql exceptions keep their own texts, which can echo a canonical request with the session
    /// token, or a connection string with a password). The engine keeps the real exceptions; only copies go out.
    /// </summary>
    public sealed class ErrorRedactionTests : IDisposable
    {
        private const string Token = "FwoGZXIvYXdzREDACTIONTESTTOKENb3JpZ2luX2VjEJr//////////wEaCXVzLXdlc3QtMiJHMEUCIQ";
        private const string RealSecret = "real-secret-key-that-AWS-holds-0000000001";
        private const string WrongSecret = "wrong-secret-key-the-user-typed-000000002";
        private const string AccessKeyId = "ASIAREDACTIONTEST001";

        private readonly SandboxHost _host;

        public ErrorRedactionTests()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            _host = new SandboxHost(SandboxWorld.CreateDefault(), new SandboxHostOptions());
            _host.Start();
            _host.World.EchoCanonicalRequestOnSignatureMismatch = true;
            _host.World.AddCredential(new SandboxCredential { AccessKeyId = AccessKeyId, SecretAccessKey = RealSecret, SessionToken = Token });
        }

        public void Dispose() => _host.Dispose();

        /// <summary>
        /// Get-BastionInstance in a real PowerShell runspace with a wrong secret key and a session token: AWS answers
        /// SignatureDoesNotMatch and echoes the canonical request, "x-amz-security-token:&lt;token&gt;" included. The user
        /// sees the error, with the SDK's exception under it, and never the token.
        /// </summary>
        [Fact]
        public void AnAwsErrorEchoingTheSessionToken_ReachesTheUserRedacted_AtEveryLevel()
        {
            var iss = InitialSessionState.CreateDefault2();
            iss.Commands.Add(new SessionStateCmdletEntry("Get-BastionInstance", typeof(GetBastionInstanceCommand), null));
            using var runspace = RunspaceFactory.CreateRunspace(iss);
            runspace.Open();
            using var ps = PowerShell.Create();
            ps.Runspace = runspace;
            ps.AddCommand("Get-BastionInstance")
                .AddParameter("AccessKey", AccessKeyId).AddParameter("SecretKey", WrongSecret).AddParameter("SessionToken", Token)
                .AddParameter("Region", _host.World.Region).AddParameter("EndpointUrl", _host.SsmEndpoint.ToString())
                .AddParameter("Verbose").AddParameter("Debug");
            var records = new List<ErrorRecord>();
            try
            {
                ps.Invoke();
            }
            catch (RuntimeException ex) when (ex.ErrorRecord != null)
            {
                records.Add(ex.ErrorRecord);
            }
            records.AddRange(ps.Streams.Error);
            var record = Assert.Single(records);
            Assert.Equal("AwsAuthenticationFailed,BastionTools.Commands.GetBastionInstanceCommand", record.FullyQualifiedErrorId);

            // The AWS answer did reach the user (echo included), only redacted.
            var chain = Chain(record.Exception).ToList();
            Assert.True(chain.Count >= 2, "the SDK's exception is kept under the module's");
            Assert.Contains(chain, e => e.Message.Contains("The Canonical String for this request should have been") && e.Message.Contains("x-amz-security-token:" + Redactor.Mask));
            Assert.Contains(chain.Skip(1), e => e is RedactedException r && r.OriginalType.StartsWith("Amazon.", StringComparison.Ordinal));

            foreach (var text in Texts(record).Concat(ps.Streams.Verbose.Select(v => v.Message)).Concat(ps.Streams.Debug.Select(d => d.Message)))
            {
                Assert.DoesNotContain(Token, text);
                Assert.DoesNotContain(WrongSecret, text);
                Assert.DoesNotContain(RealSecret, text);
            }
        }

        /// <summary>A module error over an SDK-like chain: every message, the Data and ToString are redacted with the command's secrets and the patterns.</summary>
        [Fact]
        public void ToErrorRecord_RedactsTheWholeInnerChain_AndDropsData()
        {
            var deepest = new InvalidOperationException("Host=db;Username=app;Password=hunter2-password;SSL Mode=VerifyFull");
            var middle = new System.IO.IOException("request failed; X-Amz-Security-Token: " + Token, deepest);
            middle.Data["Request"] = "x-amz-security-token:" + Token;
            var top = new BastionToolsException(ErrorIds.AwsRequestFailed, ErrorCategory.NotSpecified,
                "call failed with " + WrongSecret, "target " + WrongSecret, "rotate " + WrongSecret, new AggregateException(middle));
            var redactor = new Redactor();
            redactor.Add(WrongSecret);

            var record = top.ToErrorRecord(redactor);
            var chain = Chain(record.Exception).ToList();
            Assert.Equal(4, chain.Count);
            Assert.Equal(new[] { typeof(AggregateException).FullName, typeof(System.IO.IOException).FullName, typeof(InvalidOperationException).FullName },
                chain.Skip(1).Cast<RedactedException>().Select(r => r.OriginalType));
            Assert.All(chain.Skip(1), e => Assert.Empty(e.Data));
            Assert.Equal(ErrorIds.AwsRequestFailed, ((BastionToolsException)record.Exception).ErrorId);
            foreach (var text in Texts(record))
            {
                Assert.DoesNotContain(Token, text);
                Assert.DoesNotContain(WrongSecret, text);
                Assert.DoesNotContain("hunter2", text);
            }
            // Pattern-only (no command secrets known): still no token or password under it.
            foreach (var text in Texts(top.ToErrorRecord()))
            {
                Assert.DoesNotContain(Token, text);
                Assert.DoesNotContain("hunter2", text);
            }
            // The engine's own exception is untouched: it still decides by the real inner types.
            Assert.IsType<AggregateException>(top.InnerException);
        }

        private static IEnumerable<Exception> Chain(Exception? e)
        {
            for (; e != null; e = e.InnerException) yield return e;
        }

        private static IEnumerable<string> Texts(ErrorRecord record)
        {
            yield return record.ToString();
            yield return record.ErrorDetails?.Message ?? "";
            yield return record.ErrorDetails?.RecommendedAction ?? "";
            yield return record.TargetObject?.ToString() ?? "";
            yield return record.Exception.ToString();
            foreach (var e in Chain(record.Exception))
            {
                yield return e.Message;
                yield return e.ToString();
                foreach (DictionaryEntry d in e.Data) yield return d.Key + "=" + d.Value;
            }
        }
    }
}
