package substitute

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"time"

	"storekeeper/nix/compression"
)

// httpTransport reads an http(s):// cache's files. One per source, with
// one http.Client whose connections are kept alive and reused (at most
// Options.Connections to the server at once, as many kept idle), so many
// look-ups cost no new connection each. Every request is bounded: the
// dial and TLS handshake by ConnectTimeout, the wait for headers once a
// connection is had by StallTimeout, and the body must bring a byte a
// second over each StallTimeout of waiting for it (curl's low-speed limit
// in Nix; waiting for a free connection is not a stall); a request that fails in a way that may pass
// (a 5xx, 408 or 429, a reset, a connection closed before the response
// or mid-body, a timeout, a refused connection) is tried again after a
// pause that doubles (RetryDelay, then twice that, ...), at most Attempts
// times in all; one that cannot pass (404, 403, 410: not found; any other
// 4xx; a certificate error; more than 10 redirects, or one to another
// scheme than http(s)) is not. A body cut short is resumed where it
// stopped (a Range request; a server that ignores it sends the whole file
// again and the part already read is skipped), within the same attempts.
// Cancelling the caller's context stops everything at once, pauses
// included. Safe for concurrent use.
type httpTransport struct {
	base   string // scheme://host[:port]/path, no trailing slash
	o      Options
	tr     *http.Transport
	client *http.Client
}

func newHTTPTransport(u *url.URL, o Options) *httpTransport {
	dialer := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		DialContext:            stagedDial(dialer), // quick new SYNs where a small server dropped one
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    o.ConnectTimeout,
		DisableCompression:     true, // bounds apply to the bytes the narinfo describes
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConnsPerHost:    100,
	}
	if o.Connections > 0 {
		tr.MaxIdleConnsPerHost = o.Connections
		tr.MaxConnsPerHost = o.Connections
	}
	return &httpTransport{base: u.String(), o: o, tr: tr, client: &http.Client{Transport: tr, CheckRedirect: checkRedirect}}
}

// errRedirect: a redirect that is not followed (no retry can help).
var errRedirect = errors.New("redirect not followed")

// maxRedirects is curl's limit in Nix (CURLOPT_MAXREDIRS 10).
const maxRedirects = 10

// checkRedirect follows, as Nix's curl does, at most maxRedirects
// redirects, each to http or https only (a cache is the user's choice,
// and what it sends is checked: a narinfo's signature, a NAR's hash).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return fmt.Errorf("%w to %s: only http and https are followed", errRedirect, req.URL.Redacted())
	}
	if len(via) >= maxRedirects {
		return fmt.Errorf("%w: stopped after %d redirects", errRedirect, maxRedirects)
	}
	return nil
}

func (h *httpTransport) where(rel string) string { return h.base + "/" + rel }

func (h *httpTransport) close() { h.tr.CloseIdleConnections() }

// errStalled: nothing arrived for StallTimeout.
var errStalled = errors.New("stalled")

// transientError marks an error a later attempt may not have.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// do sends one GET of u (from byte from on, when from > 0) and returns
// the response once its headers are in, with its body wrapped in the
// stall check. whole: the answer is a small file (a narinfo), which must
// come whole, headers and body, within StallTimeout of having a
// connection, so a server trickling a byte at a time cannot hold a
// look-up for long either.
func (h *httpTransport) do(ctx context.Context, u string, from int64, whole bool) (*http.Response, *stallBody, error) {
	rctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		cancel(nil)
		return nil, nil, err
	}
	req.Header.Set("User-Agent", "storekeeper")
	if from > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
	}
	// The stall clock starts once a connection is had: waiting for one of
	// the Connections others use is no stall (the dial and the TLS
	// handshake have their own ConnectTimeout).
	t := time.AfterFunc(time.Hour, func() { cancel(errStalled) })
	t.Stop()
	req = req.WithContext(httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { t.Reset(h.o.StallTimeout) },
	}))
	resp, err := h.client.Do(req)
	if !whole || err != nil {
		t.Stop()
	}
	if err != nil {
		if context.Cause(rctx) == errStalled && ctx.Err() == nil {
			err = fmt.Errorf("%s: %w: no response for %s (stalled-download-timeout)", u, errStalled, h.o.StallTimeout)
		}
		cancel(nil)
		return nil, nil, err
	}
	return resp, &stallBody{rc: resp.Body, ctx: rctx, parent: ctx, cancel: cancel, t: t, d: h.o.StallTimeout, u: u, whole: whole}, nil
}

// stallBody fails a body that gets less than a byte a second (at least
// one) over d of waiting, as curl's low-speed limit in Nix (1 byte/s
// over stalled-download-timeout): so a server trickling a byte just
// before each timeout is stalled too. The timer runs only while a Read
// waits, so a caller that is slow to read (a busy disk) is never taken
// for a stalled server. A whole body's timer is the request's, left
// running by do: the body must be in before it fires.
type stallBody struct {
	rc     io.ReadCloser
	ctx    context.Context // the request's
	parent context.Context // the caller's
	cancel context.CancelCauseFunc
	t      *time.Timer
	d      time.Duration
	u      string
	whole  bool
	// The current window: time waited in Read and bytes got in it; a
	// window that gets minBytes(d) starts a new one.
	waited time.Duration
	got    int64
}

// minBytes is what a stall window of d must bring: a byte a second, at
// least one.
func minBytes(d time.Duration) int64 { return max(1, int64(d/time.Second)) }

func (b *stallBody) Read(p []byte) (int, error) {
	var start time.Time
	if !b.whole {
		if b.waited >= b.d {
			b.cancel(errStalled)
		} else {
			b.t.Reset(b.d - b.waited)
		}
		start = time.Now()
	}
	n, err := b.rc.Read(p)
	if !b.whole {
		b.t.Stop()
		b.waited += time.Since(start)
		b.got += int64(n)
		if b.got >= minBytes(b.d) {
			b.waited, b.got = 0, 0
		}
	}
	if err != nil && err != io.EOF && context.Cause(b.ctx) == errStalled && b.parent.Err() == nil {
		switch {
		case b.whole:
			err = fmt.Errorf("%s: %w: not all of it in %s (stalled-download-timeout)", b.u, errStalled, b.d)
		case b.got == 0:
			err = fmt.Errorf("%s: %w: no data for %s (stalled-download-timeout)", b.u, errStalled, b.d)
		default:
			err = fmt.Errorf("%s: %w: %d bytes in %s, less than a byte a second (stalled-download-timeout)", b.u, errStalled, b.got, b.d)
		}
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.t.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}

// classify returns err as the caller's context's error when that is
// done, as is when no retry can help (a certificate error, a redirect
// loop or one to another scheme), else marked
// transient.
func classify(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) || errors.Is(err, errRedirect) {
		return err
	}
	return &transientError{err}
}

// status maps a response's status to nil (200, or 206 for a range
// request), ErrNotFound (404, 403, 410: no retry, as Nix), a transient
// error (5xx, 408, 429) or a permanent one (any other). The body of a
// refused response is drained a little, so its connection can be reused.
func status(resp *http.Response, body io.ReadCloser, u string, ranged bool) error {
	code := resp.StatusCode
	if code == http.StatusOK || ranged && code == http.StatusPartialContent {
		return nil
	}
	io.CopyN(io.Discard, body, 64<<10)
	body.Close()
	err := fmt.Errorf("%s: HTTP %d %s", u, code, http.StatusText(code))
	switch {
	case code == http.StatusNotFound || code == http.StatusForbidden || code == http.StatusGone:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		return &transientError{err}
	}
	return err
}

// pause waits before attempt+1: RetryDelay·2^(attempt-1), up to 40% more
// at random (so parallel look-ups do not retry in step), at most 30 s.
func (h *httpTransport) pause(ctx context.Context, attempt int) error {
	d := h.o.RetryDelay << min(attempt-1, 16)
	d += time.Duration(rand.Int64N(int64(d)*2/5 + 1))
	d = min(d, 30*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retry runs f until it returns anything but a transient error, at most
// Attempts times, pausing between tries.
func (h *httpTransport) retry(ctx context.Context, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		var te *transientError
		if !errors.As(err, &te) {
			return err
		}
		if attempt >= h.o.Attempts {
			if attempt == 1 {
				return te.err
			}
			return fmt.Errorf("%w (%d attempts)", te.err, attempt)
		}
		if err := h.pause(ctx, attempt); err != nil {
			return fmt.Errorf("%w (%w)", err, te.err)
		}
	}
}

func (h *httpTransport) fetch(ctx context.Context, rel string, max int64) ([]byte, error) {
	u := h.where(rel)
	var data []byte
	err := h.retry(ctx, func() error {
		resp, body, err := h.do(ctx, u, 0, true)
		if err != nil {
			return classify(ctx, err)
		}
		if err := status(resp, body, u, false); err != nil {
			return err
		}
		defer body.Close()
		if resp.ContentLength > max {
			return fmt.Errorf("%s: %d bytes, more than the %d accepted", u, resp.ContentLength, max)
		}
		d, err := io.ReadAll(io.LimitReader(body, max+1))
		if err != nil {
			return classify(ctx, fmt.Errorf("%s: reading the response: %w", u, err))
		}
		if int64(len(d)) > max {
			return fmt.Errorf("%s: more than the %d bytes accepted", u, max)
		}
		if d, err = decodeContent(resp.Header.Get("Content-Encoding"), d, max); err != nil {
			return fmt.Errorf("%s: %w", u, err)
		}
		data = d
		return nil
	})
	return data, err
}

// decodeContent undoes a small file's Content-Encoding, as Nix decodes
// every download's (an S3 cache written with narinfo-compression=br or
// xz serves its narinfos so; the transport never asks for one): any
// method compression.NewReader knows, the result bounded by max too.
func decodeContent(enc string, d []byte, max int64) ([]byte, error) {
	enc = strings.ToLower(strings.TrimSpace(enc))
	if enc == "" || enc == "identity" || enc == "none" {
		return d, nil
	}
	if err := compression.Check(enc); err != nil {
		return nil, fmt.Errorf("Content-Encoding %q: %w", enc, err)
	}
	dec, err := compression.NewReader(enc, bytes.NewReader(d))
	if err != nil {
		return nil, fmt.Errorf("Content-Encoding %q: %w", enc, err)
	}
	defer dec.Close()
	out, err := io.ReadAll(io.LimitReader(dec, max+1))
	if err != nil {
		return nil, fmt.Errorf("decoding its Content-Encoding %q: %w", enc, err)
	}
	if int64(len(out)) > max {
		return nil, fmt.Errorf("decodes (Content-Encoding %q) to more than the %d bytes accepted", enc, max)
	}
	return out, nil
}

// unreachable: no connection to the server could be made at all, or it
// answered nothing within StallTimeout on every attempt.
func (h *httpTransport) unreachable(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" || errors.Is(err, errStalled)
}

func (h *httpTransport) open(ctx context.Context, rel string) (io.ReadCloser, error) {
	s := &httpStream{h: h, ctx: ctx, u: h.where(rel)}
	if err := s.connect(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// httpStream is a NAR download that resumes where a broken connection
// left it, within the transport's attempts.
type httpStream struct {
	h     *httpTransport
	ctx   context.Context
	u     string
	body  *stallBody
	off   int64 // bytes delivered
	tries int
	err   error
}

// connect (re)starts the download at s.off; last is the error that broke
// the previous one, if any.
func (s *httpStream) connect(last error) error {
	for {
		if s.tries >= s.h.o.Attempts {
			return fmt.Errorf("%w (%d attempts)", last, s.tries)
		}
		if s.tries > 0 {
			if err := s.h.pause(s.ctx, s.tries); err != nil {
				return fmt.Errorf("%w (%w)", err, last)
			}
		}
		s.tries++
		err := s.try()
		var te *transientError
		if !errors.As(err, &te) {
			return err
		}
		last = te.err
	}
}

func (s *httpStream) try() error {
	resp, body, err := s.h.do(s.ctx, s.u, s.off, false)
	if err != nil {
		return classify(s.ctx, err)
	}
	if err := status(resp, body, s.u, s.off > 0); err != nil {
		return err
	}
	if s.off > 0 {
		if resp.StatusCode == http.StatusPartialContent {
			if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", s.off)) {
				body.Close()
				return fmt.Errorf("%s: resuming at byte %d, the server sent the range %q", s.u, s.off, resp.Header.Get("Content-Range"))
			}
		} else if _, err := io.CopyN(io.Discard, body, s.off); err != nil {
			body.Close()
			return classify(s.ctx, fmt.Errorf("%s: skipping the %d bytes already read: %w", s.u, s.off, err))
		}
	}
	s.body = body
	return nil
}

func (s *httpStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.body.Read(p)
	s.off += int64(n)
	if err == nil || err == io.EOF {
		return n, err
	}
	s.body.Close()
	s.body = nil
	err = classify(s.ctx, err)
	if te, ok := err.(*transientError); ok {
		err = s.connect(te.err)
	}
	if err != nil {
		s.err = err
		if n > 0 {
			return n, nil
		}
		return 0, err
	}
	return n, nil
}

func (s *httpStream) Close() error {
	if s.body != nil {
		return s.body.Close()
	}
	return nil
}
