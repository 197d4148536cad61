package substitute

import (
	"context"
	"errors"
	"net"
	"time"
)

// synRetryTimeouts are the timeouts of a dial's first attempts: a server
// whose listen queue is full (a small one, flooded with connections at
// once) drops the SYN, and the kernel sends it again only after a whole
// second; a new attempt sends a new SYN sooner. An attempt ends early
// only on its own timeout: refused, unreachable and the like end the
// dial at once.
var synRetryTimeouts = []time.Duration{150 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond}

// stagedDial is d's DialContext with the quick first attempts of
// synRetryTimeouts, then one with what is left of d.Timeout (the
// connect-timeout, 0: none), which bounds the whole dial.
func stagedDial(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	attempt := *d
	attempt.Timeout = 0
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if d.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d.Timeout)
			defer cancel()
		}
		for _, t := range synRetryTimeouts {
			actx, cancel := context.WithTimeout(ctx, t)
			c, err := attempt.DialContext(actx, network, addr)
			// The attempt's deadline, not the caller's (the socket's
			// deadline may fire before actx says so).
			var ne net.Error
			timedOut := errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil
			cancel()
			if err == nil || !timedOut {
				return c, err
			}
		}
		return attempt.DialContext(ctx, network, addr)
	}
}
