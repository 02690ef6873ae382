package imagebuild

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/u-root/mkuimage/cpio"

	"undervdi/internal/bootlayout"
)

// siteInitrd is the second initramfs both kinds of boot media load after
// the kiosk image: what is the site's and not secret — the broker's CA, at
// bootlayout.CAPath, which kioskd verifies the broker against. It is built
// the same, byte for byte, from the same CA.
func siteInitrd(ca string) ([]byte, error) {
	pemBytes, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	w := cpio.Newc.Writer(&b)
	if err := cpio.WriteRecordsAndDirs(w, []cpio.Record{cpio.StaticFile(bootlayout.CAPath, string(pemBytes), 0o644)}); err != nil {
		return nil, err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// siteEntry is the site initramfs as an entry at path, and the name the
// boot loader loads it by; nothing when in has no CA.
func siteEntry(in Inputs, path string) ([]entry, []string, error) {
	if in.CA == "" {
		return nil, nil, nil
	}
	data, err := siteInitrd(in.CA)
	if err != nil {
		return nil, nil, err
	}
	return []entry{{path: path, data: data}}, []string{bootlayout.SiteInitrd}, nil
}

// checkCA checks an optional CA file: PEM certificates, at least one, each
// a CA's.
func checkCA(path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return fmt.Errorf("ca: %s: %w", path, err)
		}
		if !c.IsCA {
			return fmt.Errorf("ca: %s holds %q, which is no CA (vdi-broker ca prints the broker's)", path, c.Subject.CommonName)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("ca: %s holds no PEM certificate (vdi-broker ca prints the broker's)", path)
	}
	return nil
}
