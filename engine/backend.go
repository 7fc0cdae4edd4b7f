package engine

import (
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// This file is the backend's side of the handshake: its answer to a
// replayed SYN, a SYN-ACK that starts the hand-off or an RST that ends
// the flow.

// fromBackend decides the fate of a segment sent by service svc.
func (w *Worker) fromBackend(svc int) nf.Verdict {
	p := &w.pkt
	k := flowKey{client: p.Destination(), server: p.Source()}
	e := w.e
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil {
		e.mu.Unlock()
		// Not a flow of ours: traffic conntrack finds invalid for its
		// own reasons. Passing it is what the kernel would do.
		w.out.c.add(svc, Unmatched)
		return nf.Accept
	}
	switch {
	case p.Flags.Has(packet.SYN|packet.ACK) && p.Ack == f.clientISN+1:
		w.backendSYNACK(svc, k, f) // unlocks
		return nf.Drop
	case p.Flags.Has(packet.RST) && f.state != stateDone:
		e.pending.remove(k)
		fl := *f
		e.mu.Unlock()
		e.dropHeld(w.out.c, &fl)
		cookie, isn := fl.cookie, fl.clientISN
		w.out.c.add(svc, BackendReset)
		seg := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(cookie) + 1, Ack: isn + 1, Flags: packet.RST | packet.ACK}
		w.out.send(svc, &seg, noCount)
		return nf.Drop
	}
	done := f.state == stateDone
	e.mu.Unlock()
	if done {
		// Past the hand-off the kernel owns the flow.
		return nf.Accept
	}
	// Anything else from the backend before the hand-off (data from a
	// server-first protocol racing our ACK) would reach the client with
	// untranslated sequence numbers: drop it, the backend retransmits.
	return nf.Drop
}

// backendSYNACK takes the backend's answer to a replayed SYN: the first
// one queues the flow for its hand-off, a retransmitted one after the
// hand-off is ACKed again. It is called with e.mu held and releases it.
func (w *Worker) backendSYNACK(svc int, k flowKey, f *pendingFlow) {
	p := &w.pkt
	e := w.e
	switch f.state {
	case stateReplaying:
		f.state = stateHandingOff
		f.serverISN = p.Seq
		f.serverWindow = p.Window
		f.serverScale = cookies.NoWindowScale
		if p.Options.HasWindowScale {
			f.serverScale = cookies.WindowScale(min(p.Options.WindowScale, packet.MaxWindowScale))
		}
		f.answered = e.cfg.Now()
		f.expires = f.answered.Add(e.cfg.Linger)
		observed := observedBackend(&p.Options)
		mismatch := f.announced.mismatch(observed)
		e.mu.Unlock()
		if mismatch {
			w.out.c.add(svc, OptionMismatch)
			e.learnFromSYNACK(svc, observed)
		}
		select {
		case e.handoffs <- k:
		default:
			// Hand-off backlog full: drop this SYN-ACK; the backend
			// retransmits it and the retry finds the flow still
			// replaying.
			e.mu.Lock()
			f.state = stateReplaying
			e.mu.Unlock()
		}
	case stateDone:
		// Our ACK was lost and the backend retransmits: ACK again.
		seg := f.backendACK(k)
		e.mu.Unlock()
		w.out.send(svc, &seg, noCount)
	default:
		e.mu.Unlock()
	}
}
