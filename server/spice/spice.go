// Package spice implements the SPICE link handshake, the exchange that opens
// every SPICE channel connection. It covers both the server side, facing a
// client such as remote-viewer, and the client side, facing a VM's SPICE
// server.
package spice

import (
	"errors"
	"fmt"
	"strconv"
)

// Wire constants of the SPICE link protocol (spice-protocol's protocol.h).
const (
	// Magic is "REDQ" read as a little-endian uint32.
	Magic uint32 = 0x51444552
	// VersionMajor and VersionMinor are the protocol version spoken here.
	VersionMajor uint32 = 2
	VersionMinor uint32 = 2

	// MaxPasswordLength is the longest password a ticket may carry
	// (SPICE_MAX_PASSWORD_LENGTH); spice-gtk refuses to send longer ones.
	MaxPasswordLength = 60
	// TicketKeyBits is the RSA key size SPICE uses for tickets.
	TicketKeyBits = 1024
	// TicketSize is the size of an encrypted ticket for a TicketKeyBits key.
	TicketSize = TicketKeyBits / 8
	// PubKeySize is the size of the pub_key field of SpiceLinkReply: a
	// 1024-bit RSA key as X.509 SubjectPublicKeyInfo DER.
	PubKeySize = TicketKeyBits/8 + 34

	// MaxMessageSize bounds the size field of a link header, as
	// spice-server does (4096) to avoid arbitrary allocations.
	MaxMessageSize = 4096
	// MaxCaps bounds each of the two capability counts, as spice-server
	// does.
	MaxCaps = 1024

	headerSize    = 16
	linkMessSize  = 18                   // fixed part of SpiceLinkMess
	linkReplySize = 4 + PubKeySize + 3*4 // fixed part of SpiceLinkReply
)

// Common capability bits (SPICE_COMMON_CAP_*), valid on every channel.
const (
	CapProtocolAuthSelection uint = 0
	CapAuthSpice             uint = 1
	CapAuthSASL              uint = 2
	CapMiniHeader            uint = 3
)

// Authentication mechanisms a client may choose when both sides have
// CapProtocolAuthSelection. Their values equal the corresponding cap bits.
const (
	AuthSpice uint32 = 1
	AuthSASL  uint32 = 2
)

// ChannelType is a SPICE channel type (SPICE_CHANNEL_*).
type ChannelType uint8

// Channel types.
const (
	ChannelMain      ChannelType = 1
	ChannelDisplay   ChannelType = 2
	ChannelInputs    ChannelType = 3
	ChannelCursor    ChannelType = 4
	ChannelPlayback  ChannelType = 5
	ChannelRecord    ChannelType = 6
	ChannelTunnel    ChannelType = 7
	ChannelSmartcard ChannelType = 8
	ChannelUSBRedir  ChannelType = 9
	ChannelPort      ChannelType = 10
	ChannelWebDAV    ChannelType = 11
)

var channelNames = [...]string{
	ChannelMain:      "main",
	ChannelDisplay:   "display",
	ChannelInputs:    "inputs",
	ChannelCursor:    "cursor",
	ChannelPlayback:  "playback",
	ChannelRecord:    "record",
	ChannelTunnel:    "tunnel",
	ChannelSmartcard: "smartcard",
	ChannelUSBRedir:  "usbredir",
	ChannelPort:      "port",
	ChannelWebDAV:    "webdav",
}

// String returns the name spice-gtk uses for the channel type.
func (t ChannelType) String() string {
	if int(t) < len(channelNames) && channelNames[t] != "" {
		return channelNames[t]
	}
	return "channel(" + strconv.Itoa(int(t)) + ")"
}

// LinkError is a SPICE link error code (SPICE_LINK_ERR_*). It is sent in
// the error field of a SpiceLinkReply and as the link result after the
// ticket. It implements error so that errors can wrap it; LinkErrOK is not
// meant to be returned as an error.
type LinkError uint32

// Link error codes.
const (
	LinkErrOK                  LinkError = 0
	LinkErrError               LinkError = 1
	LinkErrInvalidMagic        LinkError = 2
	LinkErrInvalidData         LinkError = 3
	LinkErrVersionMismatch     LinkError = 4
	LinkErrNeedSecured         LinkError = 5
	LinkErrNeedUnsecured       LinkError = 6
	LinkErrPermissionDenied    LinkError = 7
	LinkErrBadConnectionID     LinkError = 8
	LinkErrChannelNotAvailable LinkError = 9
)

var linkErrNames = [...]string{
	LinkErrOK:                  "OK",
	LinkErrError:               "ERROR",
	LinkErrInvalidMagic:        "INVALID_MAGIC",
	LinkErrInvalidData:         "INVALID_DATA",
	LinkErrVersionMismatch:     "VERSION_MISMATCH",
	LinkErrNeedSecured:         "NEED_SECURED",
	LinkErrNeedUnsecured:       "NEED_UNSECURED",
	LinkErrPermissionDenied:    "PERMISSION_DENIED",
	LinkErrBadConnectionID:     "BAD_CONNECTION_ID",
	LinkErrChannelNotAvailable: "CHANNEL_NOT_AVAILABLE",
}

// String returns the code's name without the SPICE_LINK_ERR_ prefix.
func (e LinkError) String() string {
	if uint64(e) < uint64(len(linkErrNames)) {
		return linkErrNames[e]
	}
	return "LINK_ERR(" + strconv.FormatUint(uint64(e), 10) + ")"
}

// Error implements error; it returns the same as String.
func (e LinkError) Error() string { return e.String() }

// ProtocolError reports a malformed or unacceptable handshake message from
// the peer. Code is the link error a server should answer it with (see
// ServerLink, which does so); Err describes the problem. errors.Is matches
// both Code and Err.
type ProtocolError struct {
	Code LinkError
	Err  error
}

func (e *ProtocolError) Error() string {
	return "spice: " + e.Err.Error() + " (" + e.Code.String() + ")"
}

// Unwrap returns the link error code and the cause.
func (e *ProtocolError) Unwrap() []error { return []error{e.Code, e.Err} }

// Sentinel causes carried by ProtocolError and other errors.
var (
	// ErrAuthMechanism: the client chose an authentication mechanism other
	// than AuthSpice.
	ErrAuthMechanism = errors.New("unsupported auth mechanism")
	// ErrBadTicket: the ticket could not be decrypted or is too long.
	ErrBadTicket = errors.New("bad ticket")
	// ErrPasswordTooLong: the password exceeds MaxPasswordLength.
	ErrPasswordTooLong = errors.New("password too long")
)

func protoErr(code LinkError, format string, args ...any) error {
	return &ProtocolError{Code: code, Err: fmt.Errorf(format, args...)}
}

// HasCap reports whether capability bit is set in caps (bit n lives in word
// n/32, bit n%32, as in spice-server and spice-gtk).
func HasCap(caps []uint32, bit uint) bool {
	i := bit / 32
	if i >= uint(len(caps)) {
		return false
	}
	return caps[i]&(1<<(bit%32)) != 0
}

// Caps returns the shortest capability word list with the given bits set.
func Caps(bits ...uint) []uint32 {
	var caps []uint32
	for _, b := range bits {
		caps = SetCap(caps, b)
	}
	return caps
}

// SetCap returns caps with bit set, growing it as needed. It may modify
// caps in place.
func SetCap(caps []uint32, bit uint) []uint32 {
	i := int(bit / 32)
	for len(caps) <= i {
		caps = append(caps, 0)
	}
	caps[i] |= 1 << (bit % 32)
	return caps
}

// AuthSelection reports whether the client sends an auth mechanism word
// before its ticket, given the client's (LinkMess) and the server's
// (LinkReply) common caps. spice-server reads the word iff the client has
// CapProtocolAuthSelection; spice-gtk sends it iff the server has it. Both
// always set it, so requiring both is the rule that agrees with either
// peer when the other side is an old implementation without the cap.
func AuthSelection(clientCommon, serverCommon []uint32) bool {
	return HasCap(clientCommon, CapProtocolAuthSelection) &&
		HasCap(serverCommon, CapProtocolAuthSelection)
}
