package gateway

import (
	"net/netip"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/rawsock"
)

// queueHandler feeds one queue's packets to its worker a receive batch at
// a time: verdicts per packet, the worker's replies flushed per batch.
type queueHandler struct {
	w         *engine.Worker
	staleMark uint32
	replies   *replyBatch // w's batch with ReplyIngress; nil otherwise
}

func (h queueHandler) Handle(p *nfq.Packet) nf.Verdict {
	if h.replies != nil {
		h.replies.arrived(p)
	}
	hook := p.Hook
	if p.Mark == h.staleMark {
		hook = engine.HookStaleEntry
	}
	return h.w.Handle(p.Payload, hook, p.ID)
}

func (h queueHandler) Flush() { h.w.Flush() }

// AfterVerdicts hands off the flows whose backend answered in the batch.
func (h queueHandler) AfterVerdicts() { h.w.HandOffs() }

// newQueueHandler returns the handler of queue q, with its own worker
// sending through a batch of its own: on the ingress link when replies
// take it, routed otherwise. The worker holds early data in q, and hands
// off the flows whose backend answered itself, after each batch's
// verdicts, sending their window updates through a routed batch.
func newQueueHandler(eng *engine.Engine, q *nfq.Queue, sender *rawsock.Sender, path ReplyPath, staleMark uint32) queueHandler {
	h := queueHandler{staleMark: staleMark}
	if path == ReplyIngress {
		h.replies = &replyBatch{Batch: sender.NewBatch()}
		h.w = eng.NewWorker(h.replies, q)
	} else {
		h.w = eng.NewWorker(sender.NewBatch(), q)
	}
	h.w.InlineHandOffs(sender.NewBatch())
	return h
}

// replyBatch is a worker's Batch that sends each reply to the packet in
// hand back out the link that packet came in on, and everything else (a
// replayed SYN to the backend, say) through the routing table.
type replyBatch struct {
	*rawsock.Batch
	from netip.Addr   // source address of the packet in hand
	link rawsock.Link // the link it came in on; invalid when unknown
}

// arrived records where p came from, before the worker handles it.
func (r *replyBatch) arrived(p *nfq.Packet) {
	r.from, r.link = netip.Addr{}, rawsock.Link{}
	link, ok := rawsock.LinkFrom(p.InIndex, p.HwAddr)
	if !ok {
		return
	}
	if src, ok := sourceAddr(p.Payload); ok {
		r.from, r.link = src, link
	}
}

// Add sends b on the ingress link when it goes back to the packet's
// sender.
func (r *replyBatch) Add(b []byte, dst netip.Addr) bool {
	if r.link.IsValid() && dst == r.from {
		return r.Batch.AddVia(b, dst, r.link)
	}
	return r.Batch.Add(b, dst)
}

// sourceAddr reads the source address of the IP packet p.
func sourceAddr(p []byte) (netip.Addr, bool) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(p[12:16])), true
	case len(p) >= 40 && p[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(p[8:24])), true
	}
	return netip.Addr{}, false
}
