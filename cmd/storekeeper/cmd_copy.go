package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"storekeeper/nix/nixconf"
	"storekeeper/register"
	"storekeeper/report"
	"storekeeper/store"
	"storekeeper/store/db"
	"storekeeper/transfer"
)

type copyOptions struct {
	to, from string
	method   string
	dryRun   bool
	jobs     int
}

func newCopyCommand(g *globalOptions) *cobra.Command {
	o := &copyOptions{}
	cmd := &cobra.Command{
		Use:   "copy --to STORE [--from STORE] PATH...",
		Short: "Copy the closure of store paths into another local store, checked and registered there",
		Long: `Copy the closure of the store paths into another local store (/mnt,
local?root=/mnt): nixos-install's copy step, without a chroot. What is
already valid in the target is skipped. Each other path is built in the
target's trash directory (never following a symlink), put at its store
name under its lock, and registered there with the source's hash,
size, references, deriver, signatures and content address: the hash of
the copy is checked first, so a damaged source path is not registered,
nor anything that refers to it (they are named; the rest is copied).

PATH is a store path, a file in one, or a symlink to one (./result),
in the source store: --from, or the global --store.

--to may name a store that does not exist yet under an existing
directory (an empty mounted disk): it is created as Nix 2.8 creates a
store (nix-store --init, nix copy --to /mnt): directories, database with
Nix's schema, db/schema last.

  --method auto      reflink (FICLONE) where the file systems can clone,
                     else hard-link a canonical source file on the same
                     file system, else copy (copy_file_range)
  --method reflink   clone only: fails at once where the target cannot
  --method hardlink  hard-link only: same file system, canonical files
  --method copy      copy the bytes

--dry-run says what would be copied and how much; it changes nothing.
--json: paths[] (the closure, references first) with path, skipped,
copied, method, bytes, error {kind, message}; and the totals.

Exit status: 0 when every path is copied or already there; 1 when some
could not be (each is named with why); 2 when copy could not run (bad
paths, a path not valid in the source, a target that is not a store,
a lock); 130 when interrupted (what was registered stays, the rest is
not valid in the target).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCopy(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.to, "to", "", "the target store: a root directory such as /mnt, or local?root=/mnt")
	f.StringVar(&o.from, "from", "", "the source store (default: the global --store)")
	f.StringVar(&o.method, "method", "auto", "how files are copied: auto, reflink, hardlink or copy")
	f.BoolVar(&o.dryRun, "dry-run", false, "say what would be copied; change nothing")
	f.IntVarP(&o.jobs, "jobs", "j", 0, "paths copied at once (default: twice the number of CPUs)")
	return cmd
}

func runCopy(cmd *cobra.Command, g *globalOptions, o *copyOptions, args []string) error {
	ctx := cmd.Context()
	p := g.printer(cmd)
	switch {
	case o.to == "":
		return usagef("give the target store with --to STORE (a root directory such as /mnt, or local?root=/mnt)")
	case len(args) == 0:
		return usagef("give the store paths to copy")
	case o.jobs < 0:
		return usagef("--jobs %d: must not be negative", o.jobs)
	}
	method, err := transfer.ParseMethod(o.method)
	if err != nil {
		return usagef("--method %q: expected auto, reflink, hardlink or copy", o.method)
	}
	settings, err := g.settings()
	if err != nil {
		return err
	}
	fromLay, err := g.layout()
	if err != nil {
		return err
	}
	if o.from != "" {
		if fromLay, err = store.ResolveLayout(store.LayoutOptions{StoreURI: o.from, Getenv: os.Getenv}); err != nil {
			return err
		}
	}
	toLay, err := store.ResolveLayout(store.LayoutOptions{StoreURI: o.to, Getenv: os.Getenv})
	if err != nil {
		return err
	}
	from, err := store.Open(ctx, store.Options{Layout: fromLay, Settings: settings, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("copy: the source store: %w", err)
	}
	defer from.Close()
	var paths []string
	for _, a := range args {
		sp, err := fromLay.FollowLinksToStorePath(a)
		if err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		paths = append(paths, sp)
	}

	if err := transfer.CheckPaths(ctx, from, paths); err != nil {
		return err
	}
	if err := transfer.CheckTarget(fromLay, toLay); err != nil {
		return err
	}
	created := false
	to, err := openTarget(ctx, toLay, settings, o.dryRun)
	switch {
	case err == nil:
	case errors.Is(err, errNewStore) && o.dryRun:
		to = &store.Store{Layout: toLay, Settings: settings, ReadOnly: true}
		p.Infof("%s is not a store yet: copy would create it", report.Name(o.to))
	case errors.Is(err, errNewStore):
		if err := ensureWritableStoreIfExists(toLay); err != nil {
			return err
		}
		if to, err = store.Create(ctx, store.Options{Layout: toLay, Settings: settings}); err != nil {
			return fmt.Errorf("copy: creating the target store: %w", err)
		}
		created = true
	default:
		return fmt.Errorf("copy: the target store: %w", err)
	}
	defer to.Close()

	start := time.Now()
	prog := newProgress(p)
	res, err := transfer.Copy(ctx, from, to, paths, transfer.Options{Method: method, DryRun: o.dryRun, Jobs: o.jobs, Progress: prog})
	prog.finish()
	interrupted := 0
	out := &copyJSON{DryRun: o.dryRun, Target: toLay.String(), StoreCreated: created, PathsRequested: len(paths)}
	if res != nil {
		for _, pr := range res.Paths {
			pj := copyPathJSON{Path: pr.Path, Skipped: pr.Skipped, Copied: pr.Copied, Method: string(pr.Method), Bytes: pr.Bytes}
			switch {
			case pr.Skipped:
				out.PathsSkipped++
			case pr.Copied:
				out.PathsCopied++
				out.BytesCopied += pr.Bytes
				if !g.json {
					p.Verbosef("copied '%s' (%s, %s)", report.Name(pr.Path), pr.Method, report.FormatSize(pr.Bytes))
				}
			case o.dryRun && pr.Err == nil:
				out.PathsToCopy++
				out.BytesCopied += pr.Bytes
				if !g.json {
					p.Textln(fmt.Sprintf("would copy '%s' (%s)", report.Name(pr.Path), report.FormatSize(pr.Bytes)))
				}
			default:
				out.PathsFailed++
				why := pr.Err
				if why == nil {
					why = transfer.ErrInterrupted
				}
				pj.Error = &pathErrorJSON{Kind: copyErrorKind(why), Message: why.Error()}
				switch {
				case g.json:
				case errors.Is(why, transfer.ErrInterrupted):
					interrupted++ // one line for all of them, below
				default:
					p.Textln(fmt.Sprintf("could not copy '%s': %s", report.Name(pr.Path), report.Text(why.Error())))
				}
			}
			out.Paths = append(out.Paths, pj)
		}
		out.PathsClosure = len(res.Paths)
	}
	out.ElapsedSeconds = time.Since(start).Seconds()
	if interrupted > 0 {
		p.Infof("%d paths were not copied (interrupted; they are not valid in the target, and the next run copies them)", interrupted)
	}
	if g.json {
		p.JSON(out)
	} else if res != nil && (p.progress || g.verbose) {
		if o.dryRun {
			p.Infof("would copy %d paths (%s) of a closure of %d; %d already there", out.PathsToCopy, report.FormatSize(out.BytesCopied), out.PathsClosure, out.PathsSkipped)
		} else {
			p.Infof("copied %d paths (%s) of a closure of %d to %s; %d already there", out.PathsCopied, report.FormatSize(out.BytesCopied), out.PathsClosure, report.Name(toLay.RealStoreDir), out.PathsSkipped)
		}
	}
	if err != nil {
		return err
	}
	if out.PathsFailed > 0 {
		return &findingsError{msg: fmt.Sprintf("%d of %d paths could not be copied (see above for why)", out.PathsFailed, out.PathsClosure)}
	}
	return nil
}

// errNewStore: the target has no db/schema: a store Nix would create.
var errNewStore = errors.New("no store yet")

// openTarget opens the target store for writing (read-only for a dry
// run), or says errNewStore when it has no db/schema (neither Nix nor
// storekeeper has made a store there; Create makes one).
func openTarget(ctx context.Context, lay store.Layout, settings nixconf.Settings, dryRun bool) (*store.Store, error) {
	if _, err := os.Lstat(filepath.Join(lay.DBDir(), "schema")); errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, errNewStore
	}
	if !dryRun {
		if err := ensureWritableStore(lay); err != nil {
			return nil, err
		}
	}
	return store.Open(ctx, store.Options{Layout: lay, Settings: settings, ReadOnly: dryRun})
}

// ensureWritableStoreIfExists is ensureWritableStore for a store about to
// be created: only the directories that exist already are checked.
func ensureWritableStoreIfExists(lay store.Layout) error {
	if _, err := os.Stat(lay.RealStoreDir); err != nil {
		return nil
	}
	if _, err := os.Stat(lay.DBDir()); err != nil {
		return nil
	}
	return ensureWritableStore(lay)
}

// copyErrorKinds name a path's failure in --json (error.kind).
var copyErrorKinds = []struct {
	err  error
	kind string
}{
	{transfer.ErrInterrupted, "interrupted"},
	{register.ErrHashMismatch, "mismatch"},
	{transfer.ErrReferenceFailed, "reference-failed"},
	{register.ErrReferenceFailed, "reference-failed"},
	{db.ErrNotValidReference, "reference-failed"},
	{transfer.ErrMethodUnsupported, "method-unsupported"},
	{transfer.ErrBadSourceTree, "bad-source"},
	{transfer.ErrBadSourceRow, "bad-source"},
	{transfer.ErrMissingInTarget, "missing-in-target"},
}

func copyErrorKind(err error) string {
	for _, k := range copyErrorKinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	return "error"
}

// copyJSON is copy's --json result.
type copyJSON struct {
	DryRun       bool           `json:"dry_run"`
	Target       string         `json:"target"`
	StoreCreated bool           `json:"store_created"`
	Paths        []copyPathJSON `json:"paths"`
	// PathsRequested: the PATH arguments; PathsClosure: their closure;
	// then what happened to it.
	PathsRequested int     `json:"paths_requested"`
	PathsClosure   int     `json:"paths_closure"`
	PathsCopied    int     `json:"paths_copied"`
	PathsSkipped   int     `json:"paths_skipped"`
	PathsFailed    int     `json:"paths_failed"`
	PathsToCopy    int     `json:"paths_to_copy,omitempty"` // --dry-run
	BytesCopied    uint64  `json:"bytes_copied"`            // NAR bytes (--dry-run: to copy)
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

type copyPathJSON struct {
	Path    string         `json:"path"`
	Skipped bool           `json:"skipped"`
	Copied  bool           `json:"copied"`
	Method  string         `json:"method,omitempty"`
	Bytes   uint64         `json:"bytes"`
	Error   *pathErrorJSON `json:"error,omitempty"`
}
