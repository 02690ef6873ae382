package virt

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/digitalocean/go-libvirt"

	"undervdi/server/domxml"
)

// ErrAgent is returned by Ping when the guest agent does not answer.
var ErrAgent = errors.New("guest agent did not answer")

// Domains returns the domains whose names start with prefix and that carry
// the broker's metadata, read with the secure flag (SPICE passwords included).
func (h *Host) Domains(ctx context.Context, prefix string) ([]*domxml.Domain, error) {
	return listDomains(h, ctx, prefix, func(l *libvirt.Libvirt, dom libvirt.Domain) (*domxml.Domain, bool, error) {
		d, err := h.domain(l, dom)
		return d, err == nil && d.Meta != nil, err
	})
}

// listDomains reads every domain whose name starts with prefix with read,
// keeping those it says to; a domain gone between the listing and its
// reading is passed over.
func listDomains[T any](h *Host, ctx context.Context, prefix string, read func(*libvirt.Libvirt, libvirt.Domain) (T, bool, error)) ([]T, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	doms, _, err := l.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, wrap(l, err, "listing domains")
	}
	var out []T
	for _, dom := range doms {
		if !strings.HasPrefix(dom.Name, prefix) {
			continue
		}
		v, keep, err := read(l, dom)
		if libvirt.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if keep {
			out = append(out, v)
		}
	}
	return out, nil
}

// Domain returns one domain's live definition, or an error satisfying
// libvirt.IsNotFound.
func (h *Host) Domain(ctx context.Context, name string) (*domxml.Domain, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		return nil, wrap(l, err, "looking up %s", name)
	}
	return h.domain(l, dom)
}

func (h *Host) domain(l *libvirt.Libvirt, dom libvirt.Domain) (*domxml.Domain, error) {
	x, err := l.DomainGetXMLDesc(dom, libvirt.DomainXMLSecure)
	if err != nil {
		return nil, wrap(l, err, "reading the XML of %s", dom.Name)
	}
	d, err := domxml.ParseDomain(x)
	if err != nil || d.Running {
		return d, err
	}
	_, reason, err := l.DomainGetState(dom, 0)
	if err != nil {
		return nil, wrap(l, err, "reading the state of %s", dom.Name)
	}
	d.StopReason = "unknown"
	if r, ok := shutoffReasons[libvirt.DomainShutoffReason(reason)]; ok {
		d.StopReason = r
	}
	return d, nil
}

// shutoffReasons name a shut-off domain's reason as Stopped events do.
var shutoffReasons = map[libvirt.DomainShutoffReason]string{
	libvirt.DomainShutoffShutdown:  "shutdown",
	libvirt.DomainShutoffDestroyed: "destroyed",
	libvirt.DomainShutoffCrashed:   "crashed",
	libvirt.DomainShutoffMigrated:  "migrated",
	libvirt.DomainShutoffSaved:     "saved",
	libvirt.DomainShutoffFailed:    "failed",
}

// DefineAndStart defines a persistent domain and starts it. If it cannot be
// started, the definition is removed again.
func (h *Host) DefineAndStart(ctx context.Context, xml string) (*domxml.Domain, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return nil, err
	}
	// No VIR_DOMAIN_DEFINE_VALIDATE: libvirt 9.0 fails it at random when two
	// defines run at once ("Unable to parse RNG"), and the definition is
	// derived from a golden libvirt already accepted.
	dom, err := l.DomainDefineXML(xml)
	if err != nil {
		return nil, wrap(l, err, "defining the clone")
	}
	if err := l.DomainCreate(dom); err != nil {
		l.DomainUndefineFlags(dom, undefineFlags)
		return nil, wrap(l, err, "starting %s", dom.Name)
	}
	return h.domain(l, dom)
}

// undefineFlags remove everything libvirt keeps for a domain besides its
// disks: managed save, snapshot and checkpoint metadata, UEFI variables, TPM.
const undefineFlags = libvirt.DomainUndefineManagedSave | libvirt.DomainUndefineSnapshotsMetadata |
	libvirt.DomainUndefineNvram | libvirt.DomainUndefineCheckpointsMetadata | libvirt.DomainUndefineTpm

// Destroy powers a domain off at once and undefines it. A domain that is
// already gone is not an error.
func (h *Host) Destroy(ctx context.Context, name string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	dom, err := l.DomainLookupByName(name)
	if libvirt.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return wrap(l, err, "looking up %s", name)
	}
	if err := l.DomainDestroyFlags(dom, libvirt.DomainDestroyDefault); err != nil &&
		!libvirt.IsNotFound(err) && !hasCode(err, libvirt.ErrOperationInvalid) {
		return wrap(l, err, "destroying %s", name)
	}
	if err := l.DomainUndefineFlags(dom, undefineFlags); err != nil && !libvirt.IsNotFound(err) {
		return wrap(l, err, "undefining %s", name)
	}
	return nil
}

// SetMetadata records the broker's metadata in a running domain's live
// definition. Only the live one matters: it survives libvirtd restarts (in
// libvirt's status file), and a domain that stops is destroyed whatever its
// persistent definition says (which stays "booting", never clean). Writing
// the persistent one too would cost an fsync'd file per offer.
func (h *Host) SetMetadata(ctx context.Context, name string, m domxml.Metadata) error {
	return h.setMetadata(ctx, name, m.Element(), domxml.Namespace, libvirt.DomainAffectLive, "recording state "+m.State+" of")
}

// setMetadata puts element, in the broker's namespace ns, into a domain's
// live or persistent definition (impact).
func (h *Host) setMetadata(ctx context.Context, name, element, ns string, impact libvirt.DomainModificationImpact, what string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		return wrap(l, err, "looking up %s", name)
	}
	err = l.DomainSetMetadata(dom, int32(libvirt.DomainMetadataElement),
		libvirt.OptString{element}, libvirt.OptString{domxml.Prefix}, libvirt.OptString{ns}, impact)
	return wrap(l, err, "%s %s", what, name)
}

// Ping asks the domain's guest agent for guest-ping.
func (h *Host) Ping(ctx context.Context, name string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		return wrap(l, err, "looking up %s", name)
	}
	if _, err := l.QEMUDomainAgentCommand(dom, `{"execute":"guest-ping"}`, 5, 0); err != nil {
		if !l.IsConnected() {
			return wrap(l, err, "pinging the guest agent of %s", name)
		}
		return fmt.Errorf("%w: %s: %v", ErrAgent, name, err)
	}
	return nil
}

// AgentCommand runs a guest agent command (JSON) and returns its answer.
// Tests use it to act inside a guest.
func (h *Host) AgentCommand(ctx context.Context, name, cmd string) (string, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return "", err
	}
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		return "", wrap(l, err, "looking up %s", name)
	}
	res, err := l.QEMUDomainAgentCommand(dom, cmd, 10, 0)
	if err != nil {
		return "", wrap(l, err, "guest agent of %s", name)
	}
	if len(res) == 0 {
		return "", nil
	}
	return res[0], nil
}

// AvailableMemory is the host's free memory plus buffers and page cache, in
// bytes: what new VMs can take without pushing others out.
func (h *Host) AvailableMemory(ctx context.Context) (uint64, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return 0, err
	}
	const allCells = -1
	_, n, err := l.NodeGetMemoryStats(0, allCells, 0)
	if err != nil {
		return 0, wrap(l, err, "reading host memory")
	}
	params, _, err := l.NodeGetMemoryStats(n, allCells, 0)
	if err != nil {
		return 0, wrap(l, err, "reading host memory")
	}
	var kib uint64
	for _, p := range params {
		switch p.Field {
		case "free", "buffers", "cached":
			kib += p.Value
		}
	}
	return kib << 10, nil
}

// HostInfo is what libvirt says of the host, for vdi-broker check-host.
type HostInfo struct {
	LibvirtVersion    string // "9.0.0"
	HypervisorVersion string // QEMU's, "7.2.0"
	Hypervisor        string // "QEMU"
	CPUs              int
	Memory            uint64 // bytes
}

// Info reads the host's libvirt and QEMU versions, CPUs and memory.
func (h *Host) Info(ctx context.Context) (HostInfo, error) {
	l, err := h.conn(ctx)
	if err != nil {
		return HostInfo{}, err
	}
	var out HostInfo
	lib, err := l.ConnectGetLibVersion()
	if err != nil {
		return out, wrap(l, err, "reading libvirt's version")
	}
	out.LibvirtVersion = version(lib)
	if hv, err := l.ConnectGetVersion(); err == nil {
		out.HypervisorVersion = version(hv)
	}
	if t, err := l.ConnectGetType(); err == nil {
		out.Hypervisor = t
	}
	_, mem, cpus, _, _, _, _, _, err := l.NodeGetInfo()
	if err != nil {
		return out, wrap(l, err, "reading the host's CPUs and memory")
	}
	out.CPUs, out.Memory = int(cpus), mem<<10
	return out, nil
}

// version spells libvirt's major*1e6+minor*1e3+micro.
func version(v uint64) string { return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000) }
