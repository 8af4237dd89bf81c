using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace BastionTools.Ssm
{
    /// <summary>Turns console key presses into the bytes an xterm-compatible terminal sends.</summary>
    internal static class KeyMapper
    {
        private static readonly Dictionary<ConsoleKey, string> Special = new()
        {
            [ConsoleKey.UpArrow] = "\u001b[A",
            [ConsoleKey.DownArrow] = "\u001b[B",
            [ConsoleKey.RightArrow] = "\u001b[C",
            [ConsoleKey.LeftArrow] = "\u001b[D",
            [ConsoleKey.Home] = "\u001b[H",
            [ConsoleKey.End] = "\u001b[F",
            [ConsoleKey.Insert] = "\u001b[2~",
            [ConsoleKey.Delete] = "\u001b[3~",
            [ConsoleKey.PageUp] = "\u001b[5~",
            [ConsoleKey.PageDown] = "\u001b[6~",
            [ConsoleKey.F1] = "\u001bOP",
            [ConsoleKey.F2] = "\u001bOQ",
            [ConsoleKey.F3] = "\u001bOR",
            [ConsoleKey.F4] = "\u001bOS",
            [ConsoleKey.F5] = "\u001b[15~",
            [ConsoleKey.F6] = "\u001b[17~",
            [ConsoleKey.F7] = "\u001b[18~",
            [ConsoleKey.F8] = "\u001b[19~",
            [ConsoleKey.F9] = "\u001b[20~",
            [ConsoleKey.F10] = "\u001b[21~",
            [ConsoleKey.F11] = "\u001b[23~",
            [ConsoleKey.F12] = "\u001b[24~",
        };

        public static byte[] Map(ConsoleKeyInfo key)
        {
            if (Special.TryGetValue(key.Key, out var seq)) return Encoding.ASCII.GetBytes(seq);
            if (key.Key == ConsoleKey.Backspace) return new byte[] { 0x7f };
            if (key.Key == ConsoleKey.Enter) return new byte[] { (byte)'\r' };
            if (key.Key == ConsoleKey.Tab && (key.Modifiers & ConsoleModifiers.Shift) != 0) return Encoding.ASCII.GetBytes("\u001b[Z");
            var c = key.KeyChar;
            if ((key.Modifiers & ConsoleModifiers.Control) != 0 && (c == '\0' || char.IsLetter(c)) && key.Key >= ConsoleKey.A && key.Key <= ConsoleKey.Z)
            {
                return new[] { (byte)(key.Key - ConsoleKey.A + 1) }; // Ctrl-A .. Ctrl-Z, Ctrl-C = 0x03
            }
            if (c == '\0') return Array.Empty<byte>();
            var bytes = Encoding.UTF8.GetBytes(c.ToString());
            if ((key.Modifiers & ConsoleModifiers.Alt) != 0)
            {
                var alt = new byte[bytes.Length + 1];
                alt[0] = 0x1b;
                Buffer.BlockCopy(bytes, 0, alt, 1, bytes.Length);
                return alt;
            }
            return bytes;
        }
    }

    /// <summary>The PowerShell console as the terminal of an interactive shell session: raw bytes out, size from the window.</summary>
    internal sealed class ConsoleTerminal : IShellTerminal
    {
        private readonly Stream _stdout = Console.OpenStandardOutput();
        private readonly object _gate = new();

        public void Output(byte[] data)
        {
            lock (_gate)
            {
                _stdout.Write(data, 0, data.Length);
                _stdout.Flush();
            }
        }

        public void Error(byte[] data) => Output(data);

        public (int Cols, int Rows)? Size
        {
            get
            {
                try
                {
                    return (Console.WindowWidth, Console.WindowHeight);
                }
                catch (IOException)
                {
                    return null;
                }
            }
        }
    }

    /// <summary>Collects a non-interactive command's output as lines (UTF-8, split on \n, \r dropped).</summary>
    internal sealed class LineTerminal : IShellTerminal
    {
        private readonly Action<string> _stdout;
        private readonly Action<string> _stderr;
        private readonly Decoder _outDecoder = new UTF8Encoding(false).GetDecoder();
        private readonly Decoder _errDecoder = new UTF8Encoding(false).GetDecoder();
        private readonly StringBuilder _out = new();
        private readonly StringBuilder _err = new();

        public LineTerminal(Action<string> stdout, Action<string> stderr)
        {
            _stdout = stdout;
            _stderr = stderr;
        }

        public (int Cols, int Rows)? Size => null;

        public void Output(byte[] data) => Feed(data, _outDecoder, _out, _stdout);

        public void Error(byte[] data) => Feed(data, _errDecoder, _err, _stderr);

        private static void Feed(byte[] data, Decoder decoder, StringBuilder pending, Action<string> emit)
        {
            var chars = new char[decoder.GetCharCount(data, 0, data.Length)];
            decoder.GetChars(data, 0, data.Length, chars, 0);
            foreach (var c in chars)
            {
                if (c == '\n')
                {
                    emit(pending.ToString());
                    pending.Clear();
                }
                else if (c != '\r')
                {
                    pending.Append(c);
                }
            }
        }

        /// <summary>Emits what is left after the last newline.</summary>
        public void Flush()
        {
            if (_out.Length > 0) _stdout(_out.ToString());
            if (_err.Length > 0) _stderr(_err.ToString());
            _out.Clear();
            _err.Clear();
        }
    }
}
