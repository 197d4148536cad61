#!/usr/bin/python3
"""eiofs: a pass-through FUSE file system whose one file fails reads with EIO.

usage: eiofs.py DIR BADFILE LOG [DELAY_MS]

Mounts over DIR a view of what DIR held before the mount (every operation is
done relative to a descriptor of DIR opened first), read-write, so that a
store mounted through it can be verified and repaired. Reading BADFILE
(relative to DIR: HASH-NAME/sub/file) fails with EIO, as a disk's bad
sector would; opening, stat, rename and unlink of it work. Each read
attempt of it appends a line "read BADFILE" to LOG. Once mounted it writes
"mounted" to LOG. An empty BADFILE fails no read.
tests/repair_eio_test.go runs it in a private mount namespace (Debian's
python3-fusepy, which .ci/run installs).

With DELAY_MS the file system is a slow disk: every read of file data
(each read(2) the kernel passes on) sleeps DELAY_MS milliseconds first,
and the files are opened with direct_io, so the page cache never serves a
read and the kernel does no readahead: each read a program makes reaches
the daemon, which serves them on many threads (libfuse's multithreaded
loop), so they overlap. It counts the reads in flight and the store paths
(a read's first path component, HASH-NAME) with at least one read in
flight, and whenever either count reaches a new maximum it appends
"max-reads N" or "max-paths N" to LOG (the last such line of each is the
maximum). tests/verify_gate_test.go uses it.

Only the operations a store needs are provided: no POSIX or flock lock
handler (the kernel then keeps locks locally, as on a local disk) and no
rename2 (RENAME_EXCHANGE fails with EINVAL, as on NFS).
"""
import errno
import os
import sys
import threading
import time

from fusepy import FUSE, FuseOSError


class EIOFS:
    use_ns = True

    def __init__(self, fd, bad, log, delay=None):
        self.fd = fd
        self.bad = "/" + bad.strip("/")
        self.log = log
        self.delay = delay  # seconds each read sleeps, or None
        self.lock = threading.Lock()
        self.reads = 0  # in flight
        self.paths = {}  # HASH-NAME -> its reads in flight
        self.max_reads = self.max_paths = 0

    def __call__(self, op, *args):
        f = getattr(self, op, None)
        if f is None:
            raise FuseOSError(errno.ENOSYS)
        return f(*args)

    @staticmethod
    def rel(path):
        return path.lstrip("/") or "."

    def note(self, text):
        with open(self.log, "a") as f:
            f.write(text + "\n")

    def init(self, path):
        self.note("mounted")

    def getattr(self, path, fh=None):
        st = os.stat(self.rel(path), dir_fd=self.fd, follow_symlinks=False)
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
        attrs = {k: getattr(st, k) for k in keys}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    def access(self, path, amode):
        os.stat(self.rel(path), dir_fd=self.fd, follow_symlinks=False)
        return 0

    def readdir(self, path, fh):
        d = os.open(self.rel(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.fd)
        try:
            return [".", ".."] + os.listdir(d)
        finally:
            os.close(d)

    def readlink(self, path):
        return os.readlink(self.rel(path), dir_fd=self.fd)

    def open(self, path, flags):
        return os.open(self.rel(path), flags | os.O_NOFOLLOW, dir_fd=self.fd)

    def create(self, path, mode, fi=None):
        return os.open(self.rel(path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=self.fd)

    def read(self, path, size, offset, fh):
        if path == self.bad:
            self.note("read " + path.lstrip("/"))
            raise FuseOSError(errno.EIO)
        if self.delay is None:
            return os.pread(fh, size, offset)
        top = path.lstrip("/").split("/")[0]
        with self.lock:
            self.reads += 1
            self.paths[top] = self.paths.get(top, 0) + 1
            if self.reads > self.max_reads:
                self.max_reads = self.reads
                self.note("max-reads %d" % self.reads)
            if len(self.paths) > self.max_paths:
                self.max_paths = len(self.paths)
                self.note("max-paths %d" % len(self.paths))
        try:
            time.sleep(self.delay)
            return os.pread(fh, size, offset)
        finally:
            with self.lock:
                self.reads -= 1
                self.paths[top] -= 1
                if self.paths[top] == 0:
                    del self.paths[top]

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
            return
        f = os.open(self.rel(path), os.O_WRONLY | os.O_NOFOLLOW, dir_fd=self.fd)
        try:
            os.ftruncate(f, length)
        finally:
            os.close(f)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def release(self, path, fh):
        os.close(fh)

    def mkdir(self, path, mode):
        os.mkdir(self.rel(path), mode, dir_fd=self.fd)

    def rmdir(self, path):
        os.rmdir(self.rel(path), dir_fd=self.fd)

    def unlink(self, path):
        os.unlink(self.rel(path), dir_fd=self.fd)

    def rename(self, old, new):
        os.rename(self.rel(old), self.rel(new), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def link(self, target, source):
        os.link(self.rel(source), self.rel(target), src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    def symlink(self, target, source):
        os.symlink(source, self.rel(target), dir_fd=self.fd)

    def chmod(self, path, mode):
        os.chmod(self.rel(path), mode, dir_fd=self.fd)

    def chown(self, path, uid, gid):
        os.chown(self.rel(path), uid, gid, dir_fd=self.fd, follow_symlinks=False)

    def utimens(self, path, times=None):
        if times is None:
            os.utime(self.rel(path), dir_fd=self.fd, follow_symlinks=False)
        else:
            os.utime(self.rel(path), ns=times, dir_fd=self.fd, follow_symlinks=False)

    def statfs(self, path):
        st = os.statvfs(self.fd)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")
        return {k: getattr(st, k) for k in keys}


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: eiofs.py DIR BADFILE LOG [DELAY_MS]")
    mnt, bad, log = sys.argv[1:4]
    slow = {}
    delay = None
    if len(sys.argv) == 5:
        delay = float(sys.argv[4]) / 1000
        slow = {"direct_io": True}
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    FUSE(EIOFS(fd, bad, log, delay), mnt, foreground=True, use_ino=True, nonempty=True, attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="eiofs", **slow)


if __name__ == "__main__":
    main()
