package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// The address plan every lab uses (documentation and benchmarking ranges).
var (
	ClientPrefix4  = netip.MustParsePrefix("198.51.100.0/24")
	BackendPrefix4 = netip.MustParsePrefix("203.0.113.0/24")
	ClientPrefix6  = netip.MustParsePrefix("2001:db8:c::/64")
	BackendPrefix6 = netip.MustParsePrefix("2001:db8:b::/64")
	// RemotePrefix4 and RemotePrefix6 are the remote client's network,
	// behind the delay relay (Config.ClientRTT).
	RemotePrefix4 = netip.MustParsePrefix("192.0.2.0/24")
	RemotePrefix6 = netip.MustParsePrefix("2001:db8:d::/64")

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

	// With Config.ClientRTT: the remote client's link, the relay's links
	// toward the remote client and toward the client, and the client's
	// link toward the relay.
	RemoteIface      = "eth0"
	RelayRemoteIface = "to-remote"
	RelayClientIface = "to-client"
	ClientRelayIface = "to-relay"
)

// Namespace name suffixes appended to Config.Name.
const (
	ClientSuffix  = "-client"
	GatewaySuffix = "-gateway"
	BackendSuffix = "-backend"
	// With Config.ClientRTT.
	RelaySuffix  = "-relay"
	RemoteSuffix = "-remote"
)

// MaxClientRTT bounds Config.ClientRTT.
const MaxClientRTT = 2 * MaxRelayDelay

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
	// ClientRTT, when positive, adds a remote client a round trip of
	// ClientRTT away: a fourth namespace, NAME-remote, behind a relay in
	// a fifth, NAME-relay, that forwards the frames between it and the
	// client namespace half the round trip after they arrive, each way
	// (see Relay). The client namespace then routes between the remote
	// client and the gateway. Floods still leave from the client
	// namespace, straight to the gateway, and their replies end there:
	// only the remote client's traffic crosses the relay. At most
	// MaxClientRTT.
	ClientRTT time.Duration
}

// Topology is a running lab.
type Topology struct {
	Name                     string
	Client, Gateway, Backend *netns.NS
	ClientAddr, BackendAddr  netip.Addr // 198.51.100.2, 203.0.113.2
	// With Config.ClientRTT, the remote client and the relay between it
	// and the client namespace (nil otherwise), the remote client's
	// addresses (192.0.2.2, 2001:db8:d::2) and the client namespace's on
	// the link toward it (192.0.2.1, 2001:db8:d::1), its next hop.
	Remote, Relay                     *netns.NS
	RemoteAddr, RemoteAddr6           netip.Addr
	ClientRelayAddr, ClientRelayAddr6 netip.Addr
	ClientRTT                         time.Duration
	relay                             *Relay
	ClientAddr6, BackendAddr6         netip.Addr // 2001:db8:c::2, 2001:db8:b::2; invalid when IPv6 is off
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
	if cfg.ClientRTT < 0 || cfg.ClientRTT > MaxClientRTT {
		return nil, fmt.Errorf("lab: client RTT %v outside [0, %v]", cfg.ClientRTT, MaxClientRTT)
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
	all := names[:]
	if cfg.ClientRTT > 0 {
		all = append(all, cfg.Name+RelaySuffix, cfg.Name+RemoteSuffix)
	}
	var made []*netns.NS
	fail := func(err error) (*Topology, error) {
		var errs []error
		if t.relay != nil {
			errs = append(errs, t.relay.Close())
		}
		for _, ns := range made {
			if e := removeNamespace(context.WithoutCancel(ctx), ns.Name); e != nil {
				errs = append(errs, e)
			}
		}
		return nil, errors.Join(append([]error{fmt.Errorf("lab %s: %w", cfg.Name, err)}, errs...)...)
	}
	for _, name := range all {
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
	if cfg.ClientRTT > 0 {
		t.Relay, t.Remote = made[3], made[4]
		if err := t.addRemote(ctx, cfg); err != nil {
			return fail(err)
		}
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

	addrs := []linkAddr{
		{t.Client, ClientIface, t.ClientAddr, ClientPrefix4},
		{t.Gateway, GatewayClientIface, t.GatewayClientAddr, ClientPrefix4},
		{t.Gateway, GatewayBackendIface, t.GatewayBackendAddr, BackendPrefix4},
		{t.Backend, BackendIface, t.BackendAddr, BackendPrefix4},
	}
	if t.IPv6 {
		addrs = append(addrs,
			linkAddr{t.Client, ClientIface, t.ClientAddr6, ClientPrefix6},
			linkAddr{t.Gateway, GatewayClientIface, t.GatewayClientAddr6, ClientPrefix6},
			linkAddr{t.Gateway, GatewayBackendIface, t.GatewayBackendAddr6, BackendPrefix6},
			linkAddr{t.Backend, BackendIface, t.BackendAddr6, BackendPrefix6},
		)
	}
	if err := bringUp(ctx, addrs, []link{
		{t.Client, ClientIface},
		{t.Gateway, GatewayClientIface},
		{t.Gateway, GatewayBackendIface},
		{t.Backend, BackendIface},
	}); err != nil {
		return err
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
	return t.sinkFloodReplies(ctx)
}

// sinkFloodReplies drops, in the client namespace's mangle PREROUTING,
// what the gateway or backend sends to the flood's spoofed sources, as
// soon as it arrives: before routing, after the raw table, where
// benchmarks count what arrives. A real flood's SYN-ACKs leave the
// gateway for the internet; here they land in a namespace on the same
// CPUs, where a host that does not forward would route each one, fail,
// allocate and free a route and rate-limit an ICMP error per source: work
// no gateway does, which the benchmarks would otherwise count as the
// gateway's CPU. Captures on the link still see the replies (they tap
// before netfilter).
func (t *Topology) sinkFloodReplies(ctx context.Context) error {
	cmds := [][]string{{"iptables", "-t", "mangle", "-A", "PREROUTING", "-d", SpoofPrefix4.String(), "-j", "DROP"}}
	if t.IPv6 {
		cmds = append(cmds, []string{"ip6tables", "-t", "mangle", "-A", "PREROUTING", "-d", SpoofPrefix6.String(), "-j", "DROP"})
	}
	for _, c := range cmds {
		if err := t.Client.Run(ctx, c[0], c[1:]...); err != nil {
			return fmt.Errorf("dropping flood replies in %s: %w", t.Client.Name, err)
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

// Namespaces returns the client, gateway and backend namespaces, and with
// a client RTT the relay's and the remote client's.
func (t *Topology) Namespaces() []*netns.NS {
	if t.Remote != nil {
		return []*netns.NS{t.Client, t.Gateway, t.Backend, t.Relay, t.Remote}
	}
	return []*netns.NS{t.Client, t.Gateway, t.Backend}
}

// LegitClient is the namespace legitimate clients connect from: the
// remote client's, a round trip of ClientRTT away, when the lab has one;
// the client's otherwise.
func (t *Topology) LegitClient() *netns.NS {
	if t.Remote != nil {
		return t.Remote
	}
	return t.Client
}

// RelayStats returns what the relay did with the frames from the remote
// client toward the gateway and with those toward the remote client;
// zero without a client RTT.
func (t *Topology) RelayStats() (toGateway, toRemote RelayStats) {
	if t.relay == nil {
		return RelayStats{}, RelayStats{}
	}
	return t.relay.Stats()
}

// Down stops the relay, kills every process left in the lab's namespaces
// and deletes them. It can be called again, and after a partial failure.
func (t *Topology) Down(ctx context.Context) error {
	var errs []error
	if t.relay != nil {
		errs = append(errs, t.relay.Close())
	}
	names := NamespaceNames(t.Name)
	all := names[:]
	if t.Remote != nil {
		all = append(all, t.Relay.Name, t.Remote.Name)
	}
	for _, name := range all {
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

// addRemote puts the remote client a round trip of cfg.ClientRTT away from
// the client namespace, which then routes between it and the gateway:
//
//	NAME-remote         NAME-relay                NAME-client
//	eth0 ────────── to-remote  to-client ────────── to-relay    eth0 ── gateway
//	192.0.2.2/24        (Relay: ½ RTT each way)     192.0.2.1/24
//	2001:db8:d::2/64                                2001:db8:d::1/64
//
// The relay's links have no addresses; the hosts on either side reach
// each other through it as on one Ethernet segment, with their neighbour
// entries set, so that no first packet waits for a resolution across the
// delay. Floods still leave from the client namespace straight to the
// gateway, and the gateway's replies to their spoofed sources end in the
// client namespace: it routes the spoof ranges to a blackhole now that it
// forwards.
func (t *Topology) addRemote(ctx context.Context, cfg Config) error {
	t.ClientRTT = cfg.ClientRTT
	t.RemoteAddr = netip.MustParseAddr("192.0.2.2")
	t.ClientRelayAddr = netip.MustParseAddr("192.0.2.1")
	if t.IPv6 {
		t.RemoteAddr6 = netip.MustParseAddr("2001:db8:d::2")
		t.ClientRelayAddr6 = netip.MustParseAddr("2001:db8:d::1")
	}

	noIPv6 := []sysctl{
		{"net/ipv6/conf/default/disable_ipv6", "1"},
		{"net/ipv6/conf/all/disable_ipv6", "1"},
	}
	relay := append([]sysctl{{"net/ipv4/ip_forward", "0"}}, noIPv6...)
	remote := []sysctl{{"net/ipv4/ip_forward", "0"}}
	client := []sysctl{{"net/ipv4/ip_forward", "1"}}
	if t.IPv6 {
		remote = append(remote,
			sysctl{"net/ipv6/conf/all/forwarding", "0"},
			sysctl{"net/ipv6/conf/default/accept_dad", "0"},
			sysctl{"net/ipv6/conf/all/accept_dad", "0"},
			sysctl{"net/ipv6/conf/default/accept_ra", "0"},
		)
		client = append(client, sysctl{"net/ipv6/conf/all/forwarding", "1"})
	} else {
		remote = append(remote, noIPv6...)
	}
	for _, s := range []struct {
		ns *netns.NS
		s  []sysctl
	}{{t.Relay, relay}, {t.Remote, remote}, {t.Client, client}} {
		if err := setSysctls(s.ns, s.s); err != nil {
			return err
		}
	}

	if err := netns.Run(ctx, "ip", "link", "add", RemoteIface, "netns", t.Remote.Name,
		"type", "veth", "peer", "name", RelayRemoteIface, "netns", t.Relay.Name); err != nil {
		return err
	}
	if err := netns.Run(ctx, "ip", "link", "add", ClientRelayIface, "netns", t.Client.Name,
		"type", "veth", "peer", "name", RelayClientIface, "netns", t.Relay.Name); err != nil {
		return err
	}
	// The relay copies frames of at most a slot: the hosts beside it
	// segment and checksum in software, which turning tx checksumming
	// off implies.
	if err := SetTxChecksum(t.Remote, RemoteIface, false); err != nil {
		return err
	}
	if err := SetTxChecksum(t.Client, ClientRelayIface, false); err != nil {
		return err
	}

	ip := func(ns *netns.NS, args ...string) error {
		return netns.Run(ctx, "ip", append([]string{"-n", ns.Name}, args...)...)
	}
	addrs := []linkAddr{
		{t.Remote, RemoteIface, t.RemoteAddr, RemotePrefix4},
		{t.Client, ClientRelayIface, t.ClientRelayAddr, RemotePrefix4},
	}
	if t.IPv6 {
		addrs = append(addrs,
			linkAddr{t.Remote, RemoteIface, t.RemoteAddr6, RemotePrefix6},
			linkAddr{t.Client, ClientRelayIface, t.ClientRelayAddr6, RemotePrefix6},
		)
	}
	if err := bringUp(ctx, addrs, []link{
		{t.Relay, RelayRemoteIface},
		{t.Relay, RelayClientIface},
		{t.Remote, RemoteIface},
		{t.Client, ClientRelayIface},
	}); err != nil {
		return err
	}

	remoteMAC, err := hardwareAddr(t.Remote, RemoteIface)
	if err != nil {
		return err
	}
	clientMAC, err := hardwareAddr(t.Client, ClientRelayIface)
	if err != nil {
		return err
	}
	neigh := func(ns *netns.NS, a netip.Addr, iface, mac string) []string {
		return []string{ns.Name, "neigh", "replace", a.String(), "lladdr", mac, "dev", iface, "nud", "permanent"}
	}
	cmds := [][]string{
		neigh(t.Remote, t.ClientRelayAddr, RemoteIface, clientMAC),
		neigh(t.Client, t.RemoteAddr, ClientRelayIface, remoteMAC),
		{t.Remote.Name, "-4", "route", "add", "default", "via", t.ClientRelayAddr.String()},
		{t.Client.Name, "-4", "route", "add", "blackhole", SpoofPrefix4.String()},
		{t.Gateway.Name, "-4", "route", "add", RemotePrefix4.String(), "via", t.ClientAddr.String()},
	}
	if t.IPv6 {
		cmds = append(cmds,
			neigh(t.Remote, t.ClientRelayAddr6, RemoteIface, clientMAC),
			neigh(t.Client, t.RemoteAddr6, ClientRelayIface, remoteMAC),
			[]string{t.Remote.Name, "-6", "route", "add", "default", "via", t.ClientRelayAddr6.String()},
			[]string{t.Client.Name, "-6", "route", "add", "blackhole", SpoofPrefix6.String()},
			[]string{t.Gateway.Name, "-6", "route", "add", RemotePrefix6.String(), "via", t.ClientAddr6.String()},
		)
	}
	for _, c := range cmds {
		if err := ip(&netns.NS{Name: c[0]}, c[1:]...); err != nil {
			return err
		}
	}

	t.relay, err = StartRelay(t.Relay, RelayRemoteIface, RelayClientIface, cfg.ClientRTT/2)
	return err
}

// hardwareAddr is the Ethernet address of iface in ns.
// link is an interface inside a namespace; linkAddr an address on one.
type link struct {
	ns    *netns.NS
	iface string
}

type linkAddr struct {
	ns    *netns.NS
	iface string
	a     netip.Addr
	p     netip.Prefix
}

// bringUp puts addrs on their links, sets links up and waits until each
// is ready. Link state reaches IPv6 through the kernel's linkwatch, which
// may batch events for up to a second; until then addresses stay
// tentative and neighbour solicitations for them go unanswered. So the
// lab works from its first packet.
func bringUp(ctx context.Context, addrs []linkAddr, links []link) error {
	ip := func(ns *netns.NS, args ...string) error {
		return netns.Run(ctx, "ip", append([]string{"-n", ns.Name}, args...)...)
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
	for _, l := range links {
		if err := ip(l.ns, "link", "set", l.iface, "up"); err != nil {
			return err
		}
	}
	for _, l := range links {
		if err := WaitLinkReady(ctx, l.ns, l.iface); err != nil {
			return err
		}
	}
	return nil
}

func hardwareAddr(ns *netns.NS, iface string) (string, error) {
	var mac string
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr.String()
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("%s in %s: %w", iface, ns.Name, err)
	}
	return mac, nil
}

// SetTxChecksum turns tx checksumming of iface in ns on or off
// (ETHTOOL_STXCSUM, as `ethtool -K IFACE tx on|off`); off, the kernel
// also stops offloading segmentation to the link.
func SetTxChecksum(ns *netns.NS, iface string, on bool) error {
	const ethtoolSTXCSUM = 0x17
	v := struct{ cmd, data uint32 }{cmd: ethtoolSTXCSUM}
	if on {
		v.data = 1
	}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte
		}
		copy(ifr.name[:], iface)
		ifr.data = unsafe.Pointer(&v)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
			return errno
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tx checksumming of %s in %s: %w", iface, ns.Name, err)
	}
	return nil
}
