using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Threading.Tasks;
using Amazon.EC2;
using Amazon.EC2.Model;
using Amazon.Runtime;
using BastionTools.Sandbox;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Sandbox
{
    public class SandboxEc2Tests
    {
        private static List<Instance> Flatten(DescribeInstancesResponse r) => r.Reservations.SelectMany(x => x.Instances).ToList();

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DescribeInstances_ByNameTag_ReturnsTheInstanceWithItsFields()
        {
            await using var host = Start();
            using var ec2 = Ec2(host);

            var response = await ec2.DescribeInstancesAsync(new DescribeInstancesRequest
            {
                Filters = new List<Filter> { new("tag:Name", new List<string> { "bastion" }) },
            });
            var reservation = Assert.Single(response.Reservations);
            Assert.Equal("123456789012", reservation.OwnerId);
            var instance = Assert.Single(reservation.Instances);
            Assert.Equal("i-0a1b2c3d4e5f60001", instance.InstanceId);
            Assert.Equal(InstanceStateName.Running, instance.State.Name);
            Assert.Equal(16, instance.State.Code);
            Assert.Equal("10.0.1.10", instance.PrivateIpAddress);
            Assert.Equal("Linux/UNIX", instance.PlatformDetails);
            Assert.Equal("ip-10-0-1-10.us-west-2.compute.internal", instance.PrivateDnsName);
            Assert.Equal("bastion", instance.Tags.Single(t => t.Key == "Name").Value);
            Assert.Equal("sandbox", instance.Tags.Single(t => t.Key == "Environment").Value);
            Assert.True(string.IsNullOrEmpty(response.NextToken));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DescribeInstances_ByIds_TagKey_Wildcard_AndState()
        {
            var world = SandboxWorld.CreateDefault();
            world.AddInstance(new SandboxInstance { InstanceId = "i-0a1b2c3d4e5f60004", Name = "stopped-box", State = "stopped", PrivateIpAddress = "10.0.1.13" });
            world.AddInstance(new SandboxInstance { InstanceId = "i-0a1b2c3d4e5f60005", Name = null, Tags = { ["Team"] = "data" }, PrivateIpAddress = "10.0.1.14" });
            await using var host = Start(world);
            using var ec2 = Ec2(host);

            var byIds = Flatten(await ec2.DescribeInstancesAsync(new DescribeInstancesRequest { InstanceIds = new List<string> { "i-0a1b2c3d4e5f60002", "i-0a1b2c3d4e5f60004" } }));
            Assert.Equal(new[] { "i-0a1b2c3d4e5f60002", "i-0a1b2c3d4e5f60004" }, byIds.Select(i => i.InstanceId));
            Assert.Equal(InstanceStateName.Stopped, byIds[1].State.Name);

            var byIdFilter = Flatten(await ec2.DescribeInstancesAsync(new DescribeInstancesRequest { Filters = new List<Filter> { new("instance-id", new List<string> { "i-0a1b2c3d4e5f60003" }) } }));
            Assert.Equal("bastion-offline", byIdFilter.Single().Tags.Single(t => t.Key == "Name").Value);

            var tagKey = Flatten(await ec2.DescribeInstancesAsync(new DescribeInstancesRequest { Filters = new List<Filter> { new("tag-key", new List<string> { "Team" }) } }));
            Assert.Equal("i-0a1b2c3d4e5f60005", tagKey.Single().InstanceId);

            var wildcard = Flatten(await ec2.DescribeInstancesAsync(new DescribeInstancesRequest
            {
                Filters = new List<Filter>
                {
                    new("tag:Name", new List<string> { "bastion*" }),
                    new("instance-state-name", new List<string> { "running" }),
                },
            }));
            Assert.Equal(new[] { "i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002", "i-0a1b2c3d4e5f60003" }, wildcard.Select(i => i.InstanceId));

            var stopped = Flatten(await ec2.DescribeInstancesAsync(new DescribeInstancesRequest { Filters = new List<Filter> { new("instance-state-name", new List<string> { "stopped" }) } }));
            Assert.Equal("i-0a1b2c3d4e5f60004", stopped.Single().InstanceId);

            var none = await ec2.DescribeInstancesAsync(new DescribeInstancesRequest { Filters = new List<Filter> { new("tag:Name", new List<string> { "nothing-called-this" }) } });
            Assert.Empty(none.Reservations ?? new List<Reservation>());
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DescribeInstances_Errors_AreEc2Errors()
        {
            await using var host = Start();
            using var ec2 = Ec2(host);

            var notFound = await Assert.ThrowsAsync<AmazonEC2Exception>(() => ec2.DescribeInstancesAsync(new DescribeInstancesRequest { InstanceIds = new List<string> { "i-0fffffffffffffff0" } }));
            Assert.Equal("InvalidInstanceID.NotFound", notFound.ErrorCode);
            Assert.Equal("The instance ID 'i-0fffffffffffffff0' does not exist", notFound.Message);

            var malformed = await Assert.ThrowsAsync<AmazonEC2Exception>(() => ec2.DescribeInstancesAsync(new DescribeInstancesRequest { InstanceIds = new List<string> { "bastion" } }));
            Assert.Equal("InvalidInstanceID.Malformed", malformed.ErrorCode);

            var badFilter = await Assert.ThrowsAsync<AmazonEC2Exception>(() => ec2.DescribeInstancesAsync(new DescribeInstancesRequest { Filters = new List<Filter> { new("colour", new List<string> { "blue" }) } }));
            Assert.Equal("InvalidParameterValue", badFilter.ErrorCode);
            Assert.Equal(HttpStatusCode.BadRequest, badFilter.StatusCode);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task DescribeInstances_Paginates()
        {
            await using var host = Start(ManyInstances(12));
            using var ec2 = Ec2(host);

            var pages = new List<int>();
            var seen = new List<string>();
            string? next = null;
            do
            {
                var page = await ec2.DescribeInstancesAsync(new DescribeInstancesRequest { MaxResults = 5, NextToken = next });
                var items = Flatten(page);
                pages.Add(items.Count);
                seen.AddRange(items.Select(i => i.InstanceId));
                next = string.IsNullOrEmpty(page.NextToken) ? null : page.NextToken;
            } while (next != null && pages.Count < 10);

            Assert.Equal(new[] { 5, 5, 2 }, pages);
            Assert.Equal(host.World.Instances.Select(i => i.InstanceId), seen);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task WrongSecret_IsSignatureDoesNotMatch_UnknownKey_IsAuthFailure()
        {
            await using var host = Start();

            using (var badSecret = Ec2(host, new BasicAWSCredentials(SandboxWorld.DefaultAccessKeyId, "not-the-right-secret-000000000000000000")))
            {
                var ex = await Assert.ThrowsAsync<AmazonEC2Exception>(() => badSecret.DescribeInstancesAsync(new DescribeInstancesRequest()));
                Assert.Equal("SignatureDoesNotMatch", ex.ErrorCode);
                Assert.Equal(HttpStatusCode.Forbidden, ex.StatusCode);
                Assert.StartsWith("The request signature we calculated does not match", ex.Message);
            }
            using (var unknown = Ec2(host, new BasicAWSCredentials("AKIAUNKNOWNKEY000000", SandboxWorld.DefaultSecretAccessKey)))
            {
                var ex = await Assert.ThrowsAsync<AmazonEC2Exception>(() => unknown.DescribeInstancesAsync(new DescribeInstancesRequest()));
                Assert.Equal("AuthFailure", ex.ErrorCode);
                Assert.Equal(HttpStatusCode.Unauthorized, ex.StatusCode);
                Assert.Equal("AWS was not able to validate the provided access credentials", ex.Message);
            }
            Assert.All(host.Calls, c => Assert.Null(c.AccessKeyId));
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task ExpiredRequest_IsRequestExpired_AndTheSdkCorrectsSkewFromTheSandboxsDate()
        {
            await using var host = Start();
            host.Clock.Offset = System.TimeSpan.FromMinutes(30);
            // A path of its own: the SDK keeps clock corrections per endpoint URL (with the path) for the whole process.
            var url = new System.Uri(host.BaseUri, "skew-" + System.Guid.NewGuid().ToString("N") + "/").ToString();
            AmazonEC2Client Client(int retries) => new(DefaultCredentials(host),
                new AmazonEC2Config { ServiceURL = url, AuthenticationRegion = host.World.Region, MaxErrorRetry = retries, Timeout = System.TimeSpan.FromSeconds(15) });

            using (var once = Client(0))
            {
                // Signed with real time, 30 minutes behind the sandbox: expired.
                var ex = await Assert.ThrowsAsync<AmazonEC2Exception>(() => once.DescribeInstancesAsync(new DescribeInstancesRequest()));
                Assert.Equal("RequestExpired", ex.ErrorCode);
                Assert.Equal(HttpStatusCode.BadRequest, ex.StatusCode);
            }
            // RequestExpired is a definite clock-skew error: the SDK took the server time from the Date header.
            Assert.InRange(CorrectClockSkew.GetClockCorrectionForEndpoint(url), System.TimeSpan.FromMinutes(29), System.TimeSpan.FromMinutes(31));

            using var corrected = Client(0);
            var ok = await corrected.DescribeInstancesAsync(new DescribeInstancesRequest());
            Assert.Equal(3, Flatten(ok).Count);
            Assert.Equal(new[] { "RequestExpired", null }, host.Calls.Select(c => c.ErrorCode));
        }
    }
}
