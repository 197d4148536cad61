package tests

import (
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/nix/nar"
	"storekeeper/nix/refscan"
)

// TestRefScanAgreesWithNix: outputs built by real Nix 2.8 (its reference
// scanner decides their references) are scanned by nix/refscan with every
// valid path as a candidate; the references found are exactly the ones
// Nix registered: a path named in a file's contents, in a symlink target,
// in a file name, the path's own hash (a self-reference), and not an
// input the output does not mention.
func TestRefScanAgreesWithNix(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 2, Seed: 31, Salt: "refscan"})
	expr := `
let
  sh = "/bin/sh";
  mk = name: script: derivation { inherit name; system = "x86_64-linux"; builder = sh; args = [ "-c" script ]; salt = "refscan-nix"; };
  a = mk "a" "echo hello > $out";
  b = mk "b" "echo bee > $out";
  c = mk "c" "/bin/mkdir $out; echo ${a} > $out/f; /bin/ln -s ${b}/x $out/link";
  d = mk "d" "/bin/mkdir $out; /bin/touch $out/$(/usr/bin/basename ${a}); echo $out > $out/self; echo unused ${b} > /dev/null";
  e = mk "e" "/bin/mkdir $out; echo ${c} | /usr/bin/rev > $out/reversed; printf '%s' ${a} | /usr/bin/head -c 20 > $out/cut";
in [ a b c d e ]
`
	exprFile := filepath.Join(ns.Root, "refscan.nix")
	if err := os.WriteFile(exprFile, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	outs := strings.Fields(runNS(t, ns.Root, nil, "nix-build", "--no-out-link", exprFile))
	if len(outs) != 5 {
		t.Fatalf("nix-build made %v", outs)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(ns.Root, "nix/var/nix/db/db.sqlite")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var all []string
	rows, err := db.Query("select path from ValidPaths")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var p string
		rows.Scan(&p)
		all = append(all, p)
	}
	rows.Close()
	nonEmpty := 0
	for _, out := range outs {
		var want []string
		rs, err := db.Query("select v.path from Refs r join ValidPaths v on v.id = r.reference join ValidPaths o on o.id = r.referrer where o.path = ? order by v.path", out)
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var p string
			rs.Scan(&p)
			want = append(want, p)
		}
		rs.Close()
		s := refscan.New("/nix/store", all)
		if _, err := nar.DumpPath(s, filepath.Join(ns.Root, out)); err != nil {
			t.Fatal(err)
		}
		got := s.Found()
		t.Logf("%s: %v", out, want)
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: scanner found %v, Nix registered %v", out, got, want)
		}
		if len(want) > 0 {
			nonEmpty++
		}
	}
	if nonEmpty != 2 { // c (contents, symlink target) and d (file name, self); e only mentions its input reversed or cut
		t.Fatalf("only %d outputs have references: the fixture does not exercise the scanner", nonEmpty)
	}
}
