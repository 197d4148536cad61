// Package report holds what every command's input and output share: how
// names from the store (file names, link names, error texts that embed
// them) are made safe to print as text (quote.go), how sizes are read
// from flags and written for people (size.go), the one interface through
// which the libraries report progress (progress.go) and the one through
// which they say things to people (printer.go: Printer, and Message, the
// form of a message in every command's --json envelope).
//
// Anything a user can name (a file in a store path, a gcroot link, an
// entry of the store directory, a line sent to the gc socket) may hold
// escape sequences that recolour or rewrite a terminal, or newlines that
// forge lines in a log or a cron mail. Text output quotes such names with
// Name; JSON output carries them as they are (the encoder escapes them).
package report

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Name returns s with every character that could act on a terminal or a
// log escaped: C0 controls (\n, \r, \t and \xNN for the others), DEL, C1
// controls, the Unicode line and paragraph separators and bidirectional
// overrides (\uNNNN), and bytes that are not UTF-8 (\xNN). A backslash
// becomes \\, so the escaped form is unambiguous. Printable text, spaces
// and quotes are kept, so an ordinary name is returned unchanged (and
// without allocating).
func Name(s string) string { return escape(s, quoteName) }

// Text makes a whole message safe to print, as the last step before a
// line reaches a terminal or a log: it escapes what Name escapes except
// newlines (a message's own line breaks) and backslashes (so names a
// library already quoted with Name are not escaped twice). Names inside
// a message should still be quoted with Name, so that a newline in a name
// cannot forge a line.
func Text(s string) string { return escape(s, quoteText) }

type quoteMode int

const (
	quoteName  quoteMode = iota // Name
	quoteText                   // Text: newlines and backslashes kept
	quoteShell                  // Name, but characters beyond ASCII as their UTF-8 bytes (\xNN each), which bash's $'...' reads back the same in every locale
)

// escape returns s with what mode escapes escaped, or s itself when
// nothing is.
func escape(s string, mode quoteMode) string {
	esc := func(r rune, size int) bool {
		if mode == quoteText && (r == '\n' || r == '\\') {
			return false
		}
		return needsEscape(r, size)
	}
	i := 0
	for i < len(s) {
		if c := s[i]; c >= 0x20 && c < 0x7f && c != '\\' {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if esc(r, size) {
			break
		}
		i += size
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case !esc(r, size):
			b.WriteString(s[i : i+size])
		case mode == quoteShell && r >= 0x80 && size > 1:
			for j := i; j < i+size; j++ {
				escapeRune(&b, utf8.RuneError, s[j], 1)
			}
		default:
			escapeRune(&b, r, s[i], size)
		}
		i += size
	}
	return b.String()
}

func needsEscape(r rune, size int) bool {
	switch {
	case r == utf8.RuneError && size <= 1:
		return true // not UTF-8
	case r == '\\':
		return true
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x2028, r == 0x2029: // line and paragraph separators
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true // bidirectional controls
	}
	return false
}

func escapeRune(b *strings.Builder, r rune, first byte, size int) {
	const hex = "0123456789abcdef"
	switch {
	case r == utf8.RuneError && size <= 1:
		b.WriteString(`\x`)
		b.WriteByte(hex[first>>4])
		b.WriteByte(hex[first&15])
	case r == '\\':
		b.WriteString(`\\`)
	case r == '\n':
		b.WriteString(`\n`)
	case r == '\r':
		b.WriteString(`\r`)
	case r == '\t':
		b.WriteString(`\t`)
	case r < 0x80:
		b.WriteString(`\x`)
		b.WriteByte(hex[r>>4])
		b.WriteByte(hex[r&15])
	default:
		b.WriteString(`\u`)
		s := strconv.FormatInt(int64(r), 16)
		b.WriteString(strings.Repeat("0", 4-len(s)))
		b.WriteString(s)
	}
}

// ShellArg quotes s as one word for a POSIX shell, for the commands that
// findings suggest ("rm -rf PATH"): unchanged when it holds only
// characters no shell treats specially, in single quotes otherwise, and
// as bash's $'...' with Name's escapes when it holds characters Name
// escapes (so the suggestion can be pasted and is still safe to print).
func ShellArg(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("@%+=:,./-_", c) >= 0) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	if Name(s) == s {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return "$'" + strings.ReplaceAll(escape(s, quoteShell), "'", `\'`) + "'"
}
