package engine

import (
	"testing"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// TestHandshakeAcrossKeyRotation: cookie keys rotate every period, and a
// handshake in flight across a rotation completes. A cookie is good in
// the epoch it was made in and the next, so an ACK may come back up to two
// periods after an early SYN, at least one period after a late one, and
// is refused after that. The harness's clock starts on an epoch boundary.
func TestHandshakeAcrossKeyRotation(t *testing.T) {
	const period = cookies.DefaultPeriod
	tests := []struct {
		name       string
		syn, ack   time.Duration // since the epoch boundary the clock starts on
		probe      bool          // the ACK is a zero-window probe (seq = ISN)
		wantReplay bool
	}{
		{"SYN just before, ACK just after", period - time.Millisecond, period + time.Millisecond, false, true},
		{"lost ACK, probe after the rotation", period - time.Millisecond, period + 3*time.Second, true, true},
		{"early SYN, ACK at the end of the next epoch", time.Millisecond, 2*period - time.Millisecond, false, true},
		{"late SYN, ACK a whole period later", period - time.Millisecond, 2*period - time.Millisecond, false, true},
		{"two rotations later", period - time.Millisecond, 2*period + time.Millisecond, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			h.clock.advance(tt.syn)
			h.handle(syn(client, server, linuxOptions()), nf.Drop)
			cookie := h.expect(1)[0].p.Seq

			h.clock.advance(tt.ack - tt.syn)
			seq := uint32(clientISN + 1)
			if tt.probe {
				seq = clientISN
			}
			h.handle(packet.Segment{Src: client, Dst: server, Seq: seq, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
			if !tt.wantReplay {
				h.expect(0)
				if h.stat(CookieInvalid) != 1 {
					t.Fatal("expired cookie not counted as invalid")
				}
				return
			}
			if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Seq != clientISN {
				t.Fatalf("no replayed SYN: %+v", r)
			}
			// The backend answers after yet another rotation: the hand-off
			// does not depend on the keys any more.
			h.clock.advance(period)
			h.handle(packet.Segment{Src: server, Dst: client, Seq: 77, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160,
				Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}, nf.Drop)
			h.drainHandoffs()
			if h.stat(HandedOff) != 1 || len(h.handoff.got) != 1 || h.handoff.got[0].CookieISN != cookie {
				t.Fatalf("hand-off after the rotation: %d handed off, %+v", h.stat(HandedOff), h.handoff.got)
			}
		})
	}
}

// TestMalformedCountedUnderItsService: a segment of a protected service
// that fails to parse for a TCP-level reason (an option length, the data
// offset) is counted as malformed under that service, so that the
// per-service metrics show it; one whose IP header chain cannot be read is
// counted under no service. Neither gets an answer.
func TestMalformedCountedUnderItsService(t *testing.T) {
	badOption := func(s packet.Segment) []byte {
		b := build(t, s)
		b[ipLen(s)+packet.TCPHeaderLen+1] = 0 // the first option's length
		return b
	}
	h := newHarness(t, nil)
	for _, in := range [][]byte{
		badOption(syn(client, server, linuxOptions())),                                                               // to the service
		badOption(packet.Segment{Src: server, Dst: client, Flags: packet.SYN | packet.ACK, Options: linuxOptions()}), // from it
		badOption(syn(client6, server6, linuxOptions())),
	} {
		if v := h.handleRaw(in); v != nf.Drop {
			t.Fatalf("verdict %v for a malformed packet", v)
		}
	}
	h.expect(0)
	st, st6 := h.e.Stats(0), h.e.Stats(1)
	if got, got6 := st.Get(Malformed), st6.Get(Malformed); got != 2 || got6 != 1 {
		t.Fatalf("malformed: %d under the IPv4 service, %d under the IPv6 one; want 2 and 1", got, got6)
	}

	// Not attributable: too short for the ports, an unknown extension
	// header, another service's address.
	short := build(t, syn(client, server, packet.Options{}))[:packet.IPv4HeaderLen+2]
	short[3] = byte(len(short))
	unknown := build(t, syn(client6, server6, packet.Options{}))
	unknown[6] = 253
	elsewhere := badOption(syn(client, other, linuxOptions()))
	for _, in := range [][]byte{short, unknown, elsewhere} {
		h.handleRaw(in)
	}
	if none := h.e.Stats(-1); none.Get(Malformed) != 3 {
		t.Fatalf("malformed under no service: %d, want 3", none.Get(Malformed))
	}
}

func ipLen(s packet.Segment) int {
	if s.Src.Addr().Is4() {
		return packet.IPv4HeaderLen
	}
	return packet.IPv6HeaderLen
}

// TestSYNWithRSTIsMalformed: a SYN carrying RST (or FIN, or ACK) is
// nothing a client sends. It is dropped and counted as malformed, and in
// particular it does not abort the client's pending flow the way an RST
// would.
func TestSYNWithRSTIsMalformed(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(linuxOptions())
	for _, flags := range []packet.Flags{packet.SYN | packet.RST, packet.SYN | packet.RST | packet.ACK, 0xff, packet.SYN | packet.FIN, packet.SYN | packet.ACK} {
		h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Flags: flags}, nf.Drop)
	}
	h.expect(0)
	if h.stat(Malformed) != 5 || h.stat(ClientReset) != 0 || h.e.Pending() != 1 {
		t.Fatalf("malformed %d, client resets %d, pending %d; want 5, 0, 1", h.stat(Malformed), h.stat(ClientReset), h.e.Pending())
	}
}

// TestReplayOffersOnlyAnnouncedOptions: when the backend is known not to
// scale windows or permit SACK, the client is told so in the SYN-ACK and
// uses neither; the replayed SYN must then offer neither to the backend,
// or the backend would scale while the client does not.
func TestReplayOffersOnlyAnnouncedOptions(t *testing.T) {
	h := newHarness(t, nil)
	h.e.LearnBackend(0, BackendOptions{MSS: 1460, WindowScale: cookies.NoWindowScale}, "test")
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	sa := h.expect(1)[0].p
	if sa.Options.HasWindowScale || sa.Options.SACKPermitted {
		t.Fatalf("SYN-ACK announces %+v for a backend without scaling or SACK", sa.Options)
	}
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: sa.Seq + 1, Flags: packet.ACK, Window: 60000}, nf.Drop)
	r := h.expect(1)[0].p
	if r.Options.HasWindowScale || r.Options.SACKPermitted {
		t.Fatalf("replayed SYN offers %+v, which the client was not given", r.Options)
	}
	if r.Window != 60000 {
		t.Fatalf("replayed SYN window %d; the client's window is unscaled, want 60000", r.Window)
	}
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 5, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160,
		Options: packet.Options{MSS: 1460, HasMSS: true}}, nf.Drop)
	h.drainHandoffs()
	if got := h.handoff.got[0].ClientWindowScale; got != cookies.NoWindowScale {
		t.Fatalf("hand-off gives the client window scale %d; it negotiated none", got)
	}

	// With the backend's usual options both are offered again.
	h2 := newHarness(t, nil)
	_, replay := h2.handshake(linuxOptions())
	if !replay.Options.HasWindowScale || !replay.Options.SACKPermitted {
		t.Fatalf("replayed SYN %+v lacks what the client negotiated", replay.Options)
	}
}
