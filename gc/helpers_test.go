package gc_test

import (
	"os"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite"
)

func lockExclusive(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) }
