package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/docs/ha"
	"github.com/synguard/synguard/lab/netns"
)

// The two gateways of an HA lab, as the docs/ha files name them (their
// keepalived config ids).
const (
	NodeA = "gw-a" // preferred: priority 150
	NodeB = "gw-b" // priority 100
)

// Interface names inside an HA gateway's namespace: the docs/ha files name
// them.
const (
	HAClientIface  = "to-client"
	HABackendIface = "to-backend"
	HASyncIface    = "sync"
)

// The HA lab's address plan: docs/ha/keepalived.conf's VIPs and
// docs/ha/conntrackd.conf's ignore list.
var (
	HAClientVIP   = netip.MustParseAddr("198.51.100.1") // the client's default gateway
	HABackendVIP  = netip.MustParseAddr("203.0.113.1")  // the backend's route back
	HAClientAddr  = netip.MustParseAddr("198.51.100.2")
	HABackendAddr = netip.MustParseAddr("203.0.113.2")
)

// haNode is one gateway's fixed part.
type haNode struct {
	name            string // NodeA, NodeB
	client, backend netip.Addr
}

var haNodes = []haNode{
	{NodeA, netip.MustParseAddr("198.51.100.11"), netip.MustParseAddr("203.0.113.11")},
	{NodeB, netip.MustParseAddr("198.51.100.12"), netip.MustParseAddr("203.0.113.12")},
}

func findNode(name string) (haNode, error) {
	for _, n := range haNodes {
		if n.name == name {
			return n, nil
		}
	}
	return haNode{}, fmt.Errorf("lab: no gateway %q (want %s or %s)", name, NodeA, NodeB)
}

// HARunDir holds each HA lab's files (one directory per lab): the shared
// cookie key, each gateway's copies of the docs/ha files, pid files,
// conntrackd's socket and lock, logs. It is under /run because keepalived
// runs notify scripts only from directories no one but root can write to.
const HARunDir = "/run/synguard-lab"

// HAMetricsAddr is where each gateway's synguard serves its metrics,
// inside the gateway's namespace.
const HAMetricsAddr = "127.0.0.1:9847"

// HAConfig describes an HA lab.
type HAConfig struct {
	// Name prefixes the namespaces (NAME-client, NAME-gw-a, ...) and names
	// the lab's directory under HARunDir. It must be unique among running
	// labs.
	Name string
	// Binary is the synguard executable run in the namespaces; empty means
	// the running executable.
	Binary string
	// Files holds keepalived.conf, conntrackd.conf and primary-backup.sh;
	// nil means the docs/ha files built into synguard.
	Files fs.FS
	// NoSync runs no conntrackd: the negative control, in which a flow
	// cannot survive its gateway.
	NoSync bool
	// Mode is synguard's --mode; empty means always, so that every
	// connection is handed off.
	Mode string
	// Port is the backend's HTTP port; 0 means 80.
	Port uint16
}

// HA is a running HA lab: a client and a backend, each on a switch (a
// bridge in a namespace of its own), and two gateways on both switches and
// on a third, the sync link. Each gateway runs conntrackd, synguard and
// keepalived, which holds the client-side VIP (the client's default
// gateway) and the backend-side VIP (the backend's) on the master.
//
//	NAME-client ─ NAME-sw-client ─┬─ NAME-gw-a ─┬─ NAME-sw-backend ─ NAME-backend
//	                              └─ NAME-gw-b ─┘
//	                     NAME-gw-a ─ NAME-sw-sync ─ NAME-gw-b
type HA struct {
	Name            string
	Client, Backend *netns.NS
	// Service is the backend's HTTP server, the service synguard protects.
	Service netip.AddrPort
	// Dir is the lab's directory (HARunDir/NAME).
	Dir string

	cfg      HAConfig
	files    map[string][]byte // the docs/ha files as given
	switches [3]*netns.NS      // client side, backend side, sync
}

const (
	haClientSuffix  = "-client"
	haBackendSuffix = "-backend"
)

var haSwitchSuffixes = [3]string{"-sw-client", "-sw-backend", "-sw-sync"}

// The ports of a switch's bridge: one per attached namespace, named after it.
const (
	haBridge      = "br0"
	haClientPort  = "client"
	haBackendPort = "backend"
)

// HANamespaceNames returns every namespace name an HA lab called name
// uses.
func HANamespaceNames(name string) []string {
	names := []string{name + haClientSuffix, name + haBackendSuffix}
	for _, s := range haSwitchSuffixes {
		names = append(names, name+s)
	}
	for _, n := range haNodes {
		names = append(names, name+"-"+n.name)
	}
	return names
}

var haNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

func haDir(name string) string { return filepath.Join(HARunDir, name) }

// HAUp builds the lab and starts both gateways, gw-a first so that it is
// the master. On any error it removes what it made.
func HAUp(ctx context.Context, cfg HAConfig) (_ *HA, err error) {
	if !haNameRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("lab: invalid HA lab name %q: want up to 32 letters, digits, '-' or '_'", cfg.Name)
	}
	if cfg.Binary == "" {
		if cfg.Binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find synguard executable: %w", err)
		}
	}
	if cfg.Mode == "" {
		cfg.Mode = "always"
	}
	if cfg.Port == 0 {
		cfg.Port = 80
	}
	if cfg.Files == nil {
		cfg.Files = ha.Files
	}
	for _, name := range HANamespaceNames(cfg.Name) {
		if netns.Exists(name) {
			return nil, fmt.Errorf("lab %s: namespace %s already exists", cfg.Name, name)
		}
	}
	h := &HA{
		Name:    cfg.Name,
		Service: netip.AddrPortFrom(HABackendAddr, cfg.Port),
		Dir:     haDir(cfg.Name),
		cfg:     cfg,
		files:   map[string][]byte{},
	}
	for _, f := range []string{ha.Keepalived, ha.Conntrackd, ha.PrimaryBackup} {
		b, err := fs.ReadFile(cfg.Files, f)
		if err != nil {
			return nil, fmt.Errorf("lab %s: %w", cfg.Name, err)
		}
		h.files[f] = b
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("lab %s: %w", cfg.Name, err), HADown(context.WithoutCancel(ctx), cfg.Name))
		}
	}()
	// A directory left by a lab that was never taken down: its namespaces
	// are gone (checked above), so nothing in it is in use.
	if err := os.RemoveAll(h.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := h.build(ctx); err != nil {
		return nil, err
	}
	key := filepath.Join(h.Dir, "cookie.key")
	if out, err := exec.CommandContext(ctx, cfg.Binary, "keygen", key).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("synguard keygen: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := h.serveBackend(ctx); err != nil {
		return nil, err
	}
	// gw-a first: it becomes master while alone, and gw-b, booting next,
	// finds it there and stays the standby.
	if err := h.Boot(ctx, NodeA); err != nil {
		return nil, err
	}
	if err := h.WaitMaster(ctx, NodeA, 15*time.Second); err != nil {
		return nil, err
	}
	if err := h.Boot(ctx, NodeB); err != nil {
		return nil, err
	}
	if err := h.waitLog(ctx, NodeB, "keepalived.log", "Entering BACKUP STATE", 15*time.Second); err != nil {
		return nil, err
	}
	return h, nil
}

// build makes the client, the backend and the three switches.
func (h *HA) build(ctx context.Context) error {
	for i, s := range haSwitchSuffixes {
		ns, err := netns.Create(ctx, h.Name+s)
		if err != nil {
			return err
		}
		h.switches[i] = ns
		if err := setSysctls(ns, noIPv6); err != nil {
			return err
		}
		// Multicast (VRRP adverts, conntrackd's messages) goes to every
		// port: no snooping, no querier needed.
		if err := ns.Run(ctx, "ip", "link", "add", haBridge, "type", "bridge", "mcast_snooping", "0"); err != nil {
			return err
		}
		if err := ns.Run(ctx, "ip", "link", "set", haBridge, "up"); err != nil {
			return err
		}
	}
	for _, end := range []struct {
		suffix, port string
		sw           *netns.NS
		addr, via    netip.Addr
		bits         int
	}{
		{haClientSuffix, haClientPort, h.switches[0], HAClientAddr, HAClientVIP, ClientPrefix4.Bits()},
		{haBackendSuffix, haBackendPort, h.switches[1], HABackendAddr, HABackendVIP, BackendPrefix4.Bits()},
	} {
		ns, err := netns.Create(ctx, h.Name+end.suffix)
		if err != nil {
			return err
		}
		if end.suffix == haClientSuffix {
			h.Client = ns
		} else {
			h.Backend = ns
		}
		if err := setSysctls(ns, append([]sysctl{{"net/ipv4/ip_forward", "0"}}, noIPv6...)); err != nil {
			return err
		}
		if err := h.plug(ctx, ns, "eth0", end.sw, end.port); err != nil {
			return err
		}
		for _, args := range [][]string{
			{"addr", "add", netip.PrefixFrom(end.addr, end.bits).String(), "dev", "eth0"},
			{"link", "set", "eth0", "up"},
		} {
			if err := ns.Run(ctx, "ip", args...); err != nil {
				return err
			}
		}
		if err := WaitLinkReady(ctx, ns, "eth0"); err != nil {
			return err
		}
		if err := ns.Run(ctx, "ip", "route", "add", "default", "via", end.via.String()); err != nil {
			return err
		}
	}
	return nil
}

var noIPv6 = []sysctl{
	{"net/ipv6/conf/default/disable_ipv6", "1"},
	{"net/ipv6/conf/all/disable_ipv6", "1"},
}

// plug joins iface in ns to switch sw's bridge by a veth pair whose switch
// end is named port; iface is left down.
func (h *HA) plug(ctx context.Context, ns *netns.NS, iface string, sw *netns.NS, port string) error {
	if err := netns.Run(ctx, "ip", "link", "add", iface, "netns", ns.Name,
		"type", "veth", "peer", "name", port, "netns", sw.Name); err != nil {
		return err
	}
	return sw.Run(ctx, "ip", "link", "set", port, "master", haBridge, "up")
}

// serveBackend runs `synguard lab serve` in the backend namespace, so the
// backend outlives the command that built the lab.
func (h *HA) serveBackend(ctx context.Context) error {
	done, err := startDaemon(h.Backend, filepath.Join(h.Dir, "backend.log"), h.cfg.Binary,
		"lab", "serve", "--listen", h.Service.String())
	if err != nil {
		return err
	}
	return waitFor(ctx, 10*time.Second, done, "backend "+h.Service.String(), func() error {
		c, err := dial(ctx, h.Backend, h.Service)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// NodeNS returns gateway node's namespace, or nil while it is dead.
func (h *HA) NodeNS(node string) *netns.NS {
	name := h.Name + "-" + node
	if !netns.Exists(name) {
		return nil
	}
	return &netns.NS{Name: name}
}

// nodeDir holds node's copies of the docs/ha files, pid files,
// conntrackd's socket and lock, and the daemons' logs.
func (h *HA) nodeDir(node string) string { return filepath.Join(h.Dir, node) }

// HAReplacer rewrites the docs/ha files for a gateway whose files live in
// dir instead of their places on a real gateway. It is the only change
// the lab makes to them: a host running several lab gateways cannot give
// each its own /etc/conntrackd, /var/run and /var/lock.
func HAReplacer(dir string) *strings.Replacer {
	return strings.NewReplacer(
		"/etc/conntrackd/", dir+"/",
		"/var/run/conntrackd.ctl", filepath.Join(dir, "conntrackd.ctl"),
		"/var/lock/conntrack.lock", filepath.Join(dir, "conntrack.lock"),
	)
}

// writeNodeFiles writes node's copies of the docs/ha files into dir.
func (h *HA) writeNodeFiles(dir string) error {
	r := HAReplacer(dir)
	for name, b := range h.files {
		mode := os.FileMode(0o600)
		if name == ha.PrimaryBackup {
			mode = 0o700
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(r.Replace(string(b))), mode); err != nil {
			return err
		}
	}
	return nil
}

// Boot starts gateway node as a box that was just switched on: a new
// namespace with its links to the three switches, an empty conntrack
// table, nf_conntrack_tcp_loose=0, then conntrackd (unless the lab has
// NoSync), synguard, and keepalived, which starts as a backup.
func (h *HA) Boot(ctx context.Context, node string) (err error) {
	n, err := findNode(node)
	if err != nil {
		return err
	}
	name := h.Name + "-" + node
	if netns.Exists(name) {
		return fmt.Errorf("lab %s: %s is running", h.Name, node)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("boot %s: %w", node, err)
		}
	}()
	ns, err := netns.Create(ctx, name)
	if err != nil {
		return err
	}
	if err := setSysctls(ns, []sysctl{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
		// The sync link's link-local address must work at once.
		{"net/ipv6/conf/default/accept_dad", "0"},
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_ra", "0"},
	}); err != nil {
		return err
	}
	// docs/ha.md asks both gateways for it, whether synguard runs or not.
	if err := setConntrackLoose(ctx, ns); err != nil {
		return err
	}
	links := []struct {
		iface string
		sw    *netns.NS
		addr  netip.Prefix
	}{
		{HAClientIface, h.switches[0], netip.PrefixFrom(n.client, ClientPrefix4.Bits())},
		{HABackendIface, h.switches[1], netip.PrefixFrom(n.backend, BackendPrefix4.Bits())},
		{HASyncIface, h.switches[2], netip.Prefix{}},
	}
	for _, l := range links {
		if err := h.plug(ctx, ns, l.iface, l.sw, node); err != nil {
			return err
		}
		if l.addr.IsValid() {
			if err := ns.Run(ctx, "ip", "addr", "add", l.addr.String(), "dev", l.iface); err != nil {
				return err
			}
		}
		if err := ns.Run(ctx, "ip", "link", "set", l.iface, "up"); err != nil {
			return err
		}
	}
	for _, l := range links {
		if err := WaitLinkReady(ctx, ns, l.iface); err != nil {
			return err
		}
	}

	// A box that boots has an empty /run: nothing of an earlier life.
	dir := h.nodeDir(node)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := h.writeNodeFiles(dir); err != nil {
		return err
	}

	if !h.cfg.NoSync {
		conf := filepath.Join(dir, ha.Conntrackd)
		done, err := startDaemon(ns, filepath.Join(dir, "conntrackd.log"), "conntrackd", "-C", conf)
		if err != nil {
			return err
		}
		if err := waitFor(ctx, 10*time.Second, done, "conntrackd", func() error {
			return ns.Run(ctx, "conntrackd", "-C", conf, "-s")
		}); err != nil {
			return fmt.Errorf("%w (log: %s)", err, filepath.Join(dir, "conntrackd.log"))
		}
	}

	done, err := startDaemon(ns, filepath.Join(dir, "synguard.log"), h.cfg.Binary, "run",
		"--protect", h.Service.String(), "--mode", h.cfg.Mode,
		"--key-file", filepath.Join(h.Dir, "cookie.key"),
		"--metrics", HAMetricsAddr, "--xdp-interfaces", HAClientIface)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 15*time.Second, done, "synguard", func() error {
		_, err := ScrapeMetrics(ctx, ns, HAMetricsAddr)
		return err
	}); err != nil {
		return fmt.Errorf("%w (log: %s)", err, filepath.Join(dir, "synguard.log"))
	}

	conf := filepath.Join(dir, ha.Keepalived)
	kargs := []string{"-f", conf, "--config-id", node}
	if out, err := ns.Output(ctx, "keepalived", append(kargs, "--config-test")...); err != nil {
		return fmt.Errorf("keepalived rejects %s: %w: %s", conf, err, out)
	}
	kargs = append(kargs, "--vrrp", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
		"--pid", filepath.Join(dir, "keepalived.pid"), "--vrrp_pid", filepath.Join(dir, "vrrp.pid"))
	if _, err := startDaemon(ns, filepath.Join(dir, "keepalived.log"), "keepalived", kargs...); err != nil {
		return err
	}
	return nil
}

// setConntrackLoose sets nf_conntrack_tcp_loose=0 in ns, loading conntrack
// first if the host has not (the sysctl exists only with it).
func setConntrackLoose(ctx context.Context, ns *netns.NS) error {
	s := []sysctl{{"net/netfilter/nf_conntrack_tcp_loose", "0"}}
	if err := setSysctls(ns, s); err == nil {
		return nil
	}
	if err := netns.Run(ctx, "modprobe", "nf_conntrack"); err != nil {
		return err
	}
	return setSysctls(ns, s)
}

// Kill makes gateway node a dead box, as a power cut would: every process
// in its namespace (synguard, keepalived, conntrackd) gets SIGKILL and the
// namespace goes, taking its links off the switches. Nothing announces it:
// no VRRP advert of priority 0, no conntrackd goodbye, no rule removed; the
// peer notices the missing adverts. What synguard kept under /run for the
// namespace goes too, as a reboot clears /run.
func (h *HA) Kill(ctx context.Context, node string) error {
	if _, err := findNode(node); err != nil {
		return err
	}
	return removeBox(ctx, h.Name+"-"+node)
}

// removeBox kills every process in namespace name, deletes it, and removes
// the files synguard kept for it.
func removeBox(ctx context.Context, name string) error {
	files := synguardRunFiles(name)
	if err := removeNamespace(ctx, name); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// SynguardRunDir is where synguard keeps a lock and a sysctl record per
// network namespace it runs in: gateway.DefaultLockDir and
// firewall.RecordDir, which the lab cannot import (their tests import it).
const SynguardRunDir = "/run/synguard"

// synguardRunFiles names the files synguard keeps in SynguardRunDir for
// namespace name while it runs there (gateway/lock.go,
// firewall/sysctlrecord.go); none when the namespace is gone.
func synguardRunFiles(name string) []string {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", name), &st); err != nil {
		return nil
	}
	files := []string{filepath.Join(SynguardRunDir, fmt.Sprintf("netns-%d-%d.lock", st.Dev, st.Ino))}
	_ = (&netns.NS{Name: name}).Do(func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return err
		}
		files = append(files, filepath.Join(SynguardRunDir, fmt.Sprintf("sysctl-netns-%d.json", cookie)))
		return nil
	})
	return files
}

// Down stops everything and removes the lab.
func (h *HA) Down(ctx context.Context) error { return HADown(ctx, h.Name) }

// HADown removes the HA lab called name: the processes in its namespaces,
// the namespaces, and its directory. It can be called again, and after a
// partial failure.
func HADown(ctx context.Context, name string) error {
	if !haNameRE.MatchString(name) {
		return fmt.Errorf("lab: invalid HA lab name %q", name)
	}
	var errs []error
	for _, n := range HANamespaceNames(name) {
		if err := removeBox(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(haDir(name)); err != nil {
		errs = append(errs, err)
	}
	// The parent goes with the last lab; while others run it stays.
	_ = os.Remove(HARunDir)
	return errors.Join(errs...)
}

// VIPs reports which of the two VIPs node holds now; both false while it
// is dead. It asks the kernel in-process (no ip(8) to run), so that a
// fail-over can be timed closely on a busy host.
func (h *HA) VIPs(_ context.Context, node string) (client, backend bool, err error) {
	ns := h.NodeNS(node)
	if ns == nil {
		return false, false, nil
	}
	has := func(iface string, vip netip.Addr) (bool, error) {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return false, err
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			return false, err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == vip {
				return true, nil
			}
		}
		return false, nil
	}
	err = ns.Do(func() (err error) {
		if client, err = has(HAClientIface, HAClientVIP); err != nil {
			return err
		}
		backend, err = has(HABackendIface, HABackendVIP)
		return err
	})
	if err != nil && h.NodeNS(node) == nil {
		return false, false, nil // died meanwhile
	}
	return client, backend, err
}

// VIPHolder names the gateway holding both VIPs, "none" when no gateway
// holds either, and "split" otherwise (one VIP each, or one held and the
// other not: a fail-over half done).
func (h *HA) VIPHolder(ctx context.Context) (string, error) {
	var held []string
	count := 0
	for _, n := range haNodes {
		c, b, err := h.VIPs(ctx, n.name)
		if err != nil {
			return "", err
		}
		if c && b {
			held = append(held, n.name)
		}
		if c {
			count++
		}
		if b {
			count++
		}
	}
	switch {
	case count == 0:
		return "none", nil
	case len(held) == 1 && count == 2:
		return held[0], nil
	}
	return "split", nil
}

// WaitMaster waits until node holds both VIPs and the other gateway
// neither.
func (h *HA) WaitMaster(ctx context.Context, node string, limit time.Duration) error {
	return waitFor(ctx, limit, nil, node+" holding both VIPs", func() error {
		holder, err := h.VIPHolder(ctx)
		if err != nil {
			return err
		}
		if holder != node {
			return fmt.Errorf("VIPs held by %s", holder)
		}
		return nil
	})
}

// HandoffEntries reads synguard_handoff_entries from node's synguard: the
// conntrack entries with the hand-off mark in its namespace.
func (h *HA) HandoffEntries(ctx context.Context, node string) (int, error) {
	ns := h.NodeNS(node)
	if ns == nil {
		return 0, fmt.Errorf("%s is down", node)
	}
	m, err := ScrapeMetrics(ctx, ns, HAMetricsAddr)
	if err != nil {
		return 0, err
	}
	v, ok := m["synguard_handoff_entries"]
	if !ok {
		return 0, fmt.Errorf("%s: synguard exports no synguard_handoff_entries", node)
	}
	return int(v), nil
}

// ConntrackdStats returns `conntrackd -s` of node.
func (h *HA) ConntrackdStats(ctx context.Context, node string) (string, error) {
	ns := h.NodeNS(node)
	if ns == nil {
		return "", fmt.Errorf("%s is down", node)
	}
	return ns.Output(ctx, "conntrackd", "-C", filepath.Join(h.nodeDir(node), ha.Conntrackd), "-s")
}

// Log returns a daemon's log on node: "synguard.log", "keepalived.log" or
// "conntrackd.log", for diagnosing a failure.
func (h *HA) Log(node, file string) string {
	b, err := os.ReadFile(filepath.Join(h.nodeDir(node), file))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// waitLog waits until node's log file contains s.
func (h *HA) waitLog(ctx context.Context, node, file, s string, limit time.Duration) error {
	return waitFor(ctx, limit, nil, fmt.Sprintf("%s's %s to say %q", node, file, s), func() error {
		if !strings.Contains(h.Log(node, file), s) {
			return errors.New("not yet")
		}
		return nil
	})
}

// startDaemon starts name in ns in a session of its own, so that it
// outlives the command that started it and a signal to that command's
// process group, with its output appended to logPath. done receives its
// exit.
func startDaemon(ns *netns.NS, logPath, name string, args ...string) (done <-chan error, err error) {
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := ns.Command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait() }() // reaps it, whoever ends it
	return ch, nil
}

// waitFor polls ready every 50 ms until it returns nil, the limit passes,
// ctx is done or (if exited is not nil) the process it waits for exits.
func waitFor(ctx context.Context, limit time.Duration, exited <-chan error, what string, ready func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w", what, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-exited:
			return fmt.Errorf("%s exited: %v", what, e)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
