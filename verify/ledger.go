package verify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// The ledger says when each store path was last content-verified. It is
// two files in the state directory:
//
//   - ledger: a snapshot, one line per path "UNIXTIME STATUS BASENAME",
//     replaced only by write-to-temp, fsync, rename, fsync of the dir;
//   - ledger.log: lines in the same format appended while a run goes on.
//     Each line is written (write(2), not just buffered) before the path
//     is reported verified, so kill -9 loses no reported entry; the log is
//     fsynced at the end of the run, folded into a new snapshot and only
//     then removed. A torn last line is ignored.
//
// Loading reads the snapshot then the log; a later line for a path wins.

const (
	ledgerName    = "ledger"
	ledgerLogName = "ledger.log"
)

// LedgerEntry is what the ledger knows of one path.
type LedgerEntry struct {
	Time   int64  // Unix seconds of the last content check
	Status string // "ok" or "damaged"
}

type ledger struct {
	dir     string
	entries map[string]LedgerEntry
	log     *os.File
	w       *bufio.Writer
}

// loadLedger reads the ledger in dir (missing files are empty).
func loadLedger(dir string) (*ledger, error) {
	l := &ledger{dir: dir, entries: map[string]LedgerEntry{}}
	for _, n := range []string{ledgerName, ledgerLogName} {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		l.parse(b)
	}
	return l, nil
}

func (l *ledger) parse(b []byte) {
	parseLedger(b, func(t int64, status, name []byte) {
		l.entries[string(name)] = LedgerEntry{Time: t, Status: string(status)}
	})
}

// parseLedger calls fn for each well-formed line of b in order; the
// slices alias b. Malformed lines and a torn last line are skipped.
func parseLedger(b []byte, fn func(t int64, status, name []byte)) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return // a torn last line
		}
		line := b[:i]
		b = b[i+1:]
		f := bytes.Fields(line)
		if len(f) != 3 {
			continue
		}
		t, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			continue
		}
		fn(t, f[1], f[2])
	}
}

// openLog opens ledger.log for appending.
func (l *ledger) openLog() error {
	f, err := os.OpenFile(filepath.Join(l.dir, ledgerLogName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	// A torn last line from a crash: start on a fresh line.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		var last [1]byte
		if r, err := os.Open(f.Name()); err == nil {
			if _, err := r.ReadAt(last[:], st.Size()-1); err == nil && last[0] != '\n' {
				f.Write([]byte("\n"))
			}
			r.Close()
		}
	}
	l.log = f
	l.w = bufio.NewWriterSize(f, 64<<10)
	return nil
}

// record notes that name was checked at t. The line is buffered; flush
// writes it out.
func (l *ledger) record(name string, t int64, status string) error {
	l.entries[name] = LedgerEntry{Time: t, Status: status}
	if l.w == nil {
		return nil
	}
	_, err := fmt.Fprintf(l.w, "%d %s %s\n", t, status, name)
	return err
}

// flush writes buffered lines to the log file (safe against kill -9).
func (l *ledger) flush() error {
	if l.w == nil {
		return nil
	}
	return l.w.Flush()
}

// commit fsyncs the log, writes a new snapshot of the entries whose name
// keep accepts (all if keep is nil), and removes the log. A crash at any
// point leaves either the old snapshot and the log, or the new snapshot
// (and perhaps the log, whose lines it already holds).
func (l *ledger) commit(keep func(name string) bool) error {
	if l.log != nil {
		if err := l.w.Flush(); err != nil {
			return err
		}
		if err := l.log.Sync(); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(l.entries))
	for n := range l.entries {
		if keep == nil || keep(n) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	err := replaceFile(l.dir, ledgerName, func(f io.Writer) error {
		w := bufio.NewWriterSize(f, 1<<20)
		for _, n := range names {
			e := l.entries[n]
			fmt.Fprintf(w, "%d %s %s\n", e.Time, e.Status, n)
		}
		return w.Flush()
	})
	if err != nil {
		return err
	}
	if l.log != nil {
		l.log.Close()
		l.log, l.w = nil, nil
		os.Remove(filepath.Join(l.dir, ledgerLogName))
		syncDir(l.dir)
	}
	return nil
}

// close flushes and syncs the log without folding it (for error paths).
func (l *ledger) close() {
	if l.log != nil {
		l.w.Flush()
		l.log.Sync()
		l.log.Close()
		l.log, l.w = nil, nil
	}
}

// replaceFile replaces the file name in dir whole: fill writes the new
// contents to name.tmp beside it (never through a symlink), which is
// synced and renamed over name, then the directory is synced. A crash at
// any instant leaves the old file or the new one, never a part of
// either (at worst a name.tmp, which the next write truncates). On error
// name is unchanged and name.tmp removed.
func replaceFile(dir, name string, fill func(io.Writer) error) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		testReplaceCrash(name, "synced")
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	testReplaceCrash(name, "renamed")
	syncDir(dir)
	return nil
}

// testReplaceCrash is a test's hook to die at a step of replaceFile (the
// temporary file synced, before the rename; after the rename); a no-op
// outside tests.
var testReplaceCrash = func(name, step string) {}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
