package engine

import (
	"net/netip"
	"time"

	"github.com/synguard/synguard/cookies"
)

// ReplayedFlow is a flow whose SYN the fast path replayed to the backend
// itself (its tc program, from the client's pure cookie ACK), and, when
// Answered, whose backend it ACKed and whose client's window it opened:
// docs/architecture.md, "Handshakes completed at tc". The engine takes
// over the rest: the SYN's retries and give-up, and once answered the
// conntrack entry.
type ReplayedFlow struct {
	Service        int
	Client, Server netip.AddrPort
	Cookie         cookies.Cookie
	ClientISN      uint32
	ClientWindow   uint16 // the window field of the client's ACK
	Answered       bool
	ServerISN      uint32              // Answered
	ServerScale    cookies.WindowScale // Answered: the SYN-ACK's, NoWindowScale for none
}

// Replayer is the fast path that replays SYNs and completes handshakes
// (xdp.Program, through the gateway). Forget deletes its record of the
// flow with cookie once the flow's entry exists, and reports the FINs and
// RST it passed on while it translated the flow. Pending returns its
// record of a flow whose SYN it replayed and whose backend it has not
// ACKed (Answered false; Service unset). Endings reports what the record
// of the flow with cookie noted so far, leaving the record; ForgetEnded
// deletes that record once it says the flow is over (both FINs, or an
// RST). None of them touches the record of another connection on the
// same ports: they report it as Replaced.
type Replayer interface {
	Forget(client, server netip.AddrPort, cookie cookies.Cookie) (FastEndings, error)
	Pending(client, server netip.AddrPort) (ReplayedFlow, bool)
	Endings(client, server netip.AddrPort, cookie cookies.Cookie) FastEndings
	ForgetEnded(client, server netip.AddrPort, cookie cookies.Cookie)
}

// FastEndings are how the fast path's record says a flow ended while the
// fast path translated it. Replaced says the record is another
// connection's on the same ports: the flow is over, its client having
// reused them. Gone says there is no record at all.
type FastEndings struct {
	ClientFIN, ServerFIN, RST, Replaced, Gone bool
}

// endings are fe as the engine keeps them.
func (fe FastEndings) endings() endings {
	var m endings
	if fe.ClientFIN || fe.Replaced {
		m |= clientFIN
	}
	if fe.ServerFIN || fe.Replaced {
		m |= backendFIN
	}
	if fe.RST {
		m |= reset
	}
	return m
}

// FastPathReplayed records what the fast path did with flow r, and makes
// the entry of an answered one. It is called from one goroutine, the
// reader of the fast path's events.
func (e *Engine) FastPathReplayed(r ReplayedFlow) {
	k := flowKey{client: r.Client, server: r.Server}
	if !r.Answered && e.endedBeforeItsEvent(k, r.Cookie) {
		return
	}
	answered, started := e.replayed(e.replayOut.c, r)
	if started != nil {
		e.fastStarted = append(e.fastStarted, k)
		if len(e.fastStarted) == maxFastStarted {
			e.FastPathCaughtUp()
		}
	}
	if answered && r.Answered {
		// Made here, at once: the flow's first segments are already
		// passing, translated by the fast path, and the entry should
		// see the rest (its end above all: conntrackd copies it to a
		// standby, and an entry that saw no FIN is deleted,
		// EndedUnseen). Unless there is no rest: the events come a
		// moment after the handshake, and a short flow may be over, or
		// closing.
		if !e.endedAtFastPath(e.replayOut.c, k, r.Cookie) {
			e.handoff(e.replayOut, k)
		}
		e.replayOut.flush()
	}
}

// maxFastStarted bounds the flows whose deadline waits for the reader of
// the fast path's events to catch up.
const maxFastStarted = 256

// FastPathCaughtUp sets the flow timer for the flows FastPathReplayed
// started since its last call: for the first retry of those still waiting
// for their backend, for the end of the linger of those answered. The
// reader calls it whenever it has read every event there is. The
// backend's answer mostly comes in the same read as the event of the
// replayed SYN, and a timer set for that flow's retry at once would wake
// the engine for nothing, once per handshake on a gateway with a few of
// them a second.
func (e *Engine) FastPathCaughtUp() {
	if len(e.fastStarted) == 0 {
		return
	}
	retrySlack, forgetSlack := e.retrySlack(), e.forgetSlack()
	var by time.Time
	e.mu.Lock()
	for _, k := range e.fastStarted {
		f := e.pending.get(k)
		if f == nil {
			continue
		}
		if t := f.timerBy(retrySlack, forgetSlack); by.IsZero() || t.Before(by) {
			by = t
		}
	}
	e.mu.Unlock()
	e.fastStarted = e.fastStarted[:0]
	if !by.IsZero() {
		e.wantBy(by)
	}
}

// endedBeforeItsEvent says the queue took flow k over and ended it
// before the engine read the event of its replayed SYN: the backend's
// RST came first (adoptReplayed), and the fast path's record was
// forgotten with the flow. Its event must not start it again.
func (e *Engine) endedBeforeItsEvent(k flowKey, cookie cookies.Cookie) bool {
	if e.cfg.Replayer == nil {
		return false
	}
	e.mu.Lock()
	known := e.pending.get(k) != nil
	e.mu.Unlock()
	return !known && e.cfg.Replayer.Endings(k.client, k.server, cookie).Gone
}

// endedAtFastPath finishes flow k, answered, without an entry when the
// fast path's record says the flow ended or began to (a FIN either way,
// or an RST): an entry would miss that, and either be deleted at once or
// hold a state the flow has left, which a client reusing the ports then
// meets. The record stays to carry the flow to its end and translate its
// last segments (a final ACK, a FIN sent again); it is forgotten once the
// flow is over, after the engine's linger (Tick). It reports whether it
// did.
func (e *Engine) endedAtFastPath(c *counterSet, k flowKey, cookie cookies.Cookie) bool {
	if e.cfg.Replayer == nil {
		return false
	}
	ended := e.cfg.Replayer.Endings(k.client, k.server, cookie).endings()
	if ended == 0 {
		return false
	}
	now := e.cfg.Now()
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil || f.state != stateHandingOff || f.cookie != cookie {
		e.mu.Unlock()
		return false
	}
	f.state = stateDone
	f.expires = now.Add(e.cfg.Linger)
	f.missed |= ended
	f.endedAtFastPath = true
	svc, timing := f.svc, HandoffTiming{Backend: f.answered.Sub(f.validated), Wait: now.Sub(f.answered), NoEntry: true}
	e.mu.Unlock()
	c.add(svc, EndedUnseen)
	c.add(svc, HandedOff)
	e.events.HandedOff(svc, timing)
	return true
}

// adoptReplayed takes over flow k of service svc, whose backend segment
// met no record here, from the fast path's record, if it replayed the
// flow's SYN and its event has not been read yet: the backend may answer
// (an RST, or a SYN-ACK the fast path left to the queue) before it is.
// It reports whether it did.
func (e *Engine) adoptReplayed(c *counterSet, svc int, k flowKey) bool {
	if e.cfg.Replayer == nil {
		return false
	}
	r, ok := e.cfg.Replayer.Pending(k.client, k.server)
	if !ok {
		return false
	}
	r.Service, r.Answered = svc, false
	if _, started := e.replayed(c, r); started != nil {
		e.pendingAdded(started) // its retry, as a worker's flow's
	}
	return true
}

// replayed records flow r, counting on c, and reports whether the flow
// is now answered by the fast path and waits for its entry. It returns
// the flow when it started it: the caller sets the flow timer for it.
func (e *Engine) replayed(c *counterSet, r ReplayedFlow) (answered bool, started *pendingFlow) {
	t := e.table.Load()
	if r.Service < 0 || r.Service >= len(t.all) {
		return false, nil
	}
	k := flowKey{client: r.Client, server: r.Server}
	opts, ok := e.cfg.Cookies.Validate(r.Client, r.Server, r.ClientISN, r.Cookie)
	if !ok {
		return false, nil // the key turned over since: the client's next segment takes the queue
	}
	now := e.cfg.Now()
	e.mu.Lock()
	f := e.pending.get(k)
	if f != nil && (f.cookie != r.Cookie || f.clientISN != r.ClientISN) {
		if !f.acked {
			e.mu.Unlock()
			return false, nil // a flow of the ports' own, in the queue's hands
		}
		e.pending.remove(k) // the record of an earlier flow on the ports
		f = nil
	}
	if f == nil {
		f = e.newReplaying(r.Service, r.ClientISN, r.Cookie, opts, r.ClientWindow, now)
		if !e.pending.add(k, f) {
			e.mu.Unlock()
			c.add(r.Service, PendingFull)
			return false, nil
		}
		started = f
		c.add(r.Service, CookieValid)
		c.add(r.Service, BackendSYNSent)
		t.all[r.Service].bySource.Complete(r.Client.Addr())
	}
	f.replayed = true
	answered = r.Answered && f.state == stateReplaying
	if answered {
		f.state = stateHandingOff
		f.serverISN = r.ServerISN
		f.serverScale = r.ServerScale
		f.answered = now
		f.expires = now.Add(e.cfg.Linger)
		f.acked = true
		f.completed = true
	}
	e.mu.Unlock()
	return answered, started
}

// forgetReplayed deletes the fast path's record of flow k, whose entry
// exists now, and returns the endings the fast path passed on.
func (e *Engine) forgetReplayed(k flowKey, fl *pendingFlow) endings {
	if !fl.replayed || e.cfg.Replayer == nil {
		return 0
	}
	fe, err := e.cfg.Replayer.Forget(k.client, k.server, fl.cookie)
	if err != nil {
		return 0 // the LRU map forgets it in time; conntrack carries the flow
	}
	return fe.endings()
}
