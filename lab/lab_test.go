package lab_test

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

var labSeq atomic.Int32

// labName is unique per test and process.
func labName(tag string) string {
	return fmt.Sprintf("sgt-%s-%d-%d", tag, os.Getpid(), labSeq.Add(1))
}

func up(t *testing.T, cfg lab.Config) *lab.Topology {
	t.Helper()
	topo, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Down(context.Background()); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	return topo
}

func serve(t *testing.T, ns *netns.NS, addr netip.AddrPort) *lab.Backend {
	t.Helper()
	b, err := lab.ServeBackend(context.Background(), ns, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("backend %s: %v", addr, err)
		}
	})
	return b
}

func hostSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func nsSysctl(t *testing.T, ns *netns.NS, key string) string {
	t.Helper()
	out, err := ns.Output(context.Background(), "sysctl", "-n", key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func TestTopologyForwardsBothFamilies(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	hostForward := hostSysctl(t, "net/ipv4/ip_forward")
	topo := up(t, lab.Config{Name: labName("topo")})

	// Sysctls landed in the namespaces, not in the host.
	if got := hostSysctl(t, "net/ipv4/ip_forward"); got != hostForward {
		t.Fatalf("host ip_forward changed from %s to %s", hostForward, got)
	}
	for _, c := range []struct {
		ns        *netns.NS
		key, want string
	}{
		{topo.Gateway, "net.ipv4.ip_forward", "1"},
		{topo.Gateway, "net.ipv6.conf.all.forwarding", "1"},
		{topo.Gateway, "net.ipv4.conf.all.rp_filter", "0"},
		{topo.Gateway, "net.ipv4.conf." + topo.GatewayClientSide + ".rp_filter", "0"},
		{topo.Client, "net.ipv4.ip_forward", "0"},
		{topo.Backend, "net.ipv4.ip_forward", "0"},
		{topo.Client, "net.ipv6.conf." + topo.ClientSide + ".accept_dad", "0"},
	} {
		if got := nsSysctl(t, c.ns, c.key); got != c.want {
			t.Errorf("%s in %s = %s, want %s", c.key, c.ns.Name, got, c.want)
		}
	}

	be4 := serve(t, topo.Backend, netip.AddrPortFrom(topo.BackendAddr, 8080))
	be6 := serve(t, topo.Backend, netip.AddrPortFrom(topo.BackendAddr6, 8080))

	for _, be := range []*lab.Backend{be4, be6} {
		r := lab.Probe(ctx, topo.Client, be.Addr(), 3*time.Second)
		if !r.OK || r.Bytes != lab.ProbeBytes {
			t.Fatalf("probe %s: %+v", be.Addr(), r)
		}
		// A fresh lab works from its first packet: a handshake near a
		// second means a SYN or a neighbour solicitation was lost.
		if r.Handshake > 500*time.Millisecond {
			t.Errorf("first handshake to %s took %v", be.Addr(), r.Handshake)
		}
		t.Logf("probe %s: handshake %v, total %v", be.Addr(), r.Handshake, r.Total)
	}

	before, err := lab.ReadLinkCounters(ctx, topo.Gateway, topo.GatewayClientSide)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8 << 20
	for _, be := range []*lab.Backend{be4, be6} {
		sum, got, err := lab.Download(ctx, topo.Client, be.Addr(), n)
		if err != nil {
			t.Fatal(err)
		}
		if got != n || sum != lab.ContentSHA256(n) {
			t.Fatalf("download from %s: %d bytes, SHA-256 %x, want %x", be.Addr(), got, sum, lab.ContentSHA256(n))
		}
	}
	after, err := lab.ReadLinkCounters(ctx, topo.Gateway, topo.GatewayClientSide)
	if err != nil {
		t.Fatal(err)
	}
	// Both bodies crossed the gateway toward the client.
	if d := after.Sub(before); d.TxBytes < 2*n {
		t.Fatalf("gateway sent %d bytes to the client side, want at least %d", d.TxBytes, 2*n)
	}
	if a4, a6 := be4.Accepted(), be6.Accepted(); a4 != 2 || a6 != 2 {
		t.Fatalf("backends accepted %d and %d connections, want 2 each", a4, a6)
	}

	// The path really is through the gateway: without forwarding it breaks.
	for _, fwd := range []string{"net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"} {
		if err := topo.Gateway.Run(ctx, "sysctl", "-qw", fwd); err != nil {
			t.Fatal(err)
		}
	}
	for _, be := range []*lab.Backend{be4, be6} {
		if r := lab.Probe(ctx, topo.Client, be.Addr(), time.Second); r.OK {
			t.Fatalf("probe %s succeeded with forwarding off in the gateway", be.Addr())
		}
	}
}

// A SYN from a spoofed source reaches the backend through the gateway
// (reverse-path filtering is off), and the backend's SYN-ACK is routed back
// to the client namespace, which receives it on its interface and drops
// it in mangle PREROUTING, before routing.
func TestSpoofedSourcesRouteBack(t *testing.T) {
	roottest.Require(t)
	topo := up(t, lab.Config{Name: labName("spoof")})
	for _, tc := range []struct {
		src     netip.AddrPort
		backend netip.Addr
	}{
		{netip.MustParseAddrPort("198.18.7.9:40000"), topo.BackendAddr},
		{netip.MustParseAddrPort("[2001:db8:ff00::7]:40001"), topo.BackendAddr6},
	} {
		t.Run(tc.src.Addr().String(), func(t *testing.T) {
			if !lab.SpoofPrefix4.Contains(tc.src.Addr()) && !lab.SpoofPrefix6.Contains(tc.src.Addr()) {
				t.Fatalf("%s is not in a spoof range", tc.src)
			}
			be := serve(t, topo.Backend, netip.AddrPortFrom(tc.backend, 8080))
			capture, err := lab.OpenCapture(topo.Client, topo.ClientSide)
			if err != nil {
				t.Fatal(err)
			}
			defer capture.Close()

			seg := packet.Segment{
				Src: tc.src, Dst: be.Addr(), Seq: 12345, Flags: packet.SYN, Window: 64240,
				Options: packet.Options{MSS: 1400, HasMSS: true},
			}
			sendRaw(t, topo.Client, &seg)

			buf := make([]byte, 2048)
			deadline := time.Now().Add(3 * time.Second)
			for {
				n, out, err := capture.Read(buf, time.Until(deadline))
				if err != nil {
					t.Fatalf("no SYN-ACK to %s seen on the client side: %v", tc.src, err)
				}
				var p packet.Packet
				if out || packet.Parse(buf[:n], &p) != nil {
					continue
				}
				if p.Destination() == tc.src && p.Source() == be.Addr() && p.Flags == packet.SYN|packet.ACK && p.Ack == seg.Seq+1 {
					break
				}
			}
			cmd := "iptables"
			if tc.src.Addr().Is6() {
				cmd = "ip6tables"
			}
			poll.Must(t, 3*time.Second, "the SYN-ACK to the spoofed source was not dropped in the client's mangle PREROUTING", func() bool {
				return sinkDrops(t, topo.Client, cmd) > 0
			})
		})
	}
}

// sinkDrops is the packet count of the first rule of ns's mangle
// PREROUTING.
func sinkDrops(t *testing.T, ns *netns.NS, cmd string) int {
	t.Helper()
	out, err := ns.Output(context.Background(), cmd, "-t", "mangle", "-n", "-v", "-x", "-L", "PREROUTING")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 3 {
		t.Fatalf("%s mangle PREROUTING has no rule:\n%s", cmd, out)
	}
	f := strings.Fields(lines[2])
	if len(f) < 3 || f[2] != "DROP" {
		t.Fatalf("%s mangle PREROUTING's first rule is not a DROP:\n%s", cmd, out)
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("%s mangle PREROUTING: %v", cmd, err)
	}
	return n
}

// sendRaw sends one built packet from a raw socket inside ns.
func sendRaw(t *testing.T, ns *netns.NS, seg *packet.Segment) {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, seg)
	if err != nil {
		t.Fatal(err)
	}
	err = ns.Do(func() error {
		dst := seg.Dst.Addr()
		if dst.Is4() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, b[:n], 0, &unix.SockaddrInet4{Addr: dst.As4()})
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, b[:n], 0, &unix.SockaddrInet6{Addr: dst.As16()})
	})
	if err != nil {
		t.Fatalf("send raw packet: %v", err)
	}
}

// The rmem knobs make the two ends announce different window scales,
// exactly as the kernel derives them: ilog2(max(tcp_rmem[2], rmem_max)) - 15.
func TestRmemKnobsSetWindowScale(t *testing.T) {
	roottest.Require(t)
	const clientMax, backendMax = 64 << 20, 256 << 10
	topo := up(t, lab.Config{Name: labName("wscale"), ClientRmemMax: clientMax, BackendRmemMax: backendMax, DisableIPv6: true})
	if topo.IPv6 || topo.ClientAddr6.IsValid() {
		t.Fatal("IPv6 addresses with DisableIPv6")
	}
	rmemMax, err := strconv.Atoi(hostSysctl(t, "net/core/rmem_max"))
	if err != nil {
		t.Fatal(err)
	}
	wantClient, wantBackend := wscale(clientMax, rmemMax), wscale(backendMax, rmemMax)
	if wantClient == wantBackend {
		t.Skipf("net.core.rmem_max=%d dominates both ends; no difference to test", rmemMax)
	}

	be := serve(t, topo.Backend, netip.AddrPortFrom(topo.BackendAddr, 8080))
	var conn net.Conn
	if err := topo.Client.Do(func() (err error) {
		conn, err = net.Dial("tcp", be.Addr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		info   *unix.TCPInfo
		optErr error
	)
	if err := raw.Control(func(fd uintptr) {
		info, optErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || optErr != nil {
		t.Fatal(err, optErr)
	}
	// struct tcp_info byte 6: tcpi_snd_wscale (the peer's) in the low
	// nibble, tcpi_rcv_wscale (ours) in the high one. x/sys leaves it as
	// padding, so read it from the raw struct.
	b6 := (*[8]byte)(unsafe.Pointer(info))[6]
	peer, own := int(b6&0x0f), int(b6>>4)
	if own != wantClient || peer != wantBackend {
		t.Fatalf("client announces wscale %d, backend %d; want %d and %d", own, peer, wantClient, wantBackend)
	}
}

func wscale(tcpRmemMax, rmemMax int) int {
	return min(max(bits.Len(uint(max(tcpRmemMax, rmemMax)))-1-15, 0), 14)
}

func TestDownRemovesNamespacesAndProcesses(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	topo, err := lab.Up(ctx, lab.Config{Name: labName("down")})
	if err != nil {
		t.Fatal(err)
	}
	sleeper := topo.Gateway.Command(ctx, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()

	if err := topo.Down(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ns := range topo.Namespaces() {
		if netns.Exists(ns.Name) {
			t.Errorf("namespace %s left after Down", ns.Name)
		}
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = sleeper.Process.Kill()
		t.Fatal("process in the gateway namespace survived Down")
	}
	if err := topo.Down(ctx); err != nil {
		t.Fatalf("second Down: %v", err)
	}
}

func TestDownAll(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	if err := lab.DownAll(ctx, ""); err == nil {
		t.Fatal("DownAll with an empty prefix did not fail")
	}
	prefix := labName("all") + "-"
	for _, s := range []string{"a", "b"} {
		if _, err := lab.Up(ctx, lab.Config{Name: prefix + s}); err != nil {
			t.Fatal(err)
		}
	}
	bystander, err := netns.Create(ctx, labName("bystander"))
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Delete()
	t.Cleanup(func() { _ = lab.DownAll(context.Background(), prefix) })

	if err := lab.DownAll(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, prefix) {
			t.Errorf("namespace %s left by DownAll", name)
		}
	}
	if !netns.Exists(bystander.Name) {
		t.Fatal("DownAll removed a namespace outside its prefix")
	}
}

// When a namespace name is taken, Up fails and removes what it made, but
// not the namespace that was there before.
func TestFailedUpLeavesNothing(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	for i, suffix := range []string{lab.ClientSuffix, lab.GatewaySuffix, lab.BackendSuffix} {
		t.Run(strings.TrimPrefix(suffix, "-"), func(t *testing.T) {
			name := labName("fail")
			taken, err := netns.Create(ctx, name+suffix)
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Delete()
			topo, err := lab.Up(ctx, lab.Config{Name: name})
			if err == nil {
				_ = topo.Down(ctx)
				t.Fatal("Up succeeded over an existing namespace")
			}
			for j, ns := range lab.NamespaceNames(name) {
				if j != i && netns.Exists(ns) {
					t.Errorf("namespace %s left after failed Up", ns)
					_ = (&netns.NS{Name: ns}).Delete()
				}
			}
			if !netns.Exists(taken.Name) {
				t.Fatal("failed Up removed a namespace it did not create")
			}
		})
	}
}

func TestUpRejectsBadConfig(t *testing.T) {
	for _, cfg := range []lab.Config{{}, {Name: "a/b"}, {Name: "x", ClientRmemMax: -1}, {Name: "x", ClientRTT: -1}, {Name: "x", ClientRTT: lab.MaxClientRTT + 1}} {
		if _, err := lab.Up(context.Background(), cfg); err == nil {
			t.Errorf("Up(%+v) did not fail", cfg)
		}
	}
}

// A backend with a tiny backlog accepts connections normally.
func TestBackendBacklog(t *testing.T) {
	roottest.Require(t)
	topo := up(t, lab.Config{Name: labName("backlog"), DisableIPv6: true})
	be, err := lab.ServeBackendBacklog(context.Background(), topo.Backend, netip.AddrPortFrom(topo.BackendAddr, 0), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if be.Addr().Port() == 0 {
		t.Fatal("port 0 not resolved")
	}
	out, err := topo.Backend.Output(context.Background(), "ss", "-Hltn", "sport = :"+strconv.Itoa(int(be.Addr().Port())))
	if err != nil {
		t.Fatal(err)
	}
	// ss shows a listener's backlog in the Send-Q column.
	if f := strings.Fields(out); len(f) < 3 || f[2] != "2" {
		t.Fatalf("listener backlog not 2; ss says %q", out)
	}
	if r := lab.Probe(context.Background(), topo.Client, be.Addr(), 3*time.Second); !r.OK {
		t.Fatal(r.Err)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	if r := lab.Probe(context.Background(), topo.Client, be.Addr(), time.Second); r.OK || !errors.Is(r.Err, unix.ECONNREFUSED) {
		t.Fatalf("probe after Close: %+v", r)
	}
}
