package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"storekeeper/lock"
)

// resultOf returns the "result" of a --json envelope, for tests that read
// one command's result; data itself when it is not an envelope (the
// caller's json.Unmarshal then says what is wrong).
func resultOf(data []byte) []byte {
	var env struct {
		Result json.RawMessage `json:"result"`
	}
	if json.Unmarshal(data, &env) != nil || env.Result == nil {
		return data
	}
	return env.Result
}

// jsonEnvelope is what every command's --json prints (README, "JSON
// output"), read strictly: no other top-level field.
type jsonEnvelope struct {
	Command         string           `json:"command"`
	Version         int              `json:"version"`
	Store           string           `json:"store"`
	OK              bool             `json:"ok"`
	Error           *jsonEnvError    `json:"error"`
	DurationSeconds *float64         `json:"duration_seconds"`
	Messages        []jsonEnvMessage `json:"messages"`
	Result          json.RawMessage  `json:"result"`
}

type jsonEnvError struct{ Kind, Message, Hint string }

type jsonEnvMessage struct{ Level, Text, Path string }

func decodeEnvelope(t *testing.T, stdout string) jsonEnvelope {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var e jsonEnvelope
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("not one envelope: %v\n%s", err, stdout)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value on stdout:\n%s", stdout)
	}
	if e.Version != 1 || e.Messages == nil || e.DurationSeconds == nil || *e.DurationSeconds < 0 {
		t.Errorf("envelope lacks version 1, messages or duration_seconds:\n%s", stdout)
	}
	return e
}

// TestJSONEnvelopeEveryCommand: every command's --json is one envelope
// with the same top-level fields; ok and error follow the exit status;
// no duration anywhere is in anything but float seconds (…_seconds);
// messages the text output prints on stderr are in the envelope instead;
// a command line cobra refuses gets the envelope too, with kind "usage".
func TestJSONEnvelopeEveryCommand(t *testing.T) {
	root := t.TempDir()
	buildDemo(t, root)
	env := goldenEnv(t)
	for _, c := range []struct {
		args []string
		code int
		kind string
	}{
		{[]string{"info"}, 0, ""},
		{[]string{"roots", "--no-runtime"}, 0, ""},
		{[]string{"gc", "--print-dead"}, 0, ""},
		{[]string{"gc", "--dry-run"}, 0, ""},
		{[]string{"verify"}, 0, ""},
		{[]string{"optimise", "--dry-run"}, 0, ""},
		{[]string{"repair", "--damaged", "--dry-run"}, 0, ""},
		{[]string{"repair"}, 2, "usage"},
		{[]string{"register"}, 0, ""},                      // empty stdin: nothing to register
		{[]string{"register", "/nix/store/x"}, 2, "usage"}, // PATH without --scan
		{[]string{"gc", "--no-such-flag"}, 2, "usage"},
		{[]string{"gc", "--print-dead", "--print-live"}, 2, "usage"},
		{[]string{"verify", "--budget", "10MB"}, 2, "usage"},
		{[]string{"no-such-command"}, 2, "usage"},
		{[]string{"roots", "size", "--no-runtime"}, 0, ""},
		{[]string{"roots", "size", "--dot"}, 2, "usage"}, // --dot with --json
		{[]string{"roots", "why", "--no-runtime", "/nix/store/c7hpmrlfybzjqnsf03sgaxy9s6nl16la-pkg-42"}, 0, ""},
		{[]string{"roots", "busy"}, 0, ""},
		{[]string{"lock", "status"}, 0, ""},
		{[]string{"lock", "prune", "--dry-run"}, 0, ""},
		{[]string{"metrics"}, 0, ""},
		{[]string{"db", "vacuum", "--check"}, 0, ""},
		{[]string{"db", "vacuum", "--timeout", "-1s"}, 2, "usage"},
		{[]string{"systemd", "install", "--dry-run", "--dir", t.TempDir(), "--bin", binary}, 0, ""},
		{[]string{"systemd", "install", "--dir", t.TempDir(), "--bin", "storekeeper"}, 2, "usage"},
		{[]string{"man", t.TempDir()}, 0, ""},
	} {
		args := append([]string{"--json"}, c.args...)
		r := goldenRun(env, root, args...)
		if r.code != c.code {
			t.Errorf("%v: exit %d, want %d\n%s%s", args, r.code, c.code, r.stdout, r.stderr)
			continue
		}
		e := decodeEnvelope(t, r.stdout)
		want := c.args[0]
		if (want == "roots" || want == "lock" || want == "db" || want == "systemd") && len(c.args) > 1 && !strings.HasPrefix(c.args[1], "-") {
			want += " " + c.args[1] // a subcommand: named by its path
		}
		if c.kind != "usage" || want != "no-such-command" {
			if e.Command != want {
				t.Errorf("%v: command %q, want %q", args, e.Command, want)
			}
		}
		if e.OK != (c.code == 0) || (e.Error == nil) != (c.code == 0) {
			t.Errorf("%v: ok %v, error %+v for exit %d", args, e.OK, e.Error, c.code)
		}
		if e.Error != nil && (e.Error.Kind != c.kind || e.Error.Message == "" || !strings.Contains(r.stderr, e.Error.Message)) {
			t.Errorf("%v: error %+v, want kind %q and the message of stderr %q", args, e.Error, c.kind, r.stderr)
		}
		if c.code == 0 && (e.Store != "/nix/store" || string(e.Result) == "null") {
			t.Errorf("%v: store %q, result %s", args, e.Store, e.Result)
		}
		if c.code == 0 && r.stderr != "" {
			t.Errorf("%v: stderr under --json: %q", args, r.stderr)
		}
		for _, bad := range []string{`_ns"`, `"seconds"`, `"total_seconds"`, `mib`} {
			if strings.Contains(r.stdout, bad) {
				t.Errorf("%v: %s in the JSON output:\n%s", args, bad, r.stdout)
			}
		}
	}
}

// TestJSONHeldLockHint: a gc that waits for a lock another process holds
// (flock(1) on gc.lock, or on db/big-lock, which Nix takes to upgrade the
// schema) and is stopped with SIGTERM exits 130 as before, and its
// envelope's error (and the text output's last line) names the lock and
// the PID and command line holding it.
func TestJSONHeldLockHint(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("no flock(1)")
	}
	for _, c := range []struct {
		lock string
		json bool
	}{
		{"gc.lock", true},
		{"db/big-lock", true},
		{"gc.lock", false},
	} {
		t.Run(fmt.Sprintf("%s json=%v", c.lock, c.json), func(t *testing.T) {
			root := t.TempDir()
			buildDemo(t, root)
			lockPath := filepath.Join(root, "nix/var/nix", c.lock)
			holder := exec.Command("flock", "-x", lockPath, "sleep", "60")
			if err := holder.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { holder.Process.Kill(); holder.Wait() }()
			for i := 0; ; i++ {
				if held, _ := lock.IsLocked(lockPath); held {
					break
				}
				if i == 500 {
					t.Fatalf("flock did not lock %s", lockPath)
				}
				time.Sleep(10 * time.Millisecond)
			}

			args := []string{"--store", root, "--no-progress", "gc"}
			if c.json {
				args = append([]string{"--json"}, args...)
			}
			gc := exec.Command(binary, args...)
			gc.Env = goldenEnv(t)
			var out, errb bytes.Buffer
			gc.Stdout, gc.Stderr = &out, &errb
			if err := gc.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- gc.Wait() }()
			select {
			case err := <-done:
				t.Fatalf("gc did not wait for %s: %v\n%s%s", c.lock, err, out.String(), errb.String())
			case <-time.After(1500 * time.Millisecond):
			}
			gc.Process.Signal(syscall.SIGTERM)
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				gc.Process.Kill()
				t.Fatalf("gc did not stop on SIGTERM\n%s%s", out.String(), errb.String())
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
				t.Fatalf("gc: %v, want exit 130\n%s%s", err, out.String(), errb.String())
			}

			who := fmt.Sprintf("%s is held by PID %d 'flock -x %s sleep 60' (exclusive flock lock); ", lockPath, holder.Process.Pid, lockPath)
			lines := strings.Split(strings.TrimSuffix(errb.String(), "\n"), "\n")
			if n := len(lines); n < 2 || lines[n-2] != "storekeeper: interrupted" || !strings.HasPrefix(lines[n-1], "storekeeper: hint: "+who) {
				t.Errorf("stderr does not end with 'interrupted' and the hint %q:\n%s", who, errb.String())
			}
			if !c.json {
				if c.lock == "gc.lock" && !strings.HasPrefix(errb.String(), "waiting for the big garbage collector lock...\n") {
					t.Errorf("stderr lacks the wait message:\n%s", errb.String())
				}
				return
			}
			e := decodeEnvelope(t, out.String())
			if e.OK || e.Error == nil || e.Error.Kind != "interrupted" || !strings.HasPrefix(e.Error.Hint, who) {
				t.Errorf("error %+v, want kind interrupted and the hint %q", e.Error, who)
			}
			if c.lock == "gc.lock" {
				if len(e.Messages) == 0 || e.Messages[0] != (jsonEnvMessage{Level: "info", Text: "waiting for the big garbage collector lock..."}) {
					t.Errorf("messages %+v lack the wait", e.Messages)
				}
				if string(e.Result) == "null" {
					t.Errorf("the partial result of the interrupted gc is missing")
				}
			}
		})
	}
}

// TestJSONQuietKeepsWarnings: under --quiet a message is shown only if it
// is a warning; under --json, messages go to the envelope, not stderr.
// The warning: a profile whose lock file is a symlink is skipped by
// --delete-old (never followed).
func TestJSONQuietKeepsWarnings(t *testing.T) {
	root := t.TempDir()
	buildDemo(t, root)
	profiles := filepath.Join(root, "nix/var/nix/profiles/per-user/root")
	if err := os.Symlink("/dev/null", filepath.Join(profiles, "profile.lock")); err != nil {
		t.Fatal(err)
	}
	env := goldenEnv(t)
	q := goldenRun(env, root, "--quiet", "gc", "--delete-old")
	if lines := strings.Split(strings.TrimSuffix(q.stderr, "\n"), "\n"); q.code != 0 || len(lines) != 1 ||
		!strings.HasPrefix(lines[0], "warning: skipping profile ") || q.stdout != "" {
		t.Errorf("--quiet: exit %d, stdout %q, stderr %q: want the warning alone", q.code, q.stdout, q.stderr)
	}
	j := goldenRun(env, root, "--json", "gc", "--delete-old")
	if j.code != 0 || j.stderr != "" {
		t.Fatalf("--json: exit %d, stderr %q", j.code, j.stderr)
	}
	e := decodeEnvelope(t, j.stdout)
	if len(e.Messages) != 1 || e.Messages[0].Level != "warning" || !strings.HasPrefix(e.Messages[0].Text, "skipping profile ") {
		t.Errorf("messages %+v: want the warning", e.Messages)
	}
}
