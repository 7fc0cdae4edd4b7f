package nfq

import (
	"github.com/rs/zerolog"

	"github.com/synguard/synguard/nf"
)

// Packet is one queued packet. Payload is only valid during the handler call:
// a handler that keeps any of it must copy it.
type Packet struct {
	ID      uint32  // the kernel's packet id within the queue
	Payload []byte  // the whole IP packet (v4 or v6), starting at the IP header
	Mark    uint32  // skb->mark; 0 when unset
	Hook    nf.Hook // the netfilter hook it was queued from

	// InIndex is the interface the packet arrived on (NFQA_IFINDEX_INDEV),
	// 0 for a packet this host sent. HwAddr is the link-layer source
	// address of the frame it arrived in (NFQA_HWADDR): on Ethernet, the
	// MAC of the neighbour that sent it. It is empty when the kernel
	// reports none, and, like Payload, valid only during Handle.
	InIndex uint32
	HwAddr  []byte
}

// Handler decides a packet's verdict. It runs on the queue's receive
// goroutine, one packet at a time; it must not block. nf.Hold leaves the
// packet queued until Queue.Release gives it a verdict;
// nf.AcceptRewritten accepts it with the bytes the handler rewrote in
// place in Payload (same length). Any value other than those and Accept
// is treated as Drop.
type Handler func(p *Packet) nf.Verdict

// Handle calls h, so that a Handler is a BatchHandler.
func (h Handler) Handle(p *Packet) nf.Verdict { return h(p) }

// Flush does nothing: a Handler has nothing to finish per batch.
func (Handler) Flush() {}

// BatchHandler is a Handler that also learns where each receive batch
// ends. Handle has Handler's contract; Flush is called once after the
// last Handle of a batch, before the batch's verdicts are sent, on the
// same goroutine: the place to send whatever Handle queued (see doc.go).
// A BatchHandler that also has a method AfterVerdicts() has it called once
// the batch's verdicts are sent, before the next receive: the place for
// work no packet of the batch should wait for.
type BatchHandler interface {
	Handle(p *Packet) nf.Verdict
	Flush()
}

// afterVerdicts is the optional method of a BatchHandler (see there).
type afterVerdicts interface {
	AfterVerdicts()
}

// Defaults applied by Open for zero Config fields.
const (
	// DefaultMaxQueueLen is the kernel queue length: packets handed to
	// userspace and still waiting for a verdict. A receive loop that keeps
	// up with a flood still falls behind for a while whenever its thread
	// is not scheduled (a busy core, another process), and 4096 was found
	// too short for that: at 100k SYN/s on one queue it lost 6% of the
	// SYNs with the CPU mostly idle. 16384 is ~100 ms of work at the
	// ~190k SYN/s one queue answers at least (doc.go), which a hiccup does not
	// outlast, while a SYN that waited that long is still answered well
	// within the client's 1 s retransmission timeout. At that length the
	// kernel's queue limit, not the socket buffer, cuts an overload of
	// SYN-sized packets (see DefaultReadBuffer), and every packet it
	// drops is counted as queue_dropped.
	DefaultMaxQueueLen = 16384

	// DefaultReadBuffer is the netlink socket receive buffer requested with
	// SO_RCVBUFFORCE; the kernel doubles it for bookkeeping, and charges
	// each packet message its true size: 832 bytes for a SYN-sized packet,
	// 2304 for a full-size (1500 byte) one (measured, kernel 6.18). 8 MiB
	// thus holds ~20,000 SYN messages, more than DefaultMaxQueueLen, so a
	// burst of SYNs fills the queue before the socket; a backlog of
	// full-size packets overflows the socket at ~7,000 instead, which the
	// kernel counts per packet as user_dropped (ENOBUFS). The kernel
	// default (rmem_default, ~208 KiB, ~250 SYNs) overflows within
	// milliseconds of a flood: 250 SYNs are 2.5 ms at 100k SYN/s.
	DefaultReadBuffer = 8 << 20

	// copyRange is how many bytes of each packet the kernel copies to us:
	// all of it (the kernel clamps to its maximum, 0xffff minus the
	// attribute header). The engine must see complete IPv4/IPv6 header
	// chains and the TCP header with options, and an IPv6 extension chain
	// has no useful upper bound short of the MTU; with the whole packet it
	// can also check the TCP checksum of a cookie ACK. The queued traffic is
	// SYNs and handshake segments, which are small, so a full copy costs
	// nothing extra where it matters (a SYN flood).
	copyRange = 0xffff
)

// Config configures one queue.
type Config struct {
	// Queue is the NFQUEUE number (iptables --queue-num).
	Queue uint16

	// MaxQueueLen is the kernel's limit on packets waiting for a verdict;
	// 0 means DefaultMaxQueueLen.
	MaxQueueLen uint32

	// ReadBuffer is the netlink socket receive buffer in bytes, set with
	// SO_RCVBUFFORCE (falling back to SO_RCVBUF, capped by
	// net.core.rmem_max, without CAP_NET_ADMIN); 0 means DefaultReadBuffer.
	ReadBuffer int

	// FailOpen sets the kernel's NFQA_CFG_F_FAIL_OPEN: a packet that finds
	// the queue full, or our socket buffer full, is accepted without being
	// seen instead of dropped. It does not cover "nobody is bound to the
	// queue"; that is iptables' --queue-bypass.
	FailOpen bool

	// Logger receives the queue's events (open, receive errors, ENOBUFS,
	// rate-limited). The zero value logs nothing.
	Logger zerolog.Logger
}

// Stats are the userspace counters of one queue. All counts are since Open.
type Stats struct {
	Received uint64 // packet messages handed to the handler
	// Batches counts the receive batches those came in: Received/Batches
	// is the mean batch size, and the per-batch system calls and wake-ups
	// are the part of the CPU cost per packet that batching divides.
	Batches uint64
	// Verdicts counts the verdicts sent, by the receive loop and by
	// Release: all packets received but those held now and those whose
	// verdict failed.
	Verdicts VerdictStats
	// Holds counts the packets the handler held (nf.Hold); Held is how
	// many are held now (Queue.Held), and Released counts the verdicts
	// Release sent them, also counted in Verdicts: Holds is Held plus
	// Released plus the releases that failed.
	Holds    uint64
	Held     uint64
	Released VerdictStats
	// Rewritten counts the accepted packets whose bytes a verdict
	// replaced: nf.AcceptRewritten, and Release with a packet.
	Rewritten uint64
	// Malformed counts messages that carried no packet id or no payload.
	// Those with an id still got a verdict (see doc.go) and are counted in
	// Verdicts too.
	Malformed uint64
	// VerdictErrors counts verdicts that could not be sent, and errors the
	// kernel reported back for verdicts it rejected.
	VerdictErrors uint64
	// ReceiveErrors counts failed receives other than ENOBUFS.
	ReceiveErrors uint64
	// ENOBUFS counts the times the kernel reported that it dropped messages
	// because the socket receive buffer was full. It counts episodes, not
	// packets: the per-packet count is KernelQueueStats.UserDropped (in
	// fail-closed mode; fail-open packets are accepted and counted nowhere).
	ENOBUFS uint64
}

// VerdictStats counts verdicts sent, by kind.
type VerdictStats struct {
	Accept uint64
	Drop   uint64
}
