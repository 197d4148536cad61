package tests

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vacuumResult is db vacuum's --json result.
type vacuumResult struct {
	DBPath          string   `json:"db_path"`
	TempDir         string   `json:"temp_dir"`
	Vacuumed        bool     `json:"vacuumed"`
	Integrity       []string `json:"integrity"`
	SizeBeforeBytes int64    `json:"size_before_bytes"`
	SizeAfterBytes  int64    `json:"size_after_bytes"`
	LockWaitSeconds float64  `json:"lock_wait_seconds"`
	ElapsedSeconds  float64  `json:"elapsed_seconds"`
}

// vacuumEnvelope decodes db vacuum's --json output (one envelope,
// command "db vacuum") and its result, if any.
func vacuumEnvelope(t *testing.T, r result) (jsonEnvelope, *vacuumResult) {
	t.Helper()
	e := decodeEnvelope(t, r.stdout)
	if e.Command != "db vacuum" {
		t.Fatalf("command %q, want \"db vacuum\"\n%s", e.Command, r.stdout)
	}
	if string(e.Result) == "null" || e.Result == nil {
		return e, nil
	}
	var v vacuumResult
	if err := json.Unmarshal(e.Result, &v); err != nil {
		t.Fatalf("result: %v\n%s", err, r.stdout)
	}
	return e, &v
}

// dbContent digests every row of ValidPaths (signatures included), Refs
// and DerivationOutputs of the database at dbPath, read-only: equal
// digests, equal databases, whatever their pages.
func dbContent(t testing.TB, dbPath string) string {
	t.Helper()
	sdb, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	h := sha256.New()
	for _, q := range []string{
		"select id, path, hash, registrationTime, coalesce(deriver, ''), coalesce(narSize, -1), coalesce(ultimate, -1), coalesce(sigs, ''), coalesce(ca, '') from ValidPaths order by id",
		"select referrer, reference from Refs order by referrer, reference",
		"select drv, id, path from DerivationOutputs order by drv, id",
	} {
		rows, err := sdb.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		cols, _ := rows.Columns()
		n := 0
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(h, "%q\n", vals)
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		rows.Close()
		fmt.Fprintf(h, "-- %d rows\n", n)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func validRows(t testing.TB, dbPath string) int {
	t.Helper()
	sdb, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	var n int
	if err := sdb.QueryRow("select count(*) from ValidPaths").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// nixDBPath is the database of the Nix store ns.
func nixDBPath(ns *nixStore) string {
	return filepath.Join(ns.Root, "nix/var/nix/db/db.sqlite")
}

// fattenDB gives every path of the database at dbPath rowBytes of
// signatures (made-up ones: Nix reads them as space-separated strings and
// checks none unless asked), then takes them from every other path
// again, as a large gc leaves a database: about rowBytes*paths/2 in use
// and as much free. It is how the tests get a database of tens of
// megabytes, whose VACUUM takes seconds and spills SQLite's temporary
// copy out of the page cache (4 MiB for VACUUM) into a temporary file.
func fattenDB(t testing.TB, dbPath string, rowBytes int) {
	t.Helper()
	sdb, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	for _, q := range []string{
		fmt.Sprintf("update ValidPaths set sigs = 'cache.example.org-1:' || hex(randomblob(%d))", rowBytes/2),
		"update ValidPaths set sigs = 'cache.example.org-1:c2ln' where id % 2 = 0",
	} {
		if _, err := sdb.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// stageUnderNix copies the test's binary to ROOT/nix/sk-bin and the
// store's nix.conf to ROOT/nix/sk-etc-nix/nix.conf: reachable once tmpfs
// hides /tmp (where the binary, store and nix.conf are), under /nix, the
// bind mount of ROOT/nix.
func stageUnderNix(t testing.TB, ns *nixStore) {
	t.Helper()
	data, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	writeFileMode(t, filepath.Join(ns.Root, "nix/sk-bin"), data, 0o755)
	conf, err := os.ReadFile(filepath.Join(ns.Root, "etc-nix/nix.conf"))
	if err != nil {
		t.Fatal(err)
	}
	mustMkdir(t, filepath.Join(ns.Root, "nix/sk-etc-nix"))
	writeFileMode(t, filepath.Join(ns.Root, "nix/sk-etc-nix/nix.conf"), conf, 0o644)
}

// fullTmp begins a script run by nsScript after stageUnderNix: nix.conf
// from /nix/sk-etc-nix, /tmp and /var/tmp tiny full tmpfs mounts.
const fullTmp = `
export NIX_CONF_DIR=/nix/sk-etc-nix
for d in /tmp /var/tmp; do
	mount -t tmpfs -o size=256k sk-full "$d" || exit 97
	dd if=/dev/zero of="$d/fill" bs=4k 2>/dev/null
	[ "$(stat -f -c %a "$d")" = 0 ] || { echo "$d is not full" >&2; exit 98; }
done
`

// TestDBVacuumWaitsForNix: a real `nix-store --serve` has the database
// open (it holds db/big-lock shared for as long as it runs). db vacuum
// waits for it, naming it (pid, command line), and after --timeout fails
// with kind lock-held, having changed nothing; when the holder exits
// within the timeout, vacuum goes on, and Nix accepts the store after.
func TestDBVacuumWaitsForNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2601, Salt: "db-vacuum-wait"})
	dbPath := nixDBPath(ns)
	fattenDB(t, dbPath, 64<<10)

	serve := nsScript(ns.Root, `exec nix-store --serve`)
	stdin, err := serve.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	serve.Stdout, serve.Stderr = io.Discard, io.Discard
	startGroup(t, serve)
	pid := serve.Process.Pid
	holding := func() bool {
		var st lockStatusJSON
		r := run(t, "--store", ns.Root, "--json", "lock", "status")
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("lock status: %v\n%s", err, r.stdout)
		}
		for _, h := range st.Result.BigLock.Holders {
			if h.PID == pid {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(20 * time.Second); !holding(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("nix-store --serve never took the big-lock")
		}
	}
	who := fmt.Sprintf("PID %d 'nix-store --serve' (shared flock lock)", pid)

	before, content := fileSum(t, dbPath), dbContent(t, dbPath)
	start := time.Now()
	r := run(t, "--store", ns.Root, "--json", "db", "vacuum", "--timeout", "2s")
	e, _ := vacuumEnvelope(t, r)
	if r.code != 2 || e.OK || e.Error == nil || e.Error.Kind != "lock-held" {
		t.Fatalf("vacuum while Nix holds the DB: exit %d, error %+v\n%s", r.code, e.Error, r.stderr)
	}
	if el := time.Since(start); el < 2*time.Second || el > 30*time.Second {
		t.Errorf("a --timeout 2s vacuum took %v", el)
	}
	if !strings.Contains(e.Error.Message, who) || !strings.Contains(e.Error.Message, "--timeout") || !strings.Contains(e.Error.Hint, fmt.Sprintf("PID %d 'nix-store --serve'", pid)) {
		t.Errorf("the error does not name the holder %q: %+v", who, e.Error)
	}
	waited := false
	for _, m := range e.Messages {
		waited = waited || (m.Level == "info" && strings.HasPrefix(m.Text, "waiting up to ") && strings.Contains(m.Text, who))
	}
	if !waited {
		t.Errorf("no message names the holder while waiting: %+v", e.Messages)
	}
	if fileSum(t, dbPath) != before || dbContent(t, dbPath) != content {
		t.Fatal("a vacuum that timed out changed the database")
	}

	// As text: the wait and the holder on stderr, exit 2.
	r = run(t, "--store", ns.Root, "db", "vacuum", "--timeout", "1s")
	if r.code != 2 || !strings.Contains(r.stderr, "waiting up to ") || !strings.Contains(r.stderr, "storekeeper: error: ") || !strings.Contains(r.stderr, who) || r.stdout != "" {
		t.Fatalf("text: exit %d\nstdout %q\nstderr %s", r.code, r.stdout, r.stderr)
	}

	// The holder exits within the timeout: vacuum goes on.
	cmd := exec.Command(binary, "--store", ns.Root, "--json", "db", "vacuum", "--timeout", "60s")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	stdin.Close() // nix-store --serve reads EOF and exits
	err = cmd.Wait()
	r = result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
	e, v := vacuumEnvelope(t, r)
	if err != nil || r.code != 0 || !e.OK || v == nil || !v.Vacuumed || v.LockWaitSeconds < 1 {
		t.Fatalf("vacuum after the holder exited: %v, exit %d, %+v\n%s\n%s", err, r.code, v, r.stdout, r.stderr)
	}
	if v.SizeAfterBytes >= v.SizeBeforeBytes {
		t.Errorf("size before %d, after %d", v.SizeBeforeBytes, v.SizeAfterBytes)
	}
	if dbContent(t, dbPath) != content {
		t.Fatal("vacuum changed the database's rows")
	}
	nixVerify(t, ns.Root)
}

// TestDBVacuumAfterGC: after a gc that deletes most paths of a store
// built by real Nix, vacuum makes db.sqlite smaller; the database holds
// the same rows (nix-store --dump-db and every column), and both
// nix-store --verify --check-contents and storekeeper verify accept it.
func TestDBVacuumAfterGC(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 300, Seed: 2602, Roots: 4, Gens: 2, Salt: "db-vacuum-gc"})
	state := filepath.Join(ns.Root, "nix/var/nix")
	dbPath := filepath.Join(state, "db/db.sqlite")
	for _, glob := range []string{"gcroots/direct-*", "gcroots/auto/*", "profiles/per-user/root/*"} {
		ms, _ := filepath.Glob(filepath.Join(state, glob))
		for _, m := range ms {
			if err := os.Remove(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustSymlink(t, ns.Outputs[0]["out"], filepath.Join(state, "gcroots", "keep"))
	validBefore := validRows(t, dbPath)
	if r := run(t, "--store", ns.Root, "gc"); r.code != 0 {
		t.Fatalf("gc: exit %d\n%s", r.code, r.stderr)
	}
	valid := validRows(t, dbPath)
	if valid*4 > validBefore {
		t.Fatalf("gc left %d of %d valid paths; the test wants most deleted", valid, validBefore)
	}
	dump := runNS(t, ns.Root, nil, "nix-store", "--dump-db")
	content := dbContent(t, dbPath)
	st, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}

	r := run(t, "--store", ns.Root, "--json", "db", "vacuum", "--check")
	e, v := vacuumEnvelope(t, r)
	if r.code != 0 || !e.OK || v == nil || !v.Vacuumed || len(v.Integrity) != 1 || v.Integrity[0] != "ok" {
		t.Fatalf("vacuum --check: exit %d, %+v\n%s\n%s", r.code, v, r.stdout, r.stderr)
	}
	if v.DBPath != dbPath || v.TempDir != filepath.Dir(dbPath) || v.ElapsedSeconds <= 0 || v.LockWaitSeconds != 0 {
		t.Errorf("result %+v", v)
	}
	after, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeAfterBytes >= v.SizeBeforeBytes || after.Size() >= st.Size() || after.Size() != v.SizeAfterBytes {
		t.Errorf("db.sqlite %d bytes before, %d after; result before %d, after %d", st.Size(), after.Size(), v.SizeBeforeBytes, v.SizeAfterBytes)
	}
	t.Logf("db.sqlite %d -> %d bytes after a gc of %d of %d paths", st.Size(), after.Size(), validBefore-valid, validBefore)
	if got := runNS(t, ns.Root, nil, "nix-store", "--dump-db"); got != dump {
		t.Fatal("nix-store --dump-db differs after vacuum")
	}
	if dbContent(t, dbPath) != content {
		t.Fatal("the database's rows differ after vacuum")
	}
	nixVerify(t, ns.Root)
	if r := run(t, "--store", ns.Root, "verify", "--check-contents"); r.code != 0 {
		t.Fatalf("storekeeper verify --check-contents after vacuum: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// As text: one line with the sizes.
	r = run(t, "--store", ns.Root, "db", "vacuum")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "vacuumed "+dbPath+": ") || !strings.Contains(r.stderr, "vacuuming ") {
		t.Fatalf("text: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestDBVacuumCheckCorrupt: --check on a database whose index no longer
// matches its table (what a torn write leaves) reports integrity_check's
// findings, exit 1, and does not vacuum: the file is unchanged.
func TestDBVacuumCheckCorrupt(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 2603, Salt: "db-vacuum-check"})
	dbPath := nixDBPath(ns)
	sdb, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	sdb.SetMaxOpenConns(1) // the pragmas hold for the one connection
	for _, q := range []string{
		"pragma writable_schema = on",
		"update sqlite_master set sql = 'CREATE INDEX IndexReferrer on Refs(reference)' where name = 'IndexReferrer'",
		"pragma writable_schema = off",
	} {
		if _, err := sdb.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	sdb.Close()
	before := fileSum(t, dbPath)

	r := run(t, "--store", ns.Root, "--json", "db", "vacuum", "--check")
	e, v := vacuumEnvelope(t, r)
	if r.code != 1 || e.OK || e.Error == nil || e.Error.Kind != "findings" || v == nil || v.Vacuumed {
		t.Fatalf("vacuum --check on a corrupt DB: exit %d, error %+v, result %+v\n%s", r.code, e.Error, v, r.stderr)
	}
	if len(v.Integrity) == 0 || v.Integrity[0] == "ok" || !strings.Contains(strings.Join(v.Integrity, "\n"), "IndexReferrer") {
		t.Errorf("integrity %q: want integrity_check's findings on IndexReferrer", v.Integrity)
	}
	if fileSum(t, dbPath) != before {
		t.Fatal("vacuum --check changed a corrupt database")
	}
	r = run(t, "--store", ns.Root, "db", "vacuum", "--check")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "integrity check: ") || strings.Contains(r.stdout, "vacuumed") || !strings.Contains(r.stderr, "not vacuumed") {
		t.Fatalf("text: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if fileSum(t, dbPath) != before {
		t.Fatal("vacuum --check changed a corrupt database")
	}
}

// TestDBVacuumKill: vacuum of a database of ~20 MiB in use (~40 MiB on
// disk) killed with SIGKILL at random instants while VACUUM runs leaves a
// database with the same rows that nix-store --verify --check-contents
// and storekeeper verify accept (SQLite's WAL: the old database or the
// new one); SIGTERM interrupts it (exit 130) with the rows as they were;
// a vacuum after it finishes.
func TestDBVacuumKill(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2604, Salt: "db-vacuum-kill"})
	dbPath := nixDBPath(ns)
	// How long a whole vacuum of such a database takes here: the kills
	// fall within it.
	fattenDB(t, dbPath, 1<<20)
	r := run(t, "--store", ns.Root, "--json", "db", "vacuum")
	_, v := vacuumEnvelope(t, r)
	if r.code != 0 || v == nil || !v.Vacuumed {
		t.Fatalf("vacuum: exit %d, %+v\n%s", r.code, v, r.stderr)
	}
	span := time.Duration(v.ElapsedSeconds * 0.9 * float64(time.Second))
	rng := rand.New(rand.NewPCG(2604, 1))
	killed := 0
	for i := 0; i < 4; i++ {
		fattenDB(t, dbPath, 1<<20)
		content := dbContent(t, dbPath)
		cmd := exec.Command(binary, "--store", ns.Root, "db", "vacuum")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Stdout = io.Discard
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			sc := bufio.NewScanner(stderr)
			once := false
			for sc.Scan() {
				if !once && strings.HasPrefix(sc.Text(), "vacuuming ") {
					once = true
					close(started)
				}
			}
		}()
		select {
		case <-started:
		case <-time.After(60 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			t.Fatal("vacuum never started")
		}
		delay := time.Duration(rng.Int64N(int64(span)))
		time.Sleep(delay)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-drained
		err = cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok && !ee.Exited() {
			killed++
			t.Logf("killed %v into VACUUM", delay)
		}
		nixVerify(t, ns.Root)
		if got := dbContent(t, dbPath); got != content {
			t.Fatalf("after a kill %v into VACUUM the rows differ", delay)
		}
		if st, err := os.Stat(dbPath); err == nil {
			t.Logf("db.sqlite is %d bytes after it (the old database or the new one)", st.Size())
		}
		if r := run(t, "--store", ns.Root, "verify"); r.code != 0 {
			t.Fatalf("storekeeper verify after a kill: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	}
	if killed < 2 {
		t.Fatalf("%d of 4 vacuums were killed while they ran (a whole one takes %v)", killed, span)
	}

	// SIGTERM while VACUUM runs: interrupted (exit 130), the statement
	// rolled back, the rows as they were.
	fattenDB(t, dbPath, 1<<20)
	content := dbContent(t, dbPath)
	cmd := exec.Command(binary, "--store", ns.Root, "db", "vacuum")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.HasPrefix(sc.Text(), "vacuuming ") {
			time.Sleep(span / 4)
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	if err := cmd.Wait(); cmd.ProcessState.ExitCode() != 130 || !strings.Contains(strings.Join(lines, "\n"), "storekeeper: interrupted") {
		t.Fatalf("SIGTERM during VACUUM: %v, exit %d\n%s", err, cmd.ProcessState.ExitCode(), strings.Join(lines, "\n"))
	}
	if dbContent(t, dbPath) != content {
		t.Fatal("the rows differ after an interrupted vacuum")
	}

	r = run(t, "--store", ns.Root, "--json", "db", "vacuum")
	if _, v := vacuumEnvelope(t, r); r.code != 0 || v == nil || !v.Vacuumed || v.SizeAfterBytes >= v.SizeBeforeBytes*3/4 {
		t.Fatalf("vacuum after the kills: exit %d, %+v\n%s", r.code, v, r.stderr)
	}
	if dbContent(t, dbPath) != content {
		t.Fatal("the rows differ after vacuum")
	}
	nixVerify(t, ns.Root)
}

// TestDBVacuumSpace: with /tmp and /var/tmp full (tiny tmpfs mounts in a
// private namespace, TMPDIR=/tmp), a vacuum whose temporary copy spills
// out of SQLite's page cache still succeeds: SQLite's temporary files are
// in the database's directory. With SQLITE_TMPDIR=/tmp (an
// administrator's choice, honoured) it refuses, naming /tmp, before
// changing anything; so it does when the database's own file system
// lacks room for the copy and the WAL.
func TestDBVacuumSpace(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2605, Salt: "db-vacuum-space"})
	dbPath := nixDBPath(ns)
	fattenDB(t, dbPath, 1<<20)
	content := dbContent(t, dbPath)
	stageUnderNix(t, ns)
	r := runCmd(t, nsScript(ns.Root, fullTmp+`TMPDIR=/tmp exec /nix/sk-bin --json db vacuum`), nil)
	e, v := vacuumEnvelope(t, r)
	if r.code != 0 || !e.OK || v == nil || !v.Vacuumed || v.TempDir != "/nix/var/nix/db" {
		t.Fatalf("vacuum with /tmp and /var/tmp full: exit %d, %+v\n%s\n%s", r.code, v, r.stdout, r.stderr)
	}
	if v.SizeAfterBytes < 12<<20 {
		t.Fatalf("the database holds %d bytes: too few for VACUUM's copy to leave its 4 MiB page cache", v.SizeAfterBytes)
	}
	if dbContent(t, dbPath) != content {
		t.Fatal("the rows differ after vacuum")
	}

	// SQLITE_TMPDIR=/tmp: the administrator's choice; refused.
	fattenDB(t, dbPath, 1<<20)
	content, before := dbContent(t, dbPath), fileSum(t, dbPath)
	r = runCmd(t, nsScript(ns.Root, fullTmp+`SQLITE_TMPDIR=/tmp exec /nix/sk-bin --json db vacuum`), nil)
	e, _ = vacuumEnvelope(t, r)
	if r.code != 2 || e.Error == nil || e.Error.Kind != "disk-full" || !strings.Contains(e.Error.Message, " free in /tmp ") {
		t.Fatalf("vacuum with SQLITE_TMPDIR=/tmp full: exit %d, error %+v\n%s", r.code, e.Error, r.stderr)
	}
	if fileSum(t, dbPath) != before {
		t.Fatal("a refused vacuum changed the database")
	}

	// The database's own file system too small for the copy and the WAL:
	// the database directory copied onto a 64 MiB tmpfs (~50 MiB used).
	r = runCmd(t, nsScript(ns.Root, `
export NIX_CONF_DIR=/nix/sk-etc-nix
cp -a /nix/var/nix/db /nix/sk-db-save || exit 97
mount -t tmpfs -o size=64m sk-small /nix/var/nix/db || exit 97
cp -a /nix/sk-db-save/. /nix/var/nix/db/ || exit 97
rm -rf /nix/sk-db-save
sum() { cat /nix/var/nix/db/db.sqlite /nix/var/nix/db/db.sqlite-wal 2>/dev/null | sha256sum; }
a=$(sum)
/nix/sk-bin --json db vacuum
rc=$?
[ "$a" = "$(sum)" ] || echo "CHANGED" >&2
exit $rc
`), nil)
	e, _ = vacuumEnvelope(t, r)
	if r.code != 2 || e.Error == nil || e.Error.Kind != "disk-full" || !strings.Contains(e.Error.Message, " free in /nix/var/nix/db ") || strings.Contains(r.stderr, "CHANGED") {
		t.Fatalf("vacuum on a small file system: exit %d, error %+v\n%s", r.code, e.Error, r.stderr)
	}
	if dbContent(t, dbPath) != content {
		t.Fatal("the rows differ")
	}
	nixVerify(t, ns.Root)
}

// TestDBVacuumUnprivileged: as an unprivileged user, on the root-owned
// store, vacuum is refused at once (kind db-access, exit 2) with what to
// do, and the database is unchanged.
func TestDBVacuumUnprivileged(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 5, Seed: 2606, Salt: "db-vacuum-user"})
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	dbPath := nixDBPath(ns)
	before := fileSum(t, dbPath)
	uid, gid := realUser(t, "sk-db-vacuum")
	data, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	userBin := filepath.Join(ns.Root, "storekeeper")
	writeFileMode(t, userBin, data, 0o755)
	for _, jsonOut := range []bool{true, false} {
		args := []string{"--store", ns.Root, "db", "vacuum"}
		if jsonOut {
			args = append([]string{"--json"}, args...)
		}
		cmd := exec.Command(userBin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		start := time.Now()
		r := runCmd(t, cmd, args)
		if time.Since(start) > 20*time.Second {
			t.Errorf("refusing took %v", time.Since(start))
		}
		if r.code != 2 || !strings.Contains(r.stderr, "is not writable") || !strings.Contains(r.stderr, "run as the store's owner") {
			t.Fatalf("as a user (json %v): exit %d\n%s\n%s", jsonOut, r.code, r.stdout, r.stderr)
		}
		if jsonOut {
			if e, _ := vacuumEnvelope(t, r); e.Error == nil || e.Error.Kind != "db-access" {
				t.Fatalf("as a user: error %+v", e.Error)
			}
		}
	}
	if fileSum(t, dbPath) != before {
		t.Fatal("a refused vacuum changed the database")
	}
}

// TestDBVacuumNixStartedDuring: Nix processes that start while VACUUM
// runs wait for it and then succeed: a nix-store on the store directly,
// and a nix-daemon's worker serving a client (the idle daemon holds no
// big-lock; each worker takes it shared when it opens the store). Both
// say "waiting for the big Nix store lock...", neither fails or times
// out, and each answers only after the vacuum has finished.
func TestDBVacuumNixStartedDuring(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2607, Salt: "db-vacuum-during"})
	dbPath := nixDBPath(ns)
	fattenDB(t, dbPath, 2<<20)
	out := t.TempDir()
	cmd := nsScript(ns.Root, `
p=$(ls -d /nix/store/*-* | grep -v '\.drv$' | head -1)
want=$(nix-store -q --hash "$p") || exit 90
nix-daemon > "$OUT/daemon.log" 2>&1 & d=$!
i=0; while [ ! -S /nix/var/nix/daemon-socket/socket ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
"$BIN" lock status | grep -q 'big-lock: .* is free' || { echo "the idle daemon holds the big-lock"; kill $d; exit 91; }
"$BIN" db vacuum > "$OUT/vac.out" 2>&1 & v=$!
i=0; while ! grep -q '^vacuuming ' "$OUT/vac.out" && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done
NIX_REMOTE=daemon nix-store -q --hash "$p" > "$OUT/daemon-client.out" 2>&1 & q=$!
nix-store -q --hash "$p" > "$OUT/direct.out" 2>&1; rd=$?
wait $q; rq=$?
kill -0 $v 2>/dev/null && echo "a Nix query finished before the vacuum"
wait $v; echo "vacuum rc $?"
echo "direct rc $rd"; echo "daemon-client rc $rq"
kill $d; wait $d
grep -qx "$want" "$OUT/direct.out" || echo "direct: wrong answer"
grep -qx "$want" "$OUT/daemon-client.out" || echo "daemon client: wrong answer"
`)
	cmd.Env = append(cmd.Env, "BIN="+binary, "OUT="+out)
	r := runCmd(t, cmd, nil)
	read := func(f string) string {
		b, _ := os.ReadFile(filepath.Join(out, f))
		return string(b)
	}
	logs := fmt.Sprintf("%s\n%s\nvacuum:\n%s\ndirect:\n%s\ndaemon client:\n%s\ndaemon:\n%s", r.stdout, r.stderr, read("vac.out"), read("direct.out"), read("daemon-client.out"), read("daemon.log"))
	if r.code != 0 || !strings.Contains(r.stdout, "vacuum rc 0") || !strings.Contains(r.stdout, "direct rc 0") || !strings.Contains(r.stdout, "daemon-client rc 0") ||
		strings.Contains(r.stdout, "wrong answer") || strings.Contains(r.stdout, "finished before") {
		t.Fatalf("exit %d\n%s", r.code, logs)
	}
	if !strings.Contains(read("vac.out"), "vacuumed ") {
		t.Fatalf("the vacuum did not run\n%s", logs)
	}
	const waiting = "waiting for the big Nix store lock..."
	if !strings.Contains(read("direct.out"), waiting) || !strings.Contains(read("daemon.log")+read("daemon-client.out"), waiting) {
		t.Fatalf("a Nix process started during the vacuum did not wait for the big-lock\n%s", logs)
	}
	nixVerify(t, ns.Root)
}

// TestDBVacuumSingleUserStore: root vacuuming a single-user store (the
// store and state dir owned by a user, as a root timer does) with /tmp
// and /var/tmp full: SQLite's temporary copy still goes to the database's
// directory (nameless O_TMPFILE files: nothing with a name is created in
// the user's directory), the vacuum succeeds, no file in db/ is left
// owned by root, and the user's own Nix then reads and writes the store.
func TestDBVacuumSingleUserStore(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 20, Seed: 2608, Salt: "db-vacuum-single-user"})
	dbPath := nixDBPath(ns)
	fattenDB(t, dbPath, 1<<20)
	rows := validRows(t, dbPath)
	uid, gid := realUser(t, "sk-db-vac-single")
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	stageUnderNix(t, ns)
	writeFileMode(t, filepath.Join(ns.Root, "nix/sk-add.txt"), []byte("added by the store's owner after the vacuum\n"), 0o644)
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), filepath.Join(ns.Root, "nix/store"), filepath.Join(ns.Root, "nix/var")).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v\n%s", err, out)
	}
	cmd := nsScript(ns.Root, fullTmp+`TMPDIR=/tmp /nix/sk-bin --json db vacuum; rc=$?
find /nix/var/nix/db ! -user "$U" -printf 'NOT-THE-OWNER %p\n' >&2
p=$(ls -d /nix/store/*-* | grep -v '\.drv$' | head -1)
HOME=/nonexistent setpriv --reuid="$U" --regid="$G" --clear-groups nix-store -q --hash "$p" >&2 || echo "USER-NIX-FAILED query" >&2
HOME=/nonexistent setpriv --reuid="$U" --regid="$G" --clear-groups nix-store --add /nix/sk-add.txt >&2 || echo "USER-NIX-FAILED add" >&2
exit $rc
`)
	cmd.Env = append(cmd.Env, fmt.Sprintf("U=%d", uid), fmt.Sprintf("G=%d", gid))
	r := runCmd(t, cmd, nil)
	e, v := vacuumEnvelope(t, r)
	if r.code != 0 || !e.OK || v == nil || !v.Vacuumed || v.TempDir != "/nix/var/nix/db" {
		t.Fatalf("root's vacuum of a single-user store with /tmp and /var/tmp full: exit %d, %+v\n%s\n%s", r.code, v, r.stdout, r.stderr)
	}
	if v.SizeAfterBytes >= v.SizeBeforeBytes {
		t.Errorf("size before %d, after %d", v.SizeBeforeBytes, v.SizeAfterBytes)
	}
	if strings.Contains(r.stderr, "NOT-THE-OWNER") || strings.Contains(r.stderr, "USER-NIX-FAILED") || !strings.Contains(r.stderr, "/nix/store/") {
		t.Fatalf("after root's vacuum the store is not the user's as before:\n%s", r.stderr)
	}
	if got := validRows(t, dbPath); got != rows+1 {
		t.Fatalf("%d valid paths after the vacuum and the user's nix-store --add; want %d+1", got, rows)
	}
}
