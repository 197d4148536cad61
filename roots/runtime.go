package roots

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"storekeeper/internal/procfs"
)

// The ways a process holds a file, as Root.Via and BusyHolder.Via name
// them.
const (
	viaExe     = "exe"     // /proc/PID/exe: the program it runs
	viaCwd     = "cwd"     // /proc/PID/cwd: its working directory
	viaRoot    = "root"    // /proc/PID/root: its root directory (chroot); Nix does not look at it
	viaFD      = "fd"      // /proc/PID/fd/N: an open file
	viaMaps    = "maps"    // /proc/PID/maps: a file mapped into its memory
	viaEnviron = "environ" // /proc/PID/environ: a variable whose value names the path
	viaKernel  = "kernel"  // /proc/sys/kernel/{modprobe,fbsplash,poweroff_cmd}: a program the kernel may run
)

// mapLine matches a /proc/PID/maps line whose last field is an absolute
// path (Nix's regex: six whitespace-separated fields, the sixth a path).
// A mapped file that was deleted (" (deleted)" after its path) or whose
// path holds whitespace has more fields: Nix does not count it.
//
// Nix's \s and \S are libstdc++'s std::regex classes, C's isspace in
// the "C" locale: space, \t, \n, \v, \f, \r. RE2's \s lacks \v, so
// the classes are spelled out (a mapped file named "a\vb" is no root,
// "lib\v" is one, as in Nix).
var mapLine = regexp.MustCompile(strings.NewReplacer(`\s`, `[ \t\n\v\f\r]`, `\S`, `[^ \t\n\v\f\r]`).
	Replace(`^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$`))

// envPathRegexp matches a store path in an environment block as Nix
// does: the store directory, '/', then [0-9a-z]+ and name characters.
func envPathRegexp(storeDir string) *regexp.Regexp {
	return regexp.MustCompile(regexp.QuoteMeta(storeDir) + `/[0-9a-z]+[0-9a-zA-Z+\-._?=]*`)
}

// holding is one way a process holds, or names, a file of interest.
type holding struct {
	via  string // viaExe, viaCwd, viaRoot, viaFD, viaMaps or viaEnviron
	link string // what was read: /proc/PID/exe, /proc/PID/fd/3, /proc/PID/maps, /proc/PID/environ
	file string // what it names: the link's target, the mapped file, the text the environment holds
	env  string // viaEnviron: the variable's name (the text before its first '='; "" if none)
	// nix: Nix's findRuntimeRoots sees this holding (and takes the path
	// as a runtime root when it is valid). False for viaRoot, and for a
	// mapping Nix's pattern skips (a deleted file, a path with spaces).
	nix bool
}

// procScanner reads what processes hold: the targets of exe, cwd, fd/*
// (and root, with withRoot), the files mapped in maps and the text that
// envRes match in environ, keeping those want accepts.
type procScanner struct {
	proc     string
	want     func(target string) bool
	envRes   []*regexp.Regexp
	withRoot bool
}

// procScan is what procScanner.scan read of one process.
type procScan struct {
	holdings []holding
	// denied: some of its files may not be read by this user (another
	// user's process, or one that is not dumpable): holdings may be
	// missing.
	denied bool
	// vanished: a read found the process gone (ENOENT, ESRCH).
	vanished bool
	// fdErr is a failure to list /proc/PID/fd other than the process
	// being gone or denied (Find stops on it, as Nix does).
	fdErr error
	// errs are the other failures to read maps or environ (Find stops on
	// them, as Nix does; each names its file), and cut the files read
	// only up to procfs's bounds (what lies past them was not looked at).
	errs []error
	cut  []string
}

// scan reads the process pid. It never fails as a whole: what it could
// not read is recorded in the result.
func (sc *procScanner) scan(pid int) procScan {
	var ps procScan
	dir := procfs.Dir(sc.proc, pid)
	failed := func(err error) {
		switch {
		case procfs.Vanished(err):
			ps.vanished = true
		case procfs.Denied(err):
			ps.denied = true
		}
	}
	links := []string{viaExe, viaCwd}
	if sc.withRoot {
		links = append(links, viaRoot)
	}
	for _, name := range links {
		t, err := procfs.Link(sc.proc, pid, name)
		if err != nil {
			failed(err)
			continue
		}
		if isAbs(t) && sc.want(t) {
			ps.holdings = append(ps.holdings, holding{via: name, link: dir + "/" + name, file: t, nix: name != viaRoot})
		}
	}
	err := procfs.FDs(sc.proc, pid, func(fd string) {
		t, err := procfs.Link(sc.proc, pid, "fd/"+fd)
		if err != nil {
			failed(err)
			return
		}
		if isAbs(t) && sc.want(t) {
			ps.holdings = append(ps.holdings, holding{via: viaFD, link: dir + "/fd/" + fd, file: t, nix: true})
		}
	})
	if err != nil {
		failed(err)
		if !ignorableProcErr(err) {
			ps.fdErr = err
		}
	}
	mapsFile := dir + "/maps"
	cut, err := procfs.Maps(sc.proc, pid, func(line []byte) {
		p := mappedPath(line)
		if p == "" || !sc.want(p) {
			return
		}
		h := holding{via: viaMaps, link: mapsFile, file: p}
		if m := mapLine.FindSubmatch(line); m != nil {
			h.file, h.nix = string(m[1]), true
		}
		ps.holdings = append(ps.holdings, h)
	})
	sc.note(&ps, mapsFile, cut, err, failed)
	envFile := dir + "/environ"
	env, cut, err := procfs.Environ(sc.proc, pid)
	sc.note(&ps, envFile, cut, err, failed)
	for len(env) > 0 {
		v := env
		if i := bytes.IndexByte(env, 0); i >= 0 {
			v, env = env[:i], env[i+1:]
		} else {
			env = nil
		}
		name := ""
		if i := bytes.IndexByte(v, '='); i >= 0 {
			name = string(v[:min(i, maxEnvName)])
		}
		for _, re := range sc.envRes {
			for _, m := range re.FindAll(v, -1) {
				if t := string(m); sc.want(t) {
					ps.holdings = append(ps.holdings, holding{via: viaEnviron, link: envFile, file: t, env: name, nix: true})
				}
			}
		}
	}
	return ps
}

// maxEnvName bounds the variable name kept for a holding: a longer one
// is cut.
const maxEnvName = 256

// note records what reading file left in ps: whether it was cut at its
// bound, and its error (a process gone or denied is marked by failed,
// any other error kept).
func (sc *procScanner) note(ps *procScan, file string, cut bool, err error, failed func(error)) {
	if cut {
		ps.cut = append(ps.cut, file)
	}
	if err != nil {
		failed(err)
		if !ignorableProcErr(err) {
			ps.errs = append(ps.errs, err)
		}
	}
}

// mappedPath is the path a maps line names: what follows its first five
// fields, without trailing whitespace ("" when there is none, or it is
// not absolute: an anonymous mapping, "[heap]", "[stack]").
func mappedPath(line []byte) string {
	i := 0
	for f := 0; f < 5; f++ {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return ""
		}
		for i < len(line) && !isSpace(line[i]) {
			i++
		}
	}
	for i < len(line) && isSpace(line[i]) {
		i++
	}
	j := len(line)
	for j > i && isSpace(line[j-1]) {
		j--
	}
	if i == j || line[i] != '/' {
		return ""
	}
	return string(line[i:j])
}

// isSpace is mapLine's \s (C's isspace: space, \t, \n, \v, \f, \r).
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// isAbs: only absolute link targets name files (sockets and pipes read
// as "socket:[123]").
func isAbs(t string) bool { return len(t) > 0 && t[0] == '/' }

// runtime finds what running processes use, as Nix's findRuntimeRoots
// does: /proc/PID/{exe,cwd,fd/*} link targets, the paths mapped in
// /proc/PID/maps, store paths mentioned in /proc/PID/environ, and the
// files the kernel may execute (/proc/sys/kernel/{modprobe,fbsplash,
// poweroff_cmd}). Each root of a process carries its pid, command line
// and user; an environ root also the name of the (first) variable that
// names it. Processes that vanish or that we may not inspect are skipped
// silently, like Nix; `roots busy` (Busy) counts them. Any other failure
// to list a process's descriptors or read its maps or environ is an
// error wrapping ErrRootsUnreadable, as it is for Nix. A maps or environ
// file past procfs's bounds is read up to them and noted; a maps line cut
// at procfs.MaxMapsLine (a file deeper than 64 KiB of path) is matched
// as cut, which can only add a root Nix would not take (when what was
// cut holds whitespace), never miss one (the kernel starts the path
// within a line's first hundred bytes).
func (f *finder) runtime(ctx context.Context) error {
	proc := f.o.ProcDir
	ents, err := os.ReadDir(proc)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return f.ioErr(proc, err)
	}
	envRes := []*regexp.Regexp{envPathRegexp(f.lay.StoreDir)}
	if f.lay.RealStoreDir != f.lay.StoreDir {
		envRes = append(envRes, envPathRegexp(f.lay.RealStoreDir))
	}
	sc := &procScanner{proc: proc, envRes: envRes, want: func(t string) bool {
		_, ok := f.toStorePath(t)
		return ok
	}}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ps := sc.scan(pid)
		if ps.fdErr != nil {
			return f.ioErr(filepath.Join(proc, e.Name(), "fd"), ps.fdErr)
		}
		// Nix stops on these too: a root missed here could be collected.
		for _, err := range ps.errs {
			return fmt.Errorf("%w: %w", ErrRootsUnreadable, err)
		}
		for _, c := range ps.cut {
			f.note(c, "", "longer than storekeeper reads: only its beginning was searched for runtime roots")
		}
		var found []candidate
		for _, h := range ps.holdings {
			if !h.nix {
				continue
			}
			sp, _ := f.toStorePath(h.file)
			found = append(found, candidate{Root{Kind: Runtime, Link: h.link, Target: sp, PID: pid, Via: h.via, Env: h.env}, true})
		}
		if len(found) > 0 {
			cmd, user := f.process(pid)
			for i := range found {
				found[i].Command, found[i].User = cmd, user
			}
			f.cands = append(f.cands, found...)
		}
	}
	for _, name := range []string{"modprobe", "fbsplash", "poweroff_cmd"} {
		p := filepath.Join(proc, "sys", "kernel", name)
		data, _, err := procfs.ReadFile(p, maxKernelFile)
		if err != nil {
			continue
		}
		if sp, ok := f.toStorePath(string(data)); ok {
			f.cands = append(f.cands, candidate{Root{Kind: Runtime, Link: p, Target: sp, Via: viaKernel}, true})
		}
	}
	return nil
}

// maxKernelFile bounds /proc/sys/kernel/modprobe and the like: a path
// (PATH_MAX) and its newline; a longer one is read cut.
const maxKernelFile = 4096

// process is the command line and the user of pid, "" for what cannot
// be read.
func (f *finder) process(pid int) (command, user string) {
	return procfs.CommandLine(f.o.ProcDir, pid), processUser(f.o.ProcDir, pid)
}

// processUser is the name of pid's real user (its uid in decimal when it
// has no name), "" when /proc/PID/status cannot be read.
func processUser(proc string, pid int) string {
	uid, err := procfs.RealUID(proc, pid)
	if err != nil {
		return ""
	}
	return UserName(uid)
}

func ignorableProcErr(err error) bool {
	return procfs.Vanished(err) || procfs.Denied(err)
}
