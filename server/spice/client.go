package spice

import (
	"errors"
	"fmt"
	"io"
)

// Link performs the client side of a link handshake on rw, a fresh
// connection to a SPICE server: it sends m, reads the server's reply,
// sends the auth mechanism word if AuthSelection(m.CommonCaps,
// reply.CommonCaps), sends password encrypted with the server's key, and
// reads the link result. The mechanism word and the ticket go out in one
// Write.
//
// When the server refuses, Link returns an error wrapping the LinkError it
// sent (errors.Is(err, LinkErrPermissionDenied) for a wrong password),
// together with the reply if one was read. Note that spice-server refuses
// a link to a channel it does not have (other than main) by closing the
// connection without any reply, which shows up here as an I/O error
// (io.EOF) from reading the reply.
//
// On success rw is positioned right after the link result: what follows is
// the channel's messages, with mini headers iff both m and the reply have
// CapMiniHeader. Link sets no deadlines; the caller sets them on rw.
func Link(rw io.ReadWriter, m *LinkMess, password string) (*LinkReply, error) {
	if _, err := m.WriteTo(rw); err != nil {
		return nil, fmt.Errorf("spice: sending link message: %w", err)
	}
	reply, err := ReadLinkReply(rw)
	if err != nil {
		return nil, err
	}
	if reply.Error != LinkErrOK {
		return reply, fmt.Errorf("spice: server refused %v channel %d link: %w", m.ChannelType, m.ChannelID, reply.Error)
	}
	if reply.PubKey == nil {
		return reply, errors.New("spice: server sent no ticket key (SASL only?)")
	}
	var out []byte
	if AuthSelection(m.CommonCaps, reply.CommonCaps) {
		if !HasCap(reply.CommonCaps, CapAuthSpice) {
			return reply, fmt.Errorf("spice: server does not offer SPICE ticket auth: %w", ErrAuthMechanism)
		}
		out = le.AppendUint32(out, AuthSpice)
	}
	ticket, err := EncryptTicket(reply.PubKey, password)
	if err != nil {
		return reply, err
	}
	out = append(out, ticket...)
	if _, err := rw.Write(out); err != nil {
		return reply, fmt.Errorf("spice: sending ticket: %w", err)
	}
	res, err := ReadResult(rw)
	if err != nil {
		return reply, err
	}
	if res != LinkErrOK {
		return reply, fmt.Errorf("spice: server refused %v channel %d ticket: %w", m.ChannelType, m.ChannelID, res)
	}
	return reply, nil
}
