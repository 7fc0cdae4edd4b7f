package rawsock

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

func TestLinkFrom(t *testing.T) {
	mac := []byte{0x02, 0x00, 0x5e, 0x00, 0x53, 0x01}
	for _, tt := range []struct {
		name  string
		index uint32
		hw    []byte
		ok    bool
	}{
		{"ethernet neighbour", 3, mac, true},
		{"sent by this host", 0, mac, false},
		{"index beyond int32", 1 << 31, mac, false},
		{"no address (tunnel)", 3, nil, false},
		{"not ethernet", 3, []byte{1, 2, 3, 4}, false},
		{"eight bytes", 3, []byte{2, 0, 0, 0, 0, 0, 0, 1}, false},
		{"all zero (loopback)", 1, make([]byte, 6), false},
		{"group address", 3, []byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, false},
		{"broadcast", 3, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false},
	} {
		l, ok := LinkFrom(tt.index, tt.hw)
		if ok != tt.ok || l.IsValid() != tt.ok {
			t.Errorf("%s: LinkFrom(%d, %x) = %v, %v; want ok %v", tt.name, tt.index, tt.hw, l, ok, tt.ok)
		}
	}
	hw := bytes.Clone(mac)
	l, _ := LinkFrom(3, hw)
	hw[5] = 0x99
	if l.addr[5] != 0x01 {
		t.Error("Link keeps a reference to the caller's buffer")
	}
}

// linkTo returns the Link from ns's eth0 to the neighbour whose eth0 is in
// peer.
func linkTo(t *testing.T, ns, peer *netns.NS) Link {
	t.Helper()
	var index int
	var mac net.HardwareAddr
	for _, side := range []struct {
		ns *netns.NS
		do func(*net.Interface)
	}{
		{ns, func(i *net.Interface) { index = i.Index }},
		{peer, func(i *net.Interface) { mac = i.HardwareAddr }},
	} {
		if err := side.ns.Do(func() error {
			i, err := net.InterfaceByName("eth0")
			if err == nil {
				side.do(i)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	l, ok := LinkFrom(uint32(index), mac)
	if !ok {
		t.Fatalf("no link from eth0 %d to %s", index, mac)
	}
	return l
}

// OpenTCPReceiver opens a raw TCP socket of family in ns, closed at
// cleanup: it gets a copy of each TCP segment ns's IP stack accepts as its
// own (which a frame sent to another MAC address is not), and a read
// gives up after timeout. The package's external tests use it too.
func OpenTCPReceiver(t *testing.T, ns *netns.NS, family int, timeout time.Duration) int {
	t.Helper()
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// delivered returns a function that reads the TCP segments ns's IP stack
// took as its own (OpenTCPReceiver) until none comes for 300 ms.
func delivered(t *testing.T, ns *netns.NS, family int) func() [][]byte {
	t.Helper()
	fd := OpenTCPReceiver(t, ns, family, 300*time.Millisecond)
	return func() [][]byte {
		var got [][]byte
		buf := make([]byte, 2048)
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return got
			}
			got = append(got, bytes.Clone(buf[:n]))
		}
	}
}

// seqOf is the sequence number of the TCP segment in p (an IPv4 packet
// with its header, or an IPv6 raw socket's TCP segment alone).
func seqOf(p []byte, v6 bool) uint32 {
	if !v6 {
		p = p[int(p[0]&0x0f)*4:]
	}
	return uint32(p[4])<<24 | uint32(p[5])<<16 | uint32(p[6])<<8 | uint32(p[7])
}

func synack(t *testing.T, src, dst netip.AddrPort, seq uint32) []byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, &packet.Segment{Src: src, Dst: dst, Seq: seq, Ack: 1, Flags: packet.SYN | packet.ACK, Window: 64240})
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// TestAddViaSendsOnTheIngressLink: a packet added with its link reaches
// that neighbour although this host's routing table has no way there
// (a blackhole route), never crosses the output hooks, and goes to the
// neighbour's MAC address: the same packet given another MAC is not
// taken by the peer's stack.
func TestAddViaSendsOnTheIngressLink(t *testing.T) {
	a, b := newPair(t)
	countMarked(t, a)
	ctx := context.Background()
	for _, r := range [][]string{
		{"-4", "route", "add", "blackhole", addrB4.String() + "/32"},
		{"-6", "route", "add", "blackhole", addrB6.String() + "/128"},
	} {
		if err := a.Run(ctx, "ip", r...); err != nil {
			t.Fatal(err)
		}
	}
	s := openIn(t, a)
	if !s.CanReplyOnLink() {
		t.Fatal("no packet socket")
	}
	link := linkTo(t, a, b)
	wrong := link
	wrong.addr[5] ^= 0x55

	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		family   int
		save     string
	}{
		{"IPv4", netip.AddrPortFrom(addrA4, 80), netip.AddrPortFrom(addrB4, 40001), unix.AF_INET, "iptables-save"},
		{"IPv6", netip.AddrPortFrom(addrA6, 80), netip.AddrPortFrom(addrB6, 40002), unix.AF_INET6, "ip6tables-save"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v6 := tc.family == unix.AF_INET6
			rx := delivered(t, b, tc.family)
			if err := s.Send(synack(t, tc.src, tc.dst, 1), tc.dst.Addr()); err == nil {
				t.Fatal("a routed send got past the blackhole route; the test proves nothing")
			}
			before := markedCount(t, a, tc.save)
			batch := s.NewBatch()
			for seq, l := range []Link{link, wrong, link} {
				if !batch.AddVia(synack(t, tc.src, tc.dst, uint32(100+seq)), tc.dst.Addr(), l) {
					t.Fatalf("AddVia %d refused", seq)
				}
			}
			batch.Flush(func(i int, err error) { t.Errorf("packet %d not sent: %v", i, err) })
			var seqs []uint32
			for _, p := range rx() {
				seqs = append(seqs, seqOf(p, v6))
			}
			if len(seqs) != 2 || seqs[0] != 100 || seqs[1] != 102 {
				t.Fatalf("peer's stack took segments %v, want [100 102] (101 went to another MAC)", seqs)
			}
			if n := markedCount(t, a, tc.save) - before; n != 0 {
				t.Fatalf("%d of the link's packets crossed OUTPUT", n)
			}
		})
	}
}

// TestAddViaFallsBackToRouting: a packet whose link cannot take it (the
// interface is gone) is routed instead, and not reported as failed.
func TestAddViaFallsBackToRouting(t *testing.T) {
	a, b := newPair(t)
	s := openIn(t, a)
	rx := delivered(t, b, unix.AF_INET)
	gone, ok := LinkFrom(9999, []byte{0x02, 0, 0, 0, 0, 1})
	if !ok {
		t.Fatal("LinkFrom refused the test's link")
	}
	src, dst := netip.AddrPortFrom(addrA4, 80), netip.AddrPortFrom(addrB4, 40003)
	batch := s.NewBatch()
	batch.AddVia(synack(t, src, dst, 7), dst.Addr(), gone)
	batch.Flush(func(i int, err error) { t.Errorf("packet %d reported failed: %v", i, err) })
	got := rx()
	if len(got) != 1 || seqOf(got[0], false) != 7 {
		t.Fatalf("peer got %d segments, want the one routed instead", len(got))
	}
}

func TestAddViaAllocatesNothing(t *testing.T) {
	a, b := newPair(t)
	s := openIn(t, a)
	link := linkTo(t, a, b)
	src, dst := netip.AddrPortFrom(addrA4, 80), netip.AddrPortFrom(addrB4, 40004)
	p := synack(t, src, dst, 1)
	batch := s.NewBatch()
	failed := func(int, error) { t.Error("send failed") }
	if n := testing.AllocsPerRun(100, func() {
		for range 32 {
			batch.AddVia(p, dst.Addr(), link)
		}
		batch.Flush(failed)
	}); n != 0 {
		t.Fatalf("AddVia ×32 + Flush allocates %.1f times", n)
	}
}
