package conntrack

import (
	"bytes"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	ctnl "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/handoff"
)

func TestReplySeqAdjust(t *testing.T) {
	tests := []struct {
		name                 string
		cookieISN, serverISN uint32
		want                 SeqAdjust
		ok                   bool
	}{
		{"cookie above server", 0x9e3779b9, 0x12345678, SeqAdjust{0x12345679, 0x8c032341, 0x8c032341}, true},
		{"cookie below server wraps", 0x10, 0x20, SeqAdjust{0x21, 0xfffffff0, 0xfffffff0}, true},
		{"server near 2^32", 0x100, 0xffffff00, SeqAdjust{0xffffff01, 0x200, 0x200}, true},
		{"position wraps to 0", 0x7fffffff, 0xffffffff, SeqAdjust{1, 0x80000000, 0x80000000}, true},
		{"cookie 0", 0, 0x1, SeqAdjust{0x2, 0xffffffff, 0xffffffff}, true},
		{"server 0", 0x1, 0, SeqAdjust{0x1, 0x1, 0x1}, true},
		{"zero delta", 0xabcdef01, 0xabcdef01, SeqAdjust{}, false},
		{"zero delta at 0", 0, 0, SeqAdjust{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := replySeqAdjust(tt.cookieISN, tt.serverISN)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("replySeqAdjust(%#x, %#x) = %+v, %v; want %+v, %v",
					tt.cookieISN, tt.serverISN, got, ok, tt.want, tt.ok)
			}
			if !ok {
				return
			}
			// Applied to the backend's sequence numbers, the adjustment
			// yields the client's: serverISN+1+n -> cookieISN+1+n.
			for _, n := range []uint32{0, 1, 1 << 31, math.MaxUint32} {
				if s := tt.serverISN + 1 + n + got.After; s != tt.cookieISN+1+n {
					t.Errorf("server seq %#x adjusts to %#x, want %#x", tt.serverISN+1+n, s, tt.cookieISN+1+n)
				}
			}
			// ti-mo/conntrack drops an adjustment with any zero field.
			if got.Position == 0 || got.Before == 0 || got.After == 0 {
				t.Errorf("adjustment %+v has a zero field: ti-mo would not send it", got)
			}
		})
	}
}

// TestPackTCPFlags checks the packing against what ti-mo/conntrack puts on
// the wire: ProtoInfoTCP.marshal encodes OriginalFlags and ReplyFlags with
// netfilter.Uint16Bytes, and the kernel reads the two bytes as struct
// nf_ct_tcp_flags {__u8 flags; __u8 mask;}.
func TestPackTCPFlags(t *testing.T) {
	for _, tt := range []struct{ set, mask TCPFlags }{
		{FlagSACKPerm | FlagBeLiberal, managedFlags},
		{managedFlags, managedFlags},
		{FlagWindowScale, 0xff},
		{0, managedFlags},
	} {
		packed := packTCPFlags(tt.set, tt.mask)
		wire := netfilter.Uint16Bytes(packed)
		if want := []byte{byte(tt.set), byte(tt.mask)}; !bytes.Equal(wire, want) {
			t.Errorf("packTCPFlags(%v, %v) = %#04x, on the wire %x; want flags then mask, %x",
				tt.set, tt.mask, packed, wire, want)
		}
		if got := unpackTCPFlags(packed); got != tt.set {
			t.Errorf("unpackTCPFlags(%#04x) = %v, want %v", packed, got, tt.set)
		}
	}
	// The kernel dumps the flags byte with a zero mask.
	if got := unpackTCPFlags(0x0b00); got != managedFlags {
		t.Errorf("unpackTCPFlags(0x0b00) = %v, want %v", got, managedFlags)
	}
}

func TestHandoffFlags(t *testing.T) {
	tests := []struct {
		client, server cookies.WindowScale
		want           TCPFlags
	}{
		{7, 9, FlagWindowScale | FlagSACKPerm | FlagBeLiberal},
		{0, 0, FlagWindowScale | FlagSACKPerm | FlagBeLiberal},
		{7, cookies.NoWindowScale, FlagSACKPerm | FlagBeLiberal},
		{cookies.NoWindowScale, 9, FlagSACKPerm | FlagBeLiberal},
		{cookies.NoWindowScale, cookies.NoWindowScale, FlagSACKPerm | FlagBeLiberal},
	}
	for _, tt := range tests {
		if got := handoffFlags(tt.client, tt.server); got != tt.want {
			t.Errorf("handoffFlags(%v, %v) = %v, want %v", tt.client, tt.server, got, tt.want)
		}
	}
}

var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestHandoffFlow(t *testing.T) {
	client := netip.MustParseAddrPort("198.51.100.2:40000")
	server := netip.MustParseAddrPort("203.0.113.2:80")
	tuple := func(src, dst netip.AddrPort) ctnl.Tuple {
		return ctnl.Tuple{
			IP:    ctnl.IPTuple{SourceAddress: src.Addr(), DestinationAddress: dst.Addr()},
			Proto: ctnl.ProtoTuple{Protocol: 6, SourcePort: src.Port(), DestinationPort: dst.Port()},
		}
	}
	tests := []struct {
		name string
		h    handoff.Flow
		want ctnl.Flow
	}{
		{
			name: "scaled, adjusted",
			h: handoff.Flow{Client: client, Server: server, CookieISN: 0x100, ServerISN: 0xffffff00,
				ClientWindowScale: 7, ServerWindowScale: 9, Mark: 0x5a6e, Timeout: 90 * time.Second},
			want: ctnl.Flow{
				Status:     ctnl.StatusSeenReply | ctnl.StatusAssured | ctnl.StatusConfirmed,
				Timeout:    90,
				Mark:       0x5a6e,
				TupleOrig:  tuple(client, server),
				TupleReply: tuple(server, client),
				ProtoInfo: ctnl.ProtoInfo{TCP: &ctnl.ProtoInfoTCP{
					State:               3,
					OriginalWindowScale: 7,
					ReplyWindowScale:    9,
					OriginalFlags:       0x0b0b,
					ReplyFlags:          0x0b0b,
				}},
				SeqAdjReply: ctnl.SequenceAdjust{Direction: true, Position: 0xffffff01, OffsetBefore: 0x200, OffsetAfter: 0x200},
			},
		},
		{
			name: "unscaled, zero delta, default timeout, mapped client",
			h: handoff.Flow{
				Client:    netip.AddrPortFrom(netip.AddrFrom16(client.Addr().As16()), client.Port()),
				Server:    server,
				CookieISN: 0x42, ServerISN: 0x42,
				ClientWindowScale: cookies.NoWindowScale, ServerWindowScale: 9, Mark: 1,
			},
			want: ctnl.Flow{
				Status:     ctnl.StatusSeenReply | ctnl.StatusAssured | ctnl.StatusConfirmed,
				Timeout:    600,
				Mark:       1,
				TupleOrig:  tuple(client, server),
				TupleReply: tuple(server, client),
				ProtoInfo: ctnl.ProtoInfo{TCP: &ctnl.ProtoInfoTCP{
					State:         3,
					OriginalFlags: 0x0a0b,
					ReplyFlags:    0x0a0b,
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newFlow(tt.h, 10*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("flow (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHandoffFlowInvalid(t *testing.T) {
	good := handoff.Flow{
		Client:            netip.MustParseAddrPort("198.51.100.2:40000"),
		Server:            netip.MustParseAddrPort("203.0.113.2:80"),
		ClientWindowScale: 7, ServerWindowScale: 9, Mark: 1,
	}
	if _, err := newFlow(good, time.Minute); err != nil {
		t.Fatalf("valid hand-off rejected: %v", err)
	}
	tests := []struct {
		name   string
		modify func(*handoff.Flow)
		want   string
	}{
		{"no client", func(h *handoff.Flow) { h.Client = netip.AddrPort{} }, "addresses are required"},
		{"mixed families", func(h *handoff.Flow) { h.Server = netip.MustParseAddrPort("[2001:db8:1::2]:80") }, "different address families"},
		{"zoned", func(h *handoff.Flow) {
			h.Client = netip.MustParseAddrPort("[fe80::1%eth0]:40000")
			h.Server = netip.MustParseAddrPort("[2001:db8:1::2]:80")
		}, "zone"},
		{"client port 0", func(h *handoff.Flow) { h.Client = netip.AddrPortFrom(h.Client.Addr(), 0) }, "ports"},
		{"server port 0", func(h *handoff.Flow) { h.Server = netip.AddrPortFrom(h.Server.Addr(), 0) }, "ports"},
		{"client scale 15", func(h *handoff.Flow) { h.ClientWindowScale = 15 }, "client window scale"},
		{"server scale -2", func(h *handoff.Flow) { h.ServerWindowScale = -2 }, "server window scale"},
		{"mark 0", func(h *handoff.Flow) { h.Mark = 0 }, "mark"},
		{"negative timeout", func(h *handoff.Flow) { h.Timeout = -time.Second }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := good
			tt.modify(&h)
			_, err := newFlow(h, time.Minute)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestTimeoutSeconds(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want uint32
	}{
		{time.Nanosecond, 1},
		{time.Second, 1},
		{1500 * time.Millisecond, 2},
		{5 * time.Minute, 300},
		{DefaultTimeout, 432000},
		{math.MaxUint32 * time.Second, math.MaxUint32},
		{math.MaxInt64, math.MaxUint32},
	}
	for _, tt := range tests {
		if got := timeoutSeconds(tt.d); got != tt.want {
			t.Errorf("timeoutSeconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

// TestEntryFromFlow decodes a flow as the kernel dumps it: flags byte first,
// mask 0; window scales reported whatever the flags say.
func TestEntryFromFlow(t *testing.T) {
	f := ctnl.NewFlow(6, ctnl.StatusSeenReply|ctnl.StatusAssured|ctnl.StatusConfirmed|ctnl.StatusSeqAdjust,
		netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8:1::2"), 40000, 80, 299, 7)
	f.ID = 42
	f.ProtoInfo.TCP = &ctnl.ProtoInfoTCP{
		State: 3, OriginalWindowScale: 7, ReplyWindowScale: 9,
		OriginalFlags: 0x0b00, ReplyFlags: 0x0a00,
	}
	f.SeqAdjReply = ctnl.SequenceAdjust{Direction: true, Position: 5, OffsetBefore: 6, OffsetAfter: 7}

	want := Entry{
		Client:            netip.MustParseAddrPort("[2001:db8::2]:40000"),
		Server:            netip.MustParseAddrPort("[2001:db8:1::2]:80"),
		ID:                42,
		Mark:              7,
		Status:            StatusSeenReply | StatusAssured | StatusConfirmed | StatusSeqAdjust,
		TCPState:          TCPEstablished,
		Timeout:           299 * time.Second,
		ClientWindowScale: 7,
		ServerWindowScale: cookies.NoWindowScale, // reply flags lack WINDOW_SCALE
		ClientFlags:       FlagWindowScale | FlagSACKPerm | FlagBeLiberal,
		ServerFlags:       FlagSACKPerm | FlagBeLiberal,
		SeqAdjReply:       SeqAdjust{Position: 5, Before: 6, After: 7},
	}
	if diff := cmp.Diff(want, entryFromFlow(f), cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("entry (-want +got):\n%s", diff)
	}

	// No protoinfo: state NONE, no scales.
	f.ProtoInfo.TCP = nil
	e := entryFromFlow(f)
	if e.TCPState != TCPNone || e.ClientWindowScale != cookies.NoWindowScale || e.ServerWindowScale != cookies.NoWindowScale {
		t.Errorf("without protoinfo: state %v, scales %v/%v", e.TCPState, e.ClientWindowScale, e.ServerWindowScale)
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{(StatusSeenReply | StatusAssured | StatusConfirmed | StatusSeqAdjust).String(), "SEEN_REPLY|ASSURED|CONFIRMED|SEQ_ADJUST"},
		{Status(0).String(), "0"},
		{(StatusDying | 1<<20).String(), "DYING|0x100000"},
		{TCPEstablished.String(), "ESTABLISHED"},
		{TCPSynSent2.String(), "SYN_SENT2"},
		{TCPState(13).String(), "TCPState(13)"},
		{(FlagWindowScale | FlagSACKPerm | FlagBeLiberal).String(), "WINDOW_SCALE|SACK_PERM|BE_LIBERAL"},
		{cookies.NoWindowScale.String(), "none"},
		{cookies.WindowScale(14).String(), "14"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	if !(StatusAssured | StatusSeenReply).Has(StatusAssured) || StatusAssured.Has(StatusAssured|StatusSeenReply) {
		t.Error("Status.Has is not an all-bits test")
	}
}
