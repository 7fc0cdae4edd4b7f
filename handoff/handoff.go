// Package handoff describes a flow whose handshake synguard completed with
// a SYN cookie, as the engine hands it to the kernel's connection
// tracking: the engine fills in a Flow, and package conntrack turns it
// into a ctnetlink create. It holds only types, so the engine depends on
// nothing of netlink.
package handoff

import (
	"errors"
	"net/netip"
	"time"

	"github.com/synguard/synguard/cookies"
)

// Flow is a cookie-validated flow whose backend has answered.
type Flow struct {
	// Client and Server give the original direction: Client -> Server.
	Client, Server netip.AddrPort

	// CookieISN is the ISN the gateway sent the client (the seq of its
	// SYN-ACK); ServerISN is the ISN in the backend's SYN-ACK.
	CookieISN uint32
	ServerISN uint32

	// ClientWindowScale is the shift the client announced in its SYN,
	// ServerWindowScale the one in the backend's SYN-ACK;
	// cookies.NoWindowScale when that side sent no window-scale option.
	ClientWindowScale, ServerWindowScale cookies.WindowScale

	// Mark is the connmark that identifies handed-off flows: the firewall
	// lets marked flows pass without queueing them. Must be non-zero.
	Mark uint32

	// Timeout is the entry's lifetime until the next packet of the flow,
	// when the kernel replaces it with its own per-state timeout. Zero
	// means the namespace's nf_conntrack_tcp_timeout_established.
	Timeout time.Duration
}

var (
	// ErrExists reports that the kernel already has an entry for the
	// flow's tuple. For a retried hand-off that means an earlier attempt
	// succeeded; for a new flow, that a client reused the ports of one
	// whose entry lingers.
	ErrExists = errors.New("entry exists")
	// ErrNotFound reports that the kernel has no entry for the tuple.
	ErrNotFound = errors.New("no such entry")
)
