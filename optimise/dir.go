package optimise

import (
	"sync/atomic"

	"golang.org/x/sys/unix"

	"storekeeper/store/fs"
)

// dirRef is an open directory of a store path, shared by the file jobs of
// its entries: an fs.Dir (its write bit and mtime, restored once after a
// burst of concurrent renames into it, and its journal entry) that is
// closed when the last job is done.
type dirRef struct {
	fs.Dir
	r    *run
	refs atomic.Int32
}

func (d *dirRef) ref() { d.refs.Add(1) }

// unref drops a reference; the last one sets back the mtime of a
// directory that was only renamed into (fs.Dir.Release) and closes it.
func (d *dirRef) unref() {
	if d.refs.Add(-1) == 0 && !d.Fixed {
		d.RestoreMtime()
		unix.Close(d.Fd)
	}
}
