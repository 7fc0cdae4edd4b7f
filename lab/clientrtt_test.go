package lab_test

import (
	"bytes"
	"context"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

const clientRTT = 20 * time.Millisecond

// median of a sample; xs is not modified.
func median(xs []time.Duration) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// With a client RTT, the remote client is that round trip (plus the lab's
// own) from the backend, in both families: no packet crosses the relay
// faster than the delay, and the typical one not much slower. Its
// connections work, bulk data included, and a client-speaks-first
// request's first byte comes two round trips after connect() without a
// proxy in front.
func TestClientRTTDelaysTheRemoteClient(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	topo := up(t, lab.Config{Name: labName("rtt"), ClientRTT: clientRTT})
	if topo.Remote == nil || topo.Relay == nil || topo.LegitClient() != topo.Remote || topo.ClientRTT != clientRTT {
		t.Fatalf("remote %v, relay %v, legitimate clients in %v, RTT %v", topo.Remote, topo.Relay, topo.LegitClient(), topo.ClientRTT)
	}
	for _, c := range []struct {
		ns        *netns.NS
		key, want string
	}{
		{topo.Client, "net.ipv4.ip_forward", "1"},
		{topo.Client, "net.ipv6.conf.all.forwarding", "1"},
		{topo.Remote, "net.ipv4.ip_forward", "0"},
		{topo.Relay, "net.ipv4.ip_forward", "0"},
		{topo.Relay, "net.ipv6.conf.all.disable_ipv6", "1"},
	} {
		if got := nsSysctl(t, c.ns, c.key); got != c.want {
			t.Errorf("%s in %s = %s, want %s", c.key, c.ns.Name, got, c.want)
		}
	}

	for _, fam := range []struct {
		name    string
		backend netip.Addr
	}{{"ipv4", topo.BackendAddr}, {"ipv6", topo.BackendAddr6}} {
		t.Run(fam.name, func(t *testing.T) {
			base, err := lab.Ping(ctx, topo.Client, fam.backend, 20, 5*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			far, err := lab.Ping(ctx, topo.Remote, fam.backend, 20, 5*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("ping %s: from the client p50 %v, from the remote client p50 %v (min %v, max %v), %d of 20 answered",
				fam.backend, median(base), median(far), slices.Min(far), slices.Max(far), len(far))
			if m := slices.Min(far); m < clientRTT {
				t.Errorf("an echo crossed the relay in %v, under its %v round trip", m, clientRTT)
			}
			// The delay, not the machine, decides: the median within
			// 5 ms of the lab's own RTT plus the delay.
			if m, want := median(far), median(base)+clientRTT; m > want+5*time.Millisecond {
				t.Errorf("median RTT %v through the relay, want about %v", m, want)
			}

			be := serve(t, topo.Backend, netip.AddrPortFrom(fam.backend, 8080))
			r := lab.Probe(ctx, topo.Remote, be.Addr(), 3*time.Second)
			if !r.OK {
				t.Fatal(r.Err)
			}
			t.Logf("probe: handshake %v, first byte %v, total %v", r.Handshake, r.FirstByte, r.Total)
			if r.Handshake < clientRTT || r.FirstByte < 2*clientRTT || r.Total < r.FirstByte {
				t.Errorf("handshake %v, first byte %v, total %v: want one and two round trips of %v at least",
					r.Handshake, r.FirstByte, r.Total, clientRTT)
			}
			// Full-sized segments cross whole and intact.
			const n = 4 << 20
			sum, got, err := lab.Download(ctx, topo.Remote, be.Addr(), n)
			if err != nil || got != n || sum != lab.ContentSHA256(n) {
				t.Fatalf("download of %d bytes: %d bytes, checksum ok %v, %v", n, got, sum == lab.ContentSHA256(n), err)
			}
		})
	}
	up, down := topo.RelayStats()
	t.Logf("relay: toward the gateway %+v, toward the remote client %+v", up, down)
	if up.Forwarded == 0 || down.Forwarded == 0 || up.Oversize+down.Oversize+up.SendErrors+down.SendErrors > 0 {
		t.Errorf("relay: toward the gateway %+v, toward the remote client %+v", up, down)
	}

	// The relay outlives its links going down and up again (a frame
	// sent meanwhile fails, and is counted).
	for _, iface := range []string{lab.RelayClientIface, lab.RelayRemoteIface} {
		for _, state := range []string{"down", "up"} {
			if err := topo.Relay.Run(ctx, "ip", "link", "set", iface, state); err != nil {
				t.Fatal(err)
			}
		}
		if err := lab.WaitLinkReady(ctx, topo.Relay, iface); err != nil {
			t.Fatal(err)
		}
	}
	be := serve(t, topo.Backend, netip.AddrPortFrom(topo.BackendAddr, 8081))
	if r := lab.Probe(ctx, topo.Remote, be.Addr(), 3*time.Second); !r.OK {
		t.Fatalf("after the relay's links went down and up: %v", r.Err)
	}
}

// sendSpoofedSYNs sends n SYNs to dst from sources in the spoof range
// (one per source) from a raw socket inside ns.
func sendSpoofedSYNs(t *testing.T, ns *netns.NS, dst netip.AddrPort, n int) {
	t.Helper()
	err := ns.Do(func() error {
		var (
			family int
			sa     unix.Sockaddr
		)
		if dst.Addr().Is4() {
			family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: dst.Addr().As4()}
		} else {
			family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: dst.Addr().As16()}
		}
		fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		b := make([]byte, packet.MaxHandshakeLen)
		for i := range n {
			src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
			if dst.Addr().Is6() {
				a := lab.SpoofPrefix6.Addr().As16()
				a[14], a[15] = byte(i>>8), byte(i)
				src = netip.AddrFrom16(a)
			}
			seg := packet.Segment{Src: netip.AddrPortFrom(src, uint16(20000+i)), Dst: dst, Seq: uint32(i) * 7919,
				Flags: packet.SYN, Window: 64240, Options: packet.Options{MSS: 1400, HasMSS: true}}
			k, err := packet.Build(b, &seg)
			if err != nil {
				return err
			}
			if err := unix.Sendto(fd, b[:k], 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send spoofed SYNs: %v", err)
	}
}

// A flood keeps its direct path with a client RTT: sent from the client
// namespace, it goes straight to the gateway, and the backend's SYN-ACKs
// to its spoofed sources end in the client namespace, neither crossing
// the relay nor bouncing back to the gateway now that the client
// namespace forwards.
func TestClientRTTFloodKeepsItsDirectPath(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	topo := up(t, lab.Config{Name: labName("rttflood"), ClientRTT: clientRTT})
	const n = 2000
	for _, fam := range []struct {
		name    string
		backend netip.Addr
	}{{"ipv4", topo.BackendAddr}, {"ipv6", topo.BackendAddr6}} {
		t.Run(fam.name, func(t *testing.T) {
			be := serve(t, topo.Backend, netip.AddrPortFrom(fam.backend, 8080))
			read := func(ns *netns.NS, iface string) lab.LinkCounters {
				t.Helper()
				c, err := lab.ReadLinkCounters(ctx, ns, iface)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			relayRemote0, relayClient0 := read(topo.Relay, lab.RelayRemoteIface), read(topo.Relay, lab.RelayClientIface)
			gw0, client0 := read(topo.Gateway, topo.GatewayClientSide), read(topo.Client, topo.ClientSide)
			up0, down0 := topo.RelayStats()

			sendSpoofedSYNs(t, topo.Client, be.Addr(), n)
			// The backend answers every SYN (with a cookie once its
			// queue is full): n SYN-ACKs reach the client namespace.
			poll.Must(t, 5*time.Second, "SYN-ACKs to the spoofed sources reach the client namespace", func() bool {
				return read(topo.Client, topo.ClientSide).Sub(client0).RxPackets >= n
			})
			// What the gateway got back from the client side: the flood,
			// and no SYN-ACK sent back toward it. Retransmitted SYN-ACKs
			// do not come back either; allow for a little else.
			if rx := read(topo.Gateway, topo.GatewayClientSide).Sub(gw0).RxPackets; rx > n+n/10 {
				t.Errorf("the gateway received %d packets from the client side for %d SYNs sent: the SYN-ACKs came back", rx, n)
			}
			relayRemote, relayClient := read(topo.Relay, lab.RelayRemoteIface).Sub(relayRemote0), read(topo.Relay, lab.RelayClientIface).Sub(relayClient0)
			up, down := topo.RelayStats()
			t.Logf("relay links: toward the remote %+v, toward the client %+v; relayed %d up, %d down",
				relayRemote, relayClient, up.Forwarded-up0.Forwarded, down.Forwarded-down0.Forwarded)
			if crossed := relayClient.RxPackets + relayClient.TxPackets + relayRemote.RxPackets + relayRemote.TxPackets; crossed > 10 {
				t.Errorf("%d packets crossed the relay's links during a flood of %d SYNs", crossed, n)
			}
		})
	}
}

// Down stops the relay and removes all five namespaces; an Up that fails
// on a taken relay or remote name removes what it made and leaves the
// taken one. While the relay runs the process has a P more for each of
// its two sending threads, which hold one as they sleep, and Down takes
// them back.
func TestClientRTTCleanup(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	procs := runtime.GOMAXPROCS(0)
	name := labName("rttdown")
	topo, err := lab.Up(ctx, lab.Config{Name: name, ClientRTT: clientRTT})
	if err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != procs+2 {
		t.Errorf("GOMAXPROCS %d with the relay running, want %d: a P for each sending thread", got, procs+2)
	}
	nss := topo.Namespaces()
	if len(nss) != 5 {
		t.Fatalf("%d namespaces, want 5", len(nss))
	}
	if err := topo.Down(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ns := range nss {
		if netns.Exists(ns.Name) {
			t.Errorf("namespace %s left after Down", ns.Name)
		}
	}
	var stacks bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&stacks, 1); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stacks.String(), "lab.(*delayLine)") {
		t.Errorf("relay goroutines left after Down:\n%s", stacks.String())
	}
	if err := topo.Down(ctx); err != nil {
		t.Fatalf("second Down: %v", err)
	}
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS %d after Down, want %d as before Up", got, procs)
	}

	for _, suffix := range []string{lab.RelaySuffix, lab.RemoteSuffix} {
		t.Run(strings.TrimPrefix(suffix, "-"), func(t *testing.T) {
			name := labName("rttfail")
			taken, err := netns.Create(ctx, name+suffix)
			if err != nil {
				t.Fatal(err)
			}
			defer taken.Delete()
			if topo, err := lab.Up(ctx, lab.Config{Name: name, ClientRTT: clientRTT}); err == nil {
				_ = topo.Down(ctx)
				t.Fatal("Up succeeded over an existing namespace")
			}
			for _, s := range []string{lab.ClientSuffix, lab.GatewaySuffix, lab.BackendSuffix, lab.RelaySuffix, lab.RemoteSuffix} {
				if s != suffix && netns.Exists(name+s) {
					t.Errorf("namespace %s left after failed Up", name+s)
					_ = (&netns.NS{Name: name + s}).Delete()
				}
			}
			if !netns.Exists(taken.Name) {
				t.Fatal("failed Up removed a namespace it did not create")
			}
		})
	}
}
