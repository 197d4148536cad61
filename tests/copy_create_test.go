package tests

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyStoreShape describes what a new store holds: every directory and
// the database's files (mode and type; the schema file's text; the
// reserved file's size; the gcroots/profiles link's target relative to
// the root's name in the namespace, nsName), the database's sqlite_master and journal mode. Store paths,
// lock files, temp roots and SQLite's -wal/-shm files are left out.
func copyStoreShape(t *testing.T, root, nsName string) string {
	t.Helper()
	var lines []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case strings.HasPrefix(rel, "nix/store/") && rel != "nix/store/.links":
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		case strings.HasPrefix(rel, "nix/var/nix/temproots/"), strings.HasSuffix(rel, ".lock"),
			strings.HasSuffix(rel, "-wal"), strings.HasSuffix(rel, "-shm"):
			return nil
		}
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + strings.TrimPrefix(target, nsName)
		case rel == "nix/var/nix/db/schema":
			data, _ := os.ReadFile(p)
			line += fmt.Sprintf(" %q", data)
		case rel == "nix/var/nix/db/reserved":
			line += fmt.Sprintf(" %d bytes", fi.Size())
		}
		lines = append(lines, line)
		return nil
	})
	db, err := sql.Open("sqlite", "file:"+filepath.Join(root, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("select type, name, tbl_name, coalesce(sql, '') from sqlite_master order by name")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a, b, c, d string
		if err := rows.Scan(&a, &b, &c, &d); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, "sqlite_master: "+a+" "+b+" "+c+" "+d)
	}
	rows.Close()
	var mode string
	if err := db.QueryRow("pragma journal_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	return strings.Join(append(lines, "journal_mode "+mode), "\n")
}

// TestCopyCreatesStoreLikeNix: `copy --to DIR` into an empty directory
// creates the store there as real `nix-store --store DIR --init` does
// (the same directories and modes, the same database schema byte for
// byte in sqlite_master, journal mode, db/schema, db/reserved, the
// gcroots/profiles link), which real Nix then uses (nix-store --verify
// passes on it); a --to root that does not exist is refused (exit 2),
// and nothing is created.
func TestCopyCreatesStoreLikeNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 3, Seed: 4242, Salt: "copy-create"})
	ours := filepath.Join(ns.Root, "nix/ours")
	nix := filepath.Join(ns.Root, "nix/theirs")
	mustMkdir(t, ours)
	mustMkdir(t, nix)
	if r := runInNS(t, ns.Root, "copy", "--to", "/nix/ours", ns.Outputs[2]["out"]); r.code != 0 {
		t.Fatalf("copy: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	runNS(t, ns.Root, nil, "nix-store", "--store", "/nix/theirs", "--init")
	a, b := copyStoreShape(t, ours, "/nix/ours"), copyStoreShape(t, nix, "/nix/theirs")
	if a != b {
		t.Fatalf("the store copy created differs from nix-store --init's:\n--- ours\n%s\n--- nix\n%s", a, b)
	}
	copyNixVerify(t, ns.Root, "/nix/ours")

	r := runInNS(t, ns.Root, "copy", "--to", "/nix/no/such/root", ns.Outputs[2]["out"])
	if r.code != 2 || !strings.Contains(r.stderr, "/nix/no/such/root") || !strings.Contains(r.stderr, "create or mount it first") {
		t.Fatalf("a --to root that does not exist: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(ns.Root, "nix/no")); !os.IsNotExist(err) {
		t.Fatalf("something was created: %v", err)
	}
}
