package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestParseBudgetBounds: --budget values that do not fit (a duration over
// about 292 years, a size over 8 EiB) are rejected with an error saying
// so, never wrapped around into a small or negative budget.
func TestParseBudgetBounds(t *testing.T) {
	for _, c := range []struct {
		in    string
		d     time.Duration
		bytes int64
	}{
		{"2562047h", 2562047 * time.Hour, 0},
		{"9223372036854775807ns", math.MaxInt64, 0},
		{"30m", 30 * time.Minute, 0},
		{"7EiB", 0, 7 << 60},
		{"9223372036854775807", 0, math.MaxInt64},
		{"10GiB", 0, 10 << 30},
	} {
		d, n, err := parseBudget(c.in)
		if err != nil || d != c.d || n != c.bytes {
			t.Errorf("parseBudget(%q) = %v, %d, %v; want %v, %d", c.in, d, n, err, c.d, c.bytes)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"2562048h", "too long"},
		{"9223372036854775808ns", "too long"},
		{"300000000h", "too long"},
		{"1h9999999999h", "too long"},
		{"8EiB", "too large"},
		{"9223372036854775808", "too large"},
		{"99999999999999999999999", "too large"},
		{"20EiB", "too large"},
		{"-1h", "positive"},
		{"0s", "positive"},
		{"0", "positive"},
		{"-5GiB", "expected"},
		{"abc", "expected"},
		{".h", "expected"},
		{"-99999999h", "too long"},
	} {
		d, n, err := parseBudget(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.in) {
			t.Errorf("parseBudget(%q) = %v, %d, %v; want an error naming it with %q", c.in, d, n, err, c.want)
		}
	}
}

// TestEnsureFreeBytesRejectsNaN: a percentage that is not a number (NaN,
// which compares false with everything) is rejected like any other bad
// percentage.
func TestEnsureFreeBytesRejectsNaN(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range []string{"NaN%", "nan%", "-NaN%", "Inf%", "+Inf%", "1e400%", "100.0001%"} {
		if got, err := ensureFreeBytes(dir, bad); err == nil {
			t.Errorf("--ensure-free %q accepted: %d", bad, got)
		}
	}
}
