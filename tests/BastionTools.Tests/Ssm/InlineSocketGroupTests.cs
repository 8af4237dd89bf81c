using System;
using System.Collections.Generic;
using System.Threading.Tasks;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Ssm
{
    /// <summary>
    /// A port session's sockets run their completions inline while it carries one local connection and on the thread
    /// pool while it carries more: checked on real sockets by where their pending reads continue.
    /// </summary>
    public sealed class InlineSocketGroupTests
    {
        [Fact(Timeout = 60_000)]
        public async Task OneConnection_IsInline_ASecondHandsBothToThePool_AndAfterItEndsTheFirstIsInlineAgain()
        {
            if (!SocketCompletions.Supported) return; // Windows: checked by SocketCompletionsTests.
            using var first = await SocketPair.OpenAsync();
            using var second = await SocketPair.OpenAsync();
            var group = new InlineSocketGroup(enabled: true);
            var changes = new List<bool>();
            group.InlineChanged += changes.Add;
            Assert.True(group.Inline);

            group.Add(first.Server);
            Assert.True(group.Inline);
            Assert.Equal(SocketCompletionsTests.Reads, await SocketCompletionsTests.OffPoolReadsAsync(first));

            group.Add(second.Server);
            Assert.False(group.Inline);
            Assert.Equal(0, await SocketCompletionsTests.OffPoolReadsAsync(first));
            Assert.Equal(0, await SocketCompletionsTests.OffPoolReadsAsync(second));

            group.Remove(second.Server);
            Assert.True(group.Inline);
            Assert.Equal(SocketCompletionsTests.Reads, await SocketCompletionsTests.OffPoolReadsAsync(first));
            group.Remove(first.Server);
            group.Remove(first.Server); // a second Remove changes nothing
            Assert.True(group.Inline);
            Assert.Equal(new[] { false, true }, changes);
        }

        [Fact(Timeout = 60_000)]
        public async Task Disabled_KeepsThePool_AndNeverChanges()
        {
            using var only = await SocketPair.OpenAsync();
            var group = new InlineSocketGroup(enabled: false);
            var changes = 0;
            group.InlineChanged += _ => changes++;
            group.Add(only.Server);
            Assert.False(group.Inline);
            Assert.Equal(0, await SocketCompletionsTests.OffPoolReadsAsync(only));
            group.Remove(only.Server);
            Assert.Equal(0, changes);
        }
    }
}
