package nfq

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/nf"
)

// sentMsg is one verdict message as the kernel reads it: a batch verdict
// (NFQNL_MSG_VERDICT_BATCH) or one for a single packet, maybe carrying
// the packet's new bytes.
type sentMsg struct {
	Batch   bool
	ID      uint32
	Verdict uint32
	Packet  []byte
}

func batchMsg(id, v uint32) sentMsg             { return sentMsg{Batch: true, ID: id, Verdict: v} }
func singleMsg(id, v uint32, p ...byte) sentMsg { return sentMsg{ID: id, Verdict: v, Packet: p} }

// messages reads the verdict messages written so far, per write, checking
// each as the kernel's netlink_rcv_skb and nfnetlink_queue read it.
func (h *harness) messages() [][]sentMsg {
	h.t.Helper()
	var writes [][]sentMsg
	for {
		n, err := unix.Read(h.peer, h.buf)
		if errors.Is(err, unix.EAGAIN) {
			return writes
		}
		if err != nil {
			h.t.Fatal(err)
		}
		var w []sentMsg
		for b := h.buf[:n]; len(b) > 0; {
			m, l := parseMsg(h.t, b)
			w = append(w, m)
			b = b[l:]
		}
		writes = append(writes, w)
	}
}

func parseMsg(t testing.TB, b []byte) (sentMsg, int) {
	t.Helper()
	ne, be := binary.NativeEndian, binary.BigEndian
	if len(b) < verdictMsgLen {
		t.Fatalf("%d trailing bytes after verdict messages", len(b))
	}
	l := int(ne.Uint32(b[0:4]))
	if l%4 != 0 || l > len(b) || l < verdictMsgLen {
		t.Fatalf("nlmsg_len %d of %d bytes left: want a multiple of 4 (NLMSG_ALIGN), and room", l, len(b))
	}
	var m sentMsg
	switch typ := ne.Uint16(b[4:6]); typ {
	case 3<<8 | 3:
		m.Batch = true
	case 3<<8 | 1:
	default:
		t.Fatalf("nlmsg_type %#x, want NFNL_SUBSYS_QUEUE<<8 | NFQNL_MSG_VERDICT(_BATCH)", typ)
	}
	if flags := ne.Uint16(b[6:8]); flags != 1 {
		t.Fatalf("nlmsg_flags %#x, want NLM_F_REQUEST only", flags)
	}
	if b[16] != 0 || b[17] != 0 || be.Uint16(b[18:20]) != 7 {
		t.Fatalf("nfgenmsg % x, want AF_UNSPEC, v0, queue 7", b[16:20])
	}
	if ne.Uint16(b[20:22]) != 12 || ne.Uint16(b[22:24]) != nfqaVerdictHdr {
		t.Fatalf("attribute header % x, want NFQA_VERDICT_HDR of 12 bytes", b[20:24])
	}
	m.Verdict, m.ID = be.Uint32(b[24:28]), be.Uint32(b[28:32])
	if l == verdictMsgLen {
		return m, l
	}
	if m.Batch {
		t.Fatalf("batch verdict of %d bytes: the kernel takes no packet with it", l)
	}
	al, at := int(ne.Uint16(b[32:34])), ne.Uint16(b[34:36])
	if at != nfqaPayload || al <= nlaHdrLen || verdictMsgLen+align4(al) != l {
		t.Fatalf("attribute of type %d, %d bytes, in a message of %d: want one NFQA_PAYLOAD filling it", at, al, l)
	}
	m.Packet = slices.Clone(b[payloadHdrLen : verdictMsgLen+al])
	if pad := b[verdictMsgLen+al : l]; slices.ContainsFunc(pad, func(c byte) bool { return c != 0 }) {
		t.Fatalf("padding % x", pad)
	}
	return m, l
}

// table is a BatchHandler answering from a table of verdicts by packet id
// (Drop when absent). A packet it accepts rewritten gets each byte
// incremented; before answering, it calls before, if set.
type table struct {
	verdicts map[uint32]nf.Verdict
	before   func(p *Packet)
}

func (t *table) Handle(p *Packet) nf.Verdict {
	if t.before != nil {
		t.before(p)
	}
	v := t.verdicts[p.ID]
	if v == nf.AcceptRewritten {
		for i := range p.Payload {
			p.Payload[i]++
		}
	}
	return v
}

func (*table) Flush() {}

// sendIDs queues packets with ids from..to, each with a 5-byte payload of
// its id's low byte.
func (h *harness) sendIDs(from, to uint32) {
	h.t.Helper()
	for id := from; id <= to; id++ {
		b := byte(id)
		h.send(cannedPacket{id: id, payload: []byte{b, b, b, b, b}}.message())
	}
}

// TestReceiverHolds checks the verdict messages around held packets:
// nothing for a held packet, a message of its own for each packet after
// the smallest one held (a batch verdict would sweep it), still all in
// one write, a rewritten packet's new bytes, and batch verdicts again once
// nothing is held.
func TestReceiverHolds(t *testing.T) {
	const A, D = nfAccept, nfDrop
	tab := &table{verdicts: map[uint32]nf.Verdict{
		1: nf.Accept, 2: nf.Accept, 3: nf.Hold, 4: nf.Accept, 5: nf.Drop,
		6: nf.AcceptRewritten, 7: nf.Hold, 8: nf.Accept, 9: nf.Drop,
	}}
	h := newTestReceiver(t, Config{Queue: 7}, tab)
	h.sendIDs(1, 9)
	h.step()
	want := [][]sentMsg{{
		batchMsg(2, A), singleMsg(4, A), singleMsg(5, D), singleMsg(6, A, 7, 7, 7, 7, 7),
		singleMsg(8, A), singleMsg(9, D),
	}}
	if diff := cmp.Diff(want, h.messages()); diff != "" {
		t.Fatalf("first batch (-want +got):\n%s", diff)
	}
	if got := h.q.Held(); got != 2 {
		t.Fatalf("Held() = %d, want 2", got)
	}

	// Still held: singles.
	h.sendIDs(10, 11)
	h.step()
	if diff := cmp.Diff([][]sentMsg{{singleMsg(10, D), singleMsg(11, D)}}, h.messages()); diff != "" {
		t.Fatalf("second batch (-want +got):\n%s", diff)
	}

	// Releasing 3 leaves 7 held: the next batch still has singles.
	if err := h.q.Release(3, nf.Accept, []byte{0x45, 1, 2}); err != nil {
		t.Fatal(err)
	}
	h.sendIDs(12, 12)
	h.step()
	want = [][]sentMsg{{singleMsg(3, A, 0x45, 1, 2)}, {singleMsg(12, D)}}
	if diff := cmp.Diff(want, h.messages()); diff != "" {
		t.Fatalf("release of 3 and third batch (-want +got):\n%s", diff)
	}

	// Nothing held: one batch verdict again.
	if err := h.q.Release(7, nf.Drop, nil); err != nil {
		t.Fatal(err)
	}
	h.sendIDs(13, 15)
	h.step()
	if diff := cmp.Diff([][]sentMsg{{singleMsg(7, D)}, {batchMsg(15, D)}}, h.messages()); diff != "" {
		t.Fatalf("release of 7 and fourth batch (-want +got):\n%s", diff)
	}

	// Released already: refused, nothing sent.
	if err := h.q.Release(7, nf.Accept, nil); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "packet 7") {
		t.Fatalf("second Release of 7: %v, want ErrNotHeld naming it", err)
	}
	if w := h.messages(); len(w) != 0 {
		t.Fatalf("a refused Release wrote %v", w)
	}
	wantStats := Stats{
		Received: 15, Batches: 4,
		Verdicts: VerdictStats{Accept: 6, Drop: 9},
		Holds:    2, Held: 0, Released: VerdictStats{Accept: 1, Drop: 1}, Rewritten: 2,
	}
	if diff := cmp.Diff(wantStats, h.q.Stats()); diff != "" {
		t.Fatalf("stats (-want +got):\n%s", diff)
	}
}

// TestReceiverHoldAtBatchStart holds the first packet of a batch after a
// batch with a run still open: the run's verdict must stop before it.
func TestReceiverHoldAtBatchStart(t *testing.T) {
	tab := &table{verdicts: map[uint32]nf.Verdict{1: nf.Accept, 2: nf.Accept, 3: nf.Hold, 4: nf.Accept}}
	h := newTestReceiver(t, Config{Queue: 7}, tab)
	h.sendIDs(1, 4)
	h.step()
	want := [][]sentMsg{{batchMsg(2, nfAccept), singleMsg(4, nfAccept)}}
	if diff := cmp.Diff(want, h.messages()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

// TestReceiverReleaseErrors checks that a bad Release is refused with a
// clear error, sends nothing and leaves the packet held.
func TestReceiverReleaseErrors(t *testing.T) {
	h := newTestReceiver(t, Config{Queue: 7}, &table{verdicts: map[uint32]nf.Verdict{1: nf.Hold}})
	if err := h.q.Release(1, nf.Accept, nil); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Release before any packet: %v, want ErrNotHeld", err)
	}
	h.sendIDs(1, 1)
	h.step()
	if w := h.messages(); len(w) != 0 {
		t.Fatalf("a held packet got %v", w)
	}
	for _, tc := range []struct {
		name   string
		id     uint32
		v      nf.Verdict
		packet []byte
		want   string
	}{
		{"hold", 1, nf.Hold, nil, "release packet 1: verdict hold: want accept or drop"},
		{"accept rewritten", 1, nf.AcceptRewritten, nil, "verdict accept_rewritten: want accept or drop"},
		{"unknown verdict", 1, nf.Verdict(9), nil, "verdict verdict(9)"},
		{"oversize", 1, nf.Accept, make([]byte, MaxPacket+1), "packet of 65532 bytes, want 1 to 65531"},
		{"empty", 1, nf.Accept, []byte{}, "packet of 0 bytes"},
		{"unknown id", 2, nf.Accept, nil, "release packet 2: packet not held"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := h.q.Release(tc.id, tc.v, tc.packet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Release: %v, want an error saying %q", err, tc.want)
			}
			if w := h.messages(); len(w) != 0 {
				t.Fatalf("a refused Release wrote %v", w)
			}
		})
	}
	if got := h.q.Held(); got != 1 {
		t.Fatalf("Held() = %d after refused releases, want 1", got)
	}
	big := make([]byte, MaxPacket)
	big[0] = 0x45
	if err := h.q.Release(1, nf.Accept, big); err != nil {
		t.Fatalf("Release with a packet of MaxPacket bytes: %v", err)
	}
	if diff := cmp.Diff([][]sentMsg{{singleMsg(1, nfAccept, big...)}}, h.messages()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

// TestReceiverReleaseBeforeHold releases a packet before its handler has
// returned nf.Hold, from the handler and from another goroutine it waits
// for: the verdict goes out in order with the batch's, and the packet is
// not left recorded as held, so later batches get batch verdicts.
func TestReceiverReleaseBeforeHold(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(f func())
	}{
		{"handler", func(f func()) { f() }},
		{"goroutine", func(f func()) {
			done := make(chan struct{})
			go func() { f(); close(done) }()
			<-done
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := &table{verdicts: map[uint32]nf.Verdict{1: nf.Accept, 2: nf.Hold, 3: nf.Accept, 4: nf.Accept}}
			h := newTestReceiver(t, Config{Queue: 7}, tab)
			var relErr error
			tab.before = func(p *Packet) {
				if p.ID == 2 {
					tc.call(func() { relErr = h.q.Release(2, nf.Accept, []byte{0x45, 9}) })
				}
			}
			h.sendIDs(1, 3)
			h.step()
			if relErr != nil {
				t.Fatalf("Release before Hold: %v", relErr)
			}
			want := [][]sentMsg{{batchMsg(1, nfAccept)}, {singleMsg(2, nfAccept, 0x45, 9)}, {batchMsg(3, nfAccept)}}
			if diff := cmp.Diff(want, h.messages()); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
			if got := h.q.Held(); got != 0 {
				t.Fatalf("Held() = %d, want 0", got)
			}
			h.sendIDs(4, 4)
			h.step()
			if diff := cmp.Diff([][]sentMsg{{batchMsg(4, nfAccept)}}, h.messages()); diff != "" {
				t.Fatalf("next batch (-want +got):\n%s", diff)
			}
			if err := h.q.Release(2, nf.Accept, nil); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("second Release: %v, want ErrNotHeld", err)
			}
			st := h.q.Stats()
			if st.Holds != 1 || st.Released.Accept != 1 || st.Rewritten != 1 || st.Verdicts.Accept != 4 || st.VerdictErrors != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestReceiverReleaseOfUnheldPacket releases the packet being handled,
// whose handler then gives it a verdict of its own: that verdict stands,
// and the release is dropped and counted.
func TestReceiverReleaseOfUnheldPacket(t *testing.T) {
	tab := &table{verdicts: map[uint32]nf.Verdict{1: nf.Accept, 2: nf.Accept}}
	h := newTestReceiver(t, Config{Queue: 7}, tab)
	tab.before = func(p *Packet) {
		if p.ID == 1 {
			if err := h.q.Release(1, nf.Drop, nil); err != nil {
				t.Errorf("Release: %v", err)
			}
		}
		if err := h.q.Release(p.ID+1, nf.Drop, nil); !errors.Is(err, ErrNotHeld) {
			t.Errorf("Release of the packet after the one handled: %v, want ErrNotHeld", err)
		}
	}
	h.sendIDs(1, 2)
	h.step()
	if diff := cmp.Diff([][]sentMsg{{batchMsg(2, nfAccept)}}, h.messages()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if st := h.q.Stats(); st.VerdictErrors != 1 || st.Released != (VerdictStats{}) {
		t.Fatalf("stats %+v: want the release counted as a verdict error", st)
	}
	if h.q.holds.earlyPending.Load() {
		t.Fatal("the release is still pending")
	}
}

// TestHeldSet checks the set against a map, with ids that wrap around,
// some out of order, and a small array that fills up.
func TestHeldSet(t *testing.T) {
	for _, start := range []uint32{1, 1<<32 - 40} {
		rng := rand.New(rand.NewPCG(uint64(start), 7))
		s := heldSet{ids: make([]uint32, 16), gone: make([]bool, 16)}
		model := map[uint32]bool{}
		next := start
		for range 20000 {
			switch op := rng.IntN(10); {
			case op < 5: // hold the next id, or skip a few
				next += uint32(rng.IntN(3))
				id := next
				next++
				if op == 0 && len(model) > 0 {
					id -= uint32(rng.IntN(8)) // out of order
				}
				ok := s.add(id)
				if !model[id] && len(model) == 16 {
					if ok {
						t.Fatalf("add(%d) to a full set succeeded", id)
					}
					continue
				}
				if !ok {
					t.Fatalf("add(%d) failed with %d held", id, len(model))
				}
				model[id] = true
			default:
				id := next - uint32(rng.IntN(24))
				if got := s.remove(id); got != model[id] {
					t.Fatalf("remove(%d) = %v, want %v", id, got, model[id])
				}
				delete(model, id)
			}
			if s.live != len(model) {
				t.Fatalf("%d live, want %d", s.live, len(model))
			}
			min, ok := s.min()
			if ok != (len(model) > 0) {
				t.Fatalf("min() ok = %v with %d held", ok, len(model))
			}
			for id := range model {
				if after(min, id) {
					t.Fatalf("min() = %d, but %d is held", min, id)
				}
			}
		}
	}
}

// holdingHandler holds every 16th packet, accepts every 8th other one
// rewritten and drops the rest; it allocates nothing.
type holdingHandler struct {
	q        *Queue
	held     []uint32
	handled  int
	rewrites int
}

func (c *holdingHandler) Handle(p *Packet) nf.Verdict {
	c.handled++
	switch {
	case p.ID%32 == 1:
		// Released before its Hold is recorded.
		if err := c.q.Release(p.ID, nf.Accept, p.Payload); err != nil {
			panic(err)
		}
		return nf.Hold
	case p.ID%16 == 0:
		c.held = append(c.held, p.ID)
		return nf.Hold
	case p.ID%8 == 0:
		c.rewrites++
		p.Payload[0]++
		return nf.AcceptRewritten
	}
	return nf.Drop
}

func (*holdingHandler) Flush() {}

// holdBatch runs one batch of msgs through the receiver with c and
// releases what c held, alternately accepting with a new packet and
// dropping.
func holdBatch(tb testing.TB, h *harness, c *holdingHandler, msgs [][]byte, id *uint32, packet []byte) {
	for _, m := range msgs {
		*id++
		renumber(m, *id)
		if _, err := unix.Write(h.peer, m); err != nil {
			tb.Fatal(err)
		}
	}
	if err := h.r.receive(); err != nil {
		tb.Fatal(err)
	}
	h.r.handle()
	for i, held := range c.held {
		v, p := nf.Accept, packet
		if i%2 == 1 {
			v, p = nf.Drop, nil
		}
		if err := h.q.Release(held, v, p); err != nil {
			tb.Fatal(err)
		}
	}
	c.held = c.held[:0]
	for {
		if _, err := unix.Read(h.peer, h.buf); errors.Is(err, unix.EAGAIN) {
			break
		} else if err != nil {
			tb.Fatal(err)
		}
	}
}

func TestReceiverHoldsAllocateNothing(t *testing.T) {
	c := &holdingHandler{held: make([]uint32, 0, rxBatch)}
	h := newTestReceiver(t, Config{Queue: 7}, c)
	c.q = h.q
	msgs := synMessages()
	packet := make([]byte, 60)
	id := uint32(0)
	if n := testing.AllocsPerRun(50, func() { holdBatch(t, h, c, msgs, &id, packet) }); n != 0 {
		t.Fatalf("a batch of %d packets with holds, releases and rewritten packets allocates %.1f times", rxBatch, n)
	}
	st := h.q.Stats()
	if st.Holds == 0 || st.Rewritten == 0 || st.Released.Accept == 0 || st.Released.Drop == 0 || st.Held != 0 || st.VerdictErrors != 0 {
		t.Fatalf("stats %+v: the loop did not hold, rewrite and release", st)
	}
}

// BenchmarkReceiveBatchHolds is BenchmarkReceiveBatch with holds: per
// batch of 64, 6 packets held and released (2 before their Hold was
// recorded), 4 rewritten, and the packets after the first hold verdicted
// one by one.
func BenchmarkReceiveBatchHolds(b *testing.B) {
	c := &holdingHandler{held: make([]uint32, 0, rxBatch)}
	h := newTestReceiver(b, Config{Queue: 7}, c)
	c.q = h.q
	msgs := synMessages()
	packet := make([]byte, 60)
	id := uint32(0)
	b.ReportAllocs()
	for b.Loop() {
		holdBatch(b, h, c, msgs, &id, packet)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(c.handled), "ns/packet")
}
