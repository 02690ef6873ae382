package egress

import (
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// dnsTTL is how long a guest may keep an answer.
const dnsTTL = 60

// ServeDNS answers a clone's query. An allowed name resolves to the address
// the query came to, the broker's, where the transparent proxies take the
// connection on (the guest needs no proxy setting); its other record types
// are empty, IPv6 among them. Any other name does not exist, and counts as
// a refusal. A query from an address no clone holds is refused.
func (g *Guard) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	c, ok := g.client(w.RemoteAddr())
	if ok && !g.dnsAllowed(c.ip) {
		return // a flood: dropped
	}
	switch {
	case !ok:
		m.Rcode = dns.RcodeRefused
	case len(r.Question) != 1 || r.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeFormatError
	case r.Question[0].Qclass != dns.ClassINET:
		m.Rcode = dns.RcodeRefused
	case r.Question[0].Qtype == dns.TypePTR:
		m.Rcode = dns.RcodeNameError // reverse lookups are noise, not a visitor's attempt
	default:
		q := r.Question[0]
		name := strings.TrimSuffix(q.Name, ".")
		if !g.decide(c, "dns", name) {
			m.Rcode = dns.RcodeNameError
			break
		}
		at, err := netip.ParseAddrPort(w.LocalAddr().String())
		if err != nil || !at.Addr().Unmap().Is4() {
			m.Rcode = dns.RcodeServerFailure // the Guard listens on IPv4 addresses only
			break
		}
		m.Authoritative = true
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			m.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL},
				A:   net.IP(at.Addr().Unmap().AsSlice()),
			}}
		}
	}
	w.WriteMsg(m)
}
