package rawsock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
	"github.com/synguard/synguard/rawsock"
)

const mark = 0x53470001

// openSender opens a Sender inside ns.
func openSender(t *testing.T, ns *netns.NS) *rawsock.Sender {
	t.Helper()
	var s *rawsock.Sender
	if err := ns.Do(func() (err error) {
		s, err = rawsock.Open(mark)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// tcpListener is a raw socket inside ns that receives a copy of every TCP
// segment delivered locally.
func tcpListener(t *testing.T, ns *netns.NS, v6 bool) int {
	t.Helper()
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	return rawsock.OpenTCPReceiver(t, ns, family, 200*time.Millisecond)
}

// received reads TCP segments from a tcpListener until it stays quiet,
// returning the sequence numbers of the SYN-ACKs (the kernel answers each
// with a RST, which the listener sees too).
func received(t *testing.T, fd int, v6 bool) []uint32 {
	t.Helper()
	var seqs []uint32
	for _, tcp := range readTCP(t, fd, v6) {
		if tcp[13] == 0x12 { // SYN|ACK
			seqs = append(seqs, uint32(tcp[4])<<24|uint32(tcp[5])<<16|uint32(tcp[6])<<8|uint32(tcp[7]))
		}
	}
	return seqs
}

// readTCP reads the TCP segments a tcpListener received until it stays
// quiet. An IPv4 raw socket delivers the IP header, which is cut off; an
// IPv6 one only the TCP segment.
func readTCP(t *testing.T, fd int, v6 bool) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, bytes.Clone(tcpOf(buf[:n], v6)))
	}
}

func segment(t testing.TB, src, dst netip.AddrPort, seq uint32) []byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, &packet.Segment{Src: src, Dst: dst, Seq: seq, Ack: 1, Flags: packet.SYN | packet.ACK})
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// markedPackets reads the packet counter of the OUTPUT rule matching the
// engine's mark.
func markedPackets(t *testing.T, ns *netns.NS, v6 bool) string {
	t.Helper()
	cmd := "iptables"
	if v6 {
		cmd = "ip6tables"
	}
	out, err := ns.Output(context.Background(), cmd, "-w", "-t", "raw", "-L", "OUTPUT", "-v", "-n", "-x")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if strings.Contains(line, "mark match") {
			return strings.Fields(line)[0]
		}
	}
	t.Fatalf("no mark rule in:\n%s", out)
	return ""
}

// TestBatchSends sends batches of both families and checks that every
// packet arrives, in order, carrying the mark.
func TestBatchSends(t *testing.T) {
	ns := nstest.New(t, "sgt-raw")
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if err := ns.Run(context.Background(), cmd, "-w", "-t", "raw", "-A", "OUTPUT", "-m", "mark", "--mark", fmt.Sprint(mark)); err != nil {
			t.Fatal(err)
		}
	}
	s := openSender(t, ns)
	rx4, rx6 := tcpListener(t, ns, false), tcpListener(t, ns, true)
	b := s.NewBatch()

	src4, dst4 := netip.MustParseAddrPort("127.0.0.1:80"), netip.MustParseAddrPort("127.0.0.2:40000")
	src6, dst6 := netip.MustParseAddrPort("[::1]:80"), netip.MustParseAddrPort("[::1]:40000")
	const n = rawsock.BatchSize
	for i := range n {
		if !b.Add(segment(t, src4, dst4, uint32(i)), dst4.Addr()) {
			t.Fatalf("Add of IPv4 packet %d refused", i)
		}
		if !b.Add(segment(t, src6, dst6, uint32(1000+i)), dst6.Addr()) {
			t.Fatalf("Add of IPv6 packet %d refused", i)
		}
	}
	if b.Add(segment(t, src4, dst4, 99999), dst4.Addr()) {
		t.Fatal("Add to a full batch accepted")
	}
	var failures []error
	b.Flush(func(_ int, err error) { failures = append(failures, err) })
	if len(failures) > 0 {
		t.Fatalf("Flush failures: %v", failures)
	}

	for _, tc := range []struct {
		v6    bool
		fd    int
		first uint32
	}{{false, rx4, 0}, {true, rx6, 1000}} {
		got := received(t, tc.fd, tc.v6)
		if len(got) != n {
			t.Fatalf("v6=%v: received %d packets, want %d", tc.v6, len(got), n)
		}
		for i, seq := range got {
			if seq != tc.first+uint32(i) {
				t.Fatalf("v6=%v: packet %d has seq %d, want %d", tc.v6, i, seq, tc.first+uint32(i))
			}
		}
		if got := markedPackets(t, ns, tc.v6); got != fmt.Sprint(n) {
			t.Fatalf("v6=%v: %s packets carried the mark, want %d", tc.v6, got, n)
		}
	}

	// A flushed batch is empty and takes packets again.
	if !b.Add(segment(t, src4, dst4, 7), dst4.Addr()) {
		t.Fatal("Add after Flush refused")
	}
	b.Flush(nil)
	if got := received(t, rx4, false); len(got) != 1 || got[0] != 7 {
		t.Fatalf("after the second Flush received %v, want [7]", got)
	}
}

// TestBatchReportsFailures sends a batch in which some packets have no
// route: those are reported by index, the others still go out.
func TestBatchReportsFailures(t *testing.T) {
	ns := nstest.New(t, "sgt-raw")
	s := openSender(t, ns)
	rx := tcpListener(t, ns, false)
	b := s.NewBatch()
	src := netip.MustParseAddrPort("127.0.0.1:80")
	good, bad := netip.MustParseAddrPort("127.0.0.2:40000"), netip.MustParseAddrPort("203.0.113.9:40000")
	dsts := []netip.AddrPort{good, bad, good, bad, bad, good}
	for i, d := range dsts {
		if !b.Add(segment(t, src, d, uint32(i)), d.Addr()) {
			t.Fatalf("Add %d refused", i)
		}
	}
	var failed []int
	b.Flush(func(i int, err error) {
		if !errors.Is(err, unix.ENETUNREACH) {
			t.Errorf("packet %d: %v, want ENETUNREACH", i, err)
		}
		failed = append(failed, i)
	})
	if fmt.Sprint(failed) != "[1 3 4]" {
		t.Fatalf("failed %v, want [1 3 4]", failed)
	}
	if got := received(t, rx, false); fmt.Sprint(got) != "[0 2 5]" {
		t.Fatalf("received seqs %v, want [0 2 5]", got)
	}
}

// dataSegment is a TCP segment from src to dst with seq and a payload of
// size bytes, each its index's low byte.
func dataSegment(t testing.TB, src, dst netip.AddrPort, seq uint32, size int) []byte {
	t.Helper()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: 1, ACK: true, PSH: true, Window: 502}
	var ip gopacket.NetworkLayer
	if src.Addr().Is4() {
		ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	} else {
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip.(gopacket.SerializableLayer), tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestBatchSendsLargePackets: packets larger than a slot (a client's early
// data, sent on by the engine) go out intact, in the order they were
// added among the small ones, batch after batch; an empty packet and one
// larger than an IP packet can be are refused.
func TestBatchSendsLargePackets(t *testing.T) {
	ns := nstest.New(t, "sgt-raw")
	s := openSender(t, ns)
	b := s.NewBatch()
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"IPv4", netip.MustParseAddrPort("127.0.0.1:80"), netip.MustParseAddrPort("127.0.0.2:40000")},
		{"IPv6", netip.MustParseAddrPort("[::1]:80"), netip.MustParseAddrPort("[::1]:40001")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v6 := tc.src.Addr().Is6()
			rx := tcpListener(t, ns, v6)
			sizes := []int{0, 1400, 20, rawsock.SlotSize, 900, 1400}
			for round := range 2 {
				var want [][]byte
				for i, size := range sizes {
					p := dataSegment(t, tc.src, tc.dst, uint32(100*round+i), size)
					if !b.Add(p, tc.dst.Addr()) {
						t.Fatalf("round %d: Add of a %d-byte packet refused", round, len(p))
					}
					want = append(want, p)
				}
				b.Flush(func(i int, err error) { t.Errorf("round %d: packet %d not sent: %v", round, i, err) })
				got := readSegments(t, rx, v6)
				if len(got) != len(want) {
					t.Fatalf("round %d: received %d segments, want %d", round, len(got), len(want))
				}
				for i := range want {
					// The kernel fills in an IPv4 header's ID and checksum;
					// the TCP segment, checksum and payload included, is
					// compared.
					if w := tcpOf(want[i], false); !bytes.Equal(got[i], w) {
						t.Fatalf("round %d: segment %d differs from the one added (%d bytes, want %d)", round, i, len(got[i]), len(w))
					}
				}
			}
		})
	}
	dst := netip.MustParseAddr("127.0.0.2")
	if b.Add(nil, dst) {
		t.Error("Add of an empty packet accepted")
	}
	if b.Add(make([]byte, rawsock.MaxPacketSize+1), dst) {
		t.Error("Add of a packet larger than MaxPacketSize accepted")
	}
}

// readSegments is readTCP without the kernel's RSTs to the segments.
func readSegments(t *testing.T, fd int, v6 bool) [][]byte {
	t.Helper()
	var got [][]byte
	for _, tcp := range readTCP(t, fd, v6) {
		if tcp[13]&0x04 == 0 { // not RST
			got = append(got, tcp)
		}
	}
	return got
}

// tcpOf is the TCP segment of the IP packet p; with v6 p is a raw IPv6
// socket's read, the segment alone.
func tcpOf(p []byte, v6 bool) []byte {
	switch {
	case v6:
		return p
	case p[0]>>4 == 6:
		return p[40:]
	default:
		return p[int(p[0]&0x0f)*4:]
	}
}

func TestBatchAllocatesNothing(t *testing.T) {
	ns := nstest.New(t, "sgt-raw")
	s := openSender(t, ns)
	_ = tcpListener(t, ns, false)
	b := s.NewBatch()
	src, dst := netip.MustParseAddrPort("127.0.0.1:80"), netip.MustParseAddrPort("127.0.0.2:40000")
	p := segment(t, src, dst, 1)
	failed := func(int, error) { t.Error("send failed") }
	if n := testing.AllocsPerRun(100, func() {
		for range 32 {
			b.Add(p, dst.Addr())
		}
		b.Flush(failed)
	}); n != 0 {
		t.Fatalf("Add ×32 + Flush allocates %.1f times", n)
	}
}

// BenchmarkSend compares one sendto per packet with a Batch, per packet,
// sending SYN-ACKs out of a veth whose peer is down, which discards them
// (this kernel has no dummy interfaces).
func BenchmarkSend(b *testing.B) {
	ns := nstest.New(b, "sgb-raw")
	for _, args := range [][]string{
		{"link", "add", "d0", "type", "veth", "peer", "name", "d1"},
		{"link", "set", "d0", "arp", "off", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "d0"},
		{"route", "add", "198.18.0.0/15", "dev", "d0"},
	} {
		if err := ns.Run(context.Background(), "ip", args...); err != nil {
			b.Fatal(err)
		}
	}
	var s *rawsock.Sender
	if err := ns.Do(func() (err error) { s, err = rawsock.Open(mark); return err }); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	src, dst := netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("198.18.0.7:40000")
	p := segment(b, src, dst, 1)
	b.Run("sendto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := s.Send(p, dst.Addr()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sendmmsg", func(b *testing.B) {
		bt := s.NewBatch()
		failed := func(_ int, err error) { b.Fatal(err) }
		b.ReportAllocs()
		for b.Loop() {
			if !bt.Add(p, dst.Addr()) {
				bt.Flush(failed)
				bt.Add(p, dst.Addr())
			}
		}
		bt.Flush(failed)
	})
}
