package virt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"html"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"

	"undervdi/server/domxml"
	"undervdi/server/qcow2"
)

// The version store: published versions of the golden are template domains
// whose disks are read-only qcow2 volumes in the broker's versions storage
// pool. Copies are made by libvirt (virStorageVolCreateXMLFrom), which
// writes only what the source holds: a 100 GiB disk with 2 GiB written
// costs about 2 GiB.

// versionMode is the volumes' file mode: nobody, QEMU included, opens a
// published version for writing, so starting a template fails.
const versionMode = "0444"

func (h *Host) versionStore(ctx context.Context) (*libvirt.Libvirt, libvirt.StoragePool, error) {
	h.mu.RLock()
	name := h.versionPool
	h.mu.RUnlock()
	return h.store(ctx, name, "versions")
}

// Versions returns the published versions: the template domains whose names
// start with prefix. A version whose volume is missing has that disk's
// capacity 0: it cannot be cloned.
func (h *Host) Versions(ctx context.Context, prefix string) ([]*domxml.Version, error) {
	return listDomains(h, ctx, prefix, func(l *libvirt.Libvirt, dom libvirt.Domain) (*domxml.Version, bool, error) {
		v, err := h.version(l, dom)
		return v, err == nil && v != nil, err
	})
}

func (h *Host) version(l *libvirt.Libvirt, dom libvirt.Domain) (*domxml.Version, error) {
	x, err := l.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive|libvirt.DomainXMLSecure)
	if err != nil {
		return nil, wrap(l, err, "reading the XML of %s", dom.Name)
	}
	v, err := domxml.ParseVersion(x)
	if err != nil || v == nil {
		return nil, err
	}
	for i, d := range v.Disks {
		if !d.Writable() {
			continue
		}
		vol, err := l.StorageVolLookupByPath(d.Path)
		if hasCode(err, libvirt.ErrNoStorageVol) {
			h.log.Error("a volume of a published version is missing: the version cannot be cloned", "version", dom.Name, "volume", d.Path)
			continue
		}
		if err != nil {
			return nil, wrap(l, err, "volume %s of %s", d.Path, dom.Name)
		}
		info, err := volumeInfo(l, vol)
		if err != nil {
			return nil, wrap(l, err, "volume %s of %s", d.Path, dom.Name)
		}
		v.Disks[i].Capacity, v.Disks[i].Allocation, v.Disks[i].Modified = info.Capacity, info.Allocation, info.Modified
	}
	return v, nil
}

// VersionVolumes returns the paths of the volumes in the versions pool, as
// libvirt knows them: every one was made through libvirt, so no refresh is
// needed (and a refresh fails while a copy runs).
func (h *Host) VersionVolumes(ctx context.Context) ([]string, error) {
	l, pool, err := h.versionStore(ctx)
	if err != nil {
		return nil, err
	}
	return volumePaths(l, pool)
}

func volumePaths(l *libvirt.Libvirt, pool libvirt.StoragePool) ([]string, error) {
	vols, _, err := l.StoragePoolListAllVolumes(pool, 1, 0)
	if err != nil {
		return nil, wrap(l, err, "listing storage pool %s", pool.Name)
	}
	var out []string
	for _, v := range vols {
		p, err := l.StorageVolGetPath(v)
		if hasCode(err, libvirt.ErrNoStorageVol) {
			continue
		}
		if err != nil {
			return nil, wrap(l, err, "volume %s", v.Name)
		}
		out = append(out, p)
	}
	return out, nil
}

// VersionSpace returns the bytes free in the versions pool, and its name.
func (h *Host) VersionSpace(ctx context.Context) (uint64, string, error) {
	l, pool, err := h.versionStore(ctx)
	if err != nil {
		return 0, "", err
	}
	l.StoragePoolRefresh(pool, 0) // fresh figures where it can; a pool with a job running keeps its last ones
	_, _, _, free, err := l.StoragePoolGetInfo(pool)
	return free, pool.Name, wrap(l, err, "storage pool %s", pool.Name)
}

// CopyDisk copies the golden disk src into the versions pool as a sparse,
// read-only qcow2 volume called name, reporting the bytes written about
// twice a second. If ctx ends first it returns at once; libvirt finishes
// the copy, and the next reconcile deletes it.
func (h *Host) CopyDisk(ctx context.Context, src domxml.Disk, name string, progress func(written uint64)) (string, error) {
	l, pool, err := h.versionStore(ctx)
	if err != nil {
		return "", err
	}
	spec := fmt.Sprintf(`<volume type='file'><name>%s</name><capacity unit='bytes'>%d</capacity>`+
		`<target><format type='qcow2'/><permissions><mode>%s</mode></permissions></target></volume>`,
		html.EscapeString(name), src.Capacity, versionMode)
	var path string
	err = withVolume(l, src.Path, func(from libvirt.StorageVol) error {
		done := make(chan error, 1)
		go func() {
			_, err := l.StorageVolCreateXMLFrom(pool, spec, from, 0)
			done <- err
		}()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case err := <-done:
				if err != nil {
					return wrap(l, err, "copying %s into %s", src.Path, pool.Name)
				}
				vol, err := l.StorageVolLookupByName(pool, name)
				if err != nil {
					return wrap(l, err, "the copy %s", name)
				}
				path, err = l.StorageVolGetPath(vol)
				return wrap(l, err, "the copy %s", name)
			case <-tick.C:
				if vol, err := l.StorageVolLookupByName(pool, name); err == nil {
					if _, _, alloc, err := l.StorageVolGetInfo(vol); err == nil {
						progress(alloc)
					}
				}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	return path, err
}

// CheckCopy verifies a published volume: libvirt and its qcow2 header agree
// it is a qcow2 image of the given virtual size, with no backing file.
func (h *Host) CheckCopy(ctx context.Context, path string, capacity uint64) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	vol, err := l.StorageVolLookupByPath(path)
	if err != nil {
		return wrap(l, err, "looking up %s", path)
	}
	info, err := volumeInfo(l, vol)
	if err != nil {
		return wrap(l, err, "%s", path)
	}
	if info.Format != "qcow2" || info.Capacity != capacity {
		return fmt.Errorf("%s is a %s image of %d bytes, want qcow2 of %d", path, info.Format, info.Capacity, capacity)
	}
	head, err := readHead(l, vol, min(headerBytes, info.Physical))
	if err != nil {
		return wrap(l, err, "reading the header of %s", path)
	}
	hd, err := qcow2.Parse(head)
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", path, err)
	case hd.Size != capacity:
		return fmt.Errorf("%s: its header says %d bytes, want %d", path, hd.Size, capacity)
	case hd.BackingFile != "":
		return fmt.Errorf("%s has backing file %s: a version must stand alone", path, hd.BackingFile)
	}
	return nil
}

// DefineVersion defines a version's template domain.
func (h *Host) DefineVersion(ctx context.Context, x string) (*domxml.Version, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	dom, err := l.DomainDefineXML(x)
	if err != nil {
		return nil, wrap(l, err, "defining the version's template")
	}
	v, err := h.version(l, dom)
	if err == nil && v == nil {
		err = errors.New("the defined template carries no version metadata")
	}
	return v, err
}

// WithdrawVersion replaces a template's version metadata (a rollback
// records Withdrawn there) in its persistent definition.
func (h *Host) WithdrawVersion(ctx context.Context, name string, m domxml.VersionMeta) error {
	return h.setMetadata(ctx, name, m.Element(), domxml.VersionNamespace, libvirt.DomainAffectConfig, "recording the rollback of")
}

// DeleteVersion undefines a template, then deletes its volumes: the version
// stops existing first, so a crash in between leaves volumes that the next
// reconcile deletes, never a version without its disks.
func (h *Host) DeleteVersion(ctx context.Context, name string, volumes []string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	dom, err := l.DomainLookupByName(name)
	switch {
	case libvirt.IsNotFound(err):
	case err != nil:
		return wrap(l, err, "looking up %s", name)
	default:
		l.DomainDestroy(dom) // nobody should have started it; it cannot write its disks anyway
		// Keep any NVRAM file: a template's is only ever the golden's, as a template.
		const flags = libvirt.DomainUndefineManagedSave | libvirt.DomainUndefineSnapshotsMetadata |
			libvirt.DomainUndefineKeepNvram | libvirt.DomainUndefineCheckpointsMetadata | libvirt.DomainUndefineKeepTpm
		if err := l.DomainUndefineFlags(dom, flags); err != nil && !libvirt.IsNotFound(err) {
			return wrap(l, err, "undefining %s", name)
		}
	}
	var errs []error
	for _, v := range volumes {
		errs = append(errs, h.DeleteVersionVolume(ctx, v))
	}
	return errors.Join(errs...)
}

// DeleteVersionVolume deletes a volume of the versions pool; one already
// gone is not an error.
func (h *Host) DeleteVersionVolume(ctx context.Context, path string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	vol, err := l.StorageVolLookupByPath(path)
	if hasCode(err, libvirt.ErrNoStorageVol) {
		return nil
	}
	if err != nil {
		return wrap(l, err, "looking up %s", path)
	}
	if err := l.StorageVolDelete(vol, libvirt.StorageVolDeleteNormal); err != nil && !hasCode(err, libvirt.ErrNoStorageVol) {
		return wrap(l, err, "deleting %s", path)
	}
	return nil
}

// volume is what the broker reads of a storage volume.
type volume struct {
	Capacity, Allocation, Physical uint64
	Format                         string
	Modified                       time.Time
}

func volumeInfo(l *libvirt.Libvirt, vol libvirt.StorageVol) (volume, error) {
	x, err := l.StorageVolGetXMLDesc(vol, 0)
	if err != nil {
		return volume{}, err
	}
	var doc struct {
		Capacity   uint64 `xml:"capacity"`
		Allocation uint64 `xml:"allocation"`
		Physical   uint64 `xml:"physical"`
		Target     struct {
			Format struct {
				Type string `xml:"type,attr"`
			} `xml:"format"`
			Mtime string `xml:"timestamps>mtime"`
		} `xml:"target"`
	}
	if err := xml.Unmarshal([]byte(x), &doc); err != nil {
		return volume{}, fmt.Errorf("volume XML of %s: %w", vol.Name, err)
	}
	v := volume{Capacity: doc.Capacity, Allocation: doc.Allocation, Physical: doc.Physical, Format: doc.Target.Format.Type}
	if v.Physical == 0 {
		v.Physical = v.Allocation
	}
	if sec, nsec, ok := strings.Cut(doc.Target.Mtime, "."); doc.Target.Mtime != "" {
		s, _ := strconv.ParseInt(sec, 10, 64)
		ns := int64(0)
		if ok {
			ns, _ = strconv.ParseInt((nsec + "000000000")[:9], 10, 64)
		}
		v.Modified = time.Unix(s, ns).UTC()
	}
	return v, nil
}
