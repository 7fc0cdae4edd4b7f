package bench

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/packet"
)

var (
	target4 = netip.MustParseAddrPort("203.0.113.2:8080")
	target6 = netip.MustParseAddrPort("[2001:db8:b::2]:8080")
)

// Sources stay inside the prefix, every host bit varies, ports stay in
// 1024..65535, and the fixed fields are what a Linux SYN carries.
func TestSynGenFields(t *testing.T) {
	for _, tt := range []struct {
		target netip.AddrPort
		src    string
	}{
		{target4, "198.18.0.0/15"},
		{target4, "198.19.7.0/24"},
		{target4, "198.19.7.9/32"},
		{target6, "2001:db8:ff00::/40"},
		{target6, "2001:db8:ff12:3400::/56"},
		{target6, "2001:db8:ff00:1::/64"},
		{target6, "2001:db8:ff00:1::100/120"},
		{target6, "2001:db8:ff00::5/128"},
	} {
		t.Run(tt.src, func(t *testing.T) {
			prefix := netip.MustParsePrefix(tt.src)
			g := newFloodGen(KindSYN, tt.target, prefix, 1, 2)
			buf := make([]byte, packet.MaxHandshakeLen)
			var (
				p          packet.Packet
				or, and    [16]byte
				ports      = map[uint16]bool{}
				seqs       = map[uint32]bool{}
				minPort    = uint16(65535)
				maxPort    uint16
				iterations = 5000
			)
			for i := range and {
				and[i] = 0xff
			}
			for range iterations {
				n, err := g.build(buf)
				if err != nil {
					t.Fatal(err)
				}
				if err := packet.Parse(buf[:n], &p); err != nil {
					t.Fatal(err)
				}
				if !prefix.Contains(p.Src) {
					t.Fatalf("source %v outside %v", p.Src, prefix)
				}
				if p.Destination() != tt.target || p.Flags != packet.SYN || !packet.VerifyTCPChecksum(buf[:n], &p) {
					t.Fatalf("bad SYN: %+v", p)
				}
				o := p.Options
				if !o.HasMSS || !o.SACKPermitted || !o.HasTimestamps || !o.HasWindowScale || o.WindowScale != 7 || o.TSEcr != 0 {
					t.Fatalf("options %+v", o)
				}
				a := p.Src.As16()
				for i := range a {
					or[i] |= a[i]
					and[i] &= a[i]
				}
				ports[p.SrcPort], seqs[p.Seq] = true, true
				minPort, maxPort = min(minPort, p.SrcPort), max(maxPort, p.SrcPort)
			}
			// Host bits: each must have been both 0 and 1; prefix bits never.
			base := prefix.Addr().As16()
			first := 0
			if prefix.Addr().Is4() {
				first = 12 * 8 // As16 of an IPv4 address is IPv4-mapped
			}
			for bit := first; bit < 128; bit++ {
				i, m := bit/8, byte(0x80>>(bit%8))
				host := bit-first >= prefix.Bits()
				switch {
				case host && (or[i]&m == 0 || and[i]&m != 0):
					t.Fatalf("host bit %d of %v never varies", bit-first, prefix)
				case !host && (or[i]&m != base[i]&m || and[i]&m != base[i]&m):
					t.Fatalf("prefix bit %d of %v changed", bit-first, prefix)
				}
			}
			if minPort < 1024 || len(ports) < iterations*9/10 || len(seqs) < iterations*99/100 {
				t.Fatalf("ports %d..%d, %d distinct; %d distinct ISNs", minPort, maxPort, len(ports), len(seqs))
			}
		})
	}
}

func TestSynGenDoesNotAllocate(t *testing.T) {
	for _, target := range []netip.AddrPort{target4, target6} {
		src := netip.MustParsePrefix("198.18.0.0/15")
		if target.Addr().Is6() {
			src = netip.MustParsePrefix("2001:db8:ff00::/40")
		}
		g := newFloodGen(KindSYN, target, src, 3, 4)
		buf := make([]byte, packet.MaxHandshakeLen)
		if a := testing.AllocsPerRun(1000, func() { _, _ = g.build(buf) }); a != 0 {
			t.Errorf("%v: %v allocations per packet", target, a)
		}
	}
}

// The forged ACKs: valid TCP segments with both checksums right, the ACK
// flag alone, sources inside the prefix (every host bit varying), ports
// in 1024..65535, random sequence, acknowledgement and timestamp numbers,
// and the NOP, NOP, timestamps options and window of a Linux client's
// handshake ACK, nothing else.
func TestFloodGenACK(t *testing.T) {
	for _, tt := range []struct {
		target netip.AddrPort
		src    string
		length int
	}{
		{target4, "198.18.0.0/15", 20 + 20 + 12},
		{target4, "198.19.255.4/30", 20 + 20 + 12},
		{target6, "2001:db8:ff00::/40", 40 + 20 + 12},
		{target6, "2001:db8:ff00:1::100/120", 40 + 20 + 12},
	} {
		t.Run(tt.src, func(t *testing.T) {
			prefix := netip.MustParsePrefix(tt.src)
			g := newFloodGen(KindACK, tt.target, prefix, 7, 8)
			buf := make([]byte, packet.MaxHandshakeLen)
			const iterations = 5000
			var (
				p                       packet.Packet
				sources                 = map[netip.Addr]bool{}
				ports                   = map[uint16]bool{}
				seqs, acks, tsvs, tsecs = map[uint32]bool{}, map[uint32]bool{}, map[uint32]bool{}, map[uint32]bool{}
			)
			for range iterations {
				n, err := g.build(buf)
				if err != nil {
					t.Fatal(err)
				}
				if n != tt.length {
					t.Fatalf("%d bytes, want %d", n, tt.length)
				}
				b := buf[:n]
				if err := packet.Parse(b, &p); err != nil {
					t.Fatal(err)
				}
				o := p.Options
				switch {
				case p.Flags != packet.ACK:
					t.Fatalf("flags %v, want ACK alone", p.Flags)
				case !prefix.Contains(p.Src):
					t.Fatalf("source %v outside %v", p.Src, prefix)
				case p.Destination() != tt.target:
					t.Fatalf("destination %v", p.Destination())
				case p.SrcPort < 1024:
					t.Fatalf("source port %d", p.SrcPort)
				case !packet.VerifyTCPChecksum(b, &p):
					t.Fatal("bad TCP checksum")
				case p.Src.Is4() && packet.Checksum(b[:p.IPHeaderLen]) != 0:
					t.Fatal("bad IPv4 header checksum")
				case p.PayloadLen != 0 || p.HopLimit != packet.DefaultHopLimit || p.HasIPOptions:
					t.Fatalf("payload %d, hop limit %d, IP options %v", p.PayloadLen, p.HopLimit, p.HasIPOptions)
				case p.Window != ackWindow:
					t.Fatalf("window %d, want %d", p.Window, ackWindow)
				case !o.HasTimestamps || o.HasMSS || o.SACKPermitted || o.HasWindowScale || o.NumSACKBlocks != 0:
					t.Fatalf("options %+v, want timestamps alone", o)
				}
				// NOP, NOP, timestamps (kind 8, length 10).
				opts := b[p.IPHeaderLen+packet.TCPHeaderLen : n]
				if opts[0] != 1 || opts[1] != 1 || opts[2] != 8 || opts[3] != 10 {
					t.Fatalf("option bytes % x", opts)
				}
				sources[p.Src], ports[p.SrcPort] = true, true
				seqs[p.Seq], acks[p.Ack], tsvs[o.TSVal], tsecs[o.TSEcr] = true, true, true, true
			}
			wantSources := min(iterations*9/10, 1<<(prefix.Addr().BitLen()-prefix.Bits()))
			if len(sources) < wantSources || len(ports) < iterations*9/10 {
				t.Errorf("%d distinct sources (want %d), %d ports", len(sources), wantSources, len(ports))
			}
			for what, m := range map[string]map[uint32]bool{"sequence": seqs, "acknowledgement": acks, "TSval": tsvs, "TSecr": tsecs} {
				if len(m) < iterations*99/100 {
					t.Errorf("%d distinct %s numbers in %d ACKs", len(m), what, iterations)
				}
			}
		})
	}
	// The same generator makes SYNs unless told ACK.
	for _, k := range []Kind{"", KindSYN} {
		g := newFloodGen(k, target4, netip.MustParsePrefix("198.18.0.0/15"), 1, 2)
		buf := make([]byte, packet.MaxHandshakeLen)
		n, err := g.build(buf)
		var p packet.Packet
		if err != nil || packet.Parse(buf[:n], &p) != nil || p.Flags != packet.SYN {
			t.Errorf("kind %q: flags %v, %v", k, p.Flags, err)
		}
	}
}

func TestFloodGenACKDoesNotAllocate(t *testing.T) {
	for _, tt := range []struct {
		target netip.AddrPort
		src    string
	}{{target4, "198.18.0.0/15"}, {target6, "2001:db8:ff00::/40"}} {
		g := newFloodGen(KindACK, tt.target, netip.MustParsePrefix(tt.src), 3, 4)
		buf := make([]byte, packet.MaxHandshakeLen)
		if a := testing.AllocsPerRun(1000, func() { _, _ = g.build(buf) }); a != 0 {
			t.Errorf("%v: %v allocations per forged ACK", tt.target, a)
		}
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]Kind{"": KindSYN, "syn": KindSYN, "ack": KindACK} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"SYN", "rst", "syn,ack", " ack"} {
		if _, err := ParseKind(bad); err == nil {
			t.Errorf("ParseKind(%q) accepted", bad)
		}
	}
	cfg := FloodConfig{Kind: "fin", Target: target4, Sources: netip.MustParsePrefix("198.18.0.0/15"), Count: 1, Duration: time.Second}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `"fin"`) {
		t.Errorf("flood of kind fin: %v", err)
	}
}

func BenchmarkFloodBuild(b *testing.B) {
	for _, tt := range []struct {
		name   string
		kind   Kind
		target netip.AddrPort
		src    string
	}{
		{"IPv4", KindSYN, target4, "198.18.0.0/15"},
		{"IPv6", KindSYN, target6, "2001:db8:ff00::/40"},
		{"ACK/IPv4", KindACK, target4, "198.18.0.0/15"},
		{"ACK/IPv6", KindACK, target6, "2001:db8:ff00::/40"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			g := newFloodGen(tt.kind, tt.target, netip.MustParsePrefix(tt.src), 5, 6)
			buf := make([]byte, DefaultBatch*packet.MaxHandshakeLen)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				off := (i % DefaultBatch) * packet.MaxHandshakeLen
				if _, err := g.build(buf[off : off+packet.MaxHandshakeLen]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
