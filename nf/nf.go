// Package nf names the netfilter values that the queue and the engine
// share: a queued packet's verdict and the hook it was queued from. It
// imports nothing, so the engine can speak of verdicts without the queue's
// netlink dependencies.
package nf

import "fmt"

// Verdict is the fate of one queued packet.
type Verdict uint8

// Verdicts. The numeric values equal the kernel's NF_DROP and NF_ACCEPT.
const (
	Drop Verdict = iota
	Accept
)

// Verdicts the queue acts on but never sends as such.
const (
	// Hold gives no verdict now: the packet stays queued until it is
	// released.
	Hold Verdict = 0x80 + iota
	// AcceptRewritten accepts the packet with the bytes the handler
	// rewrote in place.
	AcceptRewritten
)

func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case Accept:
		return "accept"
	case Hold:
		return "hold"
	case AcceptRewritten:
		return "accept_rewritten"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Hook is the netfilter hook a packet was queued from, numbered as the
// kernel's enum nf_inet_hooks.
type Hook uint8

// Hooks.
const (
	Prerouting Hook = iota
	Input
	Forward
	Output
	Postrouting
	// Unknown is for callers that cannot tell.
	Unknown Hook = 0xff
)

var hookNames = [...]string{"prerouting", "input", "forward", "output", "postrouting"}

func (h Hook) String() string {
	if int(h) < len(hookNames) {
		return hookNames[h]
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}
