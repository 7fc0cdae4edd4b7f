package bench

import (
	"fmt"
	"net/netip"

	"github.com/synguard/synguard/lab"
)

// Family is the address family a benchmark runs over: the lab's
// addresses, the flood's spoofed sources and the gateway's firewall rules
// are all of one family.
type Family string

// The families.
const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// ParseFamily checks a family name.
func ParseFamily(s string) (Family, error) {
	switch f := Family(s); f {
	case IPv4, IPv6:
		return f, nil
	}
	return "", fmt.Errorf("unknown address family %q (want ipv4 or ipv6)", s)
}

// String is the family as people write it: IPv4 or IPv6.
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return string(f)
}

// netFamily is what the benchmark's gateway set-ups need to know about a
// family. Everything else is the same for both: the SYNPROXY recipe's
// targets and matches, and its sysctls, since net.ipv4.tcp_syncookies,
// net.ipv4.tcp_timestamps and net.netfilter.nf_conntrack_tcp_loose
// govern IPv6 too (there are no net.ipv6.tcp_* settings). IPv6 forwarding
// (net.ipv6.conf.all.forwarding) is the lab's to enable, as IPv4's is.
type netFamily struct {
	family Family
	// iptables and iptablesSave are the firewall's tools for the family.
	iptables, iptablesSave string
	// spoof is the flood's source range (lab.SpoofPrefix4 or 6).
	spoof netip.Prefix
}

func familyNet(f Family) netFamily {
	if f == IPv6 {
		return netFamily{family: IPv6, iptables: "ip6tables", iptablesSave: "ip6tables-save", spoof: lab.SpoofPrefix6}
	}
	return netFamily{family: IPv4, iptables: "iptables", iptablesSave: "iptables-save", spoof: lab.SpoofPrefix4}
}

// service is the protected service's address in the lab t: the backend's
// address of the family, port 80.
func (n netFamily) service(t *lab.Topology) netip.AddrPort {
	if n.family == IPv6 {
		return netip.AddrPortFrom(t.BackendAddr6, 80)
	}
	return netip.AddrPortFrom(t.BackendAddr, 80)
}

// conntrackFlush is the command line that empties the family's conntrack
// table.
func (n netFamily) conntrackFlush() []string {
	return []string{"-F", "-f", string(n.family)}
}
