package nixconf

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The fuzz targets below run their seeds in every `go test ./store`; to
// fuzz, e.g. `go test ./store -run X -fuzz FuzzSettingsIncludes -fuzztime
// 60s`. Their seeds are the table tests' inputs (testdata/nixconf,
// testdata/nar). Store path parsing has FuzzParseStorePath
// (storepath_test.go), a single config text FuzzApplyText
// (settings_test.go).

// FuzzSettingsIncludes: nix.conf parsing never panics, ends on include loops
// (the input is split at NUL into main.conf, a.conf and b.conf, which may
// include each other and themselves), reports errors as ErrBadConfig, and
// keeps what it stores bounded by the input: every Raw value, Source and
// warning is at most a small multiple of the bytes read.
func FuzzSettingsIncludes(f *testing.F) {
	ents, err := os.ReadDir(confFixtures)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			data, err := os.ReadFile(filepath.Join(confFixtures, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Add([]byte("include a.conf\x00include b.conf\x00include a.conf"))
	f.Add([]byte("include main.conf"))
	f.Add([]byte("!include a.conf\nextra-substituters = x y\x00extra-substituters = z\nsubstituters =\x00include ./a.conf"))
	f.Add([]byte("keep-outputs = true\r\nextra-allowed-uris = a\nextra-allowed-uris = b\ngc-reserved-space = -1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		parts := bytes.SplitN(data, []byte{0}, 3)
		// Keep includes inside the temp dir: no /dev/zero, no FIFOs.
		for _, part := range parts {
			for _, line := range strings.Split(string(part), "\n") {
				if i := strings.IndexByte(line, '#'); i >= 0 {
					line = line[:i]
				}
				toks := confTokens(line)
				if len(toks) >= 2 && (toks[0] == "include" || toks[0] == "!include") &&
					(strings.HasPrefix(toks[1], "/") || strings.Contains(toks[1], "..")) {
					t.Skip()
				}
			}
		}
		names := []string{"main.conf", "a.conf", "b.conf"}
		for i, p := range parts {
			if err := os.WriteFile(filepath.Join(dir, names[i]), p, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		s := Default(true)
		err := s.ApplyFile(filepath.Join(dir, "main.conf"))
		if err != nil && !errors.Is(err, ErrBadConfig) {
			t.Fatalf("error does not wrap ErrBadConfig: %v", err)
		}
		// Each file is read at most maxIncludeDepth+1 times along one
		// include chain, and includes are depth-first, so a bound of the
		// whole input times that depth per value is generous but finite.
		limit := (len(data) + 64 + len(dir)) * (maxIncludeDepth + 2)
		for k, v := range s.Raw {
			if len(k)+len(v) > limit {
				t.Fatalf("Raw[%q] holds %d bytes from %d bytes of input", k, len(v), len(data))
			}
		}
		for _, w := range s.Warnings {
			if len(w) > limit {
				t.Fatalf("a warning of %d bytes from %d bytes of input", len(w), len(data))
			}
		}
		// Same text, same result, through ApplyText.
		if len(parts) == 1 && !bytes.Contains(data, []byte("include")) {
			s2 := Default(true)
			err2 := s2.ApplyText(string(data), filepath.Join(dir, "main.conf"))
			if (err == nil) != (err2 == nil) || len(s.Raw) != len(s2.Raw) {
				t.Fatalf("ApplyFile and ApplyText disagree: %v / %v", err, err2)
			}
			for k, v := range s.Raw {
				if s2.Raw[k] != v {
					t.Fatalf("Raw[%q]: ApplyFile %q, ApplyText %q", k, v, s2.Raw[k])
				}
			}
		}
	})
}

// TestSettingsManyExtraLinesLinear: appending to a list setting line by
// line costs linear time. It used to re-tokenise and copy the whole list
// for every "extra-" line: 32,000 lines (718 KiB) took 66 s, so a
// hostile nix.conf of the 16 MiB allowed would have taken hours.
func TestSettingsManyExtraLinesLinear(t *testing.T) {
	const n = 200000
	for _, name := range []string{"extra-allowed-uris", "extra-substituters", "extra-trusted-public-keys"} {
		s := Default(true)
		start := time.Now()
		if err := s.ApplyText(strings.Repeat(name+" = a\n", n), "/x/nix.conf"); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%d %s lines took %v", n, name, d)
		}
		canon := strings.TrimPrefix(name, "extra-")
		if got := len(confTokens(s.Raw[canon])); got < n {
			t.Errorf("%s: %d tokens after %d lines", canon, got, n)
		}
	}
	// The typed list and Raw agree, and appends across calls see
	// earlier ones without sharing a slice with a copy.
	s := Default(true)
	if err := s.ApplyText("extra-substituters = b c", "/x/nix.conf"); err != nil {
		t.Fatal(err)
	}
	cp := s
	cp.Substituters = append([]string(nil), s.Substituters...)
	if err := s.Set("extra-substituters", "d"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Substituters, " "); got != DefaultSubstituter+" b c d" || s.Raw["substituters"] != got {
		t.Errorf("Substituters = %q, Raw %q", got, s.Raw["substituters"])
	}
	if got := strings.Join(cp.Substituters, " "); got != DefaultSubstituter+" b c" {
		t.Errorf("the copy changed: %q", got)
	}
}
