package e2e

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
)

const mib = 1 << 20

// TestHandOffToKernel: a 64 MiB download through cookie mode is intact,
// its flow sits in kernel conntrack with the sequence adjustment, and the
// queue sees nothing of it after the handshake.
func TestHandOffToKernel(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	loose := sysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_loose")
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")

	if s := saved(t, topo.Gateway); !strings.Contains(s, "-j SYNGUARD-PREROUTING") || !strings.Contains(s, "-j SYNGUARD-FORWARD") {
		t.Fatalf("rules not installed:\n%s", s)
	}
	if v := sysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_loose"); v != "0" {
		t.Fatalf("nf_conntrack_tcp_loose = %s, want 0", v)
	}

	checkHandOffMidTransfer(t, g, topo, service, topo.ClientAddr)
	// On the lab's veth links the fast path runs at tc, where it
	// completes the handshake itself (docs/architecture.md, "Handshakes
	// completed at tc").
	if v := g.metric("synguard_xdp_handshake_completed_total"); v != 1 {
		t.Fatalf("handshakes completed at tc: %v, want 1", v)
	}

	g.stop()
	if s := saved(t, topo.Gateway); strings.Contains(s, "SYNGUARD") {
		t.Fatalf("rules left after SIGTERM:\n%s", s)
	}
	if v := sysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_loose"); v != loose {
		t.Fatalf("nf_conntrack_tcp_loose = %s after stop, want %s restored", v, loose)
	}
}

// TestFloodNeverReachesBackend: during a bounded spoofed SYN flood, real
// clients get through, a 64 MiB download is intact, and the backend sees
// not one SYN from a spoofed source; for each address family.
func TestFloodNeverReachesBackend(t *testing.T) {
	for _, family := range []struct {
		name    string
		service func(*lab.Topology) netip.AddrPort
		client  func(*lab.Topology) netip.Addr
	}{
		{"IPv4", func(l *lab.Topology) netip.AddrPort { return netip.AddrPortFrom(l.BackendAddr, 80) }, func(l *lab.Topology) netip.Addr { return l.ClientAddr }},
		{"IPv6", func(l *lab.Topology) netip.AddrPort { return netip.AddrPortFrom(l.BackendAddr6, 80) }, func(l *lab.Topology) netip.Addr { return l.ClientAddr6 }},
	} {
		t.Run(family.name, func(t *testing.T) {
			topo := newLab(t, lab.Config{})
			service, client := family.service(topo), family.client(topo)
			backend := serve(t, topo.Backend, service)
			syns := watchSYNs(t, topo)
			g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")

			const rate, seconds = 20000, 8
			wait := flood(t, topo.Client, service, rate, rate*seconds, seconds*time.Second)
			// The clients below go while the flood is under way.
			poll.Must(t, 5*time.Second, "the flood's SYNs never reached the gateway", func() bool {
				return g.metric("synguard_syn_received_total") >= rate/10
			})

			download(t, topo.Client, service, 64*mib, nil)
			const probes = 20
			for i := range probes {
				if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
					t.Fatalf("legitimate client %d failed during the flood: %v", i, r.Err)
				}
			}
			t.Logf("flood: %s", wait())
			g.waitIdle()
			settleSYNs(t, topo, syns)
			syns.Close()

			m, err := g.metrics()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("gateway: %v SYNs in, %v SYN-ACKs out, %v valid cookies, %v invalid, %v handed off; backend: %d SYNs, %d accepted",
				m["synguard_syn_received_total"], m["synguard_synack_sent_total"], m["synguard_cookie_valid_total"],
				m["synguard_cookie_invalid_total"], m["synguard_flows_handed_off_total"], syns.Total(), backend.Accepted())
			if n := syns.Spoofed(); n != 0 {
				t.Fatalf("backend received %d SYNs from spoofed sources", n)
			}
			if m["synguard_syn_received_total"] < rate*seconds/2 {
				t.Fatalf("gateway saw %v flood SYNs of %d sent", m["synguard_syn_received_total"], rate*seconds)
			}
			if m["synguard_synack_sent_total"] < m["synguard_syn_received_total"]*0.9 {
				t.Fatalf("answered %v of %v SYNs", m["synguard_synack_sent_total"], m["synguard_syn_received_total"])
			}
			// The download and the probes, each handed off once; besides
			// their replayed SYNs the backend sees only the gateway's own
			// option probe, from the gateway's address.
			if want := float64(probes + 1); m["synguard_flows_handed_off_total"] != want || syns.From(client) != int64(want) {
				t.Fatalf("handed off %v flows, backend saw %d SYNs from the client; want %v of each", m["synguard_flows_handed_off_total"], syns.From(client), want)
			}
		})
	}
}

// TestWindowScalesDiffer: the client and the backend announce different
// window scales; the gateway learns the backend's and the transfer is
// intact in both directions of mismatch.
func TestWindowScalesDiffer(t *testing.T) {
	for _, tc := range []struct {
		name            string
		client, backend int
	}{
		{"small client large backend", 64 << 10, 32 << 20},
		{"large client small backend", 32 << 20, 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := newLab(t, lab.Config{ClientRmemMax: tc.client, BackendRmemMax: tc.backend})
			service := netip.AddrPortFrom(topo.BackendAddr, 80)
			serve(t, topo.Backend, service)
			g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")
			download(t, topo.Client, service, 64*mib, nil)
			if g.metric("synguard_option_mismatch_total") != 0 {
				t.Fatalf("backend options mismatched what was announced (learning failed):\n%s", g.log.String())
			}
			if !strings.Contains(g.log.String(), `"backend_options_learned"`) {
				t.Fatalf("no backend_options_learned event:\n%s", g.log.String())
			}
		})
	}
}

// TestLocalMode protects a service on the gateway host itself.
func TestLocalMode(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 8080)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Backend, "--protect", service.String(), "--mode", "always", "--local")
	if s := saved(t, topo.Backend); !strings.Contains(s, "-j SYNGUARD-INPUT") {
		t.Fatalf("local rules not installed:\n%s", s)
	}
	download(t, topo.Client, service, 16*mib, nil)
	if v := g.metric("synguard_flows_handed_off_total"); v != 1 {
		t.Fatalf("handed off %v flows, want 1", v)
	}
	if entries := handedOff(t, topo.Backend); len(entries) != 1 {
		t.Fatalf("%d conntrack entries, want 1", len(entries))
	}
}

// TestClosedBackendPortResetsClient: the backend answers the replayed SYN
// with RST, and the client learns at once instead of hanging.
func TestClosedBackendPortResetsClient(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 81) // nothing listens
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")
	start := time.Now()
	r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second)
	if r.OK {
		t.Fatal("probe to a closed port succeeded")
	}
	if !strings.Contains(r.Err.Error(), "reset") {
		t.Fatalf("client error %v, want a connection reset", r.Err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("client learned after %s; the reset should be immediate", d)
	}
	// The client's early request, if it crosses the backend's RST, carries
	// a valid cookie and tries the backend once more.
	if v := g.metric("synguard_backend_reset_total"); v < 1 || v > 2 {
		t.Fatalf("backend resets = %v, want 1 (2 if the request crossed the RST)", v)
	}
}
