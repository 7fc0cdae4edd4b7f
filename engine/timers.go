package engine

import (
	"context"
	"math"
	"time"
)

// This file is the engine's clock work: the timers that retry silent
// backends and forget old flows, and the control loop that switches
// services between passthrough and cookie mode.

// Control loop timing. The loop samples every controlTick, and rates are
// taken over the last controlWindow, so a flood is noticed within a
// second. While every service is quiet (no attack, SYN rate and half-open
// count at or below their low watermarks) it waits QuietControlTick
// instead, since on a quiet machine each wake-up costs more CPU than the
// work it does; SYNs coming faster than the lowest low watermark allows
// wake it at once (sawSYNs).
const (
	controlTick   = 100 * time.Millisecond
	controlWindow = time.Second
	// QuietControlTick is the longest the control loop waits between two
	// steps: the engine's heartbeat (LastControl) is no older than this
	// and the step's own time.
	QuietControlTick = time.Second
	// rateSamples is how many samples span controlWindow at controlTick.
	rateSamples = int(controlWindow / controlTick)
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
	ctl := time.NewTimer(controlTick)
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
			ctl.Reset(e.controlStep(e.cfg.Now()))
		case <-e.nudge:
			ctl.Reset(e.controlStep(e.cfg.Now()))
		}
	}
}

// controlStep is the control loop's work at each step: sample and switch
// the services, the caller's AfterControl, and the flow timer for the
// deadlines workers left to it (wantBy). It returns how long to wait
// until the next step.
func (e *Engine) controlStep(now time.Time) time.Duration {
	quiet := e.control(now)
	if e.cfg.AfterControl != nil {
		e.cfg.AfterControl(now)
	}
	period := controlTick
	if quiet {
		period = QuietControlTick
	}
	// The count first, so SYNs of this quiet period are not lost to the
	// reset. A worker that read the old period checks it again after
	// leaving its deadline to this step (wantBy).
	e.quietSYNs.Store(0)
	e.controlPeriod.Store(int64(period))
	if ns := e.wanted.Swap(0); ns != 0 {
		e.wakeBy(time.Unix(0, ns))
	}
	return period
}

// sawSYNs notes n SYNs (seen by a worker, or sampled by the fast path)
// while the control loop is quiet, and wakes it once they pass what the
// quiet step allows, so that a flood is noticed within a fraction of a
// second rather than at the next quiet step. Outside quiet periods it is
// one atomic load.
func (e *Engine) sawSYNs(n uint64) {
	if !e.isQuiet() {
		return
	}
	budget := e.quietBudget.Load()
	if seen := e.quietSYNs.Add(n); seen >= budget && seen-n < budget {
		e.wakeControl()
	}
}

// isQuiet reports whether the control loop waits QuietControlTick.
func (e *Engine) isQuiet() bool {
	return e.controlPeriod.Load() == int64(QuietControlTick)
}

// wakeControl has the control loop step now.
func (e *Engine) wakeControl() {
	select {
	case e.nudge <- struct{}{}:
	default:
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

// timerBy is when the flow timer must fire for flow f, given the slacks:
// its next retry's end of slack while it waits for its backend, its
// linger's once answered.
func (f *pendingFlow) timerBy(retrySlack, forgetSlack time.Duration) time.Time {
	if f.state == stateReplaying {
		return f.nextRetry.Add(retrySlack)
	}
	return f.expires.Add(forgetSlack)
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
	// Two periods, so that a late step still comes in time.
	period := e.controlPeriod.Load()
	if last := e.lastControl.Load(); last == 0 || ns < last+2*period {
		e.wakeBy(t)
		return
	}
	for {
		w := e.wanted.Load()
		if w != 0 && w <= ns {
			break
		}
		if e.wanted.CompareAndSwap(w, ns) {
			break
		}
	}
	// A step that made the period longer may have taken wanted before
	// this deadline was in it, and the next step is then too late.
	if e.controlPeriod.Load() != period {
		e.wakeBy(t)
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
		record  bool // forget the fast path's record (endedAtFastPath)
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
				nextBy(f.timerBy(retrySlack, forgetSlack))
				continue
			}
			if f.retries >= e.cfg.SYNRetries {
				e.pending.remove(k)
				actions = append(actions, action{k: k, f: *f, forgot: true, timeout: true})
				continue
			}
			f.retries++
			f.nextRetry = now.Add(e.cfg.RetryInitial << f.retries)
			nextBy(f.timerBy(retrySlack, forgetSlack))
			actions = append(actions, action{k: k, f: *f})
		case stateHandingOff, stateDone:
			if !now.After(f.expires) {
				nextBy(f.timerBy(retrySlack, forgetSlack))
				continue
			}
			e.pending.remove(k)
			if f.held.n > 0 || f.endedAtFastPath {
				actions = append(actions, action{k: k, f: *f, forgot: true, record: f.endedAtFastPath})
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
		if a.record {
			e.cfg.Replayer.ForgetEnded(a.k.client, a.k.server, a.f.cookie)
		}
		if a.timeout {
			out.c.add(a.f.svc, BackendTimeout)
			resetBoth(out, a.k, &a.f)
			// Or a late SYN-ACK would meet the fast path's record and
			// complete the flow its client was just reset from.
			e.forgetReplayed(a.k, &a.f)
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
		syns:   newRateWindow(rateSamples),
		passed: newRateWindow(rateSamples),
		acks:   newRateWindow(rateSamples),
	}
}

// control samples every service and, in auto mode, switches states. It
// reports whether every service is quiet: no attack, and SYN rate and
// half-open count at or below their low watermarks. It also sets the SYN
// budget of a quiet period (sawSYNs): what the lowest low watermark
// allows in QuietControlTick.
func (e *Engine) control(now time.Time) (quiet bool) {
	defer e.lastControl.Store(now.UnixNano())
	t := e.table.Load()
	quiet = true
	budget := uint64(math.MaxUint64)
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
		th := &c.ctrl.th
		quiet = quiet && !c.attack.active && n <= th.HalfOpenLow && rate <= th.SYNRateLow
		budget = min(budget, uint64(max(th.SYNRateLow*QuietControlTick.Seconds(), 1)))
	}
	e.quietBudget.Store(budget)
	e.forgetRemoved(t, now)
	return quiet
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
