package main

import (
	"strings"
	"testing"
	"time"

	"storekeeper/roots"
)

// TestWhyTextEscaped: a root's link and a process's command line come
// from other users: in the text, control characters are escaped, so
// neither can forge a line or drive a terminal; a runtime root shows its
// pid, user, what held the path, the environment variable and its command
// line.
func TestWhyTextEscaped(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	e := &roots.Explanation{Path: "/nix/store/aaaa-x", Alive: true,
		Root:  &roots.Root{Kind: roots.Runtime, Link: "/proc/12/environ", Target: "/nix/store/aaaa-x", PID: 12, User: "alice", Via: "environ", Env: "SUDO_COMMAND", Command: "sudo\x1b[2J\n/nix/store/aaaa-x is dead"},
		Chain: []roots.Link{{Path: "/nix/store/aaaa-x"}}}
	var b strings.Builder
	whyText(&b, e, false, now)
	out := b.String()
	if strings.ContainsRune(out, '\x1b') || strings.Contains(out, "\n/nix/store/aaaa-x is dead") {
		t.Errorf("a command line drove the terminal or forged a line:\n%q", out)
	}
	for _, want := range []string{"(runtime, pid 12, user alice, via environ, variable SUDO_COMMAND, ", `command 'sudo\x1b[2J\n/nix/store/aaaa-x is dead'`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	e.Root = &roots.Root{Kind: roots.Direct, Link: "/nix/var/nix/gcroots/r\nforged", Target: "/nix/store/aaaa-x", Owner: "alice", MTime: now.Add(-49 * time.Hour).Unix()}
	b.Reset()
	whyText(&b, e, false, now)
	if out := b.String(); !strings.Contains(out, `gcroots/r\nforged -> /nix/store/aaaa-x (direct, owner alice, modified 2023-11-12 21:13:20 UTC, 2 days ago)`) {
		t.Errorf("link root:\n%s", out)
	}
}

// TestDotQuote: a DOT string shows exactly the text form of a name: no
// control character reaches the file, a quote or a backslash cannot end
// the string or start an escape Graphviz reads.
func TestDotQuote(t *testing.T) {
	for in, want := range map[string]string{
		"plain-name":        `"plain-name"`,
		`a"b`:               `"a\"b"`,
		`back\slash`:        `"back\\\\slash"`,
		"new\nline\x1b[31m": `"new\\nline\\x1b[31m"`,
		"\"\\\"":            `"\"\\\\\""`,
	} {
		if got := dotQuote(in); got != want {
			t.Errorf("dotQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:         "in the future",
		30 * time.Second:     "just now",
		90 * time.Second:     "1 minute ago",
		5 * time.Hour:        "5 hours ago",
		49 * time.Hour:       "2 days ago",
		800 * 24 * time.Hour: "2 years ago",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
}
