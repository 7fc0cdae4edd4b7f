package engine

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// fuzzMaxPending is small so that a fuzzed sequence can reach the bound.
const fuzzMaxPending = 3

// FuzzHandle drives the engine's whole packet handler, not only the
// parser: first one packet exactly as the fuzzer gives it, then a
// handshake continued from whatever the engine answered. When the first
// packet earned a cookie SYN-ACK, the client's ACK is built from it and
// mutated by the fuzzer (bytes XORed in, optionally with the checksums
// fixed so the mutation reaches the engine's logic rather than only its
// parser), repeated for several client ports; a replayed SYN gets a
// backend SYN-ACK or RST with fuzzed fields and options; then time passes
// through every retry, give-up and linger. Otherwise the second input is
// fed as a packet of its own.
//
// Invariants, checked after every step: no panic; the verdict is Drop or
// Accept; every packet the engine sends parses and carries valid IP and
// TCP checksums, and goes between the two ends of the packet that caused
// it (nothing is sent to a third party); a SYN-ACK is never larger than
// the packet that caused it; the pending table never exceeds MaxPending;
// and once all timers have run, nothing is left pending.
//
// mode picks the engine's mode (mode%3: always, auto, off) and, with bit
// 2, feeds the first packet as queued from PREROUTING instead of a filter
// hook; in auto mode the controller also runs as time passes. Bit 3 turns
// early data on: the client's ACK is followed by a data segment, and
// verdicts may also be Hold. Verdicts may be AcceptRewritten (segments
// translated before a flow's entry exists), whose packets must parse with
// valid checksums. Once all timers have run
// nothing is held, every held packet got exactly one verdict, and every
// rewritten or released packet parses with valid checksums.
func FuzzHandle(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		for _, mode := range []uint8{0, 1, 2, 1 | 4, 8, 1 | 8} {
			f.Add(s.first, s.mutation, s.ctl, mode)
		}
	}
	f.Fuzz(func(t *testing.T, first, mutation []byte, ctl, mode uint8) {
		h := newFuzzHarness(t, [...]Mode{ModeAlways, ModeAuto, ModeOff}[mode%3], mode&8 != 0)
		hook := nf.Forward
		if mode&4 != 0 {
			hook = nf.Prerouting
		}
		h.stepAt("first packet", first, hook)

		synack, ok := h.lastSent(packet.SYN | packet.ACK)
		if !ok {
			h.step("second packet", mutation)
			h.expire()
			return
		}
		// Continue the handshake from the client's side, for as many
		// client ports as ctl asks (0..7 beyond the first), so the
		// pending bound is exercised.
		ports := 1 + int(ctl>>5)
		for i := range ports {
			sa := synack
			if i > 0 {
				// A fresh SYN from another port earns its own cookie.
				syn := h.rebuildSYN(first, uint16(i))
				if syn == nil {
					break
				}
				h.step(fmt.Sprintf("SYN from port +%d", i), syn)
				if sa, ok = h.lastSent(packet.SYN | packet.ACK); !ok {
					break
				}
			}
			ack := h.clientACK(sa, mutation, ctl)
			h.step(fmt.Sprintf("mutated ACK %d", i), ack)
			if h.early {
				h.step(fmt.Sprintf("request behind ACK %d", i), h.request(ack))
			}
			replay, ok := h.lastSent(packet.SYN)
			if !ok {
				continue
			}
			h.step(fmt.Sprintf("backend answer %d", i), h.backendAnswer(replay, mutation, ctl))
			h.drain()
		}
		h.expire()
	})
}

// fuzzSeed is one corpus entry written in code: the handshakes a real
// client makes, over both families, and the odd packets the live gateway
// tests send.
type fuzzSeed struct {
	first, mutation []byte
	ctl             uint8
}

func fuzzSeeds(tb testing.TB) []fuzzSeed {
	linux := linuxOptions()
	bare := packet.Options{}
	v4syn := build(tb, syn(client, server, linux))
	v6syn := build(tb, packet.Segment{Src: client6, Dst: server6, Seq: 7, Flags: packet.SYN, Window: 64800, Options: linux})
	withPayload := appendPayload(build(tb, syn(client, server, bare)), []byte("hello"))
	synFIN := build(tb, packet.Segment{Src: client, Dst: server, Seq: 1, Flags: packet.SYN | packet.FIN})
	ack := build(tb, packet.Segment{Src: client, Dst: server, Seq: 1, Ack: 2, Flags: packet.ACK})
	fromServer := build(tb, packet.Segment{Src: server, Dst: client, Seq: 1, Ack: 2, Flags: packet.SYN | packet.ACK})
	// XORed into the client's ACK: ACK becomes RST.
	clientRST := make([]byte, packet.IPv4HeaderLen+14)
	clientRST[packet.IPv4HeaderLen+13] = byte(packet.ACK ^ packet.RST)
	badOption := append([]byte(nil), v4syn...)
	badOption[packet.IPv4HeaderLen+packet.TCPHeaderLen+1] = 0 // MSS option of length 0
	return []fuzzSeed{
		{v4syn, nil, 0},                         // clean handshake, one port
		{v4syn, nil, 0x01 | 0xe0},               // zero-window-probe ACK, eight ports
		{v4syn, []byte{0, 0, 0, 0, 1}, 0x02},    // ACK with a flipped bit, checksums fixed
		{v4syn, nil, 0x04},                      // backend RST
		{v4syn, clientRST, 0x02},                // the client resets instead of ACKing
		{v4syn, nil, 0x08},                      // backend never answers
		{v6syn, nil, 0x10},                      // IPv6, backend options fuzzed
		{withPayload, []byte{0xff, 0xff}, 0x20}, // SYN with payload, bare options
		{synFIN, ack, 0},
		{ack, fromServer, 0},
		{badOption, v4syn[:30], 0},
		{[]byte{0x45, 0, 0}, []byte{0x60}, 0},
	}
}

// fuzzHarness is the engine of engine_test.go's harness with a sender
// that checks instead of panicking, and the bookkeeping the invariants
// need.
type fuzzHarness struct {
	*harness
	out *recordingSender
	// lastStep is what the latest step sent, for the handshake to
	// continue from.
	lastStep []sentPacket
	early    bool
}

func newFuzzHarness(t *testing.T, mode Mode, early bool) *fuzzHarness {
	out := &recordingSender{}
	h := newHarness(t, func(c *Config) {
		c.Mode = mode
		c.NewBatch = immediateTo(out)
		c.MaxPending = fuzzMaxPending
		c.EarlyData = early
	})
	return &fuzzHarness{harness: h, out: out, early: early}
}

// request is a data segment that follows ack (parsed as far as it goes):
// its first byte at ack's seq, the same ack; ack itself when it does not
// parse.
func (h *fuzzHarness) request(ack []byte) []byte {
	var p packet.Packet
	if packet.Parse(ack, &p) != nil {
		return ack
	}
	seg := build(h.t, packet.Segment{Src: p.Source(), Dst: p.Destination(), Seq: p.Seq + uint32(p.PayloadLen), Ack: p.Ack, Flags: packet.ACK | packet.PSH, Window: p.Window})
	if p.Src.Is4() {
		return appendPayload(seg, []byte("GET / HTTP/1.1\r\n\r\n"))
	}
	return seg
}

// recordingSender keeps a copy of every packet sent.
type recordingSender struct {
	mu   sync.Mutex
	pkts [][]byte
	dsts []netip.Addr
}

func (s *recordingSender) Send(b []byte, dst netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pkts = append(s.pkts, append([]byte(nil), b...))
	s.dsts = append(s.dsts, dst)
	return nil
}

func (s *recordingSender) take() ([][]byte, []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, d := s.pkts, s.dsts
	s.pkts, s.dsts = nil, nil
	return p, d
}

// sentPacket is a packet the engine sent, parsed, with the bytes.
type sentPacket struct {
	b []byte
	p packet.Packet
}

// step feeds b to the worker and checks the invariants.
func (h *fuzzHarness) step(what string, b []byte) {
	h.t.Helper()
	h.stepAt(what, b, nf.Unknown)
}

// stepAt is step for a packet queued from hook.
func (h *fuzzHarness) stepAt(what string, b []byte, hook nf.Hook) {
	h.t.Helper()
	v := h.handleAt(b, hook)
	switch {
	case v == nf.Drop || v == nf.Accept:
	case h.early && v == nf.Hold:
	case v == nf.AcceptRewritten:
		var p packet.Packet
		if err := packet.Parse(b, &p); err != nil || !packet.VerifyTCPChecksum(b, &p) {
			h.t.Fatalf("%s: rewritten packet does not parse or has a bad checksum (%v)", what, err)
		}
	default:
		h.t.Fatalf("%s: verdict %d", what, v)
	}
	var in packet.Packet
	var cause *packet.Packet
	if packet.Parse(b, &in) == nil {
		cause = &in
	}
	h.checkSent(what, len(b), cause, true)
	if n := h.e.Pending(); n > fuzzMaxPending {
		h.t.Fatalf("%s: %d flows pending, bound %d", what, n, fuzzMaxPending)
	}
}

// checkSent checks what the engine sent since the last check. For a
// packet fed to Handle (byPacket), inLen is its length and cause its
// parse, nil if it did not parse; timers and hand-offs pass false.
func (h *fuzzHarness) checkSent(what string, inLen int, cause *packet.Packet, byPacket bool) {
	h.t.Helper()
	pkts, dsts := h.out.take()
	h.lastStep = h.lastStep[:0]
	for i, b := range pkts {
		sp := h.checkPacket(what, b, dsts[i])
		if byPacket {
			if cause == nil {
				h.t.Fatalf("%s: engine sent %v in answer to a packet that does not parse", what, sp.p.Flags)
			}
			a, z := cause.Source(), cause.Destination()
			if (sp.p.Source() != a || sp.p.Destination() != z) && (sp.p.Source() != z || sp.p.Destination() != a) {
				h.t.Fatalf("%s: engine sent %s>%s in answer to %s>%s", what, sp.p.Source(), sp.p.Destination(), a, z)
			}
			if sp.p.Flags.Has(packet.SYN|packet.ACK) && len(b) > inLen {
				h.t.Fatalf("%s: SYN-ACK of %d bytes answers a packet of %d bytes", what, len(b), inLen)
			}
		}
		h.lastStep = append(h.lastStep, sp)
	}
}

// checkPacket verifies one sent packet: it parses, both checksums hold,
// and it goes where its header says.
func (h *fuzzHarness) checkPacket(what string, b []byte, dst netip.Addr) sentPacket {
	h.t.Helper()
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil {
		h.t.Fatalf("%s: engine sent an unparsable packet (%v): %x", what, err, b)
	}
	if !packet.VerifyTCPChecksum(b, &p) {
		h.t.Fatalf("%s: engine sent a packet with a bad TCP checksum: %x", what, b)
	}
	if p.Src.Is4() && packet.Checksum(b[:p.IPHeaderLen]) != 0 {
		h.t.Fatalf("%s: engine sent a packet with a bad IPv4 header checksum: %x", what, b)
	}
	if p.Dst != dst.Unmap() {
		h.t.Fatalf("%s: packet to %s sent to %s", what, p.Dst, dst)
	}
	if p.PayloadLen != 0 {
		h.t.Fatalf("%s: engine sent %d payload bytes", what, p.PayloadLen)
	}
	return sentPacket{b: b, p: p}
}

// lastSent returns the latest packet of the previous step with exactly
// these flags.
func (h *fuzzHarness) lastSent(flags packet.Flags) (packet.Packet, bool) {
	for i := len(h.lastStep) - 1; i >= 0; i-- {
		if h.lastStep[i].p.Flags == flags {
			return h.lastStep[i].p, true
		}
	}
	return packet.Packet{}, false
}

// rebuildSYN returns the first packet with its source port moved by delta
// (checksum fixed), or nil if it does not parse as a SYN.
func (h *fuzzHarness) rebuildSYN(first []byte, delta uint16) []byte {
	var p packet.Packet
	if packet.Parse(first, &p) != nil {
		return nil
	}
	b := append([]byte(nil), first...)
	tcp := b[p.IPHeaderLen:]
	old := binary.BigEndian.Uint16(tcp[0:2])
	binary.BigEndian.PutUint16(tcp[0:2], old+delta)
	ck := binary.BigEndian.Uint16(tcp[16:18])
	binary.BigEndian.PutUint16(tcp[16:18], packet.UpdateChecksum16(ck, old, old+delta))
	return b
}

// clientACK builds the ACK a client returns for synack, then XORs
// mutation into it (bytes past its end become payload). ctl bit 0 makes
// it a zero-window probe (seq = ISN), bit 1 fixes the checksums after the
// mutation.
func (h *fuzzHarness) clientACK(synack packet.Packet, mutation []byte, ctl uint8) []byte {
	seq := synack.Ack
	if ctl&0x01 != 0 {
		seq--
	}
	b := build(h.t, packet.Segment{Src: synack.Destination(), Dst: synack.Source(), Seq: seq, Ack: synack.Seq + 1, Flags: packet.ACK, Window: 502})
	for i, m := range mutation {
		if i < len(b) {
			b[i] ^= m
		} else {
			b = append(b, m)
		}
	}
	if ctl&0x02 != 0 {
		fixChecksums(b)
	}
	return b
}

// backendAnswer builds the backend's reply to a replayed SYN: a SYN-ACK
// with the ISN, window and options drawn from mutation (ctl bit 4), or an
// RST (ctl bit 2); ctl bit 3 sends an unrelated ACK instead, so the
// backend stays silent and the retries run.
func (h *fuzzHarness) backendAnswer(replay packet.Packet, mutation []byte, ctl uint8) []byte {
	seg := packet.Segment{Src: replay.Destination(), Dst: replay.Source(), Seq: 0x1000, Ack: replay.Seq + 1, Flags: packet.SYN | packet.ACK, Window: 65160,
		Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}
	var m [8]byte
	copy(m[:], mutation)
	if ctl&0x10 != 0 {
		seg.Seq = binary.BigEndian.Uint32(m[0:4])
		seg.Window = binary.BigEndian.Uint16(m[4:6])
		seg.Options = packet.Options{
			MSS: uint16(m[6]) << 4, HasMSS: m[6] != 0,
			WindowScale: m[7] & 0x1f, HasWindowScale: m[7]&0x20 != 0,
			SACKPermitted: m[7]&0x40 != 0,
		}
	}
	switch {
	case ctl&0x04 != 0:
		seg.Flags, seg.Options = packet.RST|packet.ACK, packet.Options{}
	case ctl&0x08 != 0:
		seg.Flags, seg.Ack = packet.ACK, seg.Ack+1
	}
	return build(h.t, seg)
}

// drain runs queued hand-offs and checks what they sent.
func (h *fuzzHarness) drain() {
	h.t.Helper()
	h.drainHandoffs()
	h.checkSent("hand-off", 0, nil, false)
}

// expire lets time pass through every retry, give-up and linger, and then
// requires an empty pending table.
func (h *fuzzHarness) expire() {
	h.t.Helper()
	for step := DefaultRetryInitial; step <= 8*time.Second; step *= 2 {
		h.clock.advance(step)
		h.e.Tick()
		h.e.control(h.clock.now())
		h.checkSent("timer", 0, nil, false)
		if n := h.e.Pending(); n > fuzzMaxPending {
			h.t.Fatalf("timer: %d flows pending, bound %d", n, fuzzMaxPending)
		}
	}
	h.clock.advance(DefaultLinger + time.Second)
	h.e.Tick()
	h.checkSent("timer", 0, nil, false)
	if n := h.e.Pending(); n != 0 {
		h.t.Fatalf("%d flows still pending after every retry and linger", n)
	}
	if n, q := h.e.heldSlots(), h.queue.heldCount(); n != 0 || q != 0 {
		h.t.Fatalf("after every retry and linger the engine holds %d segments, the queue %d", n, q)
	}
	for _, r := range h.queue.releases() {
		if r.packet == nil {
			continue
		}
		var p packet.Packet
		if err := packet.Parse(r.packet, &p); err != nil || !packet.VerifyTCPChecksum(r.packet, &p) {
			h.t.Fatalf("released packet does not parse or has a bad checksum (%v): %x", err, r.packet)
		}
	}
}

// fixChecksums recomputes the IPv4 header and TCP checksums of b in place
// when its headers parse far enough to find them.
func fixChecksums(b []byte) {
	var p packet.Packet
	if packet.Parse(b, &p) != nil {
		return
	}
	if p.Src.Is4() {
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:12], packet.Checksum(b[:p.IPHeaderLen]))
	}
	end := p.IPHeaderLen + p.TCPHeaderLen + p.PayloadLen
	tcp := b[p.IPHeaderLen:end]
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:18], packet.TCPChecksum(p.Src, p.Dst, tcp))
}
