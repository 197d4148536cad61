package substitute

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"storekeeper/nix/nar"
	"storekeeper/store/storetest"
)

// wantOf describes the path p of the built store as its own files are:
// what a database that agrees with them says.
func wantOf(t *testing.T, b *storetest.Built, p string) Want {
	t.Helper()
	h, n, err := nar.HashPath(b.Layout.RealPath(p))
	if err != nil {
		t.Fatal(err)
	}
	return Want{Path: p, NarHash: h, NarSize: uint64(n), References: b.Refs[p]}
}

func TestLocalStore(t *testing.T) {
	b := storetest.MustBuild(t, storetest.DefaultSpec())
	// A path that is itself a symlink (to something outside the store),
	// registered there with its hash, as Nix registers one.
	link := opaquePath("link")
	if err := os.Symlink("/etc", b.Layout.RealPath(link)); err != nil {
		t.Fatal(err)
	}
	lh, ln, err := nar.HashPath(b.Layout.RealPath(link))
	if err != nil {
		t.Fatal(err)
	}
	st := storetest.Open(t, b.Layout)
	if _, err := st.DB.SQL.Exec("insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1, ?)", link, "sha256:"+lh.Hex(), ln); err != nil {
		t.Fatal(err)
	}
	st.Close()

	// A directory path (storetest puts a symlink doc -> share/doc in each).
	var dir string
	for _, p := range b.Valid {
		if fi, err := os.Lstat(b.Layout.RealPath(p)); err == nil && fi.IsDir() {
			dir = p
			break
		}
	}
	if dir == "" {
		t.Fatal("no directory path in the test store")
	}

	o := testOptions()
	o.RealStoreDir = filepath.Join(t.TempDir(), "ours") // not the other store
	for _, u := range []string{"local?root=" + b.Root, b.Root, b.Root + "?priority=7&trusted=1"} {
		t.Run(u, func(t *testing.T) {
			s := mustNew(t, u, o)
			ctx := context.Background()
			if err := s.Init(ctx); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{dir, link} {
				w := wantOf(t, b, p)
				off, err := s.Lookup(ctx, w)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if off.Trust != "the other store's database" || off.NarHash != w.NarHash || off.NarSize != w.NarSize ||
					off.DownloadSize != w.NarSize || off.Compression != "none" || off.Where != b.Layout.RealPath(p) {
					t.Errorf("%s: offer %+v", p, off)
				}
				data, err := readAll(ctx, s, off)
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if nar.Hash(sha256.Sum256(data)) != w.NarHash {
					t.Errorf("%s: the NAR read does not hash to the row's hash", p)
				}
				// Symlinks are dumped as symlinks, never followed.
				nr := nar.NewReader(bytes.NewReader(data))
				links := 0
				for {
					h, err := nr.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					if h.Type == nar.FileSymlink {
						links++
					}
				}
				if links == 0 {
					t.Errorf("%s: no symlink in its NAR", p)
				}
			}
			if strings.Contains(u, "priority=7") {
				if p := s.Priority(ctx); p != 7 {
					t.Errorf("Priority = %d, want 7", p)
				}
			} else if p := s.Priority(ctx); p != 0 {
				t.Errorf("Priority = %d, want 0", p)
			}
		})
	}
}

func TestLocalStoreRefusals(t *testing.T) {
	b := storetest.MustBuild(t, storetest.DefaultSpec())
	o := testOptions()
	o.RealStoreDir = filepath.Join(t.TempDir(), "ours")
	s := mustNew(t, "local?root="+b.Root, o)
	ctx := context.Background()
	p := b.Valid[0]
	w := wantOf(t, b, p)

	bad := w
	bad.NarHash = nar.Hash(sha256.Sum256([]byte("x")))
	if _, err := s.Lookup(ctx, bad); !errors.Is(err, ErrMismatch) || !contains(err, w.NarHash.String()) || !contains(err, bad.NarHash.String()) {
		t.Errorf("another hash: %v, want ErrMismatch naming both", err)
	}
	bad = w
	bad.NarSize++
	if _, err := s.Lookup(ctx, bad); !errors.Is(err, ErrMismatch) {
		t.Errorf("another size: %v, want ErrMismatch", err)
	}
	if _, err := s.Lookup(ctx, Want{Path: opaquePath("absent")}); !errors.Is(err, ErrNotFound) {
		t.Errorf("a path not there: %v, want ErrNotFound", err)
	}
	// Registered there but gone from its disk.
	gone := b.Valid[1]
	wg := wantOf(t, b, gone)
	if err := os.RemoveAll(b.Layout.RealPath(gone)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, wg); !errors.Is(err, ErrNotFound) || !contains(err, "missing") {
		t.Errorf("a path missing on its disk: %v, want ErrNotFound", err)
	}

	// The store being repaired itself, however named.
	o2 := testOptions()
	o2.RealStoreDir = b.Layout.RealStoreDir
	for _, u := range []string{"local?root=" + b.Root, b.Root + "/", b.Root + "/../" + filepath.Base(b.Root)} {
		if err := mustNew(t, u, o2).Init(ctx); !errors.Is(err, ErrBadSource) || !contains(err, "the store being repaired") {
			t.Errorf("%s as a source for itself: %v", u, err)
		}
	}
	// No store there.
	err := mustNew(t, "local?root="+t.TempDir(), o).Init(ctx)
	if !errors.Is(err, ErrBadSource) {
		t.Errorf("a root without a store: %v", err)
	}
	if _, err2 := mustNew(t, "local?root=/nonexistent-root", o).Lookup(ctx, w); !errors.Is(err2, ErrBadSource) {
		t.Errorf("Lookup in a missing store: %v", err2)
	}
}

// TestLocalStoreOpenClose: closing the reader early, or cancelling,
// stops the dump; closing the source fails later look-ups.
func TestLocalStoreOpenClose(t *testing.T) {
	b := storetest.MustBuild(t, storetest.DefaultSpec())
	o := testOptions()
	o.RealStoreDir = filepath.Join(t.TempDir(), "ours")
	s := mustNew(t, b.Root, o)
	ctx, cancel := context.WithCancel(context.Background())
	var big string
	var bigSize uint64
	for _, p := range b.Valid {
		if w := wantOf(t, b, p); w.NarSize > bigSize {
			big, bigSize = p, w.NarSize
		}
	}
	off, err := s.Lookup(ctx, wantOf(t, b, big))
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Open(ctx, off)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(r); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v", err)
	}
	r.Close()
	if err := Close([]Source{s}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(context.Background(), wantOf(t, b, big)); !errors.Is(err, ErrBadSource) {
		t.Errorf("Lookup after Close: %v", err)
	}
}
