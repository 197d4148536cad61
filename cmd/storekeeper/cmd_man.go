package main

// `storekeeper man DIR`: a man page (section 1) for every command, written
// from the cobra command tree by a small roff writer of our own.
//
// Not cobra/doc with go-md2man (both available): cobra/doc renders a
// command's Long text as Markdown, and storekeeper's help texts are plain
// text laid out for a terminal. go-md2man drops "<store>" as an HTML tag
// ("<store>/trash" became "/trash"), turns *x* and _x_ into italics and
// refills the aligned option tables. Here each paragraph is either filled
// (plain lines) or kept as it is (a paragraph with indented lines), and
// every character is escaped for roff.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"storekeeper/internal/atomicfile"

	"storekeeper/report"
)

// manResult is what `man` reports (--json).
type manResult struct {
	Dir   string   `json:"dir"`
	Pages []string `json:"pages"` // file names, sorted
}

func newManCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "man DIR",
		Short: "Write a man page for every command into DIR (storekeeper.1, storekeeper-gc.1, ...)",
		Long: `Write a man page (section 1) for every command into DIR, from the same
definitions as --help: storekeeper.1, storekeeper-gc.1, storekeeper-lock-status.1,
..., each with NAME, SYNOPSIS, DESCRIPTION, COMMANDS (of a parent), OPTIONS,
GLOBAL OPTIONS, EXIT STATUS and SEE ALSO. DIR is created if it does not
exist (its parent must, belong to this user or root and be writable by
its owner only or sticky, as /tmp; mode 0755, as the pages are 0644,
whatever the umask); it must belong to this user or root and be
writable by its owner only, and a symlink on its path is followed only
where no other user could have put it. Each page is written whole (a temporary file, fsynced, renamed over
the name; a symlink there is replaced, never followed).

Install them where man looks, e.g.:
  storekeeper man /usr/local/share/man/man1 && mandb -q
or read one in place: man -l DIR/storekeeper-gc.1

` + exitCodesHelp,
		Args: cobra.ExactArgs(1),
		// DIR: shells complete directories only.
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveFilterDirs
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMan(cmd, g, args[0])
		},
	}
}

func runMan(cmd *cobra.Command, g *globalOptions, dir string) error {
	p := g.printer(cmd)
	// Created (readable by every user, as the pages are, whatever the
	// umask) only in a parent no other user controls, reached through no
	// link of another user's.
	if _, err := atomicfile.Mkdir(dir, 0o755); errors.Is(err, atomicfile.ErrUnsafe) {
		return fmt.Errorf("%w: %w", fs.ErrPermission, err)
	} else if err != nil {
		return fmt.Errorf("creating %s: %w", report.Name(dir), err)
	}
	d, err := openOwnDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	res := manResult{Dir: dir}
	for _, c := range manCommands(cmd.Root()) {
		name := manName(c) + ".1"
		// A link at a page's name is replaced, never followed.
		if err := atomicfile.Write(d, name, manPage(c), 0o644, atomicfile.ReplaceSymlink); err != nil {
			return fmt.Errorf("writing %s: %w", report.Name(dir+"/"+name), err)
		}
		res.Pages = append(res.Pages, name)
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", report.Name(dir), err)
	}
	sort.Strings(res.Pages)
	if g.json {
		return p.JSON(res)
	}
	for _, name := range res.Pages {
		p.Textln(strings.TrimSuffix(dir, "/") + "/" + name)
	}
	return nil
}

// manCommands is root and every command under it that --help lists (not
// hidden, not deprecated, not `help`), parents before children.
func manCommands(root *cobra.Command) []*cobra.Command {
	root.InitDefaultHelpFlag() // cobra adds -h only to the command it runs
	out := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if c.IsAvailableCommand() {
			out = append(out, manCommands(c)...)
		}
	}
	return out
}

// manName is c's page name: its command path joined by '-'
// ("storekeeper-lock-status").
func manName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}

// manPage is c's man page in roff (the man macros).
func manPage(c *cobra.Command) []byte {
	var b bytes.Buffer
	name := manName(c)
	fmt.Fprintf(&b, ".TH %s 1 \"\" storekeeper \"storekeeper manual\"\n", roffQuoted(strings.ToUpper(name)))
	// Left-adjusted, no hyphenation: paths and flags stay whole.
	b.WriteString(".ad l\n.nh\n")
	b.WriteString(".SH NAME\n")
	b.WriteString(roffText(name) + " \\- " + roffText(c.Short) + "\n")

	b.WriteString(".SH SYNOPSIS\n.nf\n")
	if c.Runnable() {
		b.WriteString(roffLine(c.UseLine()))
	}
	if c.HasAvailableSubCommands() {
		b.WriteString(roffLine(c.CommandPath() + " COMMAND [flags]"))
	}
	b.WriteString(".fi\n")

	desc := strings.TrimSpace(strings.Replace(c.Long, exitCodesHelp, "", 1))
	if desc == "" {
		desc = c.Short
	}
	b.WriteString(".SH DESCRIPTION\n")
	writeRoffParagraphs(&b, desc)

	if c.HasAvailableSubCommands() {
		b.WriteString(".SH COMMANDS\n")
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() {
				b.WriteString(".TP\n.B " + roffText(s.CommandPath()) + "\n" + roffLines(s.Short) + ".br\nSee " + roffText(manName(s)) + "(1).\n")
			}
		}
	}
	writeRoffFlags(&b, "OPTIONS", c.NonInheritedFlags())
	writeRoffFlags(&b, "GLOBAL OPTIONS", c.InheritedFlags())

	b.WriteString(".SH EXIT STATUS\n")
	for _, e := range exitStatuses() {
		b.WriteString(".TP\n.B " + e[0] + "\n" + roffLines(e[1]))
	}

	var also []string
	if c.HasParent() {
		also = append(also, manName(c.Parent()))
	}
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() {
			also = append(also, manName(s))
		}
	}
	if len(also) > 0 {
		b.WriteString(".SH SEE ALSO\n")
		for i, a := range also {
			sep := ","
			if i == len(also)-1 {
				sep = ""
			}
			b.WriteString(".BR " + roffText(a) + " (1)" + sep + "\n")
		}
	}
	return b.Bytes()
}

// writeRoffParagraphs writes text's paragraphs (separated by blank
// lines): one whose lines all start at the margin is filled; one with an
// indented line (an aligned table, an example) is kept line for line.
func writeRoffParagraphs(b *bytes.Buffer, text string) {
	for _, para := range regexp.MustCompile(`\n[ \t]*\n`).Split(text, -1) {
		para = strings.Trim(para, "\n")
		if strings.TrimSpace(para) == "" {
			continue
		}
		lines := strings.Split(para, "\n")
		indented := false
		for _, l := range lines {
			indented = indented || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		}
		b.WriteString(".PP\n")
		if indented {
			b.WriteString(".nf\n")
		}
		for _, l := range lines {
			if !indented {
				l = strings.TrimSpace(l)
			}
			b.WriteString(roffLine(l))
		}
		if indented {
			b.WriteString(".fi\n")
		}
	}
}

// writeRoffFlags writes a section listing the flags of fs that are not
// hidden, each with its usage and non-zero default, as --help does.
func writeRoffFlags(b *bytes.Buffer, title string, fs *pflag.FlagSet) {
	var items []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		varname, usage := pflag.UnquoteUsage(f)
		head := ""
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			head = "\\fB" + roffText("-"+f.Shorthand) + "\\fR, "
		}
		head += "\\fB" + roffText("--"+f.Name) + "\\fR"
		if varname != "" {
			head += " \\fI" + roffText(varname) + "\\fR"
		}
		if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "[]" {
			if f.Value.Type() == "string" {
				d = fmt.Sprintf("%q", d)
			}
			usage += " (default " + d + ")"
		}
		items = append(items, ".TP\n"+head+"\n"+roffLines(usage))
	})
	if len(items) == 0 {
		return
	}
	b.WriteString(".SH " + title + "\n")
	for _, it := range items {
		b.WriteString(it)
	}
}

// exitStatuses are the rows of exitCodesHelp (the one table of exit
// codes, also in --help): code and meaning, continuation lines joined.
func exitStatuses() [][2]string {
	var out [][2]string
	row := regexp.MustCompile(`^  (\d+)\s+(.*)$`)
	for _, l := range strings.Split(exitCodesHelp, "\n")[1:] {
		if m := row.FindStringSubmatch(l); m != nil {
			out = append(out, [2]string{m[1], m[2]})
		} else if len(out) > 0 && strings.TrimSpace(l) != "" {
			out[len(out)-1][1] += " " + strings.TrimSpace(l)
		}
	}
	return out
}

// roffText escapes s for roff running text: a backslash as \e, '-' as
// \- (a minus, so that options copy as typed), every character outside
// printable ASCII as \[uXXXX] (what groff reads whatever the input
// encoding; control characters as U+FFFD).
func roffText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\e`)
		case r == '-':
			b.WriteString(`\-`)
		case r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			b.WriteString(`\[uFFFD]`)
		case r > 0x7e:
			fmt.Fprintf(&b, `\[u%04X]`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// roffLine is s as one input line: escaped, with a leading dot or
// apostrophe (a request) made text by \&.
func roffLine(s string) string {
	t := roffText(s)
	if strings.HasPrefix(t, ".") || strings.HasPrefix(t, "'") {
		t = `\&` + t
	}
	return t + "\n"
}

// roffLines is s as input lines, each through roffLine (so that text
// starting with '.' or an apostrophe is never read as a request), its line breaks
// kept as breaks (.br), as --help shows them: for text written at the
// start of a line, such as a command's Short or a flag's usage.
func roffLines(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(s, "\n") {
		if i > 0 {
			b.WriteString(".br\n")
		}
		b.WriteString(roffLine(l))
	}
	return b.String()
}

// roffQuoted is s as a quoted macro argument.
func roffQuoted(s string) string {
	return `"` + strings.ReplaceAll(roffText(s), `"`, `\(dq`) + `"`
}
