package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storekeeper/nix/narinfo"
	"storekeeper/nix/signature"
)

// TestRepairBadInput: a cache (real `nix copy`, uncompressed NARs) is
// made wrong for one damaged path X in each way a substitute can be
// wrong (a narinfo whose NarHash or NarSize differs from the database,
// re-signed so that only that is wrong; a bad, missing or untrusted
// signature; a NAR that differs from its narinfo, truncated or
// oversized; a server that hangs, resets or answers 500; an unreachable
// cache; a cache of another store directory; a path no source has).
// Each run exits 1, says why X was not repaired (--json error.kind and
// message, and what each source said), leaves X exactly as it was (bytes
// and inodes) and the database as it was, and repairs every other path.
// A 500 then a 200 is retried and succeeds; --no-check-sigs accepts the
// unsigned narinfo, but never a wrong hash.
func TestRepairBadInput(t *testing.T) {
	f := newRepairFixture(t, nixSpec{Paths: 60, Seed: 2302, Files: 2}, 8, "none")
	// Manifests of the intact store, so that the audit of a damaged copy
	// names the files changed.
	if r := runInNS(t, f.ns.Root, "verify", "--check-contents"); r.code != 0 {
		t.Fatalf("verify of the intact store: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	good := f.caches["none"]
	x := f.victims[0] // flipped by damageLikeCompare (index 0 of 4)
	others := f.victims[1:]
	sk := good.secretKey(t)
	otherSec, _ := cacheKey(t, t.TempDir(), "not-trusted-1")
	otherKey, err := signature.ParseSecretKey(readString(t, otherSec))
	if err != nil {
		t.Fatal(err)
	}
	withoutX := func(t *testing.T) *binCache {
		c := good.clone(t)
		if err := os.Remove(c.narInfoFile(x)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// fast makes a server's failures cost little: two attempts, a
	// two-second stall timeout.
	fast := []string{"--option", "download-attempts=2", "--option", "stalled-download-timeout=2", "--option", "connect-timeout=2"}

	type badCase struct {
		name string
		// setup returns the arguments naming the sources (and options).
		setup func(t *testing.T) []string
		kind  string // X's error.kind; "" any
		says  string // in X's error message or what a source said
		ok    bool   // every path is repaired (exit 0)
	}
	edited := func(resign bool, edit func(ni *narinfo.NarInfo)) func(t *testing.T) []string {
		return func(t *testing.T) []string {
			c := good.clone(t)
			c.editNarInfo(t, x, resign, edit)
			return trustArgs(c.URL(), c)
		}
	}
	narEdited := func(edit func(b []byte) []byte) func(t *testing.T) []string {
		return func(t *testing.T) []string {
			c := good.clone(t)
			nf := c.narFile(t, x)
			b, err := os.ReadFile(nf)
			if err != nil {
				t.Fatal(err)
			}
			os.Chmod(nf, 0o644)
			if err := os.WriteFile(nf, edit(b), 0o644); err != nil {
				t.Fatal(err)
			}
			return trustArgs(c.URL(), c)
		}
	}
	served := func(fl func(c *binCache) fault) func(t *testing.T) []string {
		return func(t *testing.T) []string {
			srv := serveCache(t, good.Dir)
			srv.fail(fl(good))
			return append(trustArgs(srv.URL, good), fast...)
		}
	}
	xInfo := filepath.Base(good.narInfoFile(x))
	xNar := func(c *binCache) string { return filepath.Base(c.narFile(t, x)) }
	otherHash := good.narInfo(t, others[0]).NarHash

	cases := []badCase{
		{name: "narhash", kind: "mismatch", setup: edited(true, func(ni *narinfo.NarInfo) { ni.NarHash = otherHash })},
		{name: "narsize", kind: "mismatch", setup: edited(true, func(ni *narinfo.NarInfo) { ni.NarSize += 8 })},
		{name: "bad-signature", kind: "untrusted", setup: edited(false, func(ni *narinfo.NarInfo) {
			ni.Sigs = []string{sk.Sign("1;" + ni.StorePath + ";not-the-fingerprint")}
		})},
		{name: "no-signature", kind: "untrusted", setup: edited(false, func(ni *narinfo.NarInfo) { ni.Sigs = nil })},
		{name: "untrusted-key", kind: "untrusted", setup: edited(false, func(ni *narinfo.NarInfo) {
			ni.Sigs = []string{otherKey.Sign(ni.Fingerprint())}
		})},
		{name: "no-check-sigs-unsigned", ok: true, setup: func(t *testing.T) []string {
			return append(edited(false, func(ni *narinfo.NarInfo) { ni.Sigs = nil })(t), "--no-check-sigs")
		}},
		{name: "no-check-sigs-narhash", kind: "mismatch", setup: func(t *testing.T) []string {
			return append(edited(true, func(ni *narinfo.NarInfo) { ni.NarHash = otherHash })(t), "--no-check-sigs")
		}},
		{name: "nar-changed", setup: narEdited(func(b []byte) []byte { b[len(b)/2] ^= 0xff; return b })},
		{name: "nar-truncated", setup: narEdited(func(b []byte) []byte { return b[:len(b)/2] })},
		{name: "nar-oversized", setup: narEdited(func(b []byte) []byte { return append(b, make([]byte, 4096)...) })},
		{name: "http-hang", setup: served(func(c *binCache) fault { return fault{Match: xNar(c), Kind: faultHang} })},
		{name: "http-reset", setup: served(func(c *binCache) fault { return fault{Match: xInfo, Kind: faultReset} })},
		{name: "http-500", says: "500", setup: served(func(c *binCache) fault { return fault{Match: xNar(c), Kind: fault500} })},
		{name: "http-500-then-200", ok: true, setup: func(t *testing.T) []string {
			srv := serveCache(t, good.Dir)
			srv.fail(fault{Match: xInfo, Kind: fault500, Times: 2})
			return append(trustArgs(srv.URL, good), "--option", "download-attempts=5")
		}},
		{name: "unreachable", kind: "bad-source", setup: func(t *testing.T) []string {
			c := withoutX(t)
			return append([]string{"--option", "substituters=" + closedPort(t) + " " + c.URL(), "--option", "trusted-public-keys=" + c.PublicKey}, fast...)
		}},
		{name: "other-store-dir", kind: "bad-source", says: "/gnu/store", setup: func(t *testing.T) []string {
			gnu := good.clone(t)
			if err := os.WriteFile(filepath.Join(gnu.Dir, "nix-cache-info"), []byte("StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 10\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			c := withoutX(t)
			return []string{"--option", "substituters=" + gnu.URL() + " " + c.URL(), "--option", "trusted-public-keys=" + c.PublicKey}
		}},
		{name: "no-source-has-it", kind: "not-found", setup: func(t *testing.T) []string {
			c := withoutX(t)
			return trustArgs(c.URL(), c)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, flipped, _ := f.damaged(t)
			if flipped[x] == "" {
				t.Fatalf("%s was not flipped", x)
			}
			before := pathState(t, root, x)
			args := append(append([]string{"--json", "repair"}, c.setup(t)...), f.victims...)
			start := time.Now()
			r := runInNS(t, root, args...)
			took := time.Since(start)
			e := decodeEnvelope(t, r.stdout)
			var res repairResultJSON
			if err := json.Unmarshal(e.Result, &res); err != nil {
				t.Fatalf("%v\n%s", err, r.stdout)
			}
			if took > 40*time.Second {
				t.Errorf("took %s", took)
			}
			if got := dbSnapshot(t, root); got != f.db {
				t.Errorf("the database changed")
			}
			if c.ok {
				if r.code != 0 || res.PathsRepaired != len(f.victims) {
					t.Fatalf("exit %d, %d repaired\n%s%s", r.code, res.PathsRepaired, r.stdout, r.stderr)
				}
				nixVerify(t, root)
				return
			}
			if r.code != 1 || e.OK || e.Error == nil || e.Error.Kind != "findings" {
				t.Errorf("exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
			}
			if after := pathState(t, root, x); after != before {
				t.Errorf("%s changed:\nbefore:\n%s\nafter:\n%s", x, before, after)
			}
			if res.PathsRepaired != len(others) || res.PathsFailed != 1 {
				t.Errorf("%d repaired, %d failed; want %d and 1\n%s", res.PathsRepaired, res.PathsFailed, len(others), r.stdout)
			}
			for _, pr := range res.Paths {
				if pr.Path != x {
					if !pr.Repaired {
						t.Errorf("%s not repaired: %+v", pr.Path, pr.Error)
					}
					continue
				}
				if pr.Repaired || pr.Error == nil || pr.Error.Message == "" {
					t.Fatalf("%s: %+v", x, pr)
				}
				if c.kind != "" && pr.Error.Kind != c.kind {
					t.Errorf("%s: error kind %q, want %q: %s (tried %+v)", x, pr.Error.Kind, c.kind, pr.Error.Message, pr.Tried)
				}
				said := pr.Error.Message
				for _, tr := range pr.Tried {
					said += "\n" + tr.Source + ": " + tr.Error
				}
				if c.says != "" && !strings.Contains(said, c.says) {
					t.Errorf("%s: the messages do not say %q:\n%s", x, c.says, said)
				}
				if !strings.Contains(said, x) && len(pr.Tried) == 0 {
					t.Errorf("%s: the message names neither the path nor a source:\n%s", x, said)
				}
			}
			if out := runNSAll(t, root, append([]string{"nix-store", "--verify-path"}, others...)...); out.code != 0 {
				t.Errorf("the other paths were not all repaired: %s", out.stderr)
			}
		})
	}

	// The text output: a line per path, the failure with what each
	// source said and the file the audit found changed.
	t.Run("text", func(t *testing.T) {
		root, flipped, _ := f.damaged(t)
		c := withoutX(t)
		r := runInNS(t, root, append([]string{"repair", "--damaged"}, trustArgs(c.URL(), c)...)...)
		if r.code != 1 {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		want := fmt.Sprintf("could not repair '%s': ", x)
		var line string
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, want) {
				line = l
			}
		}
		rel, _ := filepath.Rel(root, flipped[x])
		if line == "" || !strings.Contains(line, "tried: "+c.URL()+": ") || !strings.Contains(line, "not found") {
			t.Errorf("no line says why %s was not repaired:\n%s", x, r.stdout)
		} else if !strings.Contains(line, "'/"+rel+"'") {
			t.Errorf("the line does not name the changed file /%s:\n%s", rel, line)
		}
		if !strings.Contains(r.stderr, "1 of ") || !strings.Contains(r.stderr, "could not be repaired") {
			t.Errorf("no summary on stderr:\n%s", r.stderr)
		}
		for _, p := range others {
			if !strings.Contains(r.stdout, "repaired '"+p+"' from "+c.URL()) {
				t.Errorf("no line for %s:\n%s", p, r.stdout)
			}
		}
	})
}
