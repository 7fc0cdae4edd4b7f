package telemetry

import (
	"sync"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		want int // index of the first bucket (upper bound) that counts d
	}{
		{"zero", 0, 0},
		{"negative counts as zero", -time.Second, 0},
		{"below the first bound", 99 * time.Microsecond, 0},
		{"on the first bound", 100 * time.Microsecond, 0},
		{"just over the first bound", 100*time.Microsecond + 1, 1},
		{"typical lab handshake", 300 * time.Microsecond, 2},
		{"on a middle bound", time.Millisecond, 3},
		{"after three retries", 1750 * time.Millisecond, 13},
		{"on the last bound", 5 * time.Second, len(HandshakeBuckets) - 1},
		{"past the last bound", 5*time.Second + 1, len(HandshakeBuckets)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Histogram
			h.Observe(tc.d)
			s := h.Snapshot()
			if s.Count != 1 {
				t.Fatalf("count %d, want 1", s.Count)
			}
			for i, c := range s.Cumulative {
				want := uint64(0)
				if i >= tc.want {
					want = 1
				}
				if c != want {
					t.Fatalf("cumulative[%d] = %d, want %d (all: %v)", i, c, want, s.Cumulative)
				}
			}
			if tc.d > 0 && s.Sum != tc.d {
				t.Fatalf("sum %v, want %v", s.Sum, tc.d)
			}
		})
	}
}

func TestHistogramBoundsAscend(t *testing.T) {
	for i := 1; i < len(HandshakeBuckets); i++ {
		if HandshakeBuckets[i] <= HandshakeBuckets[i-1] {
			t.Fatalf("bucket %d (%v) not above bucket %d (%v)", i, HandshakeBuckets[i], i-1, HandshakeBuckets[i-1])
		}
	}
}

func TestHistogramMean(t *testing.T) {
	var h Histogram
	h.Observe(time.Second)
	prev := h.Snapshot()
	if _, ok := h.Snapshot().Mean(prev); ok {
		t.Fatal("mean of no new observations reported")
	}
	h.Observe(2 * time.Millisecond)
	h.Observe(4 * time.Millisecond)
	if m, ok := h.Snapshot().Mean(prev); !ok || m != 3*time.Millisecond {
		t.Fatalf("mean %v %v, want 3ms", m, ok)
	}
}

// Concurrent observers lose nothing: the counts are exact.
func TestHistogramConcurrent(t *testing.T) {
	hs := NewHistograms(2)
	const per, workers = 10000, 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				hs.Observe(w%2, time.Duration(i)*time.Microsecond)
			}
		}()
	}
	wg.Wait()
	for svc := range 2 {
		s, _ := hs.Snapshot(svc)
		if s.Count != per*workers/2 || s.Cumulative[len(s.Cumulative)-1] != s.Count {
			t.Fatalf("service %d: count %d, +Inf %d, want %d", svc, s.Count, s.Cumulative[len(s.Cumulative)-1], per*workers/2)
		}
	}
}

func TestHistogramObserveAllocatesNothing(t *testing.T) {
	hs := NewHistograms(4)
	d := 700 * time.Microsecond
	if n := testing.AllocsPerRun(1000, func() { hs.Observe(2, d) }); n != 0 {
		t.Fatalf("Observe allocates %v times per call", n)
	}
}

// BenchmarkObserve and BenchmarkObserveParallel compare one observer with
// observers on every CPU hitting the same service: the parallel ns/op
// shows what sharing a service's counters costs.
func BenchmarkObserve(b *testing.B) {
	hs := NewHistograms(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		hs.Observe(0, time.Duration(i&1023)*time.Microsecond)
	}
}

func BenchmarkObserveParallel(b *testing.B) {
	hs := NewHistograms(1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			hs.Observe(0, time.Duration(i&1023)*time.Microsecond)
			i++
		}
	})
}
