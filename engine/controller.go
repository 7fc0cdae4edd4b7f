package engine

import (
	"errors"
	"fmt"
	"time"
)

// Thresholds drive the auto mode of every service. A service switches to
// cookies when its half-open count or its SYN rate reaches the high
// watermark, and back to passthrough once both have stayed at or below the
// low watermarks for Hold.
type Thresholds struct {
	HalfOpenHigh, HalfOpenLow int
	SYNRateHigh, SYNRateLow   float64 // SYNs per second
	Hold                      time.Duration
	// HandshakeTimeout is the age after which a SYN let through no longer
	// counts as half-open.
	HandshakeTimeout time.Duration
}

// Default thresholds. A Linux backend's SYN queue holds as many requests
// as its listen backlog (capped by net.core.somaxconn, 4096 by default;
// nginx asks for 511, Go for somaxconn): past that it drops SYNs or falls
// back to its own cookies. 128 half-open flows is a quarter of nginx's
// backlog, so synguard takes over well before the backend suffers, and a
// busy but healthy service (handshakes complete within a round trip) stays
// far below it. The SYN-rate watermark catches a flood faster than the
// half-open count can build up; 2000 new connections per second per
// service is more than most services see and cheap for the kernel to pass.
var DefaultThresholds = Thresholds{
	HalfOpenHigh:     128,
	HalfOpenLow:      32,
	SYNRateHigh:      2000,
	SYNRateLow:       500,
	Hold:             10 * time.Second,
	HandshakeTimeout: 5 * time.Second,
}

// Validate reports the first inconsistency in t, naming the watermarks.
func (t Thresholds) Validate() error {
	switch {
	case t.HalfOpenHigh < 1 || t.HalfOpenLow < 0 || t.HalfOpenLow >= t.HalfOpenHigh:
		return fmt.Errorf("half-open watermarks %d/%d: want 0 <= low < high", t.HalfOpenLow, t.HalfOpenHigh)
	case t.HalfOpenHigh > DefaultHalfOpenSlots/4:
		return fmt.Errorf("half-open high watermark %d: at most %d", t.HalfOpenHigh, DefaultHalfOpenSlots/4)
	case t.SYNRateHigh <= 0 || t.SYNRateLow < 0 || t.SYNRateLow >= t.SYNRateHigh:
		return fmt.Errorf("SYN rate watermarks %.0f/%.0f: want 0 <= low < high", t.SYNRateLow, t.SYNRateHigh)
	case t.Hold < 0:
		return errors.New("negative hold time")
	case t.HandshakeTimeout < halfOpenTick:
		return fmt.Errorf("handshake timeout %s: at least %s", t.HandshakeTimeout, halfOpenTick)
	}
	return nil
}

// Sample is what the controller sees of a service at one tick.
type Sample struct {
	HalfOpen int
	SYNRate  float64 // over the last second
	// Completion is the share of SYNs let through in the last second whose
	// handshake completed; 1 when none were let through.
	Completion float64
}

// Reasons for a mode change.
const (
	ReasonHalfOpen = "half_open"
	ReasonSYNRate  = "syn_rate"
	ReasonCalm     = "calm"
)

// controller decides one service's mode from samples. It is pure: time
// comes in with each sample, so tests drive it on a synthetic clock.
type controller struct {
	th        Thresholds
	cookie    bool
	calmSince time.Time
}

// step feeds one sample and reports whether the mode changed, and why.
func (c *controller) step(now time.Time, s Sample) (changed bool, reason string) {
	if !c.cookie {
		switch {
		case s.HalfOpen >= c.th.HalfOpenHigh:
			reason = ReasonHalfOpen
		case s.SYNRate >= c.th.SYNRateHigh:
			reason = ReasonSYNRate
		default:
			return false, ""
		}
		c.cookie, c.calmSince = true, time.Time{}
		return true, reason
	}
	if s.HalfOpen > c.th.HalfOpenLow || s.SYNRate > c.th.SYNRateLow {
		c.calmSince = time.Time{}
		return false, ""
	}
	if c.calmSince.IsZero() {
		c.calmSince = now
	}
	if now.Sub(c.calmSince) < c.th.Hold {
		return false, ""
	}
	c.cookie, c.calmSince = false, time.Time{}
	return true, ReasonCalm
}

// rateWindow turns a monotonic counter sampled at each control step into
// a rate over the last controlWindow: the newest samples that together
// span no more than that (with half a tick's leeway for a late step), and
// at least the newest one, which after a quiet step spans a whole
// QuietControlTick.
type rateWindow struct {
	deltas []uint64
	starts []time.Time // when each sample's interval began: the previous sample
	next   int
	last   uint64
	lastAt time.Time
	primed bool
}

// newRateWindow keeps the last n samples: enough for controlWindow at
// the fast period.
func newRateWindow(n int) *rateWindow {
	return &rateWindow{deltas: make([]uint64, n), starts: make([]time.Time, n)}
}

// add records the counter's value at now and returns the events per
// second over the window, and the events in it.
func (w *rateWindow) add(now time.Time, total uint64) (perSecond float64, events uint64) {
	if !w.primed {
		w.last, w.lastAt, w.primed = total, now, true
		return 0, 0
	}
	w.deltas[w.next] = total - w.last
	w.starts[w.next] = w.lastAt
	w.last, w.lastAt = total, now
	n := len(w.deltas)
	oldest := now
	for i := range n {
		j := (w.next - i + n) % n
		if w.starts[j].IsZero() || i > 0 && now.Sub(w.starts[j]) > controlWindow+controlTick/2 {
			break
		}
		events += w.deltas[j]
		oldest = w.starts[j]
	}
	w.next = (w.next + 1) % n
	span := now.Sub(oldest)
	if span <= 0 {
		return 0, events
	}
	return float64(events) / span.Seconds(), events
}
