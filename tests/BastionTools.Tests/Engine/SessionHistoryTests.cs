using System;
using System.Collections.Generic;
using System.Linq;
using ErrorCategory = System.Management.Automation.ErrorCategory;
using System.Threading;
using System.Threading.Tasks;
using Amazon.Runtime;
using Amazon.SimpleSystemsManagement;
using Amazon.SimpleSystemsManagement.Model;
using BastionTools.Aws;
using BastionTools.Sandbox;
using BastionTools.Tests.Sandbox;
using Xunit;

namespace BastionTools.Tests.Engine
{
    /// <summary>
    /// Get-BastionSession -History's engine (AwsApi.DescribeSessionsAsync, SessionQuery) against the sandbox's
    /// ssm:DescribeSessions: the sessions the sandbox recorded, filtered, paged, IAM-checked; and the sandbox's answers
    /// to what the real API refuses (through the AWSSDK client).
    /// </summary>
    public sealed class SessionHistoryTests : IDisposable
    {
        private const string Bastion = "i-0a1b2c3d4e5f60001";
        private const string Legacy = "i-0a1b2c3d4e5f60002";
        private const string PortDocument = "AWS-StartPortForwardingSession";
        private readonly SandboxHost _host;
        private readonly SandboxCredential _alice;
        private readonly SandboxCredential _bob;
        private readonly AwsApi _alicesApi;
        private readonly AwsApi _bobsApi;
        private readonly DateTime _t0;

        public SessionHistoryTests()
        {
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");
            var world = SandboxWorld.CreateDefault();
            _alice = new SandboxCredential { AccessKeyId = "AKIAHISTORYALICE0001", SecretAccessKey = "history/alice", UserName = "alice" };
            _bob = new SandboxCredential { AccessKeyId = "AKIAHISTORYBOB000001", SecretAccessKey = "history/bob", UserName = "bob", Arn = "arn:aws:sts::123456789012:assumed-role/operators/bob" };
            world.AddCredential(_alice);
            world.AddCredential(_bob);
            // A frozen clock a minute apart per session (well inside SigV4's allowed skew), so start times are distinct.
            _t0 = new DateTime(DateTime.UtcNow.Year, DateTime.UtcNow.Month, DateTime.UtcNow.Day, DateTime.UtcNow.Hour, DateTime.UtcNow.Minute, 0, DateTimeKind.Utc).AddMinutes(-5);
            world.Clock.Freeze(_t0);
            _host = SandboxTestSupport.Start(world);
            _alicesApi = Api(_alice);
            _bobsApi = Api(_bob);
        }

        public void Dispose()
        {
            _alicesApi.Dispose();
            _bobsApi.Dispose();
            _host.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        private AwsApi Api(SandboxCredential c) =>
            new(new ResolvedCredentials(new BasicAWSCredentials(c.AccessKeyId, c.SecretAccessKey), "test", null), _host.World.Region, _host.SsmEndpoint.ToString());

        private static Dictionary<string, List<string>> Port(string port) => new() { ["portNumber"] = new List<string> { port } };

        /// <summary>Starts a session at the clock's time, then moves the clock a minute on.</summary>
        private async Task<string> StartAsync(AwsApi api, string target, string? reason = null)
        {
            var s = await api.StartSessionAsync(target, PortDocument, Port("5432"), reason, CancellationToken.None);
            _host.World.Clock.Advance(TimeSpan.FromMinutes(1));
            return s.SessionId;
        }

        [Fact(Timeout = 60_000)]
        public async Task History_ListsEndedSessionsNewestFirst_WithOwnerDocumentReasonAndTimes_ActiveListsTheRest()
        {
            var first = await StartAsync(_alicesApi, Bastion, "ticket OPS-1");
            var second = await StartAsync(_bobsApi, Legacy);
            var live = await StartAsync(_alicesApi, Bastion);
            await _alicesApi.TerminateSessionAsync(first, CancellationToken.None);
            _host.World.Clock.Advance(TimeSpan.FromMinutes(1));
            await _bobsApi.TerminateSessionAsync(second, CancellationToken.None);

            var history = await _alicesApi.DescribeSessionsAsync(new SessionQuery(), CancellationToken.None);
            Assert.Equal(new[] { second, first }, history.Select(r => r.SessionId));
            var f = history[1];
            Assert.Equal(Bastion, f.Target);
            Assert.Equal("arn:aws:iam::123456789012:user/alice", f.Owner);
            Assert.Equal(PortDocument, f.DocumentName);
            Assert.Equal("ticket OPS-1", f.Reason);
            Assert.Equal("Terminated", f.Status);
            Assert.Equal(_t0, f.StartDate!.Value.ToUniversalTime());
            Assert.Equal(_t0.AddMinutes(3), f.EndDate!.Value.ToUniversalTime());
            Assert.Equal("arn:aws:sts::123456789012:assumed-role/operators/bob", history[0].Owner);
            Assert.Null(history[0].Reason);

            var active = await _alicesApi.DescribeSessionsAsync(new SessionQuery { History = false }, CancellationToken.None);
            var only = Assert.Single(active);
            Assert.Equal(live, only.SessionId);
            Assert.Equal("Connecting", only.Status);
            Assert.Null(only.EndDate);
        }

        [Fact(Timeout = 60_000)]
        public async Task Filters_TargetOwnerStatusSessionIdAndStartTime_NarrowTheHistory()
        {
            var a1 = await StartAsync(_alicesApi, Bastion);
            var b1 = await StartAsync(_bobsApi, Bastion);
            var a2 = await StartAsync(_alicesApi, Legacy);
            foreach (var id in new[] { a1, b1, a2 }) await _alicesApi.TerminateSessionAsync(id, CancellationToken.None);

            async Task<string[]> Ids(SessionQuery q) => (await _alicesApi.DescribeSessionsAsync(q, CancellationToken.None)).Select(r => r.SessionId).ToArray();
            Assert.Equal(new[] { b1, a1 }, await Ids(new SessionQuery { Target = Bastion }));
            Assert.Equal(new[] { a2, a1 }, await Ids(new SessionQuery { Owner = "arn:aws:iam::123456789012:user/alice" }));
            Assert.Equal(new[] { a1 }, await Ids(new SessionQuery { Owner = "arn:aws:iam::123456789012:user/alice", Target = Bastion }));
            Assert.Equal(new[] { b1 }, await Ids(new SessionQuery { SessionId = b1 }));
            Assert.Equal(new[] { a2, b1, a1 }, await Ids(new SessionQuery { Status = "Terminated" }));
            Assert.Empty(await Ids(new SessionQuery { Status = "Failed" }));
            // InvokedAfter is inclusive, InvokedBefore exclusive, both on the start time; local times are sent as UTC.
            Assert.Equal(new[] { a2, b1 }, await Ids(new SessionQuery { After = _t0.AddMinutes(1).ToLocalTime() }));
            Assert.Equal(new[] { a1 }, await Ids(new SessionQuery { Before = _t0.AddMinutes(1) }));
            Assert.Equal(new[] { b1 }, await Ids(new SessionQuery { After = _t0.AddMinutes(1), Before = _t0.AddMinutes(2) }));
        }

        [Fact]
        public void Query_SendsTheDocumentedFilterKeysAndUtcTimestamps()
        {
            var local = new DateTime(2024, 8, 29, 12, 30, 15, DateTimeKind.Local);
            var q = new SessionQuery { Target = Bastion, Owner = "arn:aws:iam::1:user/a", Status = "Failed", SessionId = "a-1", After = new DateTime(2024, 8, 29, 0, 0, 0, DateTimeKind.Utc), Before = local };
            var filters = q.Filters();
            Assert.Equal(new[] { "InvokedAfter", "InvokedBefore", "Target", "Owner", "Status", "SessionId" }, filters.Select(f => f.Key));
            Assert.Equal("2024-08-29T00:00:00Z", filters[0].Value);
            Assert.Equal(local.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture), filters[1].Value);
            Assert.Empty(new SessionQuery().Filters());
            Assert.Equal(200, new SessionQuery().PageSize(0));
            Assert.Equal(5, new SessionQuery { Limit = 12 }.PageSize(7));
            Assert.Equal(200, new SessionQuery { Limit = 1000 }.PageSize(100));
        }

        [Fact(Timeout = 120_000)]
        public async Task Pages_AreFollowedPastTheServicesTwoHundred_AndALimitStopsEarly()
        {
            _host.World.Clock.Unfreeze();
            var started = new List<string>();
            for (var i = 0; i < 205; i++)
            {
                var s = await _alicesApi.StartSessionAsync(Bastion, PortDocument, Port("22"), null, CancellationToken.None);
                await _alicesApi.TerminateSessionAsync(s.SessionId, CancellationToken.None);
                started.Add(s.SessionId);
            }
            var all = await _alicesApi.DescribeSessionsAsync(new SessionQuery(), CancellationToken.None);
            Assert.Equal(205, all.Count);
            Assert.Equal(started.OrderBy(x => x, StringComparer.Ordinal), all.Select(r => r.SessionId).OrderBy(x => x, StringComparer.Ordinal));
            var some = await _alicesApi.DescribeSessionsAsync(new SessionQuery { Limit = 3 }, CancellationToken.None);
            Assert.Equal(all.Take(3).Select(r => r.SessionId), some.Select(r => r.SessionId));
        }

        [Fact(Timeout = 60_000)]
        public async Task WithoutDescribeSessions_TheDenialNamesTheAction()
        {
            _alice.Policy = new SandboxIamPolicy(new[] { new SandboxIamStatement("Allow", new[] { "ssm:StartSession" }, new[] { "*" }) });
            var denied = await Assert.ThrowsAsync<BastionToolsException>(() => _alicesApi.DescribeSessionsAsync(new SessionQuery(), CancellationToken.None));
            Assert.Equal(ErrorIds.AwsAccessDenied, denied.ErrorId);
            Assert.Equal(ErrorCategory.PermissionDenied, denied.Category);
            Assert.Contains("ssm:DescribeSessions", denied.Message, StringComparison.Ordinal);

            _alice.Policy = new SandboxIamPolicy(new[] { new SandboxIamStatement("Allow", new[] { "ssm:DescribeSessions" }, new[] { "*" }) });
            Assert.Empty(await _alicesApi.DescribeSessionsAsync(new SessionQuery(), CancellationToken.None));
        }

        [Fact(Timeout = 60_000)]
        public async Task Sandbox_RefusesWhatTheApiRefuses()
        {
            using var ssm = SandboxTestSupport.SsmClient(_host);
            async Task<AmazonSimpleSystemsManagementException> Refused(DescribeSessionsRequest r) =>
                await Assert.ThrowsAnyAsync<AmazonSimpleSystemsManagementException>(() => ssm.DescribeSessionsAsync(r));

            var noState = await Refused(new DescribeSessionsRequest());
            Assert.Equal("ValidationException", noState.ErrorCode);
            Assert.Contains("'state'", noState.Message, StringComparison.Ordinal);
            Assert.Equal("ValidationException", (await Refused(new DescribeSessionsRequest { State = new Amazon.SimpleSystemsManagement.SessionState("Ended") })).ErrorCode);
            foreach (var max in new[] { 0, 201 })
            {
                var e = await Refused(new DescribeSessionsRequest { State = Amazon.SimpleSystemsManagement.SessionState.History, MaxResults = max });
                Assert.Equal("ValidationException", e.ErrorCode);
                Assert.Contains("'maxResults'", e.Message, StringComparison.Ordinal);
            }
            var badKey = await Refused(new DescribeSessionsRequest
            {
                State = Amazon.SimpleSystemsManagement.SessionState.History,
                Filters = new List<SessionFilter> { new() { Key = new SessionFilterKey("Document"), Value = "x" } },
            });
            Assert.Equal("ValidationException", badKey.ErrorCode);
            Assert.Contains("InvokedAfter, InvokedBefore, Target, Owner, Status, SessionId", badKey.Message, StringComparison.Ordinal);
            var badTime = await Refused(new DescribeSessionsRequest
            {
                State = Amazon.SimpleSystemsManagement.SessionState.History,
                Filters = new List<SessionFilter> { new() { Key = SessionFilterKey.InvokedAfter, Value = "yesterday" } },
            });
            Assert.Equal("ValidationException", badTime.ErrorCode);
            var tooMany = await Refused(new DescribeSessionsRequest
            {
                State = Amazon.SimpleSystemsManagement.SessionState.History,
                Filters = Enumerable.Range(0, 7).Select(_ => new SessionFilter { Key = SessionFilterKey.Target, Value = Bastion }).ToList(),
            });
            Assert.Equal("ValidationException", tooMany.ErrorCode);
            var token = await Assert.ThrowsAsync<InvalidNextTokenException>(() => ssm.DescribeSessionsAsync(new DescribeSessionsRequest { State = Amazon.SimpleSystemsManagement.SessionState.History, NextToken = "bm90LWEtdG9rZW4=" }));
            Assert.Equal("InvalidNextToken", token.ErrorCode);

            // One page of two, then the rest with the token.
            for (var i = 0; i < 3; i++) await _alicesApi.TerminateSessionAsync(await StartAsync(_alicesApi, Bastion), CancellationToken.None);
            var page1 = await ssm.DescribeSessionsAsync(new DescribeSessionsRequest { State = Amazon.SimpleSystemsManagement.SessionState.History, MaxResults = 2 });
            Assert.Equal(2, page1.Sessions.Count);
            Assert.False(string.IsNullOrEmpty(page1.NextToken));
            var page2 = await ssm.DescribeSessionsAsync(new DescribeSessionsRequest { State = Amazon.SimpleSystemsManagement.SessionState.History, MaxResults = 2, NextToken = page1.NextToken });
            Assert.Single(page2.Sessions);
            Assert.True(string.IsNullOrEmpty(page2.NextToken));
        }
    }
}
