package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

func TestFormat(t *testing.T) {
	cmd := func(c string) []Label { return []Label{{"command", c}} }
	cases := []struct {
		name string
		fams []Family
		want string
	}{
		{"empty", nil, ""},
		{"no samples left out", []Family{{Name: "a", Help: "h", Type: Gauge}}, ""},
		{"sorted families, samples and labels", []Family{
			{Name: "z_total", Help: "zz", Type: Counter, Samples: []Sample{{Value: 3}}},
			{Name: "a", Help: "first", Type: Gauge, Samples: []Sample{
				{Labels: []Label{{"kind", "x"}, {"command", "verify"}}, Value: 0.5},
				{Labels: []Label{{"command", "gc"}, {"kind", "y"}}, Value: 1e21},
			}},
		}, "# HELP a first\n# TYPE a gauge\n" +
			"a{command=\"gc\",kind=\"y\"} 1e+21\n" +
			"a{command=\"verify\",kind=\"x\"} 0.5\n" +
			"# HELP z_total zz\n# TYPE z_total counter\nz_total 3\n"},
		{"escapes", []Family{{Name: "m:x", Help: "a \\ b\nc \"q\"", Type: Gauge, Samples: []Sample{
			{Labels: []Label{{"v", "back\\slash \"quoted\"\nnew line"}}, Value: -2},
		}}}, "# HELP m:x a \\\\ b\\nc \"q\"\n# TYPE m:x gauge\n" +
			"m:x{v=\"back\\\\slash \\\"quoted\\\"\\nnew line\"} -2\n"},
		{"special values", []Family{{Name: "v", Type: Gauge, Samples: []Sample{
			{Labels: cmd("a"), Value: math.NaN()}, {Labels: cmd("b"), Value: math.Inf(1)},
			{Labels: cmd("c"), Value: math.Inf(-1)}, {Labels: cmd("d"), Value: 1234567890123},
			{Labels: cmd("e"), Value: 0.1},
		}}}, "# TYPE v gauge\n" +
			"v{command=\"a\"} NaN\nv{command=\"b\"} +Inf\nv{command=\"c\"} -Inf\n" +
			"v{command=\"d\"} 1234567890123\nv{command=\"e\"} 0.1\n"},
		{"empty label value", []Family{{Name: "e", Help: "h", Type: Gauge, Samples: []Sample{{Labels: []Label{{"kind", ""}}, Value: 1}}}},
			"# HELP e h\n# TYPE e gauge\ne{kind=\"\"} 1\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Write(&buf, c.fams); err != nil {
				t.Fatal(err)
			}
			if got := buf.String(); got != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
			if _, err := parse(buf.String()); err != nil {
				t.Errorf("the output does not parse: %v", err)
			}
		})
	}
}

func TestFormatInvalid(t *testing.T) {
	s := []Sample{{Value: 1}}
	cases := []struct {
		name string
		fams []Family
		want string
	}{
		{"empty name", []Family{{Name: "", Type: Gauge, Samples: s}}, "metric name"},
		{"digit first", []Family{{Name: "1a", Type: Gauge, Samples: s}}, "metric name"},
		{"dash", []Family{{Name: "a-b", Type: Gauge, Samples: s}}, "metric name"},
		{"space", []Family{{Name: "a b", Type: Gauge, Samples: s}}, "metric name"},
		{"twice", []Family{{Name: "a", Type: Gauge, Samples: s}, {Name: "a", Type: Gauge, Samples: s}}, "given twice"},
		{"type", []Family{{Name: "a", Type: "histogram", Samples: s}}, "type"},
		{"no type", []Family{{Name: "a", Samples: s}}, "type"},
		{"help utf8", []Family{{Name: "a", Help: "\xff", Type: Gauge, Samples: s}}, "UTF-8"},
		{"label name", []Family{{Name: "a", Type: Gauge, Samples: []Sample{{Labels: []Label{{"a:b", "x"}}}}}}, "label name"},
		{"reserved label", []Family{{Name: "a", Type: Gauge, Samples: []Sample{{Labels: []Label{{"__name__", "x"}}}}}}, "label name"},
		{"empty label name", []Family{{Name: "a", Type: Gauge, Samples: []Sample{{Labels: []Label{{"", "x"}}}}}}, "label name"},
		{"label twice", []Family{{Name: "a", Type: Gauge, Samples: []Sample{{Labels: []Label{{"x", "1"}, {"x", "2"}}}}}}, "given twice"},
		{"label utf8", []Family{{Name: "a", Type: Gauge, Samples: []Sample{{Labels: []Label{{"x", "a\xc3"}}}}}}, "UTF-8"},
		{"same labels", []Family{{Name: "a", Type: Gauge, Samples: []Sample{
			{Labels: []Label{{"x", "1"}, {"y", "2"}}}, {Labels: []Label{{"y", "2"}, {"x", "1"}}}}}}, "two samples"},
		{"two unlabelled", []Family{{Name: "a", Type: Gauge, Samples: []Sample{{}, {}}}}, "two samples"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Write(&buf, c.fams)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, c.want)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %q before failing", buf.String())
			}
		})
	}
}

func sampleFams(v float64) []Family {
	return []Family{{Name: "storekeeper_x", Help: "x", Type: Gauge, Samples: []Sample{{Labels: []Label{{"command", "gc"}}, Value: v}}}}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "gc.prom")
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	if err := WriteFile(p, sampleFams(1)); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, sampleFams(2)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := "# HELP storekeeper_x x\n# TYPE storekeeper_x gauge\nstorekeeper_x{command=\"gc\"} 2\n"; string(b) != want {
		t.Errorf("file holds %q, want %q", b, want)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 whatever the umask", fi.Mode().Perm())
	}
	assertOnly(t, dir, "gc.prom")

	// Invalid families: the old file is kept, nothing left behind.
	if err := WriteFile(p, []Family{{Name: "bad name", Type: Gauge, Samples: []Sample{{}}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if b2, _ := os.ReadFile(p); !bytes.Equal(b, b2) {
		t.Errorf("a refused write changed the file: %q", b2)
	}
	assertOnly(t, dir, "gc.prom")
}

func TestWriteFileRefusals(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o644)
	link := filepath.Join(dir, "link.prom")
	os.Symlink(target, link)
	if err := WriteFile(link, sampleFams(1)); !errors.Is(err, ErrUnsafeFile) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("symlink: err = %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("the symlink was followed: target holds %q", b)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced")
	}
	os.Mkdir(filepath.Join(dir, "d.prom"), 0o755)
	if err := WriteFile(filepath.Join(dir, "d.prom"), sampleFams(1)); !errors.Is(err, ErrUnsafeFile) {
		t.Errorf("directory: err = %v", err)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "x.prom"), sampleFams(1)); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing directory: err = %v", err)
	}
	for _, p := range []string{"", "/", dir + "/.."} {
		if err := WriteFile(p, sampleFams(1)); err == nil {
			t.Errorf("WriteFile(%q) succeeded", p)
		}
	}
	// A group-writable directory is one another user may control.
	wdir := filepath.Join(dir, "w")
	os.Mkdir(wdir, 0o755)
	os.Chmod(wdir, 0o775)
	if err := WriteFile(filepath.Join(wdir, "x.prom"), sampleFams(1)); !errors.Is(err, ErrUnsafeFile) || !strings.Contains(err.Error(), "0775") {
		t.Errorf("group-writable directory: err = %v", err)
	}
	assertOnly(t, wdir)
	if os.Geteuid() == 0 {
		// A directory owned by another user.
		odir := filepath.Join(dir, "other")
		os.Mkdir(odir, 0o755)
		os.Chown(odir, 65534, 65534)
		if err := WriteFile(filepath.Join(odir, "x.prom"), sampleFams(1)); !errors.Is(err, ErrUnsafeFile) || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("another user's directory: err = %v", err)
		}
		assertOnly(t, odir)
	}
	assertOnly(t, dir, "d.prom", "link.prom", "other", "target", "w")
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// FuzzWrite: whatever the names, help texts, label values and values,
// Write either refuses with ErrInvalid (and then the input really breaks
// a rule) or writes text that a strict parser of the format reads back
// to the same families.
func FuzzWrite(f *testing.F) {
	f.Add("storekeeper_a", "help \\ \n", "command", "gc \"x\"\n\\", 1.5, "kind", "")
	f.Add("a:b", "", "x", "\xff", math.Inf(1), "y", "z")
	f.Add("_", "\x00\t", "_", "", math.NaN(), "__x", "")
	f.Fuzz(func(t *testing.T, name, help, l1, v1 string, val float64, l2, v2 string) {
		fams := []Family{{Name: name, Help: help, Type: Gauge, Samples: []Sample{
			{Labels: []Label{{l1, v1}, {l2, v2}}, Value: val},
			{Labels: []Label{{l1, v2}}, Value: -val},
		}}}
		b, err := Format(fams)
		valid := validMetricName(name) && validLabelName(l1) && validLabelName(l2) && l1 != l2 &&
			utf8Valid(help, v1, v2)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || valid {
				t.Fatalf("refused valid input: %v", err)
			}
			return
		}
		if !valid {
			t.Fatalf("accepted invalid input: %q", b)
		}
		got, err := parse(string(b))
		if err != nil {
			t.Fatalf("output does not parse: %v\n%s", err, b)
		}
		want := map[string]string{
			fmt.Sprintf("%s|%s|gauge|%s", name, help, labelKey([]Label{{l1, v1}, {l2, v2}})): FormatValue(val),
			fmt.Sprintf("%s|%s|gauge|%s", name, help, labelKey([]Label{{l1, v2}})):           FormatValue(-val),
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("parsed back %v, want %v", got, want)
		}
	})
}

func utf8Valid(ss ...string) bool {
	for _, s := range ss {
		if !utf8ValidString(s) {
			return false
		}
	}
	return true
}

func utf8ValidString(s string) bool { return utf8.ValidString(s) }

func labelKey(ls []Label) string {
	m := map[string]string{}
	for _, l := range ls {
		m[l.Name] = l.Value
	}
	return fmt.Sprint(m)
}

// parse is a strict reader of the text format (what Prometheus'
// expfmt.TextParser accepts, for the subset written here: HELP and TYPE
// before the samples of a family, which are contiguous, no timestamps):
// it returns "name|help|type|labels" -> value text.
func parse(text string) (map[string]string, error) {
	out := map[string]string{}
	if text == "" {
		return out, nil
	}
	if !strings.HasSuffix(text, "\n") {
		return nil, fmt.Errorf("no final newline")
	}
	var fam, help, typ string
	done := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "# HELP "):
			rest := line[len("# HELP "):]
			n, h, ok := strings.Cut(rest, " ")
			if !ok || !validMetricName(n) || done[n] {
				return nil, fmt.Errorf("bad HELP line %q", line)
			}
			if fam != "" {
				done[fam] = true
			}
			var err error
			if help, err = unescape(h, false); err != nil {
				return nil, err
			}
			fam, typ = n, ""
		case strings.HasPrefix(line, "# TYPE "):
			n, ty, ok := strings.Cut(line[len("# TYPE "):], " ")
			if ok && n != fam && validMetricName(n) && !done[n] {
				// A family without a HELP line.
				if fam != "" {
					done[fam] = true
				}
				fam, help, typ = n, "", ""
			}
			if !ok || n != fam || typ != "" || (ty != "gauge" && ty != "counter") {
				return nil, fmt.Errorf("bad TYPE line %q", line)
			}
			typ = ty
		default:
			if fam == "" || typ == "" || !strings.HasPrefix(line, fam) {
				return nil, fmt.Errorf("sample %q outside its family", line)
			}
			rest := line[len(fam):]
			labels := map[string]string{}
			if strings.HasPrefix(rest, "{") {
				rest = rest[1:]
				for !strings.HasPrefix(rest, "}") {
					n, r, ok := strings.Cut(rest, `="`)
					if !ok || !validLabelName(n) {
						return nil, fmt.Errorf("bad label in %q", line)
					}
					// The value runs to the first unescaped quote.
					i := 0
					for ; i < len(r) && r[i] != '"'; i++ {
						if r[i] == '\\' {
							i++
						}
					}
					if i >= len(r) {
						return nil, fmt.Errorf("unterminated label value in %q", line)
					}
					v, err := unescape(r[:i], true)
					if err != nil {
						return nil, err
					}
					if _, dup := labels[n]; dup {
						return nil, fmt.Errorf("label %s twice in %q", n, line)
					}
					labels[n] = v
					rest = r[i+1:]
					if strings.HasPrefix(rest, ",") {
						rest = rest[1:]
					} else if !strings.HasPrefix(rest, "}") {
						return nil, fmt.Errorf("bad label list in %q", line)
					}
				}
				rest = rest[1:]
			}
			val, ok := strings.CutPrefix(rest, " ")
			if !ok || strings.Contains(val, " ") {
				return nil, fmt.Errorf("bad value in %q", line)
			}
			if _, err := strconv.ParseFloat(val, 64); err != nil {
				return nil, fmt.Errorf("bad value in %q: %w", line, err)
			}
			var ls []Label
			for n, v := range labels {
				ls = append(ls, Label{n, v})
			}
			key := fmt.Sprintf("%s|%s|%s|%s", fam, help, typ, labelKey(ls))
			if _, dup := out[key]; dup {
				return nil, fmt.Errorf("sample %q twice", line)
			}
			out[key] = val
		}
	}
	return out, nil
}

func unescape(s string, quote bool) (string, error) {
	if !utf8ValidString(s) {
		return "", fmt.Errorf("not UTF-8: %q", s)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\n' {
			return "", fmt.Errorf("raw newline in %q", s)
		}
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			return "", fmt.Errorf("trailing backslash in %q", s)
		}
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case '"':
			if !quote {
				return "", fmt.Errorf("escaped quote in a help text %q", s)
			}
			b.WriteByte('"')
		default:
			return "", fmt.Errorf("bad escape in %q", s)
		}
	}
	return b.String(), nil
}
