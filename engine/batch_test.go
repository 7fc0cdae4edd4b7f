package engine

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// batchSender makes batches over fakeSender: they hold copies until
// Flush, which sends them through fakeSender in order.
type batchSender struct {
	*fakeSender
	capacity int
	refuse   func(dst netip.Addr) bool // packets Add does not take
	fail     map[int]error             // by index within a flush
	flushes  []int                     // packets per Flush
}

func (s *batchSender) NewBatch() Batch { return &fakeBatch{s: s} }

type fakeBatch struct {
	s    *batchSender
	pkts [][]byte
	dsts []netip.Addr
}

func (b *fakeBatch) Add(p []byte, dst netip.Addr) bool {
	if len(b.pkts) == b.s.capacity || (b.s.refuse != nil && b.s.refuse(dst)) {
		return false
	}
	b.pkts = append(b.pkts, append([]byte(nil), p...))
	b.dsts = append(b.dsts, dst)
	return true
}

func (b *fakeBatch) Flush(failed func(int, error)) {
	b.s.flushes = append(b.s.flushes, len(b.pkts))
	for i, p := range b.pkts {
		if err := b.s.fail[i]; err != nil {
			failed(i, err)
			continue
		}
		if err := b.s.Send(p, b.dsts[i]); err != nil {
			failed(i, err)
		}
	}
	b.pkts, b.dsts = b.pkts[:0], b.dsts[:0]
}

func newBatchHarness(t *testing.T, capacity int) (*harness, *batchSender) {
	t.Helper()
	bs := &batchSender{fakeSender: &fakeSender{}, capacity: capacity}
	h := newHarness(t, func(c *Config) { c.NewBatch = bs.NewBatch })
	h.send = bs.fakeSender
	return h, bs
}

func TestBatchedRepliesWaitForFlush(t *testing.T) {
	h, bs := newBatchHarness(t, 64)
	for i := range 3 {
		s := syn(client, server, linuxOptions())
		s.Seq += uint32(i)
		if v := h.w.Handle(build(t, s), nf.Prerouting, 0); v != nf.Drop {
			t.Fatalf("SYN %d: verdict %v, want drop", i, v)
		}
	}
	h.expect(0)
	if got := h.stat(SYNACKSent); got != 0 {
		t.Fatalf("SYNACKSent = %d before Flush, want 0", got)
	}
	h.w.Flush()
	out := h.expect(3)
	for i, s := range out {
		if s.dst != client.Addr() || s.p.Flags != packet.SYN|packet.ACK || s.p.Ack != clientISN+uint32(i)+1 {
			t.Errorf("packet %d: %+v to %v, want the SYN-ACK to SYN %d", i, s.p, s.dst, i)
		}
	}
	if got := h.stat(SYNACKSent); got != 3 {
		t.Fatalf("SYNACKSent = %d after Flush, want 3", got)
	}
	if len(bs.flushes) != 1 || bs.flushes[0] != 3 {
		t.Fatalf("flushes %v, want one of 3 packets", bs.flushes)
	}
	h.w.Flush() // nothing queued: no call
	if len(bs.flushes) != 1 {
		t.Fatalf("Flush of an empty batch reached the sender: %v", bs.flushes)
	}
}

// TestBatchedHandshake runs the whole cookie handshake through batches
// that hold their packets until Flush: the harness flushes after each
// packet, as the gateway does after each receive batch.
func TestBatchedHandshake(t *testing.T) {
	h, bs := newBatchHarness(t, 64)
	cookie, replay := h.handshake(linuxOptions())
	if replay.Destination() != server || replay.Flags != packet.SYN || replay.Seq != clientISN {
		t.Fatalf("replayed SYN %+v", replay)
	}
	if h.stat(SYNACKSent) != 1 || h.stat(BackendSYNSent) != 1 {
		t.Fatalf("SYNACKSent %d, BackendSYNSent %d; want 1 and 1", h.stat(SYNACKSent), h.stat(BackendSYNSent))
	}
	const serverISN = 0x10
	synack := packet.Segment{Src: server, Dst: client, Seq: serverISN, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160}
	h.handle(synack, nf.Drop)
	h.drainHandoffs()
	if out := h.expect(2); out[1].p.Seq != cookie+1 {
		t.Fatalf("window update %+v", out[1].p)
	}
	// The re-ACK of a retransmitted SYN-ACK comes from the worker.
	h.handle(synack, nf.Drop)
	if again := h.expect(1)[0].p; again.Destination() != server || again.Ack != serverISN+1 {
		t.Fatalf("re-ACK %+v", again)
	}
	// SYN, ACK, the backend's ACK (the worker's, at its SYN-ACK), the
	// hand-off's window update, and the re-ACK went through batches, each
	// flushed once.
	if want := []int{1, 1, 1, 1, 1}; !slices.Equal(bs.flushes, want) {
		t.Fatalf("flushes %v, want %v", bs.flushes, want)
	}
}

func TestBatchedSendErrorsCounted(t *testing.T) {
	h, bs := newBatchHarness(t, 64)
	bs.fail = map[int]error{1: errors.New("EPERM")}
	for i := range 3 {
		s := syn(client, server, linuxOptions())
		s.Seq += uint32(i)
		h.w.Handle(build(t, s), nf.Prerouting, 0)
	}
	h.w.Flush()
	h.expect(2)
	if h.stat(SendError) != 1 || h.stat(SYNACKSent) != 2 {
		t.Fatalf("SendError %d, SYNACKSent %d; want 1 and 2", h.stat(SendError), h.stat(SYNACKSent))
	}
}

func TestFullBatchFlushesEarly(t *testing.T) {
	h, bs := newBatchHarness(t, 2)
	for i := range 5 {
		s := syn(client, server, linuxOptions())
		s.Seq += uint32(i)
		h.w.Handle(build(t, s), nf.Prerouting, 0)
	}
	h.expect(4)
	h.w.Flush()
	h.expect(1)
	if want := []int{2, 2, 1}; len(bs.flushes) != 3 || bs.flushes[0] != 2 || bs.flushes[1] != 2 || bs.flushes[2] != 1 {
		t.Fatalf("flushes %v, want %v", bs.flushes, want)
	}
	if h.stat(SYNACKSent) != 5 {
		t.Fatalf("SYNACKSent = %d, want 5", h.stat(SYNACKSent))
	}
}

func TestBatchRefusalCountsSendError(t *testing.T) {
	h, bs := newBatchHarness(t, 64)
	bs.refuse = func(dst netip.Addr) bool { return dst.Is6() }
	h.w.Handle(build(t, syn(client, server, linuxOptions())), nf.Prerouting, 0)
	h.w.Handle(build(t, syn(client6, server6, linuxOptions())), nf.Prerouting, 0)
	// Refused, the IPv6 SYN-ACK flushed the batch (it might have been
	// full) and, refused again, was counted as a send error: the IPv4
	// SYN-ACK before it went out.
	out := h.expect(1)
	if out[0].dst != client.Addr() {
		t.Fatalf("sent to %v; want %v", out[0].dst, client.Addr())
	}
	if len(bs.flushes) != 1 || bs.flushes[0] != 1 {
		t.Fatalf("flushes %v, want one of 1 packet", bs.flushes)
	}
	h.w.Flush()
	h.expect(0)
	if st := h.e.Stats(1); st.Get(SYNACKSent) != 0 || st.Get(SendError) != 1 {
		t.Fatalf("IPv6 service SYNACKSent = %d, SendError = %d; want 0 and 1", st.Get(SYNACKSent), st.Get(SendError))
	}
	if h.stat(SYNACKSent) != 1 {
		t.Fatalf("IPv4 service SYNACKSent = %d, want 1", h.stat(SYNACKSent))
	}
}

// TestSendFailureReported: a packet not sent is counted every time, and
// its reason reported at most once a second: a send the kernel refused,
// a packet the batch would not take.
func TestSendFailureReported(t *testing.T) {
	h, bs := newBatchHarness(t, 64)
	synFrom := func(c netip.AddrPort, i int) []byte {
		s := syn(c, server, linuxOptions())
		s.Seq += uint32(i)
		return build(t, s)
	}
	bs.fail = map[int]error{0: errors.New("EPERM"), 1: errors.New("ENOBUFS")}
	for i := range 3 {
		h.w.Handle(synFrom(client, i), nf.Prerouting, 0)
	}
	h.w.Flush()
	h.expect(1)
	h.expectEvents("send_failed 203.0.113.2:80 EPERM")

	h.clock.advance(999 * time.Millisecond)
	h.w.Handle(synFrom(client, 3), nf.Prerouting, 0)
	h.w.Flush()
	h.expectEvents()
	if h.stat(SendError) != 3 {
		t.Fatalf("SendError = %d, want 3", h.stat(SendError))
	}

	h.clock.advance(time.Millisecond)
	bs.fail = nil
	bs.refuse = func(netip.Addr) bool { return true }
	h.w.Handle(synFrom(client, 4), nf.Prerouting, 0)
	h.w.Flush()
	h.expectEvents("send_failed 203.0.113.2:80 " + errBatchRefused.Error())
	if h.stat(SendError) != 4 || h.stat(SYNACKSent) != 1 {
		t.Fatalf("SendError = %d, SYNACKSent = %d; want 4 and 1", h.stat(SendError), h.stat(SYNACKSent))
	}

	// A clock stepped back does not silence the reports.
	h.clock.advance(-time.Hour)
	h.w.Handle(synFrom(client, 5), nf.Prerouting, 0)
	h.w.Flush()
	h.expectEvents("send_failed 203.0.113.2:80 " + errBatchRefused.Error())
}

// discardBatch sends nothing, for allocation checks.
type discardBatch struct{ n int }

func (d *discardBatch) Add([]byte, netip.Addr) bool { d.n++; return true }
func (d *discardBatch) Flush(func(int, error))      { d.n = 0 }

// discardBatches is a Config.NewBatch whose batches send nothing.
func discardBatches() Batch { return &discardBatch{} }

func TestHandleBatchAllocatesNothing(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NewBatch = discardBatches })
	in := build(t, syn(client, server, linuxOptions()))
	ack := build(t, packet.Segment{Src: client, Dst: server, Seq: 5, Ack: 9, Flags: packet.ACK})
	if n := testing.AllocsPerRun(200, func() {
		for range 32 {
			h.w.Handle(in, nf.Prerouting, 0)
			h.w.Handle(ack, nf.Forward, 0) // invalid cookie
		}
		h.w.Flush()
	}); n != 0 {
		t.Fatalf("a batch of 32 SYNs and 32 invalid ACKs allocates %.1f times", n)
	}
}
