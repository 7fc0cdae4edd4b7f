package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	ctnl "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
)

// Entry is what synguard cares about in a kernel conntrack entry of a TCP flow.
type Entry struct {
	// Client and Server give the original direction: Client -> Server.
	Client, Server netip.AddrPort

	ID       uint32        // the kernel's identifier of the entry
	Mark     uint32        // connmark
	Status   Status        // IPS_* bits
	TCPState TCPState      // TCPNone when the kernel reported no TCP protoinfo
	Timeout  time.Duration // remaining lifetime

	// Window-scale shifts in use per direction; cookies.NoWindowScale when the
	// direction's WINDOW_SCALE flag is clear.
	ClientWindowScale, ServerWindowScale cookies.WindowScale
	// Tracking flags per direction.
	ClientFlags, ServerFlags TCPFlags

	// Sequence adjustments per direction; zero when the entry has none.
	SeqAdjOrig, SeqAdjReply SeqAdjust
}

// entryFromFlow converts a dumped ti-mo flow.
func entryFromFlow(f ctnl.Flow) Entry {
	e := Entry{
		Client:  netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress, f.TupleOrig.Proto.SourcePort),
		Server:  netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort),
		ID:      f.ID,
		Mark:    f.Mark,
		Status:  Status(f.Status),
		Timeout: time.Duration(f.Timeout) * time.Second,
		SeqAdjOrig: SeqAdjust{
			Position: f.SeqAdjOrig.Position,
			Before:   f.SeqAdjOrig.OffsetBefore,
			After:    f.SeqAdjOrig.OffsetAfter,
		},
		SeqAdjReply: SeqAdjust{
			Position: f.SeqAdjReply.Position,
			Before:   f.SeqAdjReply.OffsetBefore,
			After:    f.SeqAdjReply.OffsetAfter,
		},
		ClientWindowScale: cookies.NoWindowScale,
		ServerWindowScale: cookies.NoWindowScale,
	}
	if tcp := f.ProtoInfo.TCP; tcp != nil {
		e.TCPState = TCPState(tcp.State)
		e.ClientFlags = unpackTCPFlags(tcp.OriginalFlags)
		e.ServerFlags = unpackTCPFlags(tcp.ReplyFlags)
		if e.ClientFlags&FlagWindowScale != 0 {
			e.ClientWindowScale = cookies.WindowScale(tcp.OriginalWindowScale)
		}
		if e.ServerFlags&FlagWindowScale != 0 {
			e.ServerWindowScale = cookies.WindowScale(tcp.ReplyWindowScale)
		}
	}
	return e
}

// isTCP reports whether f is a TCP flow in the default zone, where Create
// puts its entries.
func isTCP(f ctnl.Flow) bool {
	return f.TupleOrig.Proto.Protocol == unix.IPPROTO_TCP && f.Zone == 0
}

// Status is the kernel's bitfield of an entry's state (enum ip_conntrack_status).
type Status uint32

// Status bits.
const (
	StatusExpected     Status = 1 << 0  // IPS_EXPECTED
	StatusSeenReply    Status = 1 << 1  // IPS_SEEN_REPLY: packets seen both ways
	StatusAssured      Status = 1 << 2  // IPS_ASSURED: never evicted early
	StatusConfirmed    Status = 1 << 3  // IPS_CONFIRMED: in the table
	StatusSrcNAT       Status = 1 << 4  // IPS_SRC_NAT
	StatusDstNAT       Status = 1 << 5  // IPS_DST_NAT
	StatusSeqAdjust    Status = 1 << 6  // IPS_SEQ_ADJUST: seq/ack are translated
	StatusSrcNATDone   Status = 1 << 7  // IPS_SRC_NAT_DONE
	StatusDstNATDone   Status = 1 << 8  // IPS_DST_NAT_DONE
	StatusDying        Status = 1 << 9  // IPS_DYING
	StatusFixedTimeout Status = 1 << 10 // IPS_FIXED_TIMEOUT
	StatusTemplate     Status = 1 << 11 // IPS_TEMPLATE
	StatusUntracked    Status = 1 << 12 // IPS_UNTRACKED
	StatusHelper       Status = 1 << 13 // IPS_HELPER
	StatusOffload      Status = 1 << 14 // IPS_OFFLOAD
	StatusHWOffload    Status = 1 << 15 // IPS_HW_OFFLOAD
)

var statusNames = [16]string{
	"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
	"SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT",
	"TEMPLATE", "UNTRACKED", "HELPER", "OFFLOAD", "HW_OFFLOAD",
}

// Has reports whether all bits of want are set in s.
func (s Status) Has(want Status) bool { return s&want == want }

func (s Status) String() string { return bitNames(uint64(s), statusNames[:]) }

// TCPState is conntrack's state of a TCP flow (enum tcp_conntrack).
type TCPState uint8

// TCP states.
const (
	TCPNone        TCPState = 0
	TCPSynSent     TCPState = 1
	TCPSynRecv     TCPState = 2
	TCPEstablished TCPState = tcpEstablished
	TCPFinWait     TCPState = 4
	TCPCloseWait   TCPState = 5
	TCPLastAck     TCPState = 6
	TCPTimeWait    TCPState = 7
	TCPClose       TCPState = 8
	TCPSynSent2    TCPState = 9
)

var tcpStateNames = [...]string{
	"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
	"CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2",
}

// String returns the state's name as the conntrack tool prints it.
func (s TCPState) String() string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("TCPState(%d)", uint8(s))
}

// bitNames renders v as names[i] joined by "|" for each set bit i, with
// unnamed bits in hex.
func bitNames(v uint64, names []string) string {
	if v == 0 {
		return "0"
	}
	var b strings.Builder
	for i, name := range names {
		if v&(1<<i) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		b.WriteString(name)
		v &^= 1 << i
	}
	if v != 0 {
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		fmt.Fprintf(&b, "%#x", v)
	}
	return b.String()
}
