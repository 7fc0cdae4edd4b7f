package nfq

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/nf"
)

// These tests drive the receive loop without the kernel's queue: canned
// nfnetlink_queue messages go in through one end of a SOCK_SEQPACKET
// socketpair, which keeps datagram boundaries like a netlink socket, and
// the verdicts the loop writes come out of it.

// cannedPacket is one NFQNL_MSG_PACKET as the kernel builds it.
type cannedPacket struct {
	id      uint32
	noID    bool
	hook    uint8
	mark    uint32
	inDev   uint32
	hwAddr  []byte // NFQA_HWADDR's address; none when nil
	payload []byte
}

// putAttr appends a netlink attribute.
func putAttr(b []byte, typ uint16, v []byte) []byte {
	var h [nlaHdrLen]byte
	binary.NativeEndian.PutUint16(h[0:2], uint16(nlaHdrLen+len(v)))
	binary.NativeEndian.PutUint16(h[2:4], typ)
	b = append(b, h[:]...)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// message builds the datagram the kernel sends for p, with the metadata
// attributes the kernel adds around the ones the loop reads.
func (p cannedPacket) message() []byte {
	b := make([]byte, nlmsgHdrLen, 256+len(p.payload))
	b = append(b, 0, 0, 0, 7) // nfgenmsg: AF_UNSPEC, v0, queue 7
	if !p.noID {
		hdr := make([]byte, 7)
		binary.BigEndian.PutUint32(hdr[0:4], p.id)
		binary.BigEndian.PutUint16(hdr[4:6], 0x0800)
		hdr[6] = p.hook
		b = putAttr(b, nfqaPacketHdr, hdr)
	}
	b = putAttr(b, nfqaMark, binary.BigEndian.AppendUint32(nil, p.mark))
	if p.inDev != 0 {
		b = putAttr(b, nfqaInDev, binary.BigEndian.AppendUint32(nil, p.inDev))
	}
	if p.hwAddr != nil {
		// struct nfqnl_msg_packet_hw: length, padding, 8 address bytes;
		// the type carries a flag bit, which the parser must mask off.
		hw := make([]byte, 12)
		binary.BigEndian.PutUint16(hw[0:2], uint16(len(p.hwAddr)))
		copy(hw[4:], p.hwAddr)
		b = putAttr(b, nfqaHwAddr|0x8000, hw)
	}
	b = putAttr(b, 4, make([]byte, 16))                       // NFQA_TIMESTAMP
	b = putAttr(b, 14, binary.BigEndian.AppendUint32(nil, 0)) // NFQA_SKB_INFO
	if p.payload != nil {
		b = putAttr(b, nfqaPayload, p.payload)
	}
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], nfnlPacketMsg)
	return b
}

// errorMessage is the NLMSG_ERROR the kernel sends for a rejected verdict.
func errorMessage(errno unix.Errno) []byte {
	b := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], nlmsgError)
	binary.NativeEndian.PutUint32(b[16:20], uint32(-int32(errno)))
	return b
}

// sentVerdict is one verdict message the loop wrote.
type sentVerdict struct {
	ID      uint32
	Verdict uint32
}

// harness is a receiver on one end of a socketpair.
type harness struct {
	t    testing.TB
	q    *Queue
	r    *receiver
	peer int
	buf  []byte
}

func newTestReceiver(t testing.TB, cfg Config, h BatchHandler) *harness {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		// Room for a flood's worth of canned messages.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	}
	f := os.NewFile(uintptr(fds[0]), "receiver")
	t.Cleanup(func() { f.Close(); unix.Close(fds[1]) })
	q := &Queue{cfg: cfg, log: zerolog.Nop(), stopping: make(chan struct{})}
	r, err := newReceiver(q, f, h)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, q: q, r: r, peer: fds[1], buf: make([]byte, 1<<17)}
}

// send queues datagrams for the receiver.
func (h *harness) send(msgs ...[]byte) {
	h.t.Helper()
	for _, m := range msgs {
		if _, err := unix.Write(h.peer, m); err != nil {
			h.t.Fatal(err)
		}
	}
}

// step runs one receive and handles what it got.
func (h *harness) step() {
	h.t.Helper()
	if err := h.r.receive(); err != nil {
		h.t.Fatal(err)
	}
	h.r.handle()
}

// verdicts reads the verdict messages written so far, per write: batch
// verdicts only, as the receive loop writes when nothing is held or
// rewritten (messages checks each as the kernel reads it).
func (h *harness) verdicts() [][]sentVerdict {
	h.t.Helper()
	var writes [][]sentVerdict
	for _, msgs := range h.messages() {
		var w []sentVerdict
		for _, m := range msgs {
			if !m.Batch || m.Packet != nil {
				h.t.Fatalf("verdict message %+v, want NFQNL_MSG_VERDICT_BATCH without a packet", m)
			}
			w = append(w, sentVerdict{ID: m.ID, Verdict: m.Verdict})
		}
		writes = append(writes, w)
	}
	return writes
}

// recorder is a BatchHandler that records what it saw and answers from a
// table of verdicts by packet id (Drop when absent).
type recorder struct {
	verdicts map[uint32]nf.Verdict
	packets  []Packet // Payload copied
	calls    []string
}

func (r *recorder) Handle(p *Packet) nf.Verdict {
	c := *p
	c.Payload = slices.Clone(p.Payload)
	c.HwAddr = slices.Clone(p.HwAddr)
	r.packets = append(r.packets, c)
	r.calls = append(r.calls, fmt.Sprint("handle ", p.ID))
	return r.verdicts[p.ID]
}

func (r *recorder) Flush() { r.calls = append(r.calls, "flush") }

func TestReceiverHandsPacketsOver(t *testing.T) {
	rec := &recorder{}
	h := newTestReceiver(t, Config{Queue: 7}, rec)
	payload := []byte{0x45, 0, 0, 20, 1, 2, 3}
	mac := []byte{0x02, 0, 0x5e, 0x10, 0x20, 0x30}
	h.send(
		cannedPacket{id: 1, hook: 2, mark: 0x53470001, inDev: 2, hwAddr: mac, payload: payload}.message(),
		cannedPacket{id: 2, hook: 0, payload: []byte{0x60}}.message(),
		// An address longer than the attribute's 8 bytes is not one.
		cannedPacket{id: 3, inDev: 4, hwAddr: make([]byte, 9), payload: []byte{0x45}}.message(),
	)
	h.step()
	want := []Packet{
		{ID: 1, Hook: 2, Mark: 0x53470001, InIndex: 2, HwAddr: mac, Payload: payload},
		{ID: 2, Hook: 0, Payload: []byte{0x60}},
		{ID: 3, InIndex: 4, Payload: []byte{0x45}},
	}
	if diff := cmp.Diff(want, rec.packets); diff != "" {
		t.Fatalf("packets (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"handle 1", "handle 2", "handle 3", "flush"}, rec.calls); diff != "" {
		t.Fatalf("calls (-want +got):\n%s", diff)
	}
	if h.r.pkt.Payload != nil {
		t.Fatal("the loop keeps a reference to the last payload")
	}
}

// afterRecorder is a recorder with AfterVerdicts, which notes the
// verdict writes the peer can already read at that moment.
type afterRecorder struct {
	recorder
	h       *harness
	written [][]sentVerdict
}

func (r *afterRecorder) AfterVerdicts() {
	r.calls = append(r.calls, "after")
	r.written = append(r.written, r.h.verdicts()...)
}

// TestReceiverAfterVerdicts checks that a handler with AfterVerdicts has
// it called once per batch, after Flush and after the batch's verdicts
// were written.
func TestReceiverAfterVerdicts(t *testing.T) {
	rec := &afterRecorder{recorder: recorder{verdicts: map[uint32]nf.Verdict{1: nf.Accept}}}
	h := newTestReceiver(t, Config{Queue: 7}, rec)
	rec.h = h
	h.send(cannedPacket{id: 1, payload: []byte{0x45}}.message(), cannedPacket{id: 2, payload: []byte{0x45}}.message())
	h.step()
	if diff := cmp.Diff([]string{"handle 1", "handle 2", "flush", "after"}, rec.calls); diff != "" {
		t.Fatalf("calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([][]sentVerdict{{{1, nfAccept}, {2, nfDrop}}}, rec.written); diff != "" {
		t.Fatalf("verdicts written when AfterVerdicts ran (-want +got):\n%s", diff)
	}
}

// TestReceiverBatchesVerdicts checks that a batch's verdicts go out in one
// write, one batch verdict per run of equal verdicts, and are counted.
func TestReceiverBatchesVerdicts(t *testing.T) {
	rec := &recorder{verdicts: map[uint32]nf.Verdict{1: nf.Accept, 2: nf.Accept, 6: nf.Accept, 9: nf.Accept}}
	h := newTestReceiver(t, Config{Queue: 7}, rec)
	for id := uint32(1); id <= 9; id++ {
		h.send(cannedPacket{id: id, payload: []byte{0x45}}.message())
	}
	h.step()
	want := [][]sentVerdict{{{2, nfAccept}, {5, nfDrop}, {6, nfAccept}, {8, nfDrop}, {9, nfAccept}}}
	if diff := cmp.Diff(want, h.verdicts()); diff != "" {
		t.Fatalf("verdict writes (-want +got):\n%s", diff)
	}
	wantStats := Stats{Received: 9, Batches: 1, Verdicts: VerdictStats{Accept: 4, Drop: 5}}
	if diff := cmp.Diff(wantStats, h.q.Stats()); diff != "" {
		t.Fatalf("stats (-want +got):\n%s", diff)
	}

	// The next batch continues: one drop for the run 10..12.
	for id := uint32(10); id <= 12; id++ {
		h.send(cannedPacket{id: id, payload: []byte{0x45}}.message())
	}
	h.step()
	if diff := cmp.Diff([][]sentVerdict{{{12, nfDrop}}}, h.verdicts()); diff != "" {
		t.Fatalf("second batch (-want +got):\n%s", diff)
	}
}

// TestReceiverBatchSize checks that one receive takes at most rxBatch
// messages and the rest wait for the next.
func TestReceiverBatchSize(t *testing.T) {
	h := newTestReceiver(t, Config{Queue: 7}, &recorder{})
	for id := uint32(1); id <= rxBatch+10; id++ {
		h.send(cannedPacket{id: id, payload: []byte{0x45}}.message())
	}
	h.step()
	h.step()
	if diff := cmp.Diff([][]sentVerdict{{{rxBatch, nfDrop}}, {{rxBatch + 10, nfDrop}}}, h.verdicts()); diff != "" {
		t.Fatalf("verdict writes (-want +got):\n%s", diff)
	}
}

// TestReceiverRequeuesSetupPackets checks the re-queue of the packets the
// setup filter held back: when the first packet seen has id 5, ids 1..4
// get NF_REPEAT before any other verdict, and only once.
func TestReceiverRequeuesSetupPackets(t *testing.T) {
	rec := &recorder{verdicts: map[uint32]nf.Verdict{5: nf.Accept}}
	h := newTestReceiver(t, Config{Queue: 7}, rec)
	h.send(cannedPacket{id: 5, payload: []byte{0x45}}.message(), cannedPacket{id: 6, payload: []byte{0x45}}.message())
	h.step()
	h.send(cannedPacket{id: 7, payload: []byte{0x45}}.message())
	h.step()
	want := [][]sentVerdict{{{4, nfRepeat}, {5, nfAccept}, {6, nfDrop}}, {{7, nfDrop}}}
	if diff := cmp.Diff(want, h.verdicts()); diff != "" {
		t.Fatalf("verdict writes (-want +got):\n%s", diff)
	}
	if st := h.q.Stats(); st.Verdicts.Accept != 1 || st.Verdicts.Drop != 2 {
		t.Fatalf("stats %+v: the re-queue must not count as a verdict", st)
	}
}

func TestReceiverFirstPacketOneHoldsNothing(t *testing.T) {
	h := newTestReceiver(t, Config{Queue: 7}, &recorder{})
	h.send(cannedPacket{id: 1, payload: []byte{0x45}}.message())
	h.step()
	if diff := cmp.Diff([][]sentVerdict{{{1, nfDrop}}}, h.verdicts()); diff != "" {
		t.Fatalf("verdict writes (-want +got):\n%s", diff)
	}
}

// TestReceiverMalformed covers messages the handler cannot judge: they get
// the operator's fail verdict when they have an id, are counted, and never
// reach the handler.
func TestReceiverMalformed(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failopen=%v", failOpen), func(t *testing.T) {
			rec := &recorder{verdicts: map[uint32]nf.Verdict{1: nf.Accept, 5: nf.Accept}}
			h := newTestReceiver(t, Config{Queue: 7, FailOpen: failOpen}, rec)
			huge := make([]byte, rxSlot) // its message is larger than a receive buffer
			h.send(
				cannedPacket{id: 1, payload: []byte{0x45}}.message(),
				cannedPacket{id: 2}.message(),                             // no payload
				cannedPacket{id: 3, payload: []byte{}}.message(),          // empty payload
				cannedPacket{id: 4, payload: huge}.message(),              // truncated
				cannedPacket{noID: true, payload: []byte{0x45}}.message(), // no id: no verdict
				[]byte{1, 2, 3}, // shorter than a header
				cannedPacket{id: 5, payload: []byte{0x45}}.message(),
			)
			h.step()
			fail := uint32(nfDrop)
			if failOpen {
				fail = nfAccept
			}
			var want []sentVerdict
			if failOpen {
				want = []sentVerdict{{5, nfAccept}}
			} else {
				want = []sentVerdict{{1, nfAccept}, {4, fail}, {5, nfAccept}}
			}
			if diff := cmp.Diff([][]sentVerdict{want}, h.verdicts()); diff != "" {
				t.Fatalf("verdict writes (-want +got):\n%s", diff)
			}
			if got := len(rec.packets); got != 2 {
				t.Fatalf("handler saw %d packets, want 2 (ids 1 and 5)", got)
			}
			st := h.q.Stats()
			if st.Malformed != 5 || st.Received != 2 {
				t.Fatalf("stats %+v: want 5 malformed (3 with an id, 2 without), 2 received", st)
			}
			if st.Verdicts.Accept+st.Verdicts.Drop != 5 {
				t.Fatalf("stats %+v: want 5 verdicts", st)
			}
		})
	}
}

func TestReceiverCountsRejectedVerdicts(t *testing.T) {
	h := newTestReceiver(t, Config{Queue: 7}, &recorder{})
	h.send(errorMessage(unix.ENOENT), errorMessage(0), cannedPacket{id: 1, payload: []byte{0x45}}.message())
	h.step()
	if st := h.q.Stats(); st.VerdictErrors != 1 || st.Received != 1 || st.Malformed != 0 {
		t.Fatalf("stats %+v: want 1 verdict error (an ack with errno 0 is none), 1 received", st)
	}
}

func TestReceiverCountsFailedVerdictWrites(t *testing.T) {
	h := newTestReceiver(t, Config{Queue: 7}, &recorder{})
	h.send(cannedPacket{id: 1, payload: []byte{0x45}}.message(), cannedPacket{id: 2, payload: []byte{0x45}}.message())
	if err := h.r.receive(); err != nil {
		t.Fatal(err)
	}
	unix.Shutdown(h.peer, unix.SHUT_RD) // the loop's writes now fail with EPIPE
	h.r.handle()
	if st := h.q.Stats(); st.VerdictErrors != 2 || st.Verdicts.Drop != 0 {
		t.Fatalf("stats %+v: want 2 verdict errors and no verdict counted", st)
	}
}

// countingHandler is a BatchHandler that allocates nothing.
type countingHandler struct{ handled, flushed int }

func (c *countingHandler) Handle(*Packet) nf.Verdict { c.handled++; return nf.Drop }
func (c *countingHandler) Flush()                    { c.flushed++ }

// synMessages are rxBatch canned packet messages of SYN size, ids from 1.
func synMessages() [][]byte {
	msgs := make([][]byte, rxBatch)
	for i := range msgs {
		msgs[i] = cannedPacket{id: uint32(i + 1), hook: 0, payload: make([]byte, 60)}.message()
	}
	return msgs
}

// renumber sets the packet id of a canned message.
func renumber(m []byte, id uint32) {
	binary.BigEndian.PutUint32(m[nlmsgHdrLen+nfgenHdrLen+nlaHdrLen:], id)
}

func TestReceiverAllocatesNothing(t *testing.T) {
	c := &countingHandler{}
	h := newTestReceiver(t, Config{Queue: 7}, c)
	msgs := synMessages()
	id := uint32(0)
	if n := testing.AllocsPerRun(50, func() {
		for _, m := range msgs {
			id++
			renumber(m, id)
			if _, err := unix.Write(h.peer, m); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.r.receive(); err != nil {
			t.Fatal(err)
		}
		h.r.handle()
		if _, err := unix.Read(h.peer, h.buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("a batch of %d packets allocates %.1f times", rxBatch, n)
	}
	if c.handled != 51*rxBatch || c.flushed != 51 {
		t.Fatalf("handled %d packets in %d flushes, want %d in 51", c.handled, c.flushed, 51*rxBatch)
	}
}

// BenchmarkReceiveBatch drives the receive loop with full batches of
// canned SYN-sized packet messages: recvmmsg, parse, handler, one verdict
// write. The time includes writing the canned messages into the socket.
func BenchmarkReceiveBatch(b *testing.B) {
	c := &countingHandler{}
	h := newTestReceiver(b, Config{Queue: 7}, c)
	msgs := synMessages()
	id := uint32(0)
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range msgs {
			id++
			renumber(m, id)
			if _, err := unix.Write(h.peer, m); err != nil {
				b.Fatal(err)
			}
		}
		if err := h.r.receive(); err != nil {
			b.Fatal(err)
		}
		h.r.handle()
		if _, err := unix.Read(h.peer, h.buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(c.handled), "ns/packet")
}

func FuzzMessages(f *testing.F) {
	f.Add(cannedPacket{id: 1, hook: 2, mark: 3, payload: []byte{0x45, 0}}.message())
	f.Add(cannedPacket{noID: true}.message())
	f.Add(errorMessage(unix.ENOENT))
	f.Add(append(cannedPacket{id: 9, payload: []byte{1}}.message(), cannedPacket{id: 10}.message()...))
	// Ids 1..64 get each verdict in turn, holds included.
	rec := &recorder{verdicts: map[uint32]nf.Verdict{}}
	for id := uint32(1); id <= 64; id++ {
		rec.verdicts[id] = []nf.Verdict{nf.Drop, nf.Accept, nf.Hold, nf.AcceptRewritten}[id%4]
	}
	h := newTestReceiver(f, Config{Queue: 7}, rec)
	f.Fuzz(func(t *testing.T, b []byte) {
		h.t = t
		rec.packets = rec.packets[:0]
		h.r.messages(b, false)
		h.r.messages(b, true)
		h.r.closeRun()
		h.r.sendVerdicts()
		for id := uint32(2); id <= 64; id += 4 {
			_ = h.q.Release(id, nf.Accept, []byte{0x45})
		}
		if n := h.q.Held(); n != 0 {
			t.Fatalf("%d held after releasing every id held", n)
		}
		h.r.refreshHolds()
		h.messages()
		for _, p := range rec.packets {
			if len(p.Payload) == 0 {
				t.Fatal("handler got an empty payload")
			}
		}
	})
}
