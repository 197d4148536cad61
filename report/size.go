package report

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// SizeForms says what ParseSize accepts, for help texts and errors.
const SizeForms = "a number of bytes, or one with a unit K, M, G, T, P or E " +
	"(powers of 1024, as Nix's --max-freed; KiB, MiB... and lower case are the same)"

// ErrBadSize is wrapped by every error of ParseSize.
var ErrBadSize = errors.New("invalid size")

// sizeUnits are the unit letters in order: K is 1024^1, M 1024^2, ...
const sizeUnits = "KMGTPE"

// maxSizeInput bounds how much of a bad value an error repeats.
const maxSizeInput = 64

// ParseSize reads a size given on the command line, the one parser behind
// every size flag: a decimal number of bytes with an optional "+", then
// optionally a unit K, M, G, T, P or E, each a power of 1024 (K = 1024),
// as Nix's --max-freed reads them (Nix 2.8 knows K to T). "KiB", "MiB",
// ... and lower-case letters ("10k", "10gib") mean the same. Nothing else
// is a size: an empty value, a sign "-", a fraction, an exponent, spaces,
// or a decimal unit ("10MB", "10kB": refused, never read as either 10^6 or
// 2^20, so a value written for another tool is not silently rescaled).
// A value over 2^64-1 bytes is an error, never wrapped around (Nix wraps).
// Every error wraps ErrBadSize, repeats the value (its first 64 bytes)
// and names the accepted forms.
func ParseSize(s string) (uint64, error) { return ParseSizeUpTo(s, math.MaxUint64) }

// ParseSizeUpTo is ParseSize for a size that must not exceed limit bytes
// (math.MaxInt64 where it becomes an int64): a larger one is an error
// naming the limit.
func ParseSizeUpTo(s string, limit uint64) (uint64, error) {
	digits, unit := splitSize(s)
	bad := func(why string) error {
		return fmt.Errorf("%w %s: %s; expected %s", ErrBadSize, quoteSize(s), why, SizeForms)
	}
	switch {
	case s == "":
		return 0, bad("empty")
	case strings.HasPrefix(s, "-"):
		return 0, bad("must not be negative")
	}
	digits = strings.TrimPrefix(digits, "+")
	if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, bad("not a whole number of bytes or units")
	}
	shift, ok := unitShift(unit)
	if !ok {
		if u := strings.ToUpper(unit); len(u) == 2 && u[1] == 'B' && strings.IndexByte(sizeUnits, u[0]) >= 0 {
			p := strings.IndexByte(sizeUnits, u[0]) + 1 // 1000^p or 1024^p
			return 0, bad(fmt.Sprintf("unit %q is ambiguous (10^%d or 2^%d?): for 2^%d write %s%c or %s%ciB",
				unit, 3*p, 10*p, 10*p, digits, u[0], digits, u[0]))
		}
		return 0, bad(fmt.Sprintf("unknown unit %q", unit))
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n > limit>>shift {
		return 0, bad(fmt.Sprintf("too large: at most %d bytes (%s)", limit, FormatSize(limit)))
	}
	return n << shift, nil
}

// splitSize cuts s before its trailing letters: the number, then the unit.
func splitSize(s string) (num, unit string) {
	i := len(s)
	for i > 0 && ('a' <= s[i-1] && s[i-1] <= 'z' || 'A' <= s[i-1] && s[i-1] <= 'Z') {
		i--
	}
	return s[:i], s[i:]
}

// unitShift returns by how many bits a unit multiplies: 0 for none, 10 for
// K or KiB, ... 60 for E or EiB (either case).
func unitShift(unit string) (uint, bool) {
	if unit == "" {
		return 0, true
	}
	u := strings.ToUpper(unit)
	if len(u) != 1 && (len(u) != 3 || u[1:] != "IB") {
		return 0, false
	}
	i := strings.IndexByte(sizeUnits, u[0])
	if i < 0 {
		return 0, false
	}
	return 10 * uint(i+1), true
}

// quoteSize quotes a value for an error, cut to its first maxSizeInput
// bytes.
func quoteSize(s string) string {
	if len(s) > maxSizeInput {
		return strconv.Quote(s[:maxSizeInput]) + "..."
	}
	return strconv.Quote(s)
}

// FormatSize writes a byte count for people, in IEC units: "0 B", "1023 B",
// "1.5 KiB", "10 MiB", "16 EiB". Below 10 of a unit it shows one decimal,
// from 10 on none, and it never shows 1024 of a unit (1023.96 KiB is
// "1.0 MiB"). It is for reading, not for parsing back: exact values go
// into --json as integers.
func FormatSize(n uint64) string {
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	i := 0
	for i+1 < len(sizeUnits) && n>>(10*(i+1)) >= 1024 {
		i++
	}
	for {
		v := float64(n) / float64(uint64(1)<<(10*(i+1)))
		f := "%.0f %ciB"
		if v < 9.95 {
			f = "%.1f %ciB"
		}
		if s := fmt.Sprintf(f, v, sizeUnits[i]); !strings.HasPrefix(s, "1024 ") || i+1 == len(sizeUnits) {
			return s
		}
		i++
	}
}
