package ads

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // the formats the slideshow shows
	_ "image/jpeg"
	_ "image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Limits on an uploaded ad: what every kiosk's mirror and slideshow take.
const (
	MaxUpload = 32 << 20 // bytes (the kiosks' mirror takes up to 64 MiB a file)
	MaxPixels = 16 << 20 // width × height: a decoded ad is 4 bytes a pixel on a kiosk
	MaxSide   = 8192
)

// ErrBadAd is wrapped by Put's refusals: the operator's file is not an ad.
var ErrBadAd = errors.New("not an ad")

// ErrNoAd is Open's and Remove's error for an ad that is not there.
var ErrNoAd = errors.New("no such ad")

// Ad is one image of the ads folder.
type Ad struct {
	Name     string    `json:"name"`
	Type     string    `json:"type"`
	Size     int64     `json:"size"`
	Width    int       `json:"width"`
	Height   int       `json:"height"`
	Modified time.Time `json:"modified"`
}

// Library is the ads folder as operators manage it (the console, the API);
// Handler serves the same folder to kiosks.
type Library struct{ Dir string }

// List is every ad, by name.
func (l Library) List() ([]Ad, error) {
	entries, err := os.ReadDir(l.Dir)
	if err != nil {
		return nil, err
	}
	out := []Ad{}
	for _, e := range entries {
		if !e.Type().IsRegular() || !isImageName(e.Name()) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		ad := Ad{Name: e.Name(), Type: contentType(e.Name()), Size: fi.Size(), Modified: fi.ModTime().UTC()}
		if f, err := os.Open(filepath.Join(l.Dir, e.Name())); err == nil {
			if cfg, _, err := image.DecodeConfig(bufio.NewReader(f)); err == nil {
				ad.Width, ad.Height = cfg.Width, cfg.Height
			}
			f.Close()
		}
		out = append(out, ad)
	}
	slices.SortFunc(out, func(a, b Ad) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Open opens one ad for reading, with its content type.
func (l Library) Open(name string) (*os.File, string, error) {
	if !isImageName(name) {
		return nil, "", fmt.Errorf("%w: %q", ErrNoAd, name)
	}
	f, err := os.Open(filepath.Join(l.Dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("%w: %q", ErrNoAd, name)
	}
	return f, contentType(name), err
}

// Put stores an ad read from r under name, replacing one of that name. It
// refuses (ErrBadAd, saying why) a name that is not a plain file name with
// the extension of its type, a file over MaxUpload, one whose content is
// not a PNG, JPEG or GIF of that type, or one too large to show. Nothing is
// written unless all is well; the ad appears whole or not at all.
func (l Library) Put(name string, r io.Reader) (Ad, error) {
	want := contentType(name)
	if !isImageName(name) || len(name) > 128 || strings.ContainsFunc(name, func(c rune) bool { return c < ' ' || c == 0x7f }) {
		return Ad{}, fmt.Errorf("%w: %q: a name is a plain file name ending in .png, .jpg, .jpeg or .gif", ErrBadAd, name)
	}
	tmp, err := os.CreateTemp(l.Dir, ".upload-*")
	if err != nil {
		return Ad{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	n, err := io.Copy(tmp, io.LimitReader(r, MaxUpload+1))
	if err != nil {
		return Ad{}, fmt.Errorf("receiving the ad: %w", err)
	}
	if n > MaxUpload {
		return Ad{}, fmt.Errorf("%w: larger than %d MiB", ErrBadAd, MaxUpload>>20)
	}
	head := make([]byte, 512)
	k, _ := tmp.ReadAt(head, 0)
	if got := http.DetectContentType(head[:k]); got != want {
		return Ad{}, fmt.Errorf("%w: %s holds %s, not %s", ErrBadAd, name, got, want)
	}
	cfg, _, err := image.DecodeConfig(io.NewSectionReader(tmp, 0, n))
	switch {
	case err != nil:
		return Ad{}, fmt.Errorf("%w: %s does not decode: %v", ErrBadAd, name, err)
	case cfg.Width < 1 || cfg.Height < 1 || cfg.Width > MaxSide || cfg.Height > MaxSide || cfg.Width*cfg.Height > MaxPixels:
		return Ad{}, fmt.Errorf("%w: %dx%d pixels; at most %d a side and %d megapixels", ErrBadAd, cfg.Width, cfg.Height, MaxSide, MaxPixels>>20)
	}
	// The whole image, as a kiosk's slideshow will decode it: a cut or
	// corrupt file is refused here, not on every kiosk.
	if _, _, err := image.Decode(bufio.NewReader(io.NewSectionReader(tmp, 0, n))); err != nil {
		return Ad{}, fmt.Errorf("%w: %s does not decode: %v", ErrBadAd, name, err)
	}
	if err := tmp.Sync(); err != nil {
		return Ad{}, err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return Ad{}, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(l.Dir, name)); err != nil {
		return Ad{}, err
	}
	return Ad{Name: name, Type: want, Size: n, Width: cfg.Width, Height: cfg.Height, Modified: time.Now().UTC()}, nil
}

// Remove deletes an ad.
func (l Library) Remove(name string) error {
	if !isImageName(name) {
		return fmt.Errorf("%w: %q", ErrNoAd, name)
	}
	err := os.Remove(filepath.Join(l.Dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %q", ErrNoAd, name)
	}
	return err
}
