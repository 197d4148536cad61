package report

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"testing"
)

// sizeCases are ParseSize's table, and the fuzz target's seeds. ok false:
// an error is expected that contains want (and the value itself).
var sizeCases = []struct {
	in   string
	n    uint64
	ok   bool
	want string
}{
	{in: "0", ok: true},
	{in: "123", n: 123, ok: true},
	{in: "+5", n: 5, ok: true},
	{in: "007", n: 7, ok: true},
	{in: "1K", n: 1 << 10, ok: true},
	{in: "1k", n: 1 << 10, ok: true},
	{in: "10K", n: 10 << 10, ok: true},
	{in: "2M", n: 2 << 20, ok: true},
	{in: "3g", n: 3 << 30, ok: true},
	{in: "10G", n: 10 << 30, ok: true},
	{in: "4T", n: 4 << 40, ok: true},
	{in: "5P", n: 5 << 50, ok: true},
	{in: "15E", n: 15 << 60, ok: true},
	{in: "10KiB", n: 10 << 10, ok: true},
	{in: "10kib", n: 10 << 10, ok: true},
	{in: "10KIB", n: 10 << 10, ok: true},
	{in: "10GiB", n: 10 << 30, ok: true},
	{in: "10gib", n: 10 << 30, ok: true},
	{in: "7EiB", n: 7 << 60, ok: true},
	{in: "+1G", n: 1 << 30, ok: true},
	{in: "0T", ok: true},
	{in: "18446744073709551615", n: math.MaxUint64, ok: true},
	{in: "16777215T", n: 16777215 << 40, ok: true},

	{in: "", want: "empty"},
	{in: "K", want: "whole number"},
	{in: "KiB", want: "whole number"},
	{in: "+", want: "whole number"},
	{in: "-1", want: "negative"},
	{in: "-5GiB", want: "negative"},
	{in: "-0", want: "negative"},
	{in: "1.5G", want: "whole number"},
	{in: "1e9", want: "whole number"},
	{in: "0x10", want: "whole number"},
	{in: "1 K", want: "whole number"},
	{in: " 1", want: "whole number"},
	{in: "1K ", want: "whole number"},
	{in: "NaN", want: "whole number"},
	{in: "Inf", want: "whole number"},
	{in: "+-1", want: "whole number"},
	{in: "١٢", want: "whole number"}, // Arabic-Indic digits
	{in: "10MB", want: `unit "MB" is ambiguous`},
	{in: "10kB", want: "write 10K or 10KiB"},
	{in: "10gb", want: "write 10G or 10GiB"},
	{in: "1X", want: `unknown unit "X"`},
	{in: "1B", want: `unknown unit "B"`},
	{in: "1Ki", want: `unknown unit "Ki"`},
	{in: "1KiBs", want: `unknown unit "KiBs"`},
	{in: "1iB", want: `unknown unit "iB"`},
	{in: "18446744073709551616", want: "too large"},
	{in: "99999999999999999999999", want: "too large"},
	{in: "16777216T", want: "too large"},
	{in: "16E", want: "too large"},
	{in: "20EiB", want: "too large"},
}

func TestParseSize(t *testing.T) {
	for _, c := range sizeCases {
		n, err := ParseSize(c.in)
		if c.ok {
			if err != nil || n != c.n {
				t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, n, err, c.n)
			}
			continue
		}
		if err == nil || n != 0 {
			t.Errorf("ParseSize(%q) = %d, %v; want an error", c.in, n, err)
			continue
		}
		msg := err.Error()
		if !errors.Is(err, ErrBadSize) || !strings.Contains(msg, c.want) || !strings.Contains(msg, `"`+c.in+`"`) ||
			!strings.Contains(msg, "powers of 1024") {
			t.Errorf("ParseSize(%q) error %q: want ErrBadSize, the value, %q and the accepted forms", c.in, msg, c.want)
		}
	}
}

// TestParseSizeUpTo: a size over the bound is an error naming the bound;
// the bound itself is accepted.
func TestParseSizeUpTo(t *testing.T) {
	for _, c := range []struct {
		in  string
		max uint64
		ok  bool
	}{
		{"9223372036854775807", math.MaxInt64, true},
		{"9223372036854775808", math.MaxInt64, false},
		{"7E", math.MaxInt64, true},
		{"8E", math.MaxInt64, false},
		{"8EiB", math.MaxInt64, false},
		{"1K", 1024, true},
		{"1K", 1023, false},
		{"0", 0, true},
		{"1", 0, false},
	} {
		n, err := ParseSizeUpTo(c.in, c.max)
		if c.ok != (err == nil) || !c.ok && (!strings.Contains(err.Error(), "too large") || !strings.Contains(err.Error(), fmt.Sprint(c.max))) {
			t.Errorf("ParseSizeUpTo(%q, %d) = %d, %v; want ok=%v (or 'too large' naming the bound)", c.in, c.max, n, err, c.ok)
		}
	}
}

// TestParseSizeBoundsItsError: a long bad value is cut in the error.
func TestParseSizeBoundsItsError(t *testing.T) {
	in := strings.Repeat("9", 1<<20) + "X"
	_, err := ParseSize(in)
	if err == nil || len(err.Error()) > 1024 || !strings.Contains(err.Error(), strings.Repeat("9", 64)+`"...`) {
		t.Fatalf("ParseSize(1 MiB of digits): error of %d bytes: %.200v", len(err.Error()), err)
	}
}

func TestFormatSize(t *testing.T) {
	for _, c := range []struct {
		n    uint64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{10 << 10, "10 KiB"},
		{10<<10 - 1, "10 KiB"},
		{1<<20 - 1, "1.0 MiB"}, // never "1024 KiB"
		{1<<20 - 21, "1.0 MiB"},
		{1<<20 - 600, "1023 KiB"},
		{1 << 20, "1.0 MiB"},
		{10 << 30, "10 GiB"},
		{1536 << 30, "1.5 TiB"},
		{5 << 50, "5.0 PiB"},
		{7 << 60, "7.0 EiB"},
		{math.MaxUint64, "16 EiB"},
	} {
		if got := FormatSize(c.n); got != c.want {
			t.Errorf("FormatSize(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

// FuzzParseSize checks ParseSize against an independent reading with
// big integers: every value it accepts has the grammar it documents and
// the value that grammar gives; every value it refuses is outside the
// grammar or too large, and the error says so. FormatSize never fails on
// what it accepts.
func FuzzParseSize(f *testing.F) {
	for _, c := range sizeCases {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		want, inGrammar := bigSize(s)
		switch {
		case !inGrammar:
			if err == nil {
				t.Fatalf("ParseSize(%q) = %d; want an error (not a size)", s, n)
			}
		case want.IsUint64():
			if err != nil || n != want.Uint64() {
				t.Fatalf("ParseSize(%q) = %d, %v; want %s", s, n, err, want)
			}
		default:
			if err == nil || !strings.Contains(err.Error(), "too large") {
				t.Fatalf("ParseSize(%q) = %d, %v; want 'too large' (%s)", s, n, err, want)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrBadSize) || n != 0 {
				t.Fatalf("ParseSize(%q) = %d, %v: want 0 and ErrBadSize", s, n, err)
			}
			return
		}
		if f := FormatSize(n); !strings.HasSuffix(f, "B") {
			t.Fatalf("FormatSize(%d) = %q", n, f)
		}
		if m, err := ParseSizeUpTo(s, n); err != nil || m != n {
			t.Fatalf("ParseSizeUpTo(%q, %d) = %d, %v; want %d", s, n, m, err, n)
		}
		if n > 0 {
			if m, err := ParseSizeUpTo(s, n-1); err == nil || !strings.Contains(err.Error(), "too large") {
				t.Fatalf("ParseSizeUpTo(%q, %d) = %d, %v; want 'too large'", s, n-1, m, err)
			}
		}
	})
}

// bigSize reads s by the documented grammar, [+]DIGITS[UNIT[iB]], with
// any size: the oracle of FuzzParseSize.
func bigSize(s string) (*big.Int, bool) {
	s = strings.TrimPrefix(s, "+")
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return nil, false
	}
	n, _ := new(big.Int).SetString(s[:i], 10)
	unit := strings.ToLower(s[i:])
	if unit == "" {
		return n, true
	}
	if len(unit) == 3 && unit[1:] == "ib" {
		unit = unit[:1]
	}
	p := strings.Index("kmgtpe", unit)
	if len(unit) != 1 || p < 0 {
		return nil, false
	}
	return n.Lsh(n, uint(10*(p+1))), true
}
