package spice

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
)

// ServerLink performs the server side of one link handshake, step by step,
// answering protocol errors itself the way spice-server does. Which caps to
// reply and whether the password is acceptable are the caller's decisions:
//
//	s := spice.NewServerLink(conn, key)
//	m, err := s.ReadLinkMess() // a malformed message has been refused already
//	...                        // s.Refuse(code) to turn m down, or:
//	err = s.Reply(commonCaps, channelCaps)
//	pw, err := s.ReadTicket() // a bad ticket has been answered already
//	...                       // check pw, then:
//	err = s.Finish(spice.LinkErrOK) // or LinkErrPermissionDenied
//
// A ServerLink is not safe for concurrent use. The caller sets deadlines
// on the connection.
type ServerLink struct {
	rw    io.ReadWriter
	key   *rsa.PrivateKey
	mess  *LinkMess
	reply *LinkReply
	state serverState
}

type serverState int

const (
	stateNew serverState = iota
	stateMess
	stateReplied
	stateTicket
	stateDone
)

// NewServerLink starts the server side of a link handshake on rw with the
// ticket key key (see NewKey).
func NewServerLink(rw io.ReadWriter, key *rsa.PrivateKey) *ServerLink {
	return &ServerLink{rw: rw, key: key}
}

func (s *ServerLink) step(want serverState, what string) error {
	if s.state != want {
		s.state = stateDone
		return fmt.Errorf("spice: ServerLink.%s out of order", what)
	}
	return nil
}

// ReadLinkMess reads the client's link message (see the package function
// ReadLinkMess). If it is malformed, the client is sent the error reply
// that the returned *ProtocolError carries before the error is returned.
func (s *ServerLink) ReadLinkMess() (*LinkMess, error) {
	if err := s.step(stateNew, "ReadLinkMess"); err != nil {
		return nil, err
	}
	m, err := ReadLinkMess(s.rw)
	if err != nil {
		s.state = stateDone
		var pe *ProtocolError
		if errors.As(err, &pe) {
			if werr := RefuseLink(s.rw, pe.Code); werr != nil {
				err = errors.Join(err, werr)
			}
		}
		return nil, err
	}
	s.mess, s.state = m, stateMess
	return m, nil
}

// Mess returns the link message read by ReadLinkMess, or nil.
func (s *ServerLink) Mess() *LinkMess { return s.mess }

// Refuse turns the link message down with code (an error reply), instead
// of Reply.
func (s *ServerLink) Refuse(code LinkError) error {
	if err := s.step(stateMess, "Refuse"); err != nil {
		return err
	}
	s.state = stateDone
	return RefuseLink(s.rw, code)
}

// Reply accepts the link message: it sends an OK reply with the ticket
// key and the given caps. The common caps decide, with the client's,
// whether the client sends an auth mechanism word (AuthSelection) and
// whether the channel then uses mini headers (MiniHeader).
//
// The common caps should be CapProtocolAuthSelection and CapAuthSpice, as
// spice-server's, and must not include CapAuthSASL: spice-gtk picks SASL
// whenever the server offers it. (spice-gtk itself advertises AUTH_SASL,
// not AUTH_SPICE, so do not require CapAuthSpice from the client.) A
// gateway that splices the client to a VM should set CapMiniHeader iff the
// client has it, because the VM, given the client's caps, will use mini
// headers iff the client has it.
func (s *ServerLink) Reply(commonCaps, channelCaps []uint32) error {
	if err := s.step(stateMess, "Reply"); err != nil {
		return err
	}
	s.state = stateDone
	if s.key == nil {
		return errors.New("spice: ServerLink without a key")
	}
	r := &LinkReply{PubKey: &s.key.PublicKey, CommonCaps: commonCaps, ChannelCaps: channelCaps}
	if _, err := r.WriteTo(s.rw); err != nil {
		return fmt.Errorf("spice: sending link reply: %w", err)
	}
	s.reply, s.state = r, stateReplied
	return nil
}

// AuthSelection reports whether the client sends an auth mechanism word
// before its ticket; valid after Reply.
func (s *ServerLink) AuthSelection() bool {
	return s.mess != nil && s.reply != nil && AuthSelection(s.mess.CommonCaps, s.reply.CommonCaps)
}

// MiniHeader reports whether the channel uses mini data headers after the
// handshake (both sides have CapMiniHeader); valid after Reply.
func (s *ServerLink) MiniHeader() bool {
	return s.mess != nil && s.reply != nil &&
		HasCap(s.mess.CommonCaps, CapMiniHeader) && HasCap(s.reply.CommonCaps, CapMiniHeader)
}

// ReadTicket reads the auth mechanism word (if AuthSelection) and the
// ticket, and returns the decrypted password (see the package function
// ReadTicket). A mechanism other than AuthSpice is answered with an
// INVALID_DATA error reply and a ticket that does not decrypt with a
// PERMISSION_DENIED result, as spice-server does, before the error is
// returned.
func (s *ServerLink) ReadTicket() (string, error) {
	if err := s.step(stateReplied, "ReadTicket"); err != nil {
		return "", err
	}
	s.state = stateDone
	pw, err := ReadTicket(s.rw, s.AuthSelection(), s.key)
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			var werr error
			if pe.Code == LinkErrPermissionDenied {
				werr = WriteResult(s.rw, pe.Code)
			} else {
				werr = RefuseLink(s.rw, pe.Code)
			}
			if werr != nil {
				err = errors.Join(err, werr)
			}
		}
		return "", err
	}
	s.state = stateTicket
	return pw, nil
}

// Finish sends the link result: LinkErrOK lets the client in (the
// connection then carries the channel's messages), anything else (usually
// LinkErrPermissionDenied) turns it away.
func (s *ServerLink) Finish(code LinkError) error {
	if err := s.step(stateTicket, "Finish"); err != nil {
		return err
	}
	s.state = stateDone
	return WriteResult(s.rw, code)
}
