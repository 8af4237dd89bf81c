using System;
using System.Collections.Generic;
using System.Text;
using BastionTools.Ssm;
using Xunit;

namespace BastionTools.Tests.Engine
{
    public class TerminalTests
    {
        [Theory]
        [InlineData(ConsoleKey.C, 'c', false, false, true, new byte[] { 0x03 })]
        [InlineData(ConsoleKey.C, '\u0003', false, false, true, new byte[] { 0x03 })]
        [InlineData(ConsoleKey.D, '\0', false, false, true, new byte[] { 0x04 })]
        [InlineData(ConsoleKey.Enter, '\r', false, false, false, new byte[] { 0x0d })]
        [InlineData(ConsoleKey.Backspace, '\b', false, false, false, new byte[] { 0x7f })]
        [InlineData(ConsoleKey.UpArrow, '\0', false, false, false, new byte[] { 0x1b, (byte)'[', (byte)'A' })]
        [InlineData(ConsoleKey.Delete, '\0', false, false, false, new byte[] { 0x1b, (byte)'[', (byte)'3', (byte)'~' })]
        [InlineData(ConsoleKey.A, 'a', false, true, false, new byte[] { 0x1b, (byte)'a' })]
        [InlineData(ConsoleKey.Oem1, 'é', false, false, false, new byte[] { 0xc3, 0xa9 })]
        public void KeyMapper_SendsWhatAnXtermSends(ConsoleKey key, char ch, bool shift, bool alt, bool control, byte[] expected)
        {
            Assert.Equal(expected, KeyMapper.Map(new ConsoleKeyInfo(ch, key, shift, alt, control)));
        }

        [Fact]
        public void LineTerminal_SplitsLinesAcrossChunks_AndUtf8AcrossChunks()
        {
            var lines = new List<string>();
            var errors = new List<string>();
            var t = new LineTerminal(lines.Add, errors.Add);
            var bytes = Encoding.UTF8.GetBytes("héllo\r\nwor");
            t.Output(bytes[..2]); // splits the é
            t.Output(bytes[2..]);
            t.Output(Encoding.UTF8.GetBytes("ld\nlast"));
            t.Error(Encoding.UTF8.GetBytes("oops\n"));
            Assert.Equal(new[] { "héllo", "world" }, lines);
            t.Flush();
            Assert.Equal(new[] { "héllo", "world", "last" }, lines);
            Assert.Equal(new[] { "oops" }, errors);
            Assert.Null(t.Size);
        }
    }
}
