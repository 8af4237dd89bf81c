using System;
using System.Collections.Generic;
using System.ComponentModel;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using System.Threading;
using System.Threading.Tasks;
using BastionTools.Ssm;

namespace BastionTools.Sandbox
{
    /// <summary>Linux pseudo-terminal and signal calls the shell plugin needs.</summary>
    internal static class Posix
    {
        public const int SIGINT = 2;
        public const int SIGQUIT = 3;
        public const int SIGKILL = 9;
        public const int SIGHUP = 1;
        private const int O_RDWR = 2;
        private const int O_NOCTTY = 0x100;
        private const ulong TIOCSWINSZ = 0x5414;
        private const int EINTR = 4;
        private const int EAGAIN = 11;

        [StructLayout(LayoutKind.Sequential)]
        private struct WinSize
        {
            public ushort Rows;
            public ushort Cols;
            public ushort XPixel;
            public ushort YPixel;
        }

        [DllImport("libc", SetLastError = true)]
        private static extern int posix_openpt(int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern int grantpt(int fd);

        [DllImport("libc", SetLastError = true)]
        private static extern int unlockpt(int fd);

        [DllImport("libc", SetLastError = true)]
        private static extern int ptsname_r(int fd, byte[] buffer, UIntPtr length);

        [DllImport("libc", SetLastError = true)]
        private static extern int ioctl(int fd, ulong request, ref WinSize size);

        [DllImport("libc", SetLastError = true)]
        private static extern IntPtr read(int fd, byte[] buffer, UIntPtr count);

        [DllImport("libc", SetLastError = true)]
        private static extern IntPtr write(int fd, byte[] buffer, UIntPtr count);

        [DllImport("libc", SetLastError = true)]
        private static extern int close(int fd);

        [DllImport("libc", SetLastError = true)]
        private static extern int kill(int pid, int signal);

        /// <summary>Opens a PTY master; returns its fd and the slave's path.</summary>
        public static (int Master, string SlavePath) OpenPty()
        {
            var fd = posix_openpt(O_RDWR | O_NOCTTY);
            if (fd < 0) throw new Win32Exception(Marshal.GetLastWin32Error(), "posix_openpt failed");
            try
            {
                if (grantpt(fd) != 0) throw new Win32Exception(Marshal.GetLastWin32Error(), "grantpt failed");
                if (unlockpt(fd) != 0) throw new Win32Exception(Marshal.GetLastWin32Error(), "unlockpt failed");
                var name = new byte[256];
                var rc = ptsname_r(fd, name, (UIntPtr)name.Length);
                if (rc != 0) throw new Win32Exception(rc, "ptsname_r failed");
                var length = Array.IndexOf(name, (byte)0);
                return (fd, Encoding.ASCII.GetString(name, 0, length < 0 ? name.Length : length));
            }
            catch
            {
                close(fd);
                throw;
            }
        }

        public static void SetWindowSize(int fd, int cols, int rows)
        {
            var size = new WinSize { Cols = (ushort)Math.Clamp(cols, 1, ushort.MaxValue), Rows = (ushort)Math.Clamp(rows, 1, ushort.MaxValue) };
            if (ioctl(fd, TIOCSWINSZ, ref size) != 0) throw new Win32Exception(Marshal.GetLastWin32Error(), "ioctl(TIOCSWINSZ) failed");
        }

        /// <summary>Blocking read; 0 at end (EIO once the terminal's last slave is closed).</summary>
        public static int Read(int fd, byte[] buffer)
        {
            while (true)
            {
                var n = (long)read(fd, buffer, (UIntPtr)buffer.Length);
                if (n >= 0) return (int)n;
                var errno = Marshal.GetLastWin32Error();
                if (errno == EINTR || errno == EAGAIN) continue;
                return 0;
            }
        }

        public static void WriteAll(int fd, byte[] data)
        {
            var offset = 0;
            while (offset < data.Length)
            {
                var chunk = offset == 0 ? data : data.AsSpan(offset).ToArray();
                var n = (long)write(fd, chunk, (UIntPtr)chunk.Length);
                if (n < 0)
                {
                    var errno = Marshal.GetLastWin32Error();
                    if (errno == EINTR || errno == EAGAIN) continue;
                    throw new IOException("write to the terminal failed (errno " + errno + ")");
                }
                offset += (int)n;
            }
        }

        public static void Close(int fd) => close(fd);

        [DllImport("libc", SetLastError = true, EntryPoint = "open")]
        private static extern int open_(string path, int flags);

        /// <summary>Opens the slave side (without making it our controlling terminal).</summary>
        public static int OpenSlave(string path)
        {
            var fd = open_(path, O_RDWR | O_NOCTTY);
            if (fd < 0) throw new Win32Exception(Marshal.GetLastWin32Error(), "open " + path + " failed");
            return fd;
        }

        public static bool Signal(int pid, int signal) => kill(pid, signal) == 0;
    }

    /// <summary>
    /// Keeps UTF-8 characters whole across reads (shell.go processStdoutData): an incomplete sequence at the end of a
    /// read waits for the next read; invalid bytes further in are passed through.
    /// </summary>
    internal sealed class Utf8Carry
    {
        private byte[] _pending = Array.Empty<byte>();

        public byte[] Take(byte[] buffer, int count)
        {
            var data = new byte[_pending.Length + count];
            Buffer.BlockCopy(_pending, 0, data, 0, _pending.Length);
            Buffer.BlockCopy(buffer, 0, data, _pending.Length, count);
            var complete = data.Length;
            // Look back at most 3 bytes for the start of a sequence that is cut off.
            for (var back = 1; back <= 3 && back <= data.Length; back++)
            {
                var b = data[data.Length - back];
                if ((b & 0xC0) == 0x80) continue; // continuation byte: keep looking for the lead byte
                var needed = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
                if (needed > back) complete = data.Length - back;
                break;
            }
            _pending = data.AsSpan(complete).ToArray();
            return complete == data.Length ? data : data.AsSpan(0, complete).ToArray();
        }

        public byte[] Flush()
        {
            var rest = _pending;
            _pending = Array.Empty<byte>();
            return rest;
        }
    }

    /// <summary>
    /// Standard_Stream (SSM-SessionManagerRunShell): "sh" on a real pseudo-terminal, no handshake unless the session is
    /// encrypted (the Session Manager preferences name a KMS key).
    /// The first output is read 1 s after the start (writePump's initial wait); each read of at most 1024 bytes is one
    /// output_stream_data (PayloadType 1). Size payloads resize the terminal. When the shell exits the session ends.
    /// </summary>
    internal sealed class ShellPlugin : AgentPlugin
    {
        private int _master = -1;
        private int _slaveHold = -1;
        private Process? _process;
        private int _stopped;

        public ShellPlugin(AgentChannel channel)
            : base(channel)
        {
        }

        public override string Kind => "shell";
        public override string SessionType => "Standard_Stream";
        // standardstream.go: no handshake of its own; one happens only when the session is encrypted (KMS), and then
        // GetPluginParameters gives no properties.
        public override bool RequiresHandshake => false;
        public override JsonNode? HandshakeProperties() => null;

        public override async Task<string?> RunAsync(CancellationToken cancellation)
        {
            var (master, slave) = Posix.OpenPty();
            // Input written before anyone opened the slave would be flushed by the first open: hold the slave open
            // until the shell has printed something (then drop it, so the master reads EIO when the shell is gone).
            _slaveHold = Posix.OpenSlave(slave);
            Posix.SetWindowSize(master, 80, 24);
            Volatile.Write(ref _master, master); // from now on input is accepted
            var start = new ProcessStartInfo("/bin/sh")
            {
                UseShellExecute = false,
            };
            // A new session whose controlling terminal is the PTY slave, so job control and Ctrl-C work as for a person.
            // SIGINT and SIGQUIT back to their defaults first: the real agent runs as a service, but a test runner started
            // in the background by a shell without job control ignores them, every descendant inherits that, and no shell
            // can undo an ignore it inherited (POSIX), so a Ctrl-C never ended the sleep (`env --default-signal`, coreutils
            // 8.31+; without it, as before).
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add("if env --default-signal=INT,QUIT true 2>/dev/null; then exec env --default-signal=INT,QUIT setsid -w -c \"$0\" <\"$1\" >\"$1\" 2>&1; fi; " +
                                   "exec setsid -w -c \"$0\" <\"$1\" >\"$1\" 2>&1");
            start.ArgumentList.Add(Channel.Options.ShellPath);
            start.ArgumentList.Add(slave);
            start.Environment["TERM"] = "xterm-256color";
            if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("LANG"))) start.Environment["LANG"] = "C.UTF-8";
            start.Environment["PS1"] = Channel.Options.ShellPrompt;
            start.WorkingDirectory = Path.GetTempPath();
            _process = Process.Start(start) ?? throw new InvalidOperationException("Unable to start the shell.");
            if (Volatile.Read(ref _stopped) != 0) KillProcess();
            _ = _process.WaitForExitAsync(CancellationToken.None).ContinueWith(_ => ReleaseSlave(), TaskScheduler.Default);

            await Task.Delay(Channel.Options.ShellInitialOutputDelay, cancellation).ConfigureAwait(false);
            await Task.Factory.StartNew(ReadLoop, cancellation, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
            try
            {
                await _process.WaitForExitAsync(cancellation).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
            ReleaseSlave();
            return null;
        }

        // writePump: while the channel is active read at most 1024 bytes, send them (a blocking write), sleep 1 ms.
        private void ReadLoop()
        {
            var buffer = new byte[StreamDataPayloadSize];
            var carry = new Utf8Carry();
            var life = Channel.Lifetime;
            try
            {
                while (true)
                {
                    Channel.WaitActiveAsync(life).GetAwaiter().GetResult();
                    var read = Posix.Read(_master, buffer);
                    if (read <= 0) break;
                    ReleaseSlave();
                    Channel.SendStreamDataAsync(PayloadType.Output, carry.Take(buffer, read)).GetAwaiter().GetResult();
                    // A dedicated thread: Thread.Sleep(1 ms) sleeps about as long as Go's time.Sleep(time.Millisecond).
                    var pause = Channel.Options.OutputReadPause;
                    if (pause > TimeSpan.Zero) Thread.Sleep(pause);
                }
                Channel.SendStreamDataAsync(PayloadType.Output, carry.Flush()).GetAwaiter().GetResult();
            }
            catch (OperationCanceledException)
            {
                // The session ended.
            }
        }

        public override Task<bool> HandleInputAsync(AgentMessage message)
        {
            if (_master < 0 || Volatile.Read(ref _stopped) != 0) return Task.FromResult(false);
            switch (message.PayloadType)
            {
                case PayloadType.Output:
                    try
                    {
                        Posix.WriteAll(_master, message.Payload);
                    }
                    catch (IOException ex)
                    {
                        Channel.Log("shell: " + ex.Message);
                        return Task.FromResult(false);
                    }
                    return Task.FromResult(true);
                case PayloadType.Size:
                    try
                    {
                        var size = SsmJson.Deserialize<SizeData>(message.Payload);
                        Posix.SetWindowSize(_master, (int)size.Cols, (int)size.Rows);
                    }
                    catch (Exception ex) when (ex is SsmProtocolException || ex is Win32Exception)
                    {
                        Channel.Log("shell: bad size message: " + ex.Message);
                    }
                    return Task.FromResult(true);
                default:
                    return Task.FromResult(true);
            }
        }

        private void ReleaseSlave()
        {
            var fd = Interlocked.Exchange(ref _slaveHold, -1);
            if (fd >= 0) Posix.Close(fd);
        }

        private void KillProcess()
        {
            var p = _process;
            if (p == null) return;
            try
            {
                if (!p.HasExited)
                {
                    // setsid made the shell a process group leader: kill the whole group.
                    Posix.Signal(-p.Id, Posix.SIGHUP);
                    Posix.Signal(-p.Id, Posix.SIGKILL);
                    Posix.Signal(p.Id, Posix.SIGKILL);
                }
            }
            catch (InvalidOperationException)
            {
            }
        }

        public override void Stop()
        {
            if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
            KillProcess();
            ReleaseSlave();
            var master = _master;
            if (master >= 0)
            {
                // The reader sees EIO once the processes are gone; close after it had the chance.
                _ = Task.Run(async () =>
                {
                    if (_process != null)
                    {
                        try
                        {
                            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                            await _process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
                        }
                        catch (OperationCanceledException)
                        {
                        }
                    }
                    await Task.Delay(200).ConfigureAwait(false);
                    Posix.Close(master);
                });
            }
        }
    }

    /// <summary>
    /// NonInteractiveCommands (AWS-StartNonInteractiveCommand): handshake (SessionType NonInteractiveCommands), the
    /// command split like a shell would (google/shlex) and run without a shell or terminal. Without separateOutputStream
    /// (the default) stdout and stderr go to one file and are sent after the command ended, PayloadType 1, no exit code.
    /// With separateOutputStream=true stdout is PayloadType 1 and stderr 11 while it runs, then ExitCode (12)
    /// "EXIT_CODE: n". Input bytes 0x03 / 0x1c send SIGINT / SIGQUIT. Then the session ends.
    /// </summary>
    internal sealed class CommandPlugin : AgentPlugin
    {
        private Process? _process;

        public CommandPlugin(AgentChannel channel)
            : base(channel)
        {
        }

        public override string Kind => "command";
        public override string SessionType => "NonInteractiveCommands";
        public override bool RequiresHandshake => true;
        private string Command => Channel.Session.Parameter("command") ?? "";
        private bool Separate => string.Equals(Channel.Session.Parameter("separateOutputStream"), "true", StringComparison.OrdinalIgnoreCase);

        // The document's properties per platform (a Go map: keys sorted).
        public override JsonNode HandshakeProperties()
        {
            JsonObject Platform()
            {
                var o = new JsonObject { ["commands"] = Command, ["runAsElevated"] = false };
                if (Separate)
                {
                    o["separateOutputStream"] = "true";
                    o["stdErrSeparatorPrefix"] = "";
                    o["stdOutSeparatorPrefix"] = "";
                }
                return o;
            }
            return new JsonObject { ["linux"] = Platform(), ["macos"] = Platform(), ["windows"] = Platform() };
        }

        // datachannel.go buildHandshakeCompletePayload: separate output streams and a client of 1.2.295 or older (strict
        // order) get a request to update the client.
        public override string HandshakeCustomerMessage() =>
            Separate && SandboxVersion.CompareStrict(Channel.HandshakeClientVersion, "1.2.295") <= 0
                ? "Please update session manager plugin version (minimum required version 1.2.312.0) for fully support of separate StdOut/StdErr output.\r\n"
                : "";

        public override async Task<string?> RunAsync(CancellationToken cancellation)
        {
            List<string> argv;
            try
            {
                argv = ShellWords.Split(Command);
                if (argv.Count == 0) throw new FormatException("empty command");
            }
            catch (FormatException ex)
            {
                await SendErrorAsync("Unable to start command: Failed to parse commands input: " + ex.Message + "\n\n", cancellation).ConfigureAwait(false);
                return null;
            }
            var windows = Channel.IsWindows;
            if (windows)
            {
                // shell_windows.go startExecCmd: exec.Command(powershell.exe, words...) — the words are PowerShell's arguments.
                var powershell = Channel.Options.WindowsPowerShell;
                if (powershell == null || powershell.Count == 0)
                {
                    await SendErrorAsync("Error occurred starting the command: exec: \"" + WindowsPowerShell.AgentProgram + "\": file does not exist\n", cancellation).ConfigureAwait(false);
                    return null;
                }
                var arguments = WindowsPowerShell.ToPowerShell7Arguments(argv);
                argv = powershell.Concat(arguments).ToList();
            }
            if (!Separate)
            {
                // The agent points stdout and stderr at one file: join them in the child, then exec the command itself.
                argv.InsertRange(0, new[] { "/bin/sh", "-c", "exec \"$@\" 2>&1", "sh" });
            }
            var start = new ProcessStartInfo(argv[0])
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                // exec.Cmd with a nil Stdin reads the null device: the command sees end of input at once.
                RedirectStandardInput = true,
                WorkingDirectory = Path.GetTempPath(),
            };
            for (var i = 1; i < argv.Count; i++) start.ArgumentList.Add(argv[i]);
            if (windows)
            {
                // Windows PowerShell 5.1 writes no ANSI colour codes; PowerShell 7 honours NO_COLOR. No network checks.
                start.Environment["NO_COLOR"] = "1";
                start.Environment["POWERSHELL_UPDATECHECK"] = "Off";
                start.Environment["POWERSHELL_TELEMETRY_OPTOUT"] = "1";
                start.Environment.Remove("TERM");
            }
            else
            {
                start.Environment["TERM"] = "xterm-256color";
            }
            if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("LANG"))) start.Environment["LANG"] = "C.UTF-8";
            try
            {
                _process = Process.Start(start) ?? throw new InvalidOperationException("no process");
                _process.StandardInput.Close();
            }
            catch (Exception ex) when (ex is Win32Exception || ex is InvalidOperationException)
            {
                await SendErrorAsync("Error occurred starting the command: " + ex.Message + "\n", cancellation).ConfigureAwait(false);
                return null;
            }

            if (Separate)
            {
                var stdout = PumpAsync(_process.StandardOutput.BaseStream, PayloadType.Output, null);
                var stderr = PumpAsync(_process.StandardError.BaseStream, PayloadType.StdErr, null);
                await Task.WhenAll(stdout, stderr).ConfigureAwait(false);
                await _process.WaitForExitAsync(cancellation).ConfigureAwait(false);
                await Channel.SendStreamDataAsync(PayloadType.ExitCode, Encoding.UTF8.GetBytes("EXIT_CODE: " + _process.ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture))).ConfigureAwait(false);
            }
            else
            {
                // One output file for both streams, read once the command has ended.
                var combined = new MemoryStream();
                var stdout = PumpAsync(_process.StandardOutput.BaseStream, null, combined);
                var stderr = PumpAsync(_process.StandardError.BaseStream, null, combined);
                await Task.WhenAll(stdout, stderr).ConfigureAwait(false);
                await _process.WaitForExitAsync(cancellation).ConfigureAwait(false);
                // processCommandsWithExec: writePump (no initial wait) reads the output file, 1024 bytes a read, 1 ms apart.
                var all = combined.ToArray();
                var carry = new Utf8Carry();
                var pacer = Channel.NewOutputReadPacer();
                for (var offset = 0; offset < all.Length; offset += StreamDataPayloadSize)
                {
                    await Channel.WaitActiveAsync(cancellation).ConfigureAwait(false);
                    var count = Math.Min(StreamDataPayloadSize, all.Length - offset);
                    await Channel.SendStreamDataAsync(PayloadType.Output, carry.Take(all.AsSpan(offset, count).ToArray(), count)).ConfigureAwait(false);
                    await pacer.PauseAsync(cancellation).ConfigureAwait(false);
                }
                await Channel.SendStreamDataAsync(PayloadType.Output, carry.Flush()).ConfigureAwait(false);
            }
            return null;
        }

        private async Task SendErrorAsync(string text, CancellationToken cancellation)
        {
            await Task.Delay(TimeSpan.FromSeconds(1), cancellation).ConfigureAwait(false);
            await Channel.SendStreamDataAsync(PayloadType.StdErr, Encoding.UTF8.GetBytes(text)).ConfigureAwait(false);
        }

        private async Task PumpAsync(Stream source, PayloadType? payloadType, MemoryStream? sink)
        {
            var buffer = new byte[StreamDataPayloadSize];
            var carry = new Utf8Carry();
            while (true)
            {
                var read = await source.ReadAsync(buffer, 0, buffer.Length).ConfigureAwait(false);
                if (read == 0) break;
                if (sink != null)
                {
                    lock (sink) sink.Write(buffer, 0, read);
                }
                else
                {
                    await Channel.SendStreamDataAsync(payloadType!.Value, carry.Take(buffer, read)).ConfigureAwait(false);
                }
            }
            if (sink == null) await Channel.SendStreamDataAsync(payloadType!.Value, carry.Flush()).ConfigureAwait(false);
        }

        public override Task<bool> HandleInputAsync(AgentMessage message)
        {
            if (message.PayloadType == PayloadType.Output && _process is { } p)
            {
                foreach (var b in message.Payload)
                {
                    // appconfig.ByteControlSignalsLinux; on Windows (ByteControlSignalsWindows) both bytes mean SIGKILL.
                    var signal = b == 0x03 ? Posix.SIGINT : b == 0x1c ? Posix.SIGQUIT : 0;
                    if (signal != 0 && Channel.IsWindows) signal = Posix.SIGKILL;
                    if (signal == 0) continue;
                    try
                    {
                        if (!p.HasExited) Posix.Signal(p.Id, signal);
                    }
                    catch (InvalidOperationException)
                    {
                    }
                    break;
                }
            }
            return Task.FromResult(true);
        }

        public override void Stop()
        {
            try
            {
                if (_process is { HasExited: false } p) p.Kill(entireProcessTree: true);
            }
            catch (Exception ex) when (ex is InvalidOperationException || ex is Win32Exception)
            {
            }
        }
    }

    /// <summary>
    /// Splits a command line as the agent's vendored github.com/google/shlex (v0.0.0-20191202100458-e7afc7fbc510,
    /// vendor/github.com/google/shlex/shlex.go) does: words separated by space, tab, CR or LF only; '...' is literal;
    /// in "..." a backslash takes ANY next character literally (not only the POSIX four); outside quotes a backslash
    /// escapes the next character; '#' starts a comment only where a word would start, and the comment ends at the next
    /// LF (words after it are read); a '#' inside a word is kept.
    /// </summary>
    public static class ShellWords
    {
        private enum State
        {
            Start,
            Word,
            Escaping,
            EscapingQuoted,
            QuotingEscaping,
            Quoting,
            Comment,
        }

        private static bool IsSpace(char c) => c == ' ' || c == '\t' || c == '\r' || c == '\n';

        /// <exception cref="FormatException">An unterminated quote or escape (the agent: "Failed to parse commands input: …").</exception>
        public static List<string> Split(string text)
        {
            var words = new List<string>();
            var current = new StringBuilder();
            var state = State.Start;
            var isComment = false;
            void Emit()
            {
                if (!isComment) words.Add(current.ToString());
                current.Clear();
                isComment = false;
                state = State.Start;
            }
            foreach (var c in text)
            {
                switch (state)
                {
                    case State.Start:
                        if (IsSpace(c)) break;
                        if (c == '"') state = State.QuotingEscaping;
                        else if (c == '\'') state = State.Quoting;
                        else if (c == '\\') state = State.Escaping;
                        else if (c == '#')
                        {
                            isComment = true;
                            state = State.Comment;
                        }
                        else
                        {
                            current.Append(c);
                            state = State.Word;
                        }
                        break;
                    case State.Word:
                        if (IsSpace(c)) Emit();
                        else if (c == '"') state = State.QuotingEscaping;
                        else if (c == '\'') state = State.Quoting;
                        else if (c == '\\') state = State.Escaping;
                        else current.Append(c);
                        break;
                    case State.Escaping:
                        current.Append(c);
                        state = State.Word;
                        break;
                    case State.EscapingQuoted:
                        current.Append(c);
                        state = State.QuotingEscaping;
                        break;
                    case State.QuotingEscaping:
                        if (c == '"') state = State.Word;
                        else if (c == '\\') state = State.EscapingQuoted;
                        else current.Append(c);
                        break;
                    case State.Quoting:
                        if (c == '\'') state = State.Word;
                        else current.Append(c);
                        break;
                    case State.Comment:
                        if (c == '\n') Emit();
                        else current.Append(c);
                        break;
                }
            }
            switch (state)
            {
                case State.Escaping:
                case State.EscapingQuoted:
                    throw new FormatException("EOF found after escape character");
                case State.QuotingEscaping:
                case State.Quoting:
                    throw new FormatException("EOF found when expecting closing quote");
                case State.Word:
                case State.Comment:
                    Emit();
                    break;
            }
            return words;
        }
    }
}
