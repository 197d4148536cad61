package main

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"

	"storekeeper/gc"
	"storekeeper/report"
	"storekeeper/verify"
)

// bar is a progress bar on stderr, drawn only when stderr is a terminal
// and neither --quiet, --json nor --no-progress is given. A nil *bar (or
// one made when bars are off) accepts every call and draws nothing, so
// progress (below) needs no conditionals.
// It is safe for concurrent use (library workers report from goroutines).
type bar struct {
	mu sync.Mutex
	pb *progressbar.ProgressBar
}

// newBar starts a bar for one phase. total < 0 means unknown (a spinner);
// bytes renders counts as sizes with rate and ETA.
func (p *printer) newBar(desc string, total int64, bytes bool) *bar {
	if !p.progress {
		return &bar{}
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(p.err),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionUseANSICodes(true),
	}
	if bytes {
		opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionUseIECUnits(true))
	}
	return &bar{pb: progressbar.NewOptions64(total, opts...)}
}

// Add advances the bar by n.
func (b *bar) Add(n int64) {
	if b == nil || b.pb == nil {
		return
	}
	b.mu.Lock()
	b.pb.Add64(n)
	b.mu.Unlock()
}

// Set sets the bar's position.
func (b *bar) Set(n int64) {
	if b == nil || b.pb == nil {
		return
	}
	b.mu.Lock()
	b.pb.Set64(n)
	b.mu.Unlock()
}

// SetTotal changes the bar's total once it is known.
func (b *bar) SetTotal(n int64) {
	if b == nil || b.pb == nil {
		return
	}
	b.mu.Lock()
	b.pb.ChangeMax64(n)
	b.mu.Unlock()
}

// Finish clears the bar from the terminal.
func (b *bar) Finish() {
	if b == nil || b.pb == nil {
		return
	}
	b.mu.Lock()
	b.pb.Finish()
	b.mu.Unlock()
}

// progress is the report.Progress of every command: one bar per phase on
// stderr (see bar), the libraries' messages through the printer (its
// report.Printer: Info unless --quiet, Warn always, Verbose with
// --verbose; with --json into the envelope), and with --verbose a line
// per path that gc deletes (gc.Deletions) and that verify found intact
// (verify.Verifications).
// Add costs an atomic load and, only while a bar is drawn, a mutex.
type progress struct {
	p *printer
	// phaseLines prints "phase: NAME" with --verbose when a phase starts
	// (gc does, as it always has; verify and optimise do not).
	phaseLines bool
	mu         sync.Mutex // serialises Phase and finish
	cur        atomic.Pointer[bar]
}

var (
	_ report.Progress      = (*progress)(nil)
	_ gc.Deletions         = (*progress)(nil)
	_ verify.Verifications = (*progress)(nil)
)

func newProgress(p *printer) *progress { return &progress{p: p} }

// Phase clears the bar of the phase before and starts one for this phase.
func (pr *progress) Phase(name string, total int64, bytes bool) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.cur.Load().Finish()
	if pr.phaseLines {
		pr.p.Verbosef("phase: %s", name)
	}
	pr.cur.Store(pr.p.newBar(name, total, bytes))
}

// Add advances the current phase's bar.
func (pr *progress) Add(n int64) { pr.cur.Load().Add(n) }

// Info prints msg on stderr unless --quiet (--json: into the envelope).
func (pr *progress) Info(msg string) { pr.p.Infof("%s", msg) }

// Warn prints "warning: msg" on stderr, even under --quiet (--json: into
// the envelope, with path).
func (pr *progress) Warn(msg, path string) { pr.p.message(report.LevelWarning, msg, path) }

// Verbose prints msg on stderr with --verbose.
func (pr *progress) Verbose(msg string) { pr.p.Verbosef("%s", msg) }

// Deleting prints Nix's "deleting '...'" line with --verbose.
func (pr *progress) Deleting(path string) { pr.p.Verbosef("deleting '%s'", path) }

// Verified prints "verified '...'" with --verbose for a path found intact.
func (pr *progress) Verified(path string, ok bool) {
	if ok {
		pr.p.Verbosef("verified '%s'", path)
	}
}

// current returns the current phase's bar (nil before the first phase).
func (pr *progress) current() *bar { return pr.cur.Load() }

// finish clears the last bar; call it once the library call returned.
func (pr *progress) finish() {
	pr.mu.Lock()
	pr.cur.Load().Finish()
	pr.mu.Unlock()
}
