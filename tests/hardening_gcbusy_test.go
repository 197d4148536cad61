package tests

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// TestHardeningGCTermWhileDBBusy: a collection waiting for SQLite's write
// lock (a nix-daemon in a long transaction) ends promptly on SIGTERM with
// exit status 130, having invalidated nothing, instead of waiting for the
// busy timeout or the other writer and then invalidating a batch.
func TestHardeningGCTermWhileDBBusy(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 40, Seed: 33, Roots: 2, Salt: t.Name()})
	before := fmt.Sprint(validPaths(t, ns.Root))

	// Another writer holds the write lock.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(ns.Root, "nix/var/nix/db/db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "begin immediate"); err != nil {
		t.Fatal(err)
	}
	held := true
	release := func() {
		if held {
			conn.ExecContext(context.Background(), "rollback")
			conn.Close()
			held = false
		}
	}
	defer release()

	cmd := nsScript(ns.Root, `exec "$@"`, binary, "gc")
	var errb bytes.Buffer // read only once the process has ended
	cmd.Stderr = &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(3 * time.Second) // past planning: waiting for the write lock
	select {
	case err := <-done:
		t.Fatalf("gc ended while the database was locked: %v\n%s", err, errb.String())
	default:
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	var werr error
	select {
	case werr = <-done:
	case <-time.After(10 * time.Second):
		release()
		<-done
		t.Fatalf("gc did not end within 10 s of SIGTERM while waiting for the database\n%s", errb.String())
	}
	release()
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("gc: %v, want exit status 130\n%s", werr, errb.String())
	}
	if !strings.Contains(errb.String(), "nothing was deleted") {
		t.Errorf("stderr does not say nothing was deleted:\n%s", errb.String())
	}
	if after := fmt.Sprint(validPaths(t, ns.Root)); after != before {
		t.Fatalf("an interrupted gc that never got the write lock changed the valid paths")
	}
	if ents, _ := os.ReadDir(filepath.Join(ns.Root, "nix/store/trash")); len(ents) > 0 {
		t.Errorf("trash left: %v", ents)
	}
	nixVerify(t, ns.Root)
}
