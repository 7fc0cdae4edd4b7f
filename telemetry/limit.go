package telemetry

import (
	"bytes"
	"io"
	"sync"
	"time"
)

// DefaultLogBurst is how many lines of one event kind pass per second by
// default: enough for every real burst of distinct happenings (a dozen
// services changing mode at once), few enough that a flood of one kind
// costs a log pipeline nothing.
const DefaultLogBurst = 20

// maxKinds bounds the limiter's table. Event names are constants of this
// program, so the bound is never reached in practice; past it, unknown
// names share one budget.
const maxKinds = 64

// Names the limiter files lines under when they carry no event name, or
// one past the table's bound.
const (
	kindNone  = "none"
	kindOther = "other"
)

// LimitConfig bounds the log lines of each event kind.
type LimitConfig struct {
	// Burst is how many lines of one kind pass per Period; 0 means
	// DefaultLogBurst.
	Burst int
	// Period is the window Burst applies to; 0 means one second.
	Period time.Duration
	// Exempt lists kinds that are never held back, because configuration
	// bounds their volume, not traffic; nil means DefaultExempt.
	Exempt []string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultExempt are the kinds whose volume configuration bounds: the
// lifecycle, and the periodic lines (one per service per stats interval).
func DefaultExempt() []string {
	return []string{
		EventStart, EventStop, EventRulesInstalled, EventRulesRemoved,
		EventRulesRemoveFailed, EventWorkerFailed, EventStats, EventLogSuppressed,
		EventConfigReloaded, EventConfigRejected, EventAttackStart, EventAttackEnd,
	}
}

// LineLimiter is an io.Writer for zerolog that passes at most Burst lines
// of each event kind per Period and counts the lines it holds back. It
// sits in front of the real output, so it bounds every line of the
// process whichever package logs it, and a flood that makes some event
// happen per packet yields a bounded number of lines per second.
//
// It keeps the latest lines it passed (Recent), for the dashboard.
//
// It is safe for concurrent use, and serialises writes to its output so
// lines never interleave.
type LineLimiter struct {
	out    io.Writer
	burst  int
	period time.Duration
	now    func() time.Time
	exempt map[string]bool

	mu     sync.Mutex
	kinds  map[string]*kindBudget
	recent *eventRing // the latest lines passed, for Recent
}

type kindBudget struct {
	start      time.Time // start of the current window
	n          int       // lines passed in the window
	suppressed uint64    // lines held back, ever
}

// NewLineLimiter returns a limiter writing the lines it passes to out.
func NewLineLimiter(out io.Writer, cfg LimitConfig) *LineLimiter {
	l := &LineLimiter{
		out:    out,
		burst:  cfg.Burst,
		period: cfg.Period,
		now:    cfg.Now,
		exempt: make(map[string]bool),
		kinds:  make(map[string]*kindBudget),
		recent: newEventRing(),
	}
	if l.burst <= 0 {
		l.burst = DefaultLogBurst
	}
	if l.period <= 0 {
		l.period = time.Second
	}
	if l.now == nil {
		l.now = time.Now
	}
	exempt := cfg.Exempt
	if exempt == nil {
		exempt = DefaultExempt()
	}
	for _, e := range exempt {
		l.exempt[e] = true
	}
	return l
}

// Write passes or holds back one line. A held-back line still reports
// success: zerolog would otherwise complain about it on stderr.
func (l *LineLimiter) Write(p []byte) (int, error) {
	name := eventName(p)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.exempt[string(name)] {
		k := l.budget(name)
		now := l.now()
		if now.Sub(k.start) >= l.period || now.Before(k.start) {
			k.start, k.n = now, 0
		}
		if k.n >= l.burst {
			k.suppressed++
			return len(p), nil
		}
		k.n++
	}
	if string(name) != EventStats {
		l.recent.add(p)
	}
	return l.out.Write(p)
}

// budget returns the budget of the named kind, creating it on first use.
func (l *LineLimiter) budget(name []byte) *kindBudget {
	if k, ok := l.kinds[string(name)]; ok {
		return k
	}
	key := string(name)
	switch {
	case key == "":
		key = kindNone
	case len(l.kinds) >= maxKinds:
		key = kindOther
	}
	k, ok := l.kinds[key]
	if !ok {
		k = &kindBudget{}
		l.kinds[key] = k
	}
	return k
}

// Suppressed returns, per event kind seen so far, how many lines were held
// back. Kinds never held back are listed with 0, so a metric built on it
// exists before the first suppression.
func (l *LineLimiter) Suppressed() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]uint64, len(l.kinds))
	for name, k := range l.kinds {
		out[name] = k.suppressed
	}
	return out
}

// suppressedSince returns the kinds whose count grew since prev, with
// their growth, and the current counts to pass as prev next time.
func (l *LineLimiter) suppressedSince(prev map[string]uint64) (grew, now map[string]uint64) {
	now = l.Suppressed()
	for name, v := range now {
		if d := v - prev[name]; v > prev[name] {
			if grew == nil {
				grew = make(map[string]uint64)
			}
			grew[name] = d
		}
	}
	return grew, now
}

var eventKey = []byte(`"` + FieldEvent + `":"`)

// eventName finds the event name in a zerolog JSON line. A key cannot
// occur inside a string value: quotes there are escaped.
func eventName(line []byte) []byte {
	i := bytes.Index(line, eventKey)
	if i < 0 {
		return nil
	}
	rest := line[i+len(eventKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 || j > 64 {
		return nil
	}
	return rest[:j]
}
