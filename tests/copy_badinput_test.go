package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCopyBadInput: each bad input exits 2 with a message naming what is
// wrong (and --json the error kind), and changes nothing: no target store
// is created, nothing is registered or written there, the source is as
// it was.
func TestCopyBadInput(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 6, Seed: 4444, Salt: "copy-bad"})
	good := ns.Outputs[5]["out"]
	notValid := "/nix/store/" + strings.Repeat("0", 32) + "-not-valid"
	srcDB := runNS(t, ns.Root, nil, "nix-store", "--dump-db")

	// An existing store owned by another user.
	runNS(t, ns.Root, nil, "nix-store", "--store", "/nix/foreign", "--init")
	if err := os.Chown(filepath.Join(ns.Root, "nix/foreign/nix/store"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	// A directory whose database is of an unknown schema.
	mustMkdir(t, filepath.Join(ns.Root, "nix/future/nix/var/nix/db"))
	mustMkdir(t, filepath.Join(ns.Root, "nix/future/nix/store"))
	writeFileMode(t, filepath.Join(ns.Root, "nix/future/nix/var/nix/db/schema"), []byte("99"), 0o644)
	writeFileMode(t, filepath.Join(ns.Root, "nix/a-file"), []byte("x"), 0o644)
	// An empty directory of another user, to create a store in.
	mustMkdir(t, filepath.Join(ns.Root, "nix/users-dir"))
	if err := os.Chown(filepath.Join(ns.Root, "nix/users-dir"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	// A root whose nix/store is a symlink to another directory of root's,
	// and a root-owned directory inside another user's (#24 review).
	mustMkdir(t, filepath.Join(ns.Root, "nix/linktarget"))
	if err := os.Chmod(filepath.Join(ns.Root, "nix/linktarget"), 0o700); err != nil {
		t.Fatal(err)
	}
	mustMkdir(t, filepath.Join(ns.Root, "nix/symlinked/nix"))
	mustSymlink(t, "/nix/linktarget", filepath.Join(ns.Root, "nix/symlinked/nix/store"))
	mustMkdir(t, filepath.Join(ns.Root, "nix/users-parent/mnt"))
	if err := os.Chown(filepath.Join(ns.Root, "nix/users-parent"), 65534, 65534); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, kind string
		args       []string
		want       []string
		target     string // its directory, under ns.Root, must stay as it was
	}{
		{"path not valid in the source", "bad-path", []string{"--to", "/nix/t1", notValid}, []string{notValid, "not valid in the source store"}, "nix/t1"},
		{"path outside the store", "bad-path", []string{"--to", "/nix/t2", "/etc/passwd"}, []string{"/etc/passwd"}, "nix/t2"},
		{"no --to", "usage", []string{good}, []string{"--to STORE"}, ""},
		{"no path", "usage", []string{"--to", "/nix/t3"}, []string{"store paths to copy"}, "nix/t3"},
		{"bad method", "usage", []string{"--method", "telepathy", "--to", "/nix/t4", good}, []string{"telepathy", "auto, reflink, hardlink or copy"}, "nix/t4"},
		{"a remote --to", "usage", []string{"--to", "ssh://host", good}, []string{"ssh://host", "remote store"}, ""},
		{"store dir mismatch", "usage", []string{"--to", "local?root=/nix/t5&store=/gnu/store", good}, []string{"/gnu/store", "different store directories"}, "nix/t5"},
		{"--to root missing", "no-store", []string{"--to", "/nix/missing", good}, []string{"/nix/missing", "create or mount it first"}, ""},
		{"--to a file", "no-store", []string{"--to", "/nix/a-file", good}, []string{"/nix/a-file", "not a directory"}, ""},
		{"--to a database of another schema", "db-schema", []string{"--to", "/nix/future", good}, []string{"version 99"}, "nix/future"},
		{"--to a store of another user", "permission", []string{"--to", "/nix/foreign", good}, []string{"belongs to uid 65534", "as its owner"}, "nix/foreign"},
		{"--to a new store in another user's directory", "permission", []string{"--to", "/nix/users-dir", good}, []string{"/nix/users-dir", "belongs to uid 65534"}, "nix/users-dir"},
		{"--to a root whose nix/store is a symlink", "permission", []string{"--to", "/nix/symlinked", good}, []string{"/nix/symlinked/nix/store is a symlink"}, "nix/linktarget"},
		{"--to a root inside another user's directory", "permission", []string{"--to", "/nix/users-parent/mnt", good}, []string{"/nix/users-parent,", "belongs to uid 65534"}, "nix/users-parent/mnt"},
		{"--method reflink on ext4", "method-unsupported", []string{"--method", "reflink", "--to", "/nix/t1", good}, []string{"--method reflink", "cannot clone", "--method auto"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before string
			if c.target != "" {
				mustMkdir(t, filepath.Join(ns.Root, c.target))
				before = snapshotTree(t, filepath.Join(ns.Root, c.target))
			}
			r := runInNS(t, ns.Root, append([]string{"copy"}, c.args...)...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\n%s%s", r.code, r.stdout, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("the message lacks %q:\n%s", w, r.stderr)
				}
			}
			rj := runInNS(t, ns.Root, append([]string{"--json", "copy"}, c.args...)...)
			if env := decodeEnvelope(t, rj.stdout); env.OK || env.Error == nil || env.Error.Kind != c.kind {
				t.Errorf("--json: %+v, want kind %s", env.Error, c.kind)
			}
			if c.target != "" {
				if after := snapshotTree(t, filepath.Join(ns.Root, c.target)); after != before {
					t.Errorf("the target changed:\n%s\n---\n%s", before, after)
				}
			}
		})
	}
	if got := runNS(t, ns.Root, nil, "nix-store", "--dump-db"); got != srcDB {
		t.Fatal("the source's database changed")
	}
}

// TestCopyDamagedSource: a source path whose contents no longer match
// its database hash makes copy exit 1: it is named with error kind
// "mismatch", the paths that refer to it with "reference-failed", none
// of them is valid in the target (real Nix verifies it), and every other
// path of the closure is copied.
func TestCopyDamagedSource(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 4646, Files: 3, Salt: "copy-damaged"})
	top := ns.Outputs[29]["out"]
	closure := copyNixClosure(t, ns.Root, "", []string{top})
	// A path of the closure with a file, referred to by another.
	var victim string
	for _, p := range closure {
		if p == top || copyFirstFile(ns.Root, p) == "" {
			continue
		}
		if refs := strings.Fields(runNS(t, ns.Root, nil, "nix-store", "-q", "--referrers", p)); len(refs) > 0 {
			victim = p
			break
		}
	}
	if victim == "" {
		t.Fatal("no referenced path with a file in the closure")
	}
	f := filepath.Join(ns.Root, victim, copyFirstFile(ns.Root, victim))
	os.Chmod(f, 0o644)
	if err := os.WriteFile(f, []byte("damaged\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := map[string]bool{}
	for _, p := range strings.Fields(runNS(t, ns.Root, nil, "nix-store", "-q", "--referrers-closure", victim)) {
		bad[p] = true
	}
	mustMkdir(t, filepath.Join(ns.Root, "nix/dst"))
	r := runInNS(t, ns.Root, "--json", "copy", "--to", "/nix/dst", top)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
	}
	env, res := parseCopyJSON(t, r.stdout)
	if env.OK || env.Error == nil || env.Error.Kind != "findings" {
		t.Errorf("envelope error %+v", env.Error)
	}
	copied := 0
	for _, p := range res.Paths {
		switch {
		case p.Path == victim:
			if p.Copied || p.Error == nil || p.Error.Kind != "mismatch" || !strings.Contains(p.Error.Message, victim) {
				t.Errorf("the damaged path: %+v %+v", p, p.Error)
			}
		case bad[p.Path]:
			if p.Copied || p.Error == nil || p.Error.Kind != "reference-failed" {
				t.Errorf("a referrer of the damaged path: %+v %+v", p, p.Error)
			}
		default:
			if !p.Copied {
				t.Errorf("%s was not copied: %+v", p.Path, p.Error)
			}
			copied++
		}
	}
	if copied == 0 || res.PathsFailed != len(closure)-copied || res.PathsFailed < 2 {
		t.Fatalf("%d copied, %d failed of %d", copied, res.PathsFailed, len(closure))
	}
	copyNixVerify(t, ns.Root, "/nix/dst")
	recs := copyDumpRecords(t, runNS(t, ns.Root, nil, "nix-store", "--store", "/nix/dst", "--dump-db"))
	if len(recs) != copied || recs[victim] != "" {
		t.Fatalf("%d valid paths in the target, want %d", len(recs), copied)
	}
	if _, err := os.Lstat(filepath.Join(ns.Root, "nix/dst", victim)); !os.IsNotExist(err) {
		t.Errorf("the damaged path's copy is left in the target's store directory: %v", err)
	}
	// Text: the failures are named on stdout.
	r = runInNS(t, ns.Root, "copy", "--to", "/nix/dst", top)
	if r.code != 1 || !strings.Contains(r.stdout, "could not copy '"+victim+"'") || !strings.Contains(r.stderr, "could not be copied") {
		t.Errorf("text: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
