package engine

import (
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// This file is the client's side of the handshake: its SYN (let through
// or answered with a cookie), its ACK (the cookie checked, the SYN
// replayed to the backend) and its RST.

// fromClient decides the fate of a segment sent to service s.
func (w *Worker) fromClient(s *service, b []byte, hook nf.Hook) nf.Verdict {
	p := &w.pkt
	c := w.out.c
	svc := s.slot
	isSYN := p.Flags&(packet.SYN|packet.ACK|packet.RST|packet.FIN) == packet.SYN
	switch {
	case isSYN:
		c.add(svc, SYNReceived)
		w.e.sawSYNs(1)
		if w.sampled++; w.sampled%SourceSampling == 0 {
			s.bySource.ObserveN(p.Source().Addr(), SourceSampling)
		}
		if box := s.sampler.Load(); box != nil {
			box.s.Offer(b, w.e.cfg.Now())
		}
		if lists := s.sources.Load(); lists != nil {
			switch v := lists.verdict(p.Source().Addr()); v {
			case SYNDenied:
				c.add(svc, v)
				return nf.Drop
			case SYNAllowed:
				c.add(svc, v)
				return nf.Accept
			}
		}
		if State(s.state.Load()) == StatePassthrough {
			w.passSYN(s)
			return nf.Accept
		}
		w.answerSYN(svc, len(b))
		return nf.Drop
	case hook == HookStaleEntry:
		// The flow's entry is closing. A cookie ACK here, or the
		// request behind it, is a client reusing the ports: replay it,
		// and the hand-off replaces the entry. Anything else is the old
		// flow's tail: the kernel's.
		if p.Flags&(packet.ACK|packet.SYN|packet.RST|packet.FIN) != packet.ACK {
			return nf.Accept
		}
		return w.clientACK(svc, b, true)
	case hook == nf.Prerouting:
		// Only the mangle rule queues non-SYNs in PREROUTING: the first
		// established packet of a flow let through. It is the kernel's
		// flow; note the completed handshake and let it go.
		w.firstACK(s)
		return nf.Accept
	case Mode(s.mode.Load()) == ModeOff:
		// Observe only: whatever conntrack found invalid passes, as it
		// would without synguard.
		return nf.Accept
	case p.Flags.Has(packet.SYN):
		// SYN with ACK, RST or FIN: nothing a client sends in a
		// handshake (conntrack calls it invalid too). In particular a
		// SYN+RST must not abort a pending flow as a reset would.
		c.add(svc, Malformed)
		return nf.Drop
	case p.Flags.Has(packet.RST):
		return w.clientReset(svc, b)
	case p.Flags&(packet.ACK|packet.SYN) == packet.ACK:
		return w.clientACK(svc, b, false)
	}
	// SYN+ACK, FIN without ACK, no flags: nothing a client sends in a
	// handshake. Drop, like conntrack-invalid traffic should be.
	c.add(svc, Malformed)
	return nf.Drop
}

// passSYN lets a SYN through to the backend and counts it as half-open.
func (w *Worker) passSYN(s *service) {
	p := &w.pkt
	svc := s.slot
	k := flowKey{client: p.Source(), server: p.Destination()}
	added, evicted := s.halfOpen.add(k, w.e.cfg.Now())
	if added {
		w.out.c.add(svc, SYNPassed)
	}
	if evicted {
		w.out.c.add(svc, HalfOpenEvicted)
	}
}

// firstACK records that a flow let through completed its handshake.
func (w *Worker) firstACK(s *service) {
	p := &w.pkt
	k := flowKey{client: p.Source(), server: p.Destination()}
	if s.halfOpen.complete(k, w.e.cfg.Now()) {
		s.bySource.Complete(k.client.Addr())
		w.out.c.add(s.slot, FirstACK)
	}
}

// answerSYN sends the cookie SYN-ACK: window 0 so the client sends no data
// before the backend is ready, or with early data a window of a few
// segments held until it is; no timestamps because the kernel cannot
// translate them for a flow it did not proxy. synLen is the SYN's size: a
// SYN-ACK larger than its SYN is never sent, so a spoofed flood cannot be
// amplified toward its victim.
func (w *Worker) answerSYN(svc int, synLen int) {
	p := &w.pkt
	o := w.out
	client, server := p.Source(), p.Destination()
	cookie := w.e.cfg.Cookies.Generate(client, server, p.Seq, clientOptions(&p.Options))
	a := announce(&p.Options, w.e.Backend(svc))
	seg := packet.Segment{
		Src: server, Dst: client,
		Seq: uint32(cookie), Ack: p.Seq + 1,
		Flags:   packet.SYN | packet.ACK,
		Options: a.packetOptions(),
	}
	if w.e.cfg.EarlyData {
		seg.Window = earlyWindow(a.MSS, p.IsIPv6())
	}
	n, err := packet.Build(o.buf[:], &seg)
	if err != nil {
		o.failed(svc, err)
		return
	}
	if n > synLen {
		o.c.add(svc, AmplificationGuard)
		return
	}
	o.queue(svc, o.buf[:n], client.Addr(), SYNACKSent)
}

// clientACK validates a client's ACK, and holds or passes the data
// segments that follow it (early data). Besides the handshake's third ACK
// (seq = ISN+1), a client whose ACK was lost sends zero-window probes with
// seq = ISN; both prove the cookie, so both are accepted.
//
// stale says the segment belongs to a closing handed-off flow: one that
// proves nothing is then the old flow's, passed on and not counted as
// invalid.
func (w *Worker) clientACK(svc int, b []byte, stale bool) nf.Verdict {
	p := &w.pkt
	c := w.out.c
	k := flowKey{client: p.Source(), server: p.Destination()}
	e := w.e
	cookie := cookies.Cookie(p.Ack - 1)
	// Data, or a FIN, from a client that was given an early window. One
	// that met a closing entry of the same ports (stale) carries that
	// entry, whose sequence adjustment the kernel would apply to it once
	// more: it is not passed on but dropped, and the engine sends its
	// translated copy.
	early := e.cfg.EarlyData && (p.PayloadLen > 0 || p.Flags.Has(packet.FIN))
	e.mu.Lock()
	if f := e.pending.get(k); f != nil {
		switch {
		case !f.acked:
			if early && f.cookie == cookie && p.Seq-(f.clientISN+1) <= 0xffff && w.holdEarly(f, b, stale) {
				e.mu.Unlock()
				c.add(svc, EarlyDataHeld)
				return nf.Hold
			}
			// The third ACK again, or a zero-window probe, has the seq
			// of the handshake. A pure ACK past it, behind the
			// client's request, answers a segment the engine never
			// sent: one of the earlier flow on these ports, whose
			// TIME_WAIT end in the backend answered a late segment.
			pure := p.PayloadLen == 0 && !p.Flags.Has(packet.FIN)
			repeat := p.Seq == f.clientISN+1 || p.Seq == f.clientISN
			answer := pure && !repeat && f.cookie == cookie
			e.mu.Unlock()
			switch {
			case early:
				c.add(svc, EarlyDataRefused)
			case answer:
				c.add(svc, OldFlowAnswer)
			default:
				c.add(svc, DuplicateACK)
			}
			return nf.Drop
		case f.cookie == cookie:
			return w.translateClient(svc, k, f, b, stale) // unlocks
		}
	}
	e.mu.Unlock()

	isn := p.Seq - 1
	opts, ok := e.cfg.Cookies.Validate(k.client, k.server, isn, cookie)
	if !ok && p.PayloadLen == 0 {
		isn = p.Seq
		opts, ok = e.cfg.Cookies.Validate(k.client, k.server, isn, cookie)
	}
	if !ok {
		// No cookie: a later segment of a flow whose backend was
		// ACKed (the client acknowledging the backend's answer), if
		// there is one on these ports. (A new connection on them is
		// known by its valid cookie: a client reusing its ports picks
		// an ISN near its last one, so sequence numbers cannot tell.)
		e.mu.Lock()
		if f := e.pending.get(k); f != nil && f.acked {
			return w.translateClient(svc, k, f, b, stale) // unlocks
		}
		e.mu.Unlock()
		if stale {
			c.add(svc, StalePassed)
			return nf.Accept
		}
		c.add(svc, CookieInvalid)
		return nf.Drop
	}
	c.add(svc, CookieValid)
	e.svc(svc).bySource.Complete(k.client.Addr())

	f := e.newReplaying(svc, isn, cookie, opts, p.Window, e.cfg.Now())
	f.reused = stale
	e.mu.Lock()
	if old := e.pending.get(k); old != nil && old.acked {
		// The record of a flow whose backend was ACKed, lingering only
		// to re-ACK it: a valid cookie of its own makes this a new flow
		// on the same ports, which takes its place.
		e.pending.remove(k)
	}
	added := e.pending.add(k, f)
	held := added && early && w.holdEarly(f, b, stale)
	e.mu.Unlock()
	if !added {
		c.add(svc, PendingFull)
		return nf.Drop
	}
	e.pendingAdded(f)
	seg := backendSYN(k, f)
	w.out.send(svc, &seg, BackendSYNSent)
	switch {
	case held:
		c.add(svc, EarlyDataHeld)
		return nf.Hold
	case early:
		c.add(svc, EarlyDataRefused)
	}
	return nf.Drop
}

// translateClient passes a client segment of flow k, f, whose backend the
// engine has ACKed, that met no conntrack entry (not made yet, or made
// since the segment met conntrack): its ack moved into the backend's
// sequence space, as the entry would have. The third ACK again, or a
// probe, is dropped; a FIN or RST is noted as one the entry missed
// (missedEnding). It is called with e.mu held and releases it.
func (w *Worker) translateClient(svc int, k flowKey, f *pendingFlow, b []byte, stale bool) nf.Verdict {
	p := &w.pkt
	c := w.out.c
	e := w.e
	delta := f.serverISN - uint32(f.cookie)
	if !p.Flags.Has(packet.RST) {
		if p.PayloadLen == 0 && !p.Flags.Has(packet.FIN) && p.Ack == uint32(f.cookie)+1 {
			e.mu.Unlock()
			c.add(svc, DuplicateACK)
			return nf.Drop
		}
		// A segment with SACK blocks would need them moved too; the
		// client's next cumulative ACK carries the flow on. It is no
		// duplicate but a client reporting a hole, as one may at the
		// end of a transfer, when the backend's FIN has made the entry
		// closing and the client's ACKs come here through the stale
		// rule.
		if p.Options.NumSACKBlocks > 0 {
			e.mu.Unlock()
			c.add(svc, SACKDropped)
			return nf.Drop
		}
	}
	e.missedEnding(k, f, endingOf(p.Flags, clientFIN))
	e.mu.Unlock()
	packet.SetAck(b, p.IPHeaderLen, p.Ack+delta)
	if stale {
		// It carries a closing entry of the same ports, whose sequence
		// adjustment the kernel would apply once more: send a copy.
		w.out.queue(svc, b, p.Dst, TranslatedClient)
		return nf.Drop
	}
	c.add(svc, TranslatedClient)
	return nf.AcceptRewritten
}

// clientReset handles a client RST, b, that met no entry. Before the
// backend is ACKed: forget the flow and, if the backend may have a
// half-open connection, reset it too. After: the backend has the flow,
// and the client's RST goes on to it, translated.
func (w *Worker) clientReset(svc int, b []byte) nf.Verdict {
	p := &w.pkt
	k := flowKey{client: p.Source(), server: p.Destination()}
	e := w.e
	e.mu.Lock()
	f := e.pending.get(k)
	switch {
	case f == nil:
		e.mu.Unlock()
		w.out.c.add(svc, CookieInvalid)
		return nf.Drop
	case f.acked:
		return w.translateClient(svc, k, f, b, false) // unlocks
	}
	e.pending.remove(k)
	fl := *f
	e.mu.Unlock()
	e.dropHeld(w.out.c, &fl)
	isn := fl.clientISN
	w.out.c.add(svc, ClientReset)
	seg := packet.Segment{Src: k.client, Dst: k.server, Seq: isn + 1, Flags: packet.RST}
	w.out.send(svc, &seg, noCount)
	return nf.Drop
}
