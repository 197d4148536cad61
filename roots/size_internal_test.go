package roots

import (
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"

	"storekeeper/graph"
	"storekeeper/store"
	"storekeeper/store/usage"
)

// sizeFixture is a graph with roots, and the files of its paths.
type sizeFixture struct {
	g       *graph.Graph
	roots   []graph.PathID
	us      []usage.Usage
	links   map[uint64]bool
	pathsOf map[string]graph.PathID
}

// newSizeFixture builds paths with references (from, to by name), and
// files: each file is {blocks, holders (path names, a name twice for two
// links in one path), in .links, links outside the store}.
type fileSpec struct {
	blocks  uint64
	holders []string
	inLinks bool
	outside int
}

// outs are derivation outputs {drv, output}: a DerivationOutputs row, and
// the output's deriver set to drv (for keep-outputs / keep-derivations).
func newSizeFixture(t testing.TB, names []string, refs [][2]string, outs [][2]string, rootNames []string, single map[string]uint64, files []fileSpec) *sizeFixture {
	b := graph.NewBuilder("/nix/store", len(names))
	fx := &sizeFixture{pathsOf: map[string]graph.PathID{}, links: map[uint64]bool{}}
	for i, n := range names {
		id, err := b.AddPath(int64(i+1), []byte(fmt.Sprintf("%032d-%s", i, n)))
		if err != nil {
			t.Fatal(err)
		}
		fx.pathsOf[n] = id
	}
	sort.Slice(refs, func(i, j int) bool { return fx.pathsOf[refs[i][0]] < fx.pathsOf[refs[j][0]] })
	b.BeginRefs(len(refs))
	for _, r := range refs {
		if err := b.AddRef(fx.pathsOf[r[0]], fx.pathsOf[r[1]]); err != nil {
			t.Fatal(err)
		}
	}
	sort.SliceStable(outs, func(i, j int) bool { return fx.pathsOf[outs[i][0]] < fx.pathsOf[outs[j][0]] })
	for _, o := range outs {
		if err := b.AddOutput(fx.pathsOf[o[0]], graph.DrvOutput{Name: "out", Path: "/nix/store/" + o[1], ID: fx.pathsOf[o[1]]}); err != nil {
			t.Fatal(err)
		}
	}
	g := b.Graph()
	g.NarSize = make([]uint64, len(names))
	for i := range g.NarSize {
		g.NarSize[i] = uint64(1000 * (i + 1))
	}
	fx.g = b.Finish()
	for _, o := range outs {
		fx.g.Deriver[fx.pathsOf[o[1]]] = fx.pathsOf[o[0]]
	}
	for _, r := range rootNames {
		id, ok := fx.pathsOf[r]
		if !ok {
			id = graph.NoPath
		}
		fx.roots = append(fx.roots, id)
	}
	fx.us = make([]usage.Usage, len(names))
	for n, b := range single {
		fx.us[fx.pathsOf[n]].Single += b
	}
	for k, f := range files {
		ino := uint64(1000 + k)
		nlink := uint64(len(f.holders) + f.outside)
		if f.inLinks {
			nlink++
			fx.links[ino] = true
		}
		per := map[graph.PathID]uint64{}
		for _, h := range f.holders {
			per[fx.pathsOf[h]]++
		}
		for id, c := range per {
			u := &fx.us[id]
			if nlink == 1 {
				u.Single += f.blocks
				continue
			}
			u.Multi = append(u.Multi, usage.Inode{Ino: ino, Nlink: nlink, Seen: c, Blocks: f.blocks})
			sort.Slice(u.Multi, func(i, j int) bool { return u.Multi[i].Ino < u.Multi[j].Ino })
		}
	}
	return fx
}

func (fx *sizeFixture) size(keepOutputs, keepDerivations, measureDead bool) *SizeReport {
	e := graph.NewEdges(fx.g, keepOutputs, keepDerivations)
	dt := graph.Dominators(e, fx.roots)
	us := fx.us
	if !measureDead {
		us = make([]usage.Usage, len(fx.us))
		for id := range us {
			if dt.Reached(dt.PathNode(graph.PathID(id))) {
				us[id] = fx.us[id]
			}
		}
	}
	z := newSizer(fx.g, e, dt, us, fx.links, measureDead)
	rr := &Result{}
	for i, id := range fx.roots {
		target := "/nix/store/missing"
		if id != graph.NoPath {
			target = fx.g.Path(id)
		}
		rr.Roots = append(rr.Roots, Root{Kind: Direct, Link: fmt.Sprintf("/gcroots/r%02d", i), Target: target})
	}
	return z.report(rr, fx.roots, 0, true)
}

func byLink(rep *SizeReport) map[string]RootSize {
	m := map[string]RootSize{}
	for _, r := range rep.Roots {
		m[r.Link] = r
	}
	return m
}

// TestSizeSharedFile: a file hard-linked into two roots' paths (after
// optimise, with its .links entry) is freed by neither root alone; a
// file only one root's paths hold is freed by it; one also linked
// outside the store never; two links to one path free nothing of it.
func TestSizeSharedFile(t *testing.T) {
	fx := newSizeFixture(t,
		[]string{"a", "b", "liba", "libb", "common", "c", "dead"},
		[][2]string{{"a", "liba"}, {"b", "libb"}, {"a", "common"}, {"b", "common"}}, nil,
		[]string{"a", "b", "c", "c"},
		map[string]uint64{"a": 100, "liba": 1000, "libb": 2000, "common": 50000, "c": 7, "dead": 900},
		[]fileSpec{
			{blocks: 4096, holders: []string{"liba", "libb"}, inLinks: true}, // shared by both roots
			{blocks: 8192, holders: []string{"liba", "liba"}, inLinks: true}, // two links inside liba
			{blocks: 300, holders: []string{"a", "liba"}},                    // only a's paths
			{blocks: 500, holders: []string{"b"}, outside: 1},                // linked outside
			{blocks: 600, holders: []string{"dead", "libb"}, inLinks: true},  // a dead path and b's
			{blocks: 700, holders: []string{"dead", "dead"}, inLinks: true},  // only the dead path
			{blocks: 800, holders: []string{"common", "c"}, inLinks: true},   // shared: c is its own (doubly rooted)
		})
	rep := fx.size(false, false, true)
	m := byLink(rep)
	if got, want := m["/gcroots/r00"].FreedBytes, uint64(100+1000+8192+300); got != want {
		t.Errorf("root a frees %d, want %d (not the file shared with b's lib)", got, want)
	}
	if got, want := m["/gcroots/r00"].FreedPaths, 2; got != want {
		t.Errorf("root a frees %d paths, want %d", got, want)
	}
	if got, want := m["/gcroots/r01"].FreedBytes, uint64(2000+600); got != want {
		t.Errorf("root b frees %d, want %d (its own lib and the file shared with the dead path)", got, want)
	}
	for _, l := range []string{"/gcroots/r02", "/gcroots/r03"} {
		if r := m[l]; r.FreedBytes != 0 || r.FreedPaths != 0 || r.ClosurePaths != 1 {
			t.Errorf("%s (one of two links to c): frees %d bytes, %d paths, closure %d; want 0, 0, 1", l, r.FreedBytes, r.FreedPaths, r.ClosurePaths)
		}
	}
	if rep.DeadPaths != 1 || rep.DeadBytes != 900+700 {
		t.Errorf("dead: %d paths, %d bytes; want 1, %d", rep.DeadPaths, rep.DeadBytes, 900+700)
	}
	// Without measuring the dead paths, the file b's lib shares with the
	// dead path counts as staying, and the dead bytes are not known.
	lean := fx.size(false, false, false)
	if got, want := byLink(lean)["/gcroots/r01"].FreedBytes, uint64(2000); got != want || lean.DeadMeasured || lean.DeadBytes != 0 || lean.DeadPaths != 1 {
		t.Errorf("without the dead paths measured: root b frees %d (want %d), dead %d paths, %d bytes, measured %v",
			got, want, lean.DeadPaths, lean.DeadBytes, lean.DeadMeasured)
	}
	if !rep.DeadMeasured {
		t.Error("DeadMeasured not set")
	}
	if got, want := m["/gcroots/r00"].ClosureBytes, uint64(100+1000+50000+4096+8192+300+800); got != want {
		t.Errorf("closure of a: %d bytes, want %d (each file once)", got, want)
	}
	if got, want := m["/gcroots/r00"].ClosurePaths, 3; got != want {
		t.Errorf("closure of a: %d paths, want %d", got, want)
	}
	if rep.Roots[0].Link != "/gcroots/r00" || rep.Roots[1].Link != "/gcroots/r01" {
		t.Errorf("not sorted by freed bytes: %s, %s", rep.Roots[0].Link, rep.Roots[1].Link)
	}
	// The shared nodes: common (both a and b), liba+libb's shared file is
	// attributed to the super-root, c (two links).
	var paths []string
	for _, s := range rep.Shared {
		paths = append(paths, s.Path)
		if s.Path == fx.g.Path(fx.pathsOf["common"]) && (s.FreedBytes != 50000 || len(s.Roots) != 2) {
			t.Errorf("shared common: %+v, want 50000 bytes and two roots", s)
		}
	}
	if len(rep.Shared) != 2 || rep.SharedTotal != 2 {
		t.Errorf("shared nodes %v (total %d), want common and c", paths, rep.SharedTotal)
	}
	if want := uint64(100 + 1000 + 2000 + 50000 + 7 + 4096 + 8192 + 300 + 500 + 600 + 800); rep.Totals.LiveBytes != want {
		t.Errorf("live bytes %d, want %d", rep.Totals.LiveBytes, want)
	}
}

// TestSizeAgainstRemoval: on random graphs with random shared files
// (derivations with outputs, keep-outputs and keep-derivations at random,
// so cycles through keep-* edges, self-references, roots of no valid
// path), for every root, what a collection frees after removing that
// root alone (the newly dead paths and the dead ones, by usage.Freed,
// gc's own rule) is DeadBytes + the root's FreedBytes, and the paths it
// deletes are FreedPaths; without the dead paths measured, the paths are
// the same and the bytes never more than what it frees besides the dead
// paths' own.
func TestSizeAgainstRemoval(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	for iter := 0; iter < 300; iter++ {
		n := 2 + r.Intn(25)
		var names, drvs []string
		for i := 0; i < n; i++ {
			nm := fmt.Sprintf("p%d", i)
			if r.Intn(3) == 0 {
				nm += ".drv"
				drvs = append(drvs, nm)
			}
			names = append(names, nm)
		}
		var refs [][2]string
		for k := r.Intn(2 * n); k > 0; k-- {
			refs = append(refs, [2]string{names[r.Intn(n)], names[r.Intn(n)]})
		}
		// Derivations' outputs (any path, a derivation too, or the
		// derivation itself): cycles through the keep-* edges.
		var outs [][2]string
		for _, d := range drvs {
			for k := r.Intn(3); k > 0; k-- {
				outs = append(outs, [2]string{d, names[r.Intn(n)]})
			}
		}
		var rootNames []string
		for k := 1 + r.Intn(5); k > 0; k-- {
			if r.Intn(10) == 0 {
				rootNames = append(rootNames, "invalid") // a root of no valid path
				continue
			}
			rootNames = append(rootNames, names[r.Intn(n)])
		}
		single := map[string]uint64{}
		for _, nm := range names {
			single[nm] = uint64(r.Intn(5000))
		}
		var files []fileSpec
		for k := r.Intn(3 * n); k > 0; k-- {
			f := fileSpec{blocks: uint64(1 + r.Intn(9000)), inLinks: r.Intn(2) == 0}
			for h := 1 + r.Intn(4); h > 0; h-- {
				f.holders = append(f.holders, names[r.Intn(n)])
			}
			if r.Intn(6) == 0 {
				f.outside = 1
			}
			files = append(files, f)
		}
		fx := newSizeFixture(t, names, refs, outs, rootNames, single, files)
		keepOut, keepDrv := r.Intn(2) == 0, r.Intn(2) == 0
		rep := fx.size(keepOut, keepDrv, true)
		lean := byLink(fx.size(keepOut, keepDrv, false))
		e := graph.NewEdges(fx.g, keepOut, keepDrv)
		liveWithout := func(skip int) []bool {
			l := graph.NewLiveness(e)
			for i, id := range fx.roots {
				if i != skip && id != graph.NoPath {
					l.AddRoot(id, "r")
				}
			}
			l.Propagate()
			return append([]bool(nil), l.AliveSet()...)
		}
		all := liveWithout(-1)
		m := byLink(rep)
		for i := range fx.roots {
			after := liveWithout(i)
			var gone []usage.Usage
			deleted := 0
			for id := 0; id < n; id++ {
				if !after[id] {
					gone = append(gone, fx.us[id])
					if all[id] {
						deleted++
					}
				}
			}
			freed, _ := usage.Freed(gone, fx.links)
			rs := m[fmt.Sprintf("/gcroots/r%02d", i)]
			var deletedPaths []string
			for id := 0; id < n; id++ {
				if all[id] && !after[id] {
					deletedPaths = append(deletedPaths, fx.g.Path(graph.PathID(id)))
				}
			}
			sort.Strings(deletedPaths)
			if fmt.Sprint(deletedPaths) != fmt.Sprint(rs.Freed) {
				t.Fatalf("iteration %d, root %d: predicted paths %v, deleted %v", iter, i, rs.Freed, deletedPaths)
			}
			if rep.DeadBytes+rs.FreedBytes != freed || rs.FreedPaths != deleted {
				t.Fatalf("iteration %d, root %d: predicted %d paths, %d+%d bytes; removing it deletes %d paths, frees %d",
					iter, i, rs.FreedPaths, rep.DeadBytes, rs.FreedBytes, deleted, freed)
			}
			// Without the dead paths measured, the same paths, and
			// bytes that can only be low.
			if ls := lean[rs.Link]; ls.FreedPaths != deleted || ls.FreedBytes > freed-rep.DeadBytes {
				t.Fatalf("iteration %d, root %d, dead paths not measured: predicted %d paths, %d bytes; removing it deletes %d paths, frees %d besides the dead paths' %d",
					iter, i, ls.FreedPaths, ls.FreedBytes, deleted, freed-rep.DeadBytes, rep.DeadBytes)
			}
		}
	}
}

// TestSizeWarningsHiddenRoots: roots size warns about every note roots
// why counts as hiding roots: an unreadable potential root and an
// unreadable temp-roots directory or file (a build's paths would then
// count as freed), not about other notes.
func TestSizeWarningsHiddenRoots(t *testing.T) {
	lay := store.Layout{StateDir: "/nix/var/nix"}
	notes := []Note{
		{Link: "/nix/var/nix/gcroots/a", Message: "cannot read potential root: permission denied"},
		{Link: lay.TempRootsDir(), Message: "open /nix/var/nix/temproots: permission denied"},
		{Link: "/nix/var/nix/gcroots/b", Message: "skipping a link to outside the store"},
	}
	got := sizeWarnings(lay, notes, false)
	if len(got) != 2 || !strings.HasPrefix(got[0], notes[0].Link+": ") || !strings.HasPrefix(got[1], notes[1].Link+": ") {
		t.Fatalf("warnings %q, want one for each of the first two notes", got)
	}
	var hidden []string
	for _, n := range notes {
		if hidesRoots(lay, n) {
			hidden = append(hidden, n.Link)
		}
	}
	if len(hidden) != 2 {
		t.Errorf("hidesRoots: %q, want the first two notes", hidden)
	}
}
