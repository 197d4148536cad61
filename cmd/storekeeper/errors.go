package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"storekeeper/gc"
	"storekeeper/lock"
	"storekeeper/nix/nixconf"
	"storekeeper/nix/storepath"
	"storekeeper/nix/validity"
	"storekeeper/optimise"
	"storekeeper/register"
	"storekeeper/repair"
	"storekeeper/report"
	"storekeeper/roots"
	"storekeeper/store"
	"storekeeper/store/db"
	storefs "storekeeper/store/fs"
	"storekeeper/transfer"
	"storekeeper/verify"
)

// Exit codes; documented in `storekeeper help` and the README. Which
// error gives which code is errorTable's, and only errorTable's.
const (
	exitOK          = 0   // success; for verify: the store is clean
	exitFindings    = 1   // the command ran and found problems (verify: damage; repair: paths not repaired)
	exitCannotRun   = 2   // bad usage, bad store, DB missing/corrupt/locked, no permission, read-only or full disk
	exitInterrupted = 130 // SIGINT/SIGTERM: stopped cleanly, cleanup finished
)

const exitCodesHelp = `Exit status:
  0    success (verify: no problem found)
  1    the command ran and found problems (verify: damaged paths;
       repair: paths it could not repair)
  2    the command could not run: bad usage, no such store, missing,
       corrupt or locked database, unknown schema, permission denied,
       a read-only file system where it must write, a disk too full to
       read the database
  130  interrupted by SIGINT or SIGTERM; cleanup finished, the store is
       consistent and the next run continues`

// findingsError marks a run that completed but found problems.
type findingsError struct{ msg string }

func (e *findingsError) Error() string { return e.msg }

// errUsage is wrapped by every error about the command line itself: an
// unknown command or flag, a bad flag value, flags that exclude each
// other (see usageError).
var errUsage = errors.New("bad usage")

// usageError is an error about the command line; its text is the
// wrapped error's, unchanged.
type usageError struct{ err error }

func (e *usageError) Error() string        { return e.err.Error() }
func (e *usageError) Unwrap() []error      { return []error{e.err, errUsage} }
func usagef(format string, a ...any) error { return &usageError{fmt.Errorf(format, a...)} }

// errorClass is one row of errorTable.
type errorClass struct {
	kind string
	code int
	is   func(error) bool
}

func isAny(targets ...error) func(error) bool {
	return func(err error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
}

// errorTable maps an error to its kind (the envelope's error.kind) and
// exit code: the first row that matches wins; an error no row matches is
// "error", exit 2. Interruption is decided before the table (see
// classify): a run stopped by a signal exits 130 whatever its error says.
var errorTable = []errorClass{
	{"findings", exitFindings, func(err error) bool { var fe *findingsError; return errors.As(err, &fe) }},
	{"usage", exitCannotRun, isAny(errUsage, store.ErrBadStoreURI, verify.ErrBadOptions, report.ErrBadSize, transfer.ErrBadOptions, transfer.ErrStoreDirMismatch)},
	{"lock-held", exitCannotRun, func(err error) bool {
		var he *lock.HeldError
		return errors.As(err, &he) || errors.Is(err, lock.ErrWouldBlock)
	}},
	{"db-locked", exitCannotRun, isAny(db.ErrDBLocked)},
	{"store-unmounted", exitCannotRun, isAny(store.ErrStoreLooksUnmounted)},
	{"read-only", exitCannotRun, isAny(storefs.ErrReadOnlyFS, storefs.ErrReadOnlyStore, gc.ErrReadOnly, optimise.ErrReadOnly, roots.ErrPruneReadOnly, repair.ErrReadOnly, transfer.ErrReadOnly, register.ErrReadOnly)},
	{"disk-full", exitCannotRun, isAny(storefs.ErrDiskFull)},
	{"roots-unreadable", exitCannotRun, isAny(roots.ErrRootsUnreadable, gc.ErrRootsUnknown)},
	{"no-store", exitCannotRun, isAny(store.ErrNoStore)},
	{"no-db", exitCannotRun, isAny(db.ErrNoDB)},
	{"db-schema", exitCannotRun, isAny(db.ErrSchemaVersion)},
	{"db-corrupt", exitCannotRun, isAny(db.ErrCorruptDB, db.ErrGraph)},
	{"db-access", exitCannotRun, isAny(db.ErrDBAccess)},
	{"bad-config", exitCannotRun, isAny(nixconf.ErrBadConfig)},
	{"path-alive", exitCannotRun, isAny(gc.ErrAlive)},
	// Before bad-path: malformed registration text also wraps
	// storepath.ErrBadStorePath.
	{"bad-input", exitCannotRun, isAny(validity.ErrBadRegistration, db.ErrBadRegistration, register.ErrBadInput)},
	{"bad-path", exitCannotRun, isAny(gc.ErrNotInStore, verify.ErrNotValid, optimise.ErrNotValid, roots.ErrNotValid, storepath.ErrBadStorePath, register.ErrNotInStore, transfer.ErrNotValid)},
	// register's refusals: nothing was registered.
	{"bad-derivation", exitCannotRun, isAny(register.ErrBadDerivation)},
	{"missing", exitCannotRun, isAny(register.ErrMissing)},
	{"already-valid", exitCannotRun, isAny(db.ErrAlreadyValid)},
	{"invalid-reference", exitCannotRun, isAny(db.ErrNotValidReference)},
	{"cycle", exitCannotRun, isAny(db.ErrCycle)},
	{"mismatch", exitCannotRun, isAny(register.ErrHashMismatch, db.ErrNotContentAddressed)},
	{"rejected", exitCannotRun, func(err error) bool { var re *storefs.RejectedError; return errors.As(err, &re) }},
	{"changed", exitCannotRun, isAny(storefs.ErrTreeChanged, register.ErrChanged)},
	{"too-many", exitCannotRun, isAny(register.ErrTooMany)},
	{"links-dir", exitCannotRun, isAny(optimise.ErrLinksDir)},
	{"no-substituter", exitCannotRun, isAny(errNoSources)},
	{"permission", exitCannotRun, isAny(fs.ErrPermission, transfer.ErrNotOwner)},
	{"method-unsupported", exitCannotRun, isAny(transfer.ErrMethodUnsupported)},
}

// outcome is how a run ended: its exit code, the kind of its error, its
// message and a hint (what holds a lock).
type outcome struct {
	code    int
	kind    string
	message string
	hint    string
}

// lines are the outcome as text on stderr: "storekeeper: error: MSG"
// (findings: "storekeeper: MSG"; interrupted: "storekeeper:
// interrupted"), then "storekeeper: hint: HINT".
func (o outcome) lines() []string {
	var out []string
	switch {
	case o.code == exitOK:
	case o.kind == "findings" || o.kind == "interrupted":
		if o.message != "" {
			out = append(out, "storekeeper: "+o.message)
		}
	default:
		out = append(out, "storekeeper: error: "+o.message)
	}
	if o.hint != "" {
		out = append(out, "storekeeper: hint: "+o.hint)
	}
	return out
}

// classify turns a run's error into its outcome. interrupted: SIGINT or
// SIGTERM arrived. lay, when known, locates the database for the hint of
// db-locked.
func classify(err error, interrupted bool, lay *store.Layout, procDir string) outcome {
	if err == nil {
		return outcome{code: exitOK}
	}
	o := outcome{code: exitCannotRun, kind: "error", message: err.Error()}
	var fe *findingsError
	switch {
	case errors.As(err, &fe):
		o = outcome{code: exitFindings, kind: "findings", message: fe.msg}
	case interrupted || errors.Is(err, context.Canceled):
		o = outcome{code: exitInterrupted, kind: "interrupted", message: "interrupted"}
	default:
		for _, c := range errorTable {
			if c.is(err) {
				o.code, o.kind = c.code, c.kind
				break
			}
		}
	}
	o.hint = lockHint(err, lay, procDir)
	return o
}

// lockHint says, when err comes from a lock another process holds (a
// lock.HeldError: busy, or waited for until interrupted; or the database
// locked by a long write transaction), which lock, who holds it as
// /proc/locks says, and what to do; "" for any other error.
func lockHint(err error, lay *store.Layout, procDir string) string {
	var path string
	var he *lock.HeldError
	switch {
	case errors.As(err, &he):
		path = he.Path
	case errors.Is(err, db.ErrDBLocked) && lay != nil:
		path = lay.DBPath()
	default:
		return ""
	}
	holders, _ := lock.Holders(procDir, path)
	if len(holders) == 0 {
		return fmt.Sprintf("%s is held by another process (run 'fuser -v %s' or 'lslocks' to see which); wait for it to finish, or stop it, and run again",
			report.Name(path), report.ShellArg(path))
	}
	return fmt.Sprintf("%s is held by %s; wait for it to finish, or stop it, and run again", report.Name(path), lock.DescribeHolders(holders, report.Name))
}
