package engine

import (
	"net/netip"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// This file is early data: a cookie SYN-ACK that opens a small window, so
// the client sends its request right behind its ACK instead of waiting a
// round trip for the window update. Its segments wait in their queue, with
// no verdict, until the backend has answered the replayed SYN and been
// ACKed (for a client reusing the ports of a closing flow, until the
// hand-off has replaced that flow's entry); then they go on to the backend
// with their acknowledgement number moved into the backend's sequence
// space (docs/architecture.md, Early data).

// Holder keeps queued packets waiting and later gives them a verdict: the
// queue a worker reads. Release may be called from any goroutine.
type Holder interface {
	// Release gives the held packet id its verdict, nf.Drop or
	// nf.Accept; a non-nil packet replaces the packet's bytes.
	Release(id uint32, v nf.Verdict, packet []byte) error
}

// Early data bounds.
const (
	// EarlySegments is the early window, in segments of the MSS the client
	// was told, and the most segments held per flow. Four take a request
	// with a few kilobytes of headers, or a TLS ClientHello with a
	// post-quantum key share, in one flight; a backend's initial receive
	// window is larger (Linux and Windows open 64 KB), so it accepts
	// them all.
	EarlySegments = 4
	// DefaultMaxHeld bounds the segments held at once, over all flows. At
	// 9,000 bytes a copy (jumbo frames), 9 MB.
	DefaultMaxHeld = 1024
)

// defaultMSS is the MSS a client assumes when the SYN-ACK carries none
// (RFC 9293, 3.7.1 and RFC 8200, 8.3).
func defaultMSS(ipv6 bool) uint16 {
	if ipv6 {
		return 1220
	}
	return 536
}

// earlyWindow is the window of a cookie SYN-ACK with early data: mss
// (zero when the SYN-ACK announces none) times EarlySegments. A SYN's
// window is never scaled.
func earlyWindow(mss uint16, ipv6 bool) uint16 {
	if mss == 0 {
		mss = defaultMSS(ipv6)
	}
	return uint16(min(uint32(mss)*EarlySegments, 0xffff))
}

// heldSegment is a client segment waiting in its queue for its backend to
// be ACKed, with a copy of its bytes to translate and send back with the verdict.
type heldSegment struct {
	holder    Holder
	id        uint32
	tcpOffset int
	buf       []byte
	// resend says the segment met a closing entry of the same ports
	// (engine.HookStaleEntry) and carries it: the kernel would apply that
	// entry's sequence adjustment to it on its way out, even after the
	// hand-off replaced the entry. It is dropped from the queue and its
	// translated copy sent by the engine instead, untracked, to dst.
	resend bool
	dst    netip.Addr
}

// holdPool is the copies of every held segment, up to max. Slots are made
// as they are first needed and reused after, so a steady flow of early
// data allocates nothing. It is guarded by Engine.mu; a slot taken is its
// taker's alone until put back.
type holdPool struct {
	free []*heldSegment
	made int
	max  int
}

// heldRefs is a flow's held segments, in arrival order.
type heldRefs struct {
	seg [EarlySegments]*heldSegment
	n   uint8
}

// take reserves a slot, reporting nil when max are in use.
func (p *holdPool) take() *heldSegment {
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		return s
	}
	if p.made >= p.max {
		return nil
	}
	p.made++
	return new(heldSegment)
}

func (p *holdPool) put(s *heldSegment) {
	s.holder = nil
	p.free = append(p.free, s)
}

// inUse is how many segments are held.
func (p *holdPool) inUse() int { return p.made - len(p.free) }

// holdEarly keeps the packet in hand, b, queued until the backend of its
// flow f is ACKed. It is called with e.mu held and reports false when the segment
// cannot be held: the worker has no Holder, or the flow or the pool is at
// its bound. The caller then drops it; the client retransmits it once its
// window opens.
func (w *Worker) holdEarly(f *pendingFlow, b []byte, resend bool) bool {
	e := w.e
	if w.holder == nil || int(f.held.n) >= EarlySegments {
		return false
	}
	s := e.held.take()
	if s == nil {
		return false
	}
	s.holder, s.id, s.tcpOffset = w.holder, w.id, w.pkt.IPHeaderLen
	s.resend, s.dst = resend, w.pkt.Dst
	s.buf = append(s.buf[:0], b...)
	f.held.seg[f.held.n] = s
	f.held.n++
	// Released, it passes before the entry is made.
	f.missed |= endingOf(w.pkt.Flags, clientFIN)
	e.svc(f.svc).held.Add(1)
	return true
}

// takeHeld detaches f's held segments, to be released outside the lock.
// It is called with e.mu held.
func takeHeld(f *pendingFlow) heldRefs {
	h := f.held
	f.held = heldRefs{}
	return h
}

// releaseHeld gives held segments their verdict. Accepted ones go on with
// their acknowledgement moved from the cookie's sequence space into the
// backend's (the kernel would have done it, had conntrack known the flow
// when they arrived); those to resend through out, which may be nil for
// nf.Drop. Called without e.mu.
func (e *Engine) releaseHeld(out *outbox, c *counterSet, svc int, h heldRefs, v nf.Verdict, f *pendingFlow) {
	if h.n == 0 {
		return
	}
	delta := f.serverISN - uint32(f.cookie)
	for _, s := range h.seg[:h.n] {
		var pkt []byte
		qv := v
		if v == nf.Accept {
			ack := packet.Ack(s.buf, s.tcpOffset)
			packet.SetAck(s.buf, s.tcpOffset, ack+delta)
			pkt = s.buf
			if s.resend {
				qv, pkt = nf.Drop, nil
			}
		}
		switch err := s.holder.Release(s.id, qv, pkt); {
		case err != nil:
			c.add(svc, EarlyDataLost)
		case v == nf.Accept && s.resend:
			out.queue(svc, s.buf, s.dst, EarlyDataReleased)
		case v == nf.Accept:
			c.add(svc, EarlyDataReleased)
		default:
			c.add(svc, EarlyDataDropped)
		}
	}
	if out != nil {
		// The copies go before the slots are reused.
		out.flush()
	}
	e.mu.Lock()
	for _, s := range h.seg[:h.n] {
		e.held.put(s)
	}
	e.mu.Unlock()
	e.svc(svc).held.Add(-int64(h.n))
}

// dropHeld drops the segments held for a flow that ends before its backend
// was ACKed. Called without e.mu; f is the caller's copy.
func (e *Engine) dropHeld(c *counterSet, f *pendingFlow) {
	e.releaseHeld(nil, c, f.svc, f.held, nf.Drop, f)
}

// EarlyData reports whether cookie SYN-ACKs open an early window.
func (e *Engine) EarlyData() bool { return e.cfg.EarlyData }

// heldSlots is how many of the hold pool's slots are taken.
func (e *Engine) heldSlots() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.held.inUse()
}

// HeldBy is how many client segments of service svc's flows wait in their
// queues for the backend's answer.
func (e *Engine) HeldBy(svc int) int { return int(e.svc(svc).held.Load()) }
