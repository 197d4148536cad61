package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"storekeeper/gc"
	"storekeeper/lock"
	"storekeeper/nix/nixconf"
	"storekeeper/nix/validity"
	"storekeeper/optimise"
	"storekeeper/register"
	"storekeeper/repair"
	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/db"
	storefs "storekeeper/store/fs"
)

// TestErrorTable: each typed error, wrapped as the libraries wrap it,
// gets its kind and the exit code the README documents; an interruption
// exits 130 whatever the error; findings exit 1; anything else 2.
func TestErrorTable(t *testing.T) {
	wrap := func(sentinel error) error { return fmt.Errorf("doing something with /x: %w", sentinel) }
	for _, c := range []struct {
		err         error
		interrupted bool
		kind        string
		code        int
	}{
		{nil, false, "", 0},
		{&findingsError{msg: "2 damaged paths"}, false, "findings", 1},
		{fmt.Errorf("verify: %w", &findingsError{msg: "x"}), true, "findings", 1},
		{wrap(context.Canceled), false, "interrupted", 130},
		{errors.New("anything"), true, "interrupted", 130},
		{usagef("--print-dead and --print-live exclude each other"), false, "usage", 2},
		{usagef("--max-freed: %w", report.ErrBadSize), false, "usage", 2},
		{wrap(store.ErrBadStoreURI), false, "usage", 2},
		{&lock.HeldError{Path: "/x/gc.lock", Err: lock.ErrWouldBlock}, false, "lock-held", 2},
		{wrap(lock.ErrWouldBlock), false, "lock-held", 2},
		{wrap(db.ErrDBLocked), false, "db-locked", 2},
		{wrap(&store.UnmountedError{}), false, "store-unmounted", 2},
		{wrap(store.ErrStoreLooksUnmounted), false, "store-unmounted", 2},
		{wrap(storefs.ErrReadOnlyFS), false, "read-only", 2},
		{wrap(storefs.ErrReadOnlyStore), false, "read-only", 2},
		{gc.ErrReadOnly, false, "read-only", 2},
		{wrap(optimise.ErrReadOnly), false, "read-only", 2},
		{roots.ErrPruneReadOnly, false, "read-only", 2},
		{wrap(repair.ErrReadOnly), false, "read-only", 2},
		{wrap(storefs.ErrDiskFull), false, "disk-full", 2},
		{fmt.Errorf("gc: finding roots: %w (nothing was deleted)", wrap(roots.ErrRootsUnreadable)), false, "roots-unreadable", 2},
		{wrap(gc.ErrRootsUnknown), false, "roots-unreadable", 2},
		{wrap(store.ErrNoStore), false, "no-store", 2},
		{wrap(db.ErrNoDB), false, "no-db", 2},
		{wrap(db.ErrSchemaVersion), false, "db-schema", 2},
		{wrap(db.ErrCorruptDB), false, "db-corrupt", 2},
		{wrap(db.ErrDBAccess), false, "db-access", 2},
		{wrap(nixconf.ErrBadConfig), false, "bad-config", 2},
		{wrap(gc.ErrAlive), false, "path-alive", 2},
		{wrap(gc.ErrNotInStore), false, "bad-path", 2},
		{wrap(register.ErrNotInStore), false, "bad-path", 2},
		{wrap(validity.ErrBadRegistration), false, "bad-input", 2},
		{wrap(db.ErrBadRegistration), false, "bad-input", 2},
		{wrap(register.ErrMissing), false, "missing", 2},
		{wrap(register.ErrBadInput), false, "bad-input", 2},
		{wrap(register.ErrBadDerivation), false, "bad-derivation", 2},
		{wrap(db.ErrAlreadyValid), false, "already-valid", 2},
		{wrap(&db.ReferenceError{Referrer: "/x", Reference: "/y"}), false, "invalid-reference", 2},
		{wrap(db.ErrCycle), false, "cycle", 2},
		{wrap(register.ErrHashMismatch), false, "mismatch", 2},
		{wrap(&storefs.RejectedError{Kind: storefs.RejectHardLink, Path: "/x/foo"}), false, "rejected", 2},
		{wrap(storefs.ErrTreeChanged), false, "changed", 2},
		{wrap(register.ErrChanged), false, "changed", 2},
		{wrap(register.ErrTooMany), false, "too-many", 2},
		{wrap(optimise.ErrLinksDir), false, "links-dir", 2},
		{&fs.PathError{Op: "open", Path: "/x", Err: fs.ErrPermission}, false, "permission", 2},
		{errors.New("something else"), false, "error", 2},
	} {
		o := classify(c.err, c.interrupted, nil, t.TempDir())
		if o.kind != c.kind || o.code != c.code {
			t.Errorf("%v (interrupted %v): kind %q exit %d, want %q exit %d", c.err, c.interrupted, o.kind, o.code, c.kind, c.code)
		}
		if c.err != nil && c.kind != "interrupted" && c.kind != "findings" && o.message != c.err.Error() {
			t.Errorf("%v: message %q, want the error's text", c.err, o.message)
		}
	}
}

// TestOutcomeLines: the text form of each outcome is what the commands
// printed before the table existed, plus the hint.
func TestOutcomeLines(t *testing.T) {
	for _, c := range []struct {
		o    outcome
		want string
	}{
		{outcome{code: 0}, ""},
		{outcome{code: 1, kind: "findings", message: "2 damaged paths"}, "storekeeper: 2 damaged paths\n"},
		{outcome{code: 1, kind: "findings"}, ""},
		{outcome{code: 130, kind: "interrupted", message: "interrupted", hint: "H"}, "storekeeper: interrupted\nstorekeeper: hint: H\n"},
		{outcome{code: 2, kind: "db-access", message: "no\nway"}, "storekeeper: error: no\nway\n"},
	} {
		var b strings.Builder
		for _, l := range c.o.lines() {
			b.WriteString(l + "\n")
		}
		if b.String() != c.want {
			t.Errorf("%+v: %q, want %q", c.o, b.String(), c.want)
		}
	}
}

// TestLockHint: a held lock's hint names the file and its holder (this
// process, through another open file description: flock for gc.lock, a
// POSIX lock, as SQLite takes, for a locked database); a lock whose holder
// /proc/locks does not show gets the commands that find it.
func TestLockHint(t *testing.T) {
	if _, err := os.Stat("/proc/locks"); err != nil {
		t.Skip("no /proc/locks")
	}
	dir := t.TempDir()
	held, err := lock.AcquireGCLock(context.Background(), dir, lock.Exclusive, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = lock.AcquireGCLock(ctx, dir, lock.Exclusive, true, nil)
	o := classify(fmt.Errorf("gc: taking gc.lock: %w", err), true, nil, "")
	want := fmt.Sprintf("%s is held by PID %d '", filepath.Join(dir, "gc.lock"), os.Getpid())
	if o.code != exitInterrupted || !strings.HasPrefix(o.hint, want) || !strings.Contains(o.hint, "(exclusive flock lock)") {
		t.Errorf("interrupted wait: %+v, want exit 130 and a hint starting %q", o, want)
	}

	lay := store.Layout{StateDir: dir}
	if err := os.MkdirAll(lay.DBDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	dbErr := fmt.Errorf("%w: %s: database is locked", db.ErrDBLocked, lay.DBPath())
	if err := os.WriteFile(lay.DBPath(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	o = classify(dbErr, false, &lay, "")
	if o.kind != "db-locked" || !strings.Contains(o.hint, "fuser -v") || !strings.Contains(o.hint, lay.DBPath()) {
		t.Errorf("unlocked db: %+v, want the fuser hint naming %s", o, lay.DBPath())
	}
	f, err := os.OpenFile(lay.DBPath(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: unix.F_RDLCK}); err != nil {
		t.Fatal(err)
	}
	o = classify(dbErr, false, &lay, "")
	want = fmt.Sprintf("%s is held by PID %d '", lay.DBPath(), os.Getpid())
	if !strings.HasPrefix(o.hint, want) || !strings.Contains(o.hint, "(shared posix lock)") {
		t.Errorf("locked db: hint %q, want it to start %q and name the shared POSIX lock", o.hint, want)
	}

	if o := classify(errors.New("x"), false, &lay, ""); o.hint != "" {
		t.Errorf("an error that is not a lock's has the hint %q", o.hint)
	}
}

// TestPrinterMessages: the printer's messages as text (prefixes, quiet
// keeps warnings and errors, verbose only with --verbose, names made
// safe) and with --json (all in the envelope, nothing on stderr, the
// warning's path kept as it is).
func TestPrinterMessages(t *testing.T) {
	emit := func(p *printer) {
		pr := newProgress(p)
		pr.Info("info")
		pr.Warn("warn \x1b[2J", "/nix/store/a\nb")
		pr.Verbose("detail")
		p.Errorf("bad %s", "thing")
	}
	for _, c := range []struct {
		name           string
		quiet, verbose bool
		want           string
	}{
		{"default", false, false, "info\nwarning: warn \\x1b[2J\nerror: bad thing\n"},
		{"verbose", false, true, "info\nwarning: warn \\x1b[2J\ndetail\nerror: bad thing\n"},
		{"quiet", true, true, "warning: warn \\x1b[2J\nerror: bad thing\n"},
	} {
		var out, errb bytes.Buffer
		emit(&printer{out: &out, err: &errb, quiet: c.quiet, verb: c.verbose})
		if errb.String() != c.want || out.Len() != 0 {
			t.Errorf("%s: stderr %q, stdout %q; want stderr %q", c.name, errb.String(), out.String(), c.want)
		}
	}

	var out, errb bytes.Buffer
	p := &printer{out: &out, err: &errb, json: true, quiet: true}
	emit(p)
	p.JSON(map[string]int{"paths_deleted": 3})
	if err := p.writeEnvelope("gc", "/nix/store", outcome{code: exitOK}, 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if errb.Len() != 0 {
		t.Errorf("--json printed on stderr: %q", errb.String())
	}
	var e struct {
		Command  string
		Version  int
		Store    string
		OK       bool
		Error    *jsonError
		Duration float64 `json:"duration_seconds"`
		Messages []report.Message
		Result   map[string]int
	}
	if err := json.Unmarshal(out.Bytes(), &e); err != nil {
		t.Fatal(err)
	}
	wantMsgs := []report.Message{
		{Level: report.LevelWarning, Text: "warn \x1b[2J", Path: "/nix/store/a\nb"},
		{Level: report.LevelError, Text: "bad thing"},
	}
	if e.Command != "gc" || e.Version != 1 || e.Store != "/nix/store" || !e.OK || e.Error != nil || e.Duration != 1.5 ||
		e.Result["paths_deleted"] != 3 || fmt.Sprint(e.Messages) != fmt.Sprint(wantMsgs) {
		t.Errorf("envelope %+v\n%s", e, out.String())
	}
}

// TestLockHintQuotesHostileNames: the holder's command line (anyone's
// argv, as /proc/PID/cmdline has it) and the lock's path reach the hint
// quoted, so a newline or an escape sequence in them cannot forge a line
// of stderr or act on the terminal: the hint is one line.
func TestLockHintQuotesHostileNames(t *testing.T) {
	dir := t.TempDir()
	lockPath := filepath.Join(dir, "gc\n.lock")
	if err := os.WriteFile(lockPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(lockPath, &st); err != nil {
		t.Fatal(err)
	}
	proc := filepath.Join(dir, "proc")
	if err := os.MkdirAll(filepath.Join(proc, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	locks := fmt.Sprintf("1: FLOCK  ADVISORY  WRITE 4242 %02x:%02x:%d 0 EOF\n", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	if err := os.WriteFile(filepath.Join(proc, "locks"), []byte(locks), 0o644); err != nil {
		t.Fatal(err)
	}
	cmdline := "sleep\x00x\nstorekeeper: error: forged\x1b[31m\x00y"
	if err := os.WriteFile(filepath.Join(proc, "4242", "cmdline"), []byte(cmdline), 0o644); err != nil {
		t.Fatal(err)
	}
	o := classify(&lock.HeldError{Path: lockPath, Err: lock.ErrWouldBlock}, false, nil, proc)
	if !strings.Contains(o.hint, "PID 4242") {
		t.Fatalf("hint %q does not name PID 4242", o.hint)
	}
	if strings.ContainsAny(o.hint, "\n\x1b") {
		t.Errorf("hint %q holds a raw newline or escape", o.hint)
	}
	if hint := report.Text("storekeeper: hint: " + o.hint); strings.Contains(hint, "\n") {
		t.Errorf("the hint prints as more than one line:\n%s", hint)
	}
	if !strings.Contains(o.hint, `'sleep x\nstorekeeper: error: forged\x1b[31m y'`) {
		t.Errorf("hint %q does not show the command line quoted", o.hint)
	}
	// No holder in /proc/locks: the fuser hint names the path quoted too.
	if err := os.WriteFile(filepath.Join(proc, "locks"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	o = classify(&lock.HeldError{Path: lockPath, Err: lock.ErrWouldBlock}, false, nil, proc)
	if strings.ContainsAny(o.hint, "\n\x1b") {
		t.Errorf("fuser hint %q holds a raw newline", o.hint)
	}
}
