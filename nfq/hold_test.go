package nfq_test

import (
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/packet"
)

// The datagrams of these tests carry 4 bytes: a sequence number (16 bits)
// and a tag, "ab" as sent, "AB" once rewritten.

// udpLab is a namespace whose UDP datagrams to rx go through a queue.
type udpLab struct {
	ns    *netns.NS
	rx    *net.UDPConn
	tx    *net.UDPConn
	dst   *net.UDPAddr
	q     *nfq.Queue
	queue uint16
	buf   []byte
}

func newUDPLab(t *testing.T, queue uint16) *udpLab {
	t.Helper()
	l := &udpLab{ns: nstest.New(t, "sgt-nfq"), queue: queue, buf: make([]byte, 64)}
	if err := l.ns.Do(func() (err error) {
		l.rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.rx.Close() })
	if err := l.rx.SetReadBuffer(4 << 20); err != nil {
		t.Fatal(err)
	}
	l.dst = l.rx.LocalAddr().(*net.UDPAddr)
	iptables(t, l.ns, false, "-A", "INPUT", "-p", "udp", "--dport", strconv.Itoa(l.dst.Port), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(queue)))
	l.tx = udpSender(t, l.ns)
	l.q = openQueue(t, l.ns, nfq.Config{Queue: queue})
	return l
}

func (l *udpLab) send(t *testing.T, seqs ...uint16) {
	t.Helper()
	for _, s := range seqs {
		if _, err := l.tx.WriteToUDP([]byte{byte(s >> 8), byte(s), 'a', 'b'}, l.dst); err != nil {
			t.Fatal(err)
		}
	}
}

// received is one datagram the destination got.
type received struct {
	Seq uint16
	Tag string
}

// recv reads n datagrams; poll.Until bounds each read.
func (l *udpLab) recv(t *testing.T, n int) []received {
	t.Helper()
	var got []received
	for range n {
		if err := l.rx.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		m, err := l.rx.Read(l.buf)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, parseDatagram(t, l.buf[:m]))
	}
	return got
}

// nothingMore checks that no datagram is waiting at the destination.
func (l *udpLab) nothingMore(t *testing.T) {
	t.Helper()
	if err := l.rx.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if m, err := l.rx.Read(l.buf); err == nil {
		t.Fatalf("unexpected datagram %v", parseDatagram(t, l.buf[:m]))
	}
}

func parseDatagram(t *testing.T, b []byte) received {
	t.Helper()
	if len(b) != 4 {
		t.Fatalf("datagram of %d bytes: % x", len(b), b)
	}
	return received{binary.BigEndian.Uint16(b), string(b[2:])}
}

// udpPayload returns the UDP payload of an IPv4 packet.
func udpPayload(t testing.TB, p []byte) []byte {
	t.Helper()
	seg, err := parse(p)
	if err != nil || seg.version != 4 || seg.proto != 17 {
		t.Fatalf("not a UDP/IPv4 packet (%+v, %v): % x", seg, err, p)
	}
	return p[int(p[0]&0x0f)*4+8:]
}

func seqOf(t testing.TB, p []byte) uint16 { return binary.BigEndian.Uint16(udpPayload(t, p)) }

// rewrite turns a queued datagram's tag into "AB" in place and fixes the
// UDP checksum, which the kernel will check on delivery: a wrong one loses
// the datagram.
func rewrite(t testing.TB, p []byte) {
	t.Helper()
	ihl := int(p[0]&0x0f) * 4
	pl := p[ihl+8:]
	old := binary.BigEndian.Uint16(pl[2:4])
	binary.BigEndian.PutUint16(pl[2:4], 'A'<<8|'B')
	check := binary.BigEndian.Uint16(p[ihl+6:])
	check = packet.UpdateChecksum16(check, old, 'A'<<8|'B')
	binary.BigEndian.PutUint16(p[ihl+6:], check)
}

func rewritten(t testing.TB, p []byte) []byte {
	c := slices.Clone(p)
	rewrite(t, c)
	return c
}

func (l *udpLab) waiting(t *testing.T) uint32 {
	t.Helper()
	ks, ok := kernelStats(t, l.ns, l.queue)
	if !ok {
		t.Fatal("queue not bound")
	}
	return ks.Waiting
}

// TestHoldAndRelease holds datagrams among others of the same batch and
// of a later one, and checks that the others are delivered, in order,
// while the held ones wait in the kernel's queue; that a Release with a
// rewritten packet delivers the new bytes, a Release with Drop delivers
// nothing, and nf.AcceptRewritten delivers its handler's new bytes at
// once.
func TestHoldAndRelease(t *testing.T) {
	l := newUDPLab(t, 60)
	var mu sync.Mutex
	ids := map[uint16]uint32{}
	packets := map[uint16][]byte{}
	verdicts := map[uint16]nf.Verdict{2: nf.Hold, 5: nf.Hold, 7: nf.AcceptRewritten, 8: nf.Drop, 12: nf.Hold}

	// All of the first batch waits in the socket before Run: one batch.
	l.send(t, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	poll.Must(t, 2*time.Second, "datagrams not queued", func() bool { return l.waiting(t) == 10 })
	runQueue(t, l.q, func(p *nfq.Packet) nf.Verdict {
		seq := seqOf(t, p.Payload)
		mu.Lock()
		defer mu.Unlock()
		ids[seq], packets[seq] = p.ID, slices.Clone(p.Payload)
		v, ok := verdicts[seq]
		if !ok {
			v = nf.Accept
		}
		if v == nf.AcceptRewritten {
			rewrite(t, p.Payload)
		}
		return v
	})
	want := []received{{0, "ab"}, {1, "ab"}, {3, "ab"}, {4, "ab"}, {6, "ab"}, {7, "AB"}, {9, "ab"}}
	if diff := cmp.Diff(want, l.recv(t, len(want))); diff != "" {
		t.Fatalf("first batch delivered (-want +got):\n%s", diff)
	}
	// The loop counts a batch after its verdicts.
	if !poll.Until(time.Second, func() bool { st := l.q.Stats(); return st.Batches == 1 && st.Received == 10 }) {
		t.Fatalf("stats %+v: want one batch of 10", l.q.Stats())
	}
	if st := l.q.Stats(); st.Held != 2 || st.Holds != 2 || l.q.Held() != 2 {
		t.Fatalf("stats %+v: want 2 held", st)
	}
	if w := l.waiting(t); w != 2 {
		t.Fatalf("kernel queue: %d waiting, want the 2 held", w)
	}

	// A later batch with one more held.
	l.send(t, 10, 11, 12, 13, 14)
	want = []received{{10, "ab"}, {11, "ab"}, {13, "ab"}, {14, "ab"}}
	if diff := cmp.Diff(want, l.recv(t, len(want))); diff != "" {
		t.Fatalf("second batch delivered (-want +got):\n%s", diff)
	}
	if got := l.q.Held(); got != 3 {
		t.Fatalf("Held() = %d, want 3", got)
	}

	mu.Lock()
	defer mu.Unlock()
	if err := l.q.Release(ids[5], nf.Accept, rewritten(t, packets[5])); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]received{{5, "AB"}}, l.recv(t, 1)); diff != "" {
		t.Fatalf("released 5 (-want +got):\n%s", diff)
	}
	// Dropped: 12, released after it, arrives first.
	if err := l.q.Release(ids[2], nf.Drop, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.q.Release(ids[12], nf.Accept, nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]received{{12, "ab"}}, l.recv(t, 1)); diff != "" {
		t.Fatalf("released 2 (dropped) and 12 (-want +got):\n%s", diff)
	}
	l.nothingMore(t)
	if err := l.q.Release(ids[2], nf.Accept, nil); !errors.Is(err, nfq.ErrNotHeld) {
		t.Fatalf("second Release of 2: %v, want ErrNotHeld", err)
	}
	if w := l.waiting(t); w != 0 {
		t.Fatalf("kernel queue: %d waiting after the releases", w)
	}
	wantStats := nfq.Stats{
		Received: 15, // Batches: the second batch's datagrams may come one by one
		Verdicts: nfq.VerdictStats{Accept: 13, Drop: 2},
		Holds:    3, Released: nfq.VerdictStats{Accept: 2, Drop: 1}, Rewritten: 2,
	}
	stats := func() nfq.Stats { st := l.q.Stats(); st.Batches = 0; return st }
	if !poll.Until(time.Second, func() bool { return stats() == wantStats }) {
		t.Fatalf("stats (-want +got):\n%s", cmp.Diff(wantStats, stats()))
	}
}

// TestReleaseBeforeHold releases a datagram from its handler, before the
// handler returns nf.Hold: it is delivered with its new bytes in its
// place, and nothing stays held.
func TestReleaseBeforeHold(t *testing.T) {
	l := newUDPLab(t, 61)
	l.send(t, 0, 1, 2, 3)
	poll.Must(t, 2*time.Second, "datagrams not queued", func() bool { return l.waiting(t) == 4 })
	var relErr error
	runQueue(t, l.q, func(p *nfq.Packet) nf.Verdict {
		if seqOf(t, p.Payload) != 2 {
			return nf.Accept
		}
		relErr = l.q.Release(p.ID, nf.Accept, rewritten(t, p.Payload))
		return nf.Hold
	})
	want := []received{{0, "ab"}, {1, "ab"}, {2, "AB"}, {3, "ab"}}
	if diff := cmp.Diff(want, l.recv(t, len(want))); diff != "" {
		t.Fatalf("delivered (-want +got):\n%s", diff)
	}
	if relErr != nil {
		t.Fatal(relErr)
	}
	if !poll.Until(time.Second, func() bool { return l.q.Stats().Verdicts.Accept == 4 }) {
		t.Fatalf("stats %+v: want 4 accepted", l.q.Stats())
	}
	if st := l.q.Stats(); st.Held != 0 || st.Holds != 1 || st.Released.Accept != 1 || st.Rewritten != 1 || st.VerdictErrors != 0 {
		t.Fatalf("stats %+v: want one release, nothing held", st)
	}
	if w := l.waiting(t); w != 0 {
		t.Fatalf("kernel queue: %d waiting", w)
	}
}

// TestHoldReleaseConcurrently holds every third datagram of a stream and
// hands it to another goroutine, which releases it at once, often before
// the receive loop has recorded the hold; every second release carries
// rewritten bytes. Every datagram must arrive once, nothing stay held,
// and the kernel reject no verdict. Run it with -race.
func TestHoldReleaseConcurrently(t *testing.T) {
	const n = 3000
	l := newUDPLab(t, 62)
	type release struct {
		id     uint32
		packet []byte
	}
	toRelease := make(chan release)
	var releaseErrs []error
	var wg sync.WaitGroup
	wg.Go(func() {
		for r := range toRelease {
			if err := l.q.Release(r.id, nf.Accept, r.packet); err != nil {
				releaseErrs = append(releaseErrs, err)
			}
		}
	})
	runQueue(t, l.q, func(p *nfq.Packet) nf.Verdict {
		seq := seqOf(t, p.Payload)
		switch {
		case seq%3 != 0:
			return nf.Accept
		case seq%6 == 0:
			toRelease <- release{p.ID, rewritten(t, p.Payload)}
		default:
			toRelease <- release{p.ID, nil}
		}
		return nf.Hold
	})
	var got []received
	var recvDone sync.WaitGroup
	recvDone.Go(func() {
		for range n {
			if err := l.rx.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Error(err)
				return
			}
			m, err := l.rx.Read(l.buf)
			if err != nil {
				t.Errorf("after %d datagrams: %v", len(got), err)
				return
			}
			got = append(got, received{binary.BigEndian.Uint16(l.buf[:m]), string(l.buf[2:m])})
		}
	})
	for s := range uint16(n) {
		l.send(t, s)
	}
	recvDone.Wait()
	poll.Must(t, 5*time.Second, "packets still held", func() bool { return l.q.Held() == 0 && l.waiting(t) == 0 })
	close(toRelease)
	wg.Wait()
	if len(releaseErrs) > 0 {
		t.Fatalf("%d releases failed, first: %v", len(releaseErrs), releaseErrs[0])
	}
	slices.SortFunc(got, func(a, b received) int { return int(a.Seq) - int(b.Seq) })
	for i, r := range got {
		want := received{uint16(i), "ab"}
		if i%6 == 0 {
			want.Tag = "AB"
		}
		if r != want {
			t.Fatalf("datagram %d of %d: got %+v, want %+v", i, len(got), r, want)
		}
	}
	if len(got) != n {
		t.Fatalf("%d datagrams delivered, want %d", len(got), n)
	}
	// The loop counts a batch after its verdicts.
	poll.Until(time.Second, func() bool { st := l.q.Stats(); return st.Received == n && st.Verdicts.Accept == n })
	st := l.q.Stats()
	t.Logf("stats %+v", st)
	if st.Holds != n/3 || st.Released.Accept != n/3 || st.Rewritten != n/6 || st.Verdicts.Accept != n || st.VerdictErrors != 0 || st.Received != n {
		t.Fatalf("stats %+v: want %d held and released, %d rewritten, %d accepted, no verdict error", st, n/3, n/6, n)
	}
}
