package roots

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// mapLine matches a /proc/PID/maps line whose last field is an absolute
// path (Nix's regex: six whitespace-separated fields, the sixth a path).
var mapLine = regexp.MustCompile(`^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$`)

// runtime finds what running processes use, as Nix's findRuntimeRoots
// does: /proc/PID/{exe,cwd,fd/*} link targets, the paths mapped in
// /proc/PID/maps, store paths mentioned in /proc/PID/environ, and the
// files the kernel may execute (/proc/sys/kernel/{modprobe,fbsplash,
// poweroff_cmd}). Processes that vanish or that we may not inspect are
// skipped silently, like Nix.
func (f *finder) runtime(ctx context.Context) error {
	proc := f.o.ProcDir
	ents, err := os.ReadDir(proc)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return f.ioErr(proc, err)
	}
	envRe := f.envRegexps()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := filepath.Join(proc, e.Name())
		var found []candidate
		add := func(link, target, via string) {
			if sp, ok := f.toStorePath(target); ok {
				found = append(found, candidate{Root{Kind: Runtime, Link: link, Target: sp, PID: pid, Via: via}, true})
			}
		}
		for _, name := range []string{"exe", "cwd"} {
			link := filepath.Join(dir, name)
			if t, ok := readProcLink(link); ok {
				add(link, t, name)
			}
		}
		fdDir := filepath.Join(dir, "fd")
		if fds, err := os.ReadDir(fdDir); err == nil {
			for _, fd := range fds {
				if strings.HasPrefix(fd.Name(), ".") {
					continue
				}
				link := filepath.Join(fdDir, fd.Name())
				if t, ok := readProcLink(link); ok {
					add(link, t, "fd")
				}
			}
		} else if !ignorableProcErr(err) {
			return f.ioErr(fdDir, err)
		}
		mapsFile := filepath.Join(dir, "maps")
		if data, err := os.ReadFile(mapsFile); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if m := mapLine.FindStringSubmatch(line); m != nil {
					add(mapsFile, m[1], "maps")
				}
			}
		}
		envFile := filepath.Join(dir, "environ")
		if data, err := os.ReadFile(envFile); err == nil {
			for _, re := range envRe {
				for _, m := range re.FindAll(data, -1) {
					add(envFile, string(m), "environ")
				}
			}
		}
		if len(found) > 0 {
			cmd := processCommand(dir)
			for i := range found {
				found[i].Command = cmd
			}
			f.cands = append(f.cands, found...)
		}
	}
	for _, name := range []string{"modprobe", "fbsplash", "poweroff_cmd"} {
		p := filepath.Join(proc, "sys", "kernel", name)
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if sp, ok := f.toStorePath(string(data)); ok {
			f.cands = append(f.cands, candidate{Root{Kind: Runtime, Link: p, Target: sp, Via: "kernel"}, true})
		}
	}
	return nil
}

// envRegexps match store paths in an environment block: Nix's pattern
// (store dir, '/', then [0-9a-z]+ and name characters), for the logical
// store dir and, for a chroot store, the physical one.
func (f *finder) envRegexps() []*regexp.Regexp {
	mk := func(dir string) *regexp.Regexp {
		return regexp.MustCompile(regexp.QuoteMeta(dir) + `/[0-9a-z]+[0-9a-zA-Z+\-._?=]*`)
	}
	res := []*regexp.Regexp{mk(f.lay.StoreDir)}
	if f.lay.RealStoreDir != f.lay.StoreDir {
		res = append(res, mk(f.lay.RealStoreDir))
	}
	return res
}

// readProcLink reads a /proc symlink; only absolute targets count (sockets
// and pipes read as "socket:[123]").
func readProcLink(p string) (string, bool) {
	t, err := os.Readlink(p)
	if err != nil || !strings.HasPrefix(t, "/") {
		return "", false
	}
	return t, true
}

func ignorableProcErr(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ESRCH)
}

// processCommand is the process's command line with NULs as spaces.
func processCommand(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return ""
	}
	data = bytes.TrimRight(data, "\x00")
	return string(bytes.ReplaceAll(data, []byte{0}, []byte{' '}))
}
