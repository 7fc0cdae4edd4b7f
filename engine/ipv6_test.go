package engine

import (
	"encoding/binary"
	"testing"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// IPv6 next-header values of the extension headers these tests insert.
const (
	nhHopByHop  = 0
	nhTCP       = 6
	nhRouting   = 43
	nhFragment  = 44
	nhESP       = 50
	nhAH        = 51
	nhNoNext    = 59
	nhDestOpts  = 60
	nhMobility  = 135
	nhExperimnt = 253
)

// ext is one IPv6 extension header: its protocol number and its bytes,
// whose first byte (the next header) withExt fills in.
type ext struct {
	proto uint8
	body  []byte
}

// Extension headers as a sender would write them.
func hopByHop() ext { return ext{nhHopByHop, []byte{0, 0, 1, 4, 0, 0, 0, 0}} }  // PadN(4)
func destOpts() ext { return ext{nhDestOpts, []byte{0, 0, 1, 4, 0, 0, 0, 0}} }  // PadN(4)
func routing() ext  { return ext{nhRouting, []byte{0, 0, 253, 0, 0, 0, 0, 0}} } // experimental type, no segments left
func authHeader() ext {
	// 12 fixed bytes and a 96-bit ICV; the length field counts 4-byte
	// units minus 2.
	b := make([]byte, 24)
	b[1] = 24/4 - 2
	binary.BigEndian.PutUint32(b[4:], 0x100) // SPI
	binary.BigEndian.PutUint32(b[8:], 1)     // sequence number
	return ext{nhAH, b}
}
func fragment(offsetFlags uint16) ext {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[2:], offsetFlags)
	binary.BigEndian.PutUint32(b[4:], 0xabcd) // identification
	return ext{nhFragment, b}
}

// withExt builds the IPv6 segment s with the extension headers hs, in
// order, between the IPv6 and TCP headers. The TCP checksum stays valid:
// its pseudo-header holds the upper-layer length, not the payload length.
func withExt(t testing.TB, s packet.Segment, hs ...ext) []byte {
	t.Helper()
	tcp := build(t, s)
	if tcp[0]>>4 != 6 {
		t.Fatal("withExt needs an IPv6 segment")
	}
	out := append([]byte(nil), tcp[:packet.IPv6HeaderLen]...)
	prev := 6 // offset of the previous next-header byte
	for _, h := range hs {
		out[prev] = h.proto
		prev = len(out)
		out = append(out, h.body...)
	}
	out[prev] = nhTCP
	out = append(out, tcp[packet.IPv6HeaderLen:]...)
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-packet.IPv6HeaderLen))
	return out
}

// svc6 is server6's index in the harness's services.
const svc6 = 1

func (h *harness) stat6(c Counter) uint64 { s := h.e.Stats(svc6); return s.Get(c) }

// malformed reads the Malformed count of packets that matched no service:
// a packet that does not parse cannot be told apart by service.
func (h *harness) malformed() uint64 { s := h.e.Stats(-1); return s.Get(Malformed) }

// TestIPv6ExtensionHeadersWalked: the extension headers a TCP segment may
// legitimately carry (hop-by-hop, routing, destination options, AH, an
// atomic fragment) are walked to the TCP header. The SYN is answered with
// a cookie, and a cookie ACK carrying the same headers is validated and
// replayed to the backend.
func TestIPv6ExtensionHeadersWalked(t *testing.T) {
	tests := []struct {
		name string
		hs   []ext
	}{
		{"hop-by-hop", []ext{hopByHop()}},
		{"routing", []ext{routing()}},
		{"destination options", []ext{destOpts()}},
		{"AH", []ext{authHeader()}},
		{"atomic fragment", []ext{fragment(0)}},
		{"chain", []ext{hopByHop(), routing(), fragment(0), authHeader(), destOpts()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			in := withExt(t, syn(client6, server6, linuxOptions()), tt.hs...)
			if v := h.handleRaw(in); v != nf.Drop {
				t.Fatalf("SYN verdict %v, want drop (answered by the engine)", v)
			}
			sa := h.expect(1)[0]
			p := sa.p
			if sa.dst != client6.Addr() || p.Source() != server6 || p.Destination() != client6 ||
				p.Flags != packet.SYN|packet.ACK || p.Ack != clientISN+1 {
				t.Fatalf("SYN-ACK %s>%s flags %v ack %#x", p.Source(), p.Destination(), p.Flags, p.Ack)
			}
			if p.HasIPOptions {
				t.Fatal("SYN-ACK carries extension headers; the engine's own packets never need them")
			}
			if _, ok := h.jar.Validate(client6, server6, clientISN, cookies.Cookie(p.Seq)); !ok {
				t.Fatal("SYN-ACK's ISN is not a cookie for the SYN")
			}

			ack := withExt(t, packet.Segment{Src: client6, Dst: server6, Seq: clientISN + 1, Ack: p.Seq + 1, Flags: packet.ACK, Window: 502}, tt.hs...)
			if v := h.handleRaw(ack); v != nf.Drop {
				t.Fatalf("ACK verdict %v, want drop", v)
			}
			r := h.expect(1)[0]
			if r.dst != server6.Addr() || r.p.Flags != packet.SYN || r.p.Seq != clientISN || r.p.HasIPOptions {
				t.Fatalf("replayed SYN %+v to %s", r.p, r.dst)
			}
			if h.stat6(SYNReceived) != 1 || h.stat6(CookieValid) != 1 || h.malformed() != 0 {
				t.Fatalf("counters: syn_received %d, cookie_valid %d, malformed %d",
					h.stat6(SYNReceived), h.stat6(CookieValid), h.malformed())
			}
		})
	}
}

// TestIPv6UnsupportedHeadersDropped: anything else in front of the TCP
// header (an unknown or upper-layer header, ESP, "no next header", a real
// fragment, a chain longer than the walk allows) cannot be answered. The
// packet is dropped, nothing is sent, nothing is stored, and it is counted
// as malformed. It is not passed: a SYN the engine cannot read must not
// reach the backend unprotected.
func TestIPv6UnsupportedHeadersDropped(t *testing.T) {
	long := make([]ext, 9)
	for i := range long {
		long[i] = destOpts()
	}
	eight := []byte{0, 0, 0, 0, 0, 0, 0, 0}
	with := func(hs ...ext) func(testing.TB) []byte {
		return func(t testing.TB) []byte { return withExt(t, syn(client6, server6, linuxOptions()), hs...) }
	}
	tests := []struct {
		name string
		pkt  func(testing.TB) []byte
	}{
		{"mobility", with(ext{nhMobility, eight})},
		{"experimental", with(ext{nhExperimnt, eight})},
		{"ESP", with(ext{nhESP, eight})},
		{"no next header", func(t testing.TB) []byte {
			b := build(t, syn(client6, server6, linuxOptions()))
			b[6] = nhNoNext // the TCP header is now payload to be ignored
			return b
		}},
		{"first fragment", with(fragment(1))},        // offset 0, more fragments
		{"later fragment", with(fragment(185 << 3))}, // offset 1480, last
		{"behind a walked one", with(destOpts(), ext{nhMobility, eight})},
		{"too many headers", with(long...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			in := tt.pkt(t)
			var p packet.Packet
			if err := packet.Parse(in, &p); err == nil {
				t.Fatal("test packet parses; it does not test the unsupported case")
			}
			if v := h.handleRaw(in); v != nf.Drop {
				t.Fatalf("verdict %v, want drop", v)
			}
			h.expect(0)
			if got := h.malformed(); got != 1 {
				t.Fatalf("malformed = %d, want 1", got)
			}
			if h.stat6(SYNReceived) != 0 || h.e.Pending() != 0 {
				t.Fatal("an unreadable packet was counted as a SYN or left state")
			}
		})
	}
}
