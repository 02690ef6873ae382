package config

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// Imported is a broker configuration made from the original's
// vm_manager.conf: the documented example with the keys it could carry
// over, and a note for everything it could not.
type Imported struct {
	TOML  string
	Notes []string
}

// noSuccessor are the original's keys the broker has no use for, and why.
var noSuccessor = map[string]string{
	"srv_start_port_pool": "clones' SPICE listens on a unix socket, never on a TCP port per VM",
	"srv_tmp_dir":         "the pool's state lives in libvirt's domain metadata, not in state files",
	"srv_scripts_dir":     "the broker runs no scripts",
}

// ImportLegacy reads the original's /etc/vm_manager.conf ("key = value"
// lines, read by the original with grep and cut) and maps it as
// docs/broker.md says: base_host → golden, srv_pool_size → pool_size,
// vdi_spice_port → [gateway] listen, count_conn_tryes → [gateway]
// connect_window (seconds), input_iface → the address every kiosk-facing
// port listens on. addrOf finds an interface's address (net's, in
// vdi-broker). A value it cannot read is an error; a key it cannot carry
// over is a note. The result is checked to parse and validate.
func ImportLegacy(r io.Reader, addrOf func(iface string) (string, error)) (*Imported, error) {
	vals := map[string]string{}
	var out Imported
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not key = value", n, line)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case noSuccessor[key] != "":
			out.Notes = append(out.Notes, fmt.Sprintf("%s = %s: not carried over: %s", key, val, noSuccessor[key]))
		case key == "base_host" || key == "srv_pool_size" || key == "vdi_spice_port" || key == "count_conn_tryes" || key == "input_iface":
			vals[key] = val
		default:
			out.Notes = append(out.Notes, fmt.Sprintf("line %d: unknown key %q: not carried over", n, key))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}

	c := exampleLines()
	if v := vals["base_host"]; v != "" {
		c.set("", "golden", strconv.Quote(v))
	} else {
		out.Notes = append(out.Notes, "no base_host: set golden to your golden VM's libvirt name")
	}
	if v, ok := vals["srv_pool_size"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("srv_pool_size = %s: not a pool size (a number, at least 1)", v)
		}
		c.set("", "pool_size", strconv.Itoa(n))
		c.set("", "max_vms", strconv.Itoa(max(8, 2*n))) // the pool, and as many in use
	}
	if v, ok := vals["count_conn_tryes"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("count_conn_tryes = %s: not a number of seconds (at least 1)", v)
		}
		c.set("gateway", "connect_window", strconv.Quote(fmt.Sprintf("%ds", n)))
	}
	host := ""
	if iface := vals["input_iface"]; iface != "" {
		addr, err := addrOf(iface)
		if err != nil {
			out.Notes = append(out.Notes, fmt.Sprintf("input_iface = %s: %v; the kiosk ports listen on every address: "+
				"put the kiosk network's address in [gateway], [sessions] and [ads] yourself", iface, err))
		} else {
			host = addr
		}
	}
	spice := "5906"
	if v, ok := vals["vdi_spice_port"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("vdi_spice_port = %s: not a port", v)
		}
		spice = strconv.Itoa(n)
	}
	for _, l := range []struct{ section, key, port string }{
		{"gateway", "listen", spice}, {"gateway", "tls_listen", "5909"}, {"sessions", "listen", "5907"},
		{"sessions", "legacy_listen", "5905"}, {"ads", "listen", "5908"},
	} {
		c.set(l.section, l.key, strconv.Quote(net.JoinHostPort(host, l.port)))
	}
	out.Notes = append(out.Notes, "the original served any address on its signal port: add a [[kiosk]] with "+
		"legacy = true for each kiosk still running remote.sh (their addresses), and the other kiosks with tokens")

	var b strings.Builder
	b.WriteString("# Made by vdi-broker import-legacy from the original's vm_manager.conf.\n")
	for _, n := range out.Notes {
		b.WriteString("# NOTE: " + n + "\n")
	}
	b.WriteString("\n" + strings.Join(c.lines, "\n"))
	out.TOML = b.String()
	if _, err := Parse([]byte(out.TOML)); err != nil {
		return nil, fmt.Errorf("the imported configuration does not validate: %w", err)
	}
	return &out, nil
}

// tomlLines is the example configuration, edited key by key.
type tomlLines struct{ lines []string }

func exampleLines() *tomlLines {
	return &tomlLines{lines: strings.Split(strings.TrimRight(Example, "\n"), "\n")}
}

// set replaces the value of key in section ("" for the top level); the
// example has every key it is asked for.
func (t *tomlLines) set(section, key, value string) {
	cur := ""
	for i, l := range t.lines {
		if strings.HasPrefix(l, "[") {
			cur = strings.Trim(l, "[]")
			continue
		}
		if cur == section && strings.HasPrefix(l, key+" = ") {
			t.lines[i] = key + " = " + value
			return
		}
	}
	panic(fmt.Sprintf("config: the example has no %s.%s", section, key))
}
