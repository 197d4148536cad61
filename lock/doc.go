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
// blocked, or holding a lock, after cancellation. Every retry loop checks
// its context and backs off (2ms growing to 100ms).
//
// Lock files are only ever regular files: every one is opened with
// O_NOFOLLOW|O_NONBLOCK relative to its directory and checked with fstat,
// so a symbolic link, FIFO, directory, socket or device at a lock file's
// name is refused (ErrNotRegular), never followed or blocked on. As root,
// in a directory another user owns, lock files are opened and created
// with that user's file-system ids, and lock files are deleted only in
// directories that are the process's own (see LockPaths and Unlock).
//
// It depends only on the standard library, golang.org/x/sys/unix,
// internal/sys and nix/storepath (which names are path locks).
package lock
