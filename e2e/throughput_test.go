package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
)

var (
	tputRounds   = flag.Int("tput.rounds", 3, "BenchmarkHandedOffThroughput: rounds of each set-up, alternated")
	tputDuration = flag.Duration("tput.duration", 5*time.Second, "BenchmarkHandedOffThroughput: length of each iperf3 run")
	tputSetups   = flag.String("tput.setups", "", "BenchmarkHandedOffThroughput: the set-ups to run, comma-separated (default all; plain always runs)")
)

// BenchmarkHandedOffThroughput measures what protection costs a flow once
// it is handed off: iperf3 through the lab's gateway, client to server
// (up) and server to client (down), with plain forwarding, with synguard
// and its fast path off, with its defaults (--xdp auto: the tc program,
// on both of the gateway's veth links), with the XDP program in generic
// mode on the client's veth, and in native mode there (a program on the
// client's end too, as native XDP_TX on veth needs). A set-up without
// synguard but with conntrack tracking the forwarded flows (one
// --ctstate INVALID rule, as any stateful gateway and SYNPROXY have) tells
// the cost of the kernel carrying a handed-off flow from the cost of
// synguard's rules and program. Set-ups alternate,
// round after round, in one lab; it reports each one's median, spread and
// ratio to plain forwarding. It asserts nothing about speed, only that
// each set-up's program is attached as named. Run it alone, as root
// (needs iperf3):
//
//	go test -run '^$' -bench HandedOffThroughput -benchtime 1x ./e2e/ [-args -tput.rounds 5 -tput.setups auto]
func BenchmarkHandedOffThroughput(b *testing.B) {
	roottest.Require(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatal("iperf3 not installed (apt-get install iperf3)")
	}
	topo, err := lab.Up(context.Background(), lab.Config{Name: "sgtput", DisableIPv6: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { topo.Down(context.Background()) })
	service := netip.AddrPortFrom(topo.BackendAddr, 5201)
	server := topo.Backend.Command(context.Background(), "iperf3", "--server", "--bind", service.Addr().String())
	if err := server.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { server.Process.Kill(); server.Wait() })
	if !poll.Until(10*time.Second, func() bool {
		out, err := topo.Backend.Output(context.Background(), "ss", "-Hltn", "sport", "=", fmt.Sprint(service.Port()))
		return err == nil && out != ""
	}) {
		b.Fatal("iperf3 server not listening")
	}

	all := []struct {
		name  string
		args  []string // nil: no synguard
		peer  bool     // an XDP program on the client's end of the link
		links string   // the kind of BPF links synguard must hold
		rule  []string // without synguard: an iptables rule in place
	}{
		{"plain", nil, false, "", nil},
		{"conntrack", nil, false, "", []string{"FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}},
		{"xdp-off", []string{"--xdp", "off"}, false, "", nil},
		{"auto", []string{}, false, "tcx", nil},
		{"xdp-generic", []string{"--xdp", "generic", "--xdp-interfaces", topo.GatewayClientSide}, false, "xdp", nil},
		{"xdp-native", []string{"--xdp", "native", "--xdp-interfaces", topo.GatewayClientSide}, true, "xdp", nil},
	}
	setups := all[:0]
	for _, s := range all {
		if *tputSetups == "" || s.name == "plain" || slices.Contains(strings.Split(*tputSetups, ","), s.name) {
			setups = append(setups, s)
		}
	}
	// The kernel times each program run while this holds, so that the
	// program's own share of the transfer can be told apart from the
	// noise of a shared machine.
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	results := make(map[string][]float64)
	runs := make(map[string]*programRuns)
	for range *tputRounds {
		for _, s := range setups {
			// undo takes the set-up's peer program or rule away again.
			var undo []func()
			if s.peer {
				undo = append(undo, peerProgram(b, topo))
			}
			if s.rule != nil {
				// The lab's namespace, and the rule with it, goes at Down
				// should the benchmark fail before the rule is deleted.
				iptables(b, topo, append([]string{"-A"}, s.rule...))
				undo = append(undo, func() { iptables(b, topo, append([]string{"-D"}, s.rule...)) })
			}
			var stop func()
			var progs []*ebpf.Program
			if s.args != nil {
				var pid int
				stop, pid = startForBench(b, topo, append([]string{"--protect", service.String(), "--mode", "always"}, s.args...))
				progs = linkPrograms(b, pid, s.name, s.links)
			}
			for _, dir := range []string{"up", "down"} {
				key := s.name + "/" + dir
				before := runStats(b, progs)
				start := time.Now()
				results[key] = append(results[key], iperf(b, topo, service, *tputDuration, dir == "down"))
				if len(progs) > 0 {
					if runs[key] == nil {
						runs[key] = &programRuns{}
					}
					runs[key].add(runStats(b, progs).minus(before), time.Since(start))
				}
			}
			for _, p := range progs {
				p.Close()
			}
			if stop != nil {
				stop()
			}
			for _, f := range undo {
				f()
			}
		}
	}
	for _, dir := range []string{"up", "down"} {
		plain := median(results["plain/"+dir])
		var tracked float64 // 0 when -tput.setups left conntrack out
		if r := results["conntrack/"+dir]; len(r) > 0 {
			tracked = median(r)
		}
		for _, s := range setups {
			r := results[s.name+"/"+dir]
			sort.Float64s(r)
			vsTracked := ""
			if tracked > 0 && s.name != "plain" && s.name != "conntrack" {
				vsTracked = fmt.Sprintf(", %.3f× conntrack", median(r)/tracked)
				b.ReportMetric(median(r)/tracked, s.name+"-"+dir+"/conntrack")
			}
			b.Logf("%-4s %-12s median %6.2f Gbit/s (min %.2f, max %.2f), %.3f× plain%s%s", dir, s.name, median(r)/1e9, r[0]/1e9, r[len(r)-1]/1e9, median(r)/plain, vsTracked, runs[s.name+"/"+dir])
			b.ReportMetric(median(r)/plain, s.name+"-"+dir+"/plain")
		}
	}
}

// programRuns is what the kernel timed of a set-up's programs over its
// iperf3 runs.
type programRuns struct {
	runs uint64
	time time.Duration // in the programs
	wall time.Duration // of the iperf3 runs
}

func (r *programRuns) add(d programRuns, wall time.Duration) {
	r.runs += d.runs
	r.time += d.time
	r.wall += wall
}

func (r programRuns) minus(o programRuns) programRuns {
	return programRuns{runs: r.runs - o.runs, time: r.time - o.time}
}

func (r *programRuns) String() string {
	if r == nil || r.runs == 0 {
		return ""
	}
	return fmt.Sprintf("; program: %.0f runs/s, %.0f ns/run, %.2f%% of a CPU",
		float64(r.runs)/r.wall.Seconds(), float64(r.time.Nanoseconds())/float64(r.runs), 100*r.time.Seconds()/r.wall.Seconds())
}

// runStats sums the kernel's run statistics of progs.
func runStats(b *testing.B, progs []*ebpf.Program) programRuns {
	b.Helper()
	var r programRuns
	for _, p := range progs {
		s, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		r.runs += s.RunCount
		r.time += s.Runtime
	}
	return r
}

// linkPrograms returns the programs of the BPF links process pid holds,
// and fails setup unless every link is of kind want ("" for none).
func linkPrograms(b *testing.B, pid int, setup, want string) []*ebpf.Program {
	b.Helper()
	seen := make(map[ebpf.ProgramID]bool)
	var progs []*ebpf.Program
	for id, typ := range bpfLinks(b, pid) {
		if typ != want {
			b.Fatalf("%s: synguard holds %s link %d, want %q links only", setup, typ, id, want)
		}
		l, err := link.NewFromID(id)
		if err != nil {
			b.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			b.Fatal(err)
		}
		if seen[info.Program] {
			continue
		}
		seen[info.Program] = true
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			b.Fatal(err)
		}
		progs = append(progs, p)
	}
	return progs
}

// startForBench runs a gateway for a benchmark and returns its stop and
// its process ID.
func startForBench(b *testing.B, topo *lab.Topology, args []string) (stop func(), pid int) {
	b.Helper()
	cmd := topo.Gateway.Command(context.Background(), binary, append([]string{"run", "--metrics", metricsAddr, "--log-level", "warn"}, args...)...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if !poll.Until(15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := lab.ScrapeMetrics(ctx, topo.Gateway, metricsAddr)
		return err == nil
	}) {
		cmd.Process.Kill()
		b.Fatal("gateway not ready")
	}
	return func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}, cmd.Process.Pid
}

// iperf runs one iperf3 client from the client namespace (the server
// sending, with reverse) and returns the throughput the receiver saw, in
// bit/s.
func iperf(b *testing.B, topo *lab.Topology, service netip.AddrPort, d time.Duration, reverse bool) float64 {
	b.Helper()
	args := []string{"--client", service.Addr().String(), "--port", fmt.Sprint(service.Port()), "--time", fmt.Sprint(int(d.Seconds())), "--json"}
	if reverse {
		args = append(args, "--reverse")
	}
	out, err := topo.Client.Output(context.Background(), "iperf3", args...)
	if err != nil {
		b.Fatalf("iperf3: %v", err)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond
}

// iptables changes a rule in the gateway's namespace.
func iptables(b *testing.B, topo *lab.Topology, args []string) {
	b.Helper()
	if err := topo.Gateway.Run(context.Background(), "iptables", append([]string{"-w"}, args...)...); err != nil {
		b.Fatalf("iptables %s: %v", strings.Join(args, " "), err)
	}
}

// median is the middle of vs (the mean of the two middle ones for an
// even count), 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	vs = slices.Sorted(slices.Values(vs))
	n := len(vs)
	return (vs[(n-1)/2] + vs[n/2]) / 2
}
