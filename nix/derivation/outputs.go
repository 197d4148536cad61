package derivation

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"storekeeper/nix/storepath"
)

// Loader returns the parsed input derivation at a store path (its .drv),
// for HashModulo; it is called once per input derivation of a closure.
type Loader func(drvPath string) (*Derivation, error)

// isFixedOutput reports whether d is a fixed-output derivation: one
// output "out" with a hash (Nix 2.8's DerivationType::CAFixed).
func (d *Derivation) isFixedOutput() bool {
	return len(d.Outputs) == 1 && d.Outputs[0].Name == "out" && d.Outputs[0].Hash != ""
}

// HashModulo computes Nix 2.8's hashDerivationModulo of d: for a
// fixed-output derivation the hash of "fixed:out:ALGO:HASH:PATH";
// otherwise the SHA-256 of d's ATerm with each input derivation's path
// replaced by its own HashModulo (base 16) and, with maskOutputs, the
// output paths (and the environment variables named after outputs)
// emptied. memo caches the inputs' hashes by path (nil: none kept).
func (d *Derivation) HashModulo(load Loader, maskOutputs bool, memo map[string][32]byte) ([32]byte, error) {
	if d.isFixedOutput() {
		o := d.Outputs[0]
		return sha256.Sum256([]byte("fixed:out:" + o.HashAlgo + ":" + o.Hash + ":" + o.Path)), nil
	}
	c := *d
	c.InputDrvs = make([]InputDrv, 0, len(d.InputDrvs))
	for _, in := range d.InputDrvs {
		h, ok := memo[in.Path]
		if !ok {
			dep, err := load(in.Path)
			if err != nil {
				return [32]byte{}, fmt.Errorf("derivation: input %s: %w", in.Path, err)
			}
			if h, err = dep.HashModulo(load, false, memo); err != nil {
				return [32]byte{}, err
			}
			if memo != nil {
				memo[in.Path] = h
			}
		}
		c.InputDrvs = append(c.InputDrvs, InputDrv{Path: hex.EncodeToString(h[:]), Outputs: in.Outputs})
	}
	slices.SortFunc(c.InputDrvs, func(a, b InputDrv) int { return strings.Compare(a.Path, b.Path) })
	if maskOutputs {
		c.Outputs = slices.Clone(d.Outputs)
		names := map[string]bool{}
		for i := range c.Outputs {
			c.Outputs[i].Path = ""
			names[c.Outputs[i].Name] = true
		}
		c.Env = slices.Clone(d.Env)
		for i := range c.Env {
			if names[c.Env[i].Name] {
				c.Env[i].Value = ""
			}
		}
	}
	return sha256.Sum256([]byte(c.String())), nil
}

// ExpectedOutputPaths computes the paths the outputs of d must have, as
// Nix 2.8's checkDerivationOutputs does: a fixed output's from its hash,
// an input-addressed one's from HashModulo(masked) and the derivation's
// name (name is the .drv's name without ".drv"). Outputs of other types
// (content-addressed floating ones) are left out.
func (d *Derivation) ExpectedOutputPaths(storeDir, name string, load Loader, memo map[string][32]byte) (map[string]string, error) {
	out := map[string]string{}
	if d.isFixedOutput() {
		o := d.Outputs[0]
		algo, recursive := strings.CutPrefix(o.HashAlgo, "r:")
		h, err := hex.DecodeString(o.Hash)
		if err != nil {
			return nil, fmt.Errorf("derivation: %w: the fixed output's hash %q is not base 16", ErrBadDerivation, o.Hash)
		}
		if recursive && algo == "sha256" && len(h) == 32 {
			out["out"] = storepath.MakeFixedOutputPathRecursive(storeDir, [32]byte(h), name, nil, false)
			return out, nil
		}
		method := ""
		if recursive {
			method = "r:"
		}
		inner := sha256.Sum256([]byte("fixed:out:" + method + algo + ":" + o.Hash + ":"))
		out["out"] = storepath.MakeStorePath(storeDir, "output:out", inner, name)
		return out, nil
	}
	h, err := d.HashModulo(load, true, memo)
	if err != nil {
		return nil, err
	}
	for _, o := range d.Outputs {
		if o.HashAlgo != "" {
			continue // content-addressed floating: no path known in advance
		}
		pname := name
		if o.Name != "out" {
			pname += "-" + o.Name
		}
		out[o.Name] = storepath.MakeStorePath(storeDir, "output:"+o.Name, h, pname)
	}
	return out, nil
}
