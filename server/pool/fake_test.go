package pool

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/digitalocean/go-libvirt"

	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// fakeHV is an in-memory libvirt host for the pool's logic tests. It keeps
// domains and overlays, emits events like libvirt does, and can be told to
// fail. Real libvirt is exercised by the integration tests.
type fakeHV struct {
	events chan virt.Event

	mu        sync.Mutex
	golden    *domxml.Golden
	goldenErr error
	domains   map[string]*fakeDom
	overlays  map[string]bool
	dir       string
	mem       uint64
	pingErr   func(name string) error
	defineErr error
	agentBoot bool // announce the agent right after start
	peak      int  // most domains that existed at once
	created   int
}

type fakeDom struct {
	d       *domxml.Domain
	running bool
}

const fakeGoldenXML = `<domain type='qemu'><name>golden</name><memory unit='MiB'>256</memory><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/golden/disk.qcow2'/><target dev='vda'/></disk>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<graphics type='spice'/></devices></domain>`

func newFakeHV() *fakeHV {
	g, err := domxml.ParseGolden(fakeGoldenXML)
	if err != nil {
		panic(err)
	}
	g.Disks[0].Capacity = 1 << 30
	return &fakeHV{
		events:    make(chan virt.Event, 1024),
		golden:    g,
		domains:   map[string]*fakeDom{},
		overlays:  map[string]bool{},
		mem:       64 << 30,
		agentBoot: true,
		pingErr:   func(string) error { return nil },
	}
}

var errNotFound = libvirt.Error{Code: uint32(libvirt.ErrNoDomain), Message: "domain not found"}

func (f *fakeHV) Events() <-chan virt.Event { return f.events }

func (f *fakeHV) Golden(ctx context.Context, name string) (*domxml.Golden, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.golden, f.goldenErr
}

func (f *fakeHV) PrepareOverlays(ctx context.Context, pool, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dir = dir
	return nil
}

func (f *fakeHV) Overlays(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for o := range f.overlays {
		out = append(out, o)
	}
	return out, nil
}

func (f *fakeHV) CreateOverlay(ctx context.Context, name string, backing domxml.Disk) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := filepath.Join(f.dir, name)
	if f.overlays[p] {
		return "", fmt.Errorf("volume %s exists", name)
	}
	f.overlays[p] = true
	return p, nil
}

func (f *fakeHV) DeleteOverlay(ctx context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.overlays, path)
	return nil
}

func (f *fakeHV) Domains(ctx context.Context, prefix string) ([]*domxml.Domain, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*domxml.Domain
	for name, d := range f.domains {
		if strings.HasPrefix(name, prefix) && d.d.Meta != nil {
			c := *d.d
			c.Running = d.running
			if !d.running {
				c.StopReason = "shutdown"
			}
			m := *d.d.Meta
			c.Meta = &m
			out = append(out, &c)
		}
	}
	return out, nil
}

func (f *fakeHV) DefineAndStart(ctx context.Context, xml string) (*domxml.Domain, error) {
	d, err := domxml.ParseDomain(xml)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.defineErr != nil {
		return nil, f.defineErr
	}
	if _, dup := f.domains[d.Name]; dup {
		return nil, fmt.Errorf("domain %s exists", d.Name)
	}
	d.SpiceSocket = "/run/fake/" + d.Name + ".sock"
	f.domains[d.Name] = &fakeDom{d: d, running: true}
	f.created++
	f.peak = max(f.peak, len(f.domains))
	if f.agentBoot {
		f.events <- virt.Event{Kind: virt.AgentConnected, Domain: d.Name}
	}
	c := *d
	return &c, nil
}

func (f *fakeHV) Destroy(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.domains, name)
	return nil
}

func (f *fakeHV) SetMetadata(ctx context.Context, name string, m domxml.Metadata) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.domains[name]
	if d == nil || !d.running {
		return errNotFound
	}
	d.d.Meta = &m
	return nil
}

func (f *fakeHV) Ping(ctx context.Context, name string) error {
	f.mu.Lock()
	d := f.domains[name]
	ping := f.pingErr
	f.mu.Unlock()
	if d == nil || !d.running {
		return errNotFound
	}
	return ping(name)
}

// AvailableMemory is f.mem less what running clones use.
func (f *fakeHV) AvailableMemory(ctx context.Context) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	used := uint64(0)
	for _, d := range f.domains {
		if d.running {
			used += f.golden.Memory
		}
	}
	return f.mem - min(used, f.mem), nil
}

// stop powers a domain off from "inside the guest", as libvirt reports it.
func (f *fakeHV) stop(name string) {
	f.mu.Lock()
	if d := f.domains[name]; d != nil {
		d.running = false
	}
	f.mu.Unlock()
	f.events <- virt.Event{Kind: virt.Stopped, Domain: name, Detail: "shutdown"}
}

// seed adds a domain as an earlier broker run left it.
func (f *fakeHV) seed(name string, state domxml.State, running bool, overlay string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.domains[name] = &fakeDom{running: running, d: &domxml.Domain{
		Name: name, Running: running,
		Meta:  &domxml.Metadata{Pool: "t", State: state, Golden: "golden"},
		Disks: []domxml.Disk{{Target: "vda", Device: "disk", Type: "file", Path: overlay, Format: "qcow2"}},
	}}
	f.overlays[overlay] = true
}

func (f *fakeHV) domainNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.domains {
		out = append(out, n)
	}
	return out
}

// counts returns how many clones were made and the most that existed at once.
func (f *fakeHV) counts() (created, peak int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.created, f.peak
}

func (f *fakeHV) overlayCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.overlays)
}

var _ Hypervisor = (*fakeHV)(nil)
var _ Hypervisor = (*virt.Host)(nil)
