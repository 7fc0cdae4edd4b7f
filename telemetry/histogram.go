package telemetry

import (
	"sync/atomic"
	"time"
)

// HandshakeBuckets are the upper bounds of the backend handshake latency
// histogram. A healthy backend next to the gateway answers in well under
// a millisecond; the top buckets catch the replayed SYN's retries (0.25,
// 0.5, 1 and 2 s after the first).
var HandshakeBuckets = [...]time.Duration{
	100 * time.Microsecond,
	250 * time.Microsecond,
	500 * time.Microsecond,
	time.Millisecond,
	2500 * time.Microsecond,
	5 * time.Millisecond,
	10 * time.Millisecond,
	25 * time.Millisecond,
	50 * time.Millisecond,
	100 * time.Millisecond,
	250 * time.Millisecond,
	500 * time.Millisecond,
	time.Second,
	2500 * time.Millisecond,
	5 * time.Second,
}

const numBuckets = len(HandshakeBuckets) + 1 // the last is +Inf

// Histogram counts durations in HandshakeBuckets. Observe is a few
// uncontended atomic adds and allocates nothing; the buckets are summed
// into cumulative form only at scrape time.
type Histogram struct {
	counts [numBuckets]atomic.Uint64 // per bucket, not cumulative
	sumNs  atomic.Uint64
	// Keep two services' histograms off one cache line.
	_ [64]byte
}

// Observe counts one duration. Negative durations (a clock step) count
// as zero.
func (h *Histogram) Observe(d time.Duration) {
	d = max(d, 0)
	i := 0
	for i < len(HandshakeBuckets) && d > HandshakeBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(d))
}

// HistogramSnapshot is a histogram read at one moment.
type HistogramSnapshot struct {
	Count uint64
	Sum   time.Duration
	// Cumulative[i] counts observations ≤ HandshakeBuckets[i]; the last
	// entry (+Inf) equals Count.
	Cumulative [numBuckets]uint64
}

// Snapshot reads the histogram. Count is the sum of the buckets read, so
// the snapshot is self-consistent even while observations arrive.
func (h *Histogram) Snapshot() HistogramSnapshot {
	var s HistogramSnapshot
	var run uint64
	for i := range h.counts {
		run += h.counts[i].Load()
		s.Cumulative[i] = run
	}
	s.Count = run
	s.Sum = time.Duration(h.sumNs.Load())
	return s
}

// Mean is the average duration of the observations between prev and s,
// and false when there were none.
func (s HistogramSnapshot) Mean(prev HistogramSnapshot) (time.Duration, bool) {
	if s.Count <= prev.Count {
		return 0, false
	}
	return (s.Sum - prev.Sum) / time.Duration(s.Count-prev.Count), true
}

// Histograms holds one Histogram per service, by the engine's service
// index.
type Histograms struct {
	per []Histogram
}

// NewHistograms returns histograms for n services.
func NewHistograms(n int) *Histograms {
	return &Histograms{per: make([]Histogram, n)}
}

// Observe counts d for service index svc; an index out of range is
// ignored. Its signature is engine.Config.HandshakeLatency's.
func (h *Histograms) Observe(svc int, d time.Duration) {
	if svc >= 0 && svc < len(h.per) {
		h.per[svc].Observe(d)
	}
}

// Snapshot reads service svc's histogram; ok is false when there is none.
func (h *Histograms) Snapshot(svc int) (s HistogramSnapshot, ok bool) {
	if h == nil || svc < 0 || svc >= len(h.per) {
		return s, false
	}
	return h.per[svc].Snapshot(), true
}

// The hand-off's steps, the indexes of the stage histograms (see
// engine.HandoffTiming), and their label values.
const (
	StageBackend = iota
	StageWait
	StageEntry
)

// HandshakeStages names the stages, by index.
var HandshakeStages = []string{StageBackend: "backend", StageWait: "wait", StageEntry: "entry"}
