package engine

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/synguard/synguard/cookies"
)

// Engine holds the state shared by all workers: the services, the pending
// table and the hand-off queue.
type Engine struct {
	cfg      Config
	events   Events
	services []service
	index    map[netip.AddrPort]int // service address -> index in services

	mu      sync.Mutex
	pending *pendingTable

	handoffs chan flowKey

	countersMu sync.Mutex
	counters   []*counterSet

	// The timer loop's outbox (Tick runs on Run's goroutine, or a test's).
	timers *outbox
	// lastControl is the control loop's last run, in Unix nanoseconds.
	lastControl atomic.Int64
}

// service is everything the engine keeps for one protected service.
// Workers read it with atomic loads; only the control loop writes state.
type service struct {
	addr netip.AddrPort

	// backend holds the packed BackendOptions announced to clients;
	// learned says they were learned at least once.
	backend atomic.Uint32
	learned atomic.Bool

	// state is the State workers apply to SYNs, one atomic load each.
	state atomic.Uint32
	// halfOpen counts SYNs let through; halfOpenN is its count at the
	// last control tick.
	halfOpen  *halfOpenTable
	halfOpenN atomic.Int64
	// control is the controller's own state: only Run's goroutine (or a
	// test's control call) touches it.
	control serviceControl
}

// New validates cfg and builds an Engine. Call Run to start its background
// work and NewWorker for each packet source.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	e := &Engine{
		cfg:      cfg,
		events:   cfg.Events,
		services: make([]service, len(cfg.Services)),
		index:    make(map[netip.AddrPort]int, len(cfg.Services)),
		pending:  newPendingTable(cfg.MaxPending),
		handoffs: make(chan flowKey, handoffBacklog),
	}
	if e.events == nil {
		e.events = NopEvents{}
	}
	initial := StatePassthrough
	if cfg.Mode == ModeAlways {
		initial = StateCookie
	}
	start := cfg.Now()
	for i, addr := range cfg.Services {
		s := &e.services[i]
		s.addr = addr
		opts := DefaultBackendOptions(addr.Addr().Is6())
		if cfg.BackendOverride != nil {
			opts = *cfg.BackendOverride
		}
		s.backend.Store(packBackend(opts))
		s.state.Store(uint32(initial))
		s.halfOpen = newHalfOpenTable(DefaultHalfOpenSlots, cfg.Thresholds.HandshakeTimeout, start)
		s.control = newServiceControl(cfg.Thresholds)
		e.index[addr] = i
	}
	e.timers = e.newOutbox(cfg.NewBatch())
	return e, nil
}

// State is what a service does with SYNs right now.
type State uint32

// States.
const (
	// StatePassthrough lets SYNs through to the backend untouched.
	StatePassthrough State = iota
	// StateCookie answers SYNs with cookies.
	StateCookie
)

// String returns the state's metric label: "cookie" or "passthrough".
func (s State) String() string {
	if s == StateCookie {
		return "cookie"
	}
	return "passthrough"
}

// ServiceState returns service svc's current state.
func (e *Engine) ServiceState(svc int) State { return State(e.services[svc].state.Load()) }

// Mode returns the configured mode.
func (e *Engine) Mode() Mode { return e.cfg.Mode }

// HalfOpen returns service svc's half-open count at the last control tick.
func (e *Engine) HalfOpen(svc int) int { return int(e.services[svc].halfOpenN.Load()) }

// Services returns the protected services, in configuration order.
func (e *Engine) Services() []netip.AddrPort {
	out := make([]netip.AddrPort, len(e.services))
	for i := range e.services {
		out[i] = e.services[i].addr
	}
	return out
}

// Stats sums the counters of service index svc over all writers; svc -1
// is packets that matched no service.
func (e *Engine) Stats(svc int) Stats {
	var out Stats
	e.countersMu.Lock()
	for _, s := range e.counters {
		for c := range out {
			out[c] += s.rows[svc+1].v[c].Load()
		}
	}
	e.countersMu.Unlock()
	// Outside the lock: the extra source may read the kernel.
	if e.cfg.Extra != nil && svc >= 0 {
		extra := e.cfg.Extra.Counts(svc)
		for c := range out {
			out[c] += extra[c]
		}
	}
	return out
}

// LastControl is when the control loop last ran: the engine's heartbeat.
// It is the zero time before the first tick.
func (e *Engine) LastControl() time.Time {
	ns := e.lastControl.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// newCounters registers a writer's counters, so Stats sums them.
func (e *Engine) newCounters() *counterSet {
	s := newCounterSet(len(e.services))
	e.countersMu.Lock()
	e.counters = append(e.counters, s)
	e.countersMu.Unlock()
	return s
}

// Pending returns how many flows wait on their backend or linger after
// their hand-off.
func (e *Engine) Pending() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pending.len()
}

// Backend returns the options announced to clients of service svc.
func (e *Engine) Backend(svc int) BackendOptions {
	return unpackBackend(e.services[svc].backend.Load())
}

// LearnBackend records options observed for service svc (from a probe
// connection or a backend SYN-ACK). An operator override wins.
func (e *Engine) LearnBackend(svc int, opts BackendOptions, source string) {
	if e.cfg.BackendOverride != nil {
		return
	}
	s := &e.services[svc]
	old := s.backend.Swap(packBackend(opts))
	first := !s.learned.Swap(true)
	if first || old != packBackend(opts) {
		e.events.BackendLearned(s.addr, opts, source)
	}
}

// Run drives the timers, the control loop and the hand-offs until ctx is
// done, and returns once all of its goroutines have stopped.
func (e *Engine) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range handoffWorkers {
		out := e.newOutbox(e.cfg.NewBatch())
		wg.Go(func() { e.runHandoffs(ctx, out) })
	}
	e.runTimers(ctx)
	wg.Wait()
	return nil
}

// packBackend packs options into 32 bits so a worker reads them with one
// atomic load: MSS | (scale+1)<<16 | sack<<24.
func packBackend(o BackendOptions) uint32 {
	v := uint32(o.MSS) | uint32(uint8(o.WindowScale+1))<<16
	if o.SACKPermitted {
		v |= 1 << 24
	}
	return v
}

func unpackBackend(v uint32) BackendOptions {
	return BackendOptions{
		MSS:           uint16(v),
		WindowScale:   cookies.WindowScale(int8(uint8(v>>16)) - 1),
		SACKPermitted: v&(1<<24) != 0,
	}
}
