//go:build !(linux && amd64)

package nar

import "storekeeper/internal/sys"

// BatchHasher is HashPathFiles with io_uring batching where it is built;
// here NewBatchHasher always fails and a nil *BatchHasher hashes with
// HashPathFiles.
type BatchHasher struct{ Batched, Fallbacks int64 }

// BatchHasherFDs bounds the descriptors one BatchHasher holds open.
const BatchHasherFDs = 1

// NewBatchHasher returns ErrNoIOURing on this platform.
func NewBatchHasher() (*BatchHasher, error) { return nil, sys.ErrNoIOURing }

// HashPathFiles is HashPathFiles(path, fn).
func (b *BatchHasher) HashPathFiles(path string, fn NodeFunc) (Hash, int64, error) {
	return HashPathFiles(path, fn)
}

// Close does nothing.
func (b *BatchHasher) Close() error { return nil }
