package e2e

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/packet"
)

// firstSYN captures on the backend until a SYN from client arrives and
// returns its parsed options.
func firstSYN(t *testing.T, topo *lab.Topology, client netip.Addr, start func()) packet.Options {
	t.Helper()
	c, err := lab.OpenCapture(topo.Backend, topo.BackendSide)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start()
	buf := make([]byte, 2048)
	var p packet.Packet
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		n, outgoing, err := c.Read(buf, 200*time.Millisecond)
		if errors.Is(err, lab.ErrCaptureTimeout) || outgoing {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if packet.Parse(buf[:n], &p) == nil && p.Src == client && p.Flags == packet.SYN {
			return p.Options
		}
	}
	t.Fatal("no SYN from the client reached the backend")
	return packet.Options{}
}

// waitMode polls the gateway until service's synguard_mode is want, and
// reports how long that took.
func (g *gateway) waitMode(want string, limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	ok := poll.Until(limit, func() bool { return g.mode() == want })
	return time.Since(start), ok
}

// mode returns the mode label whose synguard_mode series is 1.
func (g *gateway) mode() string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	raw, err := lab.ScrapeMetricsText(ctx, g.ns, metricsAddr)
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	return lab.CurrentMode(raw)
}

// TestAutoMode: quiet traffic passes untouched (the backend gets the
// client's own SYN, timestamps and all); a flood flips the service to
// cookie mode within about a second, after which no spoofed SYN reaches
// the backend while legitimate downloads succeed; after the flood the
// service returns to passthrough.
func TestAutoMode(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "auto")
	if s := saved(t, topo.Gateway); !strings.Contains(s, "-j SYNGUARD-FIRSTACK") {
		t.Fatalf("auto mode did not install the first-ACK rule:\n%s", s)
	}
	if m := g.mode(); m != "passthrough" {
		t.Fatalf("quiet service in mode %q, want passthrough", m)
	}

	// Quiet: the client's own SYN reaches the backend.
	opts := firstSYN(t, topo, topo.ClientAddr, func() {
		go lab.Probe(context.Background(), topo.Client, service, 5*time.Second)
	})
	if !opts.HasTimestamps || !opts.HasMSS || !opts.HasWindowScale || !opts.SACKPermitted {
		t.Fatalf("backend got a SYN without the client's options: %+v", opts)
	}
	download(t, topo.Client, service, 16*mib, nil)
	if g.metric("synguard_syn_passed_total") < 2 || g.metric("synguard_first_ack_total") < 2 {
		t.Fatalf("passed %v SYNs, saw %v first ACKs; want both counted", g.metric("synguard_syn_passed_total"), g.metric("synguard_first_ack_total"))
	}
	if g.metric("synguard_flows_handed_off_total") != 0 || g.metric("synguard_synack_sent_total") != 0 {
		t.Fatal("quiet traffic went through cookie mode")
	}
	queued := g.metric("synguard_queue_received_total")

	// A flood: the service switches to cookies.
	const rate, seconds = 20000, 6
	floodStart := time.Now()
	wait := flood(t, topo.Client, service, rate, rate*seconds, seconds*time.Second)
	took, ok := g.waitMode("cookie", 5*time.Second)
	if !ok {
		t.Fatalf("still %q 5 s into a %d SYN/s flood", g.mode(), rate)
	}
	t.Logf("switched to cookie mode %s after the flood started", took.Round(10*time.Millisecond))
	if !strings.Contains(g.log.String(), `"event":"mode_change"`) {
		t.Fatal("no mode_change event")
	}
	// From now on no spoofed SYN reaches the backend.
	syns := watchSYNs(t, topo)
	download(t, topo.Client, service, 16*mib, nil)
	for i := range 10 {
		if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
			t.Fatalf("legitimate client %d failed in cookie mode: %v", i, r.Err)
		}
	}
	t.Logf("flood: %s", wait())
	floodEnd := time.Now()
	syns.Close()
	if n := syns.Spoofed(); n != 0 {
		t.Fatalf("%d spoofed SYNs reached the backend in cookie mode", n)
	}
	if g.metric("synguard_flows_handed_off_total") < 11 {
		t.Fatal("legitimate clients in cookie mode were not handed off")
	}

	// After the flood, back to passthrough within 30 s.
	back, ok := g.waitMode("passthrough", 30*time.Second)
	if !ok {
		t.Fatalf("still %q 30 s after the flood ended", g.mode())
	}
	t.Logf("back to passthrough %s after the flood ended (flood ran %s)", back.Round(100*time.Millisecond), floodEnd.Sub(floodStart).Round(100*time.Millisecond))
	download(t, topo.Client, service, 4*mib, nil)
	if g.metric("synguard_queue_received_total") <= queued {
		t.Fatal("queue counter did not move")
	}
	if !strings.Contains(g.log.String(), `"reason":"calm"`) {
		t.Fatalf("no mode_change back with reason calm:\n%s", g.log.String())
	}
}

// TestOffModeObserves: --mode off lets every SYN through, flood included,
// and reports the half-open load without intervening.
func TestOffModeObserves(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "off")
	syns := watchSYNs(t, topo)
	wait := flood(t, topo.Client, service, 5000, 10000, 2*time.Second)
	wait()
	g.waitIdle()
	settleSYNs(t, topo, syns)
	syns.Close()
	if g.mode() != "off" {
		t.Fatalf("mode %q, want off", g.mode())
	}
	if g.metric("synguard_synack_sent_total") != 0 {
		t.Fatal("off mode answered SYNs")
	}
	if n := syns.Spoofed(); n < 9000 {
		t.Fatalf("only %d of 10000 flood SYNs reached the backend in off mode", n)
	}
	if p := g.metric("synguard_syn_passed_total"); p < 9000 {
		t.Fatalf("syn_passed %v, want the flood counted", p)
	}
}
