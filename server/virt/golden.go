package virt

import (
	"context"
	"errors"
	"fmt"

	"github.com/digitalocean/go-libvirt"

	"undervdi/server/domxml"
	"undervdi/server/qcow2"
)

// ErrRunning is returned, with domxml.ErrGolden, by Golden for a golden VM
// that runs: it cannot be published now, and clones of its published
// versions are not affected.
var ErrRunning = errors.New("golden VM running")

// running is a golden error that is also ErrRunning, with the golden
// error's words alone.
type running struct{ error }

func (running) Is(target error) bool { return target == ErrRunning }
func (r running) Unwrap() error      { return r.error }

// headerBytes is how much of a golden disk is read to check its header: the
// qcow2 header and, where qemu-img puts it, the backing file name.
const headerBytes = 64 << 10

// Golden reads the golden domain and checks it can be cloned: it exists and
// is shut off, has no libvirt snapshots, and each writable disk is a qcow2 or
// raw file image, in the format the XML declares, with no internal snapshots
// and no backing file. Errors wrap domxml.ErrGolden and say what to do.
func (h *Host) Golden(ctx context.Context, name string) (*domxml.Golden, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %q %s", domxml.ErrGolden, name, fmt.Sprintf(format, args...))
	}
	dom, err := l.DomainLookupByName(name)
	if libvirt.IsNotFound(err) {
		return nil, bad("does not exist on %s (virsh list --all shows the domains)", h.uri)
	}
	if err != nil {
		return nil, wrap(l, err, "looking up golden %s", name)
	}
	state, _, err := l.DomainGetState(dom, 0)
	if err != nil {
		return nil, wrap(l, err, "golden %s", name)
	}
	if libvirt.DomainState(state) != libvirt.DomainShutoff {
		return nil, running{bad("is %s: shut it down to publish it (a running VM's disk is not consistent; the pool keeps serving the published version)", stateName(state))}
	}
	if n, err := l.DomainSnapshotNum(dom, 0); err != nil {
		return nil, wrap(l, err, "golden %s", name)
	} else if n > 0 {
		return nil, bad("has %d libvirt snapshot(s): delete them (virsh snapshot-list %s) so clones start from one known state", n, name)
	}
	x, err := l.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive|libvirt.DomainXMLSecure)
	if err != nil {
		return nil, wrap(l, err, "golden %s", name)
	}
	g, err := domxml.ParseGolden(x)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i := range g.Disks {
		if !g.Disks[i].Writable() {
			continue
		}
		if err := checkGoldenDisk(l, &g.Disks[i]); err != nil {
			if !l.IsConnected() {
				return nil, wrap(l, err, "golden %s", name)
			}
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %q: %w", domxml.ErrGolden, name, errors.Join(errs...))
	}
	return g, nil
}

// checkGoldenDisk checks one writable disk through the storage API and
// fills in its virtual size, what it holds and when it was last written.
func checkGoldenDisk(l *libvirt.Libvirt, d *domxml.Disk) error {
	err := withVolume(l, d.Path, func(vol libvirt.StorageVol) error {
		info, err := volumeInfo(l, vol)
		if err != nil {
			return err
		}
		d.Capacity, d.Allocation, d.Modified = info.Capacity, info.Allocation, info.Modified
		head, err := readHead(l, vol, min(headerBytes, info.Capacity))
		if err != nil {
			return fmt.Errorf("reading its header: %w", err)
		}
		switch d.Format {
		case "raw":
			if qcow2.IsQCOW2(head) {
				return fmt.Errorf("is declared raw but holds a qcow2 image: declare <driver type='qcow2'/>")
			}
		case "qcow2":
			hd, err := qcow2.Parse(head)
			if err != nil {
				return fmt.Errorf("is declared qcow2: %w", err)
			}
			if hd.Snapshots > 0 {
				return fmt.Errorf("has %d internal snapshot(s): delete them (qemu-img snapshot -l/-d) so clones start from one known state", hd.Snapshots)
			}
			if hd.BackingFile != "" {
				return fmt.Errorf("has backing file %s: flatten it first (qemu-img convert -O qcow2)", hd.BackingFile)
			}
			d.Capacity = hd.Size
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("disk %s (%s): %w", d.Target, d.Path, err)
	}
	return nil
}

func stateName(s int32) string {
	switch libvirt.DomainState(s) {
	case libvirt.DomainRunning:
		return "running"
	case libvirt.DomainPaused:
		return "paused"
	case libvirt.DomainShutoff:
		return "shut off"
	}
	return fmt.Sprintf("in state %d", s)
}
