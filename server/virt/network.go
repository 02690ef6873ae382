package virt

import (
	"context"
	"fmt"
	"strings"

	"github.com/beevik/etree"
	"github.com/digitalocean/go-libvirt"
	"github.com/google/uuid"
)

// EnsureNetwork makes the libvirt network that xml defines exist, be
// active and start with the host. An active network whose bridge or
// addresses differ from xml is not touched (restarting it would cut every
// running VM off): the error says what to do.
func (h *Host) EnsureNetwork(ctx context.Context, xml string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	want, err := networkShape(xml)
	if err != nil {
		return err
	}
	net, err := l.NetworkLookupByName(want.name)
	if err == nil {
		if active, err := l.NetworkIsActive(net); err != nil {
			return wrap(l, err, "network %s", want.name)
		} else if active == 1 {
			live, err := l.NetworkGetXMLDesc(net, 0)
			if err != nil {
				return wrap(l, err, "reading network %s", want.name)
			}
			have, err := networkShape(live)
			if err != nil {
				return err
			}
			if have != want {
				return fmt.Errorf("libvirt network %s is active with bridge %s and address %s, not %s and %s: "+
					"stop the broker's VMs and run `virsh net-destroy %s`, and the broker starts it anew",
					want.name, have.bridge, have.ip, want.bridge, want.ip, want.name)
			}
		}
	} else if !hasCode(err, libvirt.ErrNoNetwork) {
		return wrap(l, err, "looking up network %s", want.name)
	}
	// Defining again updates the persistent definition (the clone slots'
	// DHCP hosts among it); an active network keeps running. libvirt
	// takes a new definition of an existing name with its UUID only.
	if err == nil {
		if xml, err = withUUID(xml, net.UUID); err != nil {
			return err
		}
	}
	if net, err = l.NetworkDefineXML(xml); err != nil {
		return wrap(l, err, "defining network %s", want.name)
	}
	if active, err := l.NetworkIsActive(net); err != nil {
		return wrap(l, err, "network %s", want.name)
	} else if active != 1 {
		if err := l.NetworkCreate(net); err != nil {
			return wrap(l, err, "starting network %s", want.name)
		}
		h.log.Info("started the guest network", "network", want.name, "bridge", want.bridge, "gateway", want.ip)
	}
	return wrap(l, l.NetworkSetAutostart(net, 1), "marking network %s autostart", want.name)
}

// shape is what of a network must not change under running VMs.
type shape struct{ name, bridge, ip string }

func networkShape(xml string) (shape, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromString(xml); err != nil {
		return shape{}, fmt.Errorf("network XML: %w", err)
	}
	root := doc.Root()
	if root == nil || root.Tag != "network" {
		return shape{}, fmt.Errorf("network XML: no <network>")
	}
	var s shape
	if n := root.SelectElement("name"); n != nil {
		s.name = strings.TrimSpace(n.Text())
	}
	if b := root.SelectElement("bridge"); b != nil {
		s.bridge = b.SelectAttrValue("name", "")
	}
	if ip := root.SelectElement("ip"); ip != nil {
		s.ip = ip.SelectAttrValue("address", "") + "/" + ip.SelectAttrValue("prefix", ip.SelectAttrValue("netmask", ""))
	}
	return s, nil
}

// DefineFilters defines (or redefines) network filters, in order: a
// filter must come after those it references. libvirt applies a redefined
// filter to the running VMs that use it at once.
func (h *Host) DefineFilters(ctx context.Context, xmls ...string) error {
	l, err := h.conn(ctx)
	if err != nil {
		return err
	}
	for _, x := range xmls {
		name, err := rootName(x, "filter")
		if err != nil {
			return err
		}
		if f, err := l.NwfilterLookupByName(name); err == nil {
			if x, err = withUUID(x, f.UUID); err != nil {
				return err
			}
		} else if !hasCode(err, libvirt.ErrNoNwfilter) {
			return wrap(l, err, "looking up network filter %s", name)
		}
		if _, err := l.NwfilterDefineXML(x); err != nil {
			return wrap(l, err, "defining network filter %s", name)
		}
	}
	return nil
}

// withUUID sets the <uuid> of a libvirt object's definition.
func withUUID(xml string, id libvirt.UUID) (string, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromString(xml); err != nil || doc.Root() == nil {
		return "", fmt.Errorf("libvirt XML: %v", err)
	}
	el := doc.Root().SelectElement("uuid")
	if el == nil {
		el = etree.NewElement("uuid")
		doc.Root().InsertChildAt(0, el)
	}
	el.SetText(uuid.UUID(id).String())
	return doc.WriteToString()
}

// rootName is a definition's name: its root's name attribute (a filter's),
// or its <name>.
func rootName(xml, tag string) (string, error) {
	doc := etree.NewDocument()
	if err := doc.ReadFromString(xml); err != nil || doc.Root() == nil || doc.Root().Tag != tag {
		return "", fmt.Errorf("not a <%s> definition: %v", tag, err)
	}
	if n := doc.Root().SelectAttrValue("name", ""); n != "" {
		return n, nil
	}
	if n := doc.Root().SelectElement("name"); n != nil && strings.TrimSpace(n.Text()) != "" {
		return strings.TrimSpace(n.Text()), nil
	}
	return "", fmt.Errorf("<%s> definition without a name", tag)
}
