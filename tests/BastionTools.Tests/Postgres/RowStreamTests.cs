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
            var (rows, threaded) = await Task.Run(() => ReadAll(command));
            Assert.True(threaded, "3,000 rows go on on the reader thread after the first batch");
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

        /// <summary>
        /// A small result (everything in one answer of the server) is read, built and ended on the consumer's thread: no
        /// reader thread starts, the rows keep their order across result sets, and the connection is free afterwards.
        /// </summary>
        [Theory(Timeout = TestTimeoutMs)]
        [InlineData("select 1 as one", 1)]
        [InlineData("select g from generate_series(1, 16) g", 16)]
        [InlineData("select g from generate_series(1, 3) g; select 'x' as y where false; select 4 as g", 4)]
        public async Task SmallResult_IsReadOnTheConsumersThread_WithoutAReaderThread(string sql, int expected)
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await using (var command = new NpgsqlCommand(sql, connection))
            {
                var (rows, threaded) = await Task.Run(() => ReadAll(command));
                Assert.False(threaded);
                Assert.Equal(expected, rows.Count);
                for (var i = 0; i < expected; i++) Assert.Equal(i + 1, Convert.ToInt32(rows[i].Properties.Match("*")[0].Value));
            }
            var after = await PostgresTestSupport.QueryAsync(connection, "select 2");
            Assert.Equal(2, after[0][0]);
        }

        /// <summary>An error after some rows comes after them, wherever the rows were read; an error before any row comes from the first Next.</summary>
        [Fact(Timeout = TestTimeoutMs)]
        public async Task AnError_ComesAfterTheRowsBeforeIt_AndTheConnectionStaysUsable()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await using (var command = new NpgsqlCommand("select g, 10 / (3 - g) as q from generate_series(1, 5) g", connection))
            {
                using var stream = new RowStream(command);
                var seen = new List<int>();
                var error = await Assert.ThrowsAsync<PostgresException>(() => Task.Run(() =>
                {
                    while (stream.Next(out var batch))
                    {
                        for (var i = 0; i < batch.Count; i++) seen.Add((int)batch.Rows[i].Properties["g"].Value);
                        stream.Return(batch);
                    }
                }));
                Assert.Equal("22012", error.SqlState);
                Assert.Equal(new[] { 1, 2 }, seen);
            }
            await using (var command = new NpgsqlCommand("select 1 / 0 as never", connection))
            {
                using var stream = new RowStream(command);
                var error = await Assert.ThrowsAsync<PostgresException>(() => Task.Run(() => stream.Next(out _)));
                Assert.Equal("22012", error.SqlState);
                Assert.False(stream.ReaderThreadStarted);
            }
            var after = await PostgresTestSupport.QueryAsync(connection, "select 3");
            Assert.Equal(3, after[0][0]);
        }

        /// <summary>Stop while the command has not produced its first result yet (the first Next waits in ExecuteReader): the query is cancelled on the server.</summary>
        [Fact(Timeout = TestTimeoutMs)]
        public async Task Stop_BeforeTheFirstResult_CancelsTheQuery()
        {
            await using var holder = await HoldAdvisoryLockAsync(4243);
            try
            {
                await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
                var pid = connection.ProcessID;
                // The DO block has no result: ExecuteReader waits for the select after it, and that waits for the lock.
                await using var command = new NpgsqlCommand("do $$ begin perform pg_advisory_lock(4243); end $$; select 1 as one", connection);
                using var stream = new RowStream(command);
                var first = Task.Run(() => stream.Next(out _));
                await WaitUntilAsync(async () =>
                {
                    var wait = await PostgresTestSupport.QueryAsync(holder, $"select wait_event_type from pg_stat_activity where pid = {pid}");
                    return wait.Count == 1 && "Lock".Equals(wait[0][0]);
                }, "the command waits for the lock", TimeSpan.FromSeconds(30));
                stream.Stop();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => first);
                Assert.False(stream.ReaderThreadStarted);
                var state = await PostgresTestSupport.QueryAsync(holder, $"select state from pg_stat_activity where pid = {pid}");
                Assert.NotEqual("active", state[0][0]);
                var after = await PostgresTestSupport.QueryAsync(connection, "select 4");
                Assert.Equal(4, after[0][0]);
            }
            finally
            {
                await PostgresTestSupport.QueryAsync(holder, "select pg_advisory_unlock_all()");
            }
        }

        /// <summary>Ctrl-C before the first Next (the pipeline was stopping as the cmdlet got there): the command is not sent at all.</summary>
        [Fact(Timeout = TestTimeoutMs)]
        public async Task Stop_BeforeTheFirstNext_SendsNothing()
        {
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(connection, "create temp table stop_first (x int)");
            await using (var command = new NpgsqlCommand("insert into stop_first values (1); select 1 as one", connection))
            {
                using var stream = new RowStream(command);
                stream.Stop();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Task.Run(() => stream.Next(out _)));
                Assert.False(stream.ReaderThreadStarted);
            }
            Assert.Equal(0L, await CountAsync(connection, "stop_first"));
        }

        /// <summary>select count(*) from <paramref name="from"/> (a table, and a condition): what a command left behind.</summary>
        private static async Task<long> CountAsync(NpgsqlConnection connection, string from) =>
            (long)(await PostgresTestSupport.QueryAsync(connection, "select count(*) from " + from))[0][0]!;

        /// <summary>A connection of its own holding advisory lock <paramref name="key"/>, which a query under test then waits on.</summary>
        private async Task<NpgsqlConnection> HoldAdvisoryLockAsync(int key)
        {
            var holder = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await PostgresTestSupport.QueryAsync(holder, $"select pg_advisory_lock({key})");
            return holder;
        }

        [Fact(Timeout = TestTimeoutMs)]
        public async Task FirstRows_AreHandedOver_WhenTheNextRowHasNotArrived()
        {
            await using var holder = await HoldAdvisoryLockAsync(4242);
            await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
            await using var command = new NpgsqlCommand(GatedQuery, connection);
            using var stream = new RowStream(command);
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
            await using var holder = await HoldAdvisoryLockAsync(4242);
            try
            {
                await using var connection = await PostgresTestSupport.OpenAsync(_fixture.Cluster.ConnectionString());
                var pid = connection.ProcessID;
                await using var command = new NpgsqlCommand(GatedQuery, connection);
                using var stream = new RowStream(command);
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
                Assert.True(await Task.Run(() => stream.Next(out _)));
                // The pipeline wants no more (Select-Object -First): the rest is read and dropped, the insert still runs.
            }
            Assert.Equal(1L, await CountAsync(connection, "after_rows"));
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
                    Assert.True(await Task.Run(() => stream.Next(out _)));
                    await entered.Task.WaitAsync(TimeSpan.FromSeconds(30));
                }
                Assert.Equal(1L, await CountAsync(connection, "after_rows where x = " + run));
            }
        }

        private static (List<PSObject> Rows, bool Threaded) ReadAll(NpgsqlCommand command)
        {
            var rows = new List<PSObject>();
            using var stream = new RowStream(command);
            while (stream.Next(out var batch))
            {
                for (var i = 0; i < batch.Count; i++) rows.Add(batch.Rows[i]);
                stream.Return(batch);
            }
            return (rows, stream.ReaderThreadStarted);
        }


        private static List<string> Names(PSObject row)
        {
            var names = new List<string>();
            foreach (var p in row.Properties) names.Add(p.Name);
            return names;
        }
    }
}
