package substitute

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"storekeeper/nix/nar"
	"storekeeper/nix/narinfo"
	"storekeeper/nix/signature"
	"storekeeper/nix/storepath"
)

const storeDir = "/nix/store"

// testKey is a signing key made once for the package's tests.
var testKey = func() signature.SecretKey {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(err)
	}
	return signature.SecretKey{Name: "test-cache-1", Key: priv}
}()

func trustedKeys(ks ...signature.SecretKey) signature.PublicKeys {
	pk := signature.PublicKeys{}
	for _, k := range ks {
		pk[k.Name] = k.Public().Key
	}
	return pk
}

// fixture is a binary cache in a temporary directory, built in Go the
// way nix copy --to file://... writes one.
type fixture struct {
	t   testing.TB
	dir string
}

// entry is a path in a fixture.
type entry struct {
	want Want
	ni   *narinfo.NarInfo
	nar  []byte
	file []byte // the compressed NAR file as written
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, dir: dir}
	f.write("nix-cache-info", []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"))
	return f
}

func (f *fixture) write(rel string, data []byte) {
	f.t.Helper()
	p := filepath.Join(f.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// fileNAR is the NAR of a single regular file.
func fileNAR(t testing.TB, contents string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	if err := w.WriteHeader(&nar.Header{Type: nar.FileRegular, Size: int64(len(contents))}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, contents); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func compress(t testing.TB, method string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	var err error
	switch method {
	case "none":
		return data
	case "xz":
		w, err = xz.NewWriter(&b)
	case "zstd":
		w, err = zstd.NewWriter(&b)
	case "br":
		w = brotli.NewWriter(&b)
	default:
		t.Fatalf("no encoder for %q", method)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// opaquePath is a store path that is not content-addressed.
func opaquePath(name string) string {
	return storepath.MakeStorePath(storeDir, "output:out", sha256.Sum256([]byte("drv of "+name)), name)
}

// add puts a path holding one file with contents into the cache,
// compressed by method and signed by testKey; mutate, when not nil,
// changes the narinfo before it is signed and written (sign=false: not
// signed at all).
func (f *fixture) add(name, contents, method string, refs []string, mutate func(*narinfo.NarInfo), sign bool) *entry {
	f.t.Helper()
	return f.addPath(opaquePath(name), fileNAR(f.t, contents), method, refs, mutate, sign)
}

func (f *fixture) addPath(path string, narData []byte, method string, refs []string, mutate func(*narinfo.NarInfo), sign bool) *entry {
	f.t.Helper()
	file := compress(f.t, method, narData)
	fh := nar.Hash(sha256.Sum256(file))
	ext := map[string]string{"none": "", "xz": ".xz", "zstd": ".zst", "br": ".br"}[method]
	ni := &narinfo.NarInfo{
		StorePath:   path,
		URL:         "nar/" + fh.Base32() + ".nar" + ext,
		Compression: method,
		FileHash:    &fh,
		FileSize:    uint64(len(file)),
		NarHash:     nar.Hash(sha256.Sum256(narData)),
		NarSize:     uint64(len(narData)),
	}
	for _, r := range refs {
		ni.References = append(ni.References, filepath.Base(r))
	}
	want := Want{Path: path, NarHash: ni.NarHash, NarSize: ni.NarSize, References: ni.ReferencePaths()}
	if mutate != nil {
		mutate(ni)
	}
	if sign {
		ni.Sigs = append(ni.Sigs, testKey.Sign(ni.Fingerprint()))
	}
	f.write(ni.URL, file)
	f.write(storepath.HashPart(filepath.Base(path))+".narinfo", []byte(ni.String()))
	return &entry{want: want, ni: ni, nar: narData, file: file}
}

func (f *fixture) url() string { return "file://" + f.dir }

func testOptions() Options {
	return Options{StoreDir: storeDir, TrustedKeys: trustedKeys(testKey), CheckSigs: true,
		StallTimeout: 2 * time.Second, RetryDelay: 5 * time.Millisecond}
}

func mustNew(t *testing.T, u string, o Options) Source {
	t.Helper()
	s, err := New(u, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close([]Source{s}) })
	return s
}

// readAll opens the offer and reads it to the end.
func readAll(ctx context.Context, s Source, o *Offer) ([]byte, error) {
	r, err := s.Open(ctx, o)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// server serves a fixture's directory over HTTP on 127.0.0.1, counting
// requests per path and new connections, with faults injected per
// request by hook (nil: none): hook returns true when it answered.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	requests map[string]int
	conns    atomic.Int64
	hook     func(w http.ResponseWriter, r *http.Request, n int) bool
}

func newServer(t testing.TB, dir string, hook func(w http.ResponseWriter, r *http.Request, n int) bool) *server {
	t.Helper()
	s := &server{requests: map[string]int{}, hook: hook}
	fsrv := http.FileServer(http.Dir(dir))
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests[r.URL.Path]++
		n := s.requests[r.URL.Path]
		s.mu.Unlock()
		if s.hook != nil && s.hook(w, r, n) {
			return
		}
		fsrv.ServeHTTP(w, r)
	}))
	s.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *server) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[path]
}

func narinfoPath(p string) string {
	return "/" + storepath.HashPart(filepath.Base(p)) + ".narinfo"
}

// hijackClose drops the connection without an answer (a reset before
// the headers).
func hijackClose(t *testing.T, w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		t.Error("no hijacker")
		return
	}
	c, _, err := hj.Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST, not FIN
	}
	c.Close()
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }
