package register

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"storekeeper/internal/sys"
	"storekeeper/nix/derivation"
	"storekeeper/nix/nar"
	"storekeeper/nix/storepath"
)

// drvChecker checks the .drv files of a batch as Nix 2.8's
// checkDerivationOutputs does, reading them and the input derivations
// they name from the store directory (never following a symlink), with
// one memo of hashDerivationModulo for the whole batch. It is used by one
// goroutine.
type drvChecker struct {
	storeDir string
	storeFd  int
	parsed   map[string]*derivation.Derivation // full path -> parsed .drv
	memo     map[string][32]byte
}

func newDrvChecker(storeDir string, storeFd int) *drvChecker {
	return &drvChecker{storeDir: storeDir, storeFd: storeFd, parsed: map[string]*derivation.Derivation{}, memo: map[string][32]byte{}}
}

// readDrv reads the regular file base of the store directory (bounded by
// derivation.MaxSize) and returns its bytes and fstat. disp names it.
func readDrv(storeFd int, base, disp string) ([]byte, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := sys.OpenAt(storeFd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err != nil {
		if err == unix.ELOOP {
			return nil, st, fmt.Errorf("%w: '%s' is a symlink, not a derivation file", ErrBadDerivation, disp)
		}
		return nil, st, &os.PathError{Op: "open", Path: disp, Err: err}
	}
	f := os.NewFile(uintptr(fd), disp)
	defer f.Close()
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, st, &os.PathError{Op: "fstat", Path: disp, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, st, fmt.Errorf("%w: '%s' is a %s, not a derivation file", ErrBadDerivation, disp, sys.FileKind(st.Mode))
	}
	if st.Size > derivation.MaxSize {
		return nil, st, fmt.Errorf("%w: '%s' holds %d bytes, more than a derivation may (%d)", ErrBadDerivation, disp, st.Size, derivation.MaxSize)
	}
	data := make([]byte, st.Size+1)
	n, err := io.ReadFull(f, data)
	if err != io.ErrUnexpectedEOF && err != nil {
		return nil, st, &os.PathError{Op: "read", Path: disp, Err: err}
	}
	if int64(n) != st.Size {
		return nil, st, fmt.Errorf("'%s' %w (%d bytes announced, %d read)", disp, ErrChanged, st.Size, n)
	}
	return data[:n], st, nil
}

// load is the derivation.Loader: an input derivation read from the store
// directory.
func (c *drvChecker) load(drvPath string) (*derivation.Derivation, error) {
	if d := c.parsed[drvPath]; d != nil {
		return d, nil
	}
	base, err := storepath.Parse(c.storeDir, drvPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadDerivation, err)
	}
	data, _, err := readDrv(c.storeFd, base, drvPath)
	if err != nil {
		return nil, err
	}
	d, err := derivation.Parse(data, c.storeDir)
	if err != nil {
		return nil, fmt.Errorf("'%s': %w: %w", drvPath, ErrBadDerivation, err)
	}
	c.parsed[drvPath] = d
	return d, nil
}

// parseDrv reads and parses the .drv path (base in the store directory)
// and returns it with the NAR hash of the bytes read, which the hashing
// pass must find again. It may run in several goroutines at once.
func parseDrv(storeFd int, storeDir, path, base string) (*derivation.Derivation, nar.Hash, error) {
	data, st, err := readDrv(storeFd, base, path)
	if err != nil {
		return nil, nar.Hash{}, err
	}
	d, err := derivation.Parse(data, storeDir)
	if err != nil {
		return nil, nar.Hash{}, fmt.Errorf("'%s': %w: %w", path, ErrBadDerivation, err)
	}
	h, err := nar.HashFileBytes(data, &st)
	if err != nil {
		return nil, nar.Hash{}, fmt.Errorf("'%s': %w", path, err)
	}
	return d, h, nil
}

// outputs checks that the outputs of d, the parsed .drv path (base in
// the store directory), are the paths Nix computes for it, and that each
// output's environment variable names that path (Nix's envHasRightPath),
// and returns the outputs with known paths (the DerivationOutputs rows).
// Input derivations are read through load (the batch's are added to
// c.parsed first). Nix 2.8 compares a fixed output's path only through
// its environment variable (it recomputes the path); this check also
// refuses a file whose fixed output path is not the one computed, which
// Nix never writes. Deferred outputs (no path, no hash) have no row and
// no check, as in Nix.
func (c *drvChecker) outputs(path, base string, d *derivation.Derivation) (map[string]string, error) {
	name := strings.TrimSuffix(storepath.NamePart(base), ".drv")
	want, err := d.ExpectedOutputPaths(c.storeDir, name, c.load, c.memo)
	if err != nil {
		return nil, fmt.Errorf("derivation '%s': computing its output paths: %w: %w", path, ErrBadDerivation, err)
	}
	env := make(map[string]string, len(d.Env))
	for _, v := range d.Env {
		env[v.Name] = v.Value
	}
	outputs := map[string]string{}
	for _, o := range d.Outputs {
		w, ok := want[o.Name]
		if !ok || o.Path == "" && o.HashAlgo == "" {
			continue // floating content-addressed or deferred: no path yet
		}
		if o.Path != w {
			return nil, fmt.Errorf("%w: derivation '%s' has incorrect output '%s', should be '%s': its outputs would be recorded under the wrong paths; write it again (nix-instantiate) or leave it out",
				ErrBadDerivation, path, o.Path, w)
		}
		if env[o.Name] != w {
			return nil, fmt.Errorf("%w: derivation '%s' has incorrect environment variable '%s', should be '%s'; write it again (nix-instantiate) or leave it out",
				ErrBadDerivation, path, o.Name, w)
		}
		outputs[o.Name] = w
	}
	return outputs, nil
}
