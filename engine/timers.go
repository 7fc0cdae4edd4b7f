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

// runTimers runs the flow timers and the control loop until ctx is done.
// A flow's deadlines (its replayed SYN's next retry, the end of its
// record) are met within a slack, and the loop sleeps until the first
// deadline's slack runs out, then handles every deadline passed: one
// wake-up for many flows. An idle gateway wakes for the control loop
// alone, a busy one a few times a second more; on a quiet machine each
// wake-up costs more CPU than the work it does.
func (e *Engine) runTimers(ctx context.Context) {
	defer e.flowTimer.Stop()
	ctl := time.NewTicker(controlTick)
	defer ctl.Stop()
	for {
		select {
		case <-ctx.Done():
			e.endAttacks(e.cfg.Now())
			return
		case <-e.flowTimer.C:
			e.due.Store(0)
			e.Tick()
		case <-ctl.C:
			e.controlStep(e.cfg.Now())
		}
	}
}

// controlStep is the control loop's work at each tick: sample and switch
// the services, the caller's AfterControl, and the flow timer for the
// deadlines workers left to it (wantBy).
func (e *Engine) controlStep(now time.Time) {
	e.control(now)
	if e.cfg.AfterControl != nil {
		e.cfg.AfterControl(now)
	}
	if ns := e.wanted.Swap(0); ns != 0 {
		e.wakeBy(time.Unix(0, ns))
	}
}

// retrySlack is how late a retry may be: a fifth of the first retry's
// wait, at least 10 ms. forgetSlack is how late a record may be forgotten,
// which only keeps it a little longer: a tenth of its linger time.
func (e *Engine) retrySlack() time.Duration {
	return max(e.cfg.RetryInitial/5, 10*time.Millisecond)
}

func (e *Engine) forgetSlack() time.Duration {
	return max(e.cfg.Linger/10, e.retrySlack())
}

// pendingAdded has the timer loop wake in time for flow f's first retry,
// after f was added.
func (e *Engine) pendingAdded(f *pendingFlow) {
	e.wantBy(f.nextRetry.Add(e.retrySlack()))
}

// wantBy makes sure the flow timer fires by t, from a worker. A timer
// already due by then is left alone. A deadline beyond the control loop's
// next step is left to that step (wanted): moving a timer earlier wakes
// a second thread to wait for it, a system call and a context switch on
// the handshake's path, for a retry a quarter of a second away. Before
// the control loop's first step, or for a deadline that close, the timer
// is moved at once.
func (e *Engine) wantBy(t time.Time) {
	ns := t.UnixNano()
	if due := e.due.Load(); due != 0 && due <= ns {
		return
	}
	// Two periods, so that a late tick still comes in time.
	if last := e.lastControl.Load(); last == 0 || ns < last+int64(2*controlTick) {
		e.wakeBy(t)
		return
	}
	for {
		w := e.wanted.Load()
		if w != 0 && w <= ns || e.wanted.CompareAndSwap(w, ns) {
			return
		}
	}
}

// wakeBy moves the flow timer to t if it would fire later, or not at all.
func (e *Engine) wakeBy(t time.Time) {
	ns := t.UnixNano()
	if due := e.due.Load(); due != 0 && due <= ns {
		return
	}
	e.dueMu.Lock()
	defer e.dueMu.Unlock()
	if due := e.due.Load(); due != 0 && due <= ns {
		return
	}
	e.due.Store(ns)
	e.flowTimer.Reset(max(t.Sub(e.cfg.Now()), 0))
}

// Tick resends replayed SYNs to silent backends, gives up on those that
// stay silent, and forgets handed-off flows past their linger time, then
// sets the flow timer for the next deadline. Run calls it when the timer
// fires; tests call it with a synthetic clock.
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
	// next is the first deadline's end of slack; zero while none.
	var next time.Time
	nextBy := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	retrySlack, forgetSlack := e.retrySlack(), e.forgetSlack()
	e.mu.Lock()
	for k, f := range e.pending.flows {
		switch f.state {
		case stateReplaying:
			if now.Before(f.nextRetry) {
				nextBy(f.nextRetry.Add(retrySlack))
				continue
			}
			if f.retries >= e.cfg.SYNRetries {
				e.pending.remove(k)
				actions = append(actions, action{k: k, f: *f, forgot: true, timeout: true})
				continue
			}
			f.retries++
			f.nextRetry = now.Add(e.cfg.RetryInitial << f.retries)
			nextBy(f.nextRetry.Add(retrySlack))
			actions = append(actions, action{k: k, f: *f})
		case stateHandingOff, stateDone:
			if !now.After(f.expires) {
				nextBy(f.expires.Add(forgetSlack))
				continue
			}
			e.pending.remove(k)
			if f.held.n > 0 {
				actions = append(actions, action{k: k, f: *f, forgot: true})
			}
		}
	}
	e.mu.Unlock()
	if !next.IsZero() {
		e.wakeBy(next)
	}
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
	e.forgetRemoved(t, now)
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
