package substitute

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestHTTP500TwiceThen200(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", strings.Repeat("p", 5000), "xz", nil, nil, true)
	ni, narURL := narinfoPath(e.want.Path), "/"+e.ni.URL
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if (r.URL.Path == ni || r.URL.Path == narURL || r.URL.Path == "/nix-cache-info") && n <= 2 {
			http.Error(w, "busy", http.StatusInternalServerError)
			return true
		}
		return false
	})
	s := mustNew(t, srv.URL, testOptions())
	o, err := s.Lookup(context.Background(), e.want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(context.Background(), s, o)
	if err != nil || !bytes.Equal(got, e.nar) {
		t.Fatalf("read: %v", err)
	}
	for _, p := range []string{"/nix-cache-info", ni, narURL} {
		if n := srv.count(p); n != 3 {
			t.Errorf("%s: %d requests, want 3 (two 500s, then the answer)", p, n)
		}
	}
}

func TestHTTP500Always(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", "p", "none", nil, nil, true)
	ni := narinfoPath(e.want.Path)
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path == ni {
			http.Error(w, "broken", http.StatusBadGateway)
			return true
		}
		return false
	})
	o := testOptions()
	o.Attempts = 3
	s := mustNew(t, srv.URL, o)
	_, err := s.Lookup(context.Background(), e.want)
	if err == nil || errors.Is(err, ErrNotFound) || !contains(err, "502") || !contains(err, "3 attempts") {
		t.Errorf("Lookup against a server answering 502: %v", err)
	}
	if n := srv.count(ni); n != 3 {
		t.Errorf("%d requests, want Attempts = 3", n)
	}
	// One path's failure is not the source's: the next path is asked.
	if _, err := s.Lookup(context.Background(), Want{Path: opaquePath("other")}); !errors.Is(err, ErrNotFound) {
		t.Errorf("next Lookup: %v", err)
	}
}

func TestHTTP404And403OneRequest(t *testing.T) {
	f := newFixture(t)
	forbidden := opaquePath("forbidden")
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path == narinfoPath(forbidden) {
			http.Error(w, "no", http.StatusForbidden)
			return true
		}
		return false
	})
	s := mustNew(t, srv.URL, testOptions())
	for _, p := range []string{opaquePath("absent"), forbidden} {
		if _, err := s.Lookup(context.Background(), Want{Path: p}); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", p, err)
		}
		if n := srv.count(narinfoPath(p)); n != 1 {
			t.Errorf("%s: %d requests, want exactly 1", p, n)
		}
	}
}

func TestHTTP400NoRetry(t *testing.T) {
	f := newFixture(t)
	p := opaquePath("bad-request")
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path == narinfoPath(p) {
			http.Error(w, "no", http.StatusBadRequest)
			return true
		}
		return false
	})
	s := mustNew(t, srv.URL, testOptions())
	if _, err := s.Lookup(context.Background(), Want{Path: p}); err == nil || errors.Is(err, ErrNotFound) || !contains(err, "400") {
		t.Errorf("%v, want a 400 error", err)
	}
	if n := srv.count(narinfoPath(p)); n != 1 {
		t.Errorf("%d requests, want exactly 1", n)
	}
}

// TestHTTPResets: a connection dropped before the headers, and one
// dropped in the middle of a body, are tried again; a NAR download
// resumes where it broke.
func TestHTTPResets(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", strings.Repeat("some contents ", 20000), "none", nil, nil, true)
	ni, narURL := narinfoPath(e.want.Path), "/"+e.ni.URL
	var mu sync.Mutex
	var ranges []string
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		switch {
		case r.URL.Path == ni && n == 1:
			hijackClose(t, w) // before the headers
			return true
		case r.URL.Path == ni && n == 2:
			// Headers and half a body, then the connection drops.
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(strings.Repeat("x", 500)))
			w.(http.Flusher).Flush()
			hijackClose(t, w)
			return true
		case r.URL.Path == narURL:
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			mu.Unlock()
			if n == 1 {
				w.Header().Set("Content-Length", strconv.Itoa(len(e.file)))
				w.WriteHeader(http.StatusOK)
				w.Write(e.file[:len(e.file)/3])
				w.(http.Flusher).Flush()
				hijackClose(t, w)
				return true
			}
		}
		return false
	})
	s := mustNew(t, srv.URL, testOptions())
	o, err := s.Lookup(context.Background(), e.want)
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.count(ni); n != 3 {
		t.Errorf("narinfo: %d requests, want 3", n)
	}
	got, err := readAll(context.Background(), s, o)
	if err != nil || !bytes.Equal(got, e.nar) {
		t.Fatalf("read %d bytes: %v", len(got), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ranges) != 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") || ranges[1] == "bytes=0-" {
		t.Errorf("NAR requests' Range headers: %q, want none and then a resumption", ranges)
	}
}

// TestHTTPResumeIgnoringRange: a server that answers a range request
// with the whole file again is read past the part already delivered.
func TestHTTPResumeIgnoringRange(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", strings.Repeat("abc", 30000), "zstd", nil, nil, true)
	narURL := "/" + e.ni.URL
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != narURL {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(e.file)))
		w.WriteHeader(http.StatusOK)
		if n == 1 {
			w.Write(e.file[:len(e.file)/2])
			w.(http.Flusher).Flush()
			hijackClose(t, w)
			return true
		}
		w.Write(e.file)
		return true
	})
	s := mustNew(t, srv.URL, testOptions())
	o, err := s.Lookup(context.Background(), e.want)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(context.Background(), s, o); err != nil || !bytes.Equal(got, e.nar) {
		t.Fatalf("read %d bytes: %v", len(got), err)
	}
}

// TestHTTPHangs: a server that never answers, and one that sends the
// headers and then nothing, fail after StallTimeout per attempt, not
// never.
func TestHTTPHangs(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", strings.Repeat("p", 100000), "none", nil, nil, true)
	hang := f.add("hang", "h", "none", nil, nil, true)
	narURL := "/" + e.ni.URL
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		switch r.URL.Path {
		case narinfoPath(hang.want.Path):
			<-r.Context().Done()
			return true
		case narURL:
			w.Header().Set("Content-Length", strconv.Itoa(len(e.file)))
			w.WriteHeader(http.StatusOK)
			w.Write(e.file[:1000])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return true
		}
		return false
	})
	o := testOptions()
	o.StallTimeout = 300 * time.Millisecond
	o.Attempts = 2
	s := mustNew(t, srv.URL, o)
	ctx := context.Background()
	start := time.Now()
	_, err := s.Lookup(ctx, hang.want)
	if !errors.Is(err, errStalled) || !contains(err, "no response") {
		t.Errorf("Lookup from a server that never answers: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s", d)
	}
	if n := srv.count(narinfoPath(hang.want.Path)); n != 2 {
		t.Errorf("%d requests, want Attempts = 2", n)
	}
	// The server answers nothing: the next look-up fails at once.
	start = time.Now()
	if _, err := s.Lookup(ctx, e.want); !errors.Is(err, ErrBadSource) || !errors.Is(err, errStalled) || time.Since(start) > 100*time.Millisecond {
		t.Errorf("Lookup after one that stalled: %v after %s", err, time.Since(start))
	}
	s = mustNew(t, srv.URL, o)
	off, err := s.Lookup(ctx, e.want)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	got, err := readAll(ctx, s, off)
	if !errors.Is(err, errStalled) || !contains(err, "no data") || len(got) != 1000 {
		t.Errorf("read from a server that stops sending: %d bytes, %v", len(got), err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s", d)
	}
}

// TestHTTPCancel: cancelling the context stops a look-up at once, in a
// request and in a pause between attempts.
func TestHTTPCancel(t *testing.T) {
	f := newFixture(t)
	hang := f.add("hang", "h", "none", nil, nil, true)
	busy := f.add("busy", "b", "none", nil, nil, true)
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		switch r.URL.Path {
		case narinfoPath(hang.want.Path):
			<-r.Context().Done()
			return true
		case narinfoPath(busy.want.Path):
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	o := testOptions()
	o.StallTimeout = time.Minute
	o.RetryDelay = time.Minute
	s := mustNew(t, srv.URL, o)
	if err := s.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*entry{hang, busy} {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := s.Lookup(ctx, e.want)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", e.want.Path, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: cancelled after %s", e.want.Path, d)
		}
	}
	// A cancelled Init is not remembered.
	s2 := mustNew(t, srv.URL, o)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s2.Init(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Init with a cancelled context: %v", err)
	}
	if err := s2.Init(context.Background()); err != nil {
		t.Errorf("Init after a cancelled one: %v", err)
	}
}

// TestHTTPUnreachable: a port nobody listens on fails Init after its
// attempts, fast, and every later look-up at once without a new
// connection attempt.
func TestHTTPUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	o := testOptions()
	s := mustNew(t, "http://"+addr+"/cache", o)
	start := time.Now()
	err = s.Init(context.Background())
	if !errors.Is(err, ErrBadSource) || !contains(err, "refused") || !contains(err, "5 attempts") {
		t.Errorf("Init: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Init took %s", d)
	}
	start = time.Now()
	for i := range 100 {
		_, err := s.Lookup(context.Background(), Want{Path: opaquePath("p" + strconv.Itoa(i))})
		if !errors.Is(err, ErrBadSource) {
			t.Fatalf("Lookup %d: %v", i, err)
		}
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("100 look-ups in an unreachable cache took %s", d)
	}
}

// TestHTTPDiesAfterInit: a server that goes away after Init fails the
// look-up that finds out, after its attempts, and the later ones at once.
func TestHTTPDiesAfterInit(t *testing.T) {
	f := newFixture(t)
	srv := newServer(t, f.dir, nil)
	s := mustNew(t, srv.URL, testOptions())
	if err := s.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	for i := range 20 {
		_, err := s.Lookup(context.Background(), Want{Path: opaquePath("p" + strconv.Itoa(i))})
		if !errors.Is(err, ErrBadSource) || !contains(err, "cannot be reached") {
			t.Fatalf("Lookup %d: %v", i, err)
		}
	}
}

// TestHTTPKeepAlive: many look-ups, in sequence and in parallel, reuse a
// few connections.
func TestHTTPKeepAlive(t *testing.T) {
	f := newFixture(t)
	var es []*entry
	for i := range 60 {
		es = append(es, f.add("p"+strconv.Itoa(i), "contents "+strconv.Itoa(i), "none", nil, nil, true))
	}
	srv := newServer(t, f.dir, nil)
	o := testOptions()
	o.Connections = 4
	s := mustNew(t, srv.URL, o)
	ctx := context.Background()
	for _, e := range es[:30] {
		off, err := s.Lookup(ctx, e.want)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := readAll(ctx, s, off); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Lookup(ctx, Want{Path: opaquePath("absent-" + e.want.Path[len(storeDir)+34:])}); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("90 requests in sequence used %d connections, want 1", n)
	}
	var wg sync.WaitGroup
	for _, e := range es[30:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off, err := s.Lookup(ctx, e.want)
			if err == nil {
				_, err = readAll(ctx, s, off)
			}
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := srv.conns.Load(); n > int64(o.Connections) {
		t.Errorf("60 requests, 30 at once, used %d connections, more than Connections = %d", n, o.Connections)
	}
}

// TestHTTPWaitingForAConnectionIsNoStall: with every connection busy with
// a slow download, a look-up waits for one longer than StallTimeout and
// still succeeds.
func TestHTTPWaitingForAConnectionIsNoStall(t *testing.T) {
	f := newFixture(t)
	slow := f.add("slow", strings.Repeat("s", 1000), "none", nil, nil, true)
	other := f.add("other", "o", "none", nil, nil, true)
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != "/"+slow.ni.URL {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(slow.file)))
		w.WriteHeader(http.StatusOK)
		step := len(slow.file) / 10
		for i := 0; i < len(slow.file); i += step {
			w.Write(slow.file[i:min(i+step, len(slow.file))])
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
		return true
	})
	o := testOptions()
	o.Connections = 1
	o.Attempts = 1
	o.StallTimeout = 300 * time.Millisecond
	s := mustNew(t, srv.URL, o)
	ctx := context.Background()
	off, err := s.Lookup(ctx, slow.want)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		got, err := readAll(ctx, s, off)
		if err == nil && !bytes.Equal(got, slow.nar) {
			err = errors.New("wrong bytes")
		}
		done <- err
	}()
	time.Sleep(150 * time.Millisecond)
	start := time.Now()
	if _, err := s.Lookup(ctx, other.want); err != nil {
		t.Errorf("Lookup while the only connection is busy: %v", err)
	}
	if d := time.Since(start); d < o.StallTimeout {
		t.Logf("the look-up took only %s: it did not wait for the connection", d)
	}
	if err := <-done; err != nil {
		t.Errorf("slow download: %v", err)
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestHTTPOpenCancel: cancelling the context fails the reads of a
// download at once.
func TestHTTPOpenCancel(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", strings.Repeat("p", 100000), "none", nil, nil, true)
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != "/"+e.ni.URL {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(e.file)))
		w.WriteHeader(http.StatusOK)
		w.Write(e.file[:1000])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		return true
	})
	o := testOptions()
	o.StallTimeout = time.Minute
	s := mustNew(t, srv.URL, o)
	ctx, cancel := context.WithCancel(context.Background())
	off, err := s.Lookup(ctx, e.want)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Open(ctx, off)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = io.ReadAll(r)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancelled after %s", d)
	}
}

// TestHTTPTrickledNarinfo: a narinfo sent a few bytes at a time, each
// within StallTimeout of the last, still has to be whole within it.
func TestHTTPTrickledNarinfo(t *testing.T) {
	f := newFixture(t)
	e := f.add("p", "p", "none", nil, nil, true)
	text := []byte(e.ni.String())
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != narinfoPath(e.want.Path) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(text)))
		w.WriteHeader(http.StatusOK)
		for i := range text {
			if _, err := w.Write(text[i : i+1]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return true
			case <-time.After(50 * time.Millisecond):
			}
		}
		return true
	})
	o := testOptions()
	o.StallTimeout = 300 * time.Millisecond
	o.Attempts = 1
	s := mustNew(t, srv.URL, o)
	start := time.Now()
	_, err := s.Lookup(context.Background(), e.want)
	if !errors.Is(err, errStalled) || !contains(err, "not all of it") {
		t.Errorf("a trickled narinfo: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s", d)
	}
}

// TestHTTPSUntrustedCertificate: a certificate this machine does not
// trust fails Init at once, without retries.
func TestHTTPSUntrustedCertificate(t *testing.T) {
	f := newFixture(t)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.FileServer(http.Dir(f.dir)))
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	err := mustNew(t, srv.URL, testOptions()).Init(context.Background())
	var cv *tls.CertificateVerificationError
	if !errors.Is(err, ErrBadSource) || !errors.As(err, &cv) || contains(err, "attempts") {
		t.Errorf("Init against an untrusted certificate: %v", err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (no retry)", n)
	}
}

// TestHTTPRedirectsNoRetry: redirects are followed (as curl in Nix, at
// most 10), but a redirect loop and a redirect to something other than
// http(s) (file:///etc/passwd) fail at once, as Nix's curl does
// (CURLE_TOO_MANY_REDIRECTS, CURLE_UNSUPPORTED_PROTOCOL are not
// transient): before, each was retried Attempts times with growing
// pauses (50 requests for a loop).
func TestHTTPRedirectsNoRetry(t *testing.T) {
	f := newFixture(t)
	e := f.add("redirected", "redirected", "none", nil, nil, true)
	loop, file := opaquePath("loop"), opaquePath("file")
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		switch r.URL.Path {
		case narinfoPath(loop):
			http.Redirect(w, r, narinfoPath(loop), http.StatusFound)
			return true
		case narinfoPath(file):
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
			return true
		case narinfoPath(e.want.Path):
			if n == 1 {
				http.Redirect(w, r, "/moved"+r.URL.Path, http.StatusMovedPermanently)
				return true
			}
		case "/moved" + narinfoPath(e.want.Path):
			http.ServeFile(w, r, f.dir+narinfoPath(e.want.Path))
			return true
		}
		return false
	})
	o := testOptions()
	o.RetryDelay = 200 * time.Millisecond
	s := mustNew(t, srv.URL, o)
	if _, err := s.Lookup(context.Background(), e.want); err != nil {
		t.Errorf("a redirected narinfo: %v", err)
	}
	for _, c := range []struct {
		p    string
		reqs int
	}{{loop, 10}, {file, 1}} {
		start := time.Now()
		_, err := s.Lookup(context.Background(), Want{Path: c.p})
		if err == nil || errors.Is(err, ErrNotFound) || !contains(err, "redirect") {
			t.Errorf("%s: %v, want a redirect error", c.p, err)
		}
		if n := srv.count(narinfoPath(c.p)); n != c.reqs {
			t.Errorf("%s: %d requests, want %d (no retry)", c.p, n, c.reqs)
		}
		if d := time.Since(start); d > 150*time.Millisecond {
			t.Errorf("%s: took %s: retried", c.p, d)
		}
	}
}

// TestHTTPTrickledNAR: a server that sends a NAR a byte at a time, each
// a little sooner than the stall timeout, is stalled all the same: as
// curl's low-speed limit in Nix (1 byte a second over
// stalled-download-timeout), a download must get at least one byte per
// second of the timeout while the reader waits. Before, every byte
// restarted the timer, so such a server held a repair for NarSize times
// the timeout.
func TestHTTPTrickledNAR(t *testing.T) {
	f := newFixture(t)
	e := f.add("trickled", strings.Repeat("t", 200), "none", nil, nil, true)
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != "/"+e.ni.URL {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(e.file)))
		w.WriteHeader(http.StatusOK)
		for i := range e.file {
			if _, err := w.Write(e.file[i : i+1]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return true
			case <-time.After(1200 * time.Millisecond):
			}
		}
		return true
	})
	o := testOptions()
	o.StallTimeout = 2 * time.Second
	o.Attempts = 1
	s := mustNew(t, srv.URL, o)
	off, err := s.Lookup(context.Background(), e.want)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = readAll(ctx, s, off)
	if !errors.Is(err, errStalled) || ctx.Err() != nil {
		t.Errorf("a NAR trickled at 1 byte per 1.2 s with a 2 s stall timeout: %v after %s, want a stall", err, time.Since(start))
	}
}

// TestHTTPNarinfoContentEncoding: a narinfo or nix-cache-info served with
// a Content-Encoding (an S3 cache written with narinfo-compression=br or
// xz stores them so) is decoded, as Nix decodes every download's
// Content-Encoding; what it decodes to is bounded like the file itself
// (a bomb fails at once), and an encoding no codec here knows is a clear
// error.
func TestHTTPNarinfoContentEncoding(t *testing.T) {
	f := newFixture(t)
	br := f.add("br-encoded", "br", "none", nil, nil, true)
	xzd := f.add("xz-encoded", "xz", "xz", nil, nil, true)
	bomb, odd := opaquePath("bomb"), opaquePath("odd")
	bombData := compress(t, "xz", bytes.Repeat([]byte("StorePath: x\n"), 1<<20))
	srv := newServer(t, f.dir, func(w http.ResponseWriter, r *http.Request, n int) bool {
		var enc string
		var data []byte
		switch r.URL.Path {
		case "/nix-cache-info":
			enc, data = "br", compress(t, "br", []byte("StoreDir: /nix/store\n"))
		case narinfoPath(br.want.Path):
			enc, data = "br", compress(t, "br", []byte(br.ni.String()))
		case narinfoPath(xzd.want.Path):
			enc, data = "xz", compress(t, "xz", []byte(xzd.ni.String()))
		case narinfoPath(bomb):
			enc, data = "xz", bombData
		case narinfoPath(odd):
			enc, data = "compress", []byte("x")
		default:
			return false
		}
		w.Header().Set("Content-Encoding", enc)
		w.Write(data)
		return true
	})
	s := mustNew(t, srv.URL, testOptions())
	for _, e := range []*entry{br, xzd} {
		o, err := s.Lookup(context.Background(), e.want)
		if err != nil {
			t.Errorf("%s: %v", e.want.Path, err)
			continue
		}
		if data, err := readAll(context.Background(), s, o); err != nil || !bytes.Equal(data, e.nar) {
			t.Errorf("%s: Open: %v", e.want.Path, err)
		}
	}
	if _, err := s.Lookup(context.Background(), Want{Path: bomb}); err == nil || !contains(err, "more than") {
		t.Errorf("a narinfo that decodes to 13 MiB: %v, want an error saying it is too large", err)
	}
	if _, err := s.Lookup(context.Background(), Want{Path: odd}); err == nil || !contains(err, "Content-Encoding") {
		t.Errorf("an unknown Content-Encoding: %v, want an error naming it", err)
	}
}
