package metrics

import (
	"errors"
	"fmt"

	"storekeeper/internal/atomicfile"
)

// ErrUnsafeFile is wrapped by WriteFile's refusals of where it was asked
// to write: a directory another user controls, a final name that is not
// a regular file (atomicfile.ErrUnsafe, which it wraps too).
var ErrUnsafeFile = errors.New("metrics: refusing to write the metrics file")

// WriteFile replaces the file at path with fams in the text format
// (Write), atomically, with atomicfile.WriteFile: a temporary file in the
// same directory (".NAME.tmp-PID-RANDOM", mode 0644 whatever the umask;
// node_exporter reads only names ending in .prom), fsynced and renamed
// over path; the directory is then fsynced.
//
// Guarantees: a reader sees the old file or the new one, whole, at every
// instant; an error, a crash or a kill at any point leaves the old file
// as it was (a kill may leave the temporary file behind, which no reader
// of *.prom files reads; the next write of path removes it once it is
// atomicfile.StaleTemp old). Two writers of one path: the last rename
// wins, each file whole. Nothing is followed at the final name: a symlink
// there, or anything but a regular file, is refused. The directory must
// be owned by the caller's effective uid and writable by it alone (so
// root never creates a file where another user could swap it). Its path
// is walked a component at a time (atomicfile.OpenDir): a symlink on the
// way is followed only where another user could not have put it, so that
// root never writes where a link of another user's points (Debian's
// /var/lib/prometheus is the prometheus user's: its node-exporter, a
// root directory, is fine, a link put in its place is refused). fams are
// checked first: invalid families (ErrInvalid) change nothing.
func WriteFile(path string, fams []Family) error {
	text, err := Format(fams)
	if err != nil {
		return err
	}
	err = atomicfile.WriteFile(path, text, 0o644, atomicfile.Caller, atomicfile.RefuseSymlink)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, atomicfile.ErrUnsafe):
		return fmt.Errorf("%w: %w", ErrUnsafeFile, err)
	default:
		return fmt.Errorf("metrics: %w", err)
	}
}
