package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/lab"
)

// TestCompletionQueueUnderSYNFlood: with --xdp off every SYN goes through
// the SYN queue, two generators at their maximum flood it, and the gateway
// stalls under them until it overflows (stallUntilFull: a fast machine's
// engine drains them), while legitimate clients connect all along. The segments that complete their
// handshakes (the cookie ACKs, the backend's SYN-ACKs) go to the
// completion queue, which drops nothing: the kernel's own per-queue
// counts show drops on SYN queue 0 only, synguard's metrics say the same
// by kind, the completion queue's worker saw every handshake's two
// segments, and every legitimate client got its page, some while the
// flood ran. A legitimate SYN may still be dropped with the flood's; its
// client retransmits it.
func TestCompletionQueueUnderSYNFlood(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	// The queue must take every SYN: the fast path would answer the
	// flood before it.
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp", "off")
	g.waitStarted()
	if !strings.Contains(g.log.String(), `"syn_queues":"0","completion_queues":"1"`) {
		t.Fatalf("start event does not name SYN queue 0 and completion queue 1:\n%s", g.log.String())
	}

	// Legitimate clients, four at a time, from before the flood until
	// it has ended; each has time for the SYN retransmissions a dropped
	// SYN costs.
	const clients = 4
	var (
		flooding        atomic.Bool
		stop            = make(chan struct{})
		wg              sync.WaitGroup
		mu              sync.Mutex
		ok, duringFlood int
		failures        []string
	)
	flooding.Store(true)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := lab.Probe(context.Background(), topo.Client, service, 20*time.Second)
				during := flooding.Load()
				mu.Lock()
				if r.OK {
					ok++
					if during {
						duringFlood++
					}
				} else {
					failures = append(failures, r.Err.Error())
				}
				mu.Unlock()
			}
		}()
	}
	const count = 2 * 300_000
	wait1 := flood(t, topo.Client, service, 0, count/2, 3*time.Second)
	wait2 := flood(t, topo.Client, service, 0, count/2, 3*time.Second)
	g.stallUntilFull(0)
	out := wait1() + wait2()
	flooding.Store(false)
	close(stop)
	wg.Wait()
	g.waitIdle()
	t.Logf("floods:\n%s", strings.TrimSpace(out))

	// The kernel's own count, per queue.
	kernel := kernelQueues(t, topo.Gateway)
	drops := map[uint16]uint64{}
	for _, k := range kernel {
		drops[k.Queue] = k.QueueDropped + k.UserDropped
		t.Logf("kernel: queue %d: %d dropped (%d full, %d socket), last id %d", k.Queue, drops[k.Queue], k.QueueDropped, k.UserDropped, k.LastID)
	}
	if len(kernel) != 2 {
		t.Fatalf("%d queues bound, want SYN queue 0 and completion queue 1: %+v", len(kernel), kernel)
	}
	byKind := queueMetrics(t, g)
	handedOff := g.metric("synguard_flows_handed_off_total")
	mu.Lock()
	defer mu.Unlock()
	t.Logf("legitimate clients: %d fetched their page, %d of them while the flood ran; %v flows handed off; metrics by kind: %v", ok, duringFlood, handedOff, byKind)

	if drops[0] == 0 {
		t.Fatal("SYN queue 0 dropped nothing: the stall never overflowed it, and the test shows nothing")
	}
	if drops[1] != 0 {
		t.Fatalf("completion queue 1 dropped %d packets: handshakes' ends waited behind the flood", drops[1])
	}
	if byKind["dropped syn"] != float64(drops[0]) || byKind["dropped completion"] != 0 {
		t.Fatalf("synguard_queue_dropped_total by kind %v, want syn %d and completion 0 as the kernel counted", byKind, drops[0])
	}
	if len(failures) > 0 {
		t.Fatalf("%d legitimate clients failed (%d succeeded), e.g. %s", len(failures), ok, failures[0])
	}
	if duringFlood == 0 {
		t.Fatalf("no legitimate client completed while the flood ran (%d after it)", ok)
	}
	if handedOff < float64(ok) {
		t.Fatalf("%v flows handed off, fewer than the %d clients that got their page", handedOff, ok)
	}
	// Each hand-off took its client's cookie ACK and its backend's
	// SYN-ACK through the completion queue's worker.
	if got, want := byKind["received completion"], 2*handedOff; got < want {
		t.Fatalf("completion queue received %v packets, want at least %v: two per handed-off flow", got, want)
	}
	if !g.alive() {
		t.Fatal("gateway exited")
	}
}

// queueMetrics sums synguard's queue received and dropped counters by
// kind: "received syn", "dropped completion" and so on.
func queueMetrics(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	text, err := lab.ScrapeMetricsText(ctx, g.ns, metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for line := range strings.Lines(text) {
		for _, m := range []string{"received", "dropped"} {
			for _, kind := range []string{"syn", "completion"} {
				var v float64
				prefix := fmt.Sprintf(`synguard_queue_%s_total{kind="%s",`, m, kind)
				if rest, found := strings.CutPrefix(line, prefix); found {
					_, num, _ := strings.Cut(rest, "} ")
					if _, err := fmt.Sscan(num, &v); err != nil {
						t.Fatalf("metrics line %q: %v", line, err)
					}
					out[m+" "+kind] += v
				}
			}
		}
	}
	return out
}
