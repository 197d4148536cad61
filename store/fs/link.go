package fs

import "golang.org/x/sys/unix"

// LinkOps are the system calls ReplaceWithLink makes: unix.Linkat and
// unix.Renameat (SysLinkOps); tests put in ones that fail or race.
type LinkOps struct {
	Linkat   func(olddirfd int, oldpath string, newdirfd int, newpath string, flags int) error
	Renameat func(olddirfd int, oldpath string, newdirfd int, newpath string) error
}

// SysLinkOps are the real system calls.
var SysLinkOps = LinkOps{Linkat: unix.Linkat, Renameat: unix.Renameat}

// ReplaceStep says which step of ReplaceWithLink failed.
type ReplaceStep int

const (
	StepLink   ReplaceStep = iota + 1 // making the temporary link: nothing changed
	StepRename                        // renaming it over the file: the file is intact
)

// ReplaceWithLink replaces the entry name of d by a hard link to target
// (a name in the directory targetFd, e.g. a .links entry), atomically:
// it links target to tmp in tmpFd (a directory on the same file system,
// e.g. the store directory), then renames tmp over name, between
// d.Acquire(j) and d.Release, adding d's write bit for that moment when
// the rename is refused (EACCES or EPERM: not root). On a failed rename
// tmp is removed. It returns the step that failed and the system call's
// error as is (unix.Errno: EMLINK, ENOENT, ENOSPC, ...), or 0 and nil.
//
// Crash safety: name is the old file or the link at every instant; a
// kill -9 can leave tmp behind (callers name it so that they can find and
// remove it, e.g. by their pid) and d with a fresh mtime or a write bit,
// which the journal repairs (ReplayJournals). When name already is a
// link to target's inode, rename(2) does nothing and tmp stays: the
// caller removes such leftovers.
func ReplaceWithLink(ops LinkOps, d *Dir, j *Journal, name string, targetFd int, target string, tmpFd int, tmp string) (ReplaceStep, error) {
	if err := ops.Linkat(targetFd, target, tmpFd, tmp, 0); err != nil {
		return StepLink, err
	}
	d.Acquire(j)
	err := ops.Renameat(tmpFd, tmp, d.Fd, name)
	if (err == unix.EACCES || err == unix.EPERM) && d.MakeWritable() {
		err = ops.Renameat(tmpFd, tmp, d.Fd, name)
	}
	d.Release(err == nil)
	if err != nil {
		unix.Unlinkat(tmpFd, tmp, 0)
		return StepRename, err
	}
	return 0, nil
}
