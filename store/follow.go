package store

import (
	"fmt"
	"os"
	"path/filepath"

	"storekeeper/nix/storepath"
)

// maxFollowLinks bounds the symlinks FollowLinksToStorePath follows (the
// kernel's own bound for one path resolution).
const maxFollowLinks = 40

// FollowLinksToStorePath resolves a command-line argument naming a store
// path as Nix's followLinksToStorePath does (what `nix-store
// --repair-path`, `-q --roots` and `roots --why` take): made absolute
// (against the working directory) and canonical lexically ("a/.." is gone
// before the store path is taken, so "/nix/store/A/../B" is B and
// "/nix/store/A/.." is the store dir, no store path), then, while it is
// not inside the store, replaced by the target of the symlink it is (at
// most 40 of them; links are only read, nothing is opened, so ./result
// works and nothing outside the store is followed once inside), and a
// path under the physical store dir (a chroot store seen from outside)
// read as the logical path it is. A file inside a store path stands for
// the store path. It returns the full logical store path; an error
// naming arg and wrapping storepath.ErrBadStorePath when it leads to no
// store path.
func (l Layout) FollowLinksToStorePath(arg string) (string, error) {
	p, err := filepath.Abs(arg)
	if err != nil {
		return "", fmt.Errorf("%q: %w", arg, err)
	}
	for hops := 0; ; hops++ {
		if !storepath.IsInStore(l.StoreDir, p) && l.RealStoreDir != l.StoreDir && storepath.IsInStore(l.RealStoreDir, p) {
			p = l.StoreDir + p[len(l.RealStoreDir):]
		}
		if storepath.IsInStore(l.StoreDir, p) {
			break
		}
		if hops == maxFollowLinks {
			return "", fmt.Errorf("%q: %w: more than %d symbolic links on the way to %s", arg, storepath.ErrBadStorePath, maxFollowLinks, l.StoreDir)
		}
		t, err := os.Readlink(p)
		if err != nil {
			break // not a symlink (or none there): not in the store
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		p = filepath.Clean(t)
	}
	sp, _, err := storepath.ToStorePath(l.StoreDir, p)
	if err != nil {
		return "", fmt.Errorf("%q: %w", arg, err)
	}
	base, err := storepath.Parse(l.StoreDir, sp)
	if err != nil {
		return "", fmt.Errorf("%q: %w", arg, err)
	}
	return l.StorePathOf(base), nil
}
