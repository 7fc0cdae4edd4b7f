package conntrack

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	ctnl "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/handoff"
)

// SeqAdjust is a conntrack sequence adjustment for one direction: a packet of
// that direction whose seq is after Position has After added to its seq,
// otherwise Before; the other direction's acks are corrected by the same amount.
type SeqAdjust struct {
	Position, Before, After uint32
}

// replySeqAdjust returns the reply-direction (backend -> client) adjustment
// that turns the backend's sequence space into the one the client was
// promised by the cookie SYN-ACK, and ok=false when none is needed.
//
// The delta is cookieISN - serverISN modulo 2^32. Before and After are equal,
// so Position only has to be non-zero: ti-mo/conntrack sends an adjustment
// only when all three fields are non-zero, and the kernel uses Position solely
// to choose between Before and After. It is the backend's first data byte,
// serverISN+1, except when that wraps to 0.
func replySeqAdjust(cookieISN, serverISN uint32) (adj SeqAdjust, ok bool) {
	delta := cookieISN - serverISN
	if delta == 0 {
		return SeqAdjust{}, false
	}
	pos := serverISN + 1
	if pos == 0 {
		pos = 1
	}
	return SeqAdjust{Position: pos, Before: delta, After: delta}, true
}

// TCPFlags are conntrack's per-direction TCP tracking flags
// (IP_CT_TCP_FLAG_* in uapi/linux/netfilter/nf_conntrack_tcp.h).
type TCPFlags uint8

// The flags synguard sets or reads.
const (
	FlagWindowScale        TCPFlags = 0x01 // the direction's window-scale shift is in use
	FlagSACKPerm           TCPFlags = 0x02 // the direction may send SACK blocks
	FlagCloseInit          TCPFlags = 0x04 // the direction sent the first FIN
	FlagBeLiberal          TCPFlags = 0x08 // out-of-window segments are not marked INVALID
	FlagDataUnacknowledged TCPFlags = 0x10
	FlagMaxAckSet          TCPFlags = 0x20
	FlagExpChallengeAck    TCPFlags = 0x40
	FlagSimultaneousOpen   TCPFlags = 0x80
)

var tcpFlagNames = [8]string{
	"WINDOW_SCALE", "SACK_PERM", "CLOSE_INIT", "BE_LIBERAL",
	"DATA_UNACKNOWLEDGED", "MAXACK_SET", "EXP_CHALLENGE_ACK", "SIMULTANEOUS_OPEN",
}

func (f TCPFlags) String() string {
	return bitNames(uint64(f), tcpFlagNames[:])
}

// managedFlags are the flags a hand-off defines; the kernel applies the flag
// byte through this mask ("flags &= ~mask; flags |= set & mask").
const managedFlags = FlagWindowScale | FlagSACKPerm | FlagBeLiberal

// packTCPFlags packs the kernel's struct nf_ct_tcp_flags {__u8 flags; __u8
// mask;} into the uint16 ti-mo/conntrack puts on the wire in big-endian
// order, so the flags land in the first byte and the mask in the second.
func packTCPFlags(set, mask TCPFlags) uint16 {
	return uint16(set)<<8 | uint16(mask)
}

// unpackTCPFlags returns the flags byte of a packed nf_ct_tcp_flags.
func unpackTCPFlags(v uint16) TCPFlags { return TCPFlags(v >> 8) }

// handoffFlags returns the tracking flags for both directions. Window scaling
// is in effect only when both sides announced it (RFC 7323 §2.2), and the
// kernel takes the shifts from the entry only when both directions carry
// WINDOW_SCALE, so the flag is set in both or in neither.
//
// SACK_PERM only lets conntrack read SACK blocks when computing the acked
// edge; with it set, blocks a peer does send are honoured. BE_LIBERAL stops
// window tracking from marking segments INVALID: conntrack never saw the
// handshake, so its idea of the windows starts out as a guess.
func handoffFlags(client, server cookies.WindowScale) TCPFlags {
	f := FlagSACKPerm | FlagBeLiberal
	if client != cookies.NoWindowScale && server != cookies.NoWindowScale {
		f |= FlagWindowScale
	}
	return f
}

// Status bits the kernel requires on a hand-off: the flow has seen both
// directions and completed its handshake (ASSURED), and it is already in the
// table (CONFIRMED; without it the create fails with EBUSY).
const handoffStatus = StatusSeenReply | StatusAssured | StatusConfirmed

// DefaultTimeout is the kernel's default nf_conntrack_tcp_timeout_established,
// used for a zero handoff.Flow.Timeout when the namespace's sysctl cannot be read.
const DefaultTimeout = 5 * 24 * time.Hour

// TCP connection-tracking states (enum tcp_conntrack).
const tcpEstablished = 3

var errNoMark = errors.New("mark must be non-zero: it is how the firewall recognises handed-off flows")

// newEntry validates h and returns what its entry's request carries.
// defaultTimeout replaces a zero h.Timeout.
func newEntry(h handoff.Flow, defaultTimeout time.Duration) (entrySpec, error) {
	client := netip.AddrPortFrom(h.Client.Addr().Unmap(), h.Client.Port())
	server := netip.AddrPortFrom(h.Server.Addr().Unmap(), h.Server.Port())
	switch {
	case !client.Addr().IsValid() || !server.Addr().IsValid():
		return entrySpec{}, errors.New("client and server addresses are required")
	case client.Addr().Is4() != server.Addr().Is4():
		return entrySpec{}, errors.New("client and server are of different address families")
	case client.Addr().Zone() != "" || server.Addr().Zone() != "":
		return entrySpec{}, errors.New("addresses with a zone are not supported")
	case client.Port() == 0 || server.Port() == 0:
		return entrySpec{}, errors.New("ports must be non-zero")
	case !h.ClientWindowScale.Valid():
		return entrySpec{}, fmt.Errorf("client window scale %d out of range", h.ClientWindowScale)
	case !h.ServerWindowScale.Valid():
		return entrySpec{}, fmt.Errorf("server window scale %d out of range", h.ServerWindowScale)
	case h.Mark == 0:
		return entrySpec{}, errNoMark
	case h.Timeout < 0:
		return entrySpec{}, fmt.Errorf("negative timeout %v", h.Timeout)
	}

	timeout := h.Timeout
	if timeout == 0 {
		timeout = defaultTimeout
	}
	e := entrySpec{
		client:  client,
		server:  server,
		timeout: timeoutSeconds(timeout),
		mark:    h.Mark,
		flags:   handoffFlags(h.ClientWindowScale, h.ServerWindowScale),
	}
	if e.flags&FlagWindowScale != 0 {
		e.clientScale = uint8(h.ClientWindowScale)
		e.serverScale = uint8(h.ServerWindowScale)
	}
	e.adj, e.hasAdj = replySeqAdjust(h.CookieISN, h.ServerISN)
	return e, nil
}

// newFlow validates h and builds the ti-mo flow of its entry: the
// reference Create's hand-written request is tested against.
func newFlow(h handoff.Flow, defaultTimeout time.Duration) (ctnl.Flow, error) {
	e, err := newEntry(h, defaultTimeout)
	if err != nil {
		return ctnl.Flow{}, err
	}
	f := ctnl.NewFlow(unix.IPPROTO_TCP, ctnl.Status(handoffStatus),
		e.client.Addr(), e.server.Addr(), e.client.Port(), e.server.Port(),
		e.timeout, e.mark)
	f.ProtoInfo.TCP = &ctnl.ProtoInfoTCP{
		State:               tcpEstablished,
		OriginalWindowScale: e.clientScale,
		ReplyWindowScale:    e.serverScale,
		OriginalFlags:       packTCPFlags(e.flags, managedFlags),
		ReplyFlags:          packTCPFlags(e.flags, managedFlags),
	}
	if e.hasAdj {
		f.SeqAdjReply = ctnl.SequenceAdjust{
			Direction:    true,
			Position:     e.adj.Position,
			OffsetBefore: e.adj.Before,
			OffsetAfter:  e.adj.After,
		}
	}
	return f, nil
}

// timeoutSeconds converts d to the kernel's whole seconds, rounding up so a
// positive timeout never becomes 0 (which ti-mo rejects).
func timeoutSeconds(d time.Duration) uint32 {
	s := d / time.Second
	if d%time.Second != 0 {
		s++
	}
	switch {
	case s < 1:
		return 1
	case s > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(s)
}
