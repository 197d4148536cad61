package register

import (
	"errors"
	"fmt"

	"storekeeper/nix/nar"
	"storekeeper/report"
)

var (
	// ErrHashMismatch is wrapped by *MismatchError: a tree's NAR hash or
	// size is not the one given (Input.HashGiven).
	ErrHashMismatch = errors.New("NAR hash mismatch")
	// ErrNotInStore: a path is not a store path of the store (a path
	// directly in its store directory with a valid name).
	ErrNotInStore = errors.New("not a store path of this store")
	// ErrMissing: a path is not on disk in the store directory.
	ErrMissing = errors.New("not in the store directory")
	// ErrTooMany: the batch needs more open files (one lock file per
	// path) than the open-file limit allows, even after raising it.
	ErrTooMany = errors.New("too many paths to lock at once")
	// ErrBadInput: the input is malformed (a path given twice, a deriver
	// or reference that is not a store path, a candidate that is not
	// valid, a path Options.Locked does not hold).
	ErrBadInput = errors.New("bad registration input")
	// ErrBadDerivation: a .drv cannot be read or parsed, or its outputs
	// are not the paths Nix computes for it. It wraps
	// derivation.ErrBadDerivation when the file is malformed.
	ErrBadDerivation = errors.New("bad derivation")
	// ErrReferenceFailed (Options.Partial): a path was left out because a
	// path of the batch it refers to failed.
	ErrReferenceFailed = errors.New("a reference was not registered")
	// ErrReadOnly: the store was opened read-only.
	ErrReadOnly = errors.New("the store is open read-only")
	// ErrChanged: a tree changed while it was being registered (a .drv
	// hashed is not the one whose outputs were checked).
	ErrChanged = errors.New("changed while it was being registered")
)

// MismatchError is the refusal of a path whose tree on disk does not
// have the NAR hash (or size) its input gives. It wraps ErrHashMismatch.
type MismatchError struct {
	Path                  string
	Expected, Got         nar.Hash
	ExpectedSize, GotSize uint64 // ExpectedSize 0: no size was given
}

func (e *MismatchError) Error() string {
	size := fmt.Sprintf("NAR size %d", e.GotSize)
	if e.ExpectedSize != 0 && e.ExpectedSize != e.GotSize {
		size = fmt.Sprintf("NAR size expected %d, got %d", e.ExpectedSize, e.GotSize)
	}
	return fmt.Sprintf("'%s': %v: expected %s, got %s (%s): the tree on disk is not the one the registration data describes; check the data or put the right tree in place",
		report.Name(e.Path), ErrHashMismatch, e.Expected, e.Got, size)
}

func (e *MismatchError) Unwrap() error { return ErrHashMismatch }
