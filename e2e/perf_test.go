package e2e

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/bench"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/internal/syncbuf"
	"github.com/synguard/synguard/lab"
)

// Flags of BenchmarkGatewayFlood, after -args.
var (
	perfDuration   = flag.Duration("perf.duration", 5*time.Second, "BenchmarkGatewayFlood: length of each flood")
	perfRate       = flag.Int("perf.rate", 0, "BenchmarkGatewayFlood: offered SYN/s of the max-rate runs (0: as fast as the generator goes)")
	perfFixedRate  = flag.Int("perf.fixed-rate", 100_000, "BenchmarkGatewayFlood: offered SYN/s of the one-queue run with legitimate clients (0: skip it)")
	perfQueues     = flag.String("perf.queues", "1,2", "BenchmarkGatewayFlood: queue counts to compare, in one lab")
	perfProfileDir = flag.String("perf.profiles", "", "BenchmarkGatewayFlood: write the gateway's CPU profile of each run to this directory")
	perfBinary     = flag.String("perf.binary", "", "BenchmarkGatewayFlood: measure this synguard executable instead of the tree's")
	perfArgs       = flag.String("perf.gateway-args", "", "BenchmarkGatewayFlood: more arguments for `synguard run`, space-separated (e.g. \"--reply-path route\")")
)

// BenchmarkGatewayFlood measures `synguard run --mode always` in a lab
// under spoofed SYN floods: as fast as one generator thread goes, once per
// queue count (-perf.queues), then at a fixed rate on one queue with
// legitimate clients connecting throughout. Every run gets a fresh gateway
// process; all runs share one lab, so their figures compare. Run it alone,
// as root:
//
//	go test -run '^$' -bench GatewayFlood -benchtime 1x ./e2e/ [-args -perf.profiles DIR]
//
// Reported per run: offered SYN/s, SYN-ACK/s answered, the share answered,
// the kernel's queue drops, the gateway's CPU per SYN (user + system time
// of its process over the SYNs it received) and the legitimate clients'
// success. It asserts nothing about speed; it is the measuring tool for
// nfq/doc.go's figures.
func BenchmarkGatewayFlood(b *testing.B) {
	roottest.Require(b)
	exe := binary
	if *perfBinary != "" {
		exe = *perfBinary
	}
	ctx := context.Background()
	name := fmt.Sprintf("sgp%d", os.Getpid()%100000)
	topo, err := lab.Up(ctx, lab.Config{Name: name, DisableIPv6: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := topo.Down(context.Background()); err != nil {
			b.Errorf("lab down: %v", err)
		}
	})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	bctx, cancel := context.WithCancel(ctx)
	backend, err := lab.ServeBackend(bctx, topo.Backend, service)
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); backend.Close() })

	type run struct {
		name   string
		queues string
		rate   int
		probes bool
	}
	var runs []run
	offered := "max"
	if *perfRate > 0 {
		offered = fmt.Sprintf("rate=%d", *perfRate)
	}
	for _, q := range strings.Split(*perfQueues, ",") {
		runs = append(runs, run{name: offered + "/queues=" + q, queues: q, rate: *perfRate})
	}
	if *perfFixedRate > 0 {
		runs = append(runs, run{name: fmt.Sprintf("rate=%d/queues=1", *perfFixedRate), queues: "1", rate: *perfFixedRate, probes: true})
	}
	for _, r := range runs {
		b.Run(r.name, func(b *testing.B) {
			var profile string
			if *perfProfileDir != "" {
				profile = filepath.Join(*perfProfileDir, strings.NewReplacer("/", "-", "=", "").Replace(r.name)+".pprof")
			}
			res := floodGateway(b, exe, topo, service, r.queues, r.rate, r.probes, profile)
			b.ReportMetric(res.offered, "offered/s")
			b.ReportMetric(res.synacks, "synack/s")
			b.ReportMetric(100*res.answered, "%answered")
			b.ReportMetric(float64(res.drops), "qdrops")
			b.ReportMetric(res.cpuPerSYN, "µs/SYN")
			b.ReportMetric(res.perBatch, "pkts/batch")
			b.ReportMetric(res.machinePerSYN, "machine-µs/SYN")
			if r.probes {
				b.ReportMetric(100*res.legit, "%legit")
			}
			b.Logf("%s: offered %.0f/s, SYN-ACK %.0f/s (%.1f%% of SYNs sent), engine saw %d SYNs, queue drops %d, ENOBUFS %d, gateway CPU %.2f µs/SYN (%v), legit %d/%d",
				r.name, res.offered, res.synacks, 100*res.answered, res.engineSYNs, res.drops, res.enobufs,
				res.cpuPerSYN, res.cpu, res.legitOK, res.legitN)
		})
	}
}

type floodResult struct {
	offered, synacks, answered, cpuPerSYN, legit float64
	perBatch                                     float64 // mean receive batch size
	// machinePerSYN is the whole machine's busy time per SYN sent, the
	// generator's included: wall time × CPUs − idle time, whose /proc/stat
	// figure is not tick-sampled. Compare it between gateways in one lab.
	machinePerSYN              float64
	engineSYNs, drops, enobufs uint64
	cpu                        time.Duration
	legitOK, legitN            int
}

// floodGateway starts a gateway with queues queues, floods service at rate
// for -perf.duration (with legitimate clients if probes) and reads the
// counters around the flood.
func floodGateway(b *testing.B, exe string, topo *lab.Topology, service netip.AddrPort, queues string, rate int, probes bool, profile string) floodResult {
	b.Helper()
	ctx := context.Background()
	args := []string{"run", "--protect", service.String(), "--mode", "always", "--queues", queues,
		"--metrics", metricsAddr, "--log-level", "warn"}
	args = append(args, strings.Fields(*perfArgs)...)
	if profile != "" {
		args = append(args, "--cpuprofile", profile)
	}
	cmd := topo.Gateway.Command(ctx, exe, args...)
	log := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("gateway exit: %v\n%s", err, log.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			b.Errorf("gateway did not stop on SIGTERM:\n%s", log.String())
		}
	}()
	scrape := func() map[string]float64 {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		m, err := lab.ScrapeMetrics(sctx, topo.Gateway, metricsAddr)
		if err != nil {
			b.Fatalf("metrics: %v\n%s", err, log.String())
		}
		return m
	}
	var notReady error
	if !poll.Until(15*time.Second, func() bool {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, notReady = lab.ScrapeMetrics(sctx, topo.Gateway, metricsAddr)
		return notReady == nil
	}) {
		b.Fatalf("gateway not ready: %v\n%s", notReady, log.String())
	}

	cfg := bench.FloodConfig{
		Target: service, Sources: lab.SpoofPrefix4, Rate: rate,
		Count: bench.MaxFloodCount, Duration: *perfDuration,
	}
	if rate > 0 {
		cfg.Count = int(int64(rate) * int64(*perfDuration) / int64(time.Second))
	}
	var f *bench.Flooder
	if err := topo.Client.Do(func() (err error) {
		f, err = bench.NewFlooder(cfg)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	m0 := scrape()
	mach0, err := bench.ReadCPUTimes()
	if err != nil {
		b.Fatal(err)
	}
	wall0 := time.Now()
	cpu0, err := bench.ProcessCPU(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	type probeResult struct {
		t   *bench.ProbeTally
		err error
	}
	probed := make(chan probeResult, 1)
	if probes {
		go func() {
			t, err := bench.RunProbes(ctx, bench.ProbeConfig{NS: topo.Client, Target: service, Rate: 20, Duration: *perfDuration})
			probed <- probeResult{t, err}
		}()
	}
	flooded := make(chan error, 1)
	var st bench.FloodStats
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var err error
		st, err = f.Run(ctx)
		flooded <- err
	}()
	if err := <-flooded; err != nil {
		b.Fatalf("flood: %v", err)
	}
	// The counters read below are final once the gateway is done with
	// the flood.
	waitQueueIdle(b, topo.Gateway, func() float64 { return scrape()["synguard_queue_received_total"] })
	mach1, err := bench.ReadCPUTimes()
	if err != nil {
		b.Fatal(err)
	}
	wall := time.Since(wall0)
	cpu1, err := bench.ProcessCPU(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	m1 := scrape()
	delta := func(name string) uint64 { return uint64(max(m1[name]-m0[name], 0)) }

	res := floodResult{
		offered:    st.PPS(),
		synacks:    float64(delta("synguard_synack_sent_total")) / st.Elapsed.Seconds(),
		engineSYNs: delta("synguard_syn_received_total"),
		drops:      delta("synguard_queue_dropped_total"),
		enobufs:    delta("synguard_queue_enobufs_total"),
		cpu:        cpu1 - cpu0,
	}
	if st.Sent > 0 {
		res.answered = float64(delta("synguard_synack_sent_total")) / float64(st.Sent)
	}
	if st.Sent > 0 {
		busy := time.Duration(runtime.NumCPU())*wall - mach1.Sub(mach0).Idle
		res.machinePerSYN = float64(busy.Microseconds()) / float64(st.Sent)
	}
	if n := delta("synguard_queue_batches_total"); n > 0 {
		res.perBatch = float64(delta("synguard_queue_received_total")) / float64(n)
	}
	if res.engineSYNs > 0 {
		res.cpuPerSYN = float64(res.cpu.Microseconds()) / float64(res.engineSYNs)
	}
	if probes {
		pr := <-probed
		if pr.err != nil {
			b.Fatalf("legitimate clients: %v", pr.err)
		}
		s := pr.t.Summary()
		res.legitOK, res.legitN, res.legit = s.OK, s.Attempts, s.Success
	}
	return res
}
