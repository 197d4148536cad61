package finding

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"storekeeper/nix/nar"
)

const p = "/nix/store/0spv9zd17nyb9j64hgq6q763s8zl7954-pkg-56"

// TestCommand: each remedy renders as the command line verify has always
// printed for it (the JSON "fix" field), and no remedy as "".
func TestCommand(t *testing.T) {
	for _, c := range []struct {
		r    *Remedy
		want string
	}{
		{nil, ""},
		{NewRemedy(RemedyInvalidate, p), "storekeeper verify --repair " + p},
		{NewRemedy(RemedyRecordNarInfo, p), "storekeeper verify --check-contents --repair " + p},
		{NewRemedy(RemedyDeleteDanglingRows), "storekeeper verify --repair"},
		{NewRemedy(RemedyRemoveLinksEntry, "/nix/store/.links/0a8h"), "storekeeper verify --check-contents --repair"},
		{NewRemedy(RemedyRelink), "storekeeper optimise (or nix-store --optimise) to relink intact copies"},
		{NewRemedy(RemedyRepairPath, p), "nix-store --repair-path " + p},
		{NewRemedy(RemedyCheckDiskThenRepairPath, p), "check the disk, then: nix-store --repair-path " + p},
		{NewRemedy(RemedySign, p), "nix store sign --key-file KEYFILE " + p},
		{NewRemedy(RemedyInspectAndRemove, "/mnt/nix/store/0spv9zd17nyb9j64hgq6q763s8zl7954-it's"), `inspect it, then remove it: rm -rf '/mnt/nix/store/0spv9zd17nyb9j64hgq6q763s8zl7954-it'\''s'`},
	} {
		if got := c.r.Command(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.r, got, c.want)
		}
	}
}

// TestJSON: a finding's JSON has the fields verify always wrote, in the
// same order, "fix" as the command line, then the remedy as data; it
// reads back to the same finding (the ids are not part of it).
func TestJSON(t *testing.T) {
	h := nar.Hash{1, 2, 3}
	rem := NewRemedy(RemedyRecordNarInfo, p)
	rem.NarHash, rem.NarSize = h, 4242
	rem.IDs = []int64{7}
	f := Finding{Kind: KindNarSize, Path: p, Expected: "4000", Got: "4242", Message: "m", Remedy: rem}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"kind":"nar-size","path":"` + p + `","expected":"4000","got":"4242","message":"m",` +
		`"fix":"storekeeper verify --check-contents --repair ` + p + `",` +
		`"remedy":{"action":"record-nar-info","paths":["` + p + `"],"nar_hash":"` + h.String() + `","nar_size":4242}}`
	if string(b) != want {
		t.Errorf("JSON\n%s\nwant\n%s", b, want)
	}
	var back Finding
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	f.Remedy.IDs = nil
	if !reflect.DeepEqual(back, f) {
		t.Errorf("read back %+v %+v, want %+v %+v", back, back.Remedy, f, f.Remedy)
	}
	// No remedy: neither "fix" nor "remedy"; repaired says so.
	b, _ = json.Marshal(Finding{Kind: KindOutputsOfNonDrv, Path: p, Message: "m", Repaired: true})
	if s := string(b); strings.Contains(s, "fix") || strings.Contains(s, "remedy") || !strings.HasSuffix(s, `"repaired":true}`) {
		t.Errorf("JSON %s", s)
	}
	// Only RecordNarInfo carries a hash.
	b, _ = json.Marshal(NewRemedy(RemedyRepairPath, p))
	if string(b) != `{"action":"repair-path","paths":["`+p+`"]}` {
		t.Errorf("remedy JSON %s", b)
	}
}

// TestSort: by path, then the worst kind first, then file.
func TestSort(t *testing.T) {
	fs := []Finding{
		{Kind: KindDanglingRefs},
		{Kind: KindFileChanged, Path: "b", File: "z"},
		{Kind: KindFileAdded, Path: "b", File: "a"},
		{Kind: KindModified, Path: "b"},
		{Kind: KindBadMode, Path: "a"},
		{Kind: KindDisappearedReferenced, Path: "c"},
	}
	Sort(fs)
	var got []string
	for _, f := range fs {
		got = append(got, f.Path+":"+string(f.Kind)+":"+f.File)
	}
	want := ":dangling-refs: a:bad-mode: b:modified: b:file-added:a b:file-changed:z c:disappeared-referenced:"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v\nwant %s", got, want)
	}
}
