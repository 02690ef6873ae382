package domxml

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/etree"
)

// A published version of a golden VM is a template domain that is never
// started: the golden's definition as it was when published, whose
// writable disks are read-only copies of the golden's disks taken while it
// was shut off. Clones are linked clones of a version, so the golden itself
// may run, change and shut down while the site serves.

// Version is one published version, read back from its template domain.
type Version struct {
	*Golden             // the template's definition; its disks are the version's volumes
	Meta    VersionMeta // the broker's element in the template's <metadata>
}

// VersionMeta is the broker's element in a template domain's <metadata>.
type VersionMeta struct {
	Pool      string
	Seq       int // 1, 2, ...: the version's number within the pool
	Golden    string
	Published time.Time
	Withdrawn time.Time // rolled back: no new clone is made of it
	Sources   []Source  // the golden's disks as they were when copied
}

// Source is one golden disk as a version copied it: how a later change of
// the golden is noticed without reading the disk.
type Source struct {
	Target     string
	Path       string
	Modified   time.Time
	Allocation uint64
}

// Element is the metadata as virDomainSetMetadata takes it.
func (m VersionMeta) Element() string {
	el := etree.NewElement("version")
	for _, f := range []field{{"pool", m.Pool}, {"seq", intText(m.Seq)}, {"golden", m.Golden},
		{"published", timeText(m.Published)}, {"withdrawn", timeText(m.Withdrawn)}} {
		if f.value != "" {
			el.CreateElement(f.name).SetText(f.value)
		}
	}
	for _, s := range m.Sources {
		src := el.CreateElement("source")
		src.CreateAttr("target", s.Target)
		src.CreateAttr("path", s.Path)
		src.CreateAttr("modified", timeText(s.Modified))
		src.CreateAttr("allocation", strconv.FormatUint(s.Allocation, 10))
	}
	return elementText(el)
}

func parseVersionMeta(el *etree.Element) (VersionMeta, error) {
	m := VersionMeta{Pool: childText(el, "pool"), Golden: childText(el, "golden")}
	var err error
	if m.Seq, err = parseInt(el, "seq"); err != nil {
		return m, err
	}
	if m.Seq == 0 {
		return m, errors.New("version metadata without a number")
	}
	if m.Published, err = parseTime(el, "published"); err != nil {
		return m, err
	}
	if m.Withdrawn, err = parseTime(el, "withdrawn"); err != nil {
		return m, err
	}
	for _, src := range el.SelectElements("source") {
		s := Source{Target: src.SelectAttrValue("target", ""), Path: src.SelectAttrValue("path", "")}
		if t := src.SelectAttrValue("modified", ""); t != "" {
			if s.Modified, err = time.Parse(time.RFC3339Nano, t); err != nil {
				return m, fmt.Errorf("version source %s modified %q: %w", s.Target, t, err)
			}
		}
		if s.Allocation, err = strconv.ParseUint(src.SelectAttrValue("allocation", "0"), 10, 64); err != nil {
			return m, fmt.Errorf("version source %s allocation: %w", s.Target, err)
		}
		m.Sources = append(m.Sources, s)
	}
	return m, nil
}

// Template says what makes a version's template domain.
type Template struct {
	Name  string
	UUID  string
	Disks map[string]string // disk target -> the version's copy, for every writable disk
	Meta  VersionMeta
}

// TemplateXML derives a version's template domain from the golden's
// definition: its own name and UUID, every writable disk pointing at the
// version's qcow2 copy, the golden's UEFI variables as a template (never its
// file), and the broker's version metadata. Everything else is the
// golden's, as clones are derived from it.
func (g *Golden) TemplateXML(t Template) (string, error) {
	doc := g.doc.Copy()
	root := doc.Root()
	root.RemoveAttr("id")
	setChild(root, "name", t.Name)
	setChild(root, "uuid", t.UUID)
	setChild(root, "description", fmt.Sprintf("undervdi version %d of %s, published %s: never started; clones are made of it",
		t.Meta.Seq, g.Name, t.Meta.Published.UTC().Format(time.RFC3339)))
	if err := setMetadata(root, VersionNamespace, t.Meta.Element()); err != nil {
		return "", err
	}
	nvramFromTemplate(root)
	if err := pointWritableDisks(root, t.Disks, nil, "copy"); err != nil {
		return "", err
	}
	doc.Indent(2)
	return doc.WriteToString()
}

// ParseVersion reads a template domain's inactive XML. It returns nil and
// no error for a domain that is not a published version.
func ParseVersion(text string) (*Version, error) {
	root, err := readDomain(text)
	if err != nil {
		return nil, err
	}
	el := ownElement(root, VersionNamespace)
	if el == nil {
		return nil, nil
	}
	name := strings.TrimSpace(childText(root, "name"))
	meta, err := parseVersionMeta(el)
	if err != nil {
		return nil, fmt.Errorf("version %s: %w", name, err)
	}
	g, err := ParseGolden(text)
	if err != nil {
		return nil, fmt.Errorf("version %s: %w", name, err)
	}
	return &Version{Golden: g, Meta: meta}, nil
}
