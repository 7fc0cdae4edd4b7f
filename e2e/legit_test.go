package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/bench"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/internal/syncbuf"
)

// Flags of BenchmarkLegitUnderFlood, after -args.
var (
	legitRates     = flag.String("legit.rates", "100000,max", "BenchmarkLegitUnderFlood: offered SYN/s of the floods, comma-separated; max: as fast as the generator goes")
	legitRounds    = flag.Int("legit.rounds", 3, "BenchmarkLegitUnderFlood: rounds of synguard then SYNPROXY at every rate, alternated")
	legitDuration  = flag.Duration("legit.duration", 3*time.Second, "BenchmarkLegitUnderFlood: length of each flood")
	legitProbeRate = flag.Int("legit.probe-rate", 50, "BenchmarkLegitUnderFlood: legitimate clients per second during each flood")
	legitOut       = flag.String("legit.out", "", "BenchmarkLegitUnderFlood: keep the report (report.md, report.json) in this directory")
	legitBinary    = flag.String("legit.binary", "", "BenchmarkLegitUnderFlood: measure this synguard executable instead of the tree's")
)

// BenchmarkLegitUnderFlood measures what a bounded SYN flood costs
// legitimate clients behind synguard (`synguard run --mode always` with
// its defaults) and behind kernel SYNPROXY, in one lab, with `synguard
// bench`'s own runs (bench.Run): at every rate of -legit.rates, round
// after round, the flood dropped in raw PREROUTING (the baseline), then
// synguard, then SYNPROXY, each a fresh set-up while legitimate clients
// connect and fetch a page. The targets are read from its
// metrics, per rate: synguard's request p50 against SYNPROXY's (the
// median over the rounds of each run's p50), synguard's worst handshake
// p99 over the rounds, and the legitimate clients whose SYN had to be
// retransmitted behind each. It asserts nothing about speed. Run it alone,
// as root; the defaults take about a minute and a half:
//
//	go test -run '^$' -bench LegitUnderFlood -benchtime 1x ./e2e/ [-args -legit.rates 20000,100000,max -legit.rounds 3 -legit.out DIR]
//
// Its log carries the figures per rate; every run is in -legit.out's
// report.md.
func BenchmarkLegitUnderFlood(b *testing.B) {
	roottest.Require(b)
	rates, err := parseLegitRates(*legitRates)
	if err != nil {
		b.Fatal(err)
	}
	if *legitRounds < 1 {
		b.Fatalf("-legit.rounds %d: want at least 1", *legitRounds)
	}
	exe := binary
	if *legitBinary != "" {
		exe = *legitBinary
	}
	out := *legitOut
	if out == "" {
		out = b.TempDir()
	}
	// Each round offers every rate once; bench.Run runs the baseline,
	// synguard and SYNPROXY at each in turn.
	var offered []int
	for range *legitRounds {
		offered = append(offered, rates...)
	}
	progress := &syncbuf.Buffer{}
	rep, err := bench.Run(context.Background(), bench.Config{
		Name:        fmt.Sprintf("sgl%d", os.Getpid()%100000),
		Binary:      exe,
		Rates:       offered,
		Duration:    *legitDuration,
		Systems:     []bench.System{bench.Synguard, bench.Synproxy},
		ProbeRate:   *legitProbeRate,
		MaxAttempts: 1,
		OutDir:      out,
		Progress:    progress,
	})
	if err != nil {
		b.Fatalf("%v\n%s", err, progress.String())
	}

	// A benchmark's log is cut after 10 lines: it carries the figures
	// per rate, and report.md in -legit.out every run.
	var summary strings.Builder
	var worstRatio, worstP99 float64
	retrans := 0
	for _, rate := range rates {
		sg, sp := legitFigures(rep.Runs, bench.Synguard, rate), legitFigures(rep.Runs, bench.Synproxy, rate)
		if sg.runs != *legitRounds || sp.runs != *legitRounds {
			b.Fatalf("at %s: %d synguard and %d synproxy runs, want %d each", legitRateName(rate), sg.runs, sp.runs, *legitRounds)
		}
		at := "@" + legitRateName(rate)
		b.ReportMetric(sg.requestP50, "synguard-request-p50-ms"+at)
		b.ReportMetric(sp.requestP50, "synproxy-request-p50-ms"+at)
		// The baseline's clients meet nothing but plain forwarding: how
		// far its ratio strays from 1 is this run's noise.
		base := baselineRequestP50(rep.Baselines, rate)
		if sp.requestP50 > 0 {
			b.ReportMetric(sg.requestP50/sp.requestP50, "request-p50-synguard/synproxy"+at)
			b.ReportMetric(base/sp.requestP50, "request-p50-baseline/synproxy"+at)
		}
		b.ReportMetric(sg.handshakeP99, "synguard-handshake-p99-ms"+at)
		b.ReportMetric(sp.handshakeP99, "synproxy-handshake-p99-ms"+at)
		b.ReportMetric(float64(sg.retrans), "synguard-legit-syn-retrans"+at)
		b.ReportMetric(float64(sp.retrans), "synproxy-legit-syn-retrans"+at)
		b.ReportMetric(100*sg.retransShare(), "synguard-%legit-syn-retrans"+at)
		b.ReportMetric(100*sg.success(), "synguard-%legit-ok"+at)
		fmt.Fprintf(&summary, "%s: request p50 synguard %.2f ms, SYNPROXY %.2f ms (%.2f×; the baseline %.2f ms, %.2f×); "+
			"handshake p99 synguard %.2f ms, SYNPROXY %.2f ms; "+
			"SYN retransmitted: synguard %d of %d clients, SYNPROXY %d of %d; ok: synguard %d, SYNPROXY %d\n",
			legitRateName(rate), sg.requestP50, sp.requestP50, sg.requestP50/sp.requestP50, base, base/sp.requestP50, sg.handshakeP99, sp.handshakeP99,
			sg.retrans, sg.attempts, sp.retrans, sp.attempts, sg.ok, sp.ok)
		if sp.requestP50 > 0 {
			worstRatio = max(worstRatio, sg.requestP50/sp.requestP50)
		}
		worstP99 = max(worstP99, sg.handshakeP99)
		retrans += sg.retrans
	}
	// The targets read across the rates: the worst ratio and p99, and
	// every retransmitted SYN.
	b.ReportMetric(worstRatio, "request-p50-synguard/synproxy-worst")
	b.ReportMetric(worstP99, "synguard-handshake-p99-ms-worst")
	b.ReportMetric(float64(retrans), "synguard-legit-syn-retrans-all")
	if *legitOut != "" {
		fmt.Fprintf(&summary, "every run: %s\n", filepath.Join(out, bench.ReportMD))
	}
	b.Log("\n" + summary.String())
}

// legitRun sums one system's runs at one rate over the rounds.
type legitRun struct {
	runs                  int
	requestP50            float64 // median over the rounds of each run's p50, ms
	handshakeP99          float64 // worst over the rounds, ms
	attempts, ok, retrans int
}

func (l legitRun) retransShare() float64 {
	if l.attempts == 0 {
		return 0
	}
	return float64(l.retrans) / float64(l.attempts)
}

func (l legitRun) success() float64 {
	if l.attempts == 0 {
		return 0
	}
	return float64(l.ok) / float64(l.attempts)
}

func legitFigures(runs []bench.RunResult, sys bench.System, rate int) legitRun {
	var (
		l    legitRun
		p50s []float64
	)
	for _, r := range runs {
		if r.System != sys || r.TargetPPS != rate {
			continue
		}
		l.runs++
		p50s = append(p50s, r.TotalP50ms)
		l.handshakeP99 = max(l.handshakeP99, r.HandshakeP99ms)
		l.attempts += r.LegitAttempts
		l.ok += r.LegitOK
		if r.LegitSYNRetrans != nil {
			l.retrans += r.LegitSYNRetrans.Clients
		}
	}
	l.requestP50 = median(p50s)
	return l
}

// baselineRequestP50 is the median over the rounds of the baselines'
// request p50 at one rate, ms.
func baselineRequestP50(bases []bench.Baseline, rate int) float64 {
	var p50s []float64
	for _, base := range bases {
		if base.TargetPPS == rate {
			p50s = append(p50s, base.TotalP50ms)
		}
	}
	return median(p50s)
}

// parseLegitRates reads -legit.rates: SYN/s, or max (0) for as fast as
// the generator goes.
func parseLegitRates(s string) ([]int, error) {
	var rates []int
	for _, f := range strings.Split(s, ",") {
		n := 0 // max
		if f = strings.TrimSpace(f); f != "max" {
			var err error
			if n, err = strconv.Atoi(f); err != nil || n < 1 || n > bench.MaxFloodRate {
				return nil, fmt.Errorf("-legit.rates: %q: want 1..%d SYN/s or max", f, bench.MaxFloodRate)
			}
		}
		if slices.Contains(rates, n) {
			return nil, fmt.Errorf("-legit.rates: %q listed twice", f)
		}
		rates = append(rates, n)
	}
	return rates, nil
}

func legitRateName(rate int) string {
	if rate == 0 {
		return "max"
	}
	return strconv.Itoa(rate)
}
