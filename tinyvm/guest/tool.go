package main

// The guest's test tools: run with arguments (the host starts them through
// the guest agent's guest-exec), the binary configures the network by DHCP,
// (with the lease's router as the default route), fetches URLs, dials
// addresses, sets a default route, spoofs its addresses, and writes and
// reads its disk, printing one line of JSON. Tests use them to see the guest
// network's filters and the disk encryption from inside a real guest.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
	"unsafe"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	leaseFile = "/tmp/net.json"
	nic       = "eth0"
	disk      = "/dev/vda"
)

// lease is what `guest net` learnt by DHCP.
type lease struct {
	IP      string `json:"ip"`
	Prefix  int    `json:"prefix"`
	Server  string `json:"server"`
	DNS     string `json:"dns"`
	Gateway string `json:"gateway,omitempty"`
}

// tool runs one tool and returns the process's exit status.
func tool(args []string) int {
	out := json.NewEncoder(os.Stdout)
	// No tool runs for long: one that hangs says so rather than leaving
	// the guest agent's caller waiting.
	time.AfterFunc(45*time.Second, func() {
		out.Encode(map[string]string{"error": fmt.Sprintf("%s: timed out", args[0])})
		os.Exit(2)
	})
	res, err := runTool(args)
	if err != nil {
		out.Encode(map[string]string{"error": err.Error()})
		return 1
	}
	out.Encode(res)
	return 0
}

func runTool(args []string) (any, error) {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	switch args[0] {
	case "net":
		return dhcp()
	case "get":
		proxy := fs.String("proxy", "", "explicit proxy URL")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			return nil, errors.New("usage: get [-proxy URL] URL")
		}
		return get(fs.Arg(0), *proxy)
	case "resolve":
		if len(args) != 2 {
			return nil, errors.New("usage: resolve NAME")
		}
		addrs, err := resolver().LookupHost(context.Background(), args[1])
		return map[string]any{"addrs": addrs}, err
	case "dial":
		src := fs.String("src", "", "source address")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			return nil, errors.New("usage: dial [-src IP] HOST:PORT")
		}
		d := net.Dialer{Timeout: 3 * time.Second}
		if *src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(*src)}
		}
		c, err := d.Dial("tcp", fs.Arg(0))
		if err != nil {
			return nil, err
		}
		c.Close()
		return map[string]string{"dialed": fs.Arg(0)}, nil
	case "addr":
		if len(args) != 2 {
			return nil, errors.New("usage: addr CIDR")
		}
		return nil, addAddr(args[1])
	case "route":
		if len(args) != 2 {
			return nil, errors.New("usage: route GATEWAY")
		}
		return nil, defaultRoute(args[1])
	case "mac":
		if len(args) != 2 {
			return nil, errors.New("usage: mac ADDRESS")
		}
		return nil, setMAC(args[1])
	case "disk":
		if len(args) != 4 {
			return nil, errors.New("usage: disk write PATTERN MiB | disk bench - MiB")
		}
		var mib int
		if _, err := fmt.Sscan(args[3], &mib); err != nil || mib < 1 {
			return nil, fmt.Errorf("MiB %q", args[3])
		}
		switch args[1] {
		case "write":
			_, err := diskWrite([]byte(args[2]), mib)
			return map[string]int{"written_mib": mib}, err
		case "bench":
			return diskBench(mib)
		}
	}
	return nil, fmt.Errorf("unknown tool %q", args[0])
}

// dhcp brings eth0 up and configures it from a DHCP lease.
func dhcp() (*lease, error) {
	link, err := netlink.LinkByName(nic)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, err
	}
	c, err := nclient4.New(nic, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(5))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := c.Request(ctx)
	if err != nil {
		return nil, fmt.Errorf("DHCP: %w", err)
	}
	ack := l.ACK
	ones, _ := ack.SubnetMask().Size()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ack.YourIPAddr, Mask: ack.SubnetMask()}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return nil, err
	}
	res := &lease{IP: ack.YourIPAddr.String(), Prefix: ones, Server: ack.ServerIdentifier().String()}
	if dns := ack.DNS(); len(dns) > 0 {
		res.DNS = dns[0].String()
	}
	if r := ack.Router(); len(r) > 0 {
		// A router in the lease is the default route, as a guest OS takes
		// it: a host elsewhere routes its guest network to the broker.
		res.Gateway = r[0].String()
		if err := defaultRoute(res.Gateway); err != nil {
			return nil, fmt.Errorf("default route from the lease: %w", err)
		}
	}
	b, _ := json.Marshal(res)
	return res, os.WriteFile(leaseFile, b, 0o644)
}

func readLease() (*lease, error) {
	b, err := os.ReadFile(leaseFile)
	if err != nil {
		return nil, fmt.Errorf("no lease yet (run net): %w", err)
	}
	var l lease
	return &l, json.Unmarshal(b, &l)
}

// resolver asks the DNS server the lease named, as a guest OS would.
func resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		l, err := readLease()
		if err != nil {
			return nil, err
		}
		if l.DNS == "" {
			return nil, errors.New("the lease names no DNS server")
		}
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(l.DNS, "53"))
	}}
}

// get fetches u, directly (names resolved by the lease's DNS) or through an
// explicit proxy, and returns the status and the start of the body. TLS
// certificates are not checked: the stand-in internet's are self-signed.
func get(u, proxy string) (any, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, Resolver: resolver()}
	tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	if proxy != "" {
		pu, err := url.Parse(proxy)
		if err != nil {
			return nil, err
		}
		tr.Proxy = http.ProxyURL(pu)
	}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return map[string]any{"status": resp.StatusCode, "body": string(body)}, nil
}

func addAddr(cidr string) error {
	link, err := netlink.LinkByName(nic)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return netlink.AddrAdd(link, a)
}

// defaultRoute sends everything off the subnet to gw, as a guest OS whose
// user set a default route would.
func defaultRoute(gw string) error {
	link, err := netlink.LinkByName(nic)
	if err != nil {
		return err
	}
	return netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP(gw)})
}

func setMAC(s string) error {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(nic)
	if err != nil {
		return err
	}
	return netlink.LinkSetHardwareAddr(link, hw)
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096 - uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[off : off+n]
}

// diskWrite fills the first mib MiB of the disk with pattern, repeated,
// bypassing the guest's page cache, and waits until it is on the host.
func diskWrite(pattern []byte, mib int) (time.Duration, error) {
	if len(pattern) == 0 {
		return 0, errors.New("empty pattern")
	}
	f, err := os.OpenFile(disk, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := alignedBuf(1 << 20)
	for i := range buf {
		buf[i] = pattern[i%len(pattern)]
	}
	start := time.Now()
	for i := 0; i < mib; i++ {
		if _, err := f.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// diskBench writes mib MiB to the disk and reads them back, both past the
// guest's page cache, and reports the throughput of each.
func diskBench(mib int) (any, error) {
	w, err := diskWrite([]byte("undervdi disk bench "), mib)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(disk, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := alignedBuf(1 << 20)
	start := time.Now()
	for i := 0; i < mib; i++ {
		if _, err := io.ReadFull(f, buf); err != nil {
			return nil, err
		}
	}
	r := time.Since(start)
	mb := float64(mib) * (1 << 20) / 1e6
	return map[string]float64{"write_mbps": mb / w.Seconds(), "read_mbps": mb / r.Seconds()}, nil
}
