package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// fakeQueue records what the engine holds and releases, as a queue would
// see it: a release of a packet it does not hold is an error.
type fakeQueue struct {
	mu       sync.Mutex
	held     map[uint32][]byte // id -> the packet as queued
	released []release
	err      error // returned by Release when set
	// sentSoFar, when set, tells how many packets the engine had sent
	// at each release.
	sentSoFar func() int
	// discard accepts releases of anything and records none.
	discard bool
}

type release struct {
	id         uint32
	v          nf.Verdict
	packet     []byte // nil: unchanged
	sentBefore int
}

func (q *fakeQueue) hold(id uint32, b []byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held == nil {
		q.held = make(map[uint32][]byte)
	}
	q.held[id] = append([]byte(nil), b...)
}

func (q *fakeQueue) Release(id uint32, v nf.Verdict, packet []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	if q.discard {
		return nil
	}
	if _, ok := q.held[id]; !ok {
		return fmt.Errorf("packet %d: %w", id, errNotHeld)
	}
	delete(q.held, id)
	var p []byte
	if packet != nil {
		p = append([]byte(nil), packet...)
	}
	r := release{id: id, v: v, packet: p}
	if q.sentSoFar != nil {
		r.sentBefore = q.sentSoFar()
	}
	q.released = append(q.released, r)
	return nil
}

var errNotHeld = errors.New("not held")

func (q *fakeQueue) heldCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.held)
}

func (q *fakeQueue) releases() []release {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]release(nil), q.released...)
}

func earlyOn(c *Config) { c.EarlyData = true }

// dataSeg is a client data segment of the flow handshake made, n bytes
// after its first, carrying data.
func (h *harness) dataSeg(cookie uint32, n int, data string, flags packet.Flags) []byte {
	seg := build(h.t, packet.Segment{Src: client, Dst: server, Seq: clientISN + 1 + uint32(n), Ack: cookie + 1, Flags: packet.ACK | flags, Window: 502})
	return appendPayload(seg, []byte(data))
}

// backendAnswers sends the backend's SYN-ACK to the replayed SYN.
func (h *harness) backendAnswers(serverISN uint32) {
	h.t.Helper()
	h.handle(packet.Segment{Src: server, Dst: client, Seq: serverISN, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160,
		Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}, nf.Drop)
}

func TestEarlyWindow(t *testing.T) {
	tests := []struct {
		name    string
		backend uint16 // the backend's MSS
		opts    packet.Options
		v6      bool
		want    uint16
	}{
		{"MSS announced", 1460, linuxOptions(), false, 4 * 1460},
		{"IPv6", 1440, linuxOptions(), true, 4 * 1440},
		{"no MSS offered, IPv4", 1460, packet.Options{SACKPermitted: true}, false, 4 * 536},
		{"no MSS offered, IPv6", 1440, packet.Options{SACKPermitted: true}, true, 4 * 1220},
		{"jumbo", 8960, packet.Options{MSS: 8960, HasMSS: true}, false, 4 * 8960},
		{"capped at the unscaled maximum", 16384, packet.Options{MSS: 16384, HasMSS: true}, false, 0xffff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				earlyOn(c)
				c.BackendOverride = &BackendOptions{MSS: tt.backend, WindowScale: 7, SACKPermitted: true}
			})
			src, dst := client, server
			if tt.v6 {
				src, dst = client6, server6
			}
			h.handle(syn(src, dst, tt.opts), nf.Drop)
			if got := h.expect(1)[0].p.Window; got != tt.want {
				t.Fatalf("SYN-ACK window %d, want %d", got, tt.want)
			}
		})
	}
	// Off, the window stays shut.
	h := newHarness(t, nil)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	if got := h.expect(1)[0].p.Window; got != 0 {
		t.Fatalf("early data off: SYN-ACK window %d, want 0", got)
	}
}

func TestEarlyDataHeldUntilTheBackendAnswers(t *testing.T) {
	// Batches that send at Flush, as the real ones do, so the order of
	// the backend's ACK and the released segments is the engine's doing.
	bs := &batchSender{fakeSender: &fakeSender{}, capacity: 64}
	h := newHarness(t, func(c *Config) { earlyOn(c); c.NewBatch = bs.NewBatch })
	h.send = bs.fakeSender
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq

	// The request rides on the third ACK and continues in two more
	// segments, the last with FIN.
	parts := []string{"GET / HTTP/1.1\r\n", "Host: example.test\r\n", "\r\n"}
	var queued [][]byte
	off := 0
	for i, part := range parts {
		var flags packet.Flags = packet.PSH
		if i == len(parts)-1 {
			flags |= packet.FIN
		}
		b := h.dataSeg(cookie, off, part, flags)
		queued = append(queued, append([]byte(nil), b...))
		if v := h.handleAt(b, nf.Forward); v != nf.Hold {
			t.Fatalf("segment %d: verdict %v, want hold", i, v)
		}
		off += len(part)
	}
	if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Seq != clientISN {
		t.Fatalf("the first data segment did not replay the SYN: %+v", r)
	}
	if h.stat(EarlyDataHeld) != 3 || h.e.heldSlots() != 3 || h.e.HeldBy(0) != 3 || len(h.queue.releases()) != 0 {
		t.Fatalf("held %d (engine %d), released %d before the hand-off", h.stat(EarlyDataHeld), h.e.heldSlots(), len(h.queue.releases()))
	}

	const serverISN = 0x7fff_fff0
	h.queue.sentSoFar = func() int { return len(h.send.pkts) }
	// The backend's SYN-ACK releases them, before the flow's entry
	// exists: the request's path does not wait for conntrack.
	h.backendAnswers(serverISN)
	if n := len(h.queue.releases()); n != 3 || len(h.handoff.got) != 0 {
		t.Fatalf("%d released at the backend's SYN-ACK, %d entries made", n, len(h.handoff.got))
	}
	h.drainHandoffs()

	rel := h.queue.releases()
	if len(rel) != 3 {
		t.Fatalf("%d releases, want 3", len(rel))
	}
	for i, r := range rel {
		if r.v != nf.Accept || r.packet == nil {
			t.Fatalf("release %d: %v with packet %v", i, r.v, r.packet != nil)
		}
		if r.sentBefore != 1 {
			t.Fatalf("release %d after %d sent packets, want after the backend's ACK alone", i, r.sentBefore)
		}
		var p, orig packet.Packet
		if err := packet.Parse(r.packet, &p); err != nil {
			t.Fatal(err)
		}
		if err := packet.Parse(queued[i], &orig); err != nil {
			t.Fatal(err)
		}
		if p.Ack != serverISN+1 || p.Seq != orig.Seq || p.Flags != orig.Flags {
			t.Fatalf("release %d: seq %#x ack %#x flags %v, want seq %#x ack %#x flags %v", i, p.Seq, p.Ack, p.Flags, orig.Seq, serverISN+1, orig.Flags)
		}
		if !packet.VerifyTCPChecksum(r.packet, &p) {
			t.Fatalf("release %d: bad TCP checksum", i)
		}
		// Only the ack and the checksum changed.
		if n := diffBytes(r.packet, queued[i]); n > 6 {
			t.Fatalf("release %d: %d bytes differ from the queued segment", i, n)
		}
	}
	out := h.expect(2)
	if ack := out[0].p; ack.Destination() != server || ack.Ack != serverISN+1 || ack.PayloadLen != 0 {
		t.Fatalf("backend ACK %+v", ack)
	}
	if update := out[1].p; update.Destination() != client || update.Ack != clientISN+1 {
		t.Fatalf("window update %+v", update)
	}
	if h.stat(EarlyDataReleased) != 3 || h.e.heldSlots() != 0 || h.e.HeldBy(0) != 0 {
		t.Fatalf("released %d, still held %d", h.stat(EarlyDataReleased), h.e.heldSlots())
	}

	// A segment that met conntrack before the entry existed reaches the
	// queue after the hand-off: it is rewritten and accepted at once.
	late := h.dataSeg(cookie, off, "more", packet.PSH)
	if v := h.handleAt(late, nf.Forward); v != nf.AcceptRewritten {
		t.Fatalf("late segment verdict %v", v)
	}
	var p packet.Packet
	if err := packet.Parse(late, &p); err != nil {
		t.Fatal(err)
	}
	if p.Ack != serverISN+1 || !packet.VerifyTCPChecksum(late, &p) {
		t.Fatalf("late segment ack %#x, checksum ok %v", p.Ack, packet.VerifyTCPChecksum(late, &p))
	}
	if h.stat(TranslatedClient) != 1 || h.stat(EarlyDataReleased) != 3 {
		t.Fatalf("late %d, released %d", h.stat(TranslatedClient), h.stat(EarlyDataReleased))
	}
}

func diffBytes(a, b []byte) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestEarlyDataBounds(t *testing.T) {
	h := newHarness(t, func(c *Config) { earlyOn(c); c.MaxHeld = EarlySegments + 1 })
	cookie, _ := h.handshake(linuxOptions())
	for i := range EarlySegments {
		if v := h.handleAt(h.dataSeg(cookie, i*10, "0123456789", packet.PSH), nf.Forward); v != nf.Hold {
			t.Fatalf("segment %d: %v", i, v)
		}
	}
	// One more for this flow is refused: the client sends it again once
	// its window opens.
	if v := h.handleAt(h.dataSeg(cookie, EarlySegments*10, "x", packet.PSH), nf.Forward); v != nf.Drop {
		t.Fatalf("segment past the flow's bound: %v", v)
	}
	// A second flow gets the pool's last slot, then nothing.
	other := netip.AddrPortFrom(client.Addr(), client.Port()+1)
	h.handle(syn(other, server, linuxOptions()), nf.Drop)
	cookie2 := h.expect(1)[0].p.Seq
	seg := func(n int) []byte {
		b := build(t, packet.Segment{Src: other, Dst: server, Seq: clientISN + 1 + uint32(n), Ack: cookie2 + 1, Flags: packet.ACK | packet.PSH})
		return appendPayload(b, []byte("abc"))
	}
	if v := h.handleAt(seg(0), nf.Forward); v != nf.Hold {
		t.Fatalf("second flow's first segment: %v", v)
	}
	h.expect(1) // its replayed SYN
	if v := h.handleAt(seg(3), nf.Forward); v != nf.Drop {
		t.Fatalf("segment past the global bound: %v", v)
	}
	if h.stat(EarlyDataRefused) != 2 || h.e.heldSlots() != EarlySegments+1 {
		t.Fatalf("refused %d, held %d", h.stat(EarlyDataRefused), h.e.heldSlots())
	}
	// A segment that does not ACK the flow's cookie is no early data of it.
	wrong := build(t, packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 2, Flags: packet.ACK | packet.PSH})
	if v := h.handleAt(appendPayload(wrong, []byte("x")), nf.Forward); v != nf.Drop {
		t.Fatalf("segment with a wrong ack: %v", v)
	}
}

func TestEarlyDataDroppedWhenTheFlowEnds(t *testing.T) {
	tests := []struct {
		name string
		end  func(h *harness, cookie uint32)
		want Counter
	}{
		{"backend reset", func(h *harness, cookie uint32) {
			h.handle(packet.Segment{Src: server, Dst: client, Ack: clientISN + 1, Flags: packet.RST | packet.ACK}, nf.Drop)
		}, BackendReset},
		{"client reset", func(h *harness, cookie uint32) {
			h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.RST}, nf.Drop)
		}, ClientReset},
		{"backend silent", func(h *harness, cookie uint32) {
			for range DefaultSYNRetries + 1 {
				h.clock.advance(10 * time.Second)
				h.e.Tick()
			}
		}, BackendTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, earlyOn)
			cookie, _ := h.handshake(linuxOptions())
			for i := range 2 {
				if v := h.handleAt(h.dataSeg(cookie, i, "x", packet.PSH), nf.Forward); v != nf.Hold {
					t.Fatalf("verdict %v", v)
				}
			}
			tt.end(h, cookie)
			if h.stat(tt.want) != 1 {
				t.Fatalf("%v not counted", tt.want)
			}
			rel := h.queue.releases()
			if len(rel) != 2 || h.queue.heldCount() != 0 || h.e.heldSlots() != 0 {
				t.Fatalf("%d released, %d still held by the queue, %d by the engine", len(rel), h.queue.heldCount(), h.e.heldSlots())
			}
			for _, r := range rel {
				if r.v != nf.Drop {
					t.Fatalf("held segment of an ended flow given %v", r.v)
				}
			}
			if h.stat(EarlyDataDropped) != 2 {
				t.Fatalf("dropped %d", h.stat(EarlyDataDropped))
			}
		})
	}
}

func TestEarlyDataReleaseFailureCounted(t *testing.T) {
	h := newHarness(t, earlyOn)
	cookie, _ := h.handshake(linuxOptions())
	if v := h.handleAt(h.dataSeg(cookie, 0, "x", packet.PSH), nf.Forward); v != nf.Hold {
		t.Fatalf("verdict %v", v)
	}
	h.queue.err = errors.New("queue closed")
	h.backendAnswers(0x100)
	h.drainHandoffs()
	if h.stat(EarlyDataLost) != 1 || h.stat(HandedOff) != 1 || h.e.heldSlots() != 0 {
		t.Fatalf("lost %d, handed off %d, held %d", h.stat(EarlyDataLost), h.stat(HandedOff), h.e.heldSlots())
	}
}

func TestEarlyDataOffOrNoHolder(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		nil  bool
	}{
		{"early data off", nil, false},
		{"no holder", earlyOn, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.mod)
			if tt.nil {
				h.w = h.e.NewWorker(h.e.cfg.NewBatch(), nil)
			}
			cookie, _ := h.handshake(linuxOptions())
			if v := h.handleAt(h.dataSeg(cookie, 0, "x", packet.PSH), nf.Forward); v != nf.Drop {
				t.Fatalf("verdict %v, want drop", v)
			}
			if h.e.heldSlots() != 0 {
				t.Fatal("held without early data")
			}
		})
	}
}

func TestEarlyDataHoldAllocatesNothing(t *testing.T) {
	h := newHarness(t, earlyOn)
	cookie, _ := h.handshake(linuxOptions())
	seg := h.dataSeg(cookie, 0, "GET / HTTP/1.1\r\n\r\n", packet.PSH)
	k := flowKey{client: client, server: server}
	cycle := func() {
		h.lastID++
		if v := h.w.Handle(seg, nf.Forward, h.lastID); v != nf.Hold {
			t.Fatalf("verdict %v", v)
		}
		h.e.mu.Lock()
		f := *h.e.pending.get(k)
		h.e.pending.get(k).held = heldRefs{}
		h.e.mu.Unlock()
		h.e.releaseHeld(h.w.out, h.w.out.c, 0, f.held, nf.Accept, &f)
	}
	h.queue.discard = true
	cycle() // the pool's first slot
	if n := testing.AllocsPerRun(100, cycle); n != 0 {
		t.Fatalf("%v allocations per held and released segment", n)
	}
}

// TestEarlyDataOnReusedPorts: segments that met a closing entry of the
// same ports (the stale hook) carry that entry, whose sequence adjustment
// the kernel would apply once more: a new flow's request is held as
// usual, but at the hand-off dropped from the queue and sent translated
// by the engine; the old flow's tail still passes.
func TestEarlyDataOnReusedPorts(t *testing.T) {
	h := newHarness(t, earlyOn)
	// The old flow's last data: no cookie, the kernel's.
	old := build(t, packet.Segment{Src: client, Dst: server, Seq: 0x4000, Ack: 0x9000, Flags: packet.ACK | packet.PSH})
	if v := h.handleAt(appendPayload(old, []byte("bye")), HookStaleEntry); v != nf.Accept {
		t.Fatalf("old flow's tail: verdict %v, want accept", v)
	}

	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	// The request riding on the cookie ACK starts the flow and is held,
	// and so is the rest of it.
	parts := []string{"GET /", " HTTP/1.1\r\n\r\n"}
	if v := h.handleAt(h.dataSeg(cookie, 0, parts[0], packet.PSH), HookStaleEntry); v != nf.Hold {
		t.Fatalf("request on the cookie ACK, stale entry: verdict %v, want hold", v)
	}
	if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Seq != clientISN {
		t.Fatalf("the request did not replay the SYN: %+v", r)
	}
	if v := h.handleAt(h.dataSeg(cookie, len(parts[0]), parts[1], packet.PSH), HookStaleEntry); v != nf.Hold {
		t.Fatalf("request segment, stale entry: verdict %v, want hold", v)
	}
	if h.stat(StalePassed) != 1 || h.e.heldSlots() != 2 {
		t.Fatalf("stale passed %d, held %d", h.stat(StalePassed), h.e.heldSlots())
	}

	const serverISN = 0x100
	h.backendAnswers(serverISN)
	// Until the hand-off replaced the old entry, the backend is not ACKed
	// (its answer would meet that entry) and the request stays held.
	h.expect(0)
	if n := len(h.queue.releases()); n != 0 || h.e.heldSlots() != 2 {
		t.Fatalf("released %d, held %d before the old entry was replaced", n, h.e.heldSlots())
	}
	h.drainHandoffs()
	// The queue drops both; the engine sends them, translated, between
	// the backend's ACK and the client's window update.
	for _, r := range h.queue.releases() {
		if r.v != nf.Drop {
			t.Fatalf("a segment carrying the old entry released with %v", r.v)
		}
	}
	out := h.expect(4)
	for i, want := range []int{0, len(parts[0]), len(parts[1]), 0} {
		p := out[i].p
		if p.PayloadLen != want {
			t.Fatalf("packet %d: %d bytes of payload, want %d: %+v", i, p.PayloadLen, want, p)
		}
		if i == 1 || i == 2 {
			if p.Destination() != server || p.Ack != serverISN+1 {
				t.Fatalf("resent segment %d: to %s ack %#x", i, p.Destination(), p.Ack)
			}
		}
	}
	if h.stat(EarlyDataReleased) != 2 || h.e.heldSlots() != 0 {
		t.Fatalf("released %d, held %d", h.stat(EarlyDataReleased), h.e.heldSlots())
	}
	// A late one that met the old entry is sent the same way.
	if v := h.handleAt(h.dataSeg(cookie, 0, parts[0], packet.PSH), HookStaleEntry); v != nf.Drop {
		t.Fatalf("late request segment, stale entry: verdict %v, want drop", v)
	}
	if p := h.expect(1)[0].p; p.Destination() != server || p.Ack != serverISN+1 || p.PayloadLen != len(parts[0]) {
		t.Fatalf("late segment resent as %+v", p)
	}
	if h.stat(TranslatedClient) != 1 {
		t.Fatalf("late %d", h.stat(TranslatedClient))
	}
}

// ackedFlow makes a flow whose backend answered with serverISN and was
// ACKed, its entry not made yet, and returns its cookie.
func (h *harness) ackedFlow(serverISN uint32) (cookie uint32) {
	h.t.Helper()
	cookie, _ = h.handshake(linuxOptions())
	h.backendAnswers(serverISN)
	h.expect(1) // the backend's ACK
	return cookie
}

// TestTranslatedBeforeTheEntry: once the engine has ACKed the backend, the
// backend may answer before the flow's conntrack entry exists, and the
// client acknowledge that answer; both meet no entry and cross the queue,
// where the engine does what the entry would: the backend's seq and the
// client's ack move between the two sequence spaces.
func TestTranslatedBeforeTheEntry(t *testing.T) {
	h := newHarness(t, earlyOn)
	const serverISN = 0x1000
	cookie, isn := h.ackedFlow(serverISN), uint32(clientISN)

	response := appendPayload(build(t, packet.Segment{Src: server, Dst: client, Seq: serverISN + 1, Ack: isn + 1 + 20, Flags: packet.ACK | packet.PSH, Window: 509}), []byte("HTTP/1.1 200 OK\r\n"))
	if v := h.handleAt(response, nf.Forward); v != nf.AcceptRewritten {
		t.Fatalf("backend data before the entry: verdict %v", v)
	}
	var p packet.Packet
	if err := packet.Parse(response, &p); err != nil {
		t.Fatal(err)
	}
	if p.Seq != cookie+1 || p.Ack != isn+1+20 || !packet.VerifyTCPChecksum(response, &p) {
		t.Fatalf("backend data rewritten to seq %#x ack %#x (want %#x, %#x), checksum ok %v", p.Seq, p.Ack, cookie+1, isn+1+20, packet.VerifyTCPChecksum(response, &p))
	}

	ackOfResponse := build(t, packet.Segment{Src: client, Dst: server, Seq: isn + 1 + 20, Ack: cookie + 1 + 17, Flags: packet.ACK, Window: 500})
	if v := h.handleAt(ackOfResponse, nf.Forward); v != nf.AcceptRewritten {
		t.Fatalf("client ACK of the response before the entry: verdict %v", v)
	}
	if err := packet.Parse(ackOfResponse, &p); err != nil {
		t.Fatal(err)
	}
	if p.Ack != serverISN+1+17 || p.Seq != isn+1+20 || !packet.VerifyTCPChecksum(ackOfResponse, &p) {
		t.Fatalf("client ACK rewritten to ack %#x seq %#x, want %#x", p.Ack, p.Seq, serverISN+1+17)
	}
	// The third ACK again is no news to anyone.
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK}, nf.Drop)
	if h.stat(TranslatedBackend) != 1 || h.stat(TranslatedClient) != 1 || h.stat(DuplicateACK) != 1 {
		t.Fatalf("translated backend %d client %d, duplicates %d", h.stat(TranslatedBackend), h.stat(TranslatedClient), h.stat(DuplicateACK))
	}
	// After the hand-off, stragglers that met no entry are translated the
	// same way.
	h.drainHandoffs()
	h.expect(1) // the window update
	if v := h.handleAt(append([]byte(nil), ackOfResponse...), nf.Forward); v != nf.AcceptRewritten {
		t.Fatalf("straggler after the hand-off: verdict %v", v)
	}
	// A new connection on the same ports is known by its own valid
	// cookie, though a client reusing its ports picks an ISN near its
	// last one: it replays its SYN and takes the lingering record's place.
	isn2 := isn + 5000
	h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2, Flags: packet.SYN, Window: 64240, Options: linuxOptions()}, nf.Drop)
	cookie2 := h.expect(1)[0].p.Seq
	h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2 + 1, Ack: cookie2 + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
	if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Seq != isn2 || r.Destination() != server {
		t.Fatalf("the new connection's ACK did not replay its SYN: %+v", r)
	}
}

// TestSACKNotTranslated: a client ACK with SACK blocks that meets no
// entry, or the flow's closing one, is dropped rather than passed with
// blocks in the wrong sequence space, and counted as what it is: the
// client reporting a hole, not a duplicate of its third ACK.
func TestSACKNotTranslated(t *testing.T) {
	h := newHarness(t, earlyOn)
	const serverISN = 0x1000
	cookie, isn := h.ackedFlow(serverISN), uint32(clientISN)

	// The response's first 1,000 bytes came, and its FIN, but not what
	// lies between.
	hole := packet.Segment{Src: client, Dst: server, Seq: isn + 1 + 20, Ack: cookie + 1 + 1000, Flags: packet.ACK, Window: 500}
	fin := packet.SACKBlock{Left: cookie + 1 + 5000, Right: cookie + 1 + 5001}
	if v := h.handleAt(withSACK(t, hole, fin), nf.Forward); v != nf.Drop {
		t.Fatalf("SACK before the entry: verdict %v, want drop", v)
	}
	h.drainHandoffs()
	h.expect(1) // the window update
	// The backend's FIN made the entry closing: the client's ACKs come
	// through the stale rule.
	if v := h.handleAt(withSACK(t, hole, fin), HookStaleEntry); v != nf.Drop {
		t.Fatalf("SACK at the closing entry: verdict %v, want drop", v)
	}
	h.expect(0)
	if h.stat(SACKDropped) != 2 || h.stat(DuplicateACK) != 0 || h.stat(TranslatedClient) != 0 {
		t.Fatalf("SACKs dropped %d, duplicates %d, translated %d; want 2, 0, 0", h.stat(SACKDropped), h.stat(DuplicateACK), h.stat(TranslatedClient))
	}
	// The third ACK again, SACK or not, still is a duplicate.
	third := packet.Segment{Src: client, Dst: server, Seq: isn + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 500}
	if v := h.handleAt(withSACK(t, third, fin), nf.Forward); v != nf.Drop {
		t.Fatalf("third ACK again with SACK: verdict %v, want drop", v)
	}
	if h.stat(DuplicateACK) != 1 || h.stat(SACKDropped) != 2 {
		t.Fatalf("duplicates %d, SACKs dropped %d; want 1, 2", h.stat(DuplicateACK), h.stat(SACKDropped))
	}
}

// TestAnswerToTheOldFlow: a client reusing the ports of a flow in
// TIME_WAIT sends its request, held while the backend's SYN is out; a
// late segment of the old flow then draws the backend's TIME_WAIT ACK,
// which the client's new connection answers with a pure ACK past its
// request. That is dropped, and counted as what it is, not as a repeat of
// the third ACK, which still counts as a duplicate.
func TestAnswerToTheOldFlow(t *testing.T) {
	h := newHarness(t, earlyOn)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	const request = "GET / HTTP/1.1\r\n\r\n"
	if v := h.handleAt(h.dataSeg(cookie, 0, request, packet.PSH), HookStaleEntry); v != nf.Hold {
		t.Fatalf("request on the cookie ACK, stale entry: verdict %v, want hold", v)
	}
	h.expect(1) // the replayed SYN

	isn := uint32(clientISN)
	answer := build(t, packet.Segment{Src: client, Dst: server, Seq: isn + 1 + uint32(len(request)), Ack: cookie + 1, Flags: packet.ACK, Window: 502})
	if v := h.handleAt(answer, HookStaleEntry); v != nf.Drop {
		t.Fatalf("answer to the old flow: verdict %v, want drop", v)
	}
	h.expect(0)
	if h.stat(OldFlowAnswer) != 1 || h.stat(DuplicateACK) != 0 {
		t.Fatalf("answers %d, duplicates %d; want 1, 0", h.stat(OldFlowAnswer), h.stat(DuplicateACK))
	}
	for _, seq := range []uint32{clientISN + 1, clientISN} {
		third := build(t, packet.Segment{Src: client, Dst: server, Seq: seq, Ack: cookie + 1, Flags: packet.ACK, Window: 502})
		if v := h.handleAt(third, HookStaleEntry); v != nf.Drop {
			t.Fatalf("third ACK again (seq %#x): verdict %v, want drop", seq, v)
		}
	}
	h.expect(0)
	if h.stat(OldFlowAnswer) != 1 || h.stat(DuplicateACK) != 2 || h.stat(BackendSYNSent) != 1 {
		t.Fatalf("answers %d, duplicates %d, replays %d; want 1, 2, 1", h.stat(OldFlowAnswer), h.stat(DuplicateACK), h.stat(BackendSYNSent))
	}
}

// withSACK builds s, an IPv4 segment, with a SACK option of blocks (which
// packet.Build never emits).
func withSACK(t *testing.T, s packet.Segment, blocks ...packet.SACKBlock) []byte {
	t.Helper()
	b := build(t, s)
	ihl := int(b[0]&0x0f) * 4
	doff := int(b[ihl+12]>>4) * 4
	opt := []byte{1, 1, 5, byte(2 + 8*len(blocks))} // NOP NOP SACK
	for _, bl := range blocks {
		opt = binary.BigEndian.AppendUint32(opt, bl.Left)
		opt = binary.BigEndian.AppendUint32(opt, bl.Right)
	}
	out := append(append(append([]byte(nil), b[:ihl+doff]...), opt...), b[ihl+doff:]...)
	binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
	out[10], out[11] = 0, 0
	binary.BigEndian.PutUint16(out[10:], packet.Checksum(out[:ihl]))
	tcp := out[ihl:]
	tcp[12] = byte((doff+len(opt))/4) << 4
	tcp[16], tcp[17] = 0, 0
	var p packet.Packet
	if err := packet.Parse(out, &p); err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(tcp[16:], packet.TCPChecksum(p.Src, p.Dst, tcp))
	if int(p.Options.NumSACKBlocks) != len(blocks) {
		t.Fatalf("built %d SACK blocks, parsed %d", len(blocks), p.Options.NumSACKBlocks)
	}
	return out
}

// TestResetWhileTheEntryIsMade: a flow reset by either end after its
// backend was ACKed but before its hand-off made the entry: the RST goes
// on, translated (the other end has the flow, past its first bytes), the
// flow gets no window update, and the entry made for it is taken back
// rather than left for the established timeout.
func TestResetWhileTheEntryIsMade(t *testing.T) {
	const serverISN = 0x100
	isn := uint32(clientISN)
	for _, tc := range []struct {
		name string
		rst  func(cookie uint32) packet.Segment
		want func(cookie uint32, p *packet.Packet) bool
	}{
		{"by the backend",
			func(uint32) packet.Segment {
				return packet.Segment{Src: server, Dst: client, Seq: serverISN + 1 + 300, Ack: isn + 1, Flags: packet.RST | packet.ACK}
			},
			func(cookie uint32, p *packet.Packet) bool { return p.Seq == cookie+1+300 && p.Ack == isn+1 }},
		{"by the client",
			func(cookie uint32) packet.Segment {
				return packet.Segment{Src: client, Dst: server, Seq: isn + 1 + 20, Ack: cookie + 1 + 300, Flags: packet.RST | packet.ACK}
			},
			func(_ uint32, p *packet.Packet) bool { return p.Ack == serverISN+1+300 && p.Seq == isn+1+20 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, earlyOn)
			cookie, _ := h.handshake(linuxOptions())
			h.backendAnswers(serverISN)
			h.expect(1) // the backend's ACK
			rst := build(t, tc.rst(cookie))
			if v := h.handleAt(rst, nf.Forward); v != nf.AcceptRewritten {
				t.Fatalf("RST before the entry: verdict %v", v)
			}
			var p packet.Packet
			if err := packet.Parse(rst, &p); err != nil {
				t.Fatal(err)
			}
			if !tc.want(cookie, &p) || !packet.VerifyTCPChecksum(rst, &p) {
				t.Fatalf("RST rewritten to seq %#x ack %#x, checksum ok %v", p.Seq, p.Ack, packet.VerifyTCPChecksum(rst, &p))
			}
			h.expect(0)
			h.drainHandoffs()
			h.expect(0) // no window update
			if len(h.handoff.got) != 1 || h.handoff.deleted != 1 || h.stat(EndedUnseen) != 1 {
				t.Fatalf("created %d, deleted %d, ended unseen %d", len(h.handoff.got), h.handoff.deleted, h.stat(EndedUnseen))
			}
		})
	}

	// The record gone (forgotten) while the create runs.
	h := newHarness(t, earlyOn)
	h.handshake(linuxOptions())
	h.backendAnswers(serverISN)
	h.expect(1)
	h.handoff.onCreate = func() {
		h.e.mu.Lock()
		h.e.pending.remove(flowKey{client: client, server: server})
		h.e.mu.Unlock()
	}
	h.drainHandoffs()
	h.expect(0)
	if len(h.handoff.got) != 1 || h.handoff.deleted != 1 || h.stat(HandedOff) != 0 {
		t.Fatalf("created %d, deleted %d, handed off %d", len(h.handoff.got), h.handoff.deleted, h.stat(HandedOff))
	}
}

// TestEndedBeforeTheEntry: a flow whose request, answer and close all
// pass before its entry exists, translated by the engine, would leave an
// entry that saw no FIN, established for days. Once both FINs (or an
// RST) passed unseen by the entry, it is deleted: right after its create,
// or at once if it was made already. One FIN unseen is not enough: the
// entry sees the other and closes by itself.
func TestEndedBeforeTheEntry(t *testing.T) {
	const serverISN = 0x1000
	isn := uint32(clientISN)
	// answered is a flow whose backend was answered and ACKed, its entry
	// not made yet.
	answered := func(t *testing.T) (*harness, uint32) {
		h := newHarness(t, earlyOn)
		cookie, _ := h.handshake(linuxOptions())
		h.backendAnswers(serverISN)
		h.expect(1) // the backend's ACK
		return h, cookie
	}
	backendFIN := func(h *harness) []byte {
		return build(h.t, packet.Segment{Src: server, Dst: client, Seq: serverISN + 101, Ack: isn + 21, Flags: packet.FIN | packet.ACK, Window: 509})
	}
	clientFIN := func(h *harness, cookie uint32) []byte {
		return build(h.t, packet.Segment{Src: client, Dst: server, Seq: isn + 21, Ack: cookie + 102, Flags: packet.FIN | packet.ACK, Window: 500})
	}
	pass := func(h *harness, b []byte, what string) {
		h.t.Helper()
		if v := h.handleAt(b, nf.Forward); v != nf.AcceptRewritten {
			h.t.Fatalf("%s: verdict %v", what, v)
		}
	}
	// settled runs the hand-offs, and checks the window updates sent
	// and the entries deleted.
	settled := func(h *harness, deleted int, updates int) {
		h.t.Helper()
		h.drainHandoffs()
		h.expect(updates)
		if h.handoff.deleted != deleted || h.stat(EndedUnseen) != uint64(deleted) {
			h.t.Fatalf("deleted %d, ended unseen %d, want %d", h.handoff.deleted, h.stat(EndedUnseen), deleted)
		}
	}

	t.Run("both FINs before the create", func(t *testing.T) {
		h, cookie := answered(t)
		pass(h, backendFIN(h), "backend FIN")
		pass(h, clientFIN(h, cookie), "client FIN")
		settled(h, 1, 0)
		// The last ACK meets the lingering record, not an entry.
		pass(h, build(t, packet.Segment{Src: server, Dst: client, Seq: serverISN + 102, Ack: isn + 22, Flags: packet.ACK, Window: 509}), "last ACK")
		settled(h, 1, 0)
	})
	t.Run("one FIN before the create", func(t *testing.T) {
		h, _ := answered(t)
		pass(h, backendFIN(h), "backend FIN")
		settled(h, 0, 1)
	})
	t.Run("the second FIN after the create", func(t *testing.T) {
		h, cookie := answered(t)
		pass(h, backendFIN(h), "backend FIN")
		settled(h, 0, 1)
		// It crossed conntrack before the entry was made.
		pass(h, clientFIN(h, cookie), "client FIN")
		settled(h, 1, 0)
		// Once is enough.
		pass(h, clientFIN(h, cookie), "client FIN again")
		settled(h, 1, 0)
	})
	t.Run("a FIN in the early data", func(t *testing.T) {
		h := newHarness(t, earlyOn)
		cookie, _ := h.handshake(linuxOptions())
		if v := h.handleAt(h.dataSeg(cookie, 0, "GET / HTTP/1.0\r\n\r\n", packet.PSH|packet.FIN), nf.Forward); v != nf.Hold {
			t.Fatalf("early request with FIN: verdict %v", v)
		}
		h.backendAnswers(serverISN)
		h.expect(1)
		pass(h, backendFIN(h), "backend FIN")
		settled(h, 1, 0)
	})
	t.Run("a new flow on the ports keeps its entry", func(t *testing.T) {
		h, cookie := answered(t)
		settled(h, 0, 1)
		pass(h, backendFIN(h), "backend FIN")
		pass(h, clientFIN(h, cookie), "client FIN")
		// Before a hand-off goroutine deletes the old flow's entry, a new
		// flow takes the ports: its own hand-off replaces the entry.
		isn2 := isn + 5000
		h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2, Flags: packet.SYN, Window: 64240, Options: linuxOptions()}, nf.Drop)
		cookie2 := h.expect(1)[0].p.Seq
		h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2 + 1, Ack: cookie2 + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
		h.expect(1) // the replayed SYN
		settled(h, 0, 0)
	})
}
