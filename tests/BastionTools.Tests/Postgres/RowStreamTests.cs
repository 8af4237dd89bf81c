using System;
using System.Collections.Generic;
using System.Linq;
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

        // A first result set (one row: a batch of its own), then 10 rows, one that waits for the lock, and 4 more. The
        // gate raises a notice first: PostgreSQL flushes its send buffer with a notice (elog.c), so rows 1-10 are all
        // at the client while row 11 waits.
        private const string GateFunction = "create function pg_temp.gate() returns text language plpgsql as $$ begin raise notice 'gate'; perform pg_advisory_lock(4243); return 'opened'; end $$";
        private const string TwoSetGatedQuery = "select 0 as g; select g, case when g = 11 then pg_temp.gate() end as gate from generate_series(1, 15) g";

        [Fact(Timeout = TestTimeoutMs)]
        public async Task Rows_WaitForTheNextRow_WhileThePipelineHasABatchToWrite()
        {
            await using var holder = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_lock(4243)");
            try
            {
                await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
                await PostgresTestSupport.QueryAsync(connection, GateFunction);
                await using var command = new NpgsqlCommand(TwoSetGatedQuery, connection);
                // A hold longer than the test: only the next row (or the end) hands the rows over.
                using var stream = new RowStream(command, TimeSpan.FromMinutes(10));
                stream.Start();
                // The first result set's batch waits untaken while the reader reads rows 1-10 and meets the gated row 11:
                // the 10 rows stay in the batch being filled (handed over when the next row was late, they would be gone).
                await WaitUntilAsync(() => stream.PendingRows == 10);
                Assert.Equal(1, stream.ReadyBatches);
                Assert.True(stream.HeldForNextRow > 0);
                var first = await Task.Run(() => stream.Next(out var batch) ? Numbers(batch) : new List<int>());
                Assert.Equal(new[] { 0 }, first);
                await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_unlock(4243)");
                // Rows 1-10 waited for row 11, and went with the rest.
                var second = await Task.Run(() => stream.Next(out var batch) ? Numbers(batch) : new List<int>());
                Assert.Equal(Enumerable.Range(1, 15), second);
                Assert.False(await Task.Run(() => stream.Next(out _)));
            }
            finally
            {
                await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_unlock_all()");
            }
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task HeldRows_GoOut_AfterMaxHold_WhenTheNextRowDoesNotCome()
        {
            await using var holder = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_lock(4243)");
            try
            {
                await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
                await PostgresTestSupport.QueryAsync(connection, GateFunction);
                await using var command = new NpgsqlCommand(TwoSetGatedQuery, connection);
                using var stream = new RowStream(command);
                stream.Start();
                // Nothing is taken and row 11 never comes: the rows before it go out once MaxHold is up.
                await WaitUntilAsync(() => stream.ReadyBatches == 2);
                var rows = await Task.Run(() =>
                {
                    var numbers = new List<int>();
                    for (var i = 0; i < 2 && stream.Next(out var batch); i++) numbers.AddRange(Numbers(batch));
                    return numbers;
                });
                Assert.Equal(Enumerable.Range(0, rows.Count), rows);
                Assert.InRange(rows.Count, 2, 11);
                stream.Stop();
            }
            finally
            {
                await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_unlock_all()");
            }
        }

        private static List<int> Numbers(RowStream.Batch batch)
        {
            var numbers = new List<int>();
            for (var i = 0; i < batch.Count; i++) numbers.Add((int)batch.Rows[i].Properties["g"].Value);
            return numbers;
        }

        private static async Task WaitUntilAsync(Func<bool> condition)
        {
            while (!condition()) await Task.Delay(5);
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
