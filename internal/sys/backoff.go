package sys

import (
	"context"
	"time"
)

// Backoff is the delay of a retry loop: it starts at 2ms and grows by
// half after each wait, up to 100ms. The zero value is ready to use. Every
// retry loop of storekeeper waits through one, so that none spins.
type Backoff struct{ d time.Duration }

// Wait sleeps for the current delay, or until ctx is done (it then
// returns ctx.Err() at once), and grows the delay.
func (b *Backoff) Wait(ctx context.Context) error {
	if b.d == 0 {
		b.d = 2 * time.Millisecond
	}
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	b.d = min(b.d*3/2, 100*time.Millisecond)
	return nil
}
