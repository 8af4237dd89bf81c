using System;
using System.Collections.Generic;
using System.Management.Automation;
using System.Threading.Tasks;
using BastionTools.Postgres;
using BastionTools.Tests.Sandbox;
using Npgsql;
using Xunit;
using static BastionTools.Tests.Sandbox.SandboxTestSupport;

namespace BastionTools.Tests.Postgres
{
    /// <summary>
    /// <see cref="RowStream"/> (Invoke-IamPostgresQuery's reader thread) against a real PostgreSQL, without a PowerShell
    /// host: rows, batches, the hand-over when the next row has not arrived, Stop and Dispose. Waits are on conditions:
    /// a PostgreSQL advisory lock the test holds is the gate a query waits on.
    /// </summary>
    [Collection(PostgresClusterCollection.Name)]
    public class RowStreamTests
    {
        // Seven 6 KB rows (past the server's 8 KB send buffer, fewer than the first batch), then one that waits for the lock.
        private const string GatedQuery = "select g, repeat('x', 6000) as pad, case when g = 8 then pg_advisory_lock(4242)::text end as gate from generate_series(1, 8) g";

        private readonly PostgresClusterFixture _fixture;

        public RowStreamTests(PostgresClusterFixture fixture) => _fixture = fixture;

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Rows_KeepOrderNamesTypesAndNulls_AcrossBatchesAndResultSets()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await using var command = new NpgsqlCommand("select g, null::text as g, g::bigint as \"G\", 'r' || g from generate_series(1, 3000) g; select 'next' as z", connection);
            var rows = await Task.Run(() => ReadAll(command));
            Assert.Equal(3001, rows.Count);
            for (var i = 0; i < 3000; i++)
            {
                Assert.Equal(new[] { "g", "g2", "G3", "Column4" }, Names(rows[i]));
                Assert.Equal(i + 1, (int)rows[i].Properties["g"].Value);
                Assert.Null(rows[i].Properties["g2"].Value);
                Assert.Equal((long)(i + 1), rows[i].Properties["G3"].Value);
                Assert.Equal("r" + (i + 1), rows[i].Properties["Column4"].Value);
            }
            Assert.Equal("next", rows[3000].Properties["z"].Value);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task FirstRows_AreHandedOver_WhenTheNextRowHasNotArrived()
        {
            await using var holder = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_lock(4242)");
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await using var command = new NpgsqlCommand(GatedQuery, connection);
            using var stream = new RowStream(command);
            stream.Start();
            // The query cannot end while the lock is held: a batch here came out while it runs.
            var first = await Task.Run(() => stream.Next(out var batch) ? batch.Count : 0);
            Assert.InRange(first, 1, 7);
            await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_unlock(4242)");
            var total = first + await Task.Run(() =>
            {
                var n = 0;
                while (stream.Next(out var batch)) n += batch.Count;
                return n;
            });
            Assert.Equal(8, total);
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Stop_CancelsTheQueryOnTheServer()
        {
            await using var holder = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_lock(4242)");
            try
            {
                await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
                var pid = connection.ProcessID;
                await using var command = new NpgsqlCommand(GatedQuery, connection);
                using var stream = new RowStream(command);
                stream.Start();
                Assert.True(await Task.Run(() => stream.Next(out _)));
                stream.Stop();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Task.Run(() =>
                {
                    while (stream.Next(out _))
                    {
                    }
                }));
                // Next returns only once the reader thread has ended: the server has answered the cancel by then.
                var state = await PostgresTestSupport.QueryAsync(holder, $"select state from pg_stat_activity where pid = {pid}");
                Assert.NotEqual("active", state[0][0]);
            }
            finally
            {
                await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_unlock_all()");
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Dispose_WithoutStop_LetsTheCommandFinish()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(connection, "create temp table after_rows (x int)");
            await using (var command = new NpgsqlCommand("select g from generate_series(1, 100000) g; insert into after_rows values (1)", connection))
            {
                using var stream = new RowStream(command);
                stream.Start();
                Assert.True(await Task.Run(() => stream.Next(out _)));
                // The pipeline wants no more (Select-Object -First): the rest is read and dropped, the insert still runs.
            }
            var count = await PostgresTestSupport.QueryAsync(connection, "select count(*) from after_rows");
            Assert.Equal(1L, count[0][0]);
        }

        /// <summary>
        /// Disposed while the reader thread hands over a batch with a row read in flight (the server pauses between
        /// bursts of rows): the read completes before the reader is disposed, so the rest of the command still runs and the
        /// connection is free afterwards. (Disposing an Npgsql reader with a read in flight broke the connection.)
        /// </summary>
        [Fact(Timeout = TestTimeoutMs)]
        public async Task Dispose_WhileARowReadIsInFlight_LeavesTheConnectionFree()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(connection, "create temp table after_rows (x int)");
            for (var run = 1; run <= 5; run++)
            {
                var sql = "select g, case when g % 300 = 0 then pg_sleep(0.05)::text end as pause from generate_series(1, 3000) g; insert into after_rows values (" + run + ")";
                await using (var command = new NpgsqlCommand(sql, connection))
                {
                    using var stream = new RowStream(command);
                    var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    // The first hand-over with a read in flight waits (on the reader thread) until the stream is being
                    // disposed: the hand-over then meets the cancellation with the read still waiting for the server.
                    stream.BeforeFlushWithReadInFlight = _ =>
                    {
                        if (entered.TrySetResult()) System.Threading.SpinWait.SpinUntil(() => stream.IsLeaving, TimeSpan.FromSeconds(30));
                    };
                    stream.Start();
                    Assert.True(await Task.Run(() => stream.Next(out _)));
                    await entered.Task.WaitAsync(TimeSpan.FromSeconds(30));
                }
                var count = await PostgresTestSupport.QueryAsync(connection, "select count(*) from after_rows where x = " + run);
                Assert.Equal(1L, count[0][0]);
            }
        }

        private static List<PSObject> ReadAll(NpgsqlCommand command)
        {
            var rows = new List<PSObject>();
            using var stream = new RowStream(command);
            stream.Start();
            while (stream.Next(out var batch))
            {
                for (var i = 0; i < batch.Count; i++) rows.Add(batch.Rows[i]);
                stream.Return(batch);
            }
            return rows;
        }

        private static List<string> Names(PSObject row)
        {
            var names = new List<string>();
            foreach (var p in row.Properties) names.Add(p.Name);
            return names;
        }
    }
}
