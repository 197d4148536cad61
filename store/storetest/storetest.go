// Package storetest builds Nix-compatible stores for tests, benchmarks and
// the README's demo, without Nix: a store directory with canonical files
// (mode 0444/0555, mtime 1), .drv files in Nix's ATerm format, a db.sqlite
// with Nix's schema 10 (or Guix's 7) holding the real NAR hash and size of
// every path, references, derivers and DerivationOutputs, and the state
// directory around it (db/schema, big-lock, reserved, gcroots with direct
// and indirect roots, a profile with generations, temproots).
//
// The same Spec and seed always give the same store. Real `nix-store
// --verify --check-contents` accepts what it writes.
package storetest

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	_ "modernc.org/sqlite"

	"storekeeper/nix/derivation"
	"storekeeper/nix/nar"
	"storekeeper/nix/nixconf"
	"storekeeper/nix/storepath"
	"storekeeper/store"
	"storekeeper/store/db"
)

// Spec describes the store to build.
type Spec struct {
	Paths       int     // derivations; each has one or two outputs
	Seed        uint64  // same seed, same store
	MaxDeps     int     // references per output, at most
	Files       int     // mean files per output
	FileSize    int     // median file size in bytes
	Dup         float64 // fraction of files whose contents are shared (for optimise)
	Roots       int     // direct and indirect gcroots
	Generations int     // profile generations
	Multi       float64 // fraction of derivations with a second output "dev"
	Invalid     int     // unregistered leftovers in the store dir
	// DBOnly writes the database and roots only, with made-up hashes and
	// no store contents: for graph benchmarks on 100k+ paths.
	DBOnly bool
	// StoreDir is the logical store dir (default /nix/store); Guix writes a
	// schema-7 database and /var/guix-style state when true.
	StoreDir string
	Guix     bool
	// RegTime is the registrationTime of the first path; each later path
	// is one second younger. Default 1700000000.
	RegTime int64
	// NixOutputs gives each .drv the output paths Nix computes for it
	// (derivation.ExpectedOutputPaths: what `nix-store
	// --register-validity` and register check) and Nix's sorted
	// environment; default: made-up output hashes, which every other
	// check accepts.
	NixOutputs bool
}

// DefaultSpec is a small store that builds in well under a second.
func DefaultSpec() Spec {
	return Spec{Paths: 60, Seed: 1, MaxDeps: 5, Files: 4, FileSize: 2048, Dup: 0.3,
		Roots: 6, Generations: 3, Multi: 0.1, Invalid: 3}
}

// Built is what Build made.
type Built struct {
	Root   string       // the directory given to Build
	Layout store.Layout // where the store is (StoreDir logical, RealStoreDir under Root)
	Drvs   []string     // full logical paths of the derivations
	// Outputs[i] maps output name to full logical path for derivation i.
	Outputs []map[string]string
	// Refs maps every valid path to its references (full paths, sorted).
	Refs map[string][]string
	// Deriver of every output path.
	Deriver map[string]string
	// Roots: the store paths held by each kind of root.
	DirectRoots, IndirectRoots, ProfileRoots []string
	// RootLinks maps every root link (as `nix-store --gc --print-roots`
	// prints it) to its target.
	RootLinks map[string]string
	// Leftovers are unregistered entries in the store dir (base names).
	Leftovers []string
	// Valid lists every valid path, sorted.
	Valid []string
}

const b32chars = "0123456789abcdfghijklmnpqrsvwxyz"

// Build writes a store under root (root/nix/store and root/nix/var/nix,
// or the Guix equivalents) according to spec. root must not contain a
// store already.
func Build(root string, spec Spec) (*Built, error) {
	if spec.Paths <= 0 {
		return nil, errors.New("storetest: Paths must be positive")
	}
	if spec.StoreDir == "" {
		spec.StoreDir = store.DefaultStoreDir
		if spec.Guix {
			spec.StoreDir = "/gnu/store"
		}
	}
	if spec.RegTime == 0 {
		spec.RegTime = 1700000000
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	stateRel := "nix/var/nix"
	if spec.Guix {
		stateRel = "var/guix"
	}
	lay := store.Layout{
		StoreDir:     spec.StoreDir,
		RealStoreDir: filepath.Join(root, spec.StoreDir),
		StateDir:     filepath.Join(root, stateRel),
		Root:         root,
	}
	if _, err := os.Stat(lay.DBPath()); err == nil {
		return nil, fmt.Errorf("storetest: %s exists already", lay.DBPath())
	}
	for _, d := range []string{lay.RealStoreDir, lay.DBDir(), filepath.Join(lay.GCRootsDir(), "auto"),
		filepath.Join(lay.ProfilesDir(), "per-user", "root"), lay.TempRootsDir(), filepath.Join(root, "home")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(lay.RealStoreDir, 0o1775); err != nil {
		return nil, err
	}

	b := &builder{spec: spec, lay: lay, rng: rand.New(rand.NewPCG(spec.Seed, spec.Seed^0x5eed)),
		out: &Built{Root: root, Layout: lay, Refs: map[string][]string{}, Deriver: map[string]string{}, RootLinks: map[string]string{}}}
	b.plan()
	if !spec.DBOnly {
		if err := b.writeContents(); err != nil {
			return nil, err
		}
	}
	if err := b.writeDB(); err != nil {
		return nil, err
	}
	if err := b.writeRoots(); err != nil {
		return nil, err
	}
	if err := b.writeLeftovers(); err != nil {
		return nil, err
	}
	return b.out, nil
}

type pathInfo struct {
	path    string // full logical
	deriver string
	refs    []string
	drvText []byte // for derivations
	outName string // for outputs
	isDrv   bool
	narHash nar.Hash
	narSize int64
	regTime int64
	// contents of an output: a single file, or a tree
	single []byte
	files  []fileSpec
}

type fileSpec struct {
	rel  string
	data []byte
	exec bool
}

type builder struct {
	spec  Spec
	lay   store.Layout
	rng   *rand.Rand
	out   *Built
	infos []*pathInfo // in registration order
	deps  [][]dep
	multi []bool
	// Spec.NixOutputs: the derivations made so far by path, their
	// hashDerivationModulo memo, and the one nixDrv made last.
	drvs    map[string]*derivation.Derivation
	memo    map[string][32]byte
	pending *derivation.Derivation
}

// nixDrv is the .drv text of derivation name with Nix's output paths
// (filled into outPaths) and Nix's sorted environment.
func (b *builder) nixDrv(name string, outs []string, outPaths map[string]string, inputDrvs []string, inputOuts map[string][]string) []byte {
	if b.drvs == nil {
		b.drvs, b.memo = map[string]*derivation.Derivation{}, map[string][32]byte{}
	}
	d := &derivation.Derivation{Platform: "x86_64-linux", Builder: "/bin/sh", Args: []string{"-c", "exit 1"}}
	sorted := append([]string(nil), outs...)
	sort.Strings(sorted)
	for _, o := range sorted {
		d.Outputs = append(d.Outputs, derivation.Output{Name: o})
	}
	for _, dp := range inputDrvs {
		names := append([]string(nil), inputOuts[dp]...)
		sort.Strings(names)
		d.InputDrvs = append(d.InputDrvs, derivation.InputDrv{Path: dp, Outputs: dedup(names)})
	}
	env := map[string]string{"builder": "/bin/sh", "name": name, "system": "x86_64-linux"}
	for _, o := range outs {
		env[o] = ""
	}
	for _, k := range sortedKeys(toSet(env)) {
		d.Env = append(d.Env, derivation.EnvVar{Name: k, Value: env[k]})
	}
	load := func(p string) (*derivation.Derivation, error) {
		if d := b.drvs[p]; d != nil {
			return d, nil
		}
		return nil, fmt.Errorf("storetest: no derivation %s", p)
	}
	want, err := d.ExpectedOutputPaths(b.spec.StoreDir, name, load, b.memo)
	if err != nil {
		panic(err) // every input was made before
	}
	for i := range d.Outputs {
		d.Outputs[i].Path = want[d.Outputs[i].Name]
		outPaths[d.Outputs[i].Name] = d.Outputs[i].Path
	}
	for i := range d.Env {
		if p, ok := outPaths[d.Env[i].Name]; ok && slices.Contains(outs, d.Env[i].Name) {
			d.Env[i].Value = p
		}
	}
	b.pending = d
	return []byte(d.String())
}

func toSet(m map[string]string) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

type dep struct {
	j   int
	out string
}

// fakeHash makes a deterministic 32-character Nix base-32 hash part.
func fakeHash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return storepath.EncodeBase32(storepath.CompressHash(h[:], 20))
}

func (b *builder) randBytes(n int) []byte {
	p := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := b.rng.Uint64()
		for k := 0; k < 8 && i+k < n; k++ {
			p[i+k] = byte(v >> (8 * k))
		}
	}
	return p
}

func (b *builder) lognormSize(median int, sigma float64) int {
	return int(float64(median)*math.Exp(b.rng.NormFloat64()*sigma)) + 1
}

func (b *builder) plan() {
	s := b.spec
	n := s.Paths
	b.multi = make([]bool, n)
	for i := range b.multi {
		b.multi[i] = b.rng.Float64() < s.Multi
	}
	b.deps = make([][]dep, n)
	for i := 0; i < n; i++ {
		k := min(i, b.rng.IntN(s.MaxDeps+1))
		chosen := map[int]bool{}
		for t := 0; t < k; t++ {
			var j int
			if b.rng.Float64() < 0.5 {
				r := b.rng.Float64()
				j = int(float64(i) * r * r)
			} else {
				j = b.rng.IntN(i)
			}
			chosen[j] = true
		}
		var ds []dep
		for j := range chosen {
			o := "out"
			if b.multi[j] && b.rng.Float64() < 0.3 {
				o = "dev"
			}
			ds = append(ds, dep{j, o})
		}
		sort.Slice(ds, func(a, c int) bool { return ds[a].j < ds[c].j })
		b.deps[i] = ds
	}

	sd := s.StoreDir
	pool := make([][]byte, 64)
	for i := range pool {
		pool[i] = b.randBytes(b.lognormSize(s.FileSize, 1.0))
	}
	seed := fmt.Sprint(s.Seed)
	reg := s.RegTime
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("pkg-%d", i)
		outs := []string{"out"}
		if b.multi[i] {
			outs = append(outs, "dev")
		}
		outPaths := map[string]string{}
		for _, o := range outs {
			nm := name
			if o != "out" {
				nm += "-" + o
			}
			outPaths[o] = sd + "/" + fakeHash("output", seed, name, o) + "-" + nm
		}
		// The derivation: references are its input derivations.
		var inputDrvs []string
		inputOuts := map[string][]string{}
		for _, d := range b.deps[i] {
			dp := b.out.Drvs[d.j]
			if _, ok := inputOuts[dp]; !ok {
				inputDrvs = append(inputDrvs, dp)
			}
			inputOuts[dp] = append(inputOuts[dp], d.out)
		}
		sort.Strings(inputDrvs)
		text := aterm(name, outs, outPaths, inputDrvs, inputOuts)
		if s.NixOutputs {
			text = b.nixDrv(name, outs, outPaths, inputDrvs, inputOuts)
		}
		drvPath := storepath.MakeStorePath(sd, "text:"+strings.Join(inputDrvs, ":"), sha256.Sum256(text), name+".drv")
		if len(inputDrvs) == 0 {
			drvPath = storepath.MakeStorePath(sd, "text", sha256.Sum256(text), name+".drv")
		}
		if s.NixOutputs {
			b.drvs[drvPath] = b.pending
		}
		b.out.Drvs = append(b.out.Drvs, drvPath)
		b.out.Outputs = append(b.out.Outputs, outPaths)
		b.infos = append(b.infos, &pathInfo{path: drvPath, refs: inputDrvs, drvText: text, isDrv: true, regTime: reg})
		reg++
		for _, o := range outs {
			op := outPaths[o]
			refSet := map[string]bool{}
			for _, d := range b.deps[i] {
				if b.rng.Float64() < 0.8 {
					refSet[b.out.Outputs[d.j][d.out]] = true
				}
			}
			if o == "dev" {
				refSet[outPaths["out"]] = true
			}
			if b.rng.Float64() < 0.1 {
				refSet[op] = true
			}
			refs := sortedKeys(refSet)
			pi := &pathInfo{path: op, deriver: drvPath, refs: refs, outName: o, regTime: reg}
			reg++
			if len(refs) == 0 && b.rng.Float64() < 0.05 {
				pi.single = b.randBytes(b.lognormSize(s.FileSize, 1.0))
			} else {
				pi.files = append(pi.files, fileSpec{rel: "nix-support/deps", data: []byte(strings.Join(refs, "\n") + "\n")})
				nf := max(1, int(b.rng.ExpFloat64()*float64(s.Files)))
				for k := 0; k < nf; k++ {
					var data []byte
					if b.rng.Float64() < s.Dup {
						data = pool[b.rng.IntN(len(pool))]
					} else {
						data = b.randBytes(b.lognormSize(s.FileSize, 1.2))
					}
					sub := []string{"bin", "share", "share/doc"}[b.rng.IntN(3)]
					pi.files = append(pi.files, fileSpec{rel: fmt.Sprintf("%s/f%d", sub, k), data: data, exec: sub == "bin"})
				}
			}
			b.infos = append(b.infos, pi)
			b.out.Deriver[op] = drvPath
		}
	}
	for _, pi := range b.infos {
		b.out.Refs[pi.path] = pi.refs
		b.out.Valid = append(b.out.Valid, pi.path)
	}
	sort.Strings(b.out.Valid)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// aterm renders a derivation in Nix's ATerm syntax.
func aterm(name string, outs []string, outPaths map[string]string, inputDrvs []string, inputOuts map[string][]string) []byte {
	var sb strings.Builder
	sb.WriteString("Derive([")
	sorted := append([]string(nil), outs...)
	sort.Strings(sorted)
	for k, o := range sorted {
		if k > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "(%q,%q,\"\",\"\")", o, outPaths[o])
	}
	sb.WriteString("],[")
	for k, d := range inputDrvs {
		if k > 0 {
			sb.WriteByte(',')
		}
		names := append([]string(nil), inputOuts[d]...)
		sort.Strings(names)
		names = dedup(names)
		fmt.Fprintf(&sb, "(%q,[", d)
		for m, o := range names {
			if m > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "%q", o)
		}
		sb.WriteString("])")
	}
	sb.WriteString(`],[],"x86_64-linux","/bin/sh",["-c","exit 1"],[("builder","/bin/sh"),("name",`)
	fmt.Fprintf(&sb, "%q)", name)
	for _, o := range sorted {
		fmt.Fprintf(&sb, ",(%q,%q)", o, outPaths[o])
	}
	sb.WriteString(",(\"system\",\"x86_64-linux\")])")
	return []byte(sb.String())
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func (b *builder) real(p string) string { return b.lay.RealPath(p) }

// writeContents writes every path's files with canonical metadata and
// computes its NAR hash and size, in parallel.
func (b *builder) writeContents() error {
	work := make(chan *pathInfo)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pi := range work {
				if err := b.writePath(pi); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for _, pi := range b.infos {
		work <- pi
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (b *builder) writePath(pi *pathInfo) error {
	phys := b.real(pi.path)
	switch {
	case pi.isDrv:
		if err := writeFile(phys, pi.drvText, false); err != nil {
			return err
		}
	case pi.single != nil:
		if err := writeFile(phys, pi.single, false); err != nil {
			return err
		}
	default:
		dirs := map[string]bool{}
		for _, f := range pi.files {
			d := filepath.Join(phys, filepath.Dir(f.rel))
			if !dirs[d] {
				if err := os.MkdirAll(d, 0o755); err != nil {
					return err
				}
				dirs[d] = true
			}
			if err := writeFile(filepath.Join(phys, f.rel), f.data, f.exec); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(filepath.Join(phys, "share/doc"), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("share/doc", filepath.Join(phys, "doc")); err != nil {
			return err
		}
		if err := Canonicalise(phys); err != nil {
			return err
		}
	}
	if err := setMtime1(phys); err != nil {
		return err
	}
	h, n, err := nar.HashPath(phys)
	if err != nil {
		return err
	}
	pi.narHash, pi.narSize = h, n
	return nil
}

func writeFile(p string, data []byte, exec bool) error {
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return err
	}
	mode := os.FileMode(0o444)
	if exec {
		mode = 0o555
	}
	if err := os.Chmod(p, mode); err != nil {
		return err
	}
	return setMtime1(p)
}

func (b *builder) writeDB() error {
	schema, version := nixSchema, db.SchemaNix
	if b.spec.Guix {
		schema, version = guixSchema, db.SchemaGuix
	}
	dbDir := b.lay.DBDir()
	if err := os.WriteFile(filepath.Join(dbDir, "big-lock"), nil, 0o600); err != nil {
		return err
	}
	// Like Nix: gc-reserved-space (8 MiB) set aside for a full disk.
	if err := os.WriteFile(filepath.Join(dbDir, "reserved"), make([]byte, nixconf.DefaultGCReservedSpace), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.lay.StateDir, "gc.lock"), nil, 0o600); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", "file:"+b.lay.DBPath()+"?_foreign_keys=1&_journal_mode=WAL&_synchronous=OFF")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("storetest: schema: %w", err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ins, err := tx.PrepareContext(ctx, "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?, ?, ?, ?, ?)")
	if err != nil {
		return err
	}
	ids := make(map[string]int64, len(b.infos))
	for _, pi := range b.infos {
		h := pi.narHash
		size := pi.narSize
		if b.spec.DBOnly {
			h = sha256.Sum256([]byte(pi.path))
			size = int64(1000 + len(pi.path))
		}
		var deriver any
		if pi.deriver != "" {
			deriver = pi.deriver
		}
		res, err := ins.ExecContext(ctx, pi.path, "sha256:"+h.Hex(), pi.regTime, deriver, size)
		if err != nil {
			return fmt.Errorf("storetest: registering %s: %w", pi.path, err)
		}
		ids[pi.path], _ = res.LastInsertId()
	}
	ref, err := tx.PrepareContext(ctx, "insert into Refs (referrer, reference) values (?, ?)")
	if err != nil {
		return err
	}
	for _, pi := range b.infos {
		for _, r := range pi.refs {
			if _, err := ref.ExecContext(ctx, ids[pi.path], ids[r]); err != nil {
				return fmt.Errorf("storetest: reference %s -> %s: %w", pi.path, r, err)
			}
		}
	}
	outIns, err := tx.PrepareContext(ctx, "insert into DerivationOutputs (drv, id, path) values (?, ?, ?)")
	if err != nil {
		return err
	}
	for i, drv := range b.out.Drvs {
		for o, p := range b.out.Outputs[i] {
			if _, err := outIns.ExecContext(ctx, ids[drv], o, p); err != nil {
				return err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "pragma wal_checkpoint(TRUNCATE)"); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dbDir, "schema"), []byte(fmt.Sprint(version)), 0o644)
}

func (b *builder) writeRoots() error {
	s := b.spec
	n := s.Paths
	top := n / 2
	gc := b.lay.GCRootsDir()
	home := filepath.Join(b.out.Root, "home")
	for r := 0; r < s.Roots; r++ {
		i := top + b.rng.IntN(n-top)
		target := b.out.Outputs[i]["out"]
		if r%2 == 0 {
			link := filepath.Join(gc, fmt.Sprintf("direct-%d", r))
			if err := os.Symlink(target, link); err != nil {
				return err
			}
			b.out.DirectRoots = append(b.out.DirectRoots, target)
			b.out.RootLinks[link] = target
		} else {
			link := filepath.Join(home, fmt.Sprintf("result-%d", r))
			if err := os.Symlink(target, link); err != nil {
				return err
			}
			if err := os.Symlink(link, filepath.Join(gc, "auto", b.randHash())); err != nil {
				return err
			}
			b.out.IndirectRoots = append(b.out.IndirectRoots, target)
			b.out.RootLinks[link] = target
		}
	}
	// A stale indirect root: its target is gone.
	if err := os.Symlink(filepath.Join(home, "gone"), filepath.Join(gc, "auto", b.randHash())); err != nil {
		return err
	}
	prof := filepath.Join(b.lay.ProfilesDir(), "per-user", "root")
	for g := 1; g <= s.Generations; g++ {
		target := b.out.Outputs[top+b.rng.IntN(n-top)]["out"]
		link := filepath.Join(prof, fmt.Sprintf("profile-%d-link", g))
		if err := os.Symlink(target, link); err != nil {
			return err
		}
		b.out.ProfileRoots = append(b.out.ProfileRoots, target)
		b.out.RootLinks[link] = target
	}
	if s.Generations > 0 {
		if err := os.Symlink(fmt.Sprintf("profile-%d-link", s.Generations), filepath.Join(prof, "profile")); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) randHash() string {
	var sb strings.Builder
	for i := 0; i < 32; i++ {
		sb.WriteByte(b32chars[b.rng.IntN(32)])
	}
	return sb.String()
}

func (b *builder) writeLeftovers() error {
	for k := 0; k < b.spec.Invalid; k++ {
		name := b.randHash() + fmt.Sprintf("-leftover-%d", k)
		d := filepath.Join(b.lay.RealStoreDir, name, "lib")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "x"), b.randBytes(100), false); err != nil {
			return err
		}
		b.out.Leftovers = append(b.out.Leftovers, name)
	}
	return nil
}

// Cached builds the store for spec under os.TempDir()/name once and
// reuses it in later runs (benchmarks on 100k+ paths). It returns the
// store's layout. The store must not be modified by the caller.
func Cached(name string, spec Spec) (store.Layout, error) {
	dir := filepath.Join(os.TempDir(), name)
	if spec.StoreDir == "" {
		spec.StoreDir = store.DefaultStoreDir
	}
	lay := store.Layout{StoreDir: spec.StoreDir, RealStoreDir: filepath.Join(dir, spec.StoreDir),
		StateDir: filepath.Join(dir, "nix/var/nix"), Root: dir}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return lay, nil
	}
	os.RemoveAll(dir)
	if _, err := Build(dir, spec); err != nil {
		return store.Layout{}, err
	}
	return lay, os.WriteFile(filepath.Join(dir, "done"), nil, 0o644)
}
