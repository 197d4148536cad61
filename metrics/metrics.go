// Package metrics writes Prometheus' text exposition format (version
// 0.0.4), the format node_exporter's textfile collector reads: families
// of samples with their HELP and TYPE lines, label values escaped, in a
// deterministic order; WriteFile replaces a file atomically, so that a
// collector reading the directory at any instant sees the old file or
// the new one, never a part.
//
// The writer is hand-written rather than built on the Prometheus client
// libraries (prometheus/common's expfmt with client_model and protobuf):
// what storekeeper writes is a few gauges, whose format is a handful of
// lines with three escapes, against three modules and their protobuf
// types. It imports nothing of storekeeper: any layer may use it.
package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Type is a family's metric type.
type Type string

const (
	Gauge   Type = "gauge"
	Counter Type = "counter"
)

// Label is one label of a sample.
type Label struct {
	Name, Value string
}

// Sample is one value of a family, told apart from the family's other
// samples by its labels.
type Sample struct {
	Labels []Label
	Value  float64
}

// Family is a metric: its name, help text, type and samples.
type Family struct {
	Name string
	Help string
	Type Type
	// Samples: a family without samples is left out of the output (the
	// format has nothing to say about it).
	Samples []Sample
}

// ErrInvalid is wrapped by every error about families that cannot be
// written: a bad metric or label name, a repeated family or label set,
// an unknown type, a label value or help text that is not UTF-8.
var ErrInvalid = errors.New("metrics: invalid metric")

// Write writes fams to w in the text exposition format: for each family,
// in the order of their names, "# HELP name text", "# TYPE name type",
// then its samples in the order of their label sets (labels written
// sorted by name); the HELP line is left out when the help text is
// empty. Everything is checked before anything is written: on
// an error (wrapping ErrInvalid) w gets nothing. Values are written as
// Go's shortest representation (without an exponent from 1e-4 to
// 1e15, and for integers below 2^53), with NaN, +Inf and -Inf as the format
// spells them; no timestamps (node_exporter's textfile collector refuses
// them).
func Write(w io.Writer, fams []Family) error {
	b, err := Format(fams)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Format returns what Write writes.
func Format(fams []Family) ([]byte, error) {
	fs := make([]Family, 0, len(fams))
	seen := map[string]bool{}
	for _, f := range fams {
		if !validMetricName(f.Name) {
			return nil, fmt.Errorf("%w: metric name %q: expected [a-zA-Z_:][a-zA-Z0-9_:]*", ErrInvalid, f.Name)
		}
		if seen[f.Name] {
			return nil, fmt.Errorf("%w: metric %s given twice", ErrInvalid, f.Name)
		}
		seen[f.Name] = true
		switch f.Type {
		case Gauge, Counter:
		default:
			return nil, fmt.Errorf("%w: metric %s: type %q: expected gauge or counter", ErrInvalid, f.Name, f.Type)
		}
		if !utf8.ValidString(f.Help) {
			return nil, fmt.Errorf("%w: metric %s: help text is not UTF-8", ErrInvalid, f.Name)
		}
		if len(f.Samples) > 0 {
			fs = append(fs, f)
		}
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].Name < fs[j].Name })

	var buf bytes.Buffer
	for _, f := range fs {
		type line struct{ key, text string }
		lines := make([]line, 0, len(f.Samples))
		keys := map[string]bool{}
		for _, s := range f.Samples {
			ls := append([]Label(nil), s.Labels...)
			sort.Slice(ls, func(i, j int) bool { return ls[i].Name < ls[j].Name })
			var lb strings.Builder
			for i, l := range ls {
				if !validLabelName(l.Name) {
					return nil, fmt.Errorf("%w: metric %s: label name %q: expected [a-zA-Z_][a-zA-Z0-9_]*, not starting with __", ErrInvalid, f.Name, l.Name)
				}
				if i > 0 && ls[i-1].Name == l.Name {
					return nil, fmt.Errorf("%w: metric %s: label %s given twice", ErrInvalid, f.Name, l.Name)
				}
				if !utf8.ValidString(l.Value) {
					return nil, fmt.Errorf("%w: metric %s: the value of label %s is not UTF-8", ErrInvalid, f.Name, l.Name)
				}
				if i > 0 {
					lb.WriteByte(',')
				}
				lb.WriteString(l.Name)
				lb.WriteString(`="`)
				lb.WriteString(escapeLabel(l.Value))
				lb.WriteByte('"')
			}
			key := lb.String()
			if keys[key] {
				return nil, fmt.Errorf("%w: metric %s: two samples with the labels {%s}", ErrInvalid, f.Name, key)
			}
			keys[key] = true
			text := f.Name
			if key != "" {
				text += "{" + key + "}"
			}
			lines = append(lines, line{key, text + " " + FormatValue(s.Value) + "\n"})
		}
		sort.Slice(lines, func(i, j int) bool { return lines[i].key < lines[j].key })
		if f.Help != "" {
			fmt.Fprintf(&buf, "# HELP %s %s\n", f.Name, escapeHelp(f.Help))
		}
		fmt.Fprintf(&buf, "# TYPE %s %s\n", f.Name, f.Type)
		for _, l := range lines {
			buf.WriteString(l.text)
		}
	}
	return buf.Bytes(), nil
}

// FormatValue is a sample value as the format writes it.
func FormatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	if a := math.Abs(v); v == math.Trunc(v) && a < 1<<53 || a >= 1e-4 && a < 1e15 {
		// Counts, byte sizes, timestamps: all their digits, no exponent.
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// escapeHelp escapes a help text: backslash and newline.
func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

// escapeLabel escapes a label value: backslash, double quote, newline.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func validMetricName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func validLabelName(s string) bool {
	if s == "" || strings.HasPrefix(s, "__") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
