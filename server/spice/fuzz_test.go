package spice

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// checkReadErr fails the test unless err is a *ProtocolError or an I/O
// error from running out of input.
func checkReadErr(t *testing.T, what string, err error) {
	t.Helper()
	var pe *ProtocolError
	if errors.As(err, &pe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return
	}
	t.Errorf("%s error = %v (%T), want a *ProtocolError or an EOF", what, err, err)
}

func FuzzReadLinkMess(f *testing.F) {
	for _, m := range []*LinkMess{
		{ChannelType: ChannelMain, CommonCaps: Caps(CapProtocolAuthSelection, CapAuthSpice, CapMiniHeader), ChannelCaps: []uint32{0xf}},
		{ConnectionID: 1234, ChannelType: ChannelDisplay, ChannelID: 1, CommonCaps: []uint32{0xb}, ChannelCaps: []uint32{0x7fffff}},
		{ChannelType: ChannelInputs},
	} {
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(withHdr(mess(0, 1, 0, 1, 1, 22, 0, 0xb, 1)))
	f.Add(hdr(Magic, 2, 2, 4096))
	f.Add([]byte("REDQ"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadLinkMess(bytes.NewReader(data))
		if err != nil {
			checkReadErr(t, "ReadLinkMess()", err)
			return
		}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary(ReadLinkMess(%x)) error = %v, want nil", data, err)
		}
		m2, err := ReadLinkMess(bytes.NewReader(b))
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("ReadLinkMess(MarshalBinary(%+v)) = %+v, %v, want the same, nil", m, m2, err)
		}
	})
}

func FuzzReadLinkReply(f *testing.F) {
	for _, r := range []*LinkReply{
		{PubKey: &testKey().PublicKey, CommonCaps: Caps(CapProtocolAuthSelection, CapAuthSpice, CapMiniHeader), ChannelCaps: []uint32{0xf}},
		{PubKey: &testKey().PublicKey},
		{CommonCaps: []uint32{5}},
		{Error: LinkErrPermissionDenied},
	} {
		b, err := r.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ReadLinkReply(bytes.NewReader(data))
		if err != nil {
			checkReadErr(t, "ReadLinkReply()", err)
			return
		}
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary(ReadLinkReply(%x)) error = %v, want nil", data, err)
		}
		r2, err := ReadLinkReply(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("ReadLinkReply(MarshalBinary(%+v)) error = %v, want nil", r, err)
		}
		if (r.PubKey == nil) != (r2.PubKey == nil) || (r.PubKey != nil && !r.PubKey.Equal(r2.PubKey)) {
			t.Fatalf("ReadLinkReply(MarshalBinary(%+v)) key = %v, want %v", r, r2.PubKey, r.PubKey)
		}
		r.PubKey, r2.PubKey = nil, nil
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("ReadLinkReply(MarshalBinary(%+v)) = %+v, want the same", r, r2)
		}
	})
}

func FuzzReadTicket(f *testing.F) {
	key := testKey()
	for _, pw := range []string{"", "hunter2", "0123456789012345678901234567890123456789012345678901234567890"[:60]} {
		ct, err := EncryptTicket(&key.PublicKey, pw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ct, false)
		f.Add(append(le.AppendUint32(nil, AuthSpice), ct...), true)
		f.Add(append(le.AppendUint32(nil, AuthSASL), ct...), true)
	}
	f.Add(make([]byte, 128), false)
	f.Fuzz(func(t *testing.T, data []byte, sel bool) {
		pw, err := ReadTicket(bytes.NewReader(data), sel, key)
		if err != nil {
			checkReadErr(t, "ReadTicket()", err)
			return
		}
		if len(pw) > MaxPasswordLength || bytes.IndexByte([]byte(pw), 0) >= 0 {
			t.Fatalf("ReadTicket(%x, %v) = %q, want at most %d bytes and no NUL", data, sel, pw, MaxPasswordLength)
		}
	})
}
