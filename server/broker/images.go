package broker

import (
	"encoding/json"
	"log/slog"
	"os"
	"sync"
	"time"
)

// images reads which kiosk images are current from image-build's
// manifests, again whenever one changes.
type images struct {
	paths []string
	log   *slog.Logger

	mu    sync.Mutex
	seen  map[string]imageStamp
	wrong map[string]string // a manifest's last error, said once
}

type imageStamp struct {
	mod     time.Time
	size    int64
	version string
}

// Current is the image versions the manifests name.
func (im *images) Current() []string {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.seen == nil {
		im.seen, im.wrong = map[string]imageStamp{}, map[string]string{}
	}
	var out []string
	for _, p := range im.paths {
		st, err := os.Stat(p)
		if err != nil {
			im.complain(p, err.Error())
			continue
		}
		s, ok := im.seen[p]
		if !ok || s.mod != st.ModTime() || s.size != st.Size() {
			var m struct {
				Image string `json:"image"`
			}
			b, err := os.ReadFile(p)
			if err == nil {
				err = json.Unmarshal(b, &m)
			}
			if err != nil {
				im.complain(p, err.Error())
				continue
			}
			if m.Image == "" {
				im.complain(p, "it names no image version (built from an initramfs image-build could not read)")
			}
			s = imageStamp{mod: st.ModTime(), size: st.Size(), version: m.Image}
			im.seen[p] = s
			delete(im.wrong, p)
		}
		if s.version != "" {
			out = append(out, s.version)
		}
	}
	return out
}

func (im *images) complain(path, why string) {
	if im.wrong[path] != why {
		im.wrong[path] = why
		im.log.Warn("cannot tell which kiosk image is current from an image manifest (images.manifests)", "manifest", path, "err", why)
	}
}
