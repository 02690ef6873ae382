// Package siteca is the site's own certificate authority, which the broker
// makes on its first start when the site configures no certificate: the
// kiosk LAN is encrypted by default. The CA signs the broker's server
// certificate; kiosks carry the CA (image-build puts it on their boot media)
// and verify the broker against it, by the name ServerName.
package siteca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/renameio/v2"
)

// ServerName is the name the broker's certificate carries and kiosks
// verify, whatever address they reach the broker on.
const ServerName = "vdi-broker"

// Files in the CA's directory.
const (
	CAFile     = "ca.pem"
	caKeyFile  = "ca-key.pem"
	certFile   = "broker.pem"
	keyFile    = "broker-key.pem"
	renewAfter = 30 * 24 * time.Hour // a server certificate this close to its end is made anew
)

// notBefore is where every certificate's validity starts: kiosks without a
// clock of their own may boot believing it is years ago.
var notBefore = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// Site is a site's CA and the broker's certificate it signed.
type Site struct {
	CA          *x509.Certificate
	CAPEM       []byte
	Certificate tls.Certificate
}

// Fingerprint is the CA's SHA-256 fingerprint, as `openssl x509
// -fingerprint -sha256` prints it.
func (s *Site) Fingerprint() string {
	sum := sha256.Sum256(s.CA.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// Ensure loads the site in dir, making what is missing: the CA (once, for
// good: kiosks carry it) and the broker's certificate (again when it nears
// its end). Private keys are written 0600.
func Ensure(dir string) (s *Site, made []string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("site CA directory: %w", err)
	}
	ca, caKey, err := loadPair(filepath.Join(dir, CAFile), filepath.Join(dir, caKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		if ca, caKey, err = newCA(dir); err == nil {
			made = append(made, "the site CA")
		}
	}
	if err != nil {
		return nil, nil, err
	}
	cert, key, err := loadPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if errors.Is(err, os.ErrNotExist) || (err == nil && (time.Until(cert.NotAfter) < renewAfter || cert.CheckSignatureFrom(ca) != nil)) {
		if cert, key, err = newServer(dir, ca, caKey); err == nil {
			made = append(made, "the broker's certificate")
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return &Site{CA: ca, CAPEM: pemOf("CERTIFICATE", ca.Raw),
		Certificate: tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Raw}, PrivateKey: key, Leaf: cert}}, made, nil
}

// Subject is cert's subject as remote-viewer's host-subject takes it:
// "O=undervdi,CN=vdi-broker", its names in the certificate's order.
func Subject(cert *x509.Certificate) string {
	short := map[string]string{"2.5.4.6": "C", "2.5.4.8": "ST", "2.5.4.7": "L", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.3": "CN"}
	var parts []string
	for _, atv := range cert.Subject.Names {
		name, ok := short[atv.Type.String()]
		if !ok {
			name = atv.Type.String()
		}
		parts = append(parts, fmt.Sprintf("%s=%v", name, atv.Value))
	}
	return strings.Join(parts, ",")
}

// Pool returns a pool holding the CA, for clients of the broker.
func (s *Site) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.CA)
	return p
}

func newCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "undervdi site CA (" + host + ")", Organization: []string{"undervdi"}},
		NotBefore:             notBefore,
		NotAfter:              time.Now().AddDate(30, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return write(dir, CAFile, caKeyFile, tmpl, tmpl, key, key)
}

func newServer(dir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	names := []string{ServerName}
	if host, err := os.Hostname(); err == nil && host != "" {
		names = append(names, host)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: ServerName, Organization: []string{"undervdi"}},
		DNSNames:     append(names, "localhost"),
		// For an operator on the broker's own machine (vdi-broker -url
		// https://127.0.0.1:8443).
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:   notBefore,
		NotAfter:    time.Now().AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return write(dir, certFile, keyFile, tmpl, ca, key, caKey)
}

// write signs tmpl with parentKey and writes the certificate and key, the
// key first and 0600, each file atomically.
func write(dir, certName, keyName string, tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := renameio.WriteFile(filepath.Join(dir, keyName), pemOf("EC PRIVATE KEY", keyDER), 0o600, renameio.WithStaticPermissions(0o600)); err != nil {
		return nil, nil, err
	}
	if err := renameio.WriteFile(filepath.Join(dir, certName), pemOf("CERTIFICATE", der), 0o644, renameio.WithStaticPermissions(0o644)); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("%s or %s holds no PEM block", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not hold the key of %s", keyPath, certPath)
	}
	return cert, key, nil
}

func pemOf(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // crypto/rand does not fail
	return n
}
