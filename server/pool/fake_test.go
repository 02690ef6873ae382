package pool

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

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
	network   string   // the guest network last ensured
	filters   []string // the network filters defined, in order
	overlays  map[string]bool
	dir       string
	versions  map[string]string // template name -> XML
	volumes   map[string]uint64 // version volume path -> capacity
	vdir      string
	space     uint64
	deleteErr func(path string) error // fails an overlay deletion
	step      func(step string)       // called at "copy", "copied" and "define" while publishing
	backing   map[string]string       // overlay path -> its backing file
	running   bool                    // the golden VM runs
	mem       uint64
	pingErr   func(name string) error
	defineErr error
	agentBoot bool // announce the agent right after start
	peak      int  // most domains that existed at once
	created   int
	// metaGate, if set, holds every SetMetadata until it is closed;
	// metaHeld counts those held.
	metaGate chan struct{}
	metaHeld int
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
	g.Disks[0].Allocation = 64 << 20
	return &fakeHV{
		events:    make(chan virt.Event, 1024),
		golden:    g,
		domains:   map[string]*fakeDom{},
		overlays:  map[string]bool{},
		versions:  map[string]string{},
		backing:   map[string]string{},
		volumes:   map[string]uint64{},
		space:     100 << 30,
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
	if f.running {
		return nil, fmt.Errorf("%w: %q is running: shut it down", domxml.ErrGolden, name)
	}
	return f.golden, f.goldenErr
}

// writeGolden plays an operator updating the golden: its disk changes.
func (f *fakeHV) writeGolden() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.golden.Disks[0].Allocation += 1 << 20
	f.golden.Disks[0].Modified = f.golden.Disks[0].Modified.Add(time.Second)
}

func (f *fakeHV) PrepareStorage(ctx context.Context, pool, dir, vdir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dir, f.vdir = dir, vdir
	return nil
}

func (f *fakeHV) Versions(ctx context.Context, prefix string) ([]*domxml.Version, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*domxml.Version
	for name, x := range f.versions {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		v, err := domxml.ParseVersion(x)
		if err != nil {
			return nil, err
		}
		for i, d := range v.Disks {
			v.Disks[i].Capacity = f.volumes[d.Path]
		}
		out = append(out, v)
	}
	return out, nil
}

func (f *fakeHV) VersionVolumes(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for p := range f.volumes {
		out = append(out, p)
	}
	return out, nil
}

func (f *fakeHV) VersionSpace(ctx context.Context) (uint64, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.space, "t-versions", nil
}

func (f *fakeHV) CopyDisk(ctx context.Context, src domxml.Disk, name string, progress func(uint64)) (string, error) {
	f.mu.Lock()
	if err := ctx.Err(); err != nil {
		f.mu.Unlock()
		return "", err // a killed broker does nothing more
	}
	p := filepath.Join(f.vdir, name)
	if _, dup := f.volumes[p]; dup {
		f.mu.Unlock()
		return "", fmt.Errorf("volume %s exists", name)
	}
	f.volumes[p] = src.Capacity // as libvirt does: the volume exists while it is copied
	f.mu.Unlock()
	f.at("copy")
	progress(src.Allocation)
	f.at("copied")
	return p, nil
}

// at runs the step hook, which may block: a broker killed there.
func (f *fakeHV) at(step string) {
	f.mu.Lock()
	hook := f.step
	f.mu.Unlock()
	if hook != nil {
		hook(step)
	}
}

func (f *fakeHV) CheckCopy(ctx context.Context, path string, capacity uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.volumes[path]; !ok || c != capacity {
		return fmt.Errorf("copy %s: capacity %d, want %d", path, c, capacity)
	}
	return nil
}

func (f *fakeHV) DefineVersion(ctx context.Context, xml string) (*domxml.Version, error) {
	f.at("define")
	v, err := domxml.ParseVersion(xml)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err // a killed broker does nothing more
	}
	f.versions[v.Name] = xml
	for i, d := range v.Disks {
		v.Disks[i].Capacity = f.volumes[d.Path]
	}
	return v, nil
}

func (f *fakeHV) WithdrawVersion(ctx context.Context, name string, m domxml.VersionMeta) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err // a killed broker does nothing more
	}
	x, ok := f.versions[name]
	if !ok {
		return errNotFound
	}
	v, _ := domxml.ParseVersion(x)
	disks := map[string]string{}
	for _, d := range v.WritableDisks() {
		disks[d.Target] = d.Path
	}
	nx, err := v.TemplateXML(domxml.Template{Name: name, UUID: "u", Disks: disks, Meta: m})
	f.versions[name] = nx
	return err
}

func (f *fakeHV) DeleteVersion(ctx context.Context, name string, volumes []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err // a killed broker does nothing more
	}
	delete(f.versions, name)
	for _, v := range volumes {
		delete(f.volumes, v)
	}
	return nil
}

func (f *fakeHV) DeleteVersionVolume(ctx context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err // a killed broker does nothing more
	}
	delete(f.volumes, path)
	return nil
}

// versionNames returns the defined versions' template names.
func (f *fakeHV) versionNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.versions {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
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

func (f *fakeHV) EnsureNetwork(ctx context.Context, xml string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.network = xml
	return nil
}

func (f *fakeHV) DefineFilters(ctx context.Context, xmls ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.filters = append(f.filters, xmls...)
	return nil
}

func (f *fakeHV) CreateOverlay(ctx context.Context, name string, backing domxml.Disk, encrypt bool) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return "", "", err // a killed broker does nothing more
	}
	p := filepath.Join(f.dir, name)
	if f.overlays[p] {
		return "", "", fmt.Errorf("volume %s exists", name)
	}
	f.overlays[p] = true
	f.backing[p] = backing.Path
	return p, "", nil
}

func (f *fakeHV) DeleteOverlay(ctx context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err // a killed broker does nothing more
	}
	if f.deleteErr != nil {
		if err := f.deleteErr(path); err != nil {
			return err
		}
	}
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
	if err := ctx.Err(); err != nil {
		return nil, err // a killed broker does nothing more
	}
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
	if err := ctx.Err(); err != nil {
		return err // a killed broker does nothing more
	}
	delete(f.domains, name)
	return nil
}

func (f *fakeHV) SetMetadata(ctx context.Context, name string, m domxml.Metadata) error {
	f.mu.Lock()
	if g := f.metaGate; g != nil {
		f.metaHeld++
		f.mu.Unlock()
		<-g
		f.mu.Lock()
		f.metaHeld--
	}
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err // a killed broker does nothing more
	}
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

// seed adds a domain as an earlier broker run left it, a clone of version 1.
func (f *fakeHV) seed(name string, state string, running bool, overlay string) {
	f.seedMeta(name, domxml.Metadata{Pool: "t", State: state, Golden: "golden", Version: 1}, running, overlay)
}

func (f *fakeHV) seedMeta(name string, m domxml.Metadata, running bool, overlay string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.domains[name] = &fakeDom{running: running, d: &domxml.Domain{
		Name: name, Running: running,
		Meta:  &m,
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
