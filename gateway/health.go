package gateway

import (
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// downProbeEvery is how often a backend that is down is probed, so its
// return is seen within seconds.
const downProbeEvery = 5 * time.Second

// health judges each service's backend from the latest evidence: a probe
// that connected or failed, and, once a second, what became of the SYNs
// the engine replayed to it (handed off, reset, or unanswered). A change
// is logged as backend_up or backend_down.
type health struct {
	log zerolog.Logger

	mu    sync.Mutex
	state map[int]*backendState // by service index
}

type backendState struct {
	known  bool // any evidence yet
	up     bool
	reason string
	since  time.Time
	// The engine's counts at the last judgement.
	handedOff, resets, timeouts uint64
	seen                        bool // counts taken at least once
}

func newHealth(log zerolog.Logger) *health {
	return &health{log: log, state: make(map[int]*backendState)}
}

// get returns service svc's state, made up when first asked for.
func (h *health) get(svc int, now time.Time) *backendState {
	s, ok := h.state[svc]
	if !ok {
		s = &backendState{reason: "no evidence yet"}
		h.state[svc] = s
	}
	return s
}

// set records evidence; a change of up or down is logged.
func (h *health) set(svc engine.Service, up bool, reason string, now time.Time) {
	s := h.get(svc.Index, now)
	if s.known && s.up == up {
		s.reason = reason
		return
	}
	first := !s.known
	s.known, s.up, s.reason, s.since = true, up, reason, now
	switch {
	case first && up:
		// A healthy backend at start is not news.
	case up:
		h.log.Info().Str(telemetry.FieldEvent, telemetry.EventBackendUp).Str("service", svc.Addr.String()).
			Str("reason", reason).Msg("backend up")
	default:
		h.log.Warn().Str(telemetry.FieldEvent, telemetry.EventBackendDown).Str("service", svc.Addr.String()).
			Str("reason", reason).Msg("backend down: hand-offs to it fail")
	}
}

// probed records a probe's outcome.
func (h *health) probed(svc engine.Service, err error, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.set(svc, false, "probe: "+err.Error(), now)
		return
	}
	h.set(svc, true, "probe", now)
}

// judge looks at what became of the SYNs replayed to each backend since
// the last call.
func (h *health) judge(eng *engine.Engine, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, svc := range eng.Services() {
		h.judgeCounts(svc, eng.Stats(svc.Index), now)
	}
}

// judgeCounts judges one service from its counters. A hand-off since the
// last look shows the backend up; otherwise resets, or replayed SYNs
// given up on, show it down.
func (h *health) judgeCounts(svc engine.Service, st engine.Stats, now time.Time) {
	s := h.get(svc.Index, now)
	handed, resets, timeouts := st.Get(engine.HandedOff), st.Get(engine.BackendReset), st.Get(engine.BackendTimeout)
	if s.seen {
		switch {
		case handed > s.handedOff:
			h.set(svc, true, "handed_off", now)
		case resets > s.resets:
			h.set(svc, false, "resets", now)
		case timeouts > s.timeouts:
			h.set(svc, false, "silence", now)
		}
	}
	s.handedOff, s.resets, s.timeouts, s.seen = handed, resets, timeouts, true
}

// anyDown reports whether a backend is down.
func (h *health) anyDown() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.state {
		if s.known && !s.up {
			return true
		}
	}
	return false
}

// view is service svc's backend state for telemetry: down with a zero
// since while there is no evidence either way.
func (h *health) view(svc int) (up bool, reason string, since time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.get(svc, time.Now())
	return s.up, s.reason, s.since
}
