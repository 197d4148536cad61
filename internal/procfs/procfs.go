// Package procfs reads what Linux's /proc says about a process, every
// read bounded: its command line, its real uid, its state, its links
// (exe, cwd, root, fd/N), its memory maps and its environment. It is the
// one place storekeeper reads /proc/PID: lock (who holds a lock) and
// roots (runtime roots, `roots busy`) use it. It knows nothing of
// stores: what a link or a mapping names is the caller's business.
//
// Every function takes the /proc directory (tests point it at a fake
// tree) and a pid. /proc is a snapshot that changes while it is read: a
// process may exit (the errors then satisfy Vanished) or exec between two
// reads, so each answer is what was true at some instant of its read.
// Reads of another user's process may be refused (Denied). Nothing here
// keeps a descriptor open after it returns or writes anything.
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The bounds of what is read, each far above what a process normally
// has; what lies past them is said where it applies.
const (
	// MaxCommandLine bounds a command line: longer ones are cut.
	MaxCommandLine = 4096
	// MaxEnviron bounds an environment block. Linux (4.13 and later)
	// lets exec pass at most 6 MiB of arguments and environment
	// together, so only a process that moved its environment with
	// prctl(PR_SET_MM) (CAP_SYS_RESOURCE) can have more.
	MaxEnviron = 16 << 20
	// MaxMapsLines bounds the mappings read from a maps file: 64 times
	// vm.max_map_count's default (65530).
	MaxMapsLines = 1 << 22
	// MaxMapsLine bounds one maps line: a longer one (a path longer than
	// PATH_MAX) is passed cut to this length.
	MaxMapsLine = 64 << 10
	// maxSmallFile bounds the small text files: stat and status.
	maxSmallFile = 64 << 10
)

// Vanished says whether err means the process (or what was read of it)
// is gone: ENOENT or ESRCH.
func Vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// Denied says whether err means this user may not read it: EACCES or
// EPERM (another user's process, or one that is not dumpable).
func Denied(err error) bool {
	return errors.Is(err, fs.ErrPermission)
}

// Dir is the directory of pid under procDir.
func Dir(procDir string, pid int) string {
	return procDir + "/" + strconv.Itoa(pid)
}

// ReadFile reads at most max bytes of the file at p (a /proc file whose
// size stat does not tell); truncated says whether there was more.
func ReadFile(p string, max int64) (data []byte, truncated bool, err error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	data, err = io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, false, &os.PathError{Op: "read", Path: p, Err: err}
	}
	if int64(len(data)) > max {
		return data[:max], true, nil
	}
	return data, false, nil
}

// CommandLine is /proc/PID/cmdline with spaces between the arguments,
// cut to MaxCommandLine bytes; "" when it cannot be read (and for a
// kernel thread). It is raw: print it through report.Name.
func CommandLine(procDir string, pid int) string {
	if pid <= 0 {
		return ""
	}
	b, _, err := ReadFile(Dir(procDir, pid)+"/cmdline", MaxCommandLine)
	if err != nil {
		return ""
	}
	b = bytes.TrimRight(b, "\x00")
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// Stat is what the callers need of /proc/PID/stat.
type Stat struct {
	State byte   // R, S, D, Z (zombie), X (dead), ...
	Flags uint64 // the kernel's PF_* flags
	// StartTicks is when the process started, in clock ticks after boot
	// (field 22; ClockTicks a second): see Started.
	StartTicks uint64
}

// ClockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's
// times: 100 a second on every Linux architecture Go runs on.
const ClockTicks = 100

// Started is when the process started, given when the system booted
// (BootTime).
func (s Stat) Started(boot time.Time) time.Time {
	return boot.Add(time.Duration(s.StartTicks) * (time.Second / ClockTicks))
}

// maxProcStat bounds /proc/stat: its per-CPU lines and its interrupt
// counts grow with the machine (a few hundred KiB on thousands of CPUs).
const maxProcStat = 16 << 20

// BootTime is when the system booted: /proc/stat's btime line.
func BootTime(procDir string) (time.Time, error) {
	p := procDir + "/stat"
	b, _, err := ReadFile(p, maxProcStat)
	if err != nil {
		return time.Time{}, err
	}
	for _, l := range bytes.Split(b, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(l, []byte("btime ")); ok {
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("%s: btime: %w", p, err)
			}
			return time.Unix(n, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s: no btime line", p)
}

// pfKthread is the kernel's PF_KTHREAD.
const pfKthread = 0x00200000

// KernelThread says whether the process is a kernel thread (it has no
// executable, memory or files of a program).
func (s Stat) KernelThread() bool { return s.Flags&pfKthread != 0 }

// Zombie says whether the process has exited and waits to be reaped: it
// holds no file any more.
func (s Stat) Zombie() bool { return s.State == 'Z' || s.State == 'X' }

// ReadStat reads /proc/PID/stat (readable by every user).
func ReadStat(procDir string, pid int) (Stat, error) {
	p := Dir(procDir, pid) + "/stat"
	b, _, err := ReadFile(p, maxSmallFile)
	if err != nil {
		return Stat{}, err
	}
	// "pid (comm) state ppid ...": the command name may hold spaces and
	// ')', so the fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("%s: no ')' after the command name", p)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 9 (flags) is f[6], field 22
	// (starttime) f[19]. Linux has written 52 fields since 3.5.
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("%s: %d fields after the command name, want at least 20", p, len(f))
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("%s: flags: %w", p, err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("%s: starttime: %w", p, err)
	}
	return Stat{State: f[0][0], Flags: flags, StartTicks: start}, nil
}

// RealUID is the real uid of the process, from /proc/PID/status's Uid
// line (readable by every user).
func RealUID(procDir string, pid int) (uint32, error) {
	p := Dir(procDir, pid) + "/status"
	b, _, err := ReadFile(p, maxSmallFile)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			uid, err := strconv.ParseUint(f[0], 10, 32)
			if err != nil {
				return 0, fmt.Errorf("%s: Uid: %w", p, err)
			}
			return uint32(uid), nil
		}
	}
	return 0, fmt.Errorf("%s: no Uid line", p)
}

// Link reads the link /proc/PID/NAME (exe, cwd, root, fd/3). The kernel
// writes at most a page; a fake tree's symlinks are at most PATH_MAX.
// Targets need not be paths: "socket:[123]", "pipe:[45]",
// "anon_inode:[eventfd]"; a deleted file reads "PATH (deleted)".
func Link(procDir string, pid int, name string) (string, error) {
	return os.Readlink(Dir(procDir, pid) + "/" + name)
}

// FDs calls fn with the name of each entry of /proc/PID/fd (a descriptor
// number), reading the directory in batches so that a process with a
// million descriptors costs no more memory than one with ten. The
// listing of a process that exits meanwhile ends with an error that
// satisfies Vanished.
func FDs(procDir string, pid int, fn func(fd string)) error {
	d, err := os.Open(Dir(procDir, pid) + "/fd")
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(256)
		for _, n := range names {
			if !strings.HasPrefix(n, ".") {
				fn(n)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Maps calls fn with each line of /proc/PID/maps, without its newline:
// at most MaxMapsLines lines (truncated then says the rest was not
// read), each longer one cut to MaxMapsLine bytes (the rest of it
// skipped). The line is only valid during the call. It streams: memory
// does not grow with the file.
func Maps(procDir string, pid int, fn func(line []byte)) (truncated bool, err error) {
	p := Dir(procDir, pid) + "/maps"
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, MaxMapsLine)
	for n := 0; ; n++ {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 && n >= MaxMapsLines {
			return true, nil
		}
		if err == bufio.ErrBufferFull {
			fn(line)
			for err == bufio.ErrBufferFull { // skip the rest of the line
				_, err = r.ReadSlice('\n')
			}
			if err == io.EOF {
				return false, nil
			}
			if err != nil {
				return false, &os.PathError{Op: "read", Path: p, Err: err}
			}
			continue
		}
		if len(line) > 0 {
			fn(bytes.TrimSuffix(line, []byte{'\n'}))
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, &os.PathError{Op: "read", Path: p, Err: err}
		}
	}
}

// Environ reads /proc/PID/environ, at most MaxEnviron bytes: the
// variables, each NAME=VALUE, NUL-terminated. When there was more
// (truncated), the last variable, which may have been cut, is dropped:
// every variable returned is whole.
func Environ(procDir string, pid int) (data []byte, truncated bool, err error) {
	data, truncated, err = ReadFile(Dir(procDir, pid)+"/environ", MaxEnviron)
	if truncated {
		data = data[:bytes.LastIndexByte(data, 0)+1]
	}
	return data, truncated, err
}
