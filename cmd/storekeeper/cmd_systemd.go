package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"storekeeper/contrib/systemd"
	"storekeeper/internal/atomicfile"
	"storekeeper/report"
)

// systemdInstallResult is what `systemd install` reports (--json).
type systemdInstallResult struct {
	Dir    string              `json:"dir"`
	DryRun bool                `json:"dry_run"`
	Units  []systemdUnitResult `json:"units"`
	// Enable is the command that activates the timers (never run by
	// storekeeper).
	Enable string `json:"enable"`
}

// systemdUnitResult is one unit file: its action is "installed" (a new
// file), "replaced" (with --force: a different file, one another user
// could write, or a symlink there; Reason says which), "unchanged" (the
// same bytes were there, writable by its owner only), "would-install"
// and "would-replace" (--dry-run), or "refused" (what "replaced" replaces,
// without --force).
type systemdUnitResult struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Action string `json:"action"`
	Reason string `json:"reason,omitempty"`
}

type systemdInstallOptions struct {
	dir, bin, metricsDir string
	noMetrics            bool
	dryRun, force        bool
}

func newSystemdCommand(g *globalOptions) *cobra.Command {
	cmd := parentCommand("systemd", "Install storekeeper's systemd units: daily gc and optimise, a rolling verify, gc --auto every 5 minutes")
	o := &systemdInstallOptions{}
	install := &cobra.Command{
		Use:   "install",
		Short: "Write storekeeper's systemd service and timer units (does not run systemctl)",
		Long: `Write storekeeper's systemd units into a directory (default
/etc/systemd/system), with ExecStart= naming this storekeeper binary (its
absolute path, or --bin PATH; a path in the store is written with a
warning: a collection deletes it once no profile keeps it, so give a
profile's, such as /nix/var/nix/profiles/default/bin/storekeeper; so is,
installing as root, a binary another user could replace: the file, or a
directory or symlink on its way, not root's alone):

  storekeeper-gc.service, .timer        daily at 03:15 (randomised by up to
                                        45 minutes): gc --keep 5
                                        --keep-since 30d; on success it
                                        starts storekeeper-optimise.service
  storekeeper-optimise.service          optimise, after a successful gc
  storekeeper-verify.service, .timer    daily at 05:00 (up to 1 hour
                                        later): verify --check-contents
                                        --budget 30m, the least recently
                                        verified paths first
  storekeeper-gc-auto.service, .timer   every 5 minutes: gc --auto (one
                                        statfs unless free space is low)
  storekeeper-repair.service            repair --damaged, the only unit
                                        with network; no timer: start it
                                        by hand or from verify's OnFailure=

Each runs at the lowest CPU and I/O priority (gc --auto: low, not idle)
in a read-only system where only the store, /nix/var and the metrics
directory are writable, without network (but repair), with no new
privileges and only the capabilities its command needs; each writes
node_exporter's textfile metrics to --metrics-dir
(/var/lib/prometheus/node-exporter) unless --no-metrics: a directory
owned by root and writable by root alone, or every run fails (install
warns when it is not). The comments in the files say why each setting is
what it is.

A unit file already there is left alone when it holds the same bytes and
only its owner (this user or root) can write it; it is refused when it
differs (edited by hand, or from another version), when group or others
can write it or another user owns it, or when a symlink is there
(systemctl mask links a unit to /dev/null), unless --force: then it is
replaced, the symlink itself, never where it points.
Every check is made before anything is written, so a refusal writes
nothing. Each file is written whole (a temporary file in the directory,
fsynced, renamed over the name), never through a symlink; the directory
must belong to this user or root and be writable by its owner only, and
a symlink on its path is followed only where no other user could have
put it (in a directory of root's or this user's that only its owner can
write, or root's or this user's link in a sticky one such as /tmp).

It then prints the command that activates the timers:
  systemctl daemon-reload && systemctl enable --now storekeeper-gc.timer
  storekeeper-gc-auto.timer storekeeper-verify.timer
storekeeper never runs systemctl itself.

` + exitCodesHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			g.ran = true
			return runSystemdInstall(cmd, g, o)
		},
	}
	f := install.Flags()
	f.StringVar(&o.dir, "dir", "/etc/systemd/system", "the directory to write the units into")
	f.StringVar(&o.bin, "bin", "", "the storekeeper binary the units run (default: this one's absolute path)")
	f.StringVar(&o.metricsDir, "metrics-dir", systemd.DefaultMetricsDir, "node_exporter's textfile directory, where each unit writes storekeeper-UNIT.prom")
	f.BoolVar(&o.noMetrics, "no-metrics", false, "write no metrics files (no --metrics-file in the units)")
	f.BoolVar(&o.dryRun, "dry-run", false, "say what would be written, write nothing")
	f.BoolVar(&o.force, "force", false, "replace unit files that differ from storekeeper's, and symlinks at their names")
	// Shells complete directories for these (the flags exist: no error).
	install.MarkFlagDirname("dir")
	install.MarkFlagDirname("metrics-dir")
	cmd.AddCommand(install)
	return cmd
}

// enableLine is the command that activates the timers of units.
func enableLine(units []systemd.Unit) string {
	line := "systemctl daemon-reload && systemctl enable --now"
	for _, u := range units {
		if u.Timer() {
			line += " " + u.Name
		}
	}
	return line
}

func runSystemdInstall(cmd *cobra.Command, g *globalOptions, o *systemdInstallOptions) error {
	p := g.printer(cmd)
	bin := o.bin
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding this binary's path for ExecStart= (give it with --bin PATH): %w", err)
		}
		bin = self
	} else if !filepath.IsAbs(bin) {
		return usagef("--bin %s: give an absolute path (systemd runs ExecStart= by it)", report.Name(bin))
	}
	if st, err := os.Stat(bin); err != nil {
		return usagef("--bin %s: the units would run a binary that is not there: %w", report.Name(bin), err)
	} else if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return usagef("--bin %s: not an executable file (mode %v)", report.Name(bin), st.Mode())
	}
	if lay, err := g.layout(); err == nil {
		for _, d := range []string{lay.StoreDir, lay.RealStoreDir} {
			if strings.HasPrefix(bin, d+"/") {
				p.Warnf("the units will run %s, in the store: a collection deletes it once no profile keeps it (after an upgrade), and the units then fail; give --bin a path that stays, such as a profile's (/nix/var/nix/profiles/default/bin/storekeeper, /run/current-system/sw/bin/storekeeper)", report.Name(bin))
				break
			}
		}
	}
	// Installed by root, the units run bin as root: warn when another
	// user could replace it. (An install by another user, such as a
	// package build, writes units whose files root owns later.)
	if os.Geteuid() == 0 {
		if why := binaryProblem(bin); why != "" {
			p.Warnf("the units run %s as root, but %s: whoever can change it could run anything as root at the next timer; install storekeeper where only root can change it (/usr/local/bin, a root profile) and give it with --bin", report.Name(bin), why)
		}
	}
	if o.noMetrics && cmd.Flags().Changed("metrics-dir") {
		return usagef("--no-metrics and --metrics-dir exclude each other")
	}
	opts := systemd.Options{Binary: bin, MetricsDir: o.metricsDir, NoMetrics: o.noMetrics}
	units := systemd.Units()
	rendered := make([][]byte, len(units))
	for i, u := range units {
		data, err := systemd.Render(u, opts)
		if err != nil {
			return &usageError{err}
		}
		rendered[i] = data
	}

	dir, err := openOwnDir(o.dir)
	if err != nil {
		return err
	}
	defer dir.Close()
	res := systemdInstallResult{Dir: o.dir, DryRun: o.dryRun, Enable: enableLine(units)}
	var refused []string
	for i, u := range units {
		r := systemdUnitResult{Name: u.Name, Path: filepath.Join(o.dir, u.Name)}
		same, reason, err := compareAt(dir, u.Name, rendered[i])
		switch {
		case err != nil:
			return err
		case same:
			r.Action = "unchanged"
		case reason == "":
			r.Action = "installed"
		case !o.force:
			r.Action, r.Reason = "refused", reason
			refused = append(refused, report.Name(r.Path)+" ("+reason+")")
		default:
			r.Action, r.Reason = "replaced", reason
		}
		if o.dryRun {
			switch r.Action {
			case "installed":
				r.Action = "would-install"
			case "replaced":
				r.Action = "would-replace"
			}
		}
		res.Units = append(res.Units, r)
	}
	if len(refused) > 0 {
		if g.json {
			p.JSON(res)
		}
		return fmt.Errorf("not replacing %s, which differ from storekeeper's units (%w): compare them with the files in contrib/systemd (or see what --dry-run says), then run again with --force to replace them (nothing was written)",
			strings.Join(refused, ", "), fs.ErrExist)
	}
	if !o.dryRun {
		// A symlink at a unit's name was refused above unless --force:
		// then the link itself is replaced, never followed.
		at := atomicfile.RefuseSymlink
		if o.force {
			at = atomicfile.ReplaceSymlink
		}
		wrote := false
		for i, r := range res.Units {
			if r.Action == "unchanged" {
				continue
			}
			if err := atomicfile.Write(dir, r.Name, rendered[i], 0o644, at); err != nil {
				return fmt.Errorf("writing %s: %w", r.Path, err)
			}
			wrote = true
		}
		if wrote {
			if err := dir.Sync(); err != nil {
				return fmt.Errorf("syncing %s: %w", o.dir, err)
			}
		}
	}
	if !o.noMetrics {
		if why := metricsDirProblem(o.metricsDir); why != "" {
			p.Warnf("%s, where the units write their metrics: %s; each run of a unit fails (exit 2) while it cannot write its metrics file: use a directory owned by root and writable by root alone (apt-get install prometheus-node-exporter creates Debian's), or install with --metrics-dir DIR or --no-metrics", report.Name(o.metricsDir), why)
		}
	}
	if g.json {
		return p.JSON(res)
	}
	for _, r := range res.Units {
		line := r.Action + " " + report.Name(r.Path)
		if r.Reason != "" {
			line += " (" + r.Reason + ")"
		}
		p.Textln(line)
	}
	if o.dryRun {
		p.Textln("nothing was written (--dry-run); then run:")
	} else {
		p.Textln("now run:")
	}
	p.Textln("  " + res.Enable)
	return nil
}

// maxBinaryLinks bounds the symlinks binaryProblem follows (Linux's own
// limit).
const maxBinaryLinks = 40

// binaryProblem says how a user other than root could replace bin, the
// absolute path the units run as root with capabilities ("" when none
// can): the file itself owned by another user or writable by group or
// others, or a directory it is reached through (every symlink on the way
// followed, each link's own directory checked too) owned by another user
// or writable by group or others, unless that directory is sticky and
// the entry is root's (as /nix/store). Whoever can replace it runs
// anything as root at the next timer.
func binaryProblem(bin string) string {
	if !filepath.IsAbs(bin) {
		return "not an absolute path"
	}
	rest := strings.Split(bin, "/")
	dir, links := "/", 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			dir = filepath.Dir(dir)
			continue
		}
		p := filepath.Join(dir, c)
		var dst, st unix.Stat_t
		if err := unix.Stat(dir, &dst); err != nil {
			return report.Text(err.Error())
		}
		if err := unix.Lstat(p, &st); err != nil {
			return report.Name(p) + ": " + report.Text(err.Error())
		}
		if dst.Uid != 0 {
			return fmt.Sprintf("%s, on its way, belongs to uid %d", report.Name(dir), dst.Uid)
		}
		switch {
		case dst.Mode&0o022 == 0:
		case dst.Mode&unix.S_ISVTX == 0:
			return fmt.Sprintf("%s, on its way, is writable by group or others (mode %#o)", report.Name(dir), dst.Mode&0o7777)
		case st.Uid != 0:
			return fmt.Sprintf("%s belongs to uid %d", report.Name(p), st.Uid)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if links++; links > maxBinaryLinks {
				return report.Name(bin) + ": too many symlinks"
			}
			target, err := os.Readlink(p)
			if err != nil {
				return report.Text(err.Error())
			}
			if filepath.IsAbs(target) {
				dir = "/"
			}
			rest = append(strings.Split(target, "/"), rest...)
			continue
		}
		dir = p
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return report.Text(err.Error())
	}
	if st.Uid != 0 {
		return fmt.Sprintf("%s belongs to uid %d", report.Name(dir), st.Uid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Sprintf("%s is writable by group or others (mode %#o)", report.Name(dir), st.Mode&0o7777)
	}
	return ""
}

// metricsDirProblem says why the units, which run as root, could not
// write their metrics files into dir as it is here ("" when they can):
// metrics.WriteFile writes only into a directory owned by its writer
// (root) and writable by it alone. It is read when install runs (a
// package build may install the units where dir does not exist yet), so
// install only warns.
func metricsDirProblem(dir string) string {
	st, err := os.Stat(dir)
	switch {
	case err != nil:
		return report.Text(err.Error())
	case !st.IsDir():
		return "not a directory"
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
		return fmt.Sprintf("it belongs to uid %d, not root", sys.Uid)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Sprintf("it is writable by group or others (mode %#o)", perm)
	}
	return ""
}

// openOwnDir opens the directory name to write files into it
// (atomicfile.OpenDir: its path walked without following a symlink that
// another user could have put there) and refuses one that another user
// could change under us: owned by a user other than root and this
// process's, or writable by group or others, or reached through a link
// of another user's (fs.ErrPermission and atomicfile.ErrUnsafe).
// Everything written there is then written relative to the descriptor,
// so the checked directory is the one written.
func openOwnDir(name string) (*os.File, error) {
	d, err := atomicfile.OpenDir(name, atomicfile.RootOrCaller)
	switch {
	case err == nil:
		return d, nil
	case errors.Is(err, atomicfile.ErrUnsafe):
		return nil, fmt.Errorf("%w: %w", fs.ErrPermission, err)
	default:
		return nil, fmt.Errorf("opening the directory %s: %w", report.Name(name), err)
	}
}

// maxCompared bounds how much of an existing file compareAt reads: more
// than any unit file or man page storekeeper writes.
const maxCompared = 1 << 20

// compareAt compares the file at name in dir with want, never following
// a symlink there. same: it holds exactly want and no one but its owner,
// this user or root, can write it. Otherwise reason says what is there
// ("" when nothing is): "differs", "a symlink", "writable by others, mode
// M" or "owned by uid N" (want's bytes, but another user could change
// them), or for anything but a regular file an error (it cannot be
// replaced by a file).
func compareAt(dir *os.File, name string, want []byte) (same bool, reason string, err error) {
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return false, "", nil
	case errors.Is(err, unix.ELOOP):
		return false, "a symlink", nil
	case err != nil:
		return false, "", fmt.Errorf("reading %s: %w", report.Name(filepath.Join(dir.Name(), name)), err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, "", fmt.Errorf("reading %s: %w", report.Name(filepath.Join(dir.Name(), name)), err)
	}
	if !st.Mode().IsRegular() {
		return false, "", fmt.Errorf("%w: %s is not a regular file (%v): remove it first", fs.ErrExist, report.Name(filepath.Join(dir.Name(), name)), st.Mode().Type())
	}
	have, err := io.ReadAll(io.LimitReader(f, maxCompared+1))
	if err != nil {
		return false, "", fmt.Errorf("reading %s: %w", report.Name(filepath.Join(dir.Name(), name)), err)
	}
	if !bytes.Equal(have, want) {
		return false, "differs", nil
	}
	// The same bytes, but whoever else can write the file can make root
	// run anything at the unit's next start: not left as it is.
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return false, fmt.Sprintf("writable by others, mode %#o", perm), nil
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() && sys.Uid != 0 {
		return false, fmt.Sprintf("owned by uid %d", sys.Uid), nil
	}
	return true, "", nil
}
