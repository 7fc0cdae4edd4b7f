package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/telemetry"
)

// attackEvent is an attack_start or attack_end line, as logged.
type attackEvent struct {
	Event       string  `json:"event"`
	Service     string  `json:"service"`
	Ended       string  `json:"ended"`
	Pcap        string  `json:"pcap"`
	PcapPackets int     `json:"pcap_packets"`
	SYNs        int     `json:"syns"`
	TopShare    float64 `json:"top_share"`
	Spread      float64 `json:"spread"`
	TopSources  []struct {
		Prefix    string `json:"prefix"`
		SYNs      int    `json:"syns"`
		Completed int    `json:"completed"`
	} `json:"top_sources"`
}

// attackEvents returns the attack events logged so far.
func (g *gateway) attackEvents() (starts, ends []attackEvent) {
	for l := range strings.Lines(g.log.String()) {
		if !strings.Contains(l, `"event":"attack_`) {
			continue
		}
		var e attackEvent
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			g.t.Fatalf("attack event %q: %v", l, err)
		}
		switch e.Event {
		case telemetry.EventAttackStart:
			starts = append(starts, e)
		case telemetry.EventAttackEnd:
			ends = append(ends, e)
		}
	}
	return starts, ends
}

// TestAttackForensics floods a service twice, from one /24 and then from
// the whole benchmarking /15 with its backend dead, and checks what an
// operator gets: one attack_start and one attack_end per flood, the hot
// prefix named, a pcap sample tcpdump reads, `synguard status` and the
// dashboard showing the attack, its sources and the dead backend.
func TestAttackForensics(t *testing.T) {
	for _, path := range []struct{ name, xdp string }{{"queue", "off"}, {"fast path", "auto"}} {
		t.Run(path.name, func(t *testing.T) { attackForensics(t, path.xdp) })
	}
}

func attackForensics(t *testing.T, xdpMode string) {
	browser := requireChromium(t)
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	backend := serve(t, topo.Backend, service)
	dir := t.TempDir()
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--hold", "2s",
		"--capture-dir", dir, "--xdp", xdpMode)

	// 1. A concentrated flood.
	hot := netip.MustParsePrefix("198.18.7.0/24")
	const rate, seconds = 5000, 4
	wait := floodWith(t, topo.Client, service, rate, rate*seconds, seconds*time.Second, "--sources", hot.String())
	g.waitStats(t, "an attack in progress", func(s telemetry.ServiceView) bool { return s.Attack != nil })
	out, err := topo.Gateway.Output(context.Background(), binary, "status", "--metrics", metricsAddr)
	if err != nil {
		t.Fatalf("synguard status: %v\n%s", err, out)
	}
	t.Logf("synguard status during the flood:\n%s", out)
	for _, want := range []string{service.String(), "ATTACK on " + service.String(), hot.String()} {
		if !strings.Contains(out, want) {
			t.Errorf("synguard status during the flood does not show %q", want)
		}
	}
	floodSent(t, wait())
	poll.Must(t, 20*time.Second, "no attack_end after the concentrated flood", func() bool {
		_, ends := g.attackEvents()
		return len(ends) == 1
	})
	starts, ends := g.attackEvents()
	if len(starts) != 1 {
		t.Fatalf("%d attack_start for one flood, want 1", len(starts))
	}
	end := ends[0]
	if len(end.TopSources) == 0 || end.TopSources[0].Prefix != hot.String() {
		t.Errorf("attack_end's top sources %+v: want %s first", end.TopSources, hot)
	}
	if end.TopShare < 0.9 {
		t.Errorf("top_share %.3f for a flood from one /24, want near 1", end.TopShare)
	}
	checkPcap(t, starts[0], end, hot)

	// 2. A flood spread over the /15, with the backend dead: a real
	// client's handshake is replayed to a port nobody listens on.
	backend.Close()
	// The view may still show the first attack for a moment: wait for
	// the one that starts after this flood does.
	secondFrom := time.Now()
	wait = flood(t, topo.Client, service, rate, rate*seconds, seconds*time.Second)
	g.waitStats(t, "the second attack in progress", func(s telemetry.ServiceView) bool {
		return s.Attack != nil && !s.Attack.Started.Before(secondFrom)
	})
	lab.Probe(context.Background(), topo.Client, service, 2*time.Second) // fails: its replayed SYN meets a reset
	g.waitStats(t, "the backend down", func(s telemetry.ServiceView) bool { return s.Backend.Up != nil && !*s.Backend.Up })
	f := dashboardForensics(t, browser, topo.Gateway, service)
	if !f.attack || len(f.prefixes) == 0 || !inFlood(f.prefixes[0]) {
		t.Errorf("the dashboard shows the attack %v with source prefixes %q; want the flood's", f.attack, f.prefixes)
	}
	if f.backend != "down" {
		t.Errorf("the dashboard shows the backend %q (%s), want down", f.backend, f.detail)
	}
	wait()
	poll.Must(t, 20*time.Second, "no attack_end after the spread flood", func() bool {
		_, ends := g.attackEvents()
		return len(ends) == 2
	})
	starts, ends = g.attackEvents()
	if len(starts) != 2 {
		t.Fatalf("%d attack_start for two floods, want 2", len(starts))
	}
	if s := ends[1].TopShare; s > 0.5 {
		t.Errorf("top_share %.3f for a flood spread over 512 /24s, want small", s)
	}
	if !strings.Contains(g.log.String(), `"event":"backend_down"`) {
		t.Error("no backend_down event with the backend dead")
	}
}

// TestAttackEndsAtStop: a gateway stopped during an attack logs the
// attack's end (ended "stop") with its totals so far, and finishes its
// pcap sample, so that the log's every attack_start has its attack_end.
func TestAttackEndsAtStop(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--capture-dir", t.TempDir())

	hot := netip.MustParsePrefix("198.18.7.0/24")
	const rate, seconds = 5000, 6
	wait := floodWith(t, topo.Client, service, rate, rate*seconds, seconds*time.Second, "--sources", hot.String())
	// Long enough for the sample's first 1000 SYNs: the fast path hands
	// one SYN in 8 to the sample.
	g.waitStats(t, "an attack of 10,000 SYNs in progress", func(s telemetry.ServiceView) bool {
		return s.Attack != nil && s.Attack.SYNs >= 10_000
	})
	g.stop()
	starts, ends := g.attackEvents()
	if len(starts) != 1 || len(ends) != 1 {
		t.Fatalf("%d attack_start and %d attack_end for one flood stopped in its midst, want 1 and 1", len(starts), len(ends))
	}
	if ends[0].Ended != "stop" || ends[0].SYNs == 0 {
		t.Fatalf("attack_end ended %q with %d SYNs; want \"stop\" and the flood's SYNs so far", ends[0].Ended, ends[0].SYNs)
	}
	checkPcap(t, starts[0], ends[0], hot)
	wait()
}

// TestAttackEndsWithItsService: a reload that removes a service under
// attack logs the attack's end (ended "removed"), while the other
// service goes on.
func TestAttackEndsWithItsService(t *testing.T) {
	topo, svcA, svcB, path := twoServiceLab(t)
	writeConfig(t, path, fmt.Sprintf("services:\n  - protect: %s\n    mode: always\n  - protect: %s\n    mode: always\n", svcA, svcB))
	g := startGateway(t, topo.Gateway, "--config", path)

	const rate, seconds = 5000, 6
	wait := flood(t, topo.Client, svcA, rate, rate*seconds, seconds*time.Second)
	g.waitStats(t, "an attack in progress", func(s telemetry.ServiceView) bool { return s.Attack != nil })
	writeConfig(t, path, fmt.Sprintf("services:\n  - protect: %s\n    mode: always\n", svcB))
	g.reload(telemetry.EventConfigReloaded, 1)
	poll.Must(t, 5*time.Second, "no attack_end after the reload removed the service", func() bool {
		_, ends := g.attackEvents()
		return len(ends) == 1
	})
	starts, ends := g.attackEvents()
	if len(starts) != 1 || ends[0].Ended != "removed" || ends[0].Service != svcA.String() || ends[0].SYNs == 0 {
		t.Fatalf("attack_start %+v, attack_end %+v; want one each, the end for %s, removed, with its SYNs", starts, ends, svcA)
	}
	if err := connect(topo, svcB); err != nil {
		t.Fatalf("the service kept: %v", err)
	}
	wait()
}

// checkPcap reads the attack's sample with tcpdump: the file named in
// both events, as many SYNs as the end says, from the flood's prefix.
func checkPcap(t *testing.T, start, end attackEvent, from netip.Prefix) {
	t.Helper()
	if start.Pcap == "" || start.Pcap != end.Pcap {
		t.Fatalf("pcap file %q at the start, %q at the end", start.Pcap, end.Pcap)
	}
	if _, err := os.Stat(end.Pcap); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tcpdump", "-r", end.Pcap, "-nn").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", end.Pcap, err, out)
	}
	syns, fromPrefix := 0, 0
	for l := range strings.Lines(string(out)) {
		if strings.Contains(l, "Flags [S]") {
			syns++
			if strings.Contains(l, "IP "+strings.TrimSuffix(from.Addr().String(), "0")) {
				fromPrefix++
			}
		}
	}
	if syns == 0 || syns != end.PcapPackets {
		t.Errorf("tcpdump reads %d SYNs, the event says %d packets", syns, end.PcapPackets)
	}
	if want := min(1000, end.SYNs); syns < want {
		t.Errorf("%d SYNs sampled of an attack of %d: want the first %d", syns, end.SYNs, want)
	}
	if fromPrefix < syns*9/10 {
		t.Errorf("%d of %d sampled SYNs from %s", fromPrefix, syns, from)
	}
}

// inFlood reports whether prefix lies in the range floods come from.
func inFlood(prefix string) bool {
	p, err := netip.ParsePrefix(prefix)
	return err == nil && lab.SpoofPrefix4.Overlaps(p)
}
