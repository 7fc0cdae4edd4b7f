package lab_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// TestProbeConnectsFromItsNamespace: a probe's socket lives in the
// namespace it names, for both families (the backend listens on that
// namespace's loopback only), and a port nobody listens on there is
// refused at connect.
func TestProbeConnectsFromItsNamespace(t *testing.T) {
	ns := nstest.New(t, "sgdial")
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		b := serve(t, ns, netip.MustParseAddrPort(addr))
		r := lab.Probe(context.Background(), ns, b.Addr(), 5*time.Second)
		if !r.OK || r.Bytes != lab.ProbeBytes {
			t.Fatalf("probe %s: ok %v, %d bytes, error %v", b.Addr(), r.OK, r.Bytes, r.Err)
		}
		closed := netip.AddrPortFrom(b.Addr().Addr(), b.Addr().Port()+1)
		r = lab.Probe(context.Background(), ns, closed, 5*time.Second)
		if !errors.Is(r.Err, syscall.ECONNREFUSED) || !strings.HasPrefix(r.Err.Error(), "connect ") {
			t.Fatalf("probe %s, where nothing listens: %v, want connect: connection refused", closed, r.Err)
		}
	}
}

// TestProbesWaitWithoutLockingThreads: probes waiting for an answer to
// their SYN hold no thread each (a dial inside the namespace's thread
// did, and its wake-up was a hand-off between threads), and cancelling
// their context ends them at once.
func TestProbesWaitWithoutLockingThreads(t *testing.T) {
	ns := nstest.New(t, "sgdial")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A link whose peer is down: nothing sent to its subnet is answered.
	for _, args := range [][]string{
		{"link", "add", "sink0", "type", "veth", "peer", "name", "sink1"},
		{"addr", "add", "192.0.2.1/24", "dev", "sink0"},
		{"link", "set", "sink0", "up"},
	} {
		if err := ns.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	const probes = 40
	before := threads(t)
	probeCtx, stop := context.WithCancel(ctx)
	results := make([]lab.ProbeResult, probes)
	var wg sync.WaitGroup
	for i := range probes {
		wg.Go(func() {
			results[i] = lab.Probe(probeCtx, ns, netip.MustParseAddrPort("192.0.2.2:80"), 20*time.Second)
		})
	}
	poll.Must(t, 10*time.Second, strconv.Itoa(probes)+" connects under way", func() bool {
		return synSent(t, ns) == probes
	})
	during := threads(t)
	stop()
	stopped := time.Now()
	wg.Wait()
	t.Logf("threads: %d before, %d with %d probes waiting; all ended %v after the cancel", before, during, probes, time.Since(stopped))
	if during-before >= probes/2 {
		t.Errorf("%d probes waiting took %d threads more", probes, during-before)
	}
	for i, r := range results {
		if r.OK || !errors.Is(r.Err, context.Canceled) || !strings.HasPrefix(r.Err.Error(), "connect ") {
			t.Fatalf("probe %d: ok %v, error %v; want connect: context canceled", i, r.OK, r.Err)
		}
	}
	if d := time.Since(stopped); d > 5*time.Second {
		t.Errorf("probes ended %v after their context", d)
	}
}

// threads counts this process's threads.
func threads(t *testing.T) int {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// synSent counts ns's sockets in SYN_SENT.
func synSent(t *testing.T, ns *netns.NS) int {
	t.Helper()
	n := 0
	for _, s := range nstest.TCPSockets(t, ns) {
		if s.State == nstest.TCPSynSent {
			n++
		}
	}
	return n
}
