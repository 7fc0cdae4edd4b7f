package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab/netns"
)

// openCounterIn opens a Counter inside ns, closed on cleanup.
func openCounterIn(t *testing.T, ns *netns.NS) *Counter {
	t.Helper()
	var c *Counter
	if err := ns.Do(func() (err error) {
		c, err = OpenCounter()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustCount(t *testing.T, c *Counter, mark uint32) int {
	t.Helper()
	n, err := c.Count(mark)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCount counts real entries: hand-offs of both families, entries of
// other marks and an unmarked one the conntrack tool made, a UDP entry
// with the mark; then the count follows a delete.
func TestCount(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgt-ct")
	tb := openIn(t, ns)
	c := openCounterIn(t, ns)
	if n := mustCount(t, c, testMark); n != 0 {
		t.Fatalf("empty table: Count = %d, want 0", n)
	}
	for i := range 7 {
		h := testHandoff(40000 + uint16(i))
		switch {
		case i == 5 || i == 6:
			h.Client = netip.AddrPortFrom(netip.MustParseAddr("2001:db8::2"), h.Client.Port())
			h.Server = netip.MustParseAddrPort("[2001:db8:1::2]:80")
		case i%2 == 1:
			h.Mark = testMark | 0x10000 // differs only in the high half
		}
		if err := tb.Create(h); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"-I", "-p", "udp", "-s", "198.51.100.2", "-d", "203.0.113.2", "--sport", "5000", "--dport", "53", "-t", "60", "--mark", fmt.Sprint(testMark)},
		{"-I", "-p", "tcp", "-s", "198.51.100.3", "-d", "203.0.113.2", "--sport", "5000", "--dport", "80", "--state", "ESTABLISHED", "-t", "60"},
	} {
		if err := ns.Run(ctx, "conntrack", args...); err != nil {
			t.Fatal(err)
		}
	}

	// testMark: ports 40000, 40002, 40004 (IPv4), 40005, 40006 (IPv6), UDP.
	if n := mustCount(t, c, testMark); n != 6 {
		t.Errorf("Count(%#x) = %d, want 6", testMark, n)
	}
	if n := mustCount(t, c, testMark|0x10000); n != 2 {
		t.Errorf("Count(%#x) = %d, want 2", testMark|0x10000, n)
	}
	if n := mustCount(t, c, 0); n != 1 {
		t.Errorf("Count(0) = %d, want the one unmarked entry", n)
	}
	if n := mustCount(t, c, 0x1); n != 0 {
		t.Errorf("Count(0x1) = %d, want 0", n)
	}
	h := testHandoff(40002)
	if err := tb.Delete(h.Client, h.Server); err != nil {
		t.Fatal(err)
	}
	if n := mustCount(t, c, testMark); n != 5 {
		t.Errorf("after a delete: Count(%#x) = %d, want 5", testMark, n)
	}
}

// TestCountAllocations: a count of 3,000 entries, whose reply spans many
// datagrams, allocates no more than a count of one.
func TestCountAllocations(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgt-ct")
	tb := openIn(t, ns)
	c := openCounterIn(t, ns)
	create := func(from, to int) {
		for i := from; i < to; i++ {
			h := testHandoff(uint16(10000 + i))
			if err := tb.Create(h); err != nil {
				t.Fatal(err)
			}
		}
	}
	allocs := func(want int) float64 {
		return testing.AllocsPerRun(5, func() {
			if n, err := c.Count(testMark); err != nil || n != want {
				t.Fatalf("Count = %d, %v; want %d", n, err, want)
			}
		})
	}
	create(0, 1)
	one := allocs(1)
	const many = 3000
	create(1, many)
	if got := allocs(many); got > one {
		t.Errorf("a count of %d entries allocates %.0f times, of one entry %.0f: allocations grow with the table", many, got, one)
	}
	t.Logf("allocations per count: %.0f", one)
}

// TestCountRedials: after a failed count the next one opens a new socket,
// in the counter's namespace even when called from another.
func TestCountRedials(t *testing.T) {
	roottest.Require(t)
	nsA, nsB := nstest.New(t, "sgt-ct"), nstest.New(t, "sgt-ct")
	tb := openIn(t, nsA)
	c := openCounterIn(t, nsA)
	if err := tb.Create(testHandoff(40000)); err != nil {
		t.Fatal(err)
	}
	// A deadline already past fails the count and drops the socket.
	c.timeout = -time.Second
	if _, err := c.Count(testMark); err == nil {
		t.Fatal("Count with an expired deadline succeeded")
	}
	if c.conn != nil {
		t.Fatal("a failed count kept its socket")
	}
	c.timeout = CountTimeout
	var n int
	if err := nsB.Do(func() (err error) {
		n, err = c.Count(testMark)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("Count from another namespace = %d, want 1 (the counter's namespace)", n)
	}
	c.Close()
	if _, err := c.Count(testMark); !errors.Is(err, ErrClosed) {
		t.Errorf("Count after Close: err = %v, want ErrClosed", err)
	}
}

// nlmsg builds one netlink message with payload.
func nlmsg(typ uint16, seq uint32, payload []byte) []byte {
	l := nlmsgHdrLen + len(payload)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint32(b[0:], uint32(l))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint32(b[8:], seq)
	copy(b[nlmsgHdrLen:], payload)
	return b
}

func TestCountMessages(t *testing.T) {
	const seq = 7
	entry := nlmsg(nfnlSubsysCTNetlink<<8|ipctnlMsgCTNew, seq, make([]byte, 5))
	done := nlmsg(syscall.NLMSG_DONE, seq, make([]byte, 4))
	errno := make([]byte, 4)
	e := -int32(syscall.EINVAL)
	binary.NativeEndian.PutUint32(errno, uint32(e))
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	tests := []struct {
		name    string
		in      []byte
		done    bool
		n       int
		wantErr error
		anyErr  bool
	}{
		{name: "empty"},
		{name: "entries", in: cat(entry, entry, entry), n: 3},
		{name: "entries then done", in: cat(entry, entry, done), n: 2, done: true},
		{name: "another request's messages", in: cat(nlmsg(nfnlSubsysCTNetlink<<8|ipctnlMsgCTNew, seq-1, nil), entry), n: 1},
		{name: "error", in: cat(entry, nlmsg(syscall.NLMSG_ERROR, seq, errno)), wantErr: syscall.EINVAL},
		{name: "ack", in: nlmsg(syscall.NLMSG_ERROR, seq, make([]byte, 4))},
		{name: "short header", in: entry[:10], anyErr: true},
		{name: "length past the datagram", in: entry[:nlmsgHdrLen+2], anyErr: true},
		{name: "length below the header", in: nlmsg(syscall.NLMSG_DONE, seq, nil)[:4:4], anyErr: true},
		{name: "truncated error", in: nlmsg(syscall.NLMSG_ERROR, seq, nil), anyErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done, n, err := countMessages(tt.in, seq)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.anyErr:
				if err == nil {
					t.Errorf("no error for a malformed datagram")
				}
			case err != nil:
				t.Errorf("err = %v", err)
			default:
				if done != tt.done || n != tt.n {
					t.Errorf("= %v, %d; want %v, %d", done, n, tt.done, tt.n)
				}
			}
		})
	}
}
