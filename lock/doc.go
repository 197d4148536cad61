// Package lock implements Nix's lock protocols so that storekeeper can run
// beside a live nix-daemon: flock(2)-based gc.lock and db/big-lock, the
// temporary-roots protocol (temproots/<pid> files and the gc-socket client),
// and PathLocks (<path>.lock files taken in sorted order).
//
// All locks are flock(2) locks, owned by an open file description: they
// are shared by duplicated descriptors, conflict between two opens of the
// same file even within one process (so goroutines exclude each other as
// processes do), and are dropped by the kernel when the process dies, even
// by SIGKILL. Files are opened O_CLOEXEC, so child processes never inherit
// them. Waiting honours a context: an uncancellable context sleeps in
// flock(2); a cancellable one polls with LOCK_NB, so nothing is left
// blocked, or holding a lock, after cancellation.
//
// It depends only on the standard library and golang.org/x/sys/unix.
package lock
