package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// termSafe returns s with everything a terminal would act on, rather than
// show, written as a visible escape: control characters (newline, tab,
// ESC, which starts ANSI escape sequences, the C1 controls such as CSI
// U+009B, DEL), Unicode format characters (bidi overrides and isolates,
// zero-width characters), line and paragraph separators, and bytes that
// are not UTF-8. Everything the CLI prints from the server goes through it
// (tables, messages, errors), so a value cannot forge a table row, move
// the cursor, clear the screen or reorder text. Letters, marks, digits,
// punctuation, symbols and spaces are kept as they are.
func termSafe(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return r == utf8.RuneError || !unicode.IsGraphic(r) })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.WriteString(s[:i])
	for s = s[i:]; s != ""; {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case unicode.IsGraphic(r):
			b.WriteString(s[:n])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		s = s[n:]
	}
	return b.String()
}

// table writes rows aligned in columns (text/tabwriter), every cell passed
// through termSafe so no cell can hold a tab or a newline of its own.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		io.WriteString(t.tw, termSafe(c))
	}
	io.WriteString(t.tw, "\n")
}

func (t *table) flush() error { return t.tw.Flush() }

// printJSON prints a JSON answer indented, for people and for scripts.
// What a terminal would act on inside strings (see termSafe) is written as
// \u escapes, so the output means the same JSON and is safe to show.
func printJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	return writeJSON(w, v)
}

// writeJSON encodes v indented, with what termSafe would escape written as
// JSON \u escapes.
func writeJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	out := buf.Bytes()
	if bytes.IndexFunc(out, func(r rune) bool { return r != '\n' && !unicode.IsGraphic(r) }) < 0 {
		_, err := w.Write(out)
		return err
	}
	// The encoder's own structure is ASCII, newlines and spaces; any other
	// rune it wrote is inside a string, where a \u escape means the same.
	var b bytes.Buffer
	for _, r := range string(out) {
		if r == '\n' || unicode.IsGraphic(r) {
			b.WriteRune(r)
			continue
		}
		if r1, r2 := utf16.EncodeRune(r); r1 != unicode.ReplacementChar {
			fmt.Fprintf(&b, `\u%04x\u%04x`, r1, r2)
			continue
		}
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	_, err := w.Write(b.Bytes())
	return err
}
