package virt

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/digitalocean/go-libvirt"

	"undervdi/server/domxml"
)

// ErrOverlayRemains is returned when an overlay is still there after deletion.
var ErrOverlayRemains = errors.New("overlay still present after deletion")

// PrepareStorage makes sure running libvirt storage pools cover the
// overlay directory (<poolName>-overlays) and the versions directory
// (<poolName>-versions), creating and starting them if needed.
func (h *Host) PrepareStorage(ctx context.Context, poolName, overlayDir, versionDir string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	overlays, err := h.ensurePool(l, poolName+"-overlays", overlayDir)
	if err != nil {
		return err
	}
	versions, err := h.ensurePool(l, poolName+"-versions", versionDir)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.overlayPool, h.versionPool, h.overlayDir = overlays, versions, filepath.Clean(overlayDir)
	h.mu.Unlock()
	return nil
}

// ensurePool returns the running storage pool that covers dir: one that
// already does, or name, defined, built and started here.
func (h *Host) ensurePool(l *libvirt.Libvirt, name, dir string) (string, error) {
	pool, err := l.StoragePoolLookupByTargetPath(dir)
	if err != nil {
		pool, err = l.StoragePoolLookupByName(name)
		if err != nil {
			xml := fmt.Sprintf(`<pool type='dir'><name>%s</name><target><path>%s</path>`+
				`<permissions><mode>0711</mode></permissions></target></pool>`, html.EscapeString(name), html.EscapeString(dir))
			if pool, err = l.StoragePoolDefineXML(xml, 0); err != nil {
				return "", wrap(l, err, "defining storage pool %s for %s", name, dir)
			}
			if err := l.StoragePoolBuild(pool, libvirt.StoragePoolBuildNew); err != nil && !hasCode(err, libvirt.ErrStoragePoolBuilt) {
				return "", wrap(l, err, "creating %s", dir)
			}
			if err := l.StoragePoolSetAutostart(pool, 1); err != nil {
				return "", wrap(l, err, "marking storage pool %s autostart", name)
			}
			h.log.Info("created storage pool", "pool", name, "dir", dir)
		}
	}
	if state, _, _, _, err := l.StoragePoolGetInfo(pool); err != nil {
		return "", wrap(l, err, "storage pool %s", pool.Name)
	} else if state != 2 { // VIR_STORAGE_POOL_RUNNING
		if err := l.StoragePoolCreate(pool, 0); err != nil {
			return "", wrap(l, err, "starting storage pool %s", pool.Name)
		}
	}
	return pool.Name, nil
}

func (h *Host) overlayStore(ctx context.Context) (*libvirt.Libvirt, libvirt.StoragePool, error) {
	h.mu.RLock()
	name := h.overlayPool
	h.mu.RUnlock()
	return h.store(ctx, name, "overlay")
}

// store looks up one of the pools PrepareStorage made.
func (h *Host) store(ctx context.Context, name, what string) (*libvirt.Libvirt, libvirt.StoragePool, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, libvirt.StoragePool{}, err
	}
	if name == "" {
		return nil, libvirt.StoragePool{}, fmt.Errorf("%s storage pool not prepared", what)
	}
	pool, err := l.StoragePoolLookupByName(name)
	if err != nil {
		return nil, pool, wrap(l, err, "storage pool %s", name)
	}
	return l, pool, nil
}

// Overlays returns the paths of all volumes in the overlay pool, after a
// refresh so that files libvirt has not seen yet are included, and the
// volume paths of overlay keys (libvirt secrets) whose volume is there or
// was: DeleteOverlay removes both.
func (h *Host) Overlays(ctx context.Context) ([]string, error) {
	l, pool, err := h.overlayStore(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.StoragePoolRefresh(pool, 0); err != nil {
		return nil, wrap(l, err, "refreshing storage pool %s", pool.Name)
	}
	paths, err := volumePaths(l, pool)
	if err != nil {
		return nil, err
	}
	keys, err := h.overlayKeys(l)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if !slices.Contains(paths, k.UsageID) {
			paths = append(paths, k.UsageID)
		}
	}
	return paths, nil
}

// overlayKeys returns the libvirt secrets of volumes in the overlay
// directory: the keys of encrypted overlays.
func (h *Host) overlayKeys(l *libvirt.Libvirt) ([]libvirt.Secret, error) {
	h.mu.RLock()
	dir := h.overlayDir
	h.mu.RUnlock()
	secrets, _, err := l.ConnectListAllSecrets(1, 0)
	if hasCode(err, libvirt.ErrNoSupport) {
		return nil, nil // no secret driver: no overlay has a key (encrypt_disks needs one)
	}
	if err != nil {
		return nil, wrap(l, err, "listing libvirt secrets")
	}
	var out []libvirt.Secret
	for _, s := range secrets {
		if s.UsageType == int32(libvirt.SecretUsageTypeVolume) && dir != "" && filepath.Dir(s.UsageID) == dir {
			out = append(out, s)
		}
	}
	return out, nil
}

// CreateOverlay creates a qcow2 volume named name in the overlay pool whose
// backing file is the golden disk, and returns its path. The golden disk is
// opened read-only from then on. With encrypt, the overlay is LUKS-encrypted
// with a key made for it alone, held by a private, ephemeral libvirt secret
// (never written to disk, never readable through the API) whose UUID is
// returned; DeleteOverlay undefines it first, which crypto-erases the
// overlay's blocks wherever they still lie.
func (h *Host) CreateOverlay(ctx context.Context, name string, backing domxml.Disk, encrypt bool) (path, secret string, err error) {
	l, pool, err := h.overlayStore(ctx)
	if err != nil {
		return "", "", err
	}
	var enc string
	if encrypt {
		h.mu.RLock()
		path := filepath.Join(h.overlayDir, name)
		h.mu.RUnlock()
		if secret, err = h.createKey(l, path); err != nil {
			return "", "", err
		}
		enc = fmt.Sprintf(`<encryption format='luks'><secret type='passphrase' uuid='%s'/></encryption>`, secret)
	}
	xml := fmt.Sprintf(`<volume type='file'><name>%s</name><capacity unit='bytes'>%d</capacity>`+
		`<target><format type='qcow2'/><permissions><mode>0600</mode></permissions>%s</target>`+
		`<backingStore><path>%s</path><format type='%s'/></backingStore></volume>`,
		html.EscapeString(name), backing.Capacity, enc, html.EscapeString(backing.Path), html.EscapeString(backing.Format))
	h.mu.RLock()
	keyPath := filepath.Join(h.overlayDir, name)
	h.mu.RUnlock()
	vol, err := l.StorageVolCreateXML(pool, xml, 0)
	for try := 1; err != nil && secret != "" && try < 4 && strings.Contains(err.Error(), "Unable to get accurate CPU usage"); try++ {
		// qemu-img times its LUKS key derivation by the thread's CPU
		// time; where the kernel accounts it by ticks, a busy host can
		// read no time at all. Another try measures again.
		h.log.Debug("qemu-img could not time the key derivation; trying again", "overlay", name, "try", try)
		vol, err = l.StorageVolCreateXML(pool, xml, 0)
	}
	if err != nil {
		if secret != "" {
			h.deleteKey(l, keyPath)
		}
		return "", "", wrap(l, err, "creating overlay %s", name)
	}
	path, err = l.StorageVolGetPath(vol)
	return path, secret, wrap(l, err, "overlay %s", name)
}

// createKey defines the secret for the overlay at path and gives it a fresh
// random passphrase (qemu-img takes UTF-8 only: 52 base32 characters, 260
// bits). A key left for that path by a crash is undefined first.
func (h *Host) createKey(l *libvirt.Libvirt, path string) (string, error) {
	if err := h.deleteKey(l, path); err != nil {
		return "", err
	}
	xml := fmt.Sprintf(`<secret ephemeral='yes' private='yes'><description>undervdi: the key of one clone's overlay; undefined when the VM ends</description>`+
		`<usage type='volume'><volume>%s</volume></usage></secret>`, html.EscapeString(path))
	s, err := l.SecretDefineXML(xml, 0)
	if err != nil {
		return "", wrap(l, err, "defining the key of %s", path)
	}
	if err := l.SecretSetValue(s, []byte(rand.Text()+rand.Text()), 0); err != nil {
		l.SecretUndefine(s)
		return "", wrap(l, err, "setting the key of %s", path)
	}
	return uuid.UUID(s.UUID).String(), nil
}

// deleteKey undefines the secret of the volume at path, if there is one.
func (h *Host) deleteKey(l *libvirt.Libvirt, path string) error {
	s, err := l.SecretLookupByUsage(int32(libvirt.SecretUsageTypeVolume), path)
	if hasCode(err, libvirt.ErrNoSecret) || hasCode(err, libvirt.ErrNoSupport) {
		return nil
	}
	if err != nil {
		return wrap(l, err, "looking up the key of %s", path)
	}
	if err := l.SecretUndefine(s); err != nil && !hasCode(err, libvirt.ErrNoSecret) {
		return wrap(l, err, "undefining the key of %s", path)
	}
	return nil
}

// DeleteOverlay deletes the overlay at path and verifies, after refreshing
// the pool from disk, that it is gone. Its key, if it is encrypted, is
// undefined first: from then on its blocks are unreadable, whatever becomes
// of the file. An overlay already gone is not an error.
func (h *Host) DeleteOverlay(ctx context.Context, path string) error {
	l, pool, err := h.overlayStore(ctx)
	if err != nil {
		return err
	}
	if err := h.deleteKey(l, path); err != nil {
		return err
	}
	vol, err := l.StorageVolLookupByPath(path)
	if hasCode(err, libvirt.ErrNoStorageVol) {
		// Maybe a file libvirt has not seen yet: look again after a refresh.
		if err := l.StoragePoolRefresh(pool, 0); err != nil {
			return wrap(l, err, "refreshing storage pool %s", pool.Name)
		}
		vol, err = l.StorageVolLookupByPath(path)
		if hasCode(err, libvirt.ErrNoStorageVol) {
			return nil
		}
	}
	if err != nil {
		return wrap(l, err, "looking up overlay %s", path)
	}
	if err := l.StorageVolDelete(vol, libvirt.StorageVolDeleteNormal); err != nil && !hasCode(err, libvirt.ErrNoStorageVol) {
		return wrap(l, err, "deleting overlay %s", path)
	}
	if err := l.StoragePoolRefresh(pool, 0); err != nil {
		return wrap(l, err, "refreshing storage pool %s", pool.Name)
	}
	if _, err := l.StorageVolLookupByName(pool, vol.Name); err == nil {
		return fmt.Errorf("%w: %s", ErrOverlayRemains, path)
	} else if !hasCode(err, libvirt.ErrNoStorageVol) {
		return wrap(l, err, "checking overlay %s is gone", path)
	}
	return nil
}

// withVolume runs f with the storage volume at path. libvirt's storage API
// reads the disk for the broker, so the broker needs no access to the file
// itself. A file no pool knows yet is found by refreshing the pools, and
// failing that by a transient pool for its directory, which is destroyed
// again once f returns: a check leaves nothing behind.
func withVolume(l *libvirt.Libvirt, path string, f func(libvirt.StorageVol) error) error {
	vol, err := l.StorageVolLookupByPath(path)
	if hasCode(err, libvirt.ErrNoStorageVol) {
		pools, _, lerr := l.ConnectListAllStoragePools(1, libvirt.ConnectListStoragePoolsActive)
		if lerr != nil {
			return lerr
		}
		for _, p := range pools {
			l.StoragePoolRefresh(p, 0) // best effort: a pool with a job running refreshes later
		}
		vol, err = l.StorageVolLookupByPath(path)
	}
	if hasCode(err, libvirt.ErrNoStorageVol) {
		dir := filepath.Dir(path)
		name := "undervdi-transient-" + rand.Text()[:8]
		xml := fmt.Sprintf(`<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>`,
			html.EscapeString(name), html.EscapeString(dir))
		pool, perr := l.StoragePoolCreateXML(xml, 0)
		if perr == nil {
			// A transient pool that cannot be destroyed goes with libvirtd's
			// next restart; it holds nothing of the broker's.
			defer l.StoragePoolDestroy(pool)
		}
		vol, err = l.StorageVolLookupByPath(path)
		if err != nil && perr != nil {
			return fmt.Errorf("no libvirt storage pool holds %s, and one for %s could not be made: %w", path, dir, perr)
		}
	}
	if err != nil {
		return err
	}
	return f(vol)
}

// readHead returns the first n bytes of a volume, through libvirt.
func readHead(l *libvirt.Libvirt, vol libvirt.StorageVol, n uint64) ([]byte, error) {
	var buf bytes.Buffer
	if err := l.StorageVolDownload(vol, &buf, 0, n, 0); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
