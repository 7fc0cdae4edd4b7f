package rawsock

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

// engineMark is the mark synguard's engine sends with (firewall's
// DefaultEngineMark).
const engineMark = 0x53470001

var (
	addrA4 = netip.MustParseAddr("198.51.100.1")
	addrB4 = netip.MustParseAddr("198.51.100.2")
	addrA6 = netip.MustParseAddr("2001:db8:c::1")
	addrB6 = netip.MustParseAddr("2001:db8:c::2")
)

// newPair makes two namespaces joined by a veth pair (eth0 in each), with
// A at .1 / ::1 and B at .2 / ::2, removed when the test ends.
func newPair(t *testing.T) (a, b *netns.NS) {
	t.Helper()
	return nstest.Pair(t, "sgrs", nstest.Addrs{V4: addrA4, V6: addrA6}, nstest.Addrs{V4: addrB4, V6: addrB6})
}

// openIn opens a Sender inside ns.
func openIn(t *testing.T, ns *netns.NS) *Sender {
	t.Helper()
	var s *Sender
	if err := ns.Do(func() (err error) {
		s, err = Open(engineMark)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// syn builds a SYN from src to dst.
func syn(t *testing.T, src, dst netip.AddrPort) []byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, &packet.Segment{
		Src: src, Dst: dst, Seq: 0x01020304, Flags: packet.SYN, Window: 64240,
		Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// receive waits for the TCP packet from port src on c and returns its
// bytes; other traffic (ARP, neighbour discovery) is skipped.
func receive(t *testing.T, c *lab.Capture, src netip.AddrPort) []byte {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		n, outgoing, err := c.Read(buf, 200*time.Millisecond)
		if errors.Is(err, lab.ErrCaptureTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var p packet.Packet
		if !outgoing && packet.Parse(buf[:n], &p) == nil && p.Source() == src {
			return append([]byte(nil), buf[:n]...)
		}
	}
	t.Fatalf("no packet from %s arrived", src)
	return nil
}

// markedCount reads the packet counter of the rule counting marked TCP
// packets in the raw OUTPUT chain (see countMarked).
var counterLine = regexp.MustCompile(`^\[(\d+):\d+\] -A OUTPUT -p tcp -m mark --mark 0x53470001`)

func markedCount(t *testing.T, ns *netns.NS, save string) int {
	t.Helper()
	out, err := ns.Output(context.Background(), save, "-c", "-t", "raw")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if m := counterLine.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatalf("%s has no marked-packet counter:\n%s", save, out)
	return 0
}

// countMarked adds rules without a target to ns's raw OUTPUT chains: they
// only count the TCP packets carrying the engine's mark.
func countMarked(t *testing.T, ns *netns.NS) {
	t.Helper()
	for _, tool := range []string{"iptables", "ip6tables"} {
		if err := ns.Run(context.Background(), tool, "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", "0x53470001"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSendArrivesIntactAndMarked: a built IPv4 and a built IPv6 packet
// reach the peer namespace byte for byte as built, and each send leaves
// the host carrying the mark, once.
func TestSendArrivesIntactAndMarked(t *testing.T) {
	a, b := newPair(t)
	countMarked(t, a)
	s := openIn(t, a)
	c, err := lab.OpenCapture(b, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		via      netip.Addr // the address Send is given
		save     string
	}{
		{"IPv4", netip.AddrPortFrom(addrA4, 40001), netip.AddrPortFrom(addrB4, 80), addrB4, "iptables-save"},
		{"IPv6", netip.AddrPortFrom(addrA6, 40002), netip.AddrPortFrom(addrB6, 80), addrB6, "ip6tables-save"},
		// An IPv4-mapped destination is IPv4: it goes out the IPv4 socket.
		{"IPv4-mapped", netip.AddrPortFrom(addrA4, 40003), netip.AddrPortFrom(addrB4, 80), netip.AddrFrom16(addrB4.As16()), "iptables-save"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := markedCount(t, a, tc.save)
			want := syn(t, tc.src, tc.dst)
			if err := s.Send(want, tc.via); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, c, tc.src); !bytes.Equal(got, want) {
				t.Fatalf("packet changed on the way:\n got %x\nwant %x", got, want)
			}
			if n := markedCount(t, a, tc.save) - before; n != 1 {
				t.Fatalf("%d marked packets counted for one send, want 1", n)
			}
		})
	}
}

// TestSendIPv6WithoutSocket: a Sender without an IPv6 socket (a host
// without IPv6) refuses IPv6 destinations with an error naming them.
func TestSendIPv6WithoutSocket(t *testing.T) {
	s := &Sender{fd4: -1, fd6: -1}
	b := syn(t, netip.AddrPortFrom(addrA6, 40001), netip.AddrPortFrom(addrB6, 80))
	err := s.Send(b, addrB6)
	if err == nil || !strings.Contains(err.Error(), "no IPv6 raw socket") || !strings.Contains(err.Error(), addrB6.String()) {
		t.Fatalf("Send to %s without an IPv6 socket: %v", addrB6, err)
	}
}

// TestCloseTwice: a closed Sender fails to send, and a second Close leaves
// alone the descriptors its old numbers now name.
func TestCloseTwice(t *testing.T) {
	ns := nstest.New(t, "sgrs")
	s := openIn(t, ns)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The lowest free descriptor numbers are the ones Close released, so
	// these three files now hold them.
	var reused [3]*os.File
	for i := range reused {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		reused[i] = f
	}
	for _, dst := range []netip.Addr{addrB4, addrB6} {
		if err := s.Send([]byte{0x45}, dst); err == nil {
			t.Fatalf("Send to %s after Close succeeded", dst)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, f := range reused {
		if _, err := f.Stat(); err != nil {
			t.Fatalf("second Close closed a file opened since: %v", err)
		}
	}
}
