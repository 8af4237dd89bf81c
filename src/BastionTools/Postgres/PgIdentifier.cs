using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace BastionTools.Postgres
{
    /// <summary>
    /// SQL identifier quoting with exactly PostgreSQL's <c>quote_ident</c> semantics (ruleutils.c quote_identifier,
    /// quote_all_identifiers off): a name is left bare only when it starts with a lower-case ASCII letter or '_',
    /// consists of lower-case ASCII letters, digits and '_' only, and is not a keyword whose category is other than
    /// "unreserved"; otherwise it is wrapped in double quotes with embedded double quotes doubled. (Unlike the
    /// lexer, quote_ident quotes names containing '$'; this follows the server.)
    /// Names PostgreSQL would mangle are refused instead of quoted: empty, NUL characters (the protocol cannot carry
    /// them), unpaired UTF-16 surrogates (not representable in UTF-8), and more than 63 UTF-8 bytes (NAMEDATALEN-1:
    /// the server would silently truncate, so a grant could land on a different role than the one named).
    /// A name holding a character that does not show as itself (see <see cref="IsUnusual"/>: controls such as a line
    /// feed or ESC, bidi and zero-width format characters, separators, private-use or unassigned code points) is
    /// written as a Unicode-escaped identifier instead, <c>U&amp;"new\000Aline"</c>, so that the SQL shown (-WhatIf)
    /// is plain printable text and is exactly the SQL that runs.
    /// </summary>
    internal static class PgIdentifier
    {
        /// <summary>NAMEDATALEN - 1: the longest identifier PostgreSQL keeps, in bytes of the (UTF-8) server encoding.</summary>
        public const int MaxBytes = 63;

        /// <summary>
        /// The keywords that are not "unreserved", i.e. those quote_ident quotes: <c>select word from pg_get_keywords()
        /// where catcode &lt;&gt; 'U'</c> on PostgreSQL 15.18 (C: column name, R: reserved, T: type or function name).
        /// A test compares this list with the live server. Later majors add a few (e.g. 16's SYSTEM_USER); quoting is
        /// never wrong, so a name only risks a syntax error there, never a different statement.
        /// </summary>
        internal static readonly IReadOnlyDictionary<string, char> NonUnreservedKeywords = BuildKeywords();

        private const string ColumnNameKeywords =
            "between bigint bit boolean char character coalesce dec decimal exists extract float greatest "
            + "grouping inout int integer interval least national nchar none normalize nullif numeric out overlay "
            + "position precision real row setof smallint substring time timestamp treat trim values varchar "
            + "xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot "
            + "xmlserialize xmltable";

        private const string ReservedKeywords =
            "all analyse analyze and any array as asc asymmetric both case cast check collate column constraint "
            + "create current_catalog current_date current_role current_time current_timestamp current_user "
            + "default deferrable desc distinct do else end except false fetch for foreign from grant group having "
            + "in initially intersect into lateral leading limit localtime localtimestamp not null offset on only "
            + "or order placing primary references returning select session_user some symmetric table then to "
            + "trailing true union unique user using variadic when where window with";

        private const string TypeFunctionNameKeywords =
            "authorization binary collation concurrently cross current_schema freeze full ilike inner is isnull "
            + "join left like natural notnull outer overlaps right similar tablesample verbose";

        private static Dictionary<string, char> BuildKeywords()
        {
            var map = new Dictionary<string, char>(StringComparer.Ordinal);
            void Add(string words, char category)
            {
                foreach (var word in words.Split(new[] { ' ' }, StringSplitOptions.RemoveEmptyEntries)) map.Add(word, category);
            }

            Add(ColumnNameKeywords, 'C');
            Add(ReservedKeywords, 'R');
            Add(TypeFunctionNameKeywords, 'T');
            return map;
        }

        /// <summary>The name as quote_ident would write it.</summary>
        /// <exception cref="ArgumentException">The name is null, empty, has a NUL or an unpaired surrogate, or is longer than 63 UTF-8 bytes.</exception>
        public static string Quote(string name)
        {
            Validate(name, nameof(name));
            if (HasUnusual(name)) return UnicodeEscaped(name);
            if (IsSafeBare(name)) return name;
            var sb = new StringBuilder(name.Length + 2);
            sb.Append('"');
            foreach (var ch in name)
            {
                if (ch == '"') sb.Append('"');
                sb.Append(ch);
            }

            sb.Append('"');
            return sb.ToString();
        }

        /// <summary>Quotes each name and joins them with ", ".</summary>
        public static string QuoteList(IEnumerable<string> names)
        {
            if (names is null) throw new ArgumentNullException(nameof(names));
            var parts = new List<string>();
            foreach (var name in names) parts.Add(Quote(name));
            return string.Join(", ", parts);
        }

        /// <summary>Throws <see cref="ArgumentException"/> (naming <paramref name="what"/>) when PostgreSQL could not keep the name exactly as given.</summary>
        public static void Validate(string name, string what)
        {
            if (name is null) throw new ArgumentNullException(what, "The " + what + " is required.");
            if (name.Length == 0) throw new ArgumentException("The " + what + " is empty; PostgreSQL identifiers need at least one character.", what);
            for (var i = 0; i < name.Length; i++)
            {
                var ch = name[i];
                if (ch == '\0') throw new ArgumentException("The " + what + " contains a NUL character, which PostgreSQL identifiers cannot hold.", what);
                if (char.IsHighSurrogate(ch))
                {
                    if (i + 1 < name.Length && char.IsLowSurrogate(name[i + 1]))
                    {
                        i++;
                        continue;
                    }

                    throw new ArgumentException("The " + what + " contains an unpaired UTF-16 surrogate at index " + i + "; it cannot be encoded as UTF-8.", what);
                }

                if (char.IsLowSurrogate(ch)) throw new ArgumentException("The " + what + " contains an unpaired UTF-16 surrogate at index " + i + "; it cannot be encoded as UTF-8.", what);
            }

            var bytes = Encoding.UTF8.GetByteCount(name);
            if (bytes > MaxBytes)
            {
                throw new ArgumentException("The " + what + " is " + bytes + " bytes in UTF-8; PostgreSQL keeps at most " + MaxBytes
                    + " and would silently truncate it (so the statement would act on a different name). Use a shorter name.", what);
            }
        }

        /// <summary>
        /// U&amp;"..." with the default escape character (backslash): an unusual code point becomes \XXXX or \+XXXXXX
        /// (always exactly 4 or 6 hex digits, so a following digit cannot be read as part of it), a backslash is
        /// doubled, a double quote doubled. PostgreSQL accepts Unicode-escaped identifiers whatever
        /// standard_conforming_strings is (scan.l: only U&amp;'' strings depend on it); the decoded name is what
        /// <see cref="Validate"/> measured.
        /// </summary>
        private static string UnicodeEscaped(string name)
        {
            var sb = new StringBuilder(name.Length + 16);
            sb.Append("U&\"");
            for (var i = 0; i < name.Length; i++)
            {
                var ch = name[i];
                var cp = char.IsHighSurrogate(ch) ? char.ConvertToUtf32(ch, name[i + 1]) : ch;
                var width = cp > 0xFFFF ? 2 : 1;
                if (ch == '"') sb.Append("\"\"");
                else if (ch == '\\') sb.Append("\\\\");
                else if (IsUnusual(name, i)) sb.Append(cp > 0xFFFF ? "\\+" + cp.ToString("X6", CultureInfo.InvariantCulture) : "\\" + cp.ToString("X4", CultureInfo.InvariantCulture));
                else sb.Append(name, i, width);
                i += width - 1;
            }

            sb.Append('"');
            return sb.ToString();
        }

        /// <summary>True when some character of <paramref name="text"/> does not show as itself (<see cref="IsUnusual"/>).</summary>
        public static bool HasUnusual(string text)
        {
            if (text is null) throw new ArgumentNullException(nameof(text));
            for (var i = 0; i < text.Length; i++)
            {
                if (IsUnusual(text, i)) return true;
                if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) i++;
            }

            return false;
        }

        /// <summary>
        /// Whether the character (or surrogate pair) at <paramref name="index"/> would not be seen as itself on a
        /// terminal: a control character (C0, DEL, C1: line feeds, ESC that starts ANSI sequences), a format character
        /// (bidi overrides and isolates such as U+202E, zero-width characters, BOM), a line or paragraph separator, a
        /// space other than U+0020, a private-use, unassigned or lone surrogate code point, or a combining mark that
        /// is not attached to a letter or digit (it would draw over the quote or space before it).
        /// </summary>
        public static bool IsUnusual(string text, int index)
        {
            var ch = text[index];
            if (ch == ' ') return false;
            switch (CharUnicodeInfo.GetUnicodeCategory(text, index))
            {
                case UnicodeCategory.Control:
                case UnicodeCategory.Format:
                case UnicodeCategory.LineSeparator:
                case UnicodeCategory.ParagraphSeparator:
                case UnicodeCategory.SpaceSeparator:
                case UnicodeCategory.PrivateUse:
                case UnicodeCategory.OtherNotAssigned:
                case UnicodeCategory.Surrogate:
                    return true;
                case UnicodeCategory.NonSpacingMark:
                case UnicodeCategory.SpacingCombiningMark:
                case UnicodeCategory.EnclosingMark:
                    return !AttachesToLetter(text, index);
                default:
                    return false;
            }
        }

        private static bool AttachesToLetter(string text, int index)
        {
            for (var i = index - 1; i >= 0; i--)
            {
                if (char.IsLowSurrogate(text[i]) && i > 0 && char.IsHighSurrogate(text[i - 1])) i--;
                var cat = CharUnicodeInfo.GetUnicodeCategory(text, i);
                if (cat == UnicodeCategory.NonSpacingMark || cat == UnicodeCategory.SpacingCombiningMark || cat == UnicodeCategory.EnclosingMark) continue;
                return char.IsLetterOrDigit(text, i);
            }

            return false;
        }

        /// <summary>
        /// Text for messages (e.g. a server error that quotes a name): every unusual character (<see cref="IsUnusual"/>)
        /// becomes \uXXXX (or \U00XXXXXX), so what is printed is plain text and a name cannot hide or rewrite it.
        /// </summary>
        public static string Printable(string? text)
        {
            if (string.IsNullOrEmpty(text) || !HasUnusual(text!)) return text ?? "";
            var sb = new StringBuilder(text!.Length + 16);
            for (var i = 0; i < text.Length; i++)
            {
                var ch = text[i];
                var pair = char.IsHighSurrogate(ch) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]);
                var cp = pair ? char.ConvertToUtf32(ch, text[i + 1]) : ch;
                if (IsUnusual(text, i)) sb.Append(cp > 0xFFFF ? "\\U" + cp.ToString("X8", CultureInfo.InvariantCulture) : "\\u" + cp.ToString("X4", CultureInfo.InvariantCulture));
                else sb.Append(text, i, pair ? 2 : 1);
                if (pair) i++;
            }

            return sb.ToString();
        }

        private static bool IsSafeBare(string name)
        {
            var first = name[0];
            if (!((first >= 'a' && first <= 'z') || first == '_')) return false;
            foreach (var ch in name)
            {
                if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) return false;
            }

            return !NonUnreservedKeywords.ContainsKey(name);
        }
    }

    /// <summary>
    /// String literals as PostgreSQL's quote_literal writes them for standard_conforming_strings on: single quotes
    /// doubled; a value with a backslash is written as an E'' literal with backslashes doubled (valid whatever the
    /// setting). Prefer command parameters; this is for text that must be shown as SQL (e.g. -WhatIf output).
    /// </summary>
    internal static class PgLiteral
    {
        public static string Quote(string value)
        {
            if (value is null) throw new ArgumentNullException(nameof(value));
            if (value.IndexOf('\0') >= 0) throw new ArgumentException("The value contains a NUL character, which PostgreSQL text cannot hold.", nameof(value));
            var sb = new StringBuilder(value.Length + 3);
            if (value.IndexOf('\\') >= 0) sb.Append('E');
            sb.Append('\'');
            foreach (var ch in value)
            {
                if (ch == '\'' || ch == '\\') sb.Append(ch);
                sb.Append(ch);
            }

            sb.Append('\'');
            return sb.ToString();
        }
    }
}
