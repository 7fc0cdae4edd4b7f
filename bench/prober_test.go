package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name string
		xs   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		// Nearest rank: ceil(p/100 * n)-th smallest.
		{"median of 4 is the 2nd", ms(40, 10, 30, 20), 50, 20 * time.Millisecond},
		{"median of 5 is the 3rd", ms(5, 1, 4, 2, 3), 50, 3 * time.Millisecond},
		{"p99 of 100 is the 99th", ms(seq(1, 100)...), 99, 99 * time.Millisecond},
		{"p99 of 101 is the 100th", ms(seq(1, 101)...), 99, 100 * time.Millisecond},
		{"p99 of 10 is the max", ms(seq(1, 10)...), 99, 10 * time.Millisecond},
		{"p100", ms(3, 9, 1), 100, 9 * time.Millisecond},
		{"p0 is undefined", ms(3, 9, 1), 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.xs...)
			if got := Percentile(tt.xs, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("Percentile reordered its input")
				}
			}
		})
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// The tally counts attempts and successes, and takes latencies from the
// successful probes only.
func TestProbeTally(t *testing.T) {
	var tally ProbeTally
	if s := tally.Summary(); s.Attempts != 0 || s.Success != 0 || s.HandshakeP50 != 0 {
		t.Fatalf("empty tally: %+v", s)
	}
	// 10 successes with handshakes of 1..10 ms and totals of 11..20 ms,
	// and 3 failures whose durations must not count.
	for i := 1; i <= 10; i++ {
		tally.Add(lab.ProbeResult{OK: true, Handshake: time.Duration(i) * time.Millisecond,
			FirstByte: time.Duration(100-i) * time.Millisecond, Total: time.Duration(100+i) * time.Millisecond})
	}
	timeout := &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	tally.Add(lab.ProbeResult{Err: fmt.Errorf("connect 203.0.113.2:80: %w", timeout), Handshake: 3 * time.Second, Total: 3 * time.Second})
	tally.Add(lab.ProbeResult{Err: fmt.Errorf("connect 203.0.113.2:80: %w", timeout), Handshake: 3 * time.Second, Total: 3 * time.Second})
	tally.Add(lab.ProbeResult{Err: fmt.Errorf("read response: %w", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}), Handshake: time.Millisecond, Total: 3 * time.Second})
	tally.Add(lab.ProbeResult{Err: errors.New("body content differs from the expected stream"), Handshake: time.Millisecond, FirstByte: time.Millisecond, Total: 3 * time.Second})

	s := tally.Summary()
	if s.Attempts != 14 || s.OK != 10 {
		t.Errorf("attempts %d ok %d, want 14 and 10", s.Attempts, s.OK)
	}
	if want := 10.0 / 14; s.Success != want {
		t.Errorf("success %v, want %v", s.Success, want)
	}
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"handshake p50", s.HandshakeP50, 5 * time.Millisecond},
		{"handshake p99", s.HandshakeP99, 10 * time.Millisecond},
		{"first byte p50", s.FirstByteP50, 94 * time.Millisecond},
		{"first byte p90", s.FirstByteP90, 98 * time.Millisecond},
		{"first byte p99", s.FirstByteP99, 99 * time.Millisecond},
		{"request p50", s.TotalP50, 105 * time.Millisecond},
		{"request p99", s.TotalP99, 110 * time.Millisecond},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if s.Errors["connect: timeout"] != 2 || s.Errors["request: timeout"] != 1 || len(s.Errors) != 3 {
		t.Errorf("errors by kind: %v", s.Errors)
	}
}

func TestClassifyProbeError(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, "failed"},
		{fmt.Errorf("connect 203.0.113.2:80: %w", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), "connect: refused"},
		{fmt.Errorf("connect 203.0.113.2:80: %w", context.DeadlineExceeded), "connect: timeout"},
		{fmt.Errorf("read body: %w", &net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), "request: reset"},
		{errors.New("status 500 Internal Server Error"), "request: status 500 Internal Server Error"},
	}
	for _, tt := range tests {
		if got := classifyProbeError(tt.err); got != tt.want {
			t.Errorf("classifyProbeError(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// RunProbes against a real backend in a namespace of the test's own:
// every probe succeeds, and none against a port nobody listens on.
func TestRunProbes(t *testing.T) {
	ctx := context.Background()
	ns := nstest.New(t, "sgt-probe")
	bctx, cancel := context.WithCancel(ctx)
	backend, err := lab.ServeBackend(bctx, ns, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); backend.Close() })

	cfg := ProbeConfig{NS: ns, Target: backend.Addr(), Rate: 50, Duration: 400 * time.Millisecond, Timeout: 2 * time.Second}
	start := time.Now()
	tally, err := RunProbes(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := tally.Summary()
	if s.Attempts != 20 || s.OK != 20 || s.Success != 1 {
		t.Errorf("served backend: %d of %d succeeded (%v), want 20 of 20; errors %v", s.OK, s.Attempts, s.Success, s.Errors)
	}
	if int(backend.Accepted()) != s.Attempts {
		t.Errorf("backend accepted %d connections, prober made %d", backend.Accepted(), s.Attempts)
	}
	if s.HandshakeP50 <= 0 || s.HandshakeP99 < s.HandshakeP50 || s.FirstByteP50 < s.HandshakeP50 ||
		s.FirstByteP90 < s.FirstByteP50 || s.FirstByteP99 < s.FirstByteP90 || s.TotalP50 < s.FirstByteP50 {
		t.Errorf("latencies out of order: %+v", s)
	}
	// The schedule spreads the probes over the window rather than
	// starting them all at once.
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("20 probes at 50/s took only %v", el)
	}

	cfg.Target = netip.AddrPortFrom(backend.Addr().Addr(), backend.Addr().Port()+1)
	cfg.Duration = 100 * time.Millisecond
	tally, err = RunProbes(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s := tally.Summary(); s.Attempts != 5 || s.OK != 0 || s.Errors["connect: refused"] != 5 {
		t.Errorf("closed port: %+v", s)
	}
}

func TestProbeConfigErrors(t *testing.T) {
	for _, cfg := range []ProbeConfig{
		{Rate: 0, Duration: time.Second},
		{Rate: MaxProbeRate + 1, Duration: time.Second},
		{Rate: 10, Duration: 0},
		{Rate: 10, Duration: MaxFloodDuration + time.Second},
	} {
		if _, err := RunProbes(context.Background(), cfg); err == nil {
			t.Errorf("RunProbes(%+v) accepted", cfg)
		}
	}
}

// The tally counts the probes whose SYN was retransmitted, failed ones
// included, and the retransmitted SYNs; the share is over every attempt.
func TestProbeTallySYNRetransmits(t *testing.T) {
	var tally ProbeTally
	for range 6 {
		tally.Add(lab.ProbeResult{OK: true, Handshake: time.Millisecond})
	}
	tally.Add(lab.ProbeResult{OK: true, Handshake: 1001 * time.Millisecond, SYNRetransmits: 1})
	tally.Add(lab.ProbeResult{OK: true, Handshake: 3002 * time.Millisecond, SYNRetransmits: 2})
	timeout := fmt.Errorf("connect 203.0.113.2:80: %w", &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded})
	tally.Add(lab.ProbeResult{Err: timeout, Handshake: 3 * time.Second, SYNRetransmits: lab.SYNRetransmitsWithin(3 * time.Second)})
	tally.Add(lab.ProbeResult{Err: errors.New("read response: EOF"), Handshake: time.Millisecond})

	s := tally.Summary()
	if s.Attempts != 10 || s.OK != 8 {
		t.Fatalf("attempts %d ok %d, want 10 and 8", s.Attempts, s.OK)
	}
	if s.SYNRetransmitted != 3 || s.SYNRetransmits != 5 || s.SYNRetransmittedShare != 0.3 {
		t.Errorf("SYN retransmitted by %d clients (share %v), %d SYNs; want 3 (0.3), 5",
			s.SYNRetransmitted, s.SYNRetransmittedShare, s.SYNRetransmits)
	}
	if s := (&ProbeTally{}).Summary(); s.SYNRetransmitted != 0 || s.SYNRetransmittedShare != 0 {
		t.Errorf("empty tally: %+v", s)
	}
}

// A legitimate client whose first SYN is dropped (by a statistic rule in
// a namespace of the test's own that drops every other SYN, so the first
// SYN of each of these sequential probes and not its retransmission) is
// counted as retransmitted, by the real kernel's TCP_INFO, and waits the
// 1 s retransmission timeout; a connect that never gets through counts
// the retransmissions its duration implies; and with no rule, RunProbes
// counts none.
func TestProbeCountsDroppedSYN(t *testing.T) {
	ctx := context.Background()
	ns := nstest.New(t, "sgt-synrtx")
	bctx, cancel := context.WithCancel(ctx)
	backend, err := lab.ServeBackend(bctx, ns, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); backend.Close() })
	target := backend.Addr()

	cfg := ProbeConfig{NS: ns, Target: target, Rate: 20, Duration: 500 * time.Millisecond, Timeout: 2 * time.Second}
	tally, err := RunProbes(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s := tally.Summary(); s.OK != 10 || s.SYNRetransmitted != 0 || s.SYNRetransmits != 0 {
		t.Fatalf("no SYN dropped: %d of %d ok, %d retransmitted (%d SYNs); errors %v", s.OK, s.Attempts, s.SYNRetransmitted, s.SYNRetransmits, s.Errors)
	}

	// The rule sits in INPUT, which loopback traffic reaches after
	// OUTPUT and POSTROUTING: the SYN has left the client's stack.
	everyOther := []string{"INPUT", "-i", "lo", "-p", "tcp", "--syn", "--dport", fmt.Sprint(target.Port()),
		"-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0", "-j", "DROP"}
	if err := iptables(ctx, ns, "iptables", append([]string{"-A"}, everyOther...)...); err != nil {
		t.Fatal(err)
	}
	const probes = 3
	tally = &ProbeTally{}
	for i := range probes {
		r := lab.Probe(ctx, ns, target, 3*time.Second)
		if !r.OK || r.SYNRetransmits != 1 || r.Handshake < time.Second {
			t.Errorf("probe %d with its first SYN dropped: ok %v (%v), %d SYN retransmits, handshake %v; want ok, 1 and at least 1 s",
				i, r.OK, r.Err, r.SYNRetransmits, r.Handshake)
		}
		tally.Add(r)
	}
	if dropped := ruleCount(t, ns, "INPUT"); dropped != probes {
		t.Errorf("the rule dropped %d SYNs, want %d", dropped, probes)
	}
	if s := tally.Summary(); s.Attempts != probes || s.SYNRetransmitted != probes || s.SYNRetransmits != probes || s.SYNRetransmittedShare != 1 {
		t.Errorf("tally: %d of %d retransmitted (share %v, %d SYNs), want all, one SYN each", s.SYNRetransmitted, s.Attempts, s.SYNRetransmittedShare, s.SYNRetransmits)
	}

	// Every SYN dropped: the connect times out, and TCP_INFO cannot be
	// read; 1.5 s of it has seen one retransmission.
	if err := iptables(ctx, ns, "iptables", "-I", "INPUT", "-i", "lo", "-p", "tcp", "--syn", "--dport", fmt.Sprint(target.Port()), "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	if r := lab.Probe(ctx, ns, target, 1500*time.Millisecond); r.OK || r.SYNRetransmits != 1 {
		t.Errorf("probe with every SYN dropped: ok %v (%v), %d SYN retransmits after %v; want a failure and 1", r.OK, r.Err, r.SYNRetransmits, r.Handshake)
	}
}

// ruleCount is the packet count of the first rule in a filter chain of ns.
func ruleCount(t *testing.T, ns *netns.NS, chain string) int {
	t.Helper()
	out, err := ns.Output(context.Background(), "iptables", "-w", "-t", "filter", "-L", chain, "-nvx")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 {
		t.Fatalf("no rule in %s:\n%s", chain, out)
	}
	n, err := strconv.Atoi(strings.Fields(lines[2])[0])
	if err != nil {
		t.Fatalf("rule counter in %q: %v", lines[2], err)
	}
	return n
}
