package lock

import (
	"context"
	"errors"
)

// Downgrade turns an Exclusive lock into a Shared one without letting go
// of it: a collector that has finished changing the store downgrades
// gc.lock so that another collector (waiting for it Exclusive) still
// waits, while processes registering roots (Shared) go on.
//
// The conversion is one flock(2) LOCK_SH|LOCK_NB on the descriptor that
// holds LOCK_EX. Holding it exclusively, nothing can conflict, so it never
// waits; Linux swaps the two locks under the inode's lock-list spinlock,
// so no waiter can take the lock in between (flock(2) itself only
// promises that a conversion that has to wait may drop the lock first).
// Downgrading a Shared lock does nothing.
func (l *FileLock) Downgrade() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("lock: downgrading a released lock")
	}
	if l.mode == Shared {
		return nil
	}
	if err := Lock(context.Background(), l.f, Shared, false); err != nil {
		return err
	}
	l.mode = Shared
	return nil
}
