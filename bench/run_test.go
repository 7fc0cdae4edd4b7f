package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/roottest"
)

// buildSynguard builds the synguard binary the benchmark runs on its
// gateway, or takes the one SYNGUARD_BINARY names.
func buildSynguard(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("SYNGUARD_BINARY"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "synguard")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/synguard/synguard/cmd/synguard").CombinedOutput()
	if err != nil {
		t.Fatalf("build synguard: %v\n%s", err, out)
	}
	return bin
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// A tiny benchmark end to end in namespaces: one low rate, all three
// systems and the baseline, then the report it wrote.
func TestBenchEndToEnd(t *testing.T) {
	roottest.Require(t)
	bin := buildSynguard(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const rate = 2000
	cfg := Config{
		Name:      fmt.Sprintf("sgt-bench-%d", os.Getpid()%100000),
		Binary:    bin,
		Rates:     []int{rate},
		Duration:  2 * time.Second,
		ProbeRate: 10,
		OutDir:    out,
		Progress:  logWriter{t},
	}
	if _, err := Run(ctx, cfg); err != nil {
		if log, rerr := os.ReadFile(filepath.Join(out, "synguard.log")); rerr == nil {
			t.Logf("synguard log:\n%s", log)
		}
		t.Fatal(err)
	}

	rep, err := LoadReport(filepath.Join(out, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 3 || len(rep.Baselines) != 1 {
		t.Fatalf("%d runs and %d baselines, want 3 and 1", len(rep.Runs), len(rep.Baselines))
	}
	if rep.Config.BackendOptions.MSS == 0 {
		t.Errorf("no backend MSS learned for SYNPROXY")
	}
	seen := make(map[System]bool)
	for _, r := range rep.Runs {
		seen[r.System] = true
		t.Run(string(r.System), func(t *testing.T) {
			if r.TargetPPS != rate || r.SYNsSent <= 0 || r.OfferedPPS <= 0 {
				t.Errorf("target %d, sent %d, offered %.0f/s", r.TargetPPS, r.SYNsSent, r.OfferedPPS)
			}
			// At a low rate every system answers every SYN (the
			// unprotected backend also retransmits some SYN-ACKs).
			if r.SynackPPS < 0.9*r.OfferedPPS {
				t.Errorf("SYN-ACKs %.0f/s for %.0f/s offered", r.SynackPPS, r.OfferedPPS)
			}
			if r.LegitSuccess <= 0.9 || r.LegitAttempts != 20 {
				t.Errorf("legitimate clients: %d of %d (%.2f); errors %v", r.LegitOK, r.LegitAttempts, r.LegitSuccess, r.ProbeErrors)
			}
			if r.HandshakeP50ms <= 0 || r.HandshakeP99ms < r.HandshakeP50ms || r.TotalP50ms < r.HandshakeP50ms {
				t.Errorf("latencies: handshake %.3f/%.3f ms, request p50 %.3f ms", r.HandshakeP50ms, r.HandshakeP99ms, r.TotalP50ms)
			}
			if r.CPUBusyS <= 0 || r.BenchCPUS <= 0 || r.BaselineBenchS <= 0 {
				t.Errorf("CPU: machine %.2f s, bench %.2f s, baseline %.2f s", r.CPUBusyS, r.BenchCPUS, r.BaselineBenchS)
			}
			switch r.System {
			case Synguard:
				if r.GatewayRSSMB < 1 {
					t.Errorf("synguard peak RSS %.2f MiB", r.GatewayRSSMB)
				}
				// The flood went through synguard's engine, not around it.
				if float64(r.EngineSYNs) < 0.95*float64(r.SYNsSent) {
					t.Errorf("synguard's engine saw %d SYNs of %d sent", r.EngineSYNs, r.SYNsSent)
				}
			default:
				if r.GatewayRSSMB != 0 || r.QueueDrops != 0 || r.EngineSYNs != 0 {
					t.Errorf("kernel system with RSS %.1f, queue drops %d, engine SYNs %d", r.GatewayRSSMB, r.QueueDrops, r.EngineSYNs)
				}
			}
		})
	}
	if len(seen) != 3 {
		t.Errorf("systems run: %v", seen)
	}
	// The baseline drops the flood before anything can answer it, and
	// lets legitimate clients through.
	base := rep.Baselines[0]
	if base.SynackPPS > 0.05*base.OfferedPPS || base.OfferedPPS <= 0 {
		t.Errorf("baseline: %.0f SYN-ACK/s for %.0f/s offered", base.SynackPPS, base.OfferedPPS)
	}
	if base.LegitSuccess <= 0.9 {
		t.Errorf("baseline: legitimate success %.2f", base.LegitSuccess)
	}
	for _, f := range []string{ReportMD, PlotSynack, PlotLegit, PlotCPU, "synguard.log"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || (st.Size() == 0 && f != "synguard.log") {
			t.Errorf("%s: %v", f, err)
		}
	}
}
