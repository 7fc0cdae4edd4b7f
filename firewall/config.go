package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Default marks. The high half spells "SG" (0x53 0x47) so the values are easy
// to recognise in iptables-save and conntrack -L output, and the low half
// keeps the two apart. Both are matched exactly (the whole 32 bits), so they
// must not collide with marks the operator's own rules set.
const (
	// DefaultEngineMark is the skb mark (SO_MARK) on every packet the
	// engine sends: SYN-ACKs, replayed SYNs, ACKs, RSTs, window updates.
	DefaultEngineMark uint32 = 0x53470001
	// DefaultHandoffMark is the connmark the engine puts on a flow's
	// conntrack entry when it hands the flow back to the kernel.
	DefaultHandoffMark uint32 = 0x53470002
	// DefaultStaleMark is the skb mark on segments queued because their
	// flow's conntrack entry is about to expire (see Config.ReopenWithin).
	DefaultStaleMark uint32 = 0x53470003
)

// maxQueue is the highest NFQUEUE number the kernel accepts.
const maxQueue = 65535

// Config describes what to protect and how packets reach the engine.
type Config struct {
	// Services are the protected services. IPv4 ones are installed with
	// iptables, IPv6 ones with ip6tables.
	Services []netip.AddrPort
	// Queue is the first NFQUEUE number.
	Queue uint16
	// Queues is the number of SYN queues, at least 1: client SYNs go to
	// Queue..Queue+Queues-1. Every other queued segment (the ones that
	// complete a handshake: cookie ACKs, client RSTs, the backends'
	// SYN-ACKs and RSTs, stale-entry segments, first ACKs) goes to as
	// many completion queues right after them, so that it never waits
	// behind a flood of SYNs (see SYNQueues and CompletionQueues). With
	// more than one queue of a kind, packets are spread by
	// --queue-balance, which hashes the address pair symmetrically, so
	// both directions of a flow reach the same completion queue.
	Queues uint16
	// Local protects services on this host (filter INPUT and OUTPUT)
	// instead of services behind it (filter FORWARD).
	Local bool
	// FailOpen adds --queue-bypass: while no program is bound to a queue,
	// its packets pass as if the rule were not there. Without it they are
	// dropped (fail closed).
	FailOpen bool
	// EngineMark is the skb mark the engine sets (SO_MARK) on every packet
	// it sends. Must be non-zero.
	EngineMark uint32
	// HandoffMark is the connmark of flows handed off to the kernel. Must
	// be non-zero and differ from EngineMark.
	HandoffMark uint32

	// ReopenWithin, when non-zero, queues (with StaleMark set) the segments
	// of handed-off flows whose conntrack entry expires within this many
	// seconds: closing flows, TIME_WAIT above all. A client that reuses the
	// ports of such a flow has its cookie ACK matched to the old entry,
	// which the kernel would forward with the old flow's sequence
	// adjustment; queued, the engine recognises the cookie and replaces
	// the entry. Set it to nf_conntrack_tcp_timeout_time_wait (120).
	ReopenWithin uint32
	// StaleMark is set on those segments so the engine can tell them from
	// segments conntrack found invalid.
	StaleMark uint32

	// ObserveFirstACK queues the first established packet of each flow to
	// a protected service once, and connmarks the flow past it, so the
	// engine can count handshakes completed by SYNs it let through (modes
	// auto and off).
	ObserveFirstACK bool

	// Runner runs iptables and reads and writes sysctls. Nil means Host:
	// the network namespace of the calling process.
	Runner Runner
}

// QueueRange is a run of consecutive NFQUEUE numbers, First..Last.
type QueueRange struct{ First, Last uint16 }

// String is "N" for one queue and "N..M" for more.
func (r QueueRange) String() string {
	if r.First == r.Last {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d..%d", r.First, r.Last)
}

// SYNQueues are the queues client SYNs go to: Queue..Queue+Queues-1.
// Only meaningful once c is valid.
func (c Config) SYNQueues() QueueRange {
	return QueueRange{c.Queue, c.Queue + c.Queues - 1}
}

// CompletionQueues are the queues every other queued segment goes to:
// Queue+Queues..Queue+2*Queues-1. Only meaningful once c is valid.
func (c Config) CompletionQueues() QueueRange {
	return QueueRange{c.Queue + c.Queues, c.Queue + 2*c.Queues - 1}
}

// clone returns c with a Services slice of its own.
func (c Config) clone() Config {
	c.Services = slices.Clone(c.Services)
	return c
}

// Validate reports the first problem with c, naming the offending field or
// service.
func (c Config) Validate() error {
	if len(c.Services) == 0 {
		return errors.New("firewall: no services to protect")
	}
	seen := make(map[netip.AddrPort]bool, len(c.Services))
	for i, s := range c.Services {
		if err := validService(s, c.Local); err != nil {
			return fmt.Errorf("firewall: service %d (%s): %w", i+1, s, err)
		}
		if seen[s] {
			return fmt.Errorf("firewall: service %d (%s): listed twice", i+1, s)
		}
		seen[s] = true
	}
	if c.Queues == 0 {
		return errors.New("firewall: Queues is 0; need at least one queue")
	}
	if last := int(c.Queue) + 2*int(c.Queues) - 1; last > maxQueue {
		return fmt.Errorf("firewall: queues %d..%d (%d for SYNs, as many for handshake completions) run past the last queue number %d",
			c.Queue, last, c.Queues, maxQueue)
	}
	if c.EngineMark == 0 {
		return errors.New("firewall: EngineMark is 0; it would match every unmarked packet")
	}
	if c.HandoffMark == 0 {
		return errors.New("firewall: HandoffMark is 0; it would match every connection without a connmark")
	}
	if c.EngineMark == c.HandoffMark {
		return fmt.Errorf("firewall: EngineMark and HandoffMark are both %#x; they must differ", c.EngineMark)
	}
	if c.ReopenWithin > 0 && (c.StaleMark == 0 || c.StaleMark == c.EngineMark || c.StaleMark == c.HandoffMark) {
		return errors.New("firewall: the stale mark must be non-zero and differ from the engine and hand-off marks")
	}
	return nil
}

func validService(s netip.AddrPort, local bool) error {
	a := s.Addr()
	switch {
	case !a.IsValid():
		return errors.New("no address")
	case s.Port() == 0:
		return errors.New("port 0")
	case a.Zone() != "":
		return errors.New("address has a zone; iptables cannot match it")
	case a.Is4In6():
		return fmt.Errorf("IPv4-mapped IPv6 address; write it as %s", a.Unmap())
	case a.IsUnspecified():
		return errors.New("unspecified address; name the service's own address")
	case a.IsMulticast():
		return errors.New("multicast address; TCP needs a unicast one")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("broadcast address; TCP needs a unicast one")
	case a.IsLoopback() && !local:
		return errors.New("loopback address is never forwarded; protect it with Local")
	}
	return nil
}
