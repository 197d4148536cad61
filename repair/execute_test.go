package repair

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/nix/nixconf"
	"storekeeper/store"
	"storekeeper/store/storetest"
	"storekeeper/verify"
	"storekeeper/verify/finding"
)

// TestNewPlan: the plan holds the remedies done on the machine, each path
// once, and nothing of findings already repaired or needing a substitute.
func TestNewPlan(t *testing.T) {
	a, b := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"
	rec := finding.NewRemedy(finding.RemedyRecordNarInfo, b)
	rec.IDs, rec.NarSize = []int64{12}, 99
	inv := finding.NewRemedy(finding.RemedyInvalidate, a)
	inv.IDs = []int64{11}
	fs := []finding.Finding{
		{Kind: finding.KindDisappeared, Path: a, Remedy: inv},
		{Kind: finding.KindDisappeared, Path: a, Remedy: inv},
		{Kind: finding.KindNarSize, Path: b, Remedy: rec},
		{Kind: finding.KindModified, Path: b, Remedy: finding.NewRemedy(finding.RemedyRepairPath, b)},
		{Kind: finding.KindDanglingRefs, Remedy: finding.NewRemedy(finding.RemedyDeleteDanglingRows)},
		{Kind: finding.KindDanglingDrvOutputs, Remedy: finding.NewRemedy(finding.RemedyDeleteDanglingRows)},
		{Kind: finding.KindLinkModified, File: "/nix/store/.links/x", Remedy: finding.NewRemedy(finding.RemedyRemoveLinksEntry, "/nix/store/.links/x"), Repaired: true},
		{Kind: finding.KindOutputsOfNonDrv, Path: b},
	}
	p := NewPlan(fs)
	if len(p.Invalidate) != 1 || p.Invalidate[0] != (Row{a, 11}) {
		t.Errorf("invalidate %+v", p.Invalidate)
	}
	if len(p.RecordNarInfo) != 1 || p.RecordNarInfo[0].Row != (Row{b, 12}) || p.RecordNarInfo[0].Size != 99 {
		t.Errorf("record %+v", p.RecordNarInfo)
	}
	if !p.DeleteDanglingRows || len(p.RemoveLinks) != 0 || p.Empty() {
		t.Errorf("plan %+v", p)
	}
	if !NewPlan(fs[3:4]).Empty() {
		t.Error("a path that needs a substitute is in the plan")
	}
}

// TestExecuteActsOnTheAuditedRegistration: what changed since the audit
// is left alone, and those findings stay unrepaired: a vanished path back
// on disk, a vanished path a path registered since refers to, a path
// registered again under a new id (its size is not recorded).
func TestExecuteActsOnTheAuditedRegistration(t *testing.T) {
	f := newFixture(t, smallSpec())
	lone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 && fi.IsDir() })
	if len(lone) < 4 {
		t.Fatalf("only %d unreferenced paths", len(lone))
	}
	back, referred, gone := lone[0], lone[1], lone[2]
	resized := lone[3]
	hidden := map[string]string{}
	for _, p := range []string{back, referred, gone} {
		hidden[p] = filepath.Join(f.b.Root, filepath.Base(p)) // outside the store dir
		if err := os.Rename(f.real(p), hidden[p]); err != nil {
			t.Fatal(err)
		}
	}
	execDB(t, f, "update ValidPaths set narSize = narSize + 8 where path = ?", resized)
	res := f.verify(verify.Options{CheckContents: true})
	if n := len(byKind(res)[finding.KindDisappeared]); n != 3 || len(byKind(res)[finding.KindNarSize]) != 1 {
		t.Fatalf("findings: %+v", res.Findings)
	}

	// Meanwhile: back is back; a new path refers to referred; resized is
	// registered again.
	if err := os.Rename(hidden[back], f.real(back)); err != nil {
		t.Fatal(err)
	}
	newPath := f.b.Layout.StoreDir + "/" + strings.Repeat("1", 32) + "-registered-since"
	execDB(t, f, "insert into ValidPaths (path, hash, registrationTime, narSize) values (?, 'sha256:"+strings.Repeat("0", 64)+"', 1, 8)", newPath)
	execDB(t, f, "insert into Refs (referrer, reference) select (select id from ValidPaths where path = ?1), id from ValidPaths where path = ?2", newPath, referred)
	execDB(t, f, "update ValidPaths set path = path || '-old' where path = ?", resized)
	execDB(t, f, "insert into ValidPaths (path, hash, registrationTime, narSize) select ?1, hash, 2, narSize from ValidPaths where path = ?1 || '-old'", resized)

	s, err := store.Open(context.Background(), store.Options{Layout: f.b.Layout, Settings: nixconf.Default(true)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := validCount(t, f)
	rr, err := Findings(context.Background(), s, res.Findings, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		action finding.Action
		path   string
		done   bool
	}{
		{finding.RemedyInvalidate, back, false},
		{finding.RemedyInvalidate, referred, false},
		{finding.RemedyInvalidate, gone, true},
		{finding.RemedyRecordNarInfo, resized, false},
	} {
		if rr.Done(c.action, c.path) != c.done {
			t.Errorf("%s %s: done %v, want %v (%+v)", c.action, c.path, !c.done, c.done, rr.Outcomes)
		}
	}
	for _, x := range res.Findings {
		if x.Repaired != (x.Path == gone) {
			t.Errorf("%s %s: repaired %v", x.Kind, x.Path, x.Repaired)
		}
		if x.Path == gone && (x.Remedy != nil || !strings.Contains(x.Message, "removing from database")) {
			t.Errorf("repaired finding: %+v", x)
		}
	}
	valid, err := s.DB.ValidAmong(context.Background(), []string{back, referred, gone, resized, newPath})
	if err != nil {
		t.Fatal(err)
	}
	if !valid[back] || !valid[referred] || valid[gone] || !valid[resized] || !valid[newPath] {
		t.Errorf("valid after repair: %v", valid)
	}
	if after := validCount(t, f); after != before-1 {
		t.Errorf("%d valid paths after repair, want %d", after, before-1)
	}
}

// TestExecuteRefuses: a suspect store directory (the audit's verdict)
// makes Execute change nothing unless AllowMassDrop; a read-only store is
// refused.
func TestExecuteRefuses(t *testing.T) {
	f := newFixture(t, smallSpec())
	lone := f.pick(func(p string, fi os.FileInfo, refs int) bool { return refs == 0 })
	removeStorePaths(t, f, lone[:1])
	res := f.verify(verify.Options{})
	suspect := &store.UnmountedError{}
	s, err := store.Open(context.Background(), store.Options{Layout: f.b.Layout, Settings: nixconf.Default(true)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := dbDump(t, f)
	_, err = Execute(context.Background(), s, NewPlan(res.Findings), Options{Suspect: suspect})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "Nothing was changed") || dbDump(t, f) != before {
		t.Fatalf("refusal: %v", err)
	}
	if (Options{AllowMassDrop: true}).Refuse(suspect) != nil || (Options{}).Refuse(nil) != nil {
		t.Error("Refuse refuses what it must not")
	}
	ro, err := storetest.OpenReadOnly(f.b.Layout)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := Execute(context.Background(), ro, NewPlan(res.Findings), Options{}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only store: %v", err)
	}
	rr, err := Execute(context.Background(), s, NewPlan(res.Findings), Options{Suspect: suspect, AllowMassDrop: true, NoRecord: true})
	if err != nil || !rr.Done(finding.RemedyInvalidate, lone[0]) {
		t.Fatalf("--allow-mass-drop: %v %+v", err, rr)
	}
}

func execDB(t *testing.T, f *fixture, q string, args ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+f.b.Layout.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}
