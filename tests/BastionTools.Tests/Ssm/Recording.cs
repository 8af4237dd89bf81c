using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;

namespace BastionTools.Tests.Ssm
{
    /// <summary>One line of a recording of the official client (see tests/BastionTools.Tests/Protocol).</summary>
    internal sealed class RecordedFrame
    {
        public string File { get; init; } = "";
        public int Line { get; init; }
        public string Dir { get; init; } = "";
        public string Type { get; init; } = "";
        public int HeaderLength { get; init; }
        public long Seq { get; init; }
        public ulong Flags { get; init; }
        public string Id { get; init; } = "";
        public int PayloadType { get; init; }

        /// <summary>Payload length of the whole frame (the raw bytes may be cut short).</summary>
        public int Len { get; init; }

        public bool DigestOk { get; init; }
        public string? Payload { get; init; }

        /// <summary>The first 400 bytes of the binary frame.</summary>
        public byte[] Raw { get; init; } = Array.Empty<byte>();

        public bool IsText => PayloadType < 0;
        public bool FromClient => Dir == "client->agent";
        public int FullLength => HeaderLength + 4 + Len;

        /// <summary>Whether <see cref="Raw"/> holds the whole frame (the recorder kept only 400 bytes).</summary>
        public bool IsComplete => Raw.Length == FullLength;

        /// <summary>The payload bytes that were recorded (all of them when <see cref="IsComplete"/>).</summary>
        public byte[] RecordedPayload => Raw.Length > HeaderLength + 4 ? Raw.Skip(HeaderLength + 4).ToArray() : Array.Empty<byte>();

        /// <summary>
        /// The frame with the missing tail of a cut-short payload filled with zeros: a frame of the true length whose
        /// header is exactly as recorded. Its digest does not match, so only the header can be checked on it.
        /// </summary>
        public byte[] PaddedToFullLength()
        {
            var bytes = new byte[FullLength];
            Buffer.BlockCopy(Raw, 0, bytes, 0, Raw.Length);
            return bytes;
        }

        public override string ToString() => $"{File}:{Line} {Dir} {Type} seq={Seq} pt={PayloadType}";
    }

    internal static class Recording
    {
        public const string Mux = "official-client-mux.jsonl";
        public const string Basic = "official-client-basic.jsonl";
        public static readonly string[] Files = { Mux, Basic };

        private static readonly Dictionary<string, IReadOnlyList<RecordedFrame>> Cache = new();

        public static IReadOnlyList<RecordedFrame> Load(string file)
        {
            lock (Cache)
            {
                if (Cache.TryGetValue(file, out var cached)) return cached;
                var path = Path.Combine(AppContext.BaseDirectory, "Protocol", file);
                var frames = new List<RecordedFrame>();
                int line = 0;
                foreach (var text in System.IO.File.ReadAllLines(path))
                {
                    line++;
                    if (string.IsNullOrWhiteSpace(text)) continue;
                    using var doc = JsonDocument.Parse(text);
                    var r = doc.RootElement;
                    frames.Add(new RecordedFrame
                    {
                        File = file,
                        Line = line,
                        Dir = r.GetProperty("dir").GetString()!,
                        Type = r.GetProperty("type").GetString()!,
                        HeaderLength = r.TryGetProperty("hl", out var hl) ? hl.GetInt32() : 0,
                        Seq = r.TryGetProperty("seq", out var seq) ? seq.GetInt64() : 0,
                        Flags = r.TryGetProperty("flags", out var fl) ? fl.GetUInt64() : 0,
                        Id = r.TryGetProperty("id", out var id) ? id.GetString()! : "",
                        PayloadType = r.GetProperty("payloadType").GetInt32(),
                        Len = r.GetProperty("len").GetInt32(),
                        DigestOk = r.TryGetProperty("digestOk", out var d) && d.GetBoolean(),
                        Payload = r.TryGetProperty("payload", out var p) ? p.GetString() : null,
                        Raw = r.TryGetProperty("raw", out var raw) ? Convert.FromHexString(raw.GetString()!) : Array.Empty<byte>(),
                    });
                }
                Cache[file] = frames;
                return frames;
            }
        }

        public static IEnumerable<RecordedFrame> Binary(string file) => Load(file).Where(f => !f.IsText);

        /// <summary>xUnit member data: (file, line) of every binary frame, optionally only the client's.</summary>
        public static IEnumerable<object[]> BinaryFrameKeys(bool clientOnly) =>
            Files.SelectMany(f => Binary(f).Where(x => !clientOnly || x.FromClient).Select(x => new object[] { f, x.Line }));

        public static RecordedFrame Get(string file, int line) => Load(file).Single(f => f.Line == line);
    }
}
