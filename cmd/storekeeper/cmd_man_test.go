package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestManPageHostileText: help text that roff would read as a request (a
// line starting with '.' or an apostrophe) or a line break in a flag's usage stays
// text, wherever it lands at the start of an input line: a command's
// Short in NAME and in its parent's COMMANDS, a flag's usage in OPTIONS.
func TestManPageHostileText(t *testing.T) {
	root := &cobra.Command{Use: "storekeeper", Short: "root"}
	sub := &cobra.Command{
		Use:   "evil",
		Short: ".so /etc/passwd",
		Long:  "fine\n.rm TH\n'bp",
		Run:   func(*cobra.Command, []string) {},
	}
	sub.Flags().String("dot", "", ".ds x y")
	sub.Flags().String("quote", "", "'sp 100")
	sub.Flags().String("multi", "", "first line\nsecond line\n.nr x 1")
	sub.Flags().String("back", "", `a \fB bold \\ back`)
	root.AddCommand(sub)

	for _, c := range []*cobra.Command{root, sub} {
		page := string(manPage(c))
		for i, l := range strings.Split(page, "\n") {
			if !strings.HasPrefix(l, ".") && !strings.HasPrefix(l, "'") {
				continue
			}
			req := strings.Fields(l)[0]
			switch req {
			case ".TH", ".ad", ".nh", ".SH", ".nf", ".fi", ".PP", ".TP", ".B", ".BR", ".br":
			default:
				t.Errorf("%s page line %d is a roff request from help text: %q\n%s", manName(c), i+1, l, page)
			}
		}
		if strings.Contains(page, `\[uFFFD]`) {
			t.Errorf("%s page: a line break of the help text became U+FFFD:\n%s", manName(c), page)
		}
		if strings.Contains(page, `\fB bold`) {
			t.Errorf("%s page: a backslash of the help text reached roff unescaped:\n%s", manName(c), page)
		}
	}
	page := string(manPage(sub))
	for _, want := range []string{"first line\n.br\nsecond line\n.br\n", `\&.nr x 1`, `\&.ds x y`, `\&'sp 100`} {
		if !strings.Contains(page, want) {
			t.Errorf("evil page lacks %q:\n%s", want, page)
		}
	}
	if page := string(manPage(root)); !strings.Contains(page, `\&.so /etc/passwd`) {
		t.Errorf("root page: evil's Short is not kept as text in COMMANDS:\n%s", page)
	}
}
