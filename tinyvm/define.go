package tinyvm

import (
	"errors"
	"fmt"
	"html"
	"os"

	"github.com/digitalocean/go-libvirt"
)

// DiskSize is the usual virtual size of the tiny golden's disk. The guest
// only writes to it in tests, so any size works.
const DiskSize = 64 << 20

// Golden describes a defined tiny golden VM.
type Golden struct {
	Name     string // domain name
	Pool     string // storage pool holding its disk
	Dir      string // the pool's directory
	DiskPath string
}

// Define creates the tiny golden VM on libvirt: a storage pool at dir with an
// empty qcow2 disk of diskSize bytes (virtual), and a shut-off domain that
// boots art directly. memMiB is the guest's memory.
func Define(l *libvirt.Libvirt, name, dir string, art *Artifacts, memMiB int, diskSize uint64) (*Golden, error) {
	g := &Golden{Name: name, Pool: name + "-disks", Dir: dir, DiskPath: dir + "/" + name + ".qcow2"}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pool, err := l.StoragePoolDefineXML(fmt.Sprintf(`<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>`,
		html.EscapeString(g.Pool), html.EscapeString(dir)), 0)
	if err != nil {
		return nil, fmt.Errorf("defining storage pool %s: %w", g.Pool, err)
	}
	if err := l.StoragePoolCreate(pool, 0); err != nil {
		return nil, fmt.Errorf("starting storage pool %s: %w", g.Pool, err)
	}
	if err := l.StoragePoolSetAutostart(pool, 1); err != nil {
		return nil, err
	}
	_, err = l.StorageVolCreateXML(pool, fmt.Sprintf(`<volume><name>%s.qcow2</name><capacity unit='bytes'>%d</capacity>`+
		`<target><format type='qcow2'/></target></volume>`, html.EscapeString(name), diskSize), 0)
	if err != nil {
		return nil, fmt.Errorf("creating the golden disk: %w", err)
	}
	if _, err := l.DomainDefineXML(DomainXML(name, g.DiskPath, art, memMiB)); err != nil {
		return nil, fmt.Errorf("defining %s: %w", name, err)
	}
	return g, nil
}

// Remove undefines the golden and deletes its disk and storage pool.
func (g *Golden) Remove(l *libvirt.Libvirt) error {
	var errs []error
	if dom, err := l.DomainLookupByName(g.Name); err == nil {
		l.DomainDestroy(dom)
		errs = append(errs, l.DomainUndefineFlags(dom, libvirt.DomainUndefineNvram))
	}
	if pool, err := l.StoragePoolLookupByName(g.Pool); err == nil {
		if vol, err := l.StorageVolLookupByName(pool, g.Name+".qcow2"); err == nil {
			errs = append(errs, l.StorageVolDelete(vol, 0))
		}
		l.StoragePoolDestroy(pool)
		errs = append(errs, l.StoragePoolUndefine(pool))
	}
	errs = append(errs, os.RemoveAll(g.Dir))
	return errors.Join(errs...)
}

// DomainXML is the tiny golden's definition: direct kernel boot under TCG,
// a virtio disk, user-mode networking (nothing on the host's network; a
// broker puts its clones on its guest network instead), a virtio RNG, the
// guest agent channel, SPICE with a USB controller and two USB redirection
// slots, as a real golden for kiosks has.
func DomainXML(name, disk string, art *Artifacts, memMiB int) string {
	e := html.EscapeString
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 console=tty0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'/>
    <console type='pty'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='spice' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <video><model type='qxl'/></video>
    <controller type='usb' model='qemu-xhci'/>
    <redirdev bus='usb' type='spicevmc'/>
    <redirdev bus='usb' type='spicevmc'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>`, e(name), memMiB, e(art.Kernel), e(art.Initramfs), e(disk))
}
