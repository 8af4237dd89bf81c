using System;
using System.Management.Automation;

namespace BastionTools
{
    /// <summary>
    /// An engine failure that knows how it should reach the user: a stable ErrorId, an ErrorCategory,
    /// an optional target object and an optional recommended action. Messages are already free of secrets.
    /// </summary>
    public sealed class BastionToolsException : Exception
    {
        public BastionToolsException(string errorId, ErrorCategory category, string message, object? target = null, string? recommendedAction = null, Exception? inner = null)
            : base(message, inner)
        {
            ErrorId = errorId;
            Category = category;
            Target = target;
            RecommendedAction = recommendedAction;
        }

        public string ErrorId { get; }
        public ErrorCategory Category { get; }
        public object? Target { get; }
        public string? RecommendedAction { get; }

        /// <summary>
        /// The error as the user gets it: built from a redacted copy (<see cref="Redacted"/>), so neither this message nor
        /// any exception under it (AWS SDK, Npgsql, sockets: their texts can echo a canonical request with the session
        /// token, or a connection string) shows a secret. Patterns only; cmdlets that know their secrets add them.
        /// </summary>
        public ErrorRecord ToErrorRecord() => ToErrorRecord(null);

        internal ErrorRecord ToErrorRecord(Redactor? redactor)
        {
            var copy = Redacted(redactor);
            var record = new ErrorRecord(copy, copy.ErrorId, copy.Category, copy.Target);
            if (copy.RecommendedAction != null) record.ErrorDetails = new ErrorDetails(copy.Message) { RecommendedAction = copy.RecommendedAction };
            return record;
        }

        /// <summary>A copy whose message, target text, recommended action and whole inner-exception chain are redacted.</summary>
        internal BastionToolsException Redacted(Redactor? redactor)
        {
            string Clean(string? text) => redactor != null ? redactor.Redact(text) : Redactor.RedactPatterns(text ?? string.Empty);
            return new BastionToolsException(ErrorId, Category, Clean(Message), Target is string t ? Clean(t) : Target,
                RecommendedAction == null ? null : Clean(RecommendedAction), RedactedException.From(InnerException, Clean));
        }
    }

    /// <summary>
    /// What is left of an exception after redaction: its type's name, its redacted message, its stack trace (code
    /// locations only) and a redacted copy of its inner exception. Its Data is dropped (SDKs put request details there).
    /// The real exception stays with the engine, which decides by its type; only this copy reaches an ErrorRecord.
    /// </summary>
    public sealed class RedactedException : Exception
    {
        private readonly string? _stackTrace;

        private RedactedException(string originalType, string message, string? stackTrace, Exception? inner)
            : base(message, inner)
        {
            OriginalType = originalType;
            _stackTrace = stackTrace;
        }

        /// <summary>The full name of the exception type this stands for, e.g. Amazon.SimpleSystemsManagement.Model.InvalidSignatureException.</summary>
        public string OriginalType { get; }

        public override string? StackTrace => _stackTrace;

        public override string ToString() =>
            OriginalType + ": " + Message + (InnerException == null ? "" : " ---> " + InnerException) + (_stackTrace == null ? "" : System.Environment.NewLine + _stackTrace);

        internal static Exception? From(Exception? ex, Func<string?, string> clean)
        {
            if (ex == null) return null;
            if (ex is BastionToolsException b)
            {
                return new BastionToolsException(b.ErrorId, b.Category, clean(b.Message), b.Target is string t ? clean(t) : b.Target,
                    b.RecommendedAction == null ? null : clean(b.RecommendedAction), From(b.InnerException, clean));
            }
            var inner = ex is AggregateException agg && agg.InnerExceptions.Count > 0 ? agg.InnerExceptions[0] : ex.InnerException;
            var type = ex is RedactedException r ? r.OriginalType : ex.GetType().FullName ?? ex.GetType().Name;
            string? stack;
            try
            {
                stack = ex.StackTrace;
            }
            catch (Exception)
            {
                stack = null;
            }
            return new RedactedException(type, clean(ex.Message), stack, From(inner, clean));
        }
    }
}

namespace BastionTools
{
    /// <summary>A line a remote command wrote to its standard error (non-interactive sessions).</summary>
    public sealed class RemoteStandardErrorException : System.Exception
    {
        public RemoteStandardErrorException(string line)
            : base(line)
        {
        }
    }
}
