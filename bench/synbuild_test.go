package bench

import (
	"net/netip"
	"testing"

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
			g := newSynGen(tt.target, prefix, 1, 2)
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
		g := newSynGen(target, src, 3, 4)
		buf := make([]byte, packet.MaxHandshakeLen)
		if a := testing.AllocsPerRun(1000, func() { _, _ = g.build(buf) }); a != 0 {
			t.Errorf("%v: %v allocations per packet", target, a)
		}
	}
}

func BenchmarkFloodBuild(b *testing.B) {
	for _, tt := range []struct {
		name   string
		target netip.AddrPort
		src    string
	}{
		{"IPv4", target4, "198.18.0.0/15"},
		{"IPv6", target6, "2001:db8:ff00::/40"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			g := newSynGen(tt.target, netip.MustParsePrefix(tt.src), 5, 6)
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
