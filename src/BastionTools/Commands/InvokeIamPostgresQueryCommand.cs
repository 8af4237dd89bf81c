using System;
using System.Collections;
using System.Collections.Generic;
using System.IO;
using System.Management.Automation;
using System.Text;
using BastionTools.Postgres;
using Npgsql;

namespace BastionTools.Commands
{
    /// <summary>
    /// Invoke-IamPostgresQuery: runs SQL on an IAM connection. Rows are streamed out as objects with typed properties
    /// (a million rows never sit in memory); -NonQuery returns the number of affected rows; -Transaction wraps the
    /// call in one transaction; PostgreSQL errors become ErrorRecords carrying the SQLSTATE.
    /// </summary>
    [Cmdlet(VerbsLifecycle.Invoke, "IamPostgresQuery", DefaultParameterSetName = "Query", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.None)]
    [OutputType(typeof(PSObject), typeof(int))]
    public sealed class InvokeIamPostgresQueryCommand : PSCmdlet
    {
        private NpgsqlCommand? _running;
        private CmdletPump? _pump;
        private volatile RowStream? _rows;

        [Parameter(Mandatory = true, ValueFromPipelineByPropertyName = true)]
        [ValidateNotNull]
        [ArgumentCompleter(typeof(IamConnectionCompleter))]
        public IamPostgresConnection? Connection { get; set; }

        [Parameter(Mandatory = true, Position = 0, ParameterSetName = "Query", ValueFromPipeline = true)]
        [Alias("Sql")]
        [ValidateNotNullOrEmpty]
        public string Query { get; set; } = "";

        [Parameter(Mandatory = true, ParameterSetName = "File")]
        [Alias("Path")]
        [ValidateNotNullOrEmpty]
        public string InputFile { get; set; } = "";

        /// <summary>Named parameters: @{ id = 1 } binds @id in the query.</summary>
        [Parameter]
        [ValidateNotNull]
        public IDictionary? Parameters { get; set; }

        /// <summary>Return the number of affected rows instead of rows.</summary>
        [Parameter]
        public SwitchParameter NonQuery { get; set; }

        /// <summary>Run everything in this call in one transaction (rolled back on any error).</summary>
        [Parameter]
        public SwitchParameter Transaction { get; set; }

        /// <summary>Seconds before the query is cancelled (default: the connection's).</summary>
        [Parameter]
        [ValidateRange(0, 86400)]
        public int CommandTimeout { get; set; } = -1;

        protected override void ProcessRecord()
        {
            var connection = Connection!;
            if (!connection.IsOpen)
            {
                WriteError(new BastionToolsException(ErrorIds.DatabaseConnectionClosed, ErrorCategory.ResourceUnavailable,
                    "The connection is closed.", connection.ToString(), "Open a new one with Connect-IamPostgres.").ToErrorRecord());
                return;
            }
            string sql;
            if (ParameterSetName == "File")
            {
                var path = GetUnresolvedProviderPathFromPSPath(InputFile);
                if (!File.Exists(path))
                {
                    WriteError(new BastionToolsException(ErrorIds.QueryInputInvalid, ErrorCategory.ObjectNotFound, $"The file '{path}' does not exist.", path).ToErrorRecord());
                    return;
                }
                sql = File.ReadAllText(path, Encoding.UTF8);
            }
            else
            {
                sql = Query;
            }
            if (!ShouldProcess(connection.ToString(), "Run SQL: " + (sql.Length > 80 ? sql.Substring(0, 80) + "…" : sql))) return;

            NpgsqlConnection? conn = null;
            NpgsqlTransaction? tx = null;
            try
            {
                try
                {
                    // A tunnel that ended on its own is replaced first (narrated on Verbose); then a pooled connection.
                    using var pump = new CmdletPump();
                    _pump = pump;
                    conn = pump.Run(ct => connection.Engine.OpenAsync(line => pump.Post(() => WriteVerbose(Redactor.RedactPatterns(line))), ct));
                }
                catch (BastionToolsException ex)
                {
                    WriteError(ex.ToErrorRecord());
                    return;
                }
                catch (OperationCanceledException)
                {
                    // Ctrl-C while the tunnel was being reopened: PowerShell stops the pipeline.
                    return;
                }
                finally
                {
                    _pump = null;
                }
                if (Transaction) tx = conn.BeginTransaction();
                using var cmd = new NpgsqlCommand(sql, conn, tx);
                if (CommandTimeout >= 0) cmd.CommandTimeout = CommandTimeout;
                if (Parameters != null)
                {
                    foreach (DictionaryEntry p in Parameters)
                    {
                        var value = p.Value is PSObject pso ? pso.BaseObject : p.Value;
                        cmd.Parameters.AddWithValue(p.Key.ToString()!.TrimStart('@', ':'), value ?? DBNull.Value);
                    }
                }
                _running = cmd;
                WriteVerbose($"Running SQL on {connection.Endpoint}/{connection.Database} as {connection.UserName}{(Transaction ? " in a transaction" : "")}.");
                if (NonQuery)
                {
                    WriteObject(cmd.ExecuteNonQuery());
                }
                else
                {
                    // Npgsql and the rows' PSObjects on a reader thread, WriteObject here: both halves run at once.
                    using var rows = new RowStream(cmd);
                    _rows = rows;
                    try
                    {
                        while (rows.Next(out var batch))
                        {
                            var objects = batch.Rows;
                            for (var i = 0; i < batch.Count; i++) WriteObject(objects[i]);
                            rows.Return(batch);
                        }
                    }
                    catch (OperationCanceledException)
                    {
                        // Ctrl-C: the query was cancelled; PowerShell stops the pipeline.
                        TryRollback(tx);
                        throw new PipelineStoppedException();
                    }
                    finally
                    {
                        _rows = null;
                    }
                }
                tx?.Commit();
            }
            catch (PostgresException ex)
            {
                TryRollback(tx);
                WriteError(ToErrorRecord(ex, connection));
            }
            catch (NpgsqlException ex) when (ex.InnerException is TimeoutException)
            {
                TryRollback(tx);
                WriteError(new BastionToolsException(ErrorIds.DatabaseQueryFailed, ErrorCategory.OperationTimeout,
                    "The query timed out: " + ex.Message, connection.ToString(), "Raise -CommandTimeout, or make the query cheaper.").ToErrorRecord());
            }
            catch (NpgsqlException ex)
            {
                TryRollback(tx);
                WriteError(new BastionToolsException(ErrorIds.DatabaseQueryFailed, ErrorCategory.ConnectionError, ex.Message, connection.ToString()).ToErrorRecord());
            }
            finally
            {
                _running = null;
                tx?.Dispose();
                conn?.Dispose();
            }
        }

        protected override void StopProcessing()
        {
            try
            {
                _pump?.Cancel();
                var rows = _rows;
                if (rows != null) rows.Stop();   // cancels the query itself
                else _running?.Cancel();
            }
            catch (Exception)
            {
                // Best effort: the pipeline is stopping anyway.
            }
        }

        private static void TryRollback(NpgsqlTransaction? tx)
        {
            try
            {
                tx?.Rollback();
            }
            catch (Exception)
            {
                // The connection may be gone; the server rolls back on its own.
            }
        }

        internal static ErrorRecord ToErrorRecord(PostgresException ex, IamPostgresConnection connection)
        {
            var category = ex.SqlState switch
            {
                "42501" => ErrorCategory.PermissionDenied,
                "42P01" or "42703" or "42883" or "3F000" or "3D000" => ErrorCategory.ObjectNotFound,
                "57014" => ErrorCategory.OperationStopped,
                _ when ex.SqlState.StartsWith("23", StringComparison.Ordinal) => ErrorCategory.InvalidData,
                _ when ex.SqlState.StartsWith("22", StringComparison.Ordinal) => ErrorCategory.InvalidData,
                _ when ex.SqlState.StartsWith("42", StringComparison.Ordinal) => ErrorCategory.InvalidArgument,
                _ when ex.SqlState.StartsWith("28", StringComparison.Ordinal) => ErrorCategory.AuthenticationError,
                _ when ex.SqlState.StartsWith("08", StringComparison.Ordinal) => ErrorCategory.ConnectionError,
                _ => ErrorCategory.NotSpecified,
            };
            var error = new PostgresQueryException(ex.SqlState, ex.MessageText, ex.Detail, ex.Hint, ex.Position);
            var record = new ErrorRecord(error, ErrorIds.DatabaseQueryFailed, category, connection.ToString());
            if (ex.Hint != null) record.ErrorDetails = new ErrorDetails(error.Message) { RecommendedAction = ex.Hint };
            return record;
        }
    }
}

namespace BastionTools
{
    /// <summary>An error PostgreSQL reported, with its SQLSTATE (Invoke-IamPostgresQuery).</summary>
    public sealed class PostgresQueryException : Exception
    {
        public PostgresQueryException(string sqlState, string message, string? detail, string? hint, int position)
            : base(Redactor.RedactPatterns($"{message} (SQLSTATE {sqlState})" + (string.IsNullOrEmpty(detail) ? "" : " " + detail)))
        {
            SqlState = sqlState;
            Detail = detail;
            Hint = hint;
            Position = position;
        }

        public string SqlState { get; }
        public string? Detail { get; }
        public string? Hint { get; }

        /// <summary>The 1-based character position of the error in the query, or 0.</summary>
        public int Position { get; }
    }
}
