package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/synguard/synguard/lab/netns"
)

// The address plan every lab uses (documentation and benchmarking ranges).
var (
	ClientPrefix4  = netip.MustParsePrefix("198.51.100.0/24")
	BackendPrefix4 = netip.MustParsePrefix("203.0.113.0/24")
	ClientPrefix6  = netip.MustParsePrefix("2001:db8:c::/64")
	BackendPrefix6 = netip.MustParsePrefix("2001:db8:b::/64")

	// SpoofPrefix4 is the only IPv4 range floods may use as sources (RFC 2544
	// benchmarking range). The gateway routes it back toward the client.
	SpoofPrefix4 = netip.MustParsePrefix("198.18.0.0/15")
	// SpoofPrefix6 is the only IPv6 range floods may use as sources, a slice
	// of the documentation prefix 2001:db8::/32 that no lab address uses.
	SpoofPrefix6 = netip.MustParsePrefix("2001:db8:ff00::/40")
)

// Interface names, fixed inside each namespace.
const (
	ClientIface         = "eth0"
	BackendIface        = "eth0"
	GatewayClientIface  = "to-client"
	GatewayBackendIface = "to-backend"
)

// Namespace name suffixes appended to Config.Name.
const (
	ClientSuffix  = "-client"
	GatewaySuffix = "-gateway"
	BackendSuffix = "-backend"
)

// Config describes a lab.
type Config struct {
	// Name prefixes the three namespace names (NAME-client, NAME-gateway,
	// NAME-backend). It must be unique among running labs.
	Name string
	// DisableIPv6 turns IPv6 off in all three namespaces.
	DisableIPv6 bool
	// ClientRmemMax and BackendRmemMax, when positive, set the maximum of
	// net.ipv4.tcp_rmem in that namespace. The TCP window scale a host
	// announces follows from it (and from the host-wide net.core.rmem_max),
	// so tests use them to make the two ends announce different scales.
	ClientRmemMax  int
	BackendRmemMax int
}

// Topology is a running lab.
type Topology struct {
	Name                      string
	Client, Gateway, Backend  *netns.NS
	ClientAddr, BackendAddr   netip.Addr // 198.51.100.2, 203.0.113.2
	ClientAddr6, BackendAddr6 netip.Addr // 2001:db8:c::2, 2001:db8:b::2; invalid when IPv6 is off
	// The gateway's own addresses on each side (the client's and the
	// backend's next hop).
	GatewayClientAddr, GatewayBackendAddr   netip.Addr
	GatewayClientAddr6, GatewayBackendAddr6 netip.Addr
	// Interface names in the gateway namespace.
	GatewayClientSide, GatewayBackendSide string
	// Interface names in the client and backend namespaces.
	ClientSide, BackendSide string
	IPv6                    bool
}

// NamespaceNames returns the client, gateway and backend namespace names
// for a lab called name.
func NamespaceNames(name string) [3]string {
	return [3]string{name + ClientSuffix, name + GatewaySuffix, name + BackendSuffix}
}

// Up builds the lab. On any error it removes the namespaces it created (and
// only those: a name collision leaves the other lab alone).
func Up(ctx context.Context, cfg Config) (*Topology, error) {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, "/ \t\n") {
		return nil, fmt.Errorf("lab: invalid name %q", cfg.Name)
	}
	if cfg.ClientRmemMax < 0 || cfg.BackendRmemMax < 0 {
		return nil, errors.New("lab: negative rmem maximum")
	}
	t := &Topology{
		Name:               cfg.Name,
		ClientAddr:         netip.MustParseAddr("198.51.100.2"),
		GatewayClientAddr:  netip.MustParseAddr("198.51.100.1"),
		BackendAddr:        netip.MustParseAddr("203.0.113.2"),
		GatewayBackendAddr: netip.MustParseAddr("203.0.113.1"),
		GatewayClientSide:  GatewayClientIface,
		GatewayBackendSide: GatewayBackendIface,
		ClientSide:         ClientIface,
		BackendSide:        BackendIface,
		IPv6:               !cfg.DisableIPv6,
	}
	if t.IPv6 {
		t.ClientAddr6 = netip.MustParseAddr("2001:db8:c::2")
		t.GatewayClientAddr6 = netip.MustParseAddr("2001:db8:c::1")
		t.BackendAddr6 = netip.MustParseAddr("2001:db8:b::2")
		t.GatewayBackendAddr6 = netip.MustParseAddr("2001:db8:b::1")
	}

	names := NamespaceNames(cfg.Name)
	var made []*netns.NS
	fail := func(err error) (*Topology, error) {
		var errs []error
		for _, ns := range made {
			if e := removeNamespace(context.WithoutCancel(ctx), ns.Name); e != nil {
				errs = append(errs, e)
			}
		}
		return nil, errors.Join(append([]error{fmt.Errorf("lab %s: %w", cfg.Name, err)}, errs...)...)
	}
	for _, name := range names {
		if netns.Exists(name) {
			return fail(fmt.Errorf("namespace %s already exists", name))
		}
		ns, err := netns.Create(ctx, name)
		if err != nil {
			return fail(err)
		}
		made = append(made, ns)
	}
	t.Client, t.Gateway, t.Backend = made[0], made[1], made[2]

	if err := t.configure(ctx, cfg); err != nil {
		return fail(err)
	}
	return t, nil
}

// configure sets sysctls, links, addresses and routes. Namespace-wide
// defaults are set before the interfaces exist so that they inherit them.
func (t *Topology) configure(ctx context.Context, cfg Config) error {
	for _, ns := range []*netns.NS{t.Client, t.Gateway, t.Backend} {
		s := []sysctl{
			// The client must not forward: SYN-ACKs to spoofed sources
			// end there. A new namespace may inherit forwarding=1 from
			// the host, so say it.
			{"net/ipv4/ip_forward", "0"},
		}
		if t.IPv6 {
			s = append(s,
				sysctl{"net/ipv6/conf/all/forwarding", "0"},
				sysctl{"net/ipv6/conf/default/accept_dad", "0"},
				sysctl{"net/ipv6/conf/all/accept_dad", "0"},
				sysctl{"net/ipv6/conf/default/accept_ra", "0"},
			)
		} else {
			s = append(s,
				sysctl{"net/ipv6/conf/default/disable_ipv6", "1"},
				sysctl{"net/ipv6/conf/all/disable_ipv6", "1"},
			)
		}
		if ns == t.Gateway {
			s = append(s,
				sysctl{"net/ipv4/ip_forward", "1"},
				sysctl{"net/ipv4/conf/all/rp_filter", "0"},
				sysctl{"net/ipv4/conf/default/rp_filter", "0"},
			)
			if t.IPv6 {
				s = append(s, sysctl{"net/ipv6/conf/all/forwarding", "1"})
			}
		}
		if ns == t.Client && cfg.ClientRmemMax > 0 {
			s = append(s, tcpRmem(cfg.ClientRmemMax))
		}
		if ns == t.Backend && cfg.BackendRmemMax > 0 {
			s = append(s, tcpRmem(cfg.BackendRmemMax))
		}
		if err := setSysctls(ns, s); err != nil {
			return err
		}
	}

	ip := func(ns *netns.NS, args ...string) error {
		return netns.Run(ctx, "ip", append([]string{"-n", ns.Name}, args...)...)
	}
	// Each veth is created with both ends already in their namespaces.
	if err := netns.Run(ctx, "ip", "link", "add", ClientIface, "netns", t.Client.Name,
		"type", "veth", "peer", "name", GatewayClientIface, "netns", t.Gateway.Name); err != nil {
		return err
	}
	if err := netns.Run(ctx, "ip", "link", "add", BackendIface, "netns", t.Backend.Name,
		"type", "veth", "peer", "name", GatewayBackendIface, "netns", t.Gateway.Name); err != nil {
		return err
	}
	if err := setSysctls(t.Gateway, []sysctl{
		{"net/ipv4/conf/" + GatewayClientIface + "/rp_filter", "0"},
		{"net/ipv4/conf/" + GatewayBackendIface + "/rp_filter", "0"},
	}); err != nil {
		return err
	}

	type addr struct {
		ns    *netns.NS
		iface string
		a     netip.Addr
		p     netip.Prefix
	}
	addrs := []addr{
		{t.Client, ClientIface, t.ClientAddr, ClientPrefix4},
		{t.Gateway, GatewayClientIface, t.GatewayClientAddr, ClientPrefix4},
		{t.Gateway, GatewayBackendIface, t.GatewayBackendAddr, BackendPrefix4},
		{t.Backend, BackendIface, t.BackendAddr, BackendPrefix4},
	}
	if t.IPv6 {
		addrs = append(addrs,
			addr{t.Client, ClientIface, t.ClientAddr6, ClientPrefix6},
			addr{t.Gateway, GatewayClientIface, t.GatewayClientAddr6, ClientPrefix6},
			addr{t.Gateway, GatewayBackendIface, t.GatewayBackendAddr6, BackendPrefix6},
			addr{t.Backend, BackendIface, t.BackendAddr6, BackendPrefix6},
		)
	}
	for _, a := range addrs {
		args := []string{"addr", "add", netip.PrefixFrom(a.a, a.p.Bits()).String(), "dev", a.iface}
		if a.a.Is6() {
			args = append(args, "nodad")
		}
		if err := ip(a.ns, args...); err != nil {
			return err
		}
	}
	links := []struct {
		ns    *netns.NS
		iface string
	}{
		{t.Client, ClientIface},
		{t.Gateway, GatewayClientIface},
		{t.Gateway, GatewayBackendIface},
		{t.Backend, BackendIface},
	}
	for _, l := range links {
		if err := ip(l.ns, "link", "set", l.iface, "up"); err != nil {
			return err
		}
	}

	// Link state reaches IPv6 through the kernel's linkwatch, which may
	// batch events for up to a second; until then addresses stay tentative
	// and neighbour solicitations for them go unanswered. Return a lab that
	// works from its first packet.
	for _, l := range links {
		if err := WaitLinkReady(ctx, l.ns, l.iface); err != nil {
			return err
		}
	}

	routes := [][]string{
		{t.Client.Name, "-4", "route", "add", "default", "via", t.GatewayClientAddr.String()},
		{t.Backend.Name, "-4", "route", "add", "default", "via", t.GatewayBackendAddr.String()},
		{t.Gateway.Name, "-4", "route", "add", SpoofPrefix4.String(), "via", t.ClientAddr.String()},
	}
	if t.IPv6 {
		routes = append(routes,
			[]string{t.Client.Name, "-6", "route", "add", "default", "via", t.GatewayClientAddr6.String()},
			[]string{t.Backend.Name, "-6", "route", "add", "default", "via", t.GatewayBackendAddr6.String()},
			[]string{t.Gateway.Name, "-6", "route", "add", SpoofPrefix6.String(), "via", t.ClientAddr6.String()},
		)
	}
	for _, r := range routes {
		if err := netns.Run(ctx, "ip", append([]string{"-n", r[0]}, r[1:]...)...); err != nil {
			return err
		}
	}
	return nil
}

func tcpRmem(max int) sysctl {
	def := 131072
	if max < def {
		def = max
	}
	return sysctl{"net/ipv4/tcp_rmem", fmt.Sprintf("4096 %d %d", def, max)}
}

// Namespaces returns the client, gateway and backend namespaces.
func (t *Topology) Namespaces() []*netns.NS {
	return []*netns.NS{t.Client, t.Gateway, t.Backend}
}

// Down kills every process left in the lab's namespaces and deletes them.
// It can be called again, and after a partial failure.
func (t *Topology) Down(ctx context.Context) error {
	var errs []error
	for _, name := range NamespaceNames(t.Name) {
		if err := removeNamespace(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DownAll removes every namespace whose name starts with prefix, killing
// the processes inside first. The prefix must not be empty.
func DownAll(ctx context.Context, prefix string) error {
	if prefix == "" {
		return errors.New("lab: DownAll needs a non-empty prefix")
	}
	names, err := netns.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if strings.HasPrefix(name, prefix) {
			if err := removeNamespace(ctx, name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeNamespace kills the processes in namespace name, waits briefly for
// them to go, and deletes it. A missing namespace is not an error.
func removeNamespace(ctx context.Context, name string) error {
	if !netns.Exists(name) {
		return nil
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		pids, err := namespacePIDs(ctx, name)
		if err != nil {
			return err
		}
		if len(pids) == 0 || time.Now().After(deadline) {
			break
		}
		for _, pid := range pids {
			// ESRCH: it exited meanwhile.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ns := &netns.NS{Name: name}
	if err := ns.Delete(); err != nil && netns.Exists(name) {
		return err
	}
	return nil
}

// namespacePIDs lists the processes whose network namespace is name,
// never this process (a thread of ours may be inside through NS.Do).
func namespacePIDs(ctx context.Context, name string) ([]int, error) {
	cmdOut, err := runOutput(ctx, "ip", "netns", "pids", name)
	if err != nil {
		if !netns.Exists(name) {
			return nil, nil
		}
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, f := range strings.Fields(cmdOut) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == self || pid <= 1 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// linkReadyTimeout bounds the wait for an interface to be usable.
const linkReadyTimeout = 5 * time.Second

// WaitLinkReady polls until iface in ns is operationally up and none of its
// addresses is tentative (at most 5 s), for setups built outside Up.
func WaitLinkReady(ctx context.Context, ns *netns.NS, iface string) error {
	deadline := time.Now().Add(linkReadyTimeout)
	for {
		out, err := runOutput(ctx, "ip", "-n", ns.Name, "-j", "addr", "show", "dev", iface)
		if err != nil {
			return err
		}
		var links []struct {
			OperState string `json:"operstate"`
			AddrInfo  []struct {
				Local     string `json:"local"`
				Tentative bool   `json:"tentative"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal([]byte(out), &links); err != nil {
			return fmt.Errorf("parse ip addr output: %w", err)
		}
		ready := len(links) == 1 && links[0].OperState == "UP"
		if ready {
			for _, a := range links[0].AddrInfo {
				ready = ready && !a.Tentative
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s not ready after %v: %s", iface, ns.Name, linkReadyTimeout, strings.TrimSpace(out))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
