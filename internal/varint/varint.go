package varint

import (
	"encoding/binary"
	"fmt"
)

// Decoder reads the unsigned varints and length-prefixed strings that
// storekeeper's own state files (verify's manifests, optimise's linked
// paths) are made of. The first failure sticks in Err, wrapping Bad (the
// caller's sentinel error); later reads return zero values.
type Decoder struct {
	B   []byte // what is left to read
	Err error
	Bad error
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.Err = fmt.Errorf("%w: truncated number", d.Bad)
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Bytes reads n bytes; the result aliases the input.
func (d *Decoder) Bytes(n uint64) []byte {
	if d.Err != nil {
		return nil
	}
	if n > uint64(len(d.B)) {
		d.Err = fmt.Errorf("%w: truncated field", d.Bad)
		return nil
	}
	v := d.B[:n]
	d.B = d.B[n:]
	return v
}

// String reads a string written by AppendString.
func (d *Decoder) String() string { return string(d.Bytes(d.Uvarint())) }

// AppendString appends s as its length (a uvarint) and its bytes.
func AppendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}
