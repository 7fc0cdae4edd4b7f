package engine

import (
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// This file is the backend's side of the handshake: its answer to a
// replayed SYN, a SYN-ACK that starts the hand-off or an RST that ends
// the flow.

// fromBackend decides the fate of a segment b sent by service svc.
func (w *Worker) fromBackend(svc int, b []byte) nf.Verdict {
	p := &w.pkt
	k := flowKey{client: p.Destination(), server: p.Source()}
	e := w.e
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil {
		e.mu.Unlock()
		// Not a flow of ours, unless the fast path replayed its SYN and
		// the engine has yet to read so: otherwise traffic conntrack
		// finds invalid for its own reasons, and passing it is what the
		// kernel would do.
		if e.adoptReplayed(w.out.c, svc, k) {
			e.mu.Lock()
			f = e.pending.get(k)
			if f == nil {
				e.mu.Unlock()
			}
		}
		if f == nil {
			w.out.c.add(svc, Unmatched)
			return nf.Accept
		}
	}
	switch {
	case p.Flags.Has(packet.SYN|packet.ACK) && p.Ack == f.clientISN+1:
		w.backendSYNACK(svc, k, f) // unlocks
		return nf.Drop
	case p.Flags.Has(packet.RST) && !f.acked:
		e.pending.remove(k)
		fl := *f
		e.mu.Unlock()
		e.dropHeld(w.out.c, &fl)
		e.forgetReplayed(k, &fl)
		cookie, isn := fl.cookie, fl.clientISN
		w.out.c.add(svc, BackendReset)
		seg := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(cookie) + 1, Ack: isn + 1, Flags: packet.RST | packet.ACK}
		w.out.send(svc, &seg, noCount)
		return nf.Drop
	}
	if !f.acked {
		// Nothing but a SYN-ACK or RST answers a SYN.
		e.mu.Unlock()
		return nf.Drop
	}
	// The engine ACKed the backend at its SYN-ACK, so it may answer the
	// request (or greet, for a server-first protocol), or end the flow,
	// before the flow's entry exists; such a segment met no entry. Do
	// what the entry does: move its seq into the cookie's sequence space.
	delta := uint32(f.cookie) - f.serverISN
	e.missedEnding(k, f, endingOf(p.Flags, backendFIN))
	e.mu.Unlock()
	packet.SetSeq(b, p.IPHeaderLen, p.Seq+delta)
	w.out.c.add(svc, TranslatedBackend)
	return nf.AcceptRewritten
}

// backendSYNACK takes the backend's answer to a replayed SYN. The first
// one is ACKed at once, with the client's early data right behind, and
// queues the flow for its hand-off (the conntrack entry, then the client's
// window update); a retransmitted one is ACKed again. It is called with
// e.mu held and releases it.
func (w *Worker) backendSYNACK(svc int, k flowKey, f *pendingFlow) {
	p := &w.pkt
	e := w.e
	switch f.state {
	case stateReplaying:
		if !w.queueHandOff(k) {
			// Hand-off backlog full: drop this SYN-ACK; the backend
			// retransmits it and the retry finds the flow still
			// replaying.
			e.mu.Unlock()
			return
		}
		f.state = stateHandingOff
		f.serverISN = p.Seq
		f.serverWindow = p.Window
		f.serverScale = cookies.NoWindowScale
		if p.Options.HasWindowScale {
			f.serverScale = cookies.WindowScale(min(p.Options.WindowScale, packet.MaxWindowScale))
		}
		f.answered = e.cfg.Now()
		f.expires = f.answered.Add(e.cfg.Linger)
		var held heldRefs
		if !f.reused {
			f.acked = true
			held = takeHeld(f)
		}
		fl := *f
		e.mu.Unlock()
		observed := observedBackend(&p.Options)
		if fl.announced.mismatch(observed) {
			w.out.c.add(svc, OptionMismatch)
			e.learnFromSYNACK(svc, observed)
		}
		if fl.acked {
			// The backend is established from this ACK on; the
			// client's segments and the backend's that meet no entry
			// until the hand-off has made it are translated here
			// (translateClient, fromBackend).
			e.ackBackend(w.out, k, &fl, held)
		}
	case stateHandingOff, stateDone:
		if !f.acked {
			// A reused flow's ACK waits for its entry.
			e.mu.Unlock()
			return
		}
		// Our ACK was lost and the backend retransmits: ACK again.
		seg := f.backendACK(k)
		e.mu.Unlock()
		w.out.send(svc, &seg, noCount)
	default:
		e.mu.Unlock()
	}
}

// ackBackend completes the backend's handshake for the client and passes
// on the client's early data, held, right behind the ACK: the backend is
// then established when the data comes, and does not answer the ACK as an
// old duplicate.
func (e *Engine) ackBackend(out *outbox, k flowKey, f *pendingFlow, held heldRefs) {
	seg := f.backendACK(k)
	out.send(f.svc, &seg, noCount)
	if held.n > 0 {
		out.flush()
		e.releaseHeld(out, out.c, f.svc, held, nf.Accept, f)
	}
}
