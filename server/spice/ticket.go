package spice

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
)

// NewKey generates a ticket key pair: 1024-bit RSA, as SPICE requires (the
// client reads the public key from a fixed 162-byte field and sends a
// 128-byte ticket). spice-server makes a new one for every link; a gateway
// may do the same or reuse one for a while.
func NewKey() (*rsa.PrivateKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, TicketKeyBits)
	if err != nil {
		return nil, fmt.Errorf("spice: generating ticket key: %w", err)
	}
	return k, nil
}

// EncryptTicket encrypts password as a SPICE ticket: RSA-OAEP with SHA-1
// of the password and its terminating NUL, as spice-gtk does. The password
// must be at most MaxPasswordLength bytes and contain no NUL.
func EncryptTicket(pub *rsa.PublicKey, password string) ([]byte, error) {
	if pub == nil {
		return nil, errors.New("spice: no public key to encrypt the ticket with")
	}
	if len(password) > MaxPasswordLength {
		return nil, fmt.Errorf("spice: %w (%d bytes, max %d)", ErrPasswordTooLong, len(password), MaxPasswordLength)
	}
	if bytes.IndexByte([]byte(password), 0) >= 0 {
		return nil, errors.New("spice: password contains a NUL byte")
	}
	msg := append([]byte(password), 0)
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, msg, nil)
	if err != nil {
		return nil, fmt.Errorf("spice: encrypting ticket: %w", err)
	}
	return ct, nil
}

// ReadTicket reads what a client sends after the link reply and returns
// the password it carries. If authSelection (see AuthSelection), it first
// reads the client's auth mechanism word and refuses anything but
// AuthSpice with a *ProtocolError wrapping ErrAuthMechanism (code
// LinkErrInvalidData, which spice-server sends as an error reply). Then it
// reads the key-sized ticket and decrypts it; a ticket that does not
// decrypt, or holds more than MaxPasswordLength bytes, gives a
// *ProtocolError wrapping ErrBadTicket with code LinkErrPermissionDenied
// (spice-server sends that as the link result). The password ends at the
// first NUL; an empty password is returned as "" without error.
func ReadTicket(r io.Reader, authSelection bool, key *rsa.PrivateKey) (string, error) {
	if key == nil {
		return "", errors.New("spice: ReadTicket without a key")
	}
	if authSelection {
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", fmt.Errorf("spice: reading auth mechanism: %w", err)
		}
		if mech := le.Uint32(b[:]); mech != AuthSpice {
			return "", &ProtocolError{Code: LinkErrInvalidData, Err: fmt.Errorf("%w %d", ErrAuthMechanism, mech)}
		}
	}
	ct := make([]byte, key.Size())
	if _, err := io.ReadFull(r, ct); err != nil {
		if authSelection {
			err = noEOF(err)
		}
		return "", fmt.Errorf("spice: reading ticket: %w", err)
	}
	pt, err := rsa.DecryptOAEP(sha1.New(), nil, key, ct, nil)
	if err != nil {
		return "", &ProtocolError{Code: LinkErrPermissionDenied, Err: fmt.Errorf("%w: %v", ErrBadTicket, err)}
	}
	if i := bytes.IndexByte(pt, 0); i >= 0 {
		pt = pt[:i]
	}
	if len(pt) > MaxPasswordLength {
		return "", &ProtocolError{Code: LinkErrPermissionDenied, Err: fmt.Errorf("%w: password of %d bytes, max %d", ErrBadTicket, len(pt), MaxPasswordLength)}
	}
	return string(pt), nil
}

// NewPassword returns a random SPICE password or ticket: 256 bits in 43
// URL-safe characters, within MaxPasswordLength.
func NewPassword() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}
