package engine

import (
	"net/netip"
	"time"

	"github.com/synguard/synguard/heavyhitter"
)

// An attack is a period of pressure on one service, from the sample that
// crosses a high watermark to the hold time spent below both low ones:
// the same hysteresis that switches auto mode, so an attack starts when an
// auto service turns to cookies and ends when it returns. In always and
// off modes, where the state does not switch, the same detector runs on
// its own. Flapping around the watermarks stays one attack.

// AttackStart reports a service coming under pressure.
type AttackStart struct {
	Service netip.AddrPort
	Index   int    // the service's index, for its counters
	Reason  string // ReasonHalfOpen or ReasonSYNRate
	Sample
	Sources Sources
}

// AttackEnd sums up an attack once the pressure has stayed low for the
// hold time, or when the engine stops during it.
type AttackEnd struct {
	Service netip.AddrPort
	Index   int
	// Ended says how: EndedCalm, EndedStop or EndedRemoved.
	Ended       string
	Start       time.Time
	Duration    time.Duration
	PeakSYNRate float64
	// Counts over the attack, from both paths (XDP included).
	SYNs, SYNACKs, CookieValid, HandedOff uint64
	// Completion is handshakes completed (valid cookies, and first ACKs
	// of flows let through) over SYNs received.
	Completion float64
	Sources    Sources
}

// How an attack ended (AttackEnd.Ended): its pressure stayed low for the
// hold time, the engine stopped during it, or its service was removed.
const (
	EndedCalm    = "calm"
	EndedStop    = "stop"
	EndedRemoved = "removed" // a reload removed the service
)

// Sources attributes an attack's SYNs to source prefixes.
type Sources struct {
	// Top are the heaviest source prefixes (/24 for IPv4, /48 for
	// IPv6), heaviest first.
	Top []SourceCount
	// Spread is the share of SYNs from prefixes seen only once: near 1
	// for a flood with spoofed random sources, near 0 for one from a few
	// networks.
	Spread float64
	// TopShare is the share of SYNs from the Top prefixes: near 1 when a
	// few networks send the flood, small when it comes from many (even
	// if each sends more than once, as a flood spoofed from one /15 does).
	TopShare float64
}

// SourceCount is one source prefix's SYNs and completed handshakes.
type SourceCount struct {
	Prefix    netip.Prefix
	SYNs      uint64
	Completed uint64
}

// attackTracker is one service's attack detector, run by the control
// loop.
type attackTracker struct {
	detect controller
	active bool
	reason string
	// sourcesSince is when the service's source counts were last reset.
	sourcesSince time.Time
	start        time.Time
	peak         float64
	// quiet is the service's counters at the last tick below both low
	// watermarks, base those of the attack: its totals include the ramp
	// that set it off.
	quiet, base Stats
}

// observe feeds one control tick's sample. It returns the start or the
// end of an attack when one happens at this tick.
func (a *attackTracker) observe(now time.Time, th Thresholds, s Sample, st Stats) (start, end bool, reason string) {
	a.detect.th = th
	changed, reason := a.detect.step(now, s)
	if a.active {
		a.peak = max(a.peak, s.SYNRate)
	} else if s.HalfOpen <= th.HalfOpenLow && s.SYNRate <= th.SYNRateLow {
		a.quiet = st
	}
	if !changed {
		return false, false, ""
	}
	if a.detect.cookie {
		a.active, a.start, a.peak, a.base = true, now, s.SYNRate, a.quiet
		return true, false, reason
	}
	a.active = false
	return false, true, reason
}

// summary sums up the attack that just ended at now.
func (a *attackTracker) summary(now time.Time, st Stats) AttackEnd {
	d := func(c Counter) uint64 { return st[c] - a.base[c] }
	end := AttackEnd{
		Start: a.start, Duration: now.Sub(a.start), PeakSYNRate: a.peak,
		SYNs: d(SYNReceived), SYNACKs: d(SYNACKSent), CookieValid: d(CookieValid), HandedOff: d(HandedOff),
	}
	if end.SYNs > 0 {
		end.Completion = min(float64(end.CookieValid+d(FirstACK))/float64(end.SYNs), 1)
	}
	return end
}

// trackAttack feeds service s's sample to its attack detector, reports
// an attack's start or end, and keeps the view of the attack in progress
// current.
func (e *Engine) trackAttack(s *service, now time.Time, sample Sample, st Stats) {
	a := &s.control.attack
	start, end, reason := a.observe(now, *s.thresholds.Load(), sample, st)
	switch {
	case start:
		a.reason = reason
		s.attacks.Add(1)
		e.events.AttackStarted(AttackStart{Service: s.addr, Index: s.slot, Reason: reason, Sample: sample, Sources: e.sourcesOf(s)})
	case end:
		e.endAttack(s, now, st, EndedCalm)
		s.bySource.Reset()
		a.sourcesSince = now
		return
	}
	if !a.active && now.Sub(a.sourcesSince) >= sourcesRecent {
		s.bySource.Reset()
		a.sourcesSince = now
	}
	if a.active {
		sum := a.summary(now, st)
		s.attack.Store(&AttackStatus{Start: a.start, Reason: a.reason, PeakSYNRate: sum.PeakSYNRate,
			SYNs: sum.SYNs, HandedOff: sum.HandedOff, Completion: sum.Completion, Sources: e.sourcesOf(s)})
	}
}

// endAttack reports the end of service s's attack at now, with the
// service's counters st; how is one of the Ended values.
func (e *Engine) endAttack(s *service, now time.Time, st Stats, how string) {
	a := &s.control.attack
	a.active = false
	sum := a.summary(now, st)
	sum.Service, sum.Index, sum.Ended, sum.Sources = s.addr, s.slot, how, e.sourcesOf(s)
	s.attack.Store(nil)
	e.events.AttackEnded(sum)
}

// forgetRemoved ends the attacks on services a reload has removed since
// the control loop's last tick, t being this tick's table, and starts
// their control state afresh, should they come back. It runs on the
// control loop's goroutine.
func (e *Engine) forgetRemoved(t *serviceTable, now time.Time) {
	last := e.controlled
	e.controlled = t
	if last == nil || last == t {
		return
	}
	for _, i := range last.live {
		s := last.all[i]
		if slot, live := t.index[s.addr]; live && slot == s.slot {
			continue
		}
		if s.control.attack.active {
			e.endAttack(s, now, e.Stats(s.slot), EndedRemoved)
		}
		s.control = newServiceControl(*s.thresholds.Load())
	}
}

// endAttacks ends every attack in progress at now, as the engine stops,
// so that a log with an attack's start also has its end. It runs on the
// control loop's goroutine, its last work.
func (e *Engine) endAttacks(now time.Time) {
	t := e.table.Load()
	for _, i := range t.live {
		if s := t.all[i]; s.control.attack.active {
			e.endAttack(s, now, e.Stats(i), EndedStop)
		}
	}
}

// AttackStatus is an attack in progress, as of the last control tick.
type AttackStatus struct {
	Start           time.Time
	Reason          string
	PeakSYNRate     float64
	SYNs, HandedOff uint64
	Completion      float64
	Sources         Sources
}

// AttacksStarted returns how many attacks started on service svc.
func (e *Engine) AttacksStarted(svc int) uint64 { return e.svc(svc).attacks.Load() }

// Attack returns the attack in progress on service svc, or nil.
func (e *Engine) Attack(svc int) *AttackStatus { return e.svc(svc).attack.Load() }

// SourceSampling is how sparsely SYNs are counted by source: one in
// SourceSampling, weighing as many, keeps the per-SYN cost of attribution
// small. Heavy prefixes are found all the same; the spread reads a little
// high for floods whose prefixes send only a few SYNs each.
const SourceSampling = 8

// topSources is how many source prefixes an attack names.
const topSources = 10

// sourcesRecent is how long SYN counts by source are kept outside an
// attack, so the first attribution of an attack is of recent traffic.
const sourcesRecent = time.Minute

// sourcesOf attributes service s's recent SYNs to source prefixes.
func (e *Engine) sourcesOf(s *service) Sources {
	var buf [topSources]heavyhitter.Entry
	top := s.bySource.Top(buf[:])
	sum := s.bySource.Summary()
	out := Sources{Top: make([]SourceCount, len(top)), Spread: sum.Spread}
	var inTop uint64
	for i, t := range top {
		out.Top[i] = SourceCount{Prefix: t.Prefix.Prefix(), SYNs: t.SYNs, Completed: t.Completed}
		inTop += t.Guaranteed()
	}
	if sum.SYNs > 0 {
		out.TopShare = float64(inTop) / float64(sum.SYNs)
	}
	return out
}
