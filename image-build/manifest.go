package imagebuild

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Manifest describes one build: every file it wrote, what it was made from
// and when. Lists are sorted, so equal builds have equal manifests.
type Manifest struct {
	SourceDateEpoch int64          `json:"source_date_epoch"`
	Cmdline         string         `json:"cmdline"`
	Files           []ManifestFile `json:"files"`
	// Packages are Debian packages as "name=version": the kernel's and
	// initramfs's (given by the caller), GRUB's and iPXE's.
	Packages []string `json:"packages"`
	// Image is the kiosk image's version, as its initramfs says it
	// (/etc/undervdi-image); kiosks report it, and the broker flags those
	// not on the image its manifests name. "": the initramfs has none.
	Image string `json:"image,omitempty"`
}

// ManifestFile is one file of the build, Path relative to the output
// directory with slashes.
type ManifestFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// newManifest hashes the files (relative to dir) and records the rest.
func newManifest(dir string, files, packages []string, epoch time.Time, cmdline string) (*Manifest, error) {
	m := &Manifest{
		SourceDateEpoch: epoch.Unix(),
		Cmdline:         strings.Join(strings.Fields(cmdline), " "),
		Packages:        slices.Compact(slices.Sorted(slices.Values(packages))),
		Files:           []ManifestFile{},
	}
	for _, name := range slices.Sorted(slices.Values(files)) {
		f, err := hashFile(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			return nil, err
		}
		f.Path = name
		m.Files = append(m.Files, f)
	}
	return m, nil
}

func hashFile(path string) (ManifestFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return ManifestFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return ManifestFile{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	return ManifestFile{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// write saves the manifest as indented JSON.
func (m *Manifest) write(path string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(entry{data: append(b, '\n')}, path)
}
