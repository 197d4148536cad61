package report

import (
	"os/exec"
	"strings"
	"testing"
)

func TestName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"/nix/store/abc-hello-1.0/bin/hello", "/nix/store/abc-hello-1.0/bin/hello"},
		{"with space and 'quotes'", "with space and 'quotes'"},
		{"héllo wörld ✓", "héllo wörld ✓"},
		{"a\nb", `a\nb`},
		{"red\x1b[31mtext\x1b[0m", `red\x1b[31mtext\x1b[0m`},
		{"cr\rtab\tbell\a", `cr\rtab\tbell\x07`},
		{"del\x7f", `del\x7f`},
		{"back\\slash", `back\\slash`},
		{"c1\u009bx", `c1\u009bx`},
		{"bidi\u202egnp.exe", `bidi\u202egnp.exe`},
		{"ls\u2028ps\u2029", `ls\u2028ps\u2029`},
		{"bad\xffutf8\xc3", `bad\xffutf8\xc3`},
		{"\x00nul", `\x00nul`},
	} {
		if got := Name(c.in); got != c.want {
			t.Errorf("Name(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestNameLeavesNoControl(t *testing.T) {
	// Every byte value, alone and in context: the result is printable.
	for b := 0; b < 256; b++ {
		s := "x" + string([]byte{byte(b)}) + "y"
		for _, r := range Name(s) {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0xfffd {
				t.Fatalf("Name(%q) = %q keeps %U", s, Name(s), r)
			}
		}
	}
}

func TestText(t *testing.T) {
	in := "first error: open /s/x\x1b]0;pwned\x07: denied\nsecond \\ error\r"
	want := `first error: open /s/x\x1b]0;pwned\x07: denied` + "\nsecond \\ error" + `\r`
	if got := Text(in); got != want {
		t.Errorf("Text = %q, want %q", got, want)
	}
	for _, s := range []string{"plain\ntext", Name("a\x1b\\b\nc")} {
		if got := Text(s); got != s {
			t.Errorf("Text(%q) = %q, want it unchanged", s, got)
		}
	}
}

func TestShellArg(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/nix/store/abc-x-1.0", "/nix/store/abc-x-1.0"},
		{"", "''"},
		{"a b", "'a b'"},
		{"it's; rm -rf /", `'it'\''s; rm -rf /'`},
		{"$(id)`id`", "'$(id)`id`'"},
		{"nl\nx'", `$'nl\nx\''`},
	} {
		if got := ShellArg(c.in); got != c.want {
			t.Errorf("ShellArg(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// What bash reads back is the original word.
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	for _, in := range []string{"a b", "it's; $(id)", "nl\nx'\x1b[31m", "back\\slash\u202e", "\xff\x01"} {
		out, err := exec.Command("bash", "-c", "printf %s "+ShellArg(in)).Output()
		if err != nil {
			t.Fatalf("bash on %q: %v", ShellArg(in), err)
		}
		if string(out) != in {
			t.Errorf("bash read %q back as %q (quoted %s)", in, out, ShellArg(in))
		}
	}
	if strings.ContainsAny(ShellArg("x\x1by"), "\x1b") {
		t.Error("ShellArg kept a raw escape")
	}
}
