package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// Prober bounds.
const (
	MaxProbeRate        = 1000
	DefaultProbeRate    = 20
	DefaultProbeTimeout = 3 * time.Second
)

// ProbeConfig describes a stream of legitimate clients.
type ProbeConfig struct {
	// NS is where the clients connect from (nil: the caller's namespace).
	NS *netns.NS
	// Target is the service they connect to.
	Target netip.AddrPort
	// Rate is how many clients start per second, 1..MaxProbeRate.
	Rate int
	// Duration is the window in which clients start; each then has
	// Timeout to finish, so RunProbes returns at most Timeout after it.
	Duration time.Duration
	// Timeout bounds one client: connect, request and verified response
	// (DefaultProbeTimeout when 0).
	Timeout time.Duration
	// Greeting makes the clients those of a protocol whose server speaks
	// first: each sends nothing and reads the server's greeting
	// (lab.ProbeGreeting); FirstByte is then the greeting's.
	Greeting bool
}

// RunProbes starts cfg.Rate legitimate clients per second for cfg.Duration,
// each one a lab.Probe (a real TCP connect, then GET of a small body whose
// content is checked), waits for the last to finish and returns their
// tally. Clients start on a fixed schedule whatever the previous ones are
// doing, as real clients would, so a stalled service does not slow the
// offered legitimate load.
func RunProbes(ctx context.Context, cfg ProbeConfig) (*ProbeTally, error) {
	if cfg.Rate < 1 || cfg.Rate > MaxProbeRate {
		return nil, fmt.Errorf("probe: rate %d outside 1..%d", cfg.Rate, MaxProbeRate)
	}
	if cfg.Duration <= 0 || cfg.Duration > MaxFloodDuration {
		return nil, fmt.Errorf("probe: duration %v outside (0, %v]", cfg.Duration, MaxFloodDuration)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultProbeTimeout
	}
	probe := lab.Probe
	if cfg.Greeting {
		probe = lab.ProbeGreeting
	}
	tally := &ProbeTally{}
	var wg sync.WaitGroup
	start := time.Now()
	n := int(cfg.Duration.Seconds() * float64(cfg.Rate))
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := range n {
		// Probe i is due at start + i/rate: an absolute schedule, so a
		// late wake-up does not push the following probes back.
		due := start.Add(time.Duration(int64(i) * int64(time.Second) / int64(cfg.Rate)))
		timer.Reset(time.Until(due))
		select {
		case <-ctx.Done():
			wg.Wait()
			return tally, ctx.Err()
		case <-timer.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tally.Add(probe(ctx, cfg.NS, cfg.Target, cfg.Timeout))
		}()
	}
	wg.Wait()
	return tally, ctx.Err()
}

// ProbeTally accumulates legitimate clients' results. It is safe for
// concurrent use.
type ProbeTally struct {
	mu        sync.Mutex
	attempts  int
	ok        int
	handshake []time.Duration // of successful probes
	firstByte []time.Duration // of successful probes
	total     []time.Duration // of successful probes
	errs      map[string]int
	// synRetrans counts the probes, successful or not, whose SYN was
	// sent more than once; synRetransSegs the SYNs sent again.
	synRetrans, synRetransSegs int
}

// Add records one probe.
func (t *ProbeTally) Add(r lab.ProbeResult) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.attempts++
	if r.SYNRetransmits > 0 {
		t.synRetrans++
		t.synRetransSegs += r.SYNRetransmits
	}
	if !r.OK {
		if t.errs == nil {
			t.errs = make(map[string]int)
		}
		t.errs[classifyProbeError(r.Err)]++
		return
	}
	t.ok++
	t.handshake = append(t.handshake, r.Handshake)
	t.firstByte = append(t.firstByte, r.FirstByte)
	t.total = append(t.total, r.Total)
}

// Merge adds o's probes to t: one tally of the clients of several runs.
func (t *ProbeTally) Merge(o *ProbeTally) {
	if o == nil || o == t {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.attempts += o.attempts
	t.ok += o.ok
	t.handshake = append(t.handshake, o.handshake...)
	t.firstByte = append(t.firstByte, o.firstByte...)
	t.total = append(t.total, o.total...)
	for k, v := range o.errs {
		if t.errs == nil {
			t.errs = make(map[string]int)
		}
		t.errs[k] += v
	}
	t.synRetrans += o.synRetrans
	t.synRetransSegs += o.synRetransSegs
}

// ProbeSummary is what a run reports about its legitimate clients.
// Latencies are over the successful probes only: a failed probe has no
// handshake time, only a timeout, and the success ratio accounts for it.
type ProbeSummary struct {
	Attempts, OK int
	// Success is OK/Attempts; 0 when nothing was attempted.
	Success float64
	// HandshakeP50 and HandshakeP99 time connect() until established.
	HandshakeP50, HandshakeP99 time.Duration
	// FirstByteP50, P90 and P99 time connect() until the response's
	// first byte: the time to first byte, what a user waits for.
	FirstByteP50, FirstByteP90, FirstByteP99 time.Duration
	// TotalP50 and TotalP99 time connect() until the body was read and
	// checked: with a proxy in front, the backend's own handshake happens
	// after the client's, so this is where a proxy's latency shows.
	TotalP50, TotalP99 time.Duration
	// Errors counts failed probes by kind (classifyProbeError).
	Errors map[string]int
	// SYNRetransmitted counts the probes, failed ones included, whose
	// SYN their kernel had to send again (lab.ProbeResult.SYNRetransmits):
	// a SYN or SYN-ACK dropped on the way, which cost the client at least
	// its 1 s retransmission timeout. SYNRetransmittedShare is its share
	// of Attempts; SYNRetransmits counts the retransmitted SYNs.
	SYNRetransmitted      int
	SYNRetransmittedShare float64
	SYNRetransmits        int
}

// Summary computes the success ratio and latency percentiles.
func (t *ProbeTally) Summary() ProbeSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := ProbeSummary{Attempts: t.attempts, OK: t.ok, Errors: make(map[string]int, len(t.errs))}
	s.SYNRetransmitted, s.SYNRetransmits = t.synRetrans, t.synRetransSegs
	if t.attempts > 0 {
		s.Success = float64(t.ok) / float64(t.attempts)
		s.SYNRetransmittedShare = float64(t.synRetrans) / float64(t.attempts)
	}
	s.HandshakeP50 = Percentile(t.handshake, 50)
	s.HandshakeP99 = Percentile(t.handshake, 99)
	s.FirstByteP50 = Percentile(t.firstByte, 50)
	s.FirstByteP90 = Percentile(t.firstByte, 90)
	s.FirstByteP99 = Percentile(t.firstByte, 99)
	s.TotalP50 = Percentile(t.total, 50)
	s.TotalP99 = Percentile(t.total, 99)
	for k, v := range t.errs {
		s.Errors[k] = v
	}
	return s
}

// Percentile returns the p-th percentile (0 < p <= 100) of xs by the
// nearest-rank method: the smallest value that at least p% of the samples
// are less than or equal to. It is 0 for no samples. xs is not modified.
func Percentile(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 || p <= 0 || p > 100 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1]
}

// classifyProbeError names the kind of a probe's failure, without the
// addresses and ports that make every message unique: the stage
// ("connect" or "request", lab.Probe's prefixes) and the cause.
func classifyProbeError(err error) string {
	if err == nil {
		return "failed"
	}
	stage := "request"
	if strings.HasPrefix(err.Error(), "connect ") {
		stage = "connect"
	}
	var cause string
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		cause = "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		cause = "refused"
	case errors.Is(err, syscall.ECONNRESET):
		cause = "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		cause = "closed early"
	default:
		// The innermost message, which names the cause without the
		// endpoints.
		for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(u) {
			err = u
		}
		cause = err.Error()
	}
	return stage + ": " + cause
}
