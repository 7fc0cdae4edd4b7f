package telemetry

import (
	"maps"
	"sync"
	"time"
)

// fakeSource is a Source whose figures a test sets.
type fakeSource struct {
	mu       sync.Mutex
	services []ServiceCounters
	queues   []QueueCounters
}

func (f *fakeSource) ServiceCounters() []ServiceCounters {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ServiceCounters, len(f.services))
	for i, s := range f.services {
		s.Counters = maps.Clone(s.Counters)
		out[i] = s
	}
	return out
}

func (f *fakeSource) QueueCounters() []QueueCounters {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]QueueCounters(nil), f.queues...)
}

// add grows service i's counter by n.
func (f *fakeSource) add(i int, counter string, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services[i].Counters[counter] += n
}

func (f *fakeSource) set(fn func(f *fakeSource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// testCounters is the engine's counter list as far as these tests need it.
var testCounters = []string{CounterSYNReceived, CounterSYNACKSent, CounterCookieValid, CounterCookieInvalid, "backend_retry", CounterHandedOff}

func newFakeSource() *fakeSource {
	return &fakeSource{
		services: []ServiceCounters{
			{Service: "203.0.113.10:80", Mode: "cookie", Counters: map[string]uint64{
				CounterSYNReceived: 1000, CounterSYNACKSent: 990, CounterCookieValid: 7,
				CounterCookieInvalid: 3, "backend_retry": 1, CounterHandedOff: 6,
			}, HalfOpen: 0, Pending: 2},
			{Service: "[2001:db8::10]:443", Mode: "passthrough", Counters: map[string]uint64{
				CounterSYNReceived: 40, CounterSYNACKSent: 0, CounterCookieValid: 0,
				CounterCookieInvalid: 0, "backend_retry": 0, CounterHandedOff: 0,
			}, HalfOpen: 12, Pending: 0},
		},
		queues: []QueueCounters{{Queue: 7, Received: 2000, Batches: 40, KernelDrops: 0, ENOBUFS: 0, VerdictError: 1}},
	}
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
