package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
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

// runTinyBench runs the whole benchmark as cfg says, in a lab of its own
// named after cfg.Name, for 2 s at each rate with 10 legitimate clients a
// second, and returns the report it wrote and where.
func runTinyBench(t *testing.T, cfg Config) (*Report, string) {
	t.Helper()
	roottest.Require(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg.Name = fmt.Sprintf("%s-%d", cfg.Name, os.Getpid()%100000)
	cfg.Binary = buildSynguard(t)
	cfg.Duration = 2 * time.Second
	cfg.ProbeRate = 10
	cfg.OutDir = out
	if cfg.Progress == nil {
		cfg.Progress = logWriter{t}
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
	return rep, out
}

// A tiny benchmark end to end in namespaces: one low rate, all four
// systems and the baseline, then the report it wrote. synguard answers
// the flood in XDP, synguard-nfqueue through its queue.
func TestBenchEndToEnd(t *testing.T) {
	const rate = 2000
	rep, out := runTinyBench(t, Config{Name: "sgt-bench", Rates: []int{rate}})
	if len(rep.Runs) != 4 || len(rep.Baselines) != 1 {
		t.Fatalf("%d runs and %d baselines, want 4 and 1", len(rep.Runs), len(rep.Baselines))
	}
	if rep.Attack != KindSYN {
		t.Errorf("attack %q, want syn", rep.Attack)
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
			case Synguard, SynguardNFQueue:
				if r.GatewayRSSMB < 1 {
					t.Errorf("synguard peak RSS %.2f MiB", r.GatewayRSSMB)
				}
				// The flood went through synguard, not around it: its
				// engine counts the SYNs its XDP program answered too.
				if float64(r.EngineSYNs) < 0.95*float64(r.SYNsSent) {
					t.Errorf("synguard's engine saw %d SYNs of %d sent", r.EngineSYNs, r.SYNsSent)
				}
				if r.Queues != 1 || len(r.QueueReceived) != 1 {
					t.Errorf("synguard with %d queues, received by queue %v", r.Queues, r.QueueReceived)
				}
			default:
				if r.GatewayRSSMB != 0 || r.QueueDrops != 0 || r.EngineSYNs != 0 || r.Queues != 0 || r.QueueReceived != nil {
					t.Errorf("kernel system with RSS %.1f, queue drops %d, engine SYNs %d, queues %d %v",
						r.GatewayRSSMB, r.QueueDrops, r.EngineSYNs, r.Queues, r.QueueReceived)
				}
				if r.Path != PathKernel {
					t.Errorf("%s with path %q", r.System, r.Path)
				}
			}
			switch r.System {
			case Synguard:
				// By default the fast path answers the flood, in the tc
				// program on the lab's veth, and the queue sees little
				// of it.
				if r.Path != PathTC || float64(r.XDPTX) < 0.95*float64(r.SYNsSent) {
					t.Errorf("synguard: path %q, XDP sent %d SYN-ACKs for %d SYNs", r.Path, r.XDPTX, r.SYNsSent)
				}
			case SynguardNFQueue:
				// With --xdp off the one queue received the flood.
				if r.Path != PathNFQueue || r.XDPTX != 0 || len(r.QueueReceived) != 1 || float64(r.QueueReceived[0]) < 0.95*float64(r.SYNsSent) {
					t.Errorf("synguard-nfqueue: path %q, XDP sent %d, queue received %v of %d SYNs sent", r.Path, r.XDPTX, r.QueueReceived, r.SYNsSent)
				}
			}
		})
	}
	if len(seen) != 4 {
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

// synguard and synguard-nfqueue are each measured once per queue count,
// in the order given, between the systems before and after them; the
// kernel systems have no count.
func TestConfigVariants(t *testing.T) {
	cfg := Config{Systems: []System{Synproxy, Synguard, None, SynguardNFQueue}, Queues: []int{2, 1}}
	want := []variant{{Synproxy, 0}, {Synguard, 2}, {Synguard, 1}, {None, 0}, {SynguardNFQueue, 2}, {SynguardNFQueue, 1}}
	if got := cfg.variants(); !slices.Equal(got, want) {
		t.Errorf("variants %v, want %v", got, want)
	}
	// Unset, every system with one queue, in report order.
	want = []variant{{Synguard, 1}, {SynguardNFQueue, 1}, {Synproxy, 0}, {None, 0}}
	if got := (&Config{}).variants(); !slices.Equal(got, want) {
		t.Errorf("default variants %v, want %v", got, want)
	}
	if got := cfg.progressName(variant{Synguard, 2}); got != "synguard×2" {
		t.Errorf("progress name %q", got)
	}
	if got := cfg.progressName(variant{SynguardNFQueue, 1}); got != "synguard-nfqueue×1" {
		t.Errorf("progress name %q", got)
	}
	if got := (&Config{Queues: DefaultQueues}).progressName(variant{Synguard, 1}); got != "synguard" {
		t.Errorf("default progress name %q", got)
	}
}

func TestConfigValidateQueues(t *testing.T) {
	ok := Config{Name: "b", Binary: "/bin/true", Rates: []int{1000}, Duration: time.Second, ProbeRate: 1, OutDir: "/tmp/x"}
	for _, q := range [][]int{nil, {1}, {1, 2, 4}, {MaxQueues}} {
		cfg := ok
		cfg.Queues = q
		if err := cfg.Validate(); err != nil {
			t.Errorf("queues %v: %v", q, err)
		}
	}
	// Queue counts apply to either synguard system alone.
	for _, sys := range []System{Synguard, SynguardNFQueue} {
		cfg := ok
		cfg.Queues, cfg.Systems = []int{1, 2}, []System{sys, Synproxy}
		if err := cfg.Validate(); err != nil {
			t.Errorf("queues 1,2 with %s: %v", sys, err)
		}
	}
	for _, tt := range []struct {
		queues  []int
		systems []System
		rates   int
		want    string
	}{
		{[]int{0}, nil, 1, "0 queues outside"},
		{[]int{MaxQueues + 1}, nil, 1, "queues outside"},
		{[]int{2, 2}, nil, 1, "queue count 2 listed twice"},
		{[]int{1, 2}, []System{None}, 1, "apply to synguard and synguard-nfqueue, neither of which is among the systems"},
		// 28 rates × (6 variants + baseline) = 196 runs.
		{[]int{1, 2}, nil, 28, "more than 192 runs"},
		// 65 rates × (2 variants + baseline) = 195 runs.
		{[]int{1}, []System{SynguardNFQueue, None}, 65, "more than 192 runs"},
	} {
		cfg := ok
		cfg.Queues, cfg.Systems = tt.queues, tt.systems
		cfg.Rates = nil
		for i := range tt.rates {
			cfg.Rates = append(cfg.Rates, 1000+i)
		}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("queues %v, systems %v, %d rates: error %v, want %q", tt.queues, tt.systems, tt.rates, err, tt.want)
		}
	}
}

// The packets each queue received are read by queue label from the
// metrics text; other metrics and labels are ignored.
func TestPerQueue(t *testing.T) {
	text := `# HELP synguard_queue_received_total Packets received from the NFQUEUE.
# TYPE synguard_queue_received_total counter
synguard_queue_received_total{queue="0"} 250491
synguard_queue_received_total{queue="1"} 2.49816e+05
synguard_queue_dropped_total{queue="1"} 7
synguard_queue_received_totals{queue="2"} 9
synguard_syn_received_total{service="203.0.113.2:80"} 500307
`
	got, err := perQueue(text, "synguard_queue_received_total")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[int]float64{0: 250491, 1: 249816}; !maps.Equal(got, want) {
		t.Errorf("perQueue = %v, want %v", got, want)
	}
	for _, bad := range []string{`synguard_queue_received_total{queue="x"} 1`, `synguard_queue_received_total{queue="0"} many`,
		`synguard_queue_received_total{queue="0" 1`} {
		if _, err := perQueue(bad, "synguard_queue_received_total"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A tiny IPv6 benchmark end to end: the lab with IPv6, a flood from
// 2001:db8:ff00::/40 to [2001:db8:b::2]:80, synguard and SYNPROXY over
// ip6tables, legitimate clients from the client's IPv6 address.
func TestBenchEndToEndIPv6(t *testing.T) {
	rep, out := runTinyBench(t, Config{Name: "sgt-bench6", Rates: []int{5000}, Systems: []System{Synguard, Synproxy}, Family: IPv6})
	if rep.Family != IPv6 || len(rep.Runs) != 2 || len(rep.Baselines) != 1 {
		t.Fatalf("family %q, %d runs, %d baselines; want ipv6, 2, 1", rep.Family, len(rep.Runs), len(rep.Baselines))
	}
	// IPv6's MSS on a 1500-byte link, learned from the backend's SYN-ACK.
	if mss := rep.Config.BackendOptions.MSS; mss != 1440 {
		t.Errorf("backend MSS %d, want 1440 (IPv6)", mss)
	}
	for _, r := range rep.Runs {
		t.Run(string(r.System), func(t *testing.T) {
			// The flood is counted, SYN-ACKs toward 2001:db8:ff00::/40 are
			// counted, and the clients got through over IPv6.
			if r.OfferedPPS <= 0 || r.SynackPPS <= 0 || r.SynackPPS < 0.9*r.OfferedPPS {
				t.Errorf("SYN-ACKs %.0f/s for %.0f/s offered", r.SynackPPS, r.OfferedPPS)
			}
			if r.LegitSuccess <= 0.9 {
				t.Errorf("legitimate clients: %d of %d (%.2f); errors %v", r.LegitOK, r.LegitAttempts, r.LegitSuccess, r.ProbeErrors)
			}
			if r.System == Synguard && float64(r.EngineSYNs) < 0.95*float64(r.SYNsSent) {
				t.Errorf("synguard's engine saw %d SYNs of %d sent", r.EngineSYNs, r.SYNsSent)
			}
		})
	}
	if base := rep.Baselines[0]; base.SynackPPS > 0.05*base.OfferedPPS || base.LegitSuccess <= 0.9 {
		t.Errorf("baseline: %.0f SYN-ACK/s for %.0f/s offered, legitimate success %.2f", base.SynackPPS, base.OfferedPPS, base.LegitSuccess)
	}
	md, err := os.ReadFile(filepath.Join(out, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "Address family: **IPv6**") {
		t.Error("report.md does not say IPv6")
	}
}

// A tiny benchmark in two rounds: the baseline and the systems take
// turns, in the opposite order in the second round, and each run pools
// its rounds and lists them.
func TestBenchEndToEndRounds(t *testing.T) {
	var progress strings.Builder
	procs, during := runtime.GOMAXPROCS(0), &procsSeen{}
	rep, out := runTinyBench(t, Config{Name: "sgt-benchrnd", Rates: []int{2000}, Systems: []System{Synguard, Synproxy},
		Rounds: 2, MaxAttempts: 1, Progress: io.MultiWriter(logWriter{t}, &progress, during)})
	// The sender, the clients and the backend share the process: it has
	// twice as many Ps as CPUs while it runs, and as many as before after.
	if want := []int{2 * runtime.NumCPU()}; !slices.Equal(during.seen, want) || runtime.GOMAXPROCS(0) != procs {
		t.Errorf("GOMAXPROCS %v during the run and %d after, want %v and %d", during.seen, runtime.GOMAXPROCS(0), want, procs)
	}
	if len(rep.Runs) != 2 || len(rep.Baselines) != 1 || rep.Config.Rounds != 2 {
		t.Fatalf("%d runs, %d baselines, %d rounds recorded; want 2, 1, 2", len(rep.Runs), len(rep.Baselines), rep.Config.Rounds)
	}
	// Each line names its run and round; they come in turn.
	at := 0
	for _, name := range []string{"baseline 1/2", "synguard 1/2", "synproxy 1/2", "synproxy 2/2", "synguard 2/2", "baseline 2/2"} {
		i := strings.Index(progress.String()[at:], " "+name+" ")
		if i < 0 {
			t.Fatalf("no %q after the first %d bytes of the progress:\n%s", name, at, progress.String())
		}
		at += i + 1
	}
	const perRound = 2000 * 2 // the rate times the 2 s flood
	for _, r := range rep.Runs {
		if len(r.Rounds) != 2 {
			t.Errorf("%s: %d rounds listed, want 2", r.System, len(r.Rounds))
			continue
		}
		// The pool is both rounds' packets and clients.
		if r.SYNsSent != 2*perRound || r.LegitAttempts != 2*20 {
			t.Errorf("%s: pooled %d SYNs and %d clients, want %d and %d", r.System, r.SYNsSent, r.LegitAttempts, 2*perRound, 2*20)
		}
		for i, rd := range r.Rounds {
			if rd.TotalP50ms <= 0 || rd.HandshakeP99ms <= 0 {
				t.Errorf("%s round %d: request p50 %.3f ms, handshake p99 %.3f ms", r.System, i+1, rd.TotalP50ms, rd.HandshakeP99ms)
			}
		}
		lo, hi := min(r.Rounds[0].TotalP50ms, r.Rounds[1].TotalP50ms), max(r.Rounds[0].TotalP50ms, r.Rounds[1].TotalP50ms)
		if r.TotalP50ms < lo || r.TotalP50ms > hi {
			t.Errorf("%s: pooled request p50 %.3f ms outside its rounds' %.3f–%.3f", r.System, r.TotalP50ms, lo, hi)
		}
	}
	if base := rep.Baselines[0]; base.SYNsSent != 2*perRound || base.LegitAttempts != 2*20 || base.TotalP50ms <= 0 {
		t.Errorf("baseline pooled %d SYNs and %d clients, request p50 %.3f ms", base.SYNsSent, base.LegitAttempts, base.TotalP50ms)
	}
	md, err := os.ReadFile(filepath.Join(out, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "## Rounds") {
		t.Errorf("report.md has no Rounds section")
	}
	// The reading sets synguard's request p50 against SYNPROXY's beside
	// the baseline's.
	if !strings.Contains(string(md), "**Request p50 against SYNPROXY's** (at 2000/s): synguard ") ||
		!strings.Contains(string(md), "; the baseline ") {
		t.Errorf("report.md's reading does not set synguard and the baseline against SYNPROXY:\n%s", md)
	}
}

// A tiny forged-ACK benchmark end to end: every system at one low rate.
// synguard drops the flood in XDP, synguard-nfqueue in its engine,
// SYNPROXY in netfilter; only the unprotected backend sees the forged
// ACKs, and answers each with a RST. Legitimate clients get through
// everywhere.
func TestBenchEndToEndACK(t *testing.T) {
	rep, out := runTinyBench(t, Config{Name: "sgt-benchack", Attack: KindACK, Rates: []int{2000}})
	if rep.Attack != KindACK || len(rep.Runs) != 4 || len(rep.Baselines) != 1 {
		t.Fatalf("attack %q, %d runs, %d baselines; want ack, 4, 1", rep.Attack, len(rep.Runs), len(rep.Baselines))
	}
	// Every system and the baseline were measured without the flood too,
	// and the flood's CPU leaves that out: synguard's process served the
	// legitimate clients' handshakes there.
	if len(rep.NoFlood) != 4 || rep.NoFloodBaseline == nil || rep.NoFloodBaseline.WindowS <= 0 {
		t.Fatalf("%d runs without a flood, baseline's %+v", len(rep.NoFlood), rep.NoFloodBaseline)
	}
	for _, n := range rep.NoFlood {
		if n.WindowS <= 0 || n.BenchCPUS <= 0 || n.LegitSuccess <= 0.9 || (n.System.IsSynguard() != (n.ProcessCPUS > 0)) {
			t.Errorf("%s without a flood: %.2f s of CPU over %.2f s (process %.3f s), legitimate success %.2f",
				n.System, n.BenchCPUS, n.WindowS, n.ProcessCPUS, n.LegitSuccess)
		}
	}
	for _, r := range rep.Runs {
		if r.ClientsCPUusACK == 0 {
			t.Errorf("%s: no clients' share left out of its CPU µs/ACK", r.System)
		}
	}
	for _, r := range rep.Runs {
		t.Run(string(r.System), func(t *testing.T) {
			if r.ACKsSent <= 0 || r.SYNsSent != 0 || r.OfferedPPS <= 0 {
				t.Errorf("ACKs sent %d, SYNs sent %d, offered %.0f/s", r.ACKsSent, r.SYNsSent, r.OfferedPPS)
			}
			if r.LegitSuccess <= 0.9 {
				t.Errorf("legitimate clients: %d of %d (%.2f); errors %v", r.LegitOK, r.LegitAttempts, r.LegitSuccess, r.ProbeErrors)
			}
			if r.System == None {
				if r.BackendACKPPS < 0.9*r.OfferedPPS || r.RSTPPS < 0.9*r.OfferedPPS {
					t.Errorf("unprotected: %.0f/s of %.0f/s forged ACKs reached the backend, %.0f RST/s", r.BackendACKPPS, r.OfferedPPS, r.RSTPPS)
				}
				return
			}
			if r.BackendACKPPS > 0.01*r.OfferedPPS || r.RSTPPS > 0.01*r.OfferedPPS {
				t.Errorf("%.0f/s of %.0f/s forged ACKs reached the backend, %.0f RST/s", r.BackendACKPPS, r.OfferedPPS, r.RSTPPS)
			}
			switch r.System {
			case Synguard:
				if r.Path != PathTC || float64(r.XDPDrop) < 0.95*float64(r.ACKsSent) {
					t.Errorf("path %q, XDP dropped %d of %d forged ACKs", r.Path, r.XDPDrop, r.ACKsSent)
				}
			case SynguardNFQueue:
				if r.Path != PathNFQueue || r.XDPDrop != 0 || float64(r.CookieInvalid) < 0.95*float64(r.ACKsSent) {
					t.Errorf("path %q, XDP dropped %d, engine found %d invalid cookies of %d forged ACKs", r.Path, r.XDPDrop, r.CookieInvalid, r.ACKsSent)
				}
			}
		})
	}
	// The baseline drops the flood at the gateway: nothing reaches the
	// backend, nothing comes back.
	if base := rep.Baselines[0]; base.BackendACKPPS != 0 || base.RSTPPS > 0.01*base.OfferedPPS || base.LegitSuccess <= 0.9 {
		t.Errorf("baseline: %.0f forged ACK/s reached the backend, %.0f RST/s, legitimate success %.2f", base.BackendACKPPS, base.RSTPPS, base.LegitSuccess)
	}
	for _, f := range []string{ReportMD, PlotBackend, PlotLegit, PlotCPU} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// A tiny benchmark with the legitimate clients a round trip of 20 ms
// away: every system is measured without a flood and at one low rate,
// and every run reports its clients' time to first byte. None can beat
// the round trips it needs: two (connect, then request and response),
// and three behind SYNPROXY, whose zero window holds the request back
// until the backend's handshake is done.
func TestBenchEndToEndClientRTT(t *testing.T) {
	const rtt = 20 * time.Millisecond
	// One attempt per run: the figures checked do not depend on contention.
	rep, out := runTinyBench(t, Config{Name: "sgt-benchrtt", Rates: []int{2000}, ClientRTT: rtt, MaxAttempts: 1})
	if len(rep.Runs) != 4 || len(rep.NoFlood) != 4 || len(rep.Baselines) != 1 {
		t.Fatalf("%d runs, %d without a flood, %d baselines; want 4, 4, 1", len(rep.Runs), len(rep.NoFlood), len(rep.Baselines))
	}
	if rep.Config.ClientRTTms != 20 || rep.Config.MeasuredRTTms < 20 {
		t.Errorf("client RTT %v ms asked, %v ms measured", rep.Config.ClientRTTms, rep.Config.MeasuredRTTms)
	}
	type row struct {
		sys               System
		flood             string
		success           float64
		hs, p50, p90, p99 float64
		errors            map[string]int
	}
	var rows []row
	for _, n := range rep.NoFlood {
		rows = append(rows, row{n.System, "no flood", n.LegitSuccess, n.HandshakeP50ms, n.TTFBP50ms, n.TTFBP90ms, n.TTFBP99ms, n.ProbeErrors})
	}
	for _, r := range rep.Runs {
		rows = append(rows, row{r.System, rateName(r.TargetPPS), r.LegitSuccess, r.HandshakeP50ms, r.TTFBP50ms, r.TTFBP90ms, r.TTFBP99ms, r.ProbeErrors})
	}
	const rttMS = float64(rtt / time.Millisecond)
	seen := make(map[string]bool)
	for _, r := range rows {
		seen[string(r.sys)+" "+r.flood] = true
		t.Logf("%-16s %-8s handshake p50 %.1f ms, first byte p50/p90/p99 %.1f/%.1f/%.1f ms", r.sys, r.flood, r.hs, r.p50, r.p90, r.p99)
		if r.success <= 0.9 {
			t.Errorf("%s, %s: legitimate success %.2f; errors %v", r.sys, r.flood, r.success, r.errors)
		}
		if r.hs < rttMS || r.p50 < 2*rttMS || r.p90 < r.p50 || r.p99 < r.p90 {
			t.Errorf("%s, %s: handshake p50 %.1f ms, first byte %.1f/%.1f/%.1f ms: want at least one and two round trips of %v, in order",
				r.sys, r.flood, r.hs, r.p50, r.p90, r.p99, rtt)
		}
		if r.sys == Synproxy && r.p50 < 3*rttMS {
			t.Errorf("SYNPROXY, %s: first byte p50 %.1f ms, under the three round trips its zero window costs", r.flood, r.p50)
		}
	}
	for _, sys := range AllSystems {
		if !seen[string(sys)+" no flood"] || !seen[string(sys)+" 2000/s"] {
			t.Errorf("%s: not measured both without a flood and under one: %v", sys, seen)
		}
	}
	// report.json carries the figures per run, report.md a table of them
	// and ttfb.png their plot.
	b, err := os.ReadFile(filepath.Join(out, ReportJSON))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"client_rtt_ms": 20`, `"measured_rtt_ms"`, `"no_flood"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("report.json has no %s", key)
		}
	}
	if n := strings.Count(string(b), `"ttfb_p99_ms"`); n != 9 {
		t.Errorf("report.json has ttfb_p99_ms %d times, want 9 (4 runs, 4 without a flood, the baseline)", n)
	}
	md, err := os.ReadFile(filepath.Join(out, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Time to first byte", "| synproxy | n/a | no flood |", "| none | n/a | 2000/s |", "**Time to first byte** (p50) with the clients 20 ms away"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md has no %q", want)
		}
	}
	if st, err := os.Stat(filepath.Join(out, PlotTTFB)); err != nil || st.Size() == 0 {
		t.Errorf("%s: %v", PlotTTFB, err)
	}
}

func TestConfigValidateClientRTT(t *testing.T) {
	ok := Config{Name: "b", Binary: "/bin/true", Rates: []int{1000}, Duration: time.Second, ProbeRate: 1, ProbeTimeout: 3 * time.Second, OutDir: "/tmp/x"}
	for _, rtt := range []time.Duration{0, time.Millisecond, 20 * time.Millisecond, 750 * time.Millisecond} {
		cfg := ok
		cfg.ClientRTT = rtt
		if err := cfg.Validate(); err != nil {
			t.Errorf("client RTT %v: %v", rtt, err)
		}
	}
	for _, tt := range []struct {
		rtt     time.Duration
		timeout time.Duration
		rates   int
		want    string
	}{
		{-time.Millisecond, 0, 1, "client RTT -1ms outside"},
		{lab.MaxClientRTT + 1, time.Hour, 1, "outside"},
		{time.Second, 3 * time.Second, 1, "a probe timeout of 3s is too short for a client RTT of 1s: give it at least 4s"},
		// 37 rates × (4 variants + baseline) + 5 without a flood = 190;
		// 38 rates are 195.
		{20 * time.Millisecond, 0, 38, "38 rates × (4 system runs + a baseline) + 5 runs without a flood is more than 192 runs"},
	} {
		cfg := ok
		cfg.ClientRTT, cfg.ProbeTimeout = tt.rtt, tt.timeout
		cfg.Rates = nil
		for i := range tt.rates {
			cfg.Rates = append(cfg.Rates, 1000+i)
		}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("client RTT %v, timeout %v, %d rates: error %v, want %q", tt.rtt, tt.timeout, tt.rates, err, tt.want)
		}
	}
	cfg := ok
	cfg.ClientRTT, cfg.Rates = 20*time.Millisecond, make([]int, 12)
	if err := cfg.Validate(); err != nil {
		t.Errorf("64 runs: %v", err)
	}
}

// Pooling rounds adds up every figure a measurement has, so that a field
// added later cannot be left out of the pool unnoticed.
func TestMeasurementAddPoolsEveryField(t *testing.T) {
	one := func(path string, rss uint64) measurement {
		m := measurement{path: path, peakRSS: rss, queueReceived: []uint64{1, 2}}
		v := reflect.ValueOf(&m).Elem()
		for i := range v.NumField() {
			// The fields are unexported: set them through their address.
			f := reflect.NewAt(v.Field(i).Type(), unsafe.Pointer(v.Field(i).UnsafeAddr())).Elem()
			switch f.Kind() {
			case reflect.Int, reflect.Int64:
				f.SetInt(3)
			case reflect.Uint64:
				if v.Type().Field(i).Name != "peakRSS" {
					f.SetUint(3)
				}
			}
		}
		m.flood = FloodStats{Sent: 100, Errors: 1, Elapsed: time.Second}
		m.tally = &ProbeTally{}
		m.tally.Add(lab.ProbeResult{OK: true, Handshake: time.Millisecond, FirstByte: 2 * time.Millisecond, Total: 3 * time.Millisecond})
		m.tally.Add(lab.ProbeResult{Err: errors.New("connect: i/o timeout"), SYNRetransmits: 2})
		m.probes = m.tally.Summary()
		return m
	}
	var pool measurement
	pool.add(one(PathXDP, 10))
	pool.add(one(PathXDP, 30))
	pool.add(one(PathNFQueue, 20))
	v := reflect.ValueOf(pool)
	for i := range v.NumField() {
		name, f := v.Type().Field(i).Name, v.Field(i)
		switch {
		case name == "peakRSS":
			if f.Uint() != 30 {
				t.Errorf("peakRSS %d, want the largest, 30", f.Uint())
			}
		case f.Kind() == reflect.Int || f.Kind() == reflect.Int64:
			if f.Int() != 9 {
				t.Errorf("%s = %d after three rounds of 3, want 9", name, f.Int())
			}
		case f.Kind() == reflect.Uint64:
			if f.Uint() != 9 {
				t.Errorf("%s = %d after three rounds of 3, want 9", name, f.Uint())
			}
		}
	}
	if want := (FloodStats{Sent: 300, Errors: 3, Elapsed: 3 * time.Second}); pool.flood != want {
		t.Errorf("flood %+v, want %+v", pool.flood, want)
	}
	if !slices.Equal(pool.queueReceived, []uint64{3, 6}) {
		t.Errorf("queueReceived %v, want [3 6]", pool.queueReceived)
	}
	if pool.path != PathXDP+"+"+PathNFQueue {
		t.Errorf("path %q, want both paths named", pool.path)
	}
	p := pool.probes
	if p.Attempts != 6 || p.OK != 3 || p.SYNRetransmitted != 3 || p.SYNRetransmits != 6 || sumValues(p.Errors) != 3 {
		t.Errorf("pooled clients %+v", p)
	}
	if p.HandshakeP50 != time.Millisecond || p.TotalP99 != 3*time.Millisecond {
		t.Errorf("pooled latencies: handshake p50 %v, request p99 %v", p.HandshakeP50, p.TotalP99)
	}
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Rounds multiply the runs, and are bounded.
func TestConfigValidateRounds(t *testing.T) {
	ok := Config{Name: "b", Binary: "/bin/true", Rates: DefaultRates, Duration: time.Second, ProbeRate: 1, OutDir: "/tmp/x"}
	for _, tt := range []struct {
		rounds int
		attack Kind
		want   string // "" for valid
	}{
		{0, KindSYN, ""},
		{1, KindSYN, ""},
		// 7 rates × (4 variants + a baseline) × 5 rounds = 175 runs.
		{5, KindSYN, ""},
		// × 6 rounds = 210.
		{6, KindSYN, "7 rates × (4 system runs + a baseline) × 6 rounds is more than 192 runs"},
		// A forged-ACK flood's runs without a flood: 140 + 20 = 160 with
		// 4 rounds, 175 + 25 = 200 with 5.
		{4, KindACK, ""},
		{5, KindACK, "7 rates × (4 system runs + a baseline) × 5 rounds + 25 runs without a flood is more than 192 runs"},
		{-1, KindSYN, "-1 rounds outside 1..10"},
		{MaxRounds + 1, KindSYN, "11 rounds outside 1..10"},
	} {
		cfg := ok
		cfg.Rounds, cfg.Attack = tt.rounds, tt.attack
		err := cfg.Validate()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%d rounds, %s flood: error %v, want %q", tt.rounds, tt.attack, err, tt.want)
		}
	}
}

// In a forged-ACK flood, CPU µs/ACK leaves out what the system and the
// baseline spent over their runs without a flood, scaled to the flood
// run's window; the part left out is reported beside it.
func TestRunRowACKWithoutTheFlood(t *testing.T) {
	run := func(ours, window time.Duration, sent int) measurement {
		return measurement{ours: ours, window: window, flood: FloodStats{Sent: sent, Elapsed: window}}
	}
	m := run(2*time.Second, 10*time.Second, 100_000)
	base := run(1500*time.Millisecond, 10*time.Second, 100_000)
	q := &quietCost{system: run(200*time.Millisecond, 5*time.Second, 0), baseline: run(50*time.Millisecond, 5*time.Second, 0)}
	v := variant{sys: Synguard, queues: 1}

	raw := runRow(v, 10_000, m, base, nil, KindACK)
	if raw.CPUusPerACK != 5 || raw.ClientsCPUusACK != 0 {
		t.Errorf("without runs without a flood: %.3f µs/ACK, clients %.3f; want 5 and 0", raw.CPUusPerACK, raw.ClientsCPUusACK)
	}
	// (2 s − 0.2 s × 10/5) − (1.5 s − 0.05 s × 10/5) = 0.2 s over 100,000 ACKs.
	got := runRow(v, 10_000, m, base, q, KindACK)
	if math.Abs(got.CPUusPerACK-2) > 1e-9 || math.Abs(got.ClientsCPUusACK-3) > 1e-9 {
		t.Errorf("%.3f µs/ACK, clients %.3f; want 2 and 3", got.CPUusPerACK, got.ClientsCPUusACK)
	}
	// A SYN flood's runs are never given one; its figure is the raw one.
	if syn := runRow(v, 10_000, m, base, nil, KindSYN); syn.CPUusPerSYN != 5 || syn.ClientsCPUusACK != 0 {
		t.Errorf("SYN flood: %.3f µs/SYN, clients %.3f", syn.CPUusPerSYN, syn.ClientsCPUusACK)
	}
}

// After its floods the benchmark measures each system with clients that
// wait for a greeting: synguard's backend takes the gateway's ACK at
// once, rejecting none and resending no SYN-ACK, for the fast path and
// the queue alike, and so does the unprotected backend with its own
// handshake. SYNPROXY's figures are the kernel's and only logged.
func TestBenchEndToEndServerFirst(t *testing.T) {
	rep, out := runTinyBench(t, Config{Name: "sgt-greet", Rates: []int{2000}, ServerFirst: true})
	if len(rep.ServerFirst) != 4 {
		t.Fatalf("%d server-first runs, want 4: %+v", len(rep.ServerFirst), rep.ServerFirst)
	}
	for _, n := range rep.ServerFirst {
		t.Logf("%s: %d/%d greetings, p50 %.3f ms, p99 %.3f ms; backend rejected %d ACKs, resent %d SYN-ACKs",
			n.System, n.LegitOK, n.LegitAttempts, n.GreetingP50ms, n.GreetingP99ms, n.BackendACKsRejected, n.BackendSYNACKsResent)
		if n.LegitAttempts != 20 || n.LegitOK != n.LegitAttempts {
			t.Errorf("%s: %d of %d greetings; errors %v", n.System, n.LegitOK, n.LegitAttempts, n.ProbeErrors)
		}
		if n.GreetingP50ms < n.HandshakeP50ms || n.GreetingP99ms < n.GreetingP50ms {
			t.Errorf("%s: handshake p50 %.3f ms, greeting p50 %.3f, p99 %.3f", n.System, n.HandshakeP50ms, n.GreetingP50ms, n.GreetingP99ms)
		}
		if n.System == Synproxy {
			continue
		}
		if n.BackendACKsRejected != 0 || n.BackendSYNACKsResent != 0 {
			t.Errorf("%s: the backend rejected %d ACKs and resent %d SYN-ACKs", n.System, n.BackendACKsRejected, n.BackendSYNACKsResent)
		}
	}
	for _, n := range rep.ServerFirst {
		if n.System == Synguard && n.Path != PathTC || n.System == SynguardNFQueue && n.Path != PathNFQueue {
			t.Errorf("%s answered on path %q", n.System, n.Path)
		}
	}
	md, err := os.ReadFile(filepath.Join(out, ReportMD))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "## Clients of a protocol whose server speaks first") {
		t.Errorf("report.md has no server-first section")
	}
}

// procsSeen records the values of GOMAXPROCS it saw at each write.
type procsSeen struct{ seen []int }

func (p *procsSeen) Write(b []byte) (int, error) {
	if n := runtime.GOMAXPROCS(0); !slices.Contains(p.seen, n) {
		p.seen = append(p.seen, n)
	}
	return len(b), nil
}
