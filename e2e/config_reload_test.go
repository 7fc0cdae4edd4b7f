package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
)

// writeConfig writes a configuration file for the test and returns its
// path.
func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reload sends SIGHUP and waits for the event of its outcome, the n-th of
// that name in the log.
func (g *gateway) reload(event string, n int) string {
	g.t.Helper()
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		g.t.Fatal(err)
	}
	var line string
	poll.Must(g.t, 10*time.Second, "no "+event+" event after SIGHUP", func() bool {
		seen := 0
		for l := range strings.Lines(g.log.String()) {
			if strings.Contains(l, `"event":"`+event+`"`) {
				if seen++; seen == n {
					line = l
					return true
				}
			}
		}
		return false
	})
	return line
}

// twoServiceLab is a lab whose backend serves two services, on ports 80
// and 8080, and the path of the gateway's configuration file, not yet
// written.
func twoServiceLab(t *testing.T) (topo *lab.Topology, a, b netip.AddrPort, config string) {
	t.Helper()
	topo = newLab(t, lab.Config{})
	a, b = netip.AddrPortFrom(topo.BackendAddr, 80), netip.AddrPortFrom(topo.BackendAddr, 8080)
	serve(t, topo.Backend, a)
	serve(t, topo.Backend, b)
	return topo, a, b, filepath.Join(t.TempDir(), "synguard.yaml")
}

// withoutComments drops iptables-save's dated comment lines.
func withoutComments(s string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l)
		}
	}
	return b.String()
}

// TestReloadUnderLiveDownload: SIGHUP adds a service and changes another's
// mode while a handed-off download runs; the download is intact, the new
// service is protected at once, the old one keeps its counters. A file
// that does not validate is then rejected with its line and key, and
// everything stays as it was.
func TestReloadUnderLiveDownload(t *testing.T) {
	topo, svcA, svcB, path := twoServiceLab(t)
	writeConfig(t, path, fmt.Sprintf("services:\n  - protect: %s\n    mode: always\n", svcA))
	g := startGateway(t, topo.Gateway, "--config", path)

	// A download through A, handed off, slow enough to span the reload.
	const size, rate = 48 * mib, 12 * mib
	done := make(chan error, 1)
	var got atomic.Int64
	go func() { done <- slowDownload(topo.Client, svcA, size, rate, func(n int64) { got.Store(n) }) }()
	poll.Must(t, 10*time.Second, "the download did not start", func() bool { return got.Load() > 2*mib })
	synacksA := g.serviceMetric("synguard_synack_sent_total", svcA)
	if synacksA < 1 {
		t.Fatalf("service A answered no SYN before the reload (%v)", synacksA)
	}

	writeConfig(t, path, fmt.Sprintf(`services:
  - protect: %s
    mode: auto
    half_open_high: 256
  - protect: %s
    mode: always
`, svcA, svcB))
	line := g.reload("config_reloaded", 1)
	for _, want := range []string{"added " + svcB.String(), svcA.String() + ": mode always -> auto", "half_open_high 128 -> 256"} {
		if !strings.Contains(line, want) {
			t.Errorf("config_reloaded %s does not list %q", line, want)
		}
	}
	if r := lab.Probe(context.Background(), topo.Client, svcB, 5*time.Second); !r.OK {
		t.Fatalf("client to the added service: %v", r.Err)
	}
	if n := g.serviceMetric("synguard_synack_sent_total", svcB); n < 1 {
		t.Errorf("the added always-mode service sent %v SYN-ACKs: not protected", n)
	}
	if n := g.serviceMetric("synguard_synack_sent_total", svcA); n < synacksA {
		t.Errorf("service A's synack_sent went from %v to %v: counters not kept", synacksA, n)
	}
	if err := <-done; err != nil {
		t.Fatalf("the download across the reload: %v", err)
	}

	// A bad file: rejected, naming the line and the key; nothing changes.
	before := withoutComments(saved(t, topo.Gateway))
	writeConfig(t, path, fmt.Sprintf(`services:
  - protect: %s
    mode: always
    half_open_hgh: 10
`, svcA))
	line = g.reload("config_rejected", 1)
	if !strings.Contains(line, ":4:") || !strings.Contains(line, "half_open_hgh") {
		t.Errorf("config_rejected %s: want the line (4) and the key", line)
	}
	if after := withoutComments(saved(t, topo.Gateway)); after != before {
		t.Errorf("a rejected reload changed the rules:\n%s\nwas\n%s", after, before)
	}
	synacksB := g.serviceMetric("synguard_synack_sent_total", svcB)
	if r := lab.Probe(context.Background(), topo.Client, svcB, 5*time.Second); !r.OK {
		t.Fatalf("client to service B after the rejected reload: %v", r.Err)
	}
	if n := g.serviceMetric("synguard_synack_sent_total", svcB); n <= synacksB {
		t.Error("service B is no longer protected after a rejected reload")
	}
	// A change only a restart can make is rejected too.
	writeConfig(t, path, fmt.Sprintf("queue: 9\nservices:\n  - protect: %s\n", svcA))
	if line := g.reload("config_rejected", 2); !strings.Contains(line, "queue") || !strings.Contains(line, "restart") {
		t.Errorf("config_rejected %s: want it to name queue and a restart", line)
	}
}

// TestAllowAndDeny: an allowed client is never challenged, a denied
// prefix's SYNs never reach the backend, and both are counted; a service
// without lists is not affected.
func TestAllowAndDeny(t *testing.T) {
	topo := newLab(t, lab.Config{})
	svcA := netip.AddrPortFrom(topo.BackendAddr, 80)
	svcB := netip.AddrPortFrom(topo.BackendAddr, 8080)
	serve(t, topo.Backend, svcA)
	serve(t, topo.Backend, svcB)
	syns := watchSYNs(t, topo)
	path := filepath.Join(t.TempDir(), "synguard.yaml")
	writeConfig(t, path, fmt.Sprintf(`mode: always
services:
  - protect: %s
    allow: [%s]
    deny: [%s]
  - protect: %s
`, svcA, topo.ClientAddr, lab.SpoofPrefix4, svcB))
	g := startGateway(t, topo.Gateway, "--config", path)

	for range 3 {
		if r := lab.Probe(context.Background(), topo.Client, svcA, 5*time.Second); !r.OK {
			t.Fatalf("allowed client: %v", r.Err)
		}
	}
	if n := g.serviceMetric("synguard_syn_allowed_total", svcA); n < 3 {
		t.Errorf("syn_allowed = %v after 3 connections of an allowed client, want 3", n)
	}
	if n := g.serviceMetric("synguard_synack_sent_total", svcA); n != 0 {
		t.Errorf("an allowed client was challenged: %v cookie SYN-ACKs", n)
	}
	if r := lab.Probe(context.Background(), topo.Client, svcB, 5*time.Second); !r.OK {
		t.Fatalf("client to the service without lists: %v", r.Err)
	}
	if n := g.serviceMetric("synguard_synack_sent_total", svcB); n < 1 {
		t.Error("the service without lists did not challenge the client")
	}

	const rate, seconds = 5000, 3
	wait := flood(t, topo.Client, svcA, rate, rate*seconds, seconds*time.Second)
	sent := floodSent(t, wait())
	g.waitIdle()
	settleSYNs(t, topo, syns)
	if n := syns.Spoofed(); n != 0 {
		t.Errorf("%d SYNs from the denied (spoofed) prefix reached the backend", n)
	}
	if n := g.serviceMetric("synguard_syn_denied_total", svcA); int(n) != sent {
		t.Errorf("syn_denied = %v, want every one of the %d flood SYNs", n, sent)
	}
}
