package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
)

// TestConfigFileServices: synguard run --config with two services whose
// modes differ: a bounded spoofed flood at the always service never
// reaches the backend, one at the off service does, and legitimate
// clients get through to both, the always service's by hand-off.
func TestConfigFileServices(t *testing.T) {
	topo := newLab(t, lab.Config{})
	always := netip.AddrPortFrom(topo.BackendAddr, 80)
	off := netip.AddrPortFrom(topo.BackendAddr, 81)
	serve(t, topo.Backend, always)
	serve(t, topo.Backend, off)
	path := filepath.Join(t.TempDir(), "synguard.yaml")
	conf := fmt.Sprintf("# Two services, the top-level mode for neither.\nmode: auto\nservices:\n"+
		"  - protect: %s\n    mode: always\n"+
		"  - protect: %s\n    mode: off\n", always, off)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := topo.Gateway.Command(context.Background(), binary, "check", "--config", path).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok: 2 services (1 always, 1 off)") {
		t.Fatalf("synguard check: %v: %s", err, out)
	}
	g := startGateway(t, topo.Gateway, "--config", path)

	for _, s := range []netip.AddrPort{always, off} {
		download(t, topo.Client, s, 4*mib, nil)
	}
	if n := g.serviceMetric("synguard_flows_handed_off_total", always); n != 1 {
		t.Errorf("always service: %v flows handed off, want the download's", n)
	}
	if n := g.serviceMetric("synguard_flows_handed_off_total", off); n != 0 {
		t.Errorf("off service: %v flows handed off, want none", n)
	}

	const rate, count = 2000, 2000
	for _, tc := range []struct {
		service netip.AddrPort
		reach   bool // spoofed SYNs reach the backend
	}{{off, true}, {always, false}} {
		syns := watchSYNs(t, topo)
		sent := floodSent(t, flood(t, topo.Client, tc.service, rate, count, 5*time.Second)())
		g.waitIdle()
		settleSYNs(t, topo, syns)
		syns.Close()
		spoofed := syns.Spoofed()
		t.Logf("%s: %d spoofed SYNs sent, %d reached the backend", tc.service, sent, spoofed)
		switch {
		case tc.reach && spoofed < int64(sent)/2:
			t.Errorf("off service %s: %d of %d spoofed SYNs reached the backend, want them passed", tc.service, spoofed, sent)
		case !tc.reach && spoofed != 0:
			t.Errorf("always service %s: %d spoofed SYNs reached the backend, want none", tc.service, spoofed)
		}
	}
	// The always service answered the flood with cookies (in XDP or the
	// engine); the off service answered nothing.
	answered := func(s netip.AddrPort) float64 {
		return g.serviceMetric("synguard_synack_sent_total", s) + g.serviceMetric("synguard_xdp_synack_sent_total", s)
	}
	poll.Must(t, 5*time.Second, "the always service's SYN-ACKs were never counted", func() bool { return answered(always) >= count/2 })
	if n := answered(off); n != 0 {
		t.Errorf("off service sent %v SYN-ACKs, want none", n)
	}
	if r := lab.Probe(context.Background(), topo.Client, always, 5*time.Second); !r.OK {
		t.Fatalf("legitimate client after the floods: %v", r.Err)
	}
}
