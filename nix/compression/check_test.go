package compression

import (
	"bytes"
	"errors"
	"testing"
)

// TestCheckAgreesWithNewReader: Check refuses exactly the methods
// NewReader refuses as unknown.
func TestCheckAgreesWithNewReader(t *testing.T) {
	for _, m := range []string{"none", "bzip2", "xz", "zstd", "br", "gzip", "lz4", "lzip", "", "XZ", "xz "} {
		_, err := NewReader(m, bytes.NewReader(nil))
		unknown := errors.Is(err, ErrUnknownMethod)
		cerr := Check(m)
		if (cerr != nil) != unknown || cerr != nil && !errors.Is(cerr, ErrUnknownMethod) {
			t.Errorf("%q: Check = %v, NewReader = %v", m, cerr, err)
		}
	}
}
