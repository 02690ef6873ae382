package spice

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// testKey is one ticket key shared by the tests (and fuzz targets), so
// they do not each pay for key generation.
var testKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := NewKey()
	if err != nil {
		panic(err)
	}
	return k
})

var otherKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := NewKey()
	if err != nil {
		panic(err)
	}
	return k
})

// hdr builds a SpiceLinkHeader.
func hdr(magic, major, minor, size uint32) []byte {
	b := le.AppendUint32(nil, magic)
	b = le.AppendUint32(b, major)
	b = le.AppendUint32(b, minor)
	return le.AppendUint32(b, size)
}

// mess builds a raw SpiceLinkMess (without header).
func mess(connID uint32, typ, id uint8, nCommon, nChannel, offset uint32, caps ...uint32) []byte {
	b := le.AppendUint32(nil, connID)
	b = append(b, typ, id)
	b = le.AppendUint32(b, nCommon)
	b = le.AppendUint32(b, nChannel)
	b = le.AppendUint32(b, offset)
	for _, c := range caps {
		b = le.AppendUint32(b, c)
	}
	return b
}

// withHdr prefixes body with a valid header announcing its size.
func withHdr(body []byte) []byte {
	return append(hdr(Magic, 2, 2, uint32(len(body))), body...)
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestLinkMessWireFormat(t *testing.T) {
	m := &LinkMess{
		ConnectionID: 0x01020304,
		ChannelType:  ChannelDisplay,
		ChannelID:    1,
		CommonCaps:   []uint32{0xb},
		ChannelCaps:  []uint32{0x1234},
	}
	var buf bytes.Buffer
	n, err := m.WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo() error = %v, want nil", err)
	}
	want := "52454451" + "02000000" + "02000000" + "1a000000" + // header, size 26
		"04030201" + "02" + "01" + "01000000" + "01000000" + "12000000" + // fixed part, caps at 18
		"0b000000" + "34120000"
	if got := hex.EncodeToString(buf.Bytes()); got != want {
		t.Errorf("WriteTo() wrote %s, want %s", got, want)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo() = %d, want %d", n, buf.Len())
	}
}

func TestLinkMessRoundTrip(t *testing.T) {
	tests := []*LinkMess{
		{Major: 2, Minor: 2, ChannelType: ChannelMain},
		{Major: 2, Minor: 1, ConnectionID: 42, ChannelType: ChannelDisplay, ChannelID: 3, CommonCaps: []uint32{0xb}},
		{Major: 2, Minor: 2, ConnectionID: 0xffffffff, ChannelType: ChannelType(255), ChannelID: 255,
			CommonCaps: []uint32{1, 2, 3}, ChannelCaps: []uint32{0xffffffff, 0}},
		{Major: 2, Minor: 2, ChannelType: ChannelInputs, ChannelCaps: []uint32{1}},
		{Major: 2, Minor: 2, ChannelType: ChannelUSBRedir, CommonCaps: make([]uint32, 500), ChannelCaps: make([]uint32, 519)},
	}
	for _, m := range tests {
		var buf bytes.Buffer
		if _, err := m.WriteTo(&buf); err != nil {
			t.Fatalf("%+v.WriteTo() error = %v, want nil", m, err)
		}
		got, err := ReadLinkMess(&buf)
		if err != nil {
			t.Fatalf("ReadLinkMess(WriteTo(%+v)) error = %v, want nil", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("ReadLinkMess(WriteTo(%+v)) = %+v, want the same", m, got)
		}
		if buf.Len() != 0 {
			t.Errorf("ReadLinkMess(WriteTo(%+v)) left %d bytes unread, want 0", m, buf.Len())
		}
	}
}

func TestLinkMessDefaultVersion(t *testing.T) {
	var buf bytes.Buffer
	if _, err := (&LinkMess{ChannelType: ChannelMain}).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := ReadLinkMess(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Major != VersionMajor || got.Minor != VersionMinor {
		t.Errorf("ReadLinkMess(WriteTo(zero version)) version = %d.%d, want %d.%d", got.Major, got.Minor, VersionMajor, VersionMinor)
	}
}

func TestLinkMessWriteToLimits(t *testing.T) {
	tests := []struct {
		name string
		m    *LinkMess
	}{
		{"too many common caps", &LinkMess{CommonCaps: make([]uint32, MaxCaps+1)}},
		{"too many channel caps", &LinkMess{ChannelCaps: make([]uint32, MaxCaps+1)}},
		{"too big", &LinkMess{CommonCaps: make([]uint32, 1000), ChannelCaps: make([]uint32, 20)}},
	}
	for _, tt := range tests {
		if n, err := tt.m.WriteTo(io.Discard); err == nil {
			t.Errorf("%s: WriteTo() = %d, nil, want an error", tt.name, n)
		}
	}
}

// codeOf returns the LinkError carried by err if it is a *ProtocolError,
// or -1.
func codeOf(err error) int64 {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return int64(pe.Code)
	}
	return -1
}

const ioErr = -1 // wantCode for errors that are I/O errors, not protocol errors

func TestReadLinkMessMalformed(t *testing.T) {
	valid := mess(0, 1, 0, 1, 0, 18, 0xb)
	tests := []struct {
		name     string
		in       []byte
		wantCode int64     // LinkError of the *ProtocolError, or ioErr
		wantIs   error     // optional: errors.Is target
		wantOK   *LinkMess // for inputs that are odd but accepted
	}{
		{name: "empty", in: nil, wantCode: ioErr, wantIs: io.EOF},
		{name: "half magic", in: []byte("RE"), wantCode: ioErr, wantIs: io.ErrUnexpectedEOF},
		{name: "wrong magic", in: cat([]byte("RFB "), hdr(Magic, 2, 2, 18)[4:], valid), wantCode: int64(LinkErrInvalidMagic), wantIs: LinkErrInvalidMagic},
		{name: "HTTP", in: []byte("GET / HTTP/1.1\r\n\r\n"), wantCode: int64(LinkErrInvalidMagic)},
		{name: "magic only", in: le.AppendUint32(nil, Magic), wantCode: ioErr, wantIs: io.ErrUnexpectedEOF},
		{name: "truncated header", in: hdr(Magic, 2, 2, 22)[:10], wantCode: ioErr, wantIs: io.ErrUnexpectedEOF},
		{name: "major 1", in: cat(hdr(Magic, 1, 3, 22), valid), wantCode: int64(LinkErrVersionMismatch), wantIs: LinkErrVersionMismatch},
		{name: "major 0", in: cat(hdr(Magic, 0, 0, 22), valid), wantCode: int64(LinkErrVersionMismatch)},
		{name: "major 3", in: cat(hdr(Magic, 3, 0, 22), valid), wantCode: int64(LinkErrVersionMismatch)},
		{name: "size 0", in: hdr(Magic, 2, 2, 0), wantCode: int64(LinkErrInvalidData)},
		{name: "size 17", in: cat(hdr(Magic, 2, 2, 17), valid[:17]), wantCode: int64(LinkErrInvalidData)},
		{name: "size 4097", in: hdr(Magic, 2, 2, 4097), wantCode: int64(LinkErrInvalidData)},
		{name: "size max uint32", in: hdr(Magic, 2, 2, 0xffffffff), wantCode: int64(LinkErrInvalidData)},
		{name: "truncated body", in: cat(hdr(Magic, 2, 2, 22), valid[:21]), wantCode: ioErr, wantIs: io.ErrUnexpectedEOF},
		{name: "body missing", in: hdr(Magic, 2, 2, 22), wantCode: ioErr, wantIs: io.ErrUnexpectedEOF},
		{name: "1025 common caps", in: withHdr(mess(0, 1, 0, 1025, 0, 18)), wantCode: int64(LinkErrInvalidData)},
		{name: "1025 channel caps", in: withHdr(mess(0, 1, 0, 0, 1025, 18)), wantCode: int64(LinkErrInvalidData)},
		{name: "caps counts overflow", in: withHdr(mess(0, 1, 0, 0xffffffff, 0xffffffff, 18)), wantCode: int64(LinkErrInvalidData)},
		{name: "caps past end", in: withHdr(mess(0, 1, 0, 1, 1, 18, 0xb)), wantCode: int64(LinkErrInvalidData)},
		{name: "caps_offset past end", in: withHdr(mess(0, 1, 0, 1, 0, 22, 0xb)), wantCode: int64(LinkErrInvalidData)},
		{name: "caps_offset huge", in: withHdr(mess(0, 1, 0, 1, 0, 0xfffffffc, 0xb)), wantCode: int64(LinkErrInvalidData)},
		{name: "caps_offset inside fixed part", in: withHdr(mess(0, 1, 0, 1, 0, 14, 0xb)), wantCode: int64(LinkErrInvalidData)},
		{name: "caps_offset zero", in: withHdr(mess(0, 1, 0, 1, 0, 0, 0xb)), wantCode: int64(LinkErrInvalidData)},
		{
			name:   "no caps, caps_offset ignored",
			in:     withHdr(mess(7, 2, 1, 0, 0, 0xffffffff)),
			wantOK: &LinkMess{Major: 2, Minor: 2, ConnectionID: 7, ChannelType: ChannelDisplay, ChannelID: 1},
		},
		{
			name:   "trailing bytes and gap before caps",
			in:     withHdr(cat(mess(0, 1, 0, 1, 1, 22), []byte{9, 9, 9, 9}, le.AppendUint32(nil, 0xb), le.AppendUint32(nil, 5), []byte{1, 2})),
			wantOK: &LinkMess{Major: 2, Minor: 2, ChannelType: ChannelMain, CommonCaps: []uint32{0xb}, ChannelCaps: []uint32{5}},
		},
		{
			name:   "any minor",
			in:     cat(hdr(Magic, 2, 0x7fffffff, 22), valid),
			wantOK: &LinkMess{Major: 2, Minor: 0x7fffffff, ChannelType: ChannelMain, CommonCaps: []uint32{0xb}},
		},
	}
	for _, tt := range tests {
		got, err := ReadLinkMess(bytes.NewReader(tt.in))
		if tt.wantOK != nil {
			if err != nil || !reflect.DeepEqual(got, tt.wantOK) {
				t.Errorf("%s: ReadLinkMess(%x) = %+v, %v, want %+v, nil", tt.name, tt.in, got, err, tt.wantOK)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: ReadLinkMess(%x) = %+v, nil, want an error", tt.name, tt.in, got)
			continue
		}
		if got != nil {
			t.Errorf("%s: ReadLinkMess(%x) = %+v, %v, want nil message", tt.name, tt.in, got, err)
		}
		if c := codeOf(err); c != tt.wantCode {
			t.Errorf("%s: ReadLinkMess(%x) error %v has code %d, want %d", tt.name, tt.in, err, c, tt.wantCode)
		}
		if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
			t.Errorf("%s: ReadLinkMess(%x) = %v, want an error matching %v", tt.name, tt.in, err, tt.wantIs)
		}
	}
}

// failingReader fails the test if it is read.
type failingReader struct{ t *testing.T }

func (f failingReader) Read([]byte) (int, error) {
	f.t.Error("read past the magic of a message with a bad magic")
	return 0, io.EOF
}

func TestReadLinkMessBadMagicReadsOnlyMagic(t *testing.T) {
	_, err := ReadLinkMess(io.MultiReader(strings.NewReader("SSH-"), failingReader{t}))
	if !errors.Is(err, LinkErrInvalidMagic) {
		t.Errorf("ReadLinkMess(SSH-...) = %v, want INVALID_MAGIC", err)
	}
}

func TestPubKeySize(t *testing.T) {
	for i := 0; i < 3; i++ {
		k, err := NewKey()
		if err != nil {
			t.Fatalf("NewKey() error = %v", err)
		}
		if k.N.BitLen() != TicketKeyBits {
			t.Errorf("NewKey() modulus has %d bits, want %d", k.N.BitLen(), TicketKeyBits)
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(der) != PubKeySize {
			t.Errorf("len(MarshalPKIXPublicKey(NewKey())) = %d, want %d", len(der), PubKeySize)
		}
	}
}

func TestLinkReplyRoundTrip(t *testing.T) {
	pub := &testKey().PublicKey
	tests := []*LinkReply{
		{Major: 2, Minor: 2, PubKey: pub, CommonCaps: []uint32{0xb}, ChannelCaps: []uint32{0xf}},
		{Major: 2, Minor: 2, PubKey: pub},
		{Major: 2, Minor: 2, CommonCaps: []uint32{0x4}}, // SASL: no key
		{Major: 2, Minor: 2, Error: LinkErrPermissionDenied},
		{Major: 2, Minor: 2, Error: LinkErrNeedSecured},
		{Major: 2, Minor: 2, Error: LinkError(1000)},
		{Major: 2, Minor: 2, PubKey: pub, CommonCaps: make([]uint32, 900), ChannelCaps: []uint32{1, 2, 3}},
	}
	for _, r := range tests {
		var buf bytes.Buffer
		n, err := r.WriteTo(&buf)
		if err != nil {
			t.Fatalf("%+v.WriteTo() error = %v, want nil", r, err)
		}
		if n != int64(buf.Len()) {
			t.Errorf("%+v.WriteTo() = %d, wrote %d", r, n, buf.Len())
		}
		got, err := ReadLinkReply(&buf)
		if err != nil {
			t.Fatalf("ReadLinkReply(WriteTo(%+v)) error = %v, want nil", r, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("ReadLinkReply(WriteTo(%+v)) = %+v, want the same", r, got)
		}
	}
}

func TestLinkReplyErrorWireFormat(t *testing.T) {
	// An error reply carries only the error code; keys and caps given are
	// not sent, as with spice-server's reds_send_link_error.
	var buf bytes.Buffer
	r := &LinkReply{Error: LinkErrInvalidMagic, PubKey: &testKey().PublicKey, CommonCaps: []uint32{1}}
	if _, err := r.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	want := cat(hdr(Magic, 2, 2, 178), le.AppendUint32(nil, 2), make([]byte, 174))
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("WriteTo(%+v) wrote %x, want %x", r, buf.Bytes(), want)
	}
	var buf2 bytes.Buffer
	if err := RefuseLink(&buf2, LinkErrInvalidMagic); err != nil || !bytes.Equal(buf2.Bytes(), want) {
		t.Errorf("RefuseLink(INVALID_MAGIC) = %v, wrote %x, want nil, %x", err, buf2.Bytes(), want)
	}
	if err := RefuseLink(io.Discard, LinkErrOK); err == nil {
		t.Errorf("RefuseLink(OK) = nil, want an error")
	}
}

func TestLinkReplyWireFormat(t *testing.T) {
	pub := &testKey().PublicKey
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	r := &LinkReply{PubKey: pub, CommonCaps: []uint32{0xb}, ChannelCaps: []uint32{0x6}}
	b, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := cat(hdr(Magic, 2, 2, 186), le.AppendUint32(nil, 0), der,
		le.AppendUint32(nil, 1), le.AppendUint32(nil, 1), le.AppendUint32(nil, 178),
		le.AppendUint32(nil, 0xb), le.AppendUint32(nil, 6))
	if !bytes.Equal(b, want) {
		t.Errorf("MarshalBinary(%+v) = %x, want %x", r, b, want)
	}
}

func TestLinkReplyWriteToLimits(t *testing.T) {
	big, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		r    *LinkReply
	}{
		{"2048-bit key", &LinkReply{PubKey: &big.PublicKey}},
		{"too many caps", &LinkReply{CommonCaps: make([]uint32, MaxCaps+1)}},
		{"too big", &LinkReply{CommonCaps: make([]uint32, 1000), ChannelCaps: make([]uint32, 1)}},
	}
	for _, tt := range tests {
		if n, err := tt.r.WriteTo(io.Discard); err == nil {
			t.Errorf("%s: WriteTo() = %d, nil, want an error", tt.name, n)
		}
	}
}

func TestReadLinkReplyMalformed(t *testing.T) {
	der, err := x509.MarshalPKIXPublicKey(&testKey().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	reply := func(errCode uint32, key []byte, nCommon, nChannel, offset uint32, caps ...uint32) []byte {
		b := le.AppendUint32(nil, errCode)
		b = append(b, key...)
		b = append(b, make([]byte, PubKeySize-len(key))...)
		b = le.AppendUint32(b, nCommon)
		b = le.AppendUint32(b, nChannel)
		b = le.AppendUint32(b, offset)
		for _, c := range caps {
			b = le.AppendUint32(b, c)
		}
		return b
	}
	garbage := bytes.Repeat([]byte{0x30}, PubKeySize)
	tests := []struct {
		name     string
		in       []byte
		wantCode int64
		wantIs   error
	}{
		{"empty", nil, ioErr, io.EOF},
		{"wrong magic", cat([]byte("REDX"), hdr(Magic, 2, 2, 178)[4:], reply(0, der, 0, 0, 178)), int64(LinkErrInvalidMagic), nil},
		{"major 1", cat(hdr(Magic, 1, 0, 178), reply(0, der, 0, 0, 178)), int64(LinkErrVersionMismatch), nil},
		{"size 177", cat(hdr(Magic, 2, 2, 177), reply(0, der, 0, 0, 178)[:177]), int64(LinkErrInvalidData), nil},
		{"size 4097", hdr(Magic, 2, 2, 4097), int64(LinkErrInvalidData), nil},
		{"truncated", cat(hdr(Magic, 2, 2, 178), reply(0, der, 0, 0, 178)[:100]), ioErr, io.ErrUnexpectedEOF},
		{"garbage key", withHdr(reply(0, garbage, 0, 0, 178)), int64(LinkErrInvalidData), nil},
		{"key with bad tail", withHdr(reply(0, der[:100], 0, 0, 178)), int64(LinkErrInvalidData), nil},
		{"EC key", withHdr(reply(0, ecDER, 0, 0, 178)), int64(LinkErrInvalidData), nil},
		{"caps past end", withHdr(reply(0, der, 2, 0, 178, 0xb)), int64(LinkErrInvalidData), nil},
		{"caps_offset in fixed part", withHdr(reply(0, der, 1, 0, 174, 0xb)), int64(LinkErrInvalidData), nil},
		{"caps_offset huge", withHdr(reply(0, der, 1, 0, 0xfffffffc, 0xb)), int64(LinkErrInvalidData), nil},
		{"too many caps", withHdr(reply(0, der, 0, 1025, 178)), int64(LinkErrInvalidData), nil},
	}
	for _, tt := range tests {
		got, err := ReadLinkReply(bytes.NewReader(tt.in))
		if err == nil {
			t.Errorf("%s: ReadLinkReply(%x) = %+v, nil, want an error", tt.name, tt.in, got)
			continue
		}
		if c := codeOf(err); c != tt.wantCode {
			t.Errorf("%s: ReadLinkReply() error %v has code %d, want %d", tt.name, err, c, tt.wantCode)
		}
		if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
			t.Errorf("%s: ReadLinkReply() = %v, want an error matching %v", tt.name, err, tt.wantIs)
		}
	}

	// An error reply is returned as such, whatever follows the code.
	got, err := ReadLinkReply(bytes.NewReader(withHdr(reply(7, garbage, 0xffffffff, 0, 3))))
	if err != nil || got.Error != LinkErrPermissionDenied {
		t.Errorf("ReadLinkReply(PERMISSION_DENIED reply with garbage) = %+v, %v, want Error PERMISSION_DENIED, nil", got, err)
	}
}

func TestResult(t *testing.T) {
	for _, code := range []LinkError{LinkErrOK, LinkErrPermissionDenied, LinkError(0xdeadbeef)} {
		var buf bytes.Buffer
		if err := WriteResult(&buf, code); err != nil {
			t.Fatal(err)
		}
		if buf.Len() != 4 {
			t.Errorf("WriteResult(%v) wrote %d bytes, want 4", code, buf.Len())
		}
		got, err := ReadResult(&buf)
		if err != nil || got != code {
			t.Errorf("ReadResult(WriteResult(%v)) = %v, %v, want %v, nil", code, got, err, code)
		}
	}
	if got, err := ReadResult(bytes.NewReader([]byte{0, 0})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadResult(2 bytes) = %v, %v, want io.ErrUnexpectedEOF", got, err)
	}
}

func TestCaps(t *testing.T) {
	tests := []struct {
		caps []uint32
		bit  uint
		want bool
	}{
		{nil, 0, false},
		{[]uint32{1}, 0, true},
		{[]uint32{0xb}, CapProtocolAuthSelection, true},
		{[]uint32{0xb}, CapAuthSpice, true},
		{[]uint32{0xb}, CapAuthSASL, false},
		{[]uint32{0xb}, CapMiniHeader, true},
		{[]uint32{0x80000000}, 31, true},
		{[]uint32{0, 1}, 32, true},
		{[]uint32{0, 1}, 33, false},
		{[]uint32{0xffffffff}, 32, false},
		{[]uint32{0xffffffff}, 1 << 40, false},
	}
	for _, tt := range tests {
		if got := HasCap(tt.caps, tt.bit); got != tt.want {
			t.Errorf("HasCap(%#x, %d) = %v, want %v", tt.caps, tt.bit, got, tt.want)
		}
	}
	if got, want := Caps(CapProtocolAuthSelection, CapAuthSpice, CapMiniHeader), []uint32{0xb}; !reflect.DeepEqual(got, want) {
		t.Errorf("Caps(0, 1, 3) = %#x, want %#x", got, want)
	}
	if got, want := Caps(33, 0), []uint32{1, 2}; !reflect.DeepEqual(got, want) {
		t.Errorf("Caps(33, 0) = %#x, want %#x", got, want)
	}
	if got := Caps(); got != nil {
		t.Errorf("Caps() = %#x, want nil", got)
	}
	sel := Caps(CapProtocolAuthSelection)
	for _, tt := range []struct {
		client, server []uint32
		want           bool
	}{
		{sel, sel, true},
		{sel, nil, false},
		{nil, sel, false},
		{nil, nil, false},
	} {
		if got := AuthSelection(tt.client, tt.server); got != tt.want {
			t.Errorf("AuthSelection(%#x, %#x) = %v, want %v", tt.client, tt.server, got, tt.want)
		}
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{LinkErrOK.String(), "OK"},
		{LinkErrPermissionDenied.String(), "PERMISSION_DENIED"},
		{LinkErrChannelNotAvailable.String(), "CHANNEL_NOT_AVAILABLE"},
		{LinkError(10).String(), "LINK_ERR(10)"},
		{LinkError(0xffffffff).String(), "LINK_ERR(4294967295)"},
		{LinkErrInvalidMagic.Error(), "INVALID_MAGIC"},
		{ChannelMain.String(), "main"},
		{ChannelUSBRedir.String(), "usbredir"},
		{ChannelWebDAV.String(), "webdav"},
		{ChannelType(0).String(), "channel(0)"},
		{ChannelType(12).String(), "channel(12)"},
		{(&ProtocolError{Code: LinkErrInvalidData, Err: errors.New("x")}).Error(), "spice: x (INVALID_DATA)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("String() = %q, want %q", tt.got, tt.want)
		}
	}
}

func TestTicketRoundTrip(t *testing.T) {
	key := testKey()
	for _, pw := range []string{"", "a", "hunter2", "päßwörd", strings.Repeat("x", MaxPasswordLength)} {
		for _, sel := range []bool{false, true} {
			ct, err := EncryptTicket(&key.PublicKey, pw)
			if err != nil {
				t.Fatalf("EncryptTicket(%q) error = %v", pw, err)
			}
			if len(ct) != TicketSize {
				t.Errorf("len(EncryptTicket(%q)) = %d, want %d", pw, len(ct), TicketSize)
			}
			var in []byte
			if sel {
				in = le.AppendUint32(in, AuthSpice)
			}
			in = append(in, ct...)
			r := bytes.NewReader(in)
			got, err := ReadTicket(r, sel, key)
			if err != nil || got != pw {
				t.Errorf("ReadTicket(EncryptTicket(%q), %v) = %q, %v, want %q, nil", pw, sel, got, err, pw)
			}
			if r.Len() != 0 {
				t.Errorf("ReadTicket(EncryptTicket(%q), %v) left %d bytes, want 0", pw, sel, r.Len())
			}
		}
	}
}

// rawTicket encrypts msg as it is, without the checks EncryptTicket makes.
func rawTicket(t *testing.T, pub *rsa.PublicKey, msg string) []byte {
	t.Helper()
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, []byte(msg), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func TestReadTicketBad(t *testing.T) {
	key := testKey()
	good := rawTicket(t, &key.PublicKey, "pw\x00")
	tests := []struct {
		name     string
		in       []byte
		sel      bool
		wantCode int64
		wantIs   error
	}{
		{"empty", nil, false, ioErr, io.EOF},
		{"empty with selection", nil, true, ioErr, io.EOF},
		{"mechanism only", le.AppendUint32(nil, AuthSpice), true, ioErr, io.ErrUnexpectedEOF},
		{"SASL mechanism", cat(le.AppendUint32(nil, AuthSASL), good), true, int64(LinkErrInvalidData), ErrAuthMechanism},
		{"mechanism 0", cat(le.AppendUint32(nil, 0), good), true, int64(LinkErrInvalidData), ErrAuthMechanism},
		{"mechanism missing", good, true, int64(LinkErrInvalidData), ErrAuthMechanism},
		{"truncated ticket", good[:127], false, ioErr, io.ErrUnexpectedEOF},
		{"truncated mechanism", []byte{1, 0}, true, ioErr, io.ErrUnexpectedEOF},
		{"zero ticket", make([]byte, 128), false, int64(LinkErrPermissionDenied), ErrBadTicket},
		{"other key", rawTicket(t, &otherKey().PublicKey, "pw\x00"), false, int64(LinkErrPermissionDenied), ErrBadTicket},
		{"flipped bit", cat(good[:50], []byte{good[50] ^ 1}, good[51:]), false, int64(LinkErrPermissionDenied), ErrBadTicket},
		{"too long", rawTicket(t, &key.PublicKey, strings.Repeat("y", 61)+"\x00"), false, int64(LinkErrPermissionDenied), ErrBadTicket},
	}
	for _, tt := range tests {
		got, err := ReadTicket(bytes.NewReader(tt.in), tt.sel, key)
		if err == nil {
			t.Errorf("%s: ReadTicket() = %q, nil, want an error", tt.name, got)
			continue
		}
		if c := codeOf(err); c != tt.wantCode {
			t.Errorf("%s: ReadTicket() error %v has code %d, want %d", tt.name, err, c, tt.wantCode)
		}
		if !errors.Is(err, tt.wantIs) {
			t.Errorf("%s: ReadTicket() = %v, want an error matching %v", tt.name, err, tt.wantIs)
		}
	}

	// Like spice-server, the password ends at the first NUL, and a missing
	// NUL is tolerated.
	for _, tt := range []struct{ msg, want string }{
		{"abc", "abc"},
		{"abc\x00def", "abc"},
		{strings.Repeat("z", 60) + "\x00" + strings.Repeat("z", 20), strings.Repeat("z", 60)},
	} {
		got, err := ReadTicket(bytes.NewReader(rawTicket(t, &key.PublicKey, tt.msg)), false, key)
		if err != nil || got != tt.want {
			t.Errorf("ReadTicket(%q) = %q, %v, want %q, nil", tt.msg, got, err, tt.want)
		}
	}
	if _, err := ReadTicket(bytes.NewReader(good), false, nil); err == nil {
		t.Errorf("ReadTicket(key nil) = nil error, want an error")
	}
}

func TestEncryptTicketBad(t *testing.T) {
	pub := &testKey().PublicKey
	tests := []struct {
		name string
		pub  *rsa.PublicKey
		pw   string
		is   error
	}{
		{"too long", pub, strings.Repeat("x", MaxPasswordLength+1), ErrPasswordTooLong},
		{"NUL", pub, "a\x00b", nil},
		{"no key", nil, "pw", nil},
	}
	for _, tt := range tests {
		ct, err := EncryptTicket(tt.pub, tt.pw)
		if err == nil {
			t.Errorf("%s: EncryptTicket(%q) = %x, nil, want an error", tt.name, tt.pw, ct)
			continue
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%s: EncryptTicket(%q) = %v, want an error matching %v", tt.name, tt.pw, err, tt.is)
		}
	}
}

// connPair returns the two ends of a loopback TCP connection (buffered
// like the real thing, unlike net.Pipe).
func connPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	deadline := time.Now().Add(30 * time.Second)
	client.SetDeadline(deadline)
	r.c.SetDeadline(deadline)
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// serverResult is what a test server goroutine saw.
type serverResult struct {
	mess     *LinkMess
	password string
	err      error
	mini     bool
}

// runServer runs the server side of a handshake, accepting password want
// and replying common caps.
func runServer(conn net.Conn, common []uint32, want string) <-chan serverResult {
	ch := make(chan serverResult, 1)
	go func() {
		var r serverResult
		defer func() { ch <- r }()
		s := NewServerLink(conn, testKey())
		if r.mess, r.err = s.ReadLinkMess(); r.err != nil {
			return
		}
		if r.err = s.Reply(common, []uint32{0x5}); r.err != nil {
			return
		}
		r.mini = s.MiniHeader()
		if r.password, r.err = s.ReadTicket(); r.err != nil {
			return
		}
		code := LinkErrOK
		if r.password != want {
			code = LinkErrPermissionDenied
		}
		r.err = s.Finish(code)
	}()
	return ch
}

func TestLinkAgainstServerLink(t *testing.T) {
	full := Caps(CapProtocolAuthSelection, CapAuthSpice, CapMiniHeader)
	old := Caps(CapAuthSpice)
	tests := []struct {
		name           string
		client, server []uint32
		password       string
		wantErr        error
		wantMini       bool
	}{
		{"both select", full, full, "s3cret", nil, true},
		{"old client", old, full, "s3cret", nil, false},
		{"old server", full, old, "s3cret", nil, false},
		{"both old", old, old, "s3cret", nil, false},
		{"wrong password", full, full, "wrong", LinkErrPermissionDenied, true},
		{"empty password", full, full, "", LinkErrPermissionDenied, true},
	}
	for _, tt := range tests {
		c, s := connPair(t)
		done := runServer(s, tt.server, "s3cret")
		m := &LinkMess{ChannelType: ChannelMain, CommonCaps: tt.client, ChannelCaps: []uint32{0x3}}
		reply, err := Link(c, m, tt.password)
		sr := <-done
		if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
			t.Errorf("%s: Link(%q) = %v, want %v", tt.name, tt.password, err, tt.wantErr)
		}
		if sr.err != nil {
			t.Errorf("%s: server error = %v, want nil", tt.name, sr.err)
		}
		if sr.password != tt.password {
			t.Errorf("%s: server read password %q, want %q", tt.name, sr.password, tt.password)
		}
		if sr.mini != tt.wantMini {
			t.Errorf("%s: server MiniHeader() = %v, want %v", tt.name, sr.mini, tt.wantMini)
		}
		if sr.mess == nil || !reflect.DeepEqual(sr.mess.ChannelCaps, []uint32{0x3}) || !reflect.DeepEqual(sr.mess.CommonCaps, tt.client) {
			t.Errorf("%s: server read %+v, want the client's message", tt.name, sr.mess)
		}
		if reply == nil || !reflect.DeepEqual(reply.CommonCaps, tt.server) || !reflect.DeepEqual(reply.ChannelCaps, []uint32{0x5}) {
			t.Errorf("%s: Link() reply = %+v, want the server's caps", tt.name, reply)
		}
		if reply != nil && !reply.PubKey.Equal(&testKey().PublicKey) {
			t.Errorf("%s: Link() reply key differs from the server's", tt.name)
		}
	}
}

func TestLinkRefused(t *testing.T) {
	c, s := connPair(t)
	done := make(chan error, 1)
	go func() {
		sl := NewServerLink(s, testKey())
		if _, err := sl.ReadLinkMess(); err != nil {
			done <- err
			return
		}
		done <- sl.Refuse(LinkErrChannelNotAvailable)
	}()
	reply, err := Link(c, &LinkMess{ChannelType: ChannelDisplay}, "pw")
	if !errors.Is(err, LinkErrChannelNotAvailable) {
		t.Errorf("Link() against Refuse(CHANNEL_NOT_AVAILABLE) = %v, want CHANNEL_NOT_AVAILABLE", err)
	}
	if reply == nil || reply.Error != LinkErrChannelNotAvailable {
		t.Errorf("Link() reply = %+v, want Error CHANNEL_NOT_AVAILABLE", reply)
	}
	if err := <-done; err != nil {
		t.Errorf("server error = %v", err)
	}
}

func TestLinkTooLongPassword(t *testing.T) {
	c, s := connPair(t)
	done := runServer(s, Caps(CapProtocolAuthSelection, CapAuthSpice), "x")
	_, err := Link(c, &LinkMess{ChannelType: ChannelMain, CommonCaps: Caps(CapProtocolAuthSelection)}, strings.Repeat("x", 61))
	if !errors.Is(err, ErrPasswordTooLong) {
		t.Errorf("Link(61-byte password) = %v, want ErrPasswordTooLong", err)
	}
	c.Close()
	<-done
}

func TestLinkSASLOnlyServer(t *testing.T) {
	c, s := connPair(t)
	go func() {
		ReadLinkMess(s)
		(&LinkReply{PubKey: &testKey().PublicKey, CommonCaps: Caps(CapProtocolAuthSelection, CapAuthSASL)}).WriteTo(s)
	}()
	_, err := Link(c, &LinkMess{ChannelType: ChannelMain, CommonCaps: Caps(CapProtocolAuthSelection, CapAuthSpice)}, "pw")
	if !errors.Is(err, ErrAuthMechanism) {
		t.Errorf("Link() against a SASL-only server = %v, want ErrAuthMechanism", err)
	}
}

func TestServerLinkAnswersBadMessages(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want LinkError
	}{
		{"bad magic", []byte("GET / HTTP/1.0\r\n\r\n"), LinkErrInvalidMagic},
		{"bad version", cat(hdr(Magic, 1, 0, 18), mess(0, 1, 0, 0, 0, 18)), LinkErrVersionMismatch},
		{"bad caps", withHdr(mess(0, 1, 0, 5, 0, 18)), LinkErrInvalidData},
	}
	for _, tt := range tests {
		c, s := connPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := NewServerLink(s, testKey()).ReadLinkMess()
			done <- err
		}()
		if _, err := c.Write(tt.in); err != nil {
			t.Fatal(err)
		}
		reply, err := ReadLinkReply(c)
		if err != nil || reply.Error != tt.want {
			t.Errorf("%s: ReadLinkReply() after ServerLink.ReadLinkMess = %+v, %v, want Error %v", tt.name, reply, err, tt.want)
		}
		if err := <-done; !errors.Is(err, tt.want) {
			t.Errorf("%s: ServerLink.ReadLinkMess() = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestServerLinkAnswersBadTickets(t *testing.T) {
	tests := []struct {
		name      string
		after     []byte // what the client sends after the reply
		wantReply bool   // an error reply (else a link result)
		want      LinkError
	}{
		{"SASL", le.AppendUint32(nil, AuthSASL), true, LinkErrInvalidData},
		{"garbage ticket", cat(le.AppendUint32(nil, AuthSpice), make([]byte, 128)), false, LinkErrPermissionDenied},
	}
	for _, tt := range tests {
		c, s := connPair(t)
		done := make(chan error, 1)
		go func() {
			sl := NewServerLink(s, testKey())
			if _, err := sl.ReadLinkMess(); err != nil {
				done <- err
				return
			}
			if err := sl.Reply(Caps(CapProtocolAuthSelection, CapAuthSpice), nil); err != nil {
				done <- err
				return
			}
			_, err := sl.ReadTicket()
			done <- err
		}()
		if _, err := (&LinkMess{ChannelType: ChannelMain, CommonCaps: Caps(CapProtocolAuthSelection, CapAuthSASL)}).WriteTo(c); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadLinkReply(c); err != nil {
			t.Fatal(err)
		}
		c.Write(tt.after)
		var got LinkError
		var err error
		if tt.wantReply {
			var r *LinkReply
			if r, err = ReadLinkReply(c); err == nil {
				got = r.Error
			}
		} else {
			got, err = ReadResult(c)
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: client read %v, %v, want %v", tt.name, got, err, tt.want)
		}
		if err := <-done; !errors.Is(err, tt.want) {
			t.Errorf("%s: ServerLink.ReadTicket() = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestServerLinkOrder(t *testing.T) {
	var buf bytes.Buffer
	s := NewServerLink(&buf, testKey())
	if err := s.Reply(nil, nil); err == nil {
		t.Errorf("Reply() before ReadLinkMess() = nil, want an error")
	}
	s = NewServerLink(&buf, testKey())
	if _, err := s.ReadTicket(); err == nil {
		t.Errorf("ReadTicket() before Reply() = nil, want an error")
	}
	s = NewServerLink(&buf, testKey())
	if err := s.Finish(LinkErrOK); err == nil {
		t.Errorf("Finish() before ReadTicket() = nil, want an error")
	}
	if buf.Len() != 0 {
		t.Errorf("out-of-order calls wrote %d bytes, want 0", buf.Len())
	}
	(&LinkMess{ChannelType: ChannelMain}).WriteTo(&buf)
	s = NewServerLink(&buf, nil)
	if _, err := s.ReadLinkMess(); err != nil {
		t.Fatal(err)
	}
	if err := s.Reply(nil, nil); err == nil {
		t.Errorf("Reply() without a key = nil, want an error")
	}
}
