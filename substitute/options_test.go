package substitute

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"storekeeper/nix/nixconf"
	"storekeeper/nix/signature"
	"storekeeper/report"
)

func TestNewURLForms(t *testing.T) {
	var log report.Log
	o := testOptions()
	o.Printer = &log
	for _, c := range []struct {
		url, kind, name string
		prio            int // -1: not given
	}{
		{"file:///srv/cache", "cache", "file:///srv/cache", -1},
		{"file:///srv/cache/", "cache", "file:///srv/cache", -1},
		{"file:///srv/cache?priority=10&trusted=1&compression=zstd", "cache", "file:///srv/cache", 10},
		{"http://127.0.0.1:8080/cache/", "cache", "http://127.0.0.1:8080/cache", -1},
		{"https://cache.nixos.org", "cache", "https://cache.nixos.org", -1},
		{"https://cache.nixos.org/?priority=41&want-mass-query=true", "cache", "https://cache.nixos.org", 41},
		{"https://cache.example.org/?frobnicate=1", "cache", "https://cache.example.org", -1},
		{"local?root=/mnt", "local", "local?root=/mnt", 0},
		{"/mnt", "local", "/mnt", 0},
		{"/mnt?priority=3", "local", "/mnt?priority=3", 3},
		{"./backup", "local", "./backup", 0},
	} {
		s, err := New(c.url, o)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if s.URL() != c.name {
			t.Errorf("%s: URL() = %q, want %q", c.url, s.URL(), c.name)
		}
		switch v := s.(type) {
		case *cache:
			if c.kind != "cache" || v.prio != c.prio {
				t.Errorf("%s: a cache with priority %d, want a %s with %d", c.url, v.prio, c.kind, c.prio)
			}
			if strings.HasPrefix(c.url, "file:") {
				if ft, ok := v.t.(*fileTransport); !ok || ft.root != "/srv/cache" {
					t.Errorf("%s: transport %#v", c.url, v.t)
				}
			} else if ht, ok := v.t.(*httpTransport); !ok || strings.HasSuffix(ht.base, "/") || strings.Contains(ht.base, "?") {
				t.Errorf("%s: transport %#v", c.url, v.t)
			}
		case *localStore:
			if c.kind != "local" || v.prio != c.prio || !strings.HasSuffix(v.lay.RealStoreDir, "/nix/store") || !strings.HasSuffix(v.lay.DBDir(), "/nix/var/nix/db") {
				t.Errorf("%s: a local store %+v", c.url, v.lay)
			}
		}
	}
	if w := log.Texts(report.LevelWarning); len(w) != 1 || !strings.Contains(w[0], "frobnicate") {
		t.Errorf("warnings: %q, want one about the unknown parameter", w)
	}

	for _, bad := range []string{"", "local", "auto", "daemon", "unix:///nix/var/nix/daemon-socket/socket", "ssh://host", "ssh-ng://host",
		"s3://bucket", "gs://x", "file://otherhost/srv", "https://", "https://user:pw@host/", "file:///srv?priority=x", "local?store=/nix/store",
		"local?root=/mnt&store=/gnu/store", "cache"} {
		s, err := New(bad, o)
		if !errors.Is(err, ErrBadSource) || !contains(err, "supported") && !contains(err, "priority") && !contains(err, "store directory") {
			t.Errorf("New(%q) = %v, %v; want ErrBadSource saying what is supported", bad, s, err)
		}
	}
	if _, err := New("file:///srv", Options{}); err == nil {
		t.Errorf("New without a StoreDir succeeded")
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{StoreDir: storeDir}.withDefaults()
	if o.ConnectTimeout != 10*time.Second || o.StallTimeout != 300*time.Second || o.Connections != 25 || o.Attempts != 5 ||
		o.RetryDelay != 250*time.Millisecond || o.RealStoreDir != storeDir {
		t.Errorf("defaults: %+v", o)
	}
}

func TestOptionsFromSettings(t *testing.T) {
	d := nixconf.Default(true)
	o, err := OptionsFromSettings(&d, storeDir)
	if err != nil {
		t.Fatal(err)
	}
	if !o.CheckSigs || len(o.TrustedKeys) != 1 || o.TrustedKeys["cache.nixos.org-1"] == nil || o.StoreDir != storeDir ||
		o.ConnectTimeout != 0 || o.StallTimeout != 300*time.Second || o.Connections != 25 || o.Attempts != 5 {
		t.Errorf("Nix's defaults: %+v", o)
	}

	s := nixconf.Default(true)
	conf := "require-sigs = false\ntrusted-public-keys = " + testKey.Public().String() + "\nconnect-timeout = 7\nstalled-download-timeout = 20\nhttp-connections = 0\ndownload-attempts = 0\n"
	if err := s.ApplyText(conf, "nix.conf"); err != nil {
		t.Fatal(err)
	}
	o, err = OptionsFromSettings(&s, storeDir)
	if err != nil {
		t.Fatal(err)
	}
	if o.CheckSigs || o.TrustedKeys[testKey.Name] == nil || o.ConnectTimeout != 7*time.Second || o.StallTimeout != 20*time.Second ||
		o.Connections != -1 || o.Attempts != 1 {
		t.Errorf("from nix.conf: %+v", o)
	}

	for _, bad := range []struct{ conf, says string }{
		{"trusted-public-keys = good:" + strings.TrimPrefix(testKey.Public().String(), testKey.Name+":") + " broken-key:abc", "broken-key:abc"},
		{"connect-timeout = 5s", "connect-timeout"},
		{"stalled-download-timeout = -1", "stalled-download-timeout"},
		{"http-connections = many", "http-connections"},
		{"download-attempts = 1.5", "download-attempts"},
	} {
		s := nixconf.Default(true)
		if err := s.ApplyText(bad.conf+"\n", "/etc/nix/nix.conf"); err != nil {
			t.Fatal(err)
		}
		_, err := OptionsFromSettings(&s, storeDir)
		if err == nil || !contains(err, bad.says) || !contains(err, "/etc/nix/nix.conf:1") {
			t.Errorf("%q: %v, want an error naming %q and where it was set", bad.conf, err, bad.says)
		}
		if strings.HasPrefix(bad.conf, "trusted") && !errors.Is(err, signature.ErrBadKey) {
			t.Errorf("a bad key: %v, want signature.ErrBadKey", err)
		}
	}
	if o, err := OptionsFromSettings(nil, storeDir); err != nil || !o.CheckSigs {
		t.Errorf("nil settings: %+v, %v", o, err)
	}
}

// fakeSource is a Source with a fixed priority, for Sort.
type fakeSource struct {
	name string
	prio int
}

func (f *fakeSource) URL() string { return f.name }
func (f *fakeSource) Priority(ctx context.Context) int {
	time.Sleep(50 * time.Millisecond)
	return f.prio
}
func (f *fakeSource) Init(context.Context) error { return nil }
func (f *fakeSource) Lookup(context.Context, Want) (*Offer, error) {
	return nil, ErrNotFound
}
func (f *fakeSource) Open(context.Context, *Offer) (io.ReadCloser, error) { return nil, ErrNotFound }

func TestSort(t *testing.T) {
	var srcs []Source
	for _, c := range []struct {
		n string
		p int
	}{{"a", 50}, {"b", 40}, {"c", 50}, {"d", 10}, {"e", 40}, {"f", 50}} {
		srcs = append(srcs, &fakeSource{c.n, c.p})
	}
	start := time.Now()
	sorted := Sort(context.Background(), srcs)
	var got []string
	for _, s := range sorted {
		got = append(got, s.URL())
	}
	if strings.Join(got, "") != "dbeacf" {
		t.Errorf("Sort = %v, want d b e a c f (by priority, ties in configuration order)", got)
	}
	if srcs[0].URL() != "a" {
		t.Errorf("Sort changed its argument")
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("Sort asked the priorities one after another (%s)", d)
	}
}

// TestOpenAndSortCaches: Open keeps the order given; Sort puts the
// caches in the order of their nix-cache-info priorities and ?priority.
// A cache whose nix-cache-info gives no Priority has Nix 2.8's default, 0
// (nix copy --to file://... writes none): it comes before cache.nixos.org
// (40), as in Nix.
func TestOpenAndSortCaches(t *testing.T) {
	f1, f2, f3 := newFixture(t), newFixture(t), newFixture(t)
	f2.write("nix-cache-info", []byte("StoreDir: /nix/store\nPriority: 10\n"))
	f3.write("nix-cache-info", []byte("StoreDir: /nix/store\n"))
	srcs, err := Open([]string{f3.url(), f1.url(), f2.url(), f1.url() + "?priority=5"}, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer Close(srcs)
	var got []int
	for _, s := range Sort(context.Background(), srcs) {
		got = append(got, s.Priority(context.Background()))
	}
	if want := []int{0, 5, 10, 40}; !slices.Equal(got, want) {
		t.Errorf("sorted priorities %v, want %v", got, want)
	}
	if _, err := Open([]string{f1.url(), "ssh://host"}, testOptions()); !errors.Is(err, ErrBadSource) {
		t.Errorf("Open with a bad URL: %v", err)
	}
}

// TestDefaultPriorityAsNix: a binary cache without a Priority ties with
// another local store (both 0, as Nix 2.8's StoreConfig priority
// default, which `nix describe-stores` shows), so the two stay in
// configuration order; before it, a cache without Priority sorted after
// cache.nixos.org's 40, unlike Nix.
func TestDefaultPriorityAsNix(t *testing.T) {
	f := newFixture(t)
	f.write("nix-cache-info", []byte("StoreDir: /nix/store\n"))
	other := newFixture(t)
	srcs, err := Open([]string{f.url(), "local?root=/nonexistent", other.url()}, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer Close(srcs)
	var got []string
	for _, s := range Sort(context.Background(), srcs) {
		got = append(got, s.URL())
	}
	if want := []string{f.url(), "local?root=/nonexistent", other.url()}; !slices.Equal(got, want) {
		t.Errorf("Sort = %v, want %v (0, 0, 40)", got, want)
	}
}

// TestSecretKeyFilesTrusted: the public halves of secret-key-files are
// trusted too, as Nix 2.8's getDefaultPublicKeys adds them (the
// machine's own signing key: a cache of its builds is signed by it), a
// key of trusted-public-keys with the same name winning (the first);
// an unreadable or missing file is skipped, as in Nix, and a malformed
// one is an error naming the file, not its contents.
func TestSecretKeyFilesTrusted(t *testing.T) {
	dir := t.TempDir()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	own := signature.SecretKey{Name: "machine-1", Key: priv}
	_, priv2, _ := ed25519.GenerateKey(nil)
	shadow := signature.SecretKey{Name: testKey.Name, Key: priv2}
	ownFile, shadowFile, badFile := filepath.Join(dir, "own.sec"), filepath.Join(dir, "shadow.sec"), filepath.Join(dir, "bad.sec")
	os.WriteFile(ownFile, []byte(own.String()+"\n"), 0o600)
	os.WriteFile(shadowFile, []byte(shadow.String()), 0o600)
	os.WriteFile(badFile, []byte("machine-2:c2VjcmV0"), 0o600)
	s := nixconf.Default(true)
	conf := "trusted-public-keys = " + testKey.Public().String() + "\nsecret-key-files = " + shadowFile + " " + filepath.Join(dir, "missing") + " " + ownFile + "\n"
	if err := s.ApplyText(conf, "nix.conf"); err != nil {
		t.Fatal(err)
	}
	o, err := OptionsFromSettings(&s, storeDir)
	if err != nil {
		t.Fatal(err)
	}
	fp := "1;/nix/store/x;sha256:0;1;"
	if !o.TrustedKeys.Verify(fp, own.Sign(fp)) {
		t.Errorf("a signature by secret-key-files' key is not trusted: %v", o.TrustedKeys)
	}
	if !o.TrustedKeys.Verify(fp, testKey.Sign(fp)) || o.TrustedKeys.Verify(fp, shadow.Sign(fp)) {
		t.Errorf("a secret key named as a trusted public key replaced it")
	}
	s = nixconf.Default(true)
	if err := s.ApplyText("secret-key-files = "+badFile+"\n", "nix.conf"); err != nil {
		t.Fatal(err)
	}
	if _, err := OptionsFromSettings(&s, storeDir); !errors.Is(err, signature.ErrBadKey) || !contains(err, badFile) || contains(err, "c2VjcmV0") {
		t.Errorf("a malformed secret key file: %v, want ErrBadKey naming the file and not its contents", err)
	}
}
