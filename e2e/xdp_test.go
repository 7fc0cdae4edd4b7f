package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/xdp"
)

// xdpActions reads synguard_xdp_packets_total by action.
func (g *gateway) xdpActions() map[string]float64 {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	text, err := lab.ScrapeMetricsText(ctx, g.ns, metricsAddr)
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	out := make(map[string]float64)
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, `synguard_xdp_packets_total{action="`)
		if !ok {
			continue
		}
		action, value, _ := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			g.t.Fatalf("bad metric line %q", line)
		}
		out[action] = v
	}
	return out
}

// xdpOnLink reports whether link name in ns carries an XDP program.
func xdpOnLink(t *testing.T, ns *netns.NS, name string) bool {
	t.Helper()
	out, err := ns.Output(context.Background(), "ip", "-d", "link", "show", "dev", name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, "prog/xdp")
}

// peerProgram puts an XDP program that passes everything on the client's
// end of the veth, natively (on veth, frames a native XDP program sends
// with XDP_TX reach the peer only when the peer runs one), and returns
// its detach.
func peerProgram(tb testing.TB, topo *lab.Topology) (detach func()) {
	tb.Helper()
	var p *xdp.Program
	if err := topo.Client.Do(func() (err error) {
		if p, err = xdp.Load(); err != nil {
			return err
		}
		_, err = p.Attach(topo.ClientSide, xdp.ModeNative)
		return err
	}); err != nil {
		if p != nil {
			p.Close()
		}
		tb.Fatal(err)
	}
	return func() { p.Close() }
}

// TestXDPAnswersFloodAtTheDriver: with the fast path on the client's link
// (generic, and native with a program on the peer), a spoofed SYN flood
// is answered at the driver: the queue stays flat while the flood's SYNs
// are answered, none reaches the backend, and real clients and a download
// get through intact. For each address family.
func TestXDPAnswersFloodAtTheDriver(t *testing.T) {
	for _, mode := range []string{"generic", "native"} {
		for _, family := range []string{"IPv4", "IPv6"} {
			t.Run(mode+"/"+family, func(t *testing.T) {
				topo := newLab(t, lab.Config{})
				service, client := netip.AddrPortFrom(topo.BackendAddr, 80), topo.ClientAddr
				if family == "IPv6" {
					service, client = netip.AddrPortFrom(topo.BackendAddr6, 80), topo.ClientAddr6
				}
				if mode == "native" {
					t.Cleanup(peerProgram(t, topo))
				}
				serve(t, topo.Backend, service)
				syns := watchSYNs(t, topo)
				g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always",
					"--xdp", mode, "--xdp-interfaces", topo.GatewayClientSide)
				g.waitStarted()
				if want := fmt.Sprintf(`"xdp":{%q:%q}`, topo.GatewayClientSide, mode); !strings.Contains(g.log.String(), want) {
					t.Fatalf("start event does not name the link's XDP mode (%s):\n%s", want, g.log.String())
				}
				// The fast path answers once the engine has renewed it.
				poll.Must(t, 5*time.Second, "the fast path never answered a SYN", func() bool {
					lab.Probe(context.Background(), topo.Client, service, time.Second)
					return g.xdpActions()["tx"] > 0
				})
				queued := g.metric("synguard_queue_received_total")
				settleSYNs(t, topo, syns)
				replayed := syns.From(client) // the readiness probes'

				const rate, seconds = 20000, 5
				wait := flood(t, topo.Client, service, rate, rate*seconds, seconds*time.Second)
				download(t, topo.Client, service, 32*mib, nil)
				const probes = 20
				for i := range probes {
					if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
						t.Fatalf("legitimate client %d failed during the flood: %v", i, r.Err)
					}
				}
				sent := floodSent(t, wait())
				g.waitIdle()
				settleSYNs(t, topo, syns)

				acts := g.xdpActions()
				m, err := g.metrics()
				if err != nil {
					t.Fatal(err)
				}
				crossed := m["synguard_queue_received_total"] - queued
				t.Logf("flood %d SYNs; XDP tx %v drop %v pass %v; queue received %v during the flood; SYN-ACKs %v (XDP %v); backend: %d SYNs, %d spoofed",
					sent, acts["tx"], acts["drop"], acts["pass"], crossed, m["synguard_synack_sent_total"], m["synguard_xdp_synack_sent_total"], syns.Total(), syns.Spoofed())
				if n := syns.Spoofed(); n != 0 {
					t.Fatalf("backend received %d SYNs from spoofed sources", n)
				}
				if acts["tx"] < float64(sent)*0.99 {
					t.Fatalf("the fast path answered %v of %d flood SYNs", acts["tx"], sent)
				}
				// Each legitimate connection crosses the queue twice (its
				// cookie ACK, the backend's SYN-ACK), and its close once;
				// the flood not at all.
				if limit := float64(4 * (probes + 1)); crossed > limit {
					t.Fatalf("%v packets crossed the queue during the flood; legitimate traffic accounts for %v at most", crossed, limit)
				}
				if m["synguard_synack_sent_total"] < acts["tx"] {
					t.Fatalf("synguard_synack_sent_total %v does not include the fast path's %v", m["synguard_synack_sent_total"], acts["tx"])
				}
				if got := syns.From(client) - replayed; got != probes+1 {
					t.Fatalf("backend saw %d replayed SYNs from the client during the flood, want %d", got, probes+1)
				}
			})
		}
	}
}

// TestXDPDropsForgedACKs: forged ACKs toward a protected service are
// dropped at the driver and counted; none crosses the queue, and a real
// client still gets through.
func TestXDPDropsForgedACKs(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp-interfaces", topo.GatewayClientSide)
	g.waitStarted()
	poll.Must(t, 5*time.Second, "the fast path never answered a SYN", func() bool {
		lab.Probe(context.Background(), topo.Client, service, time.Second)
		return g.xdpActions()["tx"] > 0
	})
	queued := g.metric("synguard_queue_received_total")
	dropped := g.xdpActions()["drop"]

	const count = 200_000
	st, err := forgeACKs(topo.Client, service, count, ackFloodRate, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("legitimate client failed after the forged ACKs: %v", r.Err)
	}
	g.waitIdle()
	m, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	acts := g.xdpActions()
	crossed := m["synguard_queue_received_total"] - queued
	t.Logf("sent %d forged ACKs; XDP dropped %v; queue received %v; cookie_invalid %v",
		st.Sent, acts["drop"]-dropped, crossed, m["synguard_cookie_invalid_total"])
	if st.Sent < count {
		t.Fatalf("only %d of %d ACKs sent", st.Sent, count)
	}
	if got := acts["drop"] - dropped; got < count {
		t.Fatalf("the fast path dropped %v of %d forged ACKs", got, count)
	}
	if crossed > 8 {
		t.Fatalf("%v packets crossed the queue; the probe accounts for 3", crossed)
	}
	if m["synguard_cookie_invalid_total"] < count {
		t.Fatalf("synguard_cookie_invalid_total %v does not count the %d forged ACKs", m["synguard_cookie_invalid_total"], count)
	}
}

// TestXDPDetachesWhenKilled: the program leaves with the process, however
// it ends; a new gateway attaches again, and traffic in between falls back
// to the rules (a SIGKILL leaves them, as before).
func TestXDPDetachesWhenKilled(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	link := topo.GatewayClientSide

	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp", "generic")
	g.waitStarted()
	if !xdpOnLink(t, topo.Gateway, link) {
		t.Fatalf("no XDP program on %s while the gateway runs", link)
	}
	g.stop()
	if xdpOnLink(t, topo.Gateway, link) {
		t.Fatalf("XDP program left on %s after SIGTERM", link)
	}

	g = startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp", "generic")
	g.waitStarted()
	g.kill()
	poll.Must(t, 5*time.Second, "XDP program left on the link after SIGKILL", func() bool {
		return !xdpOnLink(t, topo.Gateway, link)
	})

	g = startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp", "generic")
	g.waitStarted()
	poll.Must(t, 5*time.Second, "the restarted gateway's fast path never answered", func() bool {
		lab.Probe(context.Background(), topo.Client, service, time.Second)
		return g.xdpActions()["tx"] > 0
	})
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("client failed after the restart: %v", r.Err)
	}
}
