package engine

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/packet"
)

// This file is the hand-off: once a backend has answered, the flow's
// kernel conntrack entry is made, the backend ACKed and the client's
// window opened. From then on the kernel forwards the flow by itself.

// Kernel is the kernel's connection-tracking table, as the hand-off uses
// it. Its calls may block on netlink I/O, so the engine makes them only
// from its hand-off goroutines.
type Kernel interface {
	// Create makes the entry for a handed-off flow; an entry that already
	// exists yields an error matching handoff.ErrExists.
	Create(handoff.Flow) error
	// Delete removes the entry of the flow client -> server; a missing one
	// yields an error matching handoff.ErrNotFound.
	Delete(client, server netip.AddrPort) error
}

// BatchKernel is a Kernel that can also make several entries in one
// round trip. When more than one flow waits for its hand-off, a hand-off
// goroutine takes up to handoffBatch of them and creates their entries
// together: on a loaded gateway most of a create's cost is the system
// calls, which a batch shares.
type BatchKernel interface {
	Kernel
	// CreateBatch makes the entries of flows; errs[i] is what Create
	// would have returned for flows[i].
	CreateBatch(flows []handoff.Flow, errs []error)
}

// Hand-off goroutines, their backlog and their batches: two goroutines
// keep up with a flood's valid ACKs while a third would only contend for
// the socket.
const (
	handoffWorkers = 2
	handoffBacklog = 4096
	handoffBatch   = 16
)

// handoffScratch is one hand-off goroutine's batch, allocated once.
type handoffScratch struct {
	keys  [handoffBatch]flowKey
	flows [handoffBatch]pendingFlow
	hs    [handoffBatch]handoff.Flow
	errs  [handoffBatch]error
}

// runHandoffs completes handshakes whose backend answered, and deletes the
// entries of flows that ended unseen by them, until ctx is done.
func (e *Engine) runHandoffs(ctx context.Context, out *outbox) {
	s := new(handoffScratch)
	batch, _ := e.cfg.Kernel.(BatchKernel)
	for {
		select {
		case <-ctx.Done():
			return
		case k := <-e.handoffs:
			s.keys[0] = k
			n := 1
		drain:
			for batch != nil && n < len(s.keys) {
				select {
				case k := <-e.handoffs:
					s.keys[n] = k
					n++
				default:
					break drain
				}
			}
			e.handoffAll(out, s, n, batch)
			out.flush()
		case k := <-e.ended:
			e.deleteEnded(out, k)
		}
	}
}

// handoff hands off the one flow k.
func (e *Engine) handoff(out *outbox, k flowKey) {
	var s handoffScratch
	s.keys[0] = k
	e.handoffAll(out, &s, 1, nil)
}

// handoffAll creates the conntrack entries of the flows s.keys[:n], then
// opens their clients' windows. The backend was ACKed, and the client's
// early data passed on, when its SYN-ACK came (backendSYNACK); this is
// off the request's path. The window update must follow the entry: the
// client's next segments should find it, rather than cross the queue to
// be translated.
func (e *Engine) handoffAll(out *outbox, s *handoffScratch, n int, batch BatchKernel) {
	m := 0
	for _, k := range s.keys[:n] {
		e.mu.Lock()
		f := e.pending.get(k)
		if f == nil || f.state != stateHandingOff {
			e.mu.Unlock()
			continue
		}
		s.flows[m] = *f
		e.mu.Unlock()
		fl := &s.flows[m]
		s.keys[m] = k
		s.hs[m] = handoff.Flow{
			Client: k.client, Server: k.server,
			CookieISN:         uint32(fl.cookie),
			ServerISN:         fl.serverISN,
			ClientWindowScale: fl.clientScale(),
			ServerWindowScale: fl.serverScale,
			Mark:              e.cfg.HandoffMark,
			Timeout:           e.cfg.ConntrackTimeout,
		}
		m++
	}

	taken := e.cfg.Now()
	if batch != nil && m > 1 {
		batch.CreateBatch(s.hs[:m], s.errs[:m])
	} else {
		for i := range m {
			s.errs[i] = e.cfg.Kernel.Create(s.hs[i])
		}
	}
	for i := range m {
		replaced, err := e.settleEntry(s.hs[i], s.errs[i])
		e.handedOff(out, s.keys[i], &s.flows[i], taken, replaced, err)
	}
	// Keep nothing of these flows.
	clear(s.flows[:m])
	clear(s.errs[:m])
}

// handedOff finishes the hand-off of fl, whose entry creation started at
// taken and ended with err.
func (e *Engine) handedOff(out *outbox, k flowKey, fl *pendingFlow, taken time.Time, replaced bool, err error) {
	if replaced {
		out.c.add(fl.svc, EntryReplaced)
	}
	if err != nil {
		out.c.add(fl.svc, HandoffFailed)
		e.events.HandoffFailed(k.server, err)
		e.mu.Lock()
		if f := e.pending.get(k); f != nil {
			fl.held = takeHeld(f)
			e.pending.remove(k)
		}
		e.mu.Unlock()
		e.dropHeld(out.c, fl)
		resetBoth(out, k, fl)
		return
	}

	// From now on the entry carries the flow, and what met conntrack
	// before it is translated by the workers.
	created := e.cfg.Now()
	fastEnded := e.forgetReplayed(k, fl)
	var held heldRefs
	ack := false
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil {
		e.mu.Unlock()
		// The flow ended (a reset from either end) while its entry was
		// being made: take the entry back, or it would outlive the flow
		// by the established timeout. Already gone is fine.
		_ = e.cfg.Kernel.Delete(k.client, k.server)
		return
	}
	f.state = stateDone
	f.expires = created.Add(e.cfg.Linger)
	if !f.acked {
		// A reused flow: its backend is ACKed now that the old entry is
		// gone.
		f.acked, ack = true, true
		held = takeHeld(f)
	}
	f.missed |= fastEnded
	over := f.missed.over()
	e.mu.Unlock()
	if ack {
		e.ackBackend(out, k, fl, held)
	}
	if over {
		// The flow ended while its entry was being made, and the entry
		// saw none of it: take it back. The flow's last segments meet
		// its record, which lingers.
		if err := e.cfg.Kernel.Delete(k.client, k.server); err == nil {
			out.c.add(fl.svc, EndedUnseen)
		}
	} else if !fl.completed { // the fast path sent it
		update := packet.Segment{
			Src: k.server, Dst: k.client,
			Seq: uint32(fl.cookie) + 1, Ack: fl.clientISN + 1,
			Flags:  packet.ACK,
			Window: fl.clientWindowUpdate(),
		}
		out.send(fl.svc, &update, noCount)
	}
	out.c.add(fl.svc, HandedOff)
	e.events.HandedOff(fl.svc, HandoffTiming{
		Backend: fl.answered.Sub(fl.validated), Wait: taken.Sub(fl.answered), Entry: created.Sub(taken),
	})
}

// missedEnding records that the engine passed on a segment of flow f that
// ends it, end (0 if it does not), in place of its conntrack entry. Once
// the flow is over so, an entry being made is deleted as soon as it is
// (handedOff), and one made already by a hand-off goroutine
// (deleteEnded). It is called with e.mu held.
func (e *Engine) missedEnding(k flowKey, f *pendingFlow, end endings) {
	was := f.missed.over()
	f.missed |= end
	if was || !f.missed.over() || f.state != stateDone {
		return
	}
	select {
	case e.ended <- k:
	default:
		// Backlog full: this entry lives to its timeout.
	}
}

// deleteEnded deletes the entry of flow k, which ended unseen by it,
// unless a new flow on the same ports has taken k's record since (its
// hand-off replaces the entry).
func (e *Engine) deleteEnded(out *outbox, k flowKey) {
	e.mu.Lock()
	f := e.pending.get(k)
	ours := f == nil || f.state == stateDone && f.missed.over()
	svc := -1
	if f != nil {
		svc = f.svc
	}
	e.mu.Unlock()
	if !ours {
		return
	}
	if err := e.cfg.Kernel.Delete(k.client, k.server); err == nil && svc >= 0 {
		out.c.add(svc, EndedUnseen)
	}
}

// settleEntry finishes making the flow's conntrack entry, whose create
// returned err. An entry the kernel still holds for the same ports
// belongs to an earlier flow in TIME_WAIT, and its sequence adjustment to
// that flow: it is replaced. An entry that exists after a retried create
// is the hand-off's own, and no error.
func (e *Engine) settleEntry(h handoff.Flow, err error) (replaced bool, _ error) {
	if errors.Is(err, handoff.ErrExists) {
		if err = e.cfg.Kernel.Delete(h.Client, h.Server); err == nil || errors.Is(err, handoff.ErrNotFound) {
			err = e.cfg.Kernel.Create(h)
		}
		replaced = err == nil
	}
	if errors.Is(err, handoff.ErrExists) {
		err = nil
	}
	return replaced, err
}

// clientWindowUpdate is the window the client is told once the flow is
// handed off: the backend's SYN-ACK window, which is never scaled,
// expressed in the scale the client was told.
func (f *pendingFlow) clientWindowUpdate() uint16 {
	window := uint32(f.serverWindow)
	if f.announced.WindowScale != cookies.NoWindowScale && f.serverScale != cookies.NoWindowScale {
		window >>= uint(f.announced.WindowScale)
		if window == 0 && f.serverWindow != 0 {
			window = 1
		}
	}
	return uint16(window)
}

// backendACK completes the backend's handshake for the client.
func (f *pendingFlow) backendACK(k flowKey) packet.Segment {
	return packet.Segment{Src: k.client, Dst: k.server, Seq: f.clientISN + 1, Ack: f.serverISN + 1, Flags: packet.ACK, Window: f.clientWindow}
}

// resetBoth aborts a flow on both sides.
func resetBoth(out *outbox, k flowKey, f *pendingFlow) {
	toClient := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(f.cookie) + 1, Ack: f.clientISN + 1, Flags: packet.RST | packet.ACK}
	out.send(f.svc, &toClient, noCount)
	toServer := packet.Segment{Src: k.client, Dst: k.server, Seq: f.clientISN + 1, Flags: packet.RST}
	out.send(f.svc, &toServer, noCount)
}
