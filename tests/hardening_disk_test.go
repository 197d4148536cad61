package tests

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// diskElapsedRe matches a duration at the end of a summary line.
var diskElapsedRe = regexp.MustCompile(`(?m) in [0-9][0-9.]*[a-zµ]+$`)

// diskReadOnlyCommands are the commands that must work on a full disk.
var diskReadOnlyCommands = []string{"info", "roots", "roots size", "verify", "gc --dry-run", "gc --print-dead"}

// diskAddInWAL adds a path to the store under root with real Nix while
// this process holds a read transaction open, so that Nix cannot
// checkpoint when it closes the database: the new path is then committed
// only in db.sqlite-wal, as a nix-daemon that is still running, or one
// that was killed, leaves it. It checks that the main file alone does not
// have the path (a reader that ignored the WAL would miss it) and returns
// the path.
func diskAddInWAL(t *testing.T, root string) string {
	t.Helper()
	ctx := context.Background()
	dbPath := filepath.Join(root, "nix/var/nix/db/db.sqlite")
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("select count(*) from ValidPaths").Scan(&n); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "added-while-read")
	if err := os.WriteFile(f, []byte("committed only in the write-ahead log\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	added := strings.TrimSpace(runNS(t, root, nil, "nix-store", "--add", f))
	if !storePathRe.MatchString(added) {
		t.Fatalf("nix-store --add printed %q", added)
	}
	tx.Rollback()
	db.Close()

	st, err := os.Stat(dbPath + "-wal")
	if err != nil || st.Size() <= 32 {
		t.Fatalf("no committed frames in the WAL: %v %v", st, err)
	}
	for _, c := range []struct {
		uri  string
		want int
	}{{"?mode=ro&immutable=1", 0}, {"?mode=ro", 1}} {
		db, err := sql.Open("sqlite", "file:"+dbPath+c.uri)
		if err != nil {
			t.Fatal(err)
		}
		var got int
		err = db.QueryRow("select count(*) from ValidPaths where path = ?", added).Scan(&got)
		db.Close()
		if err != nil || got != c.want {
			t.Fatalf("%s: %s registered %d times (%v), want %d", c.uri, added, got, err, c.want)
		}
	}
	return added
}

// TestHardeningFullDiskReadOnlyCommands: on a file system with no space
// left and no db.sqlite-shm, the read-only commands print exactly what
// they printed before the disk filled, whether the database's latest
// transactions are in the main file or only in its write-ahead log; and
// gc still collects there.
func TestHardeningFullDiskReadOnlyCommands(t *testing.T) {
	base := buildNixStore(t, nixSpec{Paths: 40, Seed: 10, Roots: 3, Gens: 2, Leftover: 2})
	for _, c := range []struct {
		name string
		wal  bool
		// inodes: no inode is left either, so SQLite cannot even create
		// an empty db.sqlite-shm; with a committed WAL the database cannot
		// be read then, and the commands must say the disk is full.
		inodes, wantFull bool
	}{
		{"no WAL", false, false, false},
		{"committed WAL", true, false, false},
		{"no WAL, no inode left", false, true, false},
		{"committed WAL, no inode left", true, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := copyStore(t, base.Root)
			added := ""
			if c.wal {
				added = diskAddInWAL(t, root)
			}
			out := t.TempDir()
			script := `
mount -t tmpfs -o size=48m,nr_inodes=4096 tmpfs "$MNT" || exit 97
cp -a /nix/. "$MNT/" || exit 96
mount --bind "$MNT" /nix || exit 95
DB=/nix/var/nix/db
i=0
for c in ` + "\"" + strings.Join(diskReadOnlyCommands, "\" \"") + "\"" + `; do
	"$BIN" $c > "$OUT/before-$i.out" 2> "$OUT/before-$i.err"; echo "BEFORE $i $?"
	i=$((i+1))
done
rm -f "$DB/db.sqlite-shm"
dd if=/dev/zero of=/nix/fill-1 bs=64k 2>/dev/null
dd if=/dev/zero of=/nix/fill-2 bs=4k 2>/dev/null
dd if=/dev/zero of=/nix/fill-3 bs=512 2>/dev/null
if [ "$INODES" = 1 ]; then
	mkdir /nix/inodes && i=0 && while true 2>/dev/null > /nix/inodes/$i; do i=$((i+1)); done
	df -i /nix | tail -1 | awk '{print "IFREE " $4}'
fi
df -B1 /nix | tail -1 | awk '{print "AVAIL " $4}'
i=0
for c in ` + "\"" + strings.Join(diskReadOnlyCommands, "\" \"") + "\"" + `; do
	"$BIN" $c > "$OUT/after-$i.out" 2> "$OUT/after-$i.err"; echo "AFTER $i $?"
	i=$((i+1))
done
"$BIN" gc > "$OUT/gc.out" 2>&1; echo "GC $?"
"$BIN" gc --print-dead > "$OUT/dead.out" 2>&1; echo "DEAD $?"
`
			cmd := nsScript(root, script)
			cmd.Env = append(cmd.Env, "MNT="+t.TempDir(), "BIN="+binary, "OUT="+out, fmt.Sprintf("INODES=%d", map[bool]int{false: 0, true: 1}[c.inodes]))
			res, err := cmd.CombinedOutput()
			s := string(res)
			if err != nil {
				t.Fatalf("%v\n%s", err, s)
			}
			if !strings.Contains(s, "AVAIL 0\n") || c.inodes && !strings.Contains(s, "IFREE 0\n") {
				t.Fatalf("the disk was not full:\n%s", s)
			}
			read := func(name string) string {
				b, _ := os.ReadFile(filepath.Join(out, name))
				return string(b)
			}
			for i, command := range diskReadOnlyCommands {
				if !strings.Contains(s, fmt.Sprintf("BEFORE %d 0\n", i)) {
					t.Fatalf("%s failed before the disk filled:\n%s\n%s", command, s, read(fmt.Sprintf("before-%d.err", i)))
				}
				// Results on stdout, summaries on stderr (verify's: "checked
				// N of N valid paths in 20ms").
				output := func(when string) string {
					return read(fmt.Sprintf("%s-%d.out", when, i)) + "--- stderr:\n" +
						diskElapsedRe.ReplaceAllString(read(fmt.Sprintf("%s-%d.err", when, i)), " in T")
				}
				before, after := output("before"), output("after")
				if c.wantFull {
					msg := read(fmt.Sprintf("after-%d.err", i))
					if !strings.Contains(s, fmt.Sprintf("AFTER %d 2\n", i)) || read(fmt.Sprintf("after-%d.out", i)) != "" {
						t.Errorf("storekeeper %s on the full disk: want exit status 2 and no output\n%s\n%s", command, s, msg)
					}
					for _, want := range []string{"the disk holding /nix/var/nix/db is full", "free space or run storekeeper gc"} {
						if !strings.Contains(msg, want) {
							t.Errorf("storekeeper %s on the full disk does not say %q:\n%s", command, want, msg)
						}
					}
					if i == 0 {
						t.Logf("storekeeper %s on the full disk:\n%s", command, msg)
					}
					continue
				}
				if !strings.Contains(s, fmt.Sprintf("AFTER %d 0\n", i)) {
					t.Errorf("storekeeper %s on the full disk did not exit 0; stderr:\n%s", command, read(fmt.Sprintf("after-%d.err", i)))
					continue
				}
				if len(before) < 20 || after != before {
					t.Errorf("storekeeper %s on the full disk printed\n%s\nbefore the disk filled it printed\n%s", command, after, before)
				}
			}
			if added != "" {
				if dead := read(fmt.Sprintf("before-%d.out", len(diskReadOnlyCommands)-1)); !strings.Contains(dead, added+"\n") {
					t.Errorf("gc --print-dead does not list %s, which is registered only in the WAL:\n%s", added, dead)
				}
			}
			if c.inodes {
				return // gc needs inodes (the gc socket's directory, the trash)
			}
			if !strings.Contains(s, "GC 0\n") || !strings.Contains(read("gc.out"), "store paths deleted") {
				t.Fatalf("gc on the full disk failed:\n%s\n%s", s, read("gc.out"))
			}
			if !strings.Contains(s, "DEAD 0\n") || read("dead.out") != "" {
				t.Fatalf("garbage left after gc:\n%s\n%s", s, read("dead.out"))
			}
		})
	}
}

// TestHardeningReadOnlyNix: with /nix (not only /nix/store) on a read-only
// mount, gc run as root says which directory is read-only and how to
// remount it, never "run as root", and changes nothing; the read-only
// commands still work, reading a committed WAL through db.sqlite-shm,
// and where that index is missing (SQLite cannot create it there) they
// say so in the same terms. With only the state directory writable, gc
// makes the store writable in a private mount namespace of its own, as it
// does for a read-only /nix/store mount, and collects.
func TestHardeningReadOnlyNix(t *testing.T) {
	base := buildNixStore(t, nixSpec{Paths: 20, Seed: 11, Roots: 2, Gens: 1})
	const roNix = `mount -o remount,ro,bind /nix || exit 94`
	const roDB = "/nix/var/nix/db is on a read-only file system"
	for _, c := range []struct {
		name, mounts string
		wal          string // "": none; "shm": committed WAL and its index; "no shm": without the index
		gcWorks      bool
		gcSays       []string // what gc's refusal says
	}{
		{"nix read-only", roNix, "", false, []string{roDB}},
		{"nix read-only, committed WAL", roNix, "shm", false, []string{roDB}},
		{"nix read-only, committed WAL, no index", roNix, "no shm", false, []string{roDB}},
		{"nix read-only, store writable", roNix + ` && mount --bind "$NSROOT/nix/store" /nix/store || exit 94`, "", false, []string{roDB}},
		{"nix read-only, state writable", roNix + ` && mount --bind "$NSROOT/nix/var" /nix/var || exit 94`, "", true, nil},
		// /nix a read-only file system, not only a read-only mount: the
		// store cannot be made writable for gc alone.
		{"nix read-only file system, state writable", `mount -t tmpfs tmpfs "$MNT" && cp -a /nix/. "$MNT/" && mount --bind "$MNT" /nix && mount -o remount,ro "$MNT" && mount --bind "$NSROOT/nix/var" /nix/var || exit 94`,
			"", false, []string{"/nix/store is on a read-only file system", "the file system itself is read-only"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := copyStore(t, base.Root)
			added := ""
			if c.wal != "" {
				added = diskAddInWAL(t, root)
			}
			entriesBefore := strings.Join(entries(t, root), "\n")
			deadBefore := runInNS(t, root, "gc", "--print-dead").stdout
			if deadBefore == "" || !strings.Contains(deadBefore, added) {
				t.Fatalf("dead before: %q", deadBefore)
			}
			if c.wal == "no shm" {
				if err := os.Remove(filepath.Join(root, "nix/var/nix/db/db.sqlite-shm")); err != nil {
					t.Fatal(err)
				}
			}
			script := c.mounts + `
touch /nix/probe 2>/dev/null && { echo "/nix is not read-only"; exit 1; }
"$BIN" info > /dev/null 2> "$OUT/info.err"; echo "INFO $?"
"$BIN" gc --print-dead > "$OUT/dead.out" 2> "$OUT/dead.err"; echo "PRINTDEAD $?"
"$BIN" gc > "$OUT/gc.out" 2> "$OUT/gc.err"; echo "GC $?"
touch /nix/store/probe 2>/dev/null && { rm /nix/store/probe; echo "STORE writable"; } || echo "STORE read-only"
`
			out := t.TempDir()
			cmd := nsScript(root, script)
			cmd.Env = append(cmd.Env, "BIN="+binary, "OUT="+out, "MNT="+t.TempDir())
			res, err := cmd.CombinedOutput()
			s := string(res)
			if err != nil {
				t.Fatalf("%v\n%s", err, s)
			}
			read := func(name string) string {
				b, _ := os.ReadFile(filepath.Join(out, name))
				return string(b)
			}
			// checkMessage: exit status 2 and a message naming what is
			// read-only and how to remount it, not "run as root".
			checkMessage := func(what, status, msg string, wants ...string) {
				t.Logf("%s on a read-only /nix:\n%s", what, msg)
				if !strings.Contains(s, status+" 2\n") {
					t.Errorf("%s on a read-only /nix: want exit status 2\n%s\n%s", what, s, msg)
				}
				for _, want := range append(wants, "(mounted at /nix)", "mount -o remount,rw /nix)") {
					if !strings.Contains(msg, want) {
						t.Errorf("%s: the message does not say %q:\n%s", what, want, msg)
					}
				}
				for _, bad := range []string{"as root", "store's owner"} {
					if strings.Contains(msg, bad) {
						t.Errorf("%s: the message says %q to root:\n%s", what, bad, msg)
					}
				}
			}
			if c.wal == "no shm" {
				checkMessage("info", "INFO", read("info.err"), roDB, "db.sqlite-wal")
				checkMessage("gc --print-dead", "PRINTDEAD", read("dead.err"), roDB, "db.sqlite-wal")
			} else if !strings.Contains(s, "INFO 0\n") || !strings.Contains(s, "PRINTDEAD 0\n") || read("dead.out") != deadBefore {
				t.Errorf("the read-only commands failed on a read-only /nix:\n%s\n%s%s", s, read("info.err"), read("dead.err"))
			}
			if c.gcWorks {
				if !strings.Contains(s, "GC 0\n") || !strings.Contains(read("gc.out"), "store paths deleted") {
					t.Fatalf("gc failed:\n%s\n%s%s", s, read("gc.out"), read("gc.err"))
				}
				if !strings.Contains(s, "STORE read-only") {
					t.Errorf("the caller's /nix/store was made writable:\n%s", s)
				}
				if d := runInNS(t, root, "gc", "--print-dead").stdout; d != "" {
					t.Errorf("garbage left after gc:\n%s", d)
				}
				return
			}
			checkMessage("gc", "GC", read("gc.err"), c.gcSays...)
			if got := strings.Join(entries(t, root), "\n"); got != entriesBefore {
				t.Errorf("a refused gc changed the store:\n%s\n---\n%s", entriesBefore, got)
			}
		})
	}
}
