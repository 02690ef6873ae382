package domxml

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/etree"
)

// Metadata is the broker's element in a clone's <metadata>: all a broker
// that restarts knows of the VM. State is the pool's word for where the VM
// is (booting, clean, offered, in-use, ending); domxml only stores it.
type Metadata struct {
	Pool    string
	State   string
	Since   time.Time
	Golden  string
	Version int // the published version the clone is a linked clone of

	// Who had the VM, recorded when it is offered, so that a session a
	// crash interrupted still gets its audit line after the restart.
	Kiosk   string
	Lease   string
	Addr    string
	Offered time.Time
	Linked  time.Time // the first SPICE link: the VM is used
	Reason  string    // why it is ending
	// Policy is the site's settings the clone's domain was made with (its
	// USB filter): a clean clone of another policy is not the site's.
	Policy string
}

// Element is the metadata as the single element virDomainSetMetadata takes;
// libvirt puts it in the broker's namespace. Empty fields are left out.
func (m Metadata) Element() string {
	el := etree.NewElement("vm")
	for _, f := range m.fields() {
		if f.value != "" {
			el.CreateElement(f.name).SetText(f.value)
		}
	}
	return elementText(el)
}

// elementText writes el as XML text.
func elementText(el *etree.Element) string {
	doc := etree.NewDocument()
	doc.SetRoot(el)
	s, err := doc.WriteToString()
	if err != nil {
		panic(err) // writing an element tree to a string cannot fail
	}
	return s
}

type field struct{ name, value string }

func (m Metadata) fields() []field {
	return []field{
		{"pool", m.Pool}, {"state", m.State}, {"since", timeText(m.Since)}, {"golden", m.Golden},
		{"version", intText(m.Version)}, {"kiosk", m.Kiosk}, {"lease", m.Lease}, {"addr", m.Addr},
		{"offered", timeText(m.Offered)}, {"linked", timeText(m.Linked)}, {"reason", m.Reason}, {"policy", m.Policy},
	}
}

func parseMetadata(el *etree.Element) (*Metadata, error) {
	m := &Metadata{
		Pool: childText(el, "pool"), State: childText(el, "state"), Golden: childText(el, "golden"),
		Kiosk: childText(el, "kiosk"), Lease: childText(el, "lease"), Addr: childText(el, "addr"),
		Reason: childText(el, "reason"), Policy: childText(el, "policy"),
	}
	var err error
	if m.Version, err = parseInt(el, "version"); err != nil {
		return nil, err
	}
	for name, t := range map[string]*time.Time{"since": &m.Since, "offered": &m.Offered, "linked": &m.Linked} {
		if *t, err = parseTime(el, name); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// setMetadata replaces the element of namespace ns in root's <metadata> with
// the element in text.
func setMetadata(root *etree.Element, ns, text string) error {
	md := root.SelectElement("metadata")
	if md == nil {
		md = root.CreateElement("metadata")
	}
	for _, el := range md.ChildElements() {
		if el.NamespaceURI() == Namespace || el.NamespaceURI() == VersionNamespace {
			md.RemoveChild(el) // a clone or a version is one thing: never both
		}
	}
	frag := etree.NewDocument()
	if err := frag.ReadFromString(text); err != nil {
		return err
	}
	own := frag.Root()
	own.Space = Prefix
	own.CreateAttr("xmlns:"+Prefix, ns)
	md.AddChild(own)
	return nil
}

// ownElement returns the element of namespace ns in root's <metadata>.
func ownElement(root *etree.Element, ns string) *etree.Element {
	if md := root.SelectElement("metadata"); md != nil {
		for _, el := range md.ChildElements() {
			if el.NamespaceURI() == ns {
				return el
			}
		}
	}
	return nil
}

func timeText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func intText(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

func parseTime(el *etree.Element, name string) (time.Time, error) {
	s := childText(el, name)
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("metadata %s %q: %w", name, s, err)
	}
	return t, nil
}

func parseInt(el *etree.Element, name string) (int, error) {
	s := strings.TrimSpace(childText(el, name))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("metadata %s %q is not a number", name, s)
	}
	return n, nil
}
