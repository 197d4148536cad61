// Package derivation reads and writes store derivations (.drv files) in
// Nix's ATerm form, as Nix 2.8's parseDerivation and unparse do:
//
//	Derive([(output,path,hashAlgo,hash),...],[(drvPath,[output,...]),...],
//	       [inputSrc,...],platform,builder,[arg,...],[(name,value),...])
//
// Strings are double-quoted with \" \\ \n \r \t escaped (any other
// escaped character stands for itself, as Nix reads it). Input is bounded
// (MaxSize) and strictly checked: store paths where Nix wants them, input
// derivations' output names sorted and unique, nothing after the closing
// parenthesis. It does no I/O; registering a .drv (its outputs into
// DerivationOutputs) is what #24's register needs it for.
package derivation

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"storekeeper/nix/storepath"
)

// ErrBadDerivation is wrapped by every error about a malformed .drv.
var ErrBadDerivation = errors.New("malformed derivation")

// MaxSize bounds a .drv file (real ones are under a few MiB even with
// large inline environment variables).
const MaxSize = 64 << 20

// Output is one output of a derivation.
type Output struct {
	Name     string
	Path     string // the output's store path; "" for a content-addressed output not yet built
	HashAlgo string // "" for an input-addressed output; "r:sha256", "sha256", ... otherwise
	Hash     string // the fixed output's hash, base 16 ("" otherwise)
}

// InputDrv is an input derivation and the outputs of it used.
type InputDrv struct {
	Path    string
	Outputs []string // sorted, unique
}

// EnvVar is one environment variable, in the file's order.
type EnvVar struct{ Name, Value string }

// Derivation is a parsed .drv.
type Derivation struct {
	Outputs   []Output
	InputDrvs []InputDrv
	InputSrcs []string
	Platform  string
	Builder   string
	Args      []string
	Env       []EnvVar
}

type parser struct {
	s        string
	i        int
	storeDir string
}

func (p *parser) fail(format string, a ...any) error {
	return fmt.Errorf("derivation: %w: at byte %d: %s", ErrBadDerivation, p.i, fmt.Sprintf(format, a...))
}

func (p *parser) expect(lit string) error {
	if !strings.HasPrefix(p.s[p.i:], lit) {
		got := p.s[p.i:min(len(p.s), p.i+len(lit))]
		return p.fail("expected %q, found %q", lit, got)
	}
	p.i += len(lit)
	return nil
}

// peek reports whether the next byte is c.
func (p *parser) peek(c byte) bool { return p.i < len(p.s) && p.s[p.i] == c }

func (p *parser) str() (string, error) {
	if err := p.expect(`"`); err != nil {
		return "", err
	}
	var b strings.Builder
	for {
		if p.i >= len(p.s) {
			return "", p.fail("the string does not end")
		}
		c := p.s[p.i]
		p.i++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.i >= len(p.s) {
				return "", p.fail("the string does not end")
			}
			e := p.s[p.i]
			p.i++
			switch e {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
}

func (p *parser) path(what string) (string, error) {
	at := p.i
	s, err := p.str()
	if err != nil {
		return "", err
	}
	if _, err := storepath.Parse(p.storeDir, s); err != nil {
		p.i = at
		return "", fmt.Errorf("derivation: %w: at byte %d: the %s %q: %w", ErrBadDerivation, at, what, s, err)
	}
	return s, nil
}

// list parses "[" item ("," item)* "]" (or "[]").
func (p *parser) list(item func() error) error {
	if err := p.expect("["); err != nil {
		return err
	}
	if p.peek(']') {
		p.i++
		return nil
	}
	for {
		if err := item(); err != nil {
			return err
		}
		if p.peek(',') {
			p.i++
			continue
		}
		return p.expect("]")
	}
}

func (p *parser) strs() ([]string, error) {
	out := []string{}
	err := p.list(func() error {
		s, err := p.str()
		out = append(out, s)
		return err
	})
	return out, err
}

// Parse reads a .drv of a store in storeDir.
func Parse(data []byte, storeDir string) (*Derivation, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("derivation: %w: %d bytes, more than %d", ErrBadDerivation, len(data), MaxSize)
	}
	p := &parser{s: string(data), storeDir: storeDir}
	d := &Derivation{}
	if err := p.expect("Derive("); err != nil {
		return nil, err
	}
	err := p.list(func() error {
		var o Output
		var err error
		if err = p.expect("("); err != nil {
			return err
		}
		if o.Name, err = p.str(); err != nil {
			return err
		}
		if o.Name == "" {
			return p.fail("an output without a name")
		}
		if err = p.expect(","); err != nil {
			return err
		}
		if p.peek('"') && strings.HasPrefix(p.s[p.i:], `"",`) {
			p.i += 2 // a content-addressed output not yet built
		} else if o.Path, err = p.path("output path"); err != nil {
			return err
		}
		for _, f := range []*string{&o.HashAlgo, &o.Hash} {
			if err = p.expect(","); err != nil {
				return err
			}
			if *f, err = p.str(); err != nil {
				return err
			}
		}
		if len(d.Outputs) > 0 && d.Outputs[len(d.Outputs)-1].Name >= o.Name {
			return p.fail("output %q is out of order or repeated", o.Name)
		}
		d.Outputs = append(d.Outputs, o)
		return p.expect(")")
	})
	if err != nil {
		return nil, err
	}
	if err := p.expect(","); err != nil {
		return nil, err
	}
	err = p.list(func() error {
		var in InputDrv
		var err error
		if err = p.expect("("); err != nil {
			return err
		}
		if in.Path, err = p.path("input derivation"); err != nil {
			return err
		}
		if err = p.expect(","); err != nil {
			return err
		}
		if in.Outputs, err = p.strs(); err != nil {
			return err
		}
		if !slices.IsSorted(in.Outputs) || len(slices.Compact(slices.Clone(in.Outputs))) != len(in.Outputs) {
			return p.fail("the outputs of input %s are not sorted and unique", in.Path)
		}
		if len(d.InputDrvs) > 0 && d.InputDrvs[len(d.InputDrvs)-1].Path >= in.Path {
			return p.fail("input derivation %s is out of order or repeated", in.Path)
		}
		d.InputDrvs = append(d.InputDrvs, in)
		return p.expect(")")
	})
	if err != nil {
		return nil, err
	}
	if err := p.expect(","); err != nil {
		return nil, err
	}
	d.InputSrcs = []string{}
	err = p.list(func() error {
		s, err := p.path("input source")
		if err == nil && len(d.InputSrcs) > 0 && d.InputSrcs[len(d.InputSrcs)-1] >= s {
			return p.fail("input source %s is out of order or repeated", s)
		}
		d.InputSrcs = append(d.InputSrcs, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, f := range []*string{&d.Platform, &d.Builder} {
		if err := p.expect(","); err != nil {
			return nil, err
		}
		if *f, err = p.str(); err != nil {
			return nil, err
		}
	}
	if err := p.expect(","); err != nil {
		return nil, err
	}
	if d.Args, err = p.strs(); err != nil {
		return nil, err
	}
	if err := p.expect(","); err != nil {
		return nil, err
	}
	err = p.list(func() error {
		var v EnvVar
		var err error
		if err = p.expect("("); err != nil {
			return err
		}
		if v.Name, err = p.str(); err != nil {
			return err
		}
		if err = p.expect(","); err != nil {
			return err
		}
		if v.Value, err = p.str(); err != nil {
			return err
		}
		d.Env = append(d.Env, v)
		return p.expect(")")
	})
	if err != nil {
		return nil, err
	}
	if err := p.expect(")"); err != nil {
		return nil, err
	}
	if p.i != len(p.s) {
		return nil, p.fail("%d bytes after the end", len(p.s)-p.i)
	}
	return d, nil
}

// quote writes s as Nix's printString does.
func quote(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

func quoteList(b *strings.Builder, ss []string) {
	b.WriteByte('[')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		quote(b, s)
	}
	b.WriteByte(']')
}

// tuple writes "(" the fields quoted, separated by "," ")".
func tuple(b *strings.Builder, fields ...string) {
	b.WriteByte('(')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		quote(b, f)
	}
	b.WriteByte(')')
}

// String writes d in ATerm form, as Nix's unparse does (byte for byte for
// what Parse accepted).
func (d *Derivation) String() string {
	var b strings.Builder
	b.WriteString("Derive([")
	for i, o := range d.Outputs {
		if i > 0 {
			b.WriteByte(',')
		}
		tuple(&b, o.Name, o.Path, o.HashAlgo, o.Hash)
	}
	b.WriteString("],[")
	for i, in := range d.InputDrvs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		quote(&b, in.Path)
		b.WriteByte(',')
		quoteList(&b, in.Outputs)
		b.WriteByte(')')
	}
	b.WriteString("],")
	quoteList(&b, d.InputSrcs)
	b.WriteByte(',')
	quote(&b, d.Platform)
	b.WriteByte(',')
	quote(&b, d.Builder)
	b.WriteByte(',')
	quoteList(&b, d.Args)
	b.WriteString(",[")
	for i, v := range d.Env {
		if i > 0 {
			b.WriteByte(',')
		}
		tuple(&b, v.Name, v.Value)
	}
	b.WriteString("])")
	return b.String()
}

// OutputPaths returns the outputs' paths by name (the rows of Nix's
// DerivationOutputs table); outputs without a path are left out.
func (d *Derivation) OutputPaths() map[string]string {
	m := make(map[string]string, len(d.Outputs))
	for _, o := range d.Outputs {
		if o.Path != "" {
			m[o.Name] = o.Path
		}
	}
	return m
}
