// Package qcow2 reads the header of a qcow2 image: enough to tell whether a
// golden disk has internal snapshots or a backing file, from the first bytes
// of the image as libvirt's storage API hands them over.
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic starts every qcow2 image.
var Magic = []byte{'Q', 'F', 'I', 0xfb}

// HeaderLen is the length of the version 2 header; version 3 adds fields
// after it that this package does not need.
const HeaderLen = 72

// ErrNotQCOW2 is returned for data that does not start with the qcow2 magic.
var ErrNotQCOW2 = errors.New("not a qcow2 image")

// Header is the part of a qcow2 header the broker checks.
type Header struct {
	Version     uint32
	Size        uint64 // virtual size in bytes
	BackingFile string // "" when the image has no backing file
	Snapshots   uint32 // internal snapshots
}

// IsQCOW2 reports whether b starts with the qcow2 magic.
func IsQCOW2(b []byte) bool { return bytes.HasPrefix(b, Magic) }

// Parse decodes the header at the start of b. The backing file name is read
// when it lies within b; otherwise BackingFile is "(outside the header)".
func Parse(b []byte) (Header, error) {
	if !IsQCOW2(b) {
		return Header{}, ErrNotQCOW2
	}
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("qcow2 header truncated: %d bytes, need %d", len(b), HeaderLen)
	}
	be := binary.BigEndian
	h := Header{
		Version:   be.Uint32(b[4:]),
		Size:      be.Uint64(b[24:]),
		Snapshots: be.Uint32(b[60:]),
	}
	if h.Version != 2 && h.Version != 3 {
		return Header{}, fmt.Errorf("qcow2 version %d is not supported", h.Version)
	}
	off, n := be.Uint64(b[8:]), uint64(be.Uint32(b[16:]))
	switch {
	case off == 0:
	case n == 0 || n > 1023:
		return Header{}, fmt.Errorf("qcow2 backing file name length %d is invalid", n)
	case off >= uint64(len(b)) || n > uint64(len(b))-off:
		h.BackingFile = "(outside the header)"
	default:
		h.BackingFile = string(b[off : off+n])
	}
	return h, nil
}
