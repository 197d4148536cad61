package narinfo

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse: Parse never panics, and whatever it accepts formats (String)
// into a narinfo that parses to the same value (References and Sigs as
// the sets they are) and formats to the same text again. To fuzz: `go
// test ./nix/narinfo -run X -fuzz FuzzParse -fuzztime 60s`; seeds are the
// narinfos real nix copy wrote (testdata) and the table tests' inputs.
func FuzzParse(f *testing.F) {
	for _, data := range realNarInfos(f) {
		f.Add(data)
	}
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "References: \nDeriver: unknown-deriver\nCA: text:sha256:abc\nFuture: x\n"))
	if data, err := os.ReadFile(filepath.Join("testdata", "nix-cache-info")); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseCacheInfo(data) // must not panic
		n, err := Parse(data, storeDir)
		if err != nil {
			return
		}
		text := n.String()
		n2, err := Parse([]byte(text), storeDir)
		if err != nil {
			t.Fatalf("String() of an accepted narinfo does not parse: %v\n%s", err, text)
		}
		n.References, n.Sigs = setOf(n.References), setOf(n.Sigs)
		n2.References, n2.Sigs = setOf(n2.References), setOf(n2.Sigs)
		if !reflect.DeepEqual(n, n2) {
			t.Fatalf("round trip changed the narinfo:\n%+v\n%+v", n, n2)
		}
		if text2 := n2.String(); text2 != text {
			t.Fatalf("String() is not stable:\n%s\n%s", text, text2)
		}
		_ = n.Fingerprint()
	})
}

func setOf(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return sortedSet(s)
}
