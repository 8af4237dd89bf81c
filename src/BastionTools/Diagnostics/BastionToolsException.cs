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

        public ErrorRecord ToErrorRecord()
        {
            var record = new ErrorRecord(this, ErrorId, Category, Target);
            if (RecommendedAction != null) record.ErrorDetails = new ErrorDetails(Message) { RecommendedAction = RecommendedAction };
            return record;
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
