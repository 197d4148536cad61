package tests

// Shared helpers of the repair tests (#23): signed binary caches written
// by real Nix (`nix copy --to file://...?compression=C&secret-key=SK`),
// the same cache served over HTTP on 127.0.0.1 with faults on demand,
// damage done the way ../shared/bench/compare.py's damage() does it, and
// snapshots of a path's tree (bytes and inodes) and of the database, to
// check what a failed repair must leave as it was.
//
// The namespace runner (nsScript) unshares only the mount namespace, so a
// storekeeper or nix-store run in it reaches a server this test process
// listens on at 127.0.0.1.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"storekeeper/nix/narinfo"
	"storekeeper/nix/signature"
)

// binCache is a signed binary cache written by real Nix.
type binCache struct {
	Dir           string // the cache's directory (nix-cache-info, *.narinfo, nar/)
	Compression   string // xz, zstd or none
	PublicKey     string // "NAME:BASE64", for trusted-public-keys
	SecretKeyFile string // what `nix copy` signed with
	Paths         []string
}

// URL is the cache as a file:// substituter.
func (c *binCache) URL() string { return "file://" + c.Dir }

// cacheKey makes an ed25519 key pair with nix-store
// --generate-binary-cache-key under dir; it returns the secret key's
// file and the public key.
func cacheKey(t testing.TB, dir, name string) (secretFile, public string) {
	t.Helper()
	sec, pub := filepath.Join(dir, name+".sec"), filepath.Join(dir, name+".pub")
	if out, err := exec.Command("nix-store", "--generate-binary-cache-key", name, sec, pub).CombinedOutput(); err != nil {
		t.Fatalf("nix-store --generate-binary-cache-key: %v\n%s", err, out)
	}
	return sec, strings.TrimSpace(readString(t, pub))
}

// makeBinCache writes a binary cache of paths (and their closure, as nix
// copy always copies) of the store under root with real Nix, compressed
// with compression (xz, zstd, none) and signed by a new key named
// "repair-test-<compression>-1".
func makeBinCache(t testing.TB, root, compression string, paths []string) *binCache {
	t.Helper()
	work := t.TempDir()
	sec, pub := cacheKey(t, work, "repair-test-"+compression+"-1")
	c := &binCache{Dir: filepath.Join(work, "cache"), Compression: compression, PublicKey: pub, SecretKeyFile: sec, Paths: paths}
	to := fmt.Sprintf("file://%s?compression=%s&secret-key=%s", c.Dir, compression, sec)
	cmd := nsScript(root, `to=$1; shift; exec nix --extra-experimental-features nix-command copy --to "$to" "$@"`, append([]string{to}, paths...)...)
	cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix copy --to %s: %v\n%s", to, err, tail(string(out), 3000))
	}
	return c
}

// clone copies the cache (keys shared) into a new directory, for a test
// that alters it.
func (c *binCache) clone(t testing.TB) *binCache {
	t.Helper()
	d := *c
	d.Dir = filepath.Join(t.TempDir(), "cache")
	if out, err := exec.Command("cp", "-a", c.Dir, d.Dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return &d
}

// narInfoFile is where the cache keeps path's narinfo.
func (c *binCache) narInfoFile(path string) string {
	base := filepath.Base(path)
	return filepath.Join(c.Dir, base[:32]+".narinfo")
}

// narInfo reads and parses path's narinfo.
func (c *binCache) narInfo(t testing.TB, path string) *narinfo.NarInfo {
	t.Helper()
	data, err := os.ReadFile(c.narInfoFile(path))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(data, "/nix/store")
	if err != nil {
		t.Fatalf("%s: %v", c.narInfoFile(path), err)
	}
	return ni
}

// narFile is the file of path's (compressed) NAR.
func (c *binCache) narFile(t testing.TB, path string) string {
	t.Helper()
	return filepath.Join(c.Dir, c.narInfo(t, path).URL)
}

// secretKey reads the cache's secret key.
func (c *binCache) secretKey(t testing.TB) signature.SecretKey {
	t.Helper()
	sk, err := signature.ParseSecretKey(readString(t, c.SecretKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

// writeNarInfo writes ni as path's narinfo; with resign its signatures
// are replaced by one of the cache's key over ni's fingerprint (so that
// only what the test changed is wrong), otherwise they are kept as they
// are.
func (c *binCache) writeNarInfo(t testing.TB, ni *narinfo.NarInfo, resign bool) {
	t.Helper()
	if resign {
		ni.Sigs = []string{c.secretKey(t).Sign(ni.Fingerprint())}
	}
	if err := os.WriteFile(c.narInfoFile(ni.StorePath), []byte(ni.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// editNarInfo reads path's narinfo, lets edit change it and writes it
// back (see writeNarInfo for resign).
func (c *binCache) editNarInfo(t testing.TB, path string, resign bool, edit func(*narinfo.NarInfo)) {
	t.Helper()
	ni := c.narInfo(t, path)
	edit(ni)
	c.writeNarInfo(t, ni, resign)
}

// cacheServer serves a cache directory over HTTP on 127.0.0.1 (an
// httptest server in the test process), with faults a test switches on
// per request path. It counts the requests it answered.
type cacheServer struct {
	*httptest.Server
	dir      string
	mu       sync.Mutex
	faults   []*fault
	requests atomic.Int64
	stop     chan struct{} // closed when the server shuts down (ends hangs)
}

// faultKind is how a cacheServer misbehaves.
type faultKind int

const (
	faultDelay   faultKind = iota // wait Delay, then answer normally
	faultHang                     // never answer (until the client gives up or the server closes)
	fault500                      // answer 500 Internal Server Error
	faultReset                    // reset the connection (TCP RST) without answering
	faultRewrite                  // answer 200 with Body instead of the file
	fault404                      // answer 404
	faultPartial                  // send the headers with the whole file's length, then only Body's bytes and close
)

// fault is one misbehaviour: requests whose URL path has the suffix Match
// ("" every request) get it, the first Times of them (0: all).
type fault struct {
	Match string
	Kind  faultKind
	Times int
	Delay time.Duration
	Body  []byte
	hits  int
}

// serveCache serves dir on 127.0.0.1 until the test ends.
func serveCache(t testing.TB, dir string) *cacheServer {
	t.Helper()
	s := &cacheServer{dir: dir, stop: make(chan struct{})}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.Start()
	if !strings.HasPrefix(s.URL, "http://127.0.0.1:") {
		t.Fatalf("test server listens on %s, not 127.0.0.1", s.URL)
	}
	t.Cleanup(func() {
		close(s.stop)
		s.CloseClientConnections()
		s.Close()
	})
	return s
}

// fail adds a fault.
func (s *cacheServer) fail(f fault) {
	s.mu.Lock()
	s.faults = append(s.faults, &f)
	s.mu.Unlock()
}

// clearFaults removes every fault.
func (s *cacheServer) clearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// faultFor returns the fault r gets, nil if none, counting it.
func (s *cacheServer) faultFor(r *http.Request) *fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.faults {
		if strings.HasSuffix(r.URL.Path, f.Match) && (f.Times == 0 || f.hits < f.Times) {
			f.hits++
			c := *f
			return &c
		}
	}
	return nil
}

func (s *cacheServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if f := s.faultFor(r); f != nil {
		switch f.Kind {
		case faultDelay:
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			case <-s.stop:
				return
			}
		case faultHang:
			select {
			case <-r.Context().Done():
			case <-s.stop:
			}
			return
		case fault500:
			http.Error(w, "injected failure", http.StatusInternalServerError)
			return
		case fault404:
			http.NotFound(w, r)
			return
		case faultReset:
			resetConn(w)
			return
		case faultRewrite:
			w.Header().Set("Content-Length", fmt.Sprint(len(f.Body)))
			w.Write(f.Body)
			return
		case faultPartial:
			fi, err := os.Stat(s.file(r))
			if err != nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Length", fmt.Sprint(fi.Size()))
			w.WriteHeader(http.StatusOK)
			w.Write(f.Body)
			if fl, ok := w.(http.Flusher); ok {
				fl.Flush()
			}
			resetConn(w)
			return
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// Only regular files directly under the cache (and nar/), never
	// through a symlink or "..".
	p := s.file(r)
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || strings.Contains(r.URL.Path, "..") {
		http.NotFound(w, r)
		return
	}
	http.ServeFile(w, r, p)
}

// file is the cache file r asks for.
func (s *cacheServer) file(r *http.Request) string {
	return filepath.Join(s.dir, filepath.FromSlash(filepath.Clean("/"+r.URL.Path)))
}

// resetConn closes w's connection with a TCP RST (linger 0), answering
// nothing more.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("cacheServer: cannot hijack the connection")
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// closedPort returns a 127.0.0.1 URL on which nothing listens (a port
// just bound and released).
func closedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// damageFlip flips the first byte of the first regular file (in sorted
// order) of the store path p under root, as compare.py's damage() does,
// and returns the file changed (physical path); "" when p has no regular
// file (a lone symlink), then nothing changed.
func damageFlip(t testing.TB, root, p string) string {
	t.Helper()
	var files []string
	filepath.WalkDir(filepath.Join(root, p), func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, q)
		}
		return nil
	})
	if len(files) == 0 {
		return ""
	}
	sort.Strings(files)
	f := files[0]
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		b = []byte{0x41}
	} else {
		b[0] ^= 0xff
	}
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f, 0o444); err != nil {
		t.Fatal(err)
	}
	return f
}

// damageRemove removes the store path p under root from disk (its row
// stays), as compare.py's damage() does.
func damageRemove(t testing.TB, root, p string) {
	t.Helper()
	phys := filepath.Join(root, p)
	chmodWalk(phys, "u+w")
	if err := os.RemoveAll(phys); err != nil {
		t.Fatal(err)
	}
}

// damageLikeCompare damages victims as compare.py's damage() does: a
// flipped byte in three of four (the first file, in sorted order), the
// fourth (and any without a regular file) removed from disk. It returns
// the flipped paths with their changed file, and the removed paths.
func damageLikeCompare(t testing.TB, root string, victims []string) (flipped map[string]string, removed []string) {
	t.Helper()
	flipped = map[string]string{}
	for i, p := range victims {
		if i%4 != 3 {
			if f := damageFlip(t, root, p); f != "" {
				flipped[p] = f
				continue
			}
		}
		damageRemove(t, root, p)
		removed = append(removed, p)
	}
	return flipped, removed
}

// pathState describes the store path p under root exactly as it is on
// disk: every entry's name, type, mode, inode, size, mtime and the
// SHA-256 of its contents (a symlink's target); "missing" when p is not
// there. A repair that fails must leave it equal.
func pathState(t testing.TB, root, p string) string {
	t.Helper()
	phys := filepath.Join(root, p)
	if _, err := os.Lstat(phys); os.IsNotExist(err) {
		return "missing"
	}
	var sb strings.Builder
	err := filepath.WalkDir(phys, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(q, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(phys, q)
		sum := ""
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(q)
			if err != nil {
				return err
			}
			h := sha256.Sum256(b)
			sum = hex.EncodeToString(h[:])
		case syscall.S_IFLNK:
			target, err := os.Readlink(q)
			if err != nil {
				return err
			}
			sum = "-> " + target
		}
		fmt.Fprintf(&sb, "%s mode=%o ino=%d size=%d mtime=%d nlink=%d uid=%d %s\n", rel, st.Mode, st.Ino, st.Size, st.Mtim.Sec, st.Nlink, st.Uid, sum)
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", phys, err)
	}
	return sb.String()
}

// dbSnapshot returns the store database's ValidPaths rows (every column
// but id) and Refs (as referrer and reference paths), sorted, as text:
// repair must leave it equal (it changes files, never rows).
func dbSnapshot(t testing.TB, root string) string {
	t.Helper()
	return strings.Join(queryLines(t, root,
		`select path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths`,
		`select 'ref' as ref, a.path as referrer, b.path as reference from Refs r join ValidPaths a on a.id = r.referrer join ValidPaths b on b.id = r.reference`,
	), "\n")
}

// repairVictims picks n output paths (no .drv) of ns, spread over the
// store, deterministically.
func repairVictims(ns *nixStore, n int) []string {
	var outs []string
	for _, m := range ns.Outputs {
		for _, p := range m {
			outs = append(outs, p)
		}
	}
	sort.Strings(outs)
	if n >= len(outs) {
		return outs
	}
	step := len(outs) / n
	victims := make([]string, 0, n)
	for i := 0; i < n; i++ {
		victims = append(victims, outs[i*step])
	}
	return victims
}

// nixCacheEnv points Nix's narinfo disk cache ($XDG_CACHE_HOME/nix) of
// cmd at a new empty directory, so that no run sees another's look-ups.
func nixCacheEnv(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+t.TempDir())
}

// readAllString reads a whole file or fails the test.
func readAllString(t testing.TB, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRepairCacheHelpers checks the helpers themselves against real
// Nix: the cache nix copy wrote has a narinfo per path that parses and
// carries a signature by its key, a NAR file of the right compression;
// the server serves its files and its faults happen; damage shows in
// pathState and nix-store --verify, and not in dbSnapshot.
func TestRepairCacheHelpers(t *testing.T) {
	ns := buildNixStore(t, nixSpec{Paths: 12, Seed: 231})
	victims := repairVictims(ns, 4)
	keys := func(c *binCache) signature.PublicKeys {
		k, err := signature.ParsePublicKeys([]string{c.PublicKey})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	for _, comp := range []string{"xz", "zstd", "none"} {
		c := makeBinCache(t, ns.Root, comp, victims)
		for _, p := range victims {
			ni := c.narInfo(t, p)
			if ni.StorePath != p || ni.Compression != comp || ni.ValidSigs(keys(c)) != 1 {
				t.Errorf("%s cache: narinfo of %s: path %s, compression %s, %d valid signatures", comp, p, ni.StorePath, ni.Compression, ni.ValidSigs(keys(c)))
			}
			if _, err := os.Stat(c.narFile(t, p)); err != nil {
				t.Errorf("%s cache: %v", comp, err)
			}
		}
		if !strings.Contains(readString(t, filepath.Join(c.Dir, "nix-cache-info")), "StoreDir: /nix/store") {
			t.Errorf("%s cache: nix-cache-info has no StoreDir: /nix/store", comp)
		}
		if comp != "none" {
			continue
		}
		// A re-signed edit verifies; an edit that is not re-signed does not.
		d := c.clone(t)
		d.editNarInfo(t, victims[0], true, func(ni *narinfo.NarInfo) { ni.NarSize++ })
		if d.narInfo(t, victims[0]).ValidSigs(keys(d)) != 1 {
			t.Errorf("re-signed narinfo does not verify")
		}
		d.editNarInfo(t, victims[1], false, func(ni *narinfo.NarInfo) { ni.NarSize++ })
		if d.narInfo(t, victims[1]).ValidSigs(keys(d)) != 0 {
			t.Errorf("edited narinfo still verifies")
		}

		// The server: files, 404, faults.
		srv := serveCache(t, c.Dir)
		get := func(path string) (int, string, error) {
			// A new connection each time: on a reused one Go's
			// transport retries a reset GET by itself.
			cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := cl.Get(srv.URL + path)
			if err != nil {
				return 0, "", err
			}
			defer resp.Body.Close()
			return resp.StatusCode, readAllString(t, resp.Body), nil
		}
		info := "/" + filepath.Base(c.narInfoFile(victims[0]))
		if code, body, err := get(info); err != nil || code != 200 || body != readString(t, c.narInfoFile(victims[0])) {
			t.Errorf("GET %s: %d %v", info, code, err)
		}
		if code, _, _ := get("/0000000000000000000000000000000a.narinfo"); code != 404 {
			t.Errorf("GET of a missing narinfo: %d", code)
		}
		srv.fail(fault{Match: ".narinfo", Kind: fault500, Times: 1})
		if code, _, _ := get(info); code != 500 {
			t.Errorf("500 fault: %d", code)
		}
		if code, _, _ := get(info); code != 200 {
			t.Errorf("after the one 500: %d", code)
		}
		srv.fail(fault{Match: "nix-cache-info", Kind: faultReset, Times: 1})
		if _, _, err := get("/nix-cache-info"); err == nil {
			t.Errorf("reset fault: no error")
		}
		srv.fail(fault{Match: "nix-cache-info", Kind: faultHang, Times: 1})
		if _, _, err := get("/nix-cache-info"); err == nil {
			t.Errorf("hang fault: answered")
		}
		srv.fail(fault{Match: "nix-cache-info", Kind: faultRewrite, Times: 1, Body: []byte("StoreDir: /gnu/store\n")})
		if _, body, _ := get("/nix-cache-info"); body != "StoreDir: /gnu/store\n" {
			t.Errorf("rewrite fault: %q", body)
		}
		if code, _, _ := get("/../" + filepath.Base(c.SecretKeyFile)); code == 200 {
			t.Errorf("the server serves files outside the cache")
		}
		if _, _, err := get("/nix-cache-info"); err != nil {
			t.Errorf("after the faults: %v", err)
		}
		if _, err := http.Get(closedPort(t) + "/nix-cache-info"); err == nil {
			t.Errorf("closedPort answered")
		}
	}

	// Damage: pathState and nixVerify see it, dbSnapshot does not.
	db0 := dbSnapshot(t, ns.Root)
	st0 := pathState(t, ns.Root, victims[0])
	flipped, removed := damageLikeCompare(t, ns.Root, victims)
	if len(flipped) != 3 || len(removed) != 1 || removed[0] != victims[3] {
		t.Errorf("damageLikeCompare: flipped %v, removed %v", flipped, removed)
	}
	if pathState(t, ns.Root, victims[0]) == st0 || pathState(t, ns.Root, victims[3]) != "missing" {
		t.Errorf("pathState does not show the damage")
	}
	if dbSnapshot(t, ns.Root) != db0 || !strings.Contains(db0, victims[0]) || !strings.Contains(db0, "ref=ref") {
		t.Errorf("dbSnapshot changed or lacks rows:\n%s", tail(db0, 500))
	}
	if out, _ := nsScript(ns.Root, `exec nix-store --verify --check-contents`).CombinedOutput(); !strings.Contains(string(out), "modified") {
		t.Errorf("nix-store --verify does not see the damage: %s", out)
	}
}

// repairFixture is one store built by real Nix with signed caches of
// some of its paths, built once per test file and copied per case.
type repairFixture struct {
	ns      *nixStore
	victims []string             // the paths the cases damage
	caches  map[string]*binCache // by compression
	db      string               // dbSnapshot of the intact store
}

// newRepairFixture builds the store of spec, picks n victims and writes a
// cache of them (and their closure) in each compression.
func newRepairFixture(t testing.TB, spec nixSpec, n int, compressions ...string) *repairFixture {
	t.Helper()
	ns := buildNixStore(t, spec)
	f := &repairFixture{ns: ns, victims: repairVictims(ns, n), caches: map[string]*binCache{}}
	for _, c := range compressions {
		f.caches[c] = makeBinCache(t, ns.Root, c, f.victims)
	}
	f.db = dbSnapshot(t, ns.Root)
	return f
}

// damaged returns a copy of the intact store with the victims damaged as
// compare.py damages them (see damageLikeCompare).
func (f *repairFixture) damaged(t testing.TB) (root string, flipped map[string]string, removed []string) {
	t.Helper()
	root = copyStore(t, f.ns.Root)
	flipped, removed = damageLikeCompare(t, root, f.victims)
	return root, flipped, removed
}

// trustArgs are the --option flags that make c the only substituter and
// its key the only trusted one.
func trustArgs(url string, c *binCache) []string {
	return []string{"--option", "substituters=" + url, "--option", "trusted-public-keys=" + c.PublicKey}
}

// repairResultJSON is `storekeeper --json repair`'s result.
type repairResultJSON struct {
	DryRun bool `json:"dry_run"`
	Paths  []struct {
		Path       string `json:"path"`
		Repaired   bool   `json:"repaired"`
		HasSource  bool   `json:"has_source"`
		Missing    bool   `json:"missing"`
		From       string `json:"from"`
		Trust      string `json:"trust"`
		Downloaded uint64 `json:"downloaded_bytes"`
		NarSize    uint64 `json:"nar_bytes"`
		Error      *struct {
			Kind    string `json:"kind"`
			Message string `json:"message"`
		} `json:"error"`
		Tried []struct {
			Source string `json:"source"`
			Kind   string `json:"kind"`
			Error  string `json:"error"`
		} `json:"tried"`
		Files []string `json:"files"`
	} `json:"paths"`
	PathsRequested  int     `json:"paths_requested"`
	PathsRepaired   int     `json:"paths_repaired"`
	PathsFailed     int     `json:"paths_failed"`
	PathsAvailable  int     `json:"paths_available"`
	BytesDownloaded uint64  `json:"bytes_downloaded"`
	NarBytes        uint64  `json:"nar_bytes"`
	Audit           any     `json:"audit"`
	ElapsedSeconds  float64 `json:"elapsed_seconds"`
}
