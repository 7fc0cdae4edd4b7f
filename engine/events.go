package engine

import (
	"net/netip"
	"time"
)

// Events receives what the engine has to tell an operator. The engine
// calls it from its control loop, hand-off goroutines and, rarely,
// workers: an implementation must be safe for concurrent use and should
// not block. The gateway's logs each as a structured event.
type Events interface {
	// ModeChanged reports a service switching between passthrough and
	// cookie mode (auto mode).
	ModeChanged(ModeChange)
	// BackendLearned reports options a service's backend announces, the
	// first time and whenever they change; source says how they were
	// seen ("probe" or "syn_ack").
	BackendLearned(service netip.AddrPort, opts BackendOptions, source string)
	// BackendMismatch reports a backend SYN-ACK whose options contradict
	// what clients were told.
	BackendMismatch(service netip.AddrPort, observed BackendOptions)
	// HandoffFailed reports a flow whose conntrack entry could not be
	// made; both ends were reset.
	HandoffFailed(service netip.AddrPort, err error)
	// SendFailed reports a packet the engine built for service that
	// could not be sent, and why: at most one a second, while the
	// SendError counter counts every one.
	SendFailed(service netip.AddrPort, err error)
	// HandedOff reports a flow handed to the kernel, with how long each
	// step took from its client's valid ACK. It is called for every
	// hand-off and must not allocate.
	HandedOff(service int, t HandoffTiming)
	// AttackStarted and AttackEnded mark a period of pressure on a
	// service (see attack.go): one start and one end per attack.
	AttackStarted(AttackStart)
	AttackEnded(AttackEnd)
}

// ModeChange is one switch of a service's state, with the figures it was
// decided on.
type ModeChange struct {
	Service  netip.AddrPort
	From, To State
	Reason   string // ReasonHalfOpen, ReasonSYNRate or ReasonCalm
	Sample
}

// NopEvents discards every event.
type NopEvents struct{}

func (NopEvents) ModeChanged(ModeChange)                                {}
func (NopEvents) BackendLearned(netip.AddrPort, BackendOptions, string) {}
func (NopEvents) BackendMismatch(netip.AddrPort, BackendOptions)        {}
func (NopEvents) HandoffFailed(netip.AddrPort, error)                   {}
func (NopEvents) SendFailed(netip.AddrPort, error)                      {}
func (NopEvents) HandedOff(int, HandoffTiming)                          {}
func (NopEvents) AttackStarted(AttackStart)                             {}
func (NopEvents) AttackEnded(AttackEnd)                                 {}

// HandoffTiming is how long each step of a flow's hand-off took, for the
// handshake histograms.
type HandoffTiming struct {
	// Backend is from the client's valid ACK to the backend's SYN-ACK:
	// the replayed SYN's way out, the backend, the answer's way back
	// through the queue.
	Backend time.Duration
	// Wait is from the SYN-ACK to the hand-off taking the flow: its
	// worker after the batch's verdicts, or a hand-off goroutine.
	Wait time.Duration
	// Entry is the conntrack entry's creation, a netlink round trip;
	// the window update leaves right after it.
	Entry time.Duration
	// NoEntry says none was made: the flow ended, or began to, carried
	// by the fast path, before the engine heard it was answered.
	NoEntry bool
}

// Total is the whole hand-off, from the client's valid ACK.
func (t HandoffTiming) Total() time.Duration { return t.Backend + t.Wait + t.Entry }
