package gateway

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/xdp"
)

// The fast path derives keys again only when the clock leaves the epoch
// they were derived for; within it they are the jar's, unchanged.
func TestFastPathKeysCover(t *testing.T) {
	jar, err := cookies.New(cookies.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var f fastPath
	at := time.Unix(1_800_000_000, 0) // an epoch boundary of the default period
	if f.keysCover(at) {
		t.Fatal("no keys yet, yet covered")
	}
	f.keys = jar.EpochKeys(at)
	for _, tt := range []struct {
		at   time.Time
		want bool
	}{
		{at, true},
		{at.Add(cookies.DefaultPeriod - time.Nanosecond), true},
		{at.Add(cookies.DefaultPeriod), false},
		{at.Add(-time.Nanosecond), false},
	} {
		if got := f.keysCover(tt.at); got != tt.want {
			t.Errorf("keysCover(%v) = %v, want %v", tt.at.Sub(at), got, tt.want)
		}
		if tt.want && jar.EpochKeys(tt.at) != f.keys {
			t.Errorf("at %v the jar's keys differ from the cached ones", tt.at.Sub(at))
		}
	}
}

// The samples reader pauses so that the ring fills to half at the rate
// the last pause showed, within [1 ms, samplePoll].
func TestNextSamplePoll(t *testing.T) {
	for _, tt := range []struct {
		last time.Duration
		fill float64
		want time.Duration
	}{
		{samplePoll, 0, samplePoll},     // samples came after the fill was read
		{samplePoll, 0.01, samplePoll},  // slow: the longest pause
		{samplePoll, 0.5, samplePoll},   // half full: as it was
		{samplePoll, 1, samplePoll / 2}, // full: samples were lost
		{4 * time.Millisecond, 0.8, 2500 * time.Microsecond},
		{2 * time.Millisecond, 1, time.Millisecond}, // no shorter than 1 ms
		{time.Millisecond, 0.1, 5 * time.Millisecond},
	} {
		if got := nextSamplePoll(tt.last, tt.fill); got != tt.want {
			t.Errorf("nextSamplePoll(%v, %.2f) = %v, want %v", tt.last, tt.fill, got, tt.want)
		}
	}
}

// TestReadSamplesWakesPerPause: samples that come one at a time, 10 ms
// apart (as the program spaces a slow flood's), are all read, with a
// handful of waits on the ring rather than one per sample: once a sample
// wakes the reader, it pauses and drains until a pause brings nothing.
func TestReadSamplesWakesPerPause(t *testing.T) {
	const n = 60
	r := &scriptedRing{samples: make(chan xdp.Sample, 16)}
	go func() {
		for i := range n {
			r.samples <- xdp.Sample{Service: i, Weight: 8}
			time.Sleep(10 * time.Millisecond)
		}
		close(r.samples)
	}()
	var got []int
	var readErr error
	err := readSamples(context.Background(), r, func(s xdp.Sample) { got = append(got, s.Service) },
		func(err error) error { readErr = err; return nil })
	if err != nil || readErr != os.ErrClosed {
		t.Fatalf("readSamples: %v, reading: %v; want nil and the ring's end", err, readErr)
	}
	if len(got) != n {
		t.Fatalf("read %d samples of %d", len(got), n)
	}
	for i, s := range got {
		if s != i {
			t.Fatalf("sample %d is the %dth sent", i, s)
		}
	}
	// One wait for the first sample; another only if a pause fell in a
	// gap of the sender's, which a loaded machine may make.
	if w := r.waits(); w > 3 {
		t.Errorf("%d waits on the ring for %d samples, want at most 3", w, n)
	}
}

// scriptedRing is a sample ring fed through a channel: a Read with a
// deadline set returns os.ErrDeadlineExceeded when nothing is queued, one
// without waits; a closed channel is a closed ring.
type scriptedRing struct {
	samples  chan xdp.Sample
	mu       sync.Mutex
	deadline time.Time
	waited   int
}

func (r *scriptedRing) SetDeadline(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadline = t
}

func (r *scriptedRing) Fill() float64 { return float64(len(r.samples)) / float64(cap(r.samples)) }

func (r *scriptedRing) Read() (xdp.Sample, error) {
	r.mu.Lock()
	nowait := !r.deadline.IsZero()
	r.mu.Unlock()
	var (
		s  xdp.Sample
		ok bool
	)
	if nowait {
		select {
		case s, ok = <-r.samples:
		default:
			return xdp.Sample{}, os.ErrDeadlineExceeded
		}
	} else {
		s, ok = <-r.samples
		r.mu.Lock()
		r.waited++
		r.mu.Unlock()
	}
	if !ok {
		return xdp.Sample{}, os.ErrClosed
	}
	return s, nil
}

func (r *scriptedRing) waits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waited
}
