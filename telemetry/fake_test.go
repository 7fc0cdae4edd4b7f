package telemetry

import (
	"maps"
	"sync"
	"time"
)

// fakeSource is a Source whose figures a test sets. It is also an
// XDPSource and an AttackSource; wrap it in plainSource to hide those.
type fakeSource struct {
	mu       sync.Mutex
	services []ServiceCounters
	queues   []QueueCounters
	xdp      map[string]uint64
	ended    map[string][]Attack // newest first
	asked    int                 // the n Attacks was last called with
}

func (f *fakeSource) ServiceCounters() []ServiceCounters {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ServiceCounters, len(f.services))
	for i, s := range f.services {
		s.Counters = maps.Clone(s.Counters)
		if s.Attack != nil {
			a := *s.Attack
			a.TopSources = append([]SourceCount(nil), a.TopSources...)
			s.Attack = &a
		}
		s.Index = i // the histograms' index: the list's order here
		out[i] = s
	}
	return out
}

func (f *fakeSource) XDPActions() map[string]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.xdp)
}

// Attacks returns every ended attack it was given, however many n allows:
// telemetry must hold the bound itself.
func (f *fakeSource) Attacks(n int) map[string][]Attack {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = n
	out := make(map[string][]Attack, len(f.ended))
	for svc, as := range f.ended {
		out[svc] = append([]Attack(nil), as...)
	}
	return out
}

// plainSource is a Source and nothing more.
type plainSource struct{ Source }

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
		queues: []QueueCounters{{Queue: 7, Kind: QueueSYN, Received: 2000, Batches: 40, KernelDrops: 0, ENOBUFS: 0, VerdictError: 1}, {Queue: 8, Kind: QueueCompletion, Received: 60, Batches: 30, KernelDrops: 0}},
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

// Prefixes of the incident: the flood's, and a network of real users.
var (
	hotPrefix  = "198.18.7.0/24"
	realPrefix = "198.51.100.0/24"
)

// newIncidentSource is the fake source during an incident, as of clk's
// time: service 0 under a concentrated flood for 41 s, its backend down
// (resetting replayed SYNs) for 12 s, with two attacks before this one;
// service 1 quiet, its backend up, XDP answering.
func newIncidentSource(clk *fakeClock) *fakeSource {
	now := clk.Now()
	f := newFakeSource()
	s0 := &f.services[0]
	s0.Counters[CounterBackendReset] = 30
	s0.Counters[CounterBackendTimeout] = 2
	s0.Counters[CounterHandoffFailed] = 0
	s0.Counters[CounterPendingFull] = 0
	s0.Backend = Backend{Up: false, Reason: "resets", Since: now.Add(-12 * time.Second), MSS: 1460, WindowScale: 7, SACK: true, Options: "learned"}
	s0.Attack = &Attack{
		Started: now.Add(-41 * time.Second), Reason: "syn_rate", PeakSYNRate: 30112.4,
		SYNs: 1012345, HandedOff: 0, Completion: 0.0004,
		TopSources: []SourceCount{{Prefix: hotPrefix, SYNs: 1009920, Completed: 0}, {Prefix: realPrefix, SYNs: 412, Completed: 410}},
		Spread:     0.002,
		TopShare:   0.998,
	}
	s0.AttacksStarted = 3
	s1 := &f.services[1]
	s1.Backend = Backend{Up: true, Reason: "probe", Since: now.Add(-time.Hour), MSS: 1440, WindowScale: -1, SACK: false, Options: "fixed"}
	f.ended = map[string][]Attack{
		s0.Service: {
			{Started: now.Add(-10 * time.Minute), Ended: now.Add(-9 * time.Minute), Reason: "half_open", PeakSYNRate: 5000, SYNs: 200000, HandedOff: 120, Completion: 0.0006,
				TopSources: []SourceCount{{Prefix: "203.0.113.0/24", SYNs: 150, Completed: 120}}, Spread: 0.97},
			{Started: now.Add(-2 * time.Hour), Ended: now.Add(-2*time.Hour + 90*time.Second), Reason: "syn_rate", PeakSYNRate: 2500, SYNs: 100000, Completion: 0.01},
		},
	}
	f.xdp = map[string]uint64{"tx": 1000000, "drop": 12, "pass": 3000}
	return f
}
