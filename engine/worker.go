package engine

import (
	"errors"
	"net/netip"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// Batch collects the packets the engine builds and sends them together:
// the one way anything leaves the engine. Each Worker, each hand-off
// goroutine and the timer loop own one; a Batch is used by one goroutine
// only.
type Batch interface {
	// Add queues a copy of the IP packet b for dst. It reports false,
	// and queues nothing, when it cannot take the packet now (it is
	// full); the engine then flushes and adds once more.
	Add(b []byte, dst netip.Addr) bool
	// Flush sends the queued packets and empties the batch. Packets to
	// one destination leave in the order they were added; a batch may
	// group the rest (by address family, by link). For each packet that
	// could not be sent it calls failed with the packet's index (0 for
	// the first one added) and the error.
	Flush(failed func(i int, err error))
}

// HookStaleEntry is the hook the gateway reports for a segment queued by
// the rule for handed-off flows whose conntrack entry is about to expire
// (the firewall's stale mark): usually the old flow's last segments, or a
// client reusing its ports. It is no kernel hook.
const HookStaleEntry nf.Hook = 0xfe

// Worker handles the packets of one queue: the pipeline's entry. It is
// not safe for concurrent use; give each receive goroutine its own.
type Worker struct {
	e      *Engine
	pkt    packet.Packet
	out    *outbox
	holder Holder // nil: this worker's packets cannot be held
	id     uint32 // the packet in hand's id in its queue
	// sampled counts SYNs, to count one in SourceSampling by source.
	sampled uint32
	// inline, once set (InlineHandOffs), hands off the flows whose
	// backend answered in a batch on the worker's own goroutine
	// (HandOffs).
	inline *inlineHandOffs
}

// inlineHandOffs is a worker's own hand-off work space: the first n keys
// of scratch wait for HandOffs; out, routed like a hand-off goroutine's,
// sends their window updates.
type inlineHandOffs struct {
	n       int
	scratch handoffScratch
	out     *outbox
	batch   BatchKernel // the engine's Kernel, when it is one
}

// NewWorker returns a worker with its own scratch space and counters that
// sends through b, which the caller may keep and steer (the gateway points
// each reply at the link its packet came in on). b is used only from the
// worker's goroutine. h is the queue the worker's packets come from, which
// holds early data until its backend answers; nil holds nothing (early
// data is then dropped, and the client retransmits it).
func (e *Engine) NewWorker(b Batch, h Holder) *Worker {
	return &Worker{e: e, out: e.newOutbox(b), holder: h}
}

// Handle decides the verdict for one IP packet b queued from hook with
// the queue's packet id. In
// PREROUTING the engine sees SYNs (raw table) and the first established
// packet of flows it let through (mangle table); in the filter hooks it
// sees segments conntrack found invalid or untracked. What it sends in
// reply waits in the worker's batch: call Flush after the last packet of
// each receive batch, so that a whole batch's replies leave in one system
// call.
//
// Besides nf.Drop and nf.Accept it returns nf.Hold for early data the
// worker's Holder is to keep queued (the engine releases it later), and
// nf.AcceptRewritten for a segment it rewrote in b.
func (w *Worker) Handle(b []byte, hook nf.Hook, id uint32) nf.Verdict {
	w.id = id
	p := &w.pkt
	if err := packet.Parse(b, p); err != nil {
		// Only TCP segments of protected services are queued, and
		// conntrack has already reassembled fragments: what fails to
		// parse is malformed, and a backend must not see it.
		w.out.c.add(w.e.malformedService(b), Malformed)
		return nf.Drop
	}
	t := w.e.table.Load()
	if svc, ok := t.lookup(p.Destination()); ok {
		return w.fromClient(t.all[svc], b, hook)
	}
	if svc, ok := t.lookup(p.Source()); ok {
		return w.fromBackend(svc, b)
	}
	w.out.c.add(-1, Unmatched)
	return nf.Accept
}

// Flush sends the replies waiting in the worker's batch.
func (w *Worker) Flush() { w.out.flush() }

// InlineHandOffs has the worker make the conntrack entries of the flows
// whose backend answered, and open their clients' windows, itself, when
// its caller calls HandOffs after each batch's verdicts, rather than pass
// them to a hand-off goroutine. That hand-over readies a goroutine, and
// the Go scheduler wakes a second thread to run it: on a quiet gateway
// those wake-ups cost more than the hand-off itself. Done after the
// verdicts, the entry still stays off the request's path: the backend was
// ACKed and the early data released while the batch was handled. A batch
// with more flows than a hand-off batch takes passes the rest to the
// goroutines. b, routed, sends the window updates, as a hand-off
// goroutine's batch does.
func (w *Worker) InlineHandOffs(b Batch) {
	batch, _ := w.e.cfg.Kernel.(BatchKernel)
	w.inline = &inlineHandOffs{out: w.e.newOutbox(b), batch: batch}
}

// HandOffs hands off the flows whose backend answered since the last
// call (see InlineHandOffs).
func (w *Worker) HandOffs() {
	in := w.inline
	if in == nil || in.n == 0 {
		return
	}
	n := in.n
	in.n = 0
	w.e.handoffAll(in.out, &in.scratch, n, in.batch)
	in.out.flush()
}

// queueHandOff passes flow k on for its hand-off: to the worker's own
// list, or to the hand-off goroutines. It reports false when both are
// full.
func (w *Worker) queueHandOff(k flowKey) bool {
	if in := w.inline; in != nil && in.n < len(in.scratch.keys) {
		in.scratch.keys[in.n] = k
		in.n++
		return true
	}
	select {
	case w.e.handoffs <- k:
		return true
	default:
		return false
	}
}

// outbox builds packets and sends them through a Batch, counting each
// once the batch reports whether it went out. Every writer of packets has
// one: workers, hand-off goroutines and the timer loop.
type outbox struct {
	e        *Engine // reports failed sends
	batch    Batch
	c        *counterSet
	buf      [packet.MaxHandshakeLen]byte
	queued   []queuedSend
	failedFn func(i int, err error) // sendFailed, bound once
}

// queuedSend is the accounting of one packet waiting in the batch.
type queuedSend struct {
	svc int
	ok  Counter // counted when sent; noCount for none
	err error   // why the batch did not send it; nil if it did
}

// noCount marks a send that has no success counter of its own.
const noCount = numCounters

func (e *Engine) newOutbox(b Batch) *outbox {
	o := &outbox{e: e, batch: b, c: e.newCounters(), queued: make([]queuedSend, 0, 64)}
	o.failedFn = o.sendFailed
	return o
}

// send builds seg and queues it, counting ok once it is sent.
func (o *outbox) send(svc int, seg *packet.Segment, ok Counter) {
	n, err := packet.Build(o.buf[:], seg)
	if err != nil {
		o.failed(svc, err)
		return
	}
	o.queue(svc, o.buf[:n], seg.Dst.Addr(), ok)
}

// queue adds the built packet b for dst to the batch, flushing it first
// when it is full.
func (o *outbox) queue(svc int, b []byte, dst netip.Addr, ok Counter) {
	added := o.batch.Add(b, dst)
	if !added && len(o.queued) > 0 {
		o.flush()
		added = o.batch.Add(b, dst)
	}
	if !added {
		o.failed(svc, errBatchRefused)
		return
	}
	o.queued = append(o.queued, queuedSend{svc: svc, ok: ok})
}

// flush sends what the batch holds and counts the outcome of each packet.
func (o *outbox) flush() {
	if len(o.queued) == 0 {
		return
	}
	o.batch.Flush(o.failedFn)
	for i := range o.queued {
		q := &o.queued[i]
		switch {
		case q.err != nil:
			o.failed(q.svc, q.err)
		case q.ok < numCounters:
			o.c.add(q.svc, q.ok)
		}
	}
	o.queued = o.queued[:0]
}

// sendFailed is the Batch's report of packet i not sent.
func (o *outbox) sendFailed(i int, err error) {
	if i >= 0 && i < len(o.queued) {
		o.queued[i].err = err
	}
}

// failed counts a packet for service svc that was not sent, and tells
// why: the send_error counter has them all, the event one a second.
func (o *outbox) failed(svc int, err error) {
	o.c.add(svc, SendError)
	o.e.reportSendFailure(svc, err)
}

// errBatchRefused is the reason given for a packet its Batch would not
// take even when empty.
var errBatchRefused = errors.New("the send batch refused the packet")

// reportSendFailure reports a packet of service svc not sent to Events,
// at most once a second for the whole engine: under a storm of failures
// (a full socket buffer, a route gone) the counter says how many, one
// line a second why.
func (e *Engine) reportSendFailure(svc int, err error) {
	now := e.cfg.Now().UnixNano()
	last := e.lastSendFailure.Load()
	// A clock stepped back reports at once rather than falling silent.
	recent := last != 0 && now >= last && now-last < int64(time.Second)
	if recent || !e.lastSendFailure.CompareAndSwap(last, now) {
		return
	}
	e.events.SendFailed(e.svc(svc).addr, err)
}
