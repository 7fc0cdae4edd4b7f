package engine

import (
	"context"
	"time"
)

// This file is the engine's clock work: the timers that retry silent
// backends and forget old flows, and the control loop that switches
// services between passthrough and cookie mode.

// Control loop timing: a sample every controlTick, rates over
// controlWindow ticks (one second), so a flood is noticed within a second.
const (
	controlTick   = 100 * time.Millisecond
	controlWindow = 10
)

// runTimers ticks the timers and the control loop until ctx is done. The
// timers tick only while flows are pending: an idle gateway wakes for the
// control loop alone, and every wake-up costs CPU.
func (e *Engine) runTimers(ctx context.Context) {
	tick := time.NewTicker(e.tickInterval())
	defer tick.Stop()
	ticking := true
	ctl := time.NewTicker(controlTick)
	defer ctl.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			e.Tick()
			if e.Pending() == 0 {
				tick.Stop()
				ticking = false
			}
		case <-e.wakeTimers:
			if !ticking {
				tick.Reset(e.tickInterval())
				ticking = true
			}
		case <-ctl.C:
			e.control(e.cfg.Now())
		}
	}
}

// pendingAdded tells the timer loop a flow is pending, after it was added:
// a loop that saw none and stopped ticking starts again.
func (e *Engine) pendingAdded() {
	select {
	case e.wakeTimers <- struct{}{}:
	default:
	}
}

// tickInterval is a fifth of the first retry's wait, so a retry is late
// by at most a fifth, and at least 10 ms.
func (e *Engine) tickInterval() time.Duration {
	return max(e.cfg.RetryInitial/5, 10*time.Millisecond)
}

// Tick resends replayed SYNs to silent backends, gives up on those that
// stay silent, and forgets handed-off flows past their linger time. Run
// calls it periodically; tests call it with a synthetic clock.
func (e *Engine) Tick() {
	now := e.cfg.Now()
	// What to do with a flow once the lock is released: resend its SYN,
	// or, when it is forgotten, drop the early data it holds and, if its
	// backend stayed silent, reset both ends.
	type action struct {
		k       flowKey
		f       pendingFlow
		forgot  bool
		timeout bool
	}
	var actions []action
	e.mu.Lock()
	for k, f := range e.pending.flows {
		switch f.state {
		case stateReplaying:
			if now.Before(f.nextRetry) {
				continue
			}
			if f.retries >= e.cfg.SYNRetries {
				e.pending.remove(k)
				actions = append(actions, action{k: k, f: *f, forgot: true, timeout: true})
				continue
			}
			f.retries++
			f.nextRetry = now.Add(e.cfg.RetryInitial << f.retries)
			actions = append(actions, action{k: k, f: *f})
		case stateHandingOff, stateDone:
			if now.After(f.expires) {
				e.pending.remove(k)
				if f.held.n > 0 {
					actions = append(actions, action{k: k, f: *f, forgot: true})
				}
			}
		}
	}
	e.mu.Unlock()
	out := e.timers
	for _, a := range actions {
		if !a.forgot {
			out.c.add(a.f.svc, BackendRetry)
			seg := backendSYN(a.k, &a.f)
			out.send(a.f.svc, &seg, BackendSYNSent)
			continue
		}
		e.dropHeld(out.c, &a.f)
		if a.timeout {
			out.c.add(a.f.svc, BackendTimeout)
			resetBoth(out, a.k, &a.f)
		}
	}
	out.flush()
}

// serviceControl is the control loop's state for one service.
type serviceControl struct {
	ctrl               controller
	attack             attackTracker
	syns, passed, acks *rateWindow
}

func newServiceControl(th Thresholds) serviceControl {
	return serviceControl{
		ctrl:   controller{th: th},
		syns:   newRateWindow(controlWindow),
		passed: newRateWindow(controlWindow),
		acks:   newRateWindow(controlWindow),
	}
}

// control samples every service and, in auto mode, switches states.
func (e *Engine) control(now time.Time) {
	defer e.lastControl.Store(now.UnixNano())
	t := e.table.Load()
	for _, i := range t.live {
		s := t.all[i]
		st := e.Stats(i)
		c := &s.control
		c.ctrl.th = *s.thresholds.Load()
		if cookie := State(s.state.Load()) == StateCookie; c.ctrl.cookie != cookie {
			// A reload changed the mode: the controller goes on from
			// the state the service is in.
			c.ctrl.cookie, c.ctrl.calmSince = cookie, time.Time{}
		}
		n := s.halfOpen.count(now)
		s.halfOpenN.Store(int64(n))
		rate, _ := c.syns.add(now, st.Get(SYNReceived))
		_, passed := c.passed.add(now, st.Get(SYNPassed))
		_, acks := c.acks.add(now, st.Get(FirstACK))
		sample := Sample{HalfOpen: n, SYNRate: rate, Completion: 1}
		if passed > 0 {
			sample.Completion = min(float64(acks)/float64(passed), 1)
		}
		if Mode(s.mode.Load()) == ModeAuto {
			e.switchMode(s, now, sample)
		}
		e.trackAttack(s, now, sample, st)
	}
}

// switchMode steps service s's controller and applies its decision.
func (e *Engine) switchMode(s *service, now time.Time, sample Sample) {
	c := &s.control
	changed, reason := c.ctrl.step(now, sample)
	if !changed {
		return
	}
	from := State(s.state.Load())
	to := StatePassthrough
	if c.ctrl.cookie {
		to = StateCookie
	}
	s.state.Store(uint32(to))
	e.timers.c.add(s.slot, ModeChanges)
	e.events.ModeChanged(ModeChange{Service: s.addr, From: from, To: to, Reason: reason, Sample: sample})
}
