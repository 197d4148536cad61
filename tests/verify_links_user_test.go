package tests

// verify --check-contents on an optimised store (#27's .links checks in
// the paths' reads and the links record) as a real unprivileged user and
// as root with a hostile record: the user's audit reads root's record,
// checks every .links entry and writes nothing; root never writes through
// a symlink planted at the record's name.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const linksUser = "sk-verify-links"

func TestVerifyLinksRecordAsUserAndHostile(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 30, Seed: 41, Files: 4})
	uid, gid := realUser(t, linksUser)
	for d := ns.Root; d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755) // the user can reach the store (t.TempDir is 0700)
	}
	if r := runInNS(t, ns.Root, "optimise"); r.code != 0 {
		t.Fatalf("optimise: exit %d\n%s", r.code, r.stderr)
	}
	links, err := os.ReadDir(filepath.Join(ns.Root, "nix", "store", ".links"))
	if err != nil || len(links) < 20 {
		t.Fatalf(".links after optimise: %d entries, %v", len(links), err)
	}
	type summary struct {
		Links     int    `json:"links_checked"`
		Recording string `json:"recording"`
	}
	audit := func(who string, r result) summary {
		t.Helper()
		var res struct {
			Findings []json.RawMessage `json:"findings"`
			Summary  summary           `json:"summary"`
		}
		if r.code != 0 {
			t.Fatalf("%s: verify exit %d\n%s\n%s", who, r.code, tail(r.stdout, 2000), tail(r.stderr, 2000))
		}
		if err := json.Unmarshal(resultOf([]byte(r.stdout)), &res); err != nil {
			t.Fatalf("%s: %v\n%s", who, err, tail(r.stdout, 2000))
		}
		if len(res.Findings) != 0 || res.Summary.Links != len(links) {
			t.Fatalf("%s: %d findings, %d of %d links checked", who, len(res.Findings), res.Summary.Links, len(links))
		}
		return res.Summary
	}

	// Root's recording run writes the record.
	audit("root", runInNS(t, ns.Root, "--json", "verify", "--check-contents"))
	rec := filepath.Join(ns.Root, "nix", "var", "storekeeper", "links.rec")
	before, err := os.ReadFile(rec)
	if err != nil || len(before) == 0 {
		t.Fatalf("links.rec after a recording run: %d bytes, %v", len(before), err)
	}

	// The user: reads the store and root's record, checks every entry,
	// records nothing, changes nothing.
	user := fmt.Sprintf(`exec setpriv --reuid=%d --regid=%d --clear-groups env HOME=/nonexistent "$@"`, uid, gid)
	s := audit(linksUser, runCmd(t, nsScript(ns.Root, user, userBinary(t, ns.Root), "--json", "verify", "--check-contents"), nil))
	if s.Recording == "yes" {
		t.Errorf("%s: recording %q: an unprivileged audit wrote root's state", linksUser, s.Recording)
	}
	if after, err := os.ReadFile(rec); err != nil || string(after) != string(before) {
		t.Errorf("links.rec changed by the user's audit (%v)", err)
	}

	// Hostile: a symlink at the record's name, to a file that must never
	// be read or written through it. Root's audit ignores it, still checks
	// every entry, and replaces the symlink, not its target.
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("not a record\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(rec)
	if err := os.Symlink(victim, rec); err != nil {
		t.Fatal(err)
	}
	audit("root, symlinked record", runInNS(t, ns.Root, "--json", "verify", "--check-contents"))
	if data, _ := os.ReadFile(victim); string(data) != "not a record\n" {
		t.Errorf("the symlink's target was written (%d bytes)", len(data))
	}
	if fi, err := os.Lstat(rec); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("links.rec after the run: %v, %v (want a regular file in place of the symlink)", fi, err)
	}
	// An over-long record (a runaway file) is ignored, not read whole.
	if err := os.WriteFile(rec, []byte(strings.Repeat("x", 200*len(links)+8192)), 0o644); err != nil {
		t.Fatal(err)
	}
	audit("root, oversized record", runInNS(t, ns.Root, "--json", "verify", "--check-contents"))
}
