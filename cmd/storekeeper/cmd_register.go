package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"storekeeper/nix/validity"
	"storekeeper/register"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	storefs "storekeeper/store/fs"
)

type registerOptions struct {
	hashGiven  bool
	reregister bool
	buildUser  string
	scan       bool
	candidates []string
	jobs       int
}

// maxRegisterInput bounds the records read from stdin: every one is held
// in memory, and a path needs a lock file descriptor, which the open-file
// limit bounds far below this anyway.
const maxRegisterInput = 1 << 22

// maxRegisterBytes bounds the bytes read from stdin: every record is held
// in memory, and maxRegisterInput records of up to validity.MaxReferences
// references each would not be bounded in practice (a 'nix-store
// --dump-db' of a store of a million paths is well under this). A var for
// tests.
var maxRegisterBytes int64 = 1 << 30

// errInputTooLarge: the registration on stdin is more than
// maxRegisterBytes.
var errInputTooLarge = errors.New("the registration on stdin is too large")

// boundedReader reads at most n more bytes from r, then fails with
// errInputTooLarge (not io.EOF: a cut input must not read as a shorter
// valid one).
type boundedReader struct {
	r io.Reader
	n int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		// At the bound: the end of the input is fine, one byte more is not.
		var one [1]byte
		if n, err := b.r.Read(one[:]); n == 0 && err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%w: %w: more than %d bytes; register it in several runs (references first)", validity.ErrBadRegistration, errInputTooLarge, maxRegisterBytes)
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	return n, err
}

// maxFailureLines bounds the further failing paths printed as text
// besides the first (the run's error).
const maxFailureLines = 20

func newRegisterCommand(g *globalOptions) *cobra.Command {
	o := &registerOptions{}
	cmd := &cobra.Command{
		Use:   "register [flags] < REGISTRATION | register --scan [flags] PATH...",
		Short: "Make trees already in the store valid paths (like nix-store --register-validity), with Nix's ownership check",
		Long: `Register trees that are already in the store directory but not valid yet
(an installer's or image builder's closure, a build done outside the
daemon), as 'nix-store --register-validity' does, but checked.

Input: Nix's registration format on stdin (what 'nix-store
--register-validity' reads: the store path, the deriver or an empty
line, the number of references, the references; with --hash-given also
the NAR hash and size after the path, as 'nix-store --dump-db' writes
them), or store paths as arguments with --scan (their references are
then found in their files; without --scan they would be unknown).

Every path must be a store path of this store, exist on disk (a symlink
is registered as itself, never followed) and not be valid yet (unlike
Nix, which skips a valid path silently, this is an error; --reregister
updates its hash and size instead, keeping its deriver, registration
time and old references, as Nix does). Each reference must be valid or
in the same input. A .drv must name the output paths Nix computes for it.

Then, for every path: with --build-user USER|UID, the ownership check of
Nix's builds: every file, directory and symlink must belong to the build
user, and a file may have no hard link outside its own tree; anything
else (a file of another user, 'ln /etc/shadow $out/foo', a directory of
another user) rejects the input, naming the file and its owner, and
nothing is changed, least of all the foreign file. Device nodes, FIFOs
and sockets are rejected with or without it. Every path is checked
before any is changed. Then each tree is canonicalised as Nix does
(owner: the store's owner; modes 0444 or 0555; setuid, setgid and sticky
bits cleared; mtime 1; extended attributes removed; symlinks never
followed), hashed (NAR SHA-256 and size; with --hash-given compared with
the given ones, and a mismatch refuses the input), with --scan scanned
for references (the hash parts of the candidates: the closure of the
--candidates paths in the database plus the input, or without
--candidates every valid path plus the input), and finally everything is
registered in one database transaction, references before referrers,
with the paths' locks held and the paths held as temporary roots against
a concurrent garbage collector. A reader never sees a valid path whose
references are not valid. All or nothing: on any error nothing is
registered. A kill at any instant leaves every path either valid with
its hash and references or not valid (its tree perhaps canonicalised);
running the command again finishes the job (with --reregister when the
input was registered in chunks, which an open-file limit too low for a
lock file per path forces: the chunks done by then stay registered).

Progress per path and bytes on a terminal; otherwise silent but for
errors (--verbose: a line per path). --json: paths[] with path,
registered, nar_hash (sha256: in Nix's base 32), nar_size, references,
error {kind, message}; paths_requested, paths_registered, bytes_hashed,
elapsed_seconds.

Exit status: 0 when every path was registered; 2 when none was (bad
input, a path outside the store or not on disk or already valid, a
reference that is not valid, a rejected tree, a hash mismatch, a lock, a
database error); 130 when interrupted (nothing registered unless the
transaction had committed).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRegister(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.hashGiven, "hash-given", false, "the input gives each path's NAR hash and size after it (as 'nix-store --dump-db' writes); they are checked against the disk")
	f.BoolVar(&o.reregister, "reregister", false, "update paths that are already valid instead of refusing them")
	f.StringVar(&o.buildUser, "build-user", "", "the user (name or uid) whose build made the trees: every file must be that user's, with no hard link outside its tree")
	f.BoolVar(&o.scan, "scan", false, "find each path's references in its files, as Nix's reference scanner does (replacing references given on stdin)")
	f.StringArrayVar(&o.candidates, "candidates", nil, "with --scan: look only for the closure of this store path and the input's paths (repeatable; default: every valid path)")
	f.IntVarP(&o.jobs, "jobs", "j", 0, "paths hashed at once (default: the number of CPUs)")
	return cmd
}

func runRegister(cmd *cobra.Command, g *globalOptions, o *registerOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	switch {
	case len(args) > 0 && !o.scan:
		return usagef("register PATH... needs --scan: the paths' references are not known otherwise; pass --scan to find them in the files, or give Nix's registration format (path, deriver, references) on stdin")
	case len(args) > 0 && o.hashGiven:
		return usagef("--hash-given reads the hashes from the registration format on stdin; it does not go with PATH arguments")
	case len(o.candidates) > 0 && !o.scan:
		return usagef("--candidates only narrows --scan's search; give --scan too")
	case o.jobs < 0:
		return usagef("--jobs %d: must not be negative", o.jobs)
	}
	buildUID, err := parseBuildUser(o.buildUser)
	if err != nil {
		return err
	}
	in := cmd.InOrStdin()
	if len(args) == 0 {
		if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return usagef("register reads Nix's registration format on stdin, which is a terminal: pipe it in (e.g. from 'nix-store --dump-db'), or give PATH... with --scan")
		}
	}
	// Before reading stdin: this may re-execute storekeeper in a private
	// mount namespace, which reads the same stdin.
	if err := g.ensureWritable(); err != nil {
		return err
	}
	lay, err := g.layout()
	if err != nil {
		return err
	}
	var inputs []register.Input
	if len(args) > 0 {
		seen := map[string]bool{}
		for _, a := range args {
			sp := registerArg(lay, a)
			if !seen[sp] {
				seen[sp] = true
				inputs = append(inputs, register.Input{Registration: db.Registration{Path: sp}})
			}
		}
	} else if inputs, err = readRegistrations(in, lay.StoreDir, o.hashGiven); err != nil {
		return err
	}
	var candidates []string
	for _, c := range o.candidates {
		candidates = append(candidates, registerArg(lay, c))
	}

	s, err := g.openStore(ctx, false)
	if err != nil {
		return err
	}
	defer s.Close()
	start := time.Now()
	prog := newProgress(p)
	ro := register.Options{
		BuildUID: buildUID, Reregister: o.reregister, Scan: o.scan, Candidates: candidates,
		Jobs: o.jobs, Progress: prog, Printer: prog,
	}
	if len(inputs) == 0 {
		p.Infof("nothing to register: the input holds no path")
	}
	res, err := register.Register(ctx, s, inputs, ro)
	prog.finish()
	out := registerResult(inputs, res, err)
	out.ElapsedSeconds = time.Since(start).Seconds()
	if g.json {
		p.JSON(out)
		return err
	}
	// The first failure is err, printed last; the others of an
	// all-or-nothing batch are printed before it, so that one run shows
	// what to fix (at most maxFailureLines; --json has them all).
	failed := 0
	for _, pj := range out.Paths {
		if pj.Error == nil {
			continue
		}
		failed++
		switch {
		case failed == 1:
		case failed <= maxFailureLines+1:
			p.Errorf("%s", pj.Error.Message)
		case failed == maxFailureLines+2:
			p.Errorf("and %d more paths that cannot be registered (--json lists them all)", out.PathsFailed-maxFailureLines-1)
		}
	}
	for _, pj := range out.Paths {
		if pj.Registered {
			p.Verbosef("registered '%s' (%s, %s, %d references)", report.Name(pj.Path), pj.NarHash, report.FormatSize(pj.NarSize), len(pj.References))
		}
	}
	if err == nil && len(inputs) > 0 && isTerminal(cmd.ErrOrStderr()) {
		p.Infof("registered %d paths (%s) in %s", out.PathsRegistered, report.FormatSize(out.BytesHashed), time.Since(start).Round(10*time.Millisecond))
	}
	return err
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// parseBuildUser reads --build-user: a user name (looked up in the user
// database) or a numeric uid; "" is storefs.NoBuildUser (no ownership
// check).
func parseBuildUser(s string) (int, error) {
	if s == "" {
		return storefs.NoBuildUser, nil
	}
	if n, err := strconv.ParseUint(s, 10, 31); err == nil {
		return int(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, usagef("--build-user '%s': no such user (give a user name or a uid): %w", report.Name(s), err)
	}
	n, err := strconv.ParseUint(u.Uid, 10, 31)
	if err != nil {
		return 0, usagef("--build-user '%s': uid %q is not a number", report.Name(s), u.Uid)
	}
	return int(n), nil
}

// registerArg reads a PATH argument (or --candidates') as the store path
// it names: made absolute, cleaned, and a path under the physical store
// directory (a chroot store seen from outside) taken as the logical path.
// Nothing is followed: register takes a store path as it is on disk, and
// the library refuses anything that is not a store path of this store.
func registerArg(lay store.Layout, a string) string {
	p, err := filepath.Abs(a)
	if err != nil {
		return a
	}
	if lay.RealStoreDir != lay.StoreDir && !lay.IsInStore(p) && len(p) > len(lay.RealStoreDir) &&
		p[:len(lay.RealStoreDir)+1] == lay.RealStoreDir+"/" {
		p = lay.StoreDir + p[len(lay.RealStoreDir):]
	}
	return p
}

// readRegistrations reads Nix's registration format from r (bounded: see
// validity.Reader, at most maxRegisterInput records and maxRegisterBytes
// bytes).
func readRegistrations(r io.Reader, storeDir string, hashGiven bool) ([]register.Input, error) {
	rd := validity.NewReader(&boundedReader{r: r, n: maxRegisterBytes}, storeDir, hashGiven)
	var out []register.Input
	for {
		info, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("register: reading the registration on stdin: %w; nothing was registered", err)
		}
		if len(out) == maxRegisterInput {
			return nil, fmt.Errorf("register: reading the registration on stdin: %w: more than %d paths; register them in several runs (references first)", validity.ErrBadRegistration, maxRegisterInput)
		}
		out = append(out, register.Input{
			Registration: db.Registration{Path: info.Path, NarHash: info.NarHash, NarSize: info.NarSize,
				Deriver: info.Deriver, References: info.References},
			HashGiven: info.HashGiven,
		})
	}
}

// registerJSON is register's --json result.
type registerJSON struct {
	Paths []registerPathJSON `json:"paths"`
	// PathsRequested: the paths of the input; PathsRegistered: made
	// valid (all or none); PathsFailed: those with an error of their own.
	PathsRequested  int     `json:"paths_requested"`
	PathsRegistered int     `json:"paths_registered"`
	PathsFailed     int     `json:"paths_failed"`
	BytesHashed     uint64  `json:"bytes_hashed"` // NAR bytes of the paths hashed
	ElapsedSeconds  float64 `json:"elapsed_seconds"`
}

type registerPathJSON struct {
	Path       string         `json:"path"`
	Registered bool           `json:"registered"`
	NarHash    string         `json:"nar_hash,omitempty"` // sha256:<Nix base 32>, as nix-store -q --hash prints
	NarSize    uint64         `json:"nar_size"`
	References []string       `json:"references"`
	Error      *pathErrorJSON `json:"error,omitempty"`
}

// registerResult is what --json shows of a run: a path per input, in
// input order, from the library's result when there is one.
func registerResult(inputs []register.Input, res *register.Result, err error) *registerJSON {
	out := &registerJSON{PathsRequested: len(inputs), Paths: []registerPathJSON{}}
	if res != nil {
		out.BytesHashed = res.Bytes
		for _, pr := range res.Paths {
			pj := registerPathJSON{Path: pr.Path, Registered: pr.Registered, NarSize: pr.NarSize, References: pr.References}
			if pr.NarHash != ([32]byte{}) {
				pj.NarHash = pr.NarHash.String()
			}
			if pr.Err != nil {
				pj.Error = &pathErrorJSON{Kind: errorKindOf(pr.Err), Message: pr.Err.Error()}
			}
			out.add(pj)
		}
		return out
	}
	for _, in := range inputs {
		out.add(registerPathJSON{Path: in.Path, References: in.References})
	}
	return out
}

func (r *registerJSON) add(pj registerPathJSON) {
	if pj.References == nil {
		pj.References = []string{}
	}
	r.Paths = append(r.Paths, pj)
	if pj.Registered {
		r.PathsRegistered++
	}
	if pj.Error != nil {
		r.PathsFailed++
	}
}

// errorKindOf is the kind errorTable gives err ("error" when no row
// matches): a path's error.kind in --json.
func errorKindOf(err error) string {
	for _, c := range errorTable {
		if c.is(err) {
			return c.kind
		}
	}
	return "error"
}
