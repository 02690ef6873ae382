package spice

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

var le = binary.LittleEndian

// LinkMess is a client's SpiceLinkMess together with the version fields of
// the SpiceLinkHeader in front of it.
type LinkMess struct {
	// Major and Minor are the header's protocol version. WriteTo sends
	// VersionMajor/VersionMinor when they are zero.
	Major, Minor uint32
	// ConnectionID is 0 on a main channel (the server then picks one and
	// announces it in SPICE_MSG_MAIN_INIT) and that id on every other
	// channel of the session.
	ConnectionID uint32
	ChannelType  ChannelType
	ChannelID    uint8
	CommonCaps   []uint32
	ChannelCaps  []uint32
}

// LinkReply is a server's SpiceLinkReply together with the version fields
// of its SpiceLinkHeader.
type LinkReply struct {
	// Major and Minor are the header's protocol version. WriteTo sends
	// VersionMajor/VersionMinor when they are zero.
	Major, Minor uint32
	// Error is LinkErrOK when the server accepts the link message; any
	// other value refuses it, and then the rest of the reply is empty.
	Error LinkError
	// PubKey is the RSA key the client encrypts its ticket with. It is nil
	// in error replies, and when the server left the field zeroed (which
	// spice-server does when it will use SASL).
	PubKey      *rsa.PublicKey
	CommonCaps  []uint32
	ChannelCaps []uint32
}

// readHeader reads a SpiceLinkHeader. It reads the magic alone first, so a
// peer speaking another protocol is refused without waiting for 12 more
// bytes (as spice-server does).
func readHeader(r io.Reader, minSize uint32) (major, minor, size uint32, err error) {
	var b [headerSize]byte
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return 0, 0, 0, fmt.Errorf("spice: reading link header: %w", err)
	}
	if m := le.Uint32(b[:4]); m != Magic {
		return 0, 0, 0, protoErr(LinkErrInvalidMagic, "bad magic %#08x", m)
	}
	if _, err := io.ReadFull(r, b[4:]); err != nil {
		return 0, 0, 0, fmt.Errorf("spice: reading link header: %w", noEOF(err))
	}
	major, minor, size = le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint32(b[12:])
	if major != VersionMajor {
		return 0, 0, 0, protoErr(LinkErrVersionMismatch, "protocol version %d.%d, want major %d", major, minor, VersionMajor)
	}
	if size < minSize || size > MaxMessageSize {
		return 0, 0, 0, protoErr(LinkErrInvalidData, "link message size %d outside [%d, %d]", size, minSize, MaxMessageSize)
	}
	return major, minor, size, nil
}

// noEOF turns io.EOF into io.ErrUnexpectedEOF: once a message has begun,
// its end is never a clean end of stream.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseCaps extracts the two capability lists from msg, a whole link
// message or reply, whose fixed part is fixed bytes long.
func parseCaps(msg []byte, fixed int, nCommon, nChannel, offset uint32) (common, channel []uint32, err error) {
	if nCommon > MaxCaps || nChannel > MaxCaps {
		return nil, nil, protoErr(LinkErrInvalidData, "too many caps (%d common, %d channel; max %d each)", nCommon, nChannel, MaxCaps)
	}
	n := uint64(nCommon) + uint64(nChannel)
	if n == 0 {
		// spice-server ignores caps_offset when there are no caps.
		return nil, nil, nil
	}
	if uint64(offset) < uint64(fixed) || uint64(offset)+4*n > uint64(len(msg)) {
		return nil, nil, protoErr(LinkErrInvalidData, "caps (offset %d, %d words) outside message of %d bytes", offset, n, len(msg))
	}
	words := make([]uint32, n)
	for i := range words {
		words[i] = le.Uint32(msg[offset+4*uint32(i):])
	}
	if nCommon > 0 {
		common = words[:nCommon:nCommon]
	}
	if nChannel > 0 {
		channel = words[nCommon:]
	}
	return common, channel, nil
}

func checkCapsOut(common, channel []uint32) error {
	if len(common) > MaxCaps || len(channel) > MaxCaps {
		return fmt.Errorf("spice: too many caps (%d common, %d channel; max %d each)", len(common), len(channel), MaxCaps)
	}
	return nil
}

func version(major, minor uint32) (uint32, uint32) {
	if major == 0 && minor == 0 {
		return VersionMajor, VersionMinor
	}
	return major, minor
}

// ReadLinkMess reads a SpiceLinkHeader and the SpiceLinkMess following it.
//
// Problems with the message itself are returned as *ProtocolError carrying
// the code a server answers with (see RefuseLink): a wrong magic gives
// LinkErrInvalidMagic, a major version other than 2 LinkErrVersionMismatch,
// and a bad size or bad caps LinkErrInvalidData. I/O errors (including a
// truncated message, io.ErrUnexpectedEOF) are returned wrapped as they
// are. The message size is bounded by MaxMessageSize, so a hostile peer
// cannot make it allocate more than that.
func ReadLinkMess(r io.Reader) (*LinkMess, error) {
	major, minor, size, err := readHeader(r, linkMessSize)
	if err != nil {
		return nil, err
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, fmt.Errorf("spice: reading link message: %w", noEOF(err))
	}
	m := &LinkMess{
		Major:        major,
		Minor:        minor,
		ConnectionID: le.Uint32(msg[0:]),
		ChannelType:  ChannelType(msg[4]),
		ChannelID:    msg[5],
	}
	m.CommonCaps, m.ChannelCaps, err = parseCaps(msg, linkMessSize, le.Uint32(msg[6:]), le.Uint32(msg[10:]), le.Uint32(msg[14:]))
	if err != nil {
		return nil, err
	}
	return m, nil
}

// MarshalBinary returns the header and message as sent on the wire, with
// the caps right after the fixed part.
func (m *LinkMess) MarshalBinary() ([]byte, error) {
	if err := checkCapsOut(m.CommonCaps, m.ChannelCaps); err != nil {
		return nil, err
	}
	n := len(m.CommonCaps) + len(m.ChannelCaps)
	size := linkMessSize + 4*n
	if size > MaxMessageSize {
		return nil, fmt.Errorf("spice: link message of %d bytes exceeds %d", size, MaxMessageSize)
	}
	major, minor := version(m.Major, m.Minor)
	b := make([]byte, 0, headerSize+size)
	b = le.AppendUint32(b, Magic)
	b = le.AppendUint32(b, major)
	b = le.AppendUint32(b, minor)
	b = le.AppendUint32(b, uint32(size))
	b = le.AppendUint32(b, m.ConnectionID)
	b = append(b, byte(m.ChannelType), m.ChannelID)
	b = le.AppendUint32(b, uint32(len(m.CommonCaps)))
	b = le.AppendUint32(b, uint32(len(m.ChannelCaps)))
	b = le.AppendUint32(b, linkMessSize)
	for _, c := range m.CommonCaps {
		b = le.AppendUint32(b, c)
	}
	for _, c := range m.ChannelCaps {
		b = le.AppendUint32(b, c)
	}
	return b, nil
}

// WriteTo writes the header and message in a single Write.
func (m *LinkMess) WriteTo(w io.Writer) (int64, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ReadLinkReply reads a SpiceLinkHeader and the SpiceLinkReply following
// it. An error reply (Error != LinkErrOK) is returned with a nil error:
// deciding what a refusal means is up to the caller (Link turns it into an
// error). Malformed replies give a *ProtocolError, I/O errors are wrapped.
func ReadLinkReply(r io.Reader) (*LinkReply, error) {
	major, minor, size, err := readHeader(r, linkReplySize)
	if err != nil {
		return nil, err
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, fmt.Errorf("spice: reading link reply: %w", noEOF(err))
	}
	rep := &LinkReply{Major: major, Minor: minor, Error: LinkError(le.Uint32(msg))}
	if rep.Error != LinkErrOK {
		// spice-server zeroes the rest of an error reply; ignore it.
		return rep, nil
	}
	f := msg[4+PubKeySize:]
	rep.CommonCaps, rep.ChannelCaps, err = parseCaps(msg, linkReplySize, le.Uint32(f), le.Uint32(f[4:]), le.Uint32(f[8:]))
	if err != nil {
		return nil, err
	}
	rep.PubKey, err = parsePubKey(msg[4 : 4+PubKeySize])
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// parsePubKey parses the pub_key field: DER, zero-padded to PubKeySize
// (spice-server copies exactly PubKeySize bytes of its DER). All zeroes
// means no key.
func parsePubKey(field []byte) (*rsa.PublicKey, error) {
	if bytes.Count(field, []byte{0}) == len(field) {
		return nil, nil
	}
	var raw asn1.RawValue
	if _, err := asn1.Unmarshal(field, &raw); err != nil {
		return nil, protoErr(LinkErrInvalidData, "bad public key: %v", err)
	}
	pk, err := x509.ParsePKIXPublicKey(raw.FullBytes)
	if err != nil {
		return nil, protoErr(LinkErrInvalidData, "bad public key: %v", err)
	}
	rpk, ok := pk.(*rsa.PublicKey)
	if !ok {
		return nil, protoErr(LinkErrInvalidData, "public key is %T, want RSA", pk)
	}
	return rpk, nil
}

// MarshalBinary returns the header and reply as sent on the wire. PubKey
// must marshal to at most PubKeySize bytes of DER (a 1024-bit key is
// exactly that); a nil PubKey is sent as zeroes. An error reply (Error !=
// LinkErrOK) is sent the way spice-server sends one: everything but the
// error field zeroed, whatever the other fields hold.
func (r *LinkReply) MarshalBinary() ([]byte, error) {
	major, minor := version(r.Major, r.Minor)
	common, channel := r.CommonCaps, r.ChannelCaps
	var der []byte
	if r.Error != LinkErrOK {
		common, channel = nil, nil
	} else {
		if err := checkCapsOut(common, channel); err != nil {
			return nil, err
		}
		if r.PubKey != nil {
			var err error
			der, err = x509.MarshalPKIXPublicKey(r.PubKey)
			if err != nil {
				return nil, fmt.Errorf("spice: marshalling public key: %w", err)
			}
			if len(der) > PubKeySize {
				return nil, fmt.Errorf("spice: public key DER is %d bytes, max %d (want a %d-bit key)", len(der), PubKeySize, TicketKeyBits)
			}
		}
	}
	n := len(common) + len(channel)
	size := linkReplySize + 4*n
	if size > MaxMessageSize {
		return nil, fmt.Errorf("spice: link reply of %d bytes exceeds %d", size, MaxMessageSize)
	}
	b := make([]byte, 0, headerSize+size)
	b = le.AppendUint32(b, Magic)
	b = le.AppendUint32(b, major)
	b = le.AppendUint32(b, minor)
	b = le.AppendUint32(b, uint32(size))
	b = le.AppendUint32(b, uint32(r.Error))
	b = append(b, der...)
	b = append(b, make([]byte, PubKeySize-len(der))...)
	b = le.AppendUint32(b, uint32(len(common)))
	b = le.AppendUint32(b, uint32(len(channel)))
	if r.Error != LinkErrOK {
		b = le.AppendUint32(b, 0) // caps_offset, zeroed like the rest
	} else {
		b = le.AppendUint32(b, linkReplySize)
	}
	for _, c := range common {
		b = le.AppendUint32(b, c)
	}
	for _, c := range channel {
		b = le.AppendUint32(b, c)
	}
	return b, nil
}

// WriteTo writes the header and reply in a single Write.
func (r *LinkReply) WriteTo(w io.Writer) (int64, error) {
	b, err := r.MarshalBinary()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// RefuseLink sends an error reply with code, the way a server refuses a
// link message before the ticket (spice-server's reds_send_link_error).
func RefuseLink(w io.Writer, code LinkError) error {
	if code == LinkErrOK {
		return errors.New("spice: RefuseLink with LinkErrOK")
	}
	_, err := (&LinkReply{Error: code}).WriteTo(w)
	return err
}

// WriteResult sends the link result, the uint32 a server sends after the
// ticket: LinkErrOK to accept the client, usually
// LinkErrPermissionDenied to refuse it.
func WriteResult(w io.Writer, code LinkError) error {
	_, err := w.Write(le.AppendUint32(nil, uint32(code)))
	return err
}

// ReadResult reads the link result a server sends after the ticket.
func ReadResult(r io.Reader) (LinkError, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("spice: reading link result: %w", err)
	}
	return LinkError(le.Uint32(b[:])), nil
}
