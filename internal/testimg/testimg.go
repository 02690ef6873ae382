// Package testimg makes images for tests of what the kiosk shows.
package testimg

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// HugePNG is a PNG header claiming w×h pixels, and no pixels: a few bytes
// that would take w*h*4 bytes of memory to decode.
func HugePNG(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	chunk("IHDR", append(ihdr, 8, 6, 0, 0, 0)) // 8-bit RGBA
	chunk("IEND", nil)
	return b.Bytes()
}
