package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os/exec"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
)

var (
	tputRounds   = flag.Int("tput.rounds", 3, "BenchmarkHandedOffThroughput: rounds of each set-up, alternated")
	tputDuration = flag.Duration("tput.duration", 5*time.Second, "BenchmarkHandedOffThroughput: length of each iperf3 run")
)

// BenchmarkHandedOffThroughput measures what protection costs a flow once
// it is handed off: iperf3 through the lab's gateway, client to server
// (up) and server to client (down), with plain forwarding, with synguard
// and its XDP fast path off, with it in generic mode on the client's
// veth, and in native mode there (a program on the client's end too, as
// native XDP_TX on veth needs). Set-ups alternate, round after round, in
// one lab; it reports each one's median, spread and ratio to plain
// forwarding. It asserts nothing about speed. Run it alone, as root (needs
// iperf3):
//
//	go test -run '^$' -bench HandedOffThroughput -benchtime 1x ./e2e/ [-args -tput.rounds 5]
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

	setups := []struct {
		name string
		args []string // nil: no synguard
		peer bool     // an XDP program on the client's end of the link
	}{
		{"plain", nil, false},
		{"xdp-off", []string{"--xdp", "off"}, false},
		{"xdp-generic", []string{"--xdp", "generic", "--xdp-interfaces", topo.GatewayClientSide}, false},
		{"xdp-native", []string{"--xdp", "native", "--xdp-interfaces", topo.GatewayClientSide}, true},
	}
	results := make(map[string][]float64)
	for range *tputRounds {
		for _, s := range setups {
			var detach func()
			if s.peer {
				detach = peerProgram(b, topo)
			}
			var stop func()
			if s.args != nil {
				stop = startForBench(b, topo, append([]string{"--protect", service.String(), "--mode", "always"}, s.args...))
			}
			for _, dir := range []string{"up", "down"} {
				results[s.name+"/"+dir] = append(results[s.name+"/"+dir], iperf(b, topo, service, *tputDuration, dir == "down"))
			}
			if stop != nil {
				stop()
			}
			if detach != nil {
				detach()
			}
		}
	}
	for _, dir := range []string{"up", "down"} {
		plain := median(results["plain/"+dir])
		for _, s := range setups {
			r := results[s.name+"/"+dir]
			sort.Float64s(r)
			b.Logf("%-4s %-12s median %6.2f Gbit/s (min %.2f, max %.2f), %.3f× plain", dir, s.name, median(r)/1e9, r[0]/1e9, r[len(r)-1]/1e9, median(r)/plain)
			b.ReportMetric(median(r)/plain, s.name+"-"+dir+"/plain")
		}
	}
}

// startForBench runs a gateway for a benchmark and returns its stop.
func startForBench(b *testing.B, topo *lab.Topology, args []string) func() {
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
	}
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

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
