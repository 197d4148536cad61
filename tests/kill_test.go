package tests

import (
	"context"
	"database/sql"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// killAfter starts cmd in a process group of its own and, unless it ends
// first, kills the whole group with SIGKILL after delay (the kill -9 of
// the crash tests: the command and any process it started, such as a
// re-exec in a private mount namespace, die at once). It waits for cmd
// and reports whether it was killed before it finished. cmd's output must
// go to writers or files, not pipes the caller reads before Wait.
func killAfter(t testing.TB, cmd *exec.Cmd, delay time.Duration) (killed bool) {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %v: %v", cmd.Args, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return false
	case <-time.After(delay):
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	err := <-done
	ee, ok := err.(*exec.ExitError)
	return ok && !ee.Exited() // ended by the signal, not by exiting
}

// dbIntegrity runs SQLite's integrity and foreign-key checks on the
// database at path (in this process, so no sqlite3 program is needed)
// and returns what they found, "" when the database is intact.
func dbIntegrity(t testing.TB, path string) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var problems []string
	for _, q := range []string{"pragma integrity_check", "pragma foreign_key_check"} {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatalf("%s on %s: %v", q, path, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			line := fmt.Sprint(vals...)
			if q == "pragma integrity_check" && line == "ok" {
				continue
			}
			problems = append(problems, q+": "+line)
		}
		rows.Close()
	}
	return strings.Join(problems, "; ")
}

// TestDBIntegrity: dbIntegrity passes an intact database and reports a
// Refs row naming no valid path.
func TestDBIntegrity(t *testing.T) {
	root := t.TempDir()
	b := buildDemo(t, root)
	if msg := dbIntegrity(t, b.Layout.DBPath()); msg != "" {
		t.Fatalf("a fresh store: %s", msg)
	}
	db, err := sql.Open("sqlite", "file:"+b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.ExecContext(context.Background(), "pragma foreign_keys = off")
	if _, err := c.ExecContext(context.Background(), "insert into Refs (referrer, reference) values (1, 999999)"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	db.Close()
	if msg := dbIntegrity(t, b.Layout.DBPath()); !strings.Contains(msg, "foreign_key_check") {
		t.Fatalf("a dangling reference went unreported: %q", msg)
	}
}
