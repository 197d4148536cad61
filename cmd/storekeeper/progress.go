package main

import (
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// bar is a progress bar on stderr, drawn only when stderr is a terminal
// and neither --quiet, --json nor --no-progress is given. A nil *bar (or
// one made when bars are off) accepts every call and draws nothing, so
// the Progress implementations of each command need no conditionals.
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
