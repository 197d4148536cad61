// Package systemd holds storekeeper's systemd units: the *.service and
// *.timer files beside this file are embedded in the binary, so that
// `storekeeper systemd install` writes exactly them (with the binary's and
// the metrics directory's paths put in). They are the one source of truth:
// edit the files, never a copy.
//
// The package is data and a pure function over it: no I/O, nothing of
// storekeeper imported.
package systemd

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"unicode/utf8"
)

//go:embed *.service *.timer
var files embed.FS

// DefaultBinary is the storekeeper the files name in ExecStart=.
const DefaultBinary = "/usr/local/bin/storekeeper"

// DefaultMetricsDir is the directory of the files' --metrics-file flags
// and of their ReadWritePaths=-DIR line: node_exporter's textfile
// directory as Debian's prometheus-node-exporter sets it.
const DefaultMetricsDir = "/var/lib/prometheus/node-exporter"

// Unit is one unit file.
type Unit struct {
	Name string // e.g. storekeeper-gc.service
	Data []byte
}

// Timer reports whether u is a timer (what an admin enables).
func (u Unit) Timer() bool { return strings.HasSuffix(u.Name, ".timer") }

// Units returns every unit file as it is in this directory, sorted by
// name.
func Units() []Unit {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		panic(err) // the embedded directory is always there
	}
	var out []Unit
	for _, e := range entries {
		data, err := files.ReadFile(e.Name())
		if err != nil {
			panic(err)
		}
		out = append(out, Unit{Name: e.Name(), Data: data})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Options are what Render puts into the units.
type Options struct {
	// Binary is the absolute path of storekeeper for ExecStart=
	// (DefaultBinary when empty).
	Binary string
	// MetricsDir is the directory for --metrics-file and its
	// ReadWritePaths= line; NoMetrics drops both from every unit.
	MetricsDir string
	NoMetrics  bool
}

// metricsComment starts the comment line above ReadWritePaths=-DIR,
// dropped with it.
const metricsComment = "# node_exporter's textfile directory"

// ErrBadPath is wrapped by Render's refusal of a path it cannot put into
// a unit as it is.
var ErrBadPath = errors.New("systemd: path cannot go into a unit file")

// checkPath refuses what systemd would not read back as the same path:
// a relative path, a path with characters ExecStart= splits or expands
// (white space, quotes, backslashes, % specifiers, $ variables) or a
// control character, one that is not valid UTF-8 (systemd ignores the
// line), or one that is not clean (//, /./, /../, a trailing slash).
func checkPath(what, p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return fmt.Errorf("%w: %s %q: give a clean absolute path", ErrBadPath, what, p)
	}
	if !utf8.ValidString(p) {
		// systemd ignores such a line ("String is not UTF-8 clean"): the
		// unit would have no ExecStart= and fail to load.
		return fmt.Errorf("%w: %s %q is not valid UTF-8, which systemd does not read in a unit: give a path that is", ErrBadPath, what, p)
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`"'\%$;`, r) {
			return fmt.Errorf("%w: %s %q has %q, which systemd splits or expands in a unit: give a path without white space, quotes, backslashes, %%, $ or ;", ErrBadPath, what, p, r)
		}
	}
	return nil
}

// Render returns u with o's paths in place of the defaults: the binary of
// each ExecStart= line, the directory of --metrics-file and of the
// ReadWritePaths=-DIR line (or both removed with NoMetrics). Only those
// lines change; comments keep the default paths. A path that cannot be
// written into a unit as it is (see checkPath) is refused (ErrBadPath).
func Render(u Unit, o Options) ([]byte, error) {
	bin := o.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	if err := checkPath("the storekeeper binary", bin); err != nil {
		return nil, err
	}
	mdir := o.MetricsDir
	if mdir == "" {
		mdir = DefaultMetricsDir
	}
	if !o.NoMetrics {
		if err := checkPath("the metrics directory", mdir); err != nil {
			return nil, err
		}
	}
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(u.Data), "\n") {
		body := strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(body, "ExecStart="):
			args := strings.Fields(strings.TrimPrefix(body, "ExecStart="))
			if len(args) == 0 || args[0] != DefaultBinary {
				return nil, fmt.Errorf("systemd: %s: ExecStart= does not start with %s", u.Name, DefaultBinary)
			}
			args[0] = bin
			var kept []string
			for i := 0; i < len(args); i++ {
				if args[i] == "--metrics-file" && i+1 < len(args) {
					if !o.NoMetrics {
						kept = append(kept, args[i], path.Join(mdir, path.Base(args[i+1])))
					}
					i++
					continue
				}
				kept = append(kept, args[i])
			}
			line = "ExecStart=" + strings.Join(kept, " ") + line[len(body):]
		case o.NoMetrics && strings.HasPrefix(body, metricsComment):
			continue
		case body == "ReadWritePaths=-"+DefaultMetricsDir:
			if o.NoMetrics {
				continue
			}
			line = "ReadWritePaths=-" + mdir + line[len(body):]
		}
		out.WriteString(line)
	}
	return out.Bytes(), nil
}

// ExecStart returns the command line of u's ExecStart= line, split at
// white space (the units quote nothing).
func ExecStart(data []byte) []string {
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "ExecStart="); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}
