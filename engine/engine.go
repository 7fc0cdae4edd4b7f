package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/synguard/synguard/cookies"
)

// Engine holds the state shared by all workers: the services, the pending
// table and the hand-off queue.
type Engine struct {
	cfg Config
	// replayOut is FastPathReplayed's (called from one goroutine): its
	// counters, and the hand-off's packets (resets of a failed one).
	replayOut *outbox
	// fastStarted is the flows FastPathReplayed started whose deadline
	// waits for FastPathCaughtUp (the same goroutine's).
	fastStarted []flowKey
	events      Events
	// table is the services in force; Reconfigure replaces it.
	table       atomic.Pointer[serviceTable]
	reconfigure sync.Mutex

	mu      sync.Mutex
	pending *pendingTable
	held    holdPool // early data's copies

	handoffs chan flowKey
	// ended is flows over before their entry saw them end, whose entry
	// a hand-off goroutine deletes (missedEnding).
	ended chan flowKey
	// flowTimer wakes the timer loop for the flows' next deadline; due is
	// when it fires (Unix ns; 0 once fired, or never set). It is only
	// moved earlier (wakeBy), under dueMu. wanted is the first deadline a
	// worker left for the control loop's next step to set the timer for
	// (Unix ns; 0 for none).
	flowTimer *time.Timer
	dueMu     sync.Mutex
	due       atomic.Int64
	wanted    atomic.Int64

	countersMu sync.Mutex
	counters   []*counterSet

	// The timer loop's outbox (Tick runs on Run's goroutine, or a test's).
	timers *outbox
	// lastControl is the control loop's last run, in Unix nanoseconds.
	lastControl atomic.Int64
	// controlPeriod is how long the control loop waits after its last
	// step: controlTick, or QuietControlTick while every service is quiet
	// (isQuiet). quietSYNs counts the SYNs seen since the last step while
	// quiet; at quietBudget a worker nudges the loop, which steps at once
	// and goes back to controlTick.
	controlPeriod atomic.Int64
	quietSYNs     atomic.Uint64
	quietBudget   atomic.Uint64
	nudge         chan struct{}
	// controlled is the service table the control loop last sampled;
	// only its goroutine touches it (forgetRemoved).
	controlled *serviceTable
	// lastSendFailure is when a failed send was last reported, in Unix
	// nanoseconds; 0 for never.
	lastSendFailure atomic.Int64
}

// New validates cfg and builds an Engine. Call Run to start its background
// work and NewWorker for each packet source.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	e := &Engine{
		cfg:       cfg,
		events:    cfg.Events,
		pending:   newPendingTable(cfg.MaxPending),
		held:      holdPool{max: cfg.MaxHeld},
		handoffs:  make(chan flowKey, handoffBacklog),
		ended:     make(chan flowKey, handoffBacklog),
		flowTimer: time.NewTimer(time.Hour),
		nudge:     make(chan struct{}, 1),
	}
	e.controlPeriod.Store(int64(controlTick))
	e.flowTimer.Stop()
	if e.events == nil {
		e.events = NopEvents{}
	}
	e.table.Store(&serviceTable{})
	if err := e.Reconfigure(cfg.Services); err != nil {
		return nil, err
	}
	<-e.nudge // Reconfigure's, for a running control loop
	e.timers = e.newOutbox(cfg.NewBatch())
	if cfg.Replayer != nil {
		e.replayOut = e.newOutbox(cfg.NewBatch())
		e.fastStarted = make([]flowKey, 0, maxFastStarted)
	}
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
func (e *Engine) ServiceState(svc int) State { return State(e.svc(svc).state.Load()) }

// ServiceMode returns service svc's configured mode.
func (e *Engine) ServiceMode(svc int) Mode { return Mode(e.svc(svc).mode.Load()) }

// HalfOpen returns service svc's half-open count at the last control tick.
func (e *Engine) HalfOpen(svc int) int { return int(e.svc(svc).halfOpenN.Load()) }

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
	s := newCounterSet(MaxServices)
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
	return unpackBackend(e.svc(svc).backend.Load())
}

// BackendFixed reports whether service svc's backend options are set by
// the operator, so there is nothing to learn.
func (e *Engine) BackendFixed(svc int) bool { return e.svc(svc).fixed.Load() }

// LearnBackend records options observed for service svc (from a probe
// connection or a backend SYN-ACK). An operator override wins.
func (e *Engine) LearnBackend(svc int, opts BackendOptions, source string) {
	// Serialised with Reconfigure, which may fix the options meanwhile.
	e.reconfigure.Lock()
	defer e.reconfigure.Unlock()
	s := e.svc(svc)
	if s.fixed.Load() {
		return
	}
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
