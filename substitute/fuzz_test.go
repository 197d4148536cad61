package substitute

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"storekeeper/nix/nar"
	"storekeeper/nix/narinfo"
	"storekeeper/nix/storepath"
)

// memTransport serves files from a map.
type memTransport map[string][]byte

func (m memTransport) fetch(_ context.Context, rel string, max int64) ([]byte, error) {
	d, ok := m[rel]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, rel)
	}
	if int64(len(d)) > max {
		return nil, fmt.Errorf("%s: too large", rel)
	}
	return d, nil
}

func (m memTransport) open(_ context.Context, rel string) (io.ReadCloser, error) {
	d, ok := m[rel]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, rel)
	}
	return io.NopCloser(strings.NewReader(string(d))), nil
}

func (m memTransport) where(rel string) string     { return "mem://" + rel }
func (m memTransport) unreachable(error) bool      { return false }
func (m memTransport) close()                      {}
func (m memTransport) put(rel string, data []byte) { m[rel] = data }
func (m memTransport) narinfoOf(path string) string {
	return storepath.HashPart(path[len(storeDir)+1:]) + ".narinfo"
}

// FuzzNarinfoLookup: whatever a cache's narinfo holds, Lookup never
// panics, and an offer it makes is for the wanted path, with the wanted
// hash and size, a safe URL, a known compression and a reason to trust
// it; and reading it never yields more than NarSize bytes.
func FuzzNarinfoLookup(f *testing.F) {
	narData := fileNAR(f, "hello\n")
	h := nar.Hash(sha256.Sum256(narData))
	path := opaquePath("fuzzed")
	good := &narinfo.NarInfo{StorePath: path, URL: "nar/x.nar", Compression: "none", NarHash: h, NarSize: uint64(len(narData)), FileSize: uint64(len(narData))}
	good.Sigs = []string{testKey.Sign(good.Fingerprint())}
	f.Add([]byte(good.String()))
	caPath := storepath.MakeFixedOutputPathRecursive(storeDir, h, "fuzzed", nil, false)
	f.Add([]byte(strings.Replace(good.String(), path, caPath, 1) + "CA: fixed:r:sha256:" + h.Base32() + "\n"))
	f.Add([]byte(strings.Replace(good.String(), "nar/x.nar", "../x.nar", 1)))
	f.Add([]byte(strings.Replace(good.String(), "Compression: none", "Compression: xz", 1)))
	f.Add([]byte("StorePath: " + path + "\nURL: nar/x.nar\nNarHash: " + h.String() + "\nNarSize: 3\n"))

	want := Want{Path: path, NarHash: h, NarSize: uint64(len(narData))}
	wantCA := Want{Path: caPath, NarHash: h, NarSize: uint64(len(narData))}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := memTransport{"nix-cache-info": []byte("StoreDir: /nix/store\n")}
		for _, rel := range []string{"nar/x.nar", "x.nar", "nar/y.nar"} {
			m.put(rel, append(append([]byte{}, narData...), "trailing"...))
		}
		m.put(m.narinfoOf(path), data)
		m.put(m.narinfoOf(caPath), data)
		c := &cache{url: "mem://", o: testOptions().withDefaults(), t: m, prio: -1}
		for _, w := range []Want{want, wantCA} {
			o, err := c.Lookup(context.Background(), w)
			if err != nil {
				if errors.Is(err, ErrNotFound) || errors.Is(err, ErrBadSource) {
					t.Fatalf("a bad narinfo gave %v", err)
				}
				continue
			}
			ni := o.handle.(*narinfo.NarInfo)
			if o.Path != w.Path || ni.StorePath != w.Path || o.NarHash != w.NarHash || o.NarSize != w.NarSize || safeRel(ni.URL) != nil || o.Trust == "" {
				t.Fatalf("offer %+v from\n%s", o, data)
			}
			r, err := c.Open(context.Background(), o)
			if err != nil {
				continue
			}
			got, _ := io.ReadAll(r)
			r.Close()
			if uint64(len(got)) > w.NarSize {
				t.Fatalf("read %d bytes, NarSize %d", len(got), w.NarSize)
			}
		}
	})
}
