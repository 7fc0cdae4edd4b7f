package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	client4 = netip.MustParseAddrPort("198.51.100.2:40000")
	server4 = netip.MustParseAddrPort("203.0.113.2:80")
	client6 = netip.MustParseAddrPort("[2001:db8::2]:40000")
	server6 = netip.MustParseAddrPort("[2001:db8:1::2]:443")
)

func linuxSYNOptions() Options {
	return Options{
		MSS: 1460, HasMSS: true,
		SACKPermitted: true,
		HasTimestamps: true, TSVal: 0x01020304, TSEcr: 0,
		WindowScale: 7, HasWindowScale: true,
	}
}

func mustBuild(t testing.TB, s *Segment) []byte {
	t.Helper()
	b := make([]byte, MaxHandshakeLen)
	n, err := Build(b, s)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return b[:n]
}

func TestBuildParseRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		seg  Segment
	}{
		{"v4 SYN all options", Segment{Src: client4, Dst: server4, Seq: 0xfffffff0, Flags: SYN, Window: 64240, Options: linuxSYNOptions()}},
		{"v4 SYN-ACK cookie", Segment{Src: server4, Dst: client4, Seq: 0xdeadbeef, Ack: 0xfffffff1, Flags: SYN | ACK, Window: 0,
			Options: Options{MSS: 1440, HasMSS: true, SACKPermitted: true, WindowScale: 9, HasWindowScale: true}}},
		{"v4 SYN-ACK MSS only", Segment{Src: server4, Dst: client4, Seq: 1, Ack: 2, Flags: SYN | ACK, Options: Options{MSS: 536, HasMSS: true}}},
		{"v4 ACK window update", Segment{Src: server4, Dst: client4, Seq: 100, Ack: 200, Flags: ACK, Window: 502}},
		{"v4 RST", Segment{Src: server4, Dst: client4, Seq: 100, Flags: RST}},
		{"v4 timestamps without SACK", Segment{Src: client4, Dst: server4, Flags: SYN, Options: Options{HasTimestamps: true, TSVal: 7, TSEcr: 9}}},
		{"v6 SYN all options", Segment{Src: client6, Dst: server6, Seq: 5, Flags: SYN, Window: 64800, Options: linuxSYNOptions(), HopLimit: 255}},
		{"v6 SYN-ACK", Segment{Src: server6, Dst: client6, Seq: 5, Ack: 6, Flags: SYN | ACK, Options: Options{MSS: 1220, HasMSS: true, WindowScale: 0, HasWindowScale: true}}},
		{"v6 RST|ACK", Segment{Src: server6, Dst: client6, Seq: 5, Ack: 6, Flags: RST | ACK}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBuild(t, &tt.seg)
			var p Packet
			if err := Parse(b, &p); err != nil {
				t.Fatalf("Parse(Build()): %v", err)
			}
			want := tt.seg
			if want.HopLimit == 0 {
				want.HopLimit = DefaultHopLimit
			}
			got := Segment{Src: p.Source(), Dst: p.Destination(), Seq: p.Seq, Ack: p.Ack, Flags: p.Flags, Window: p.Window, Options: p.Options, HopLimit: p.HopLimit}
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Fatalf("round trip (-want +got):\n%s", diff)
			}
			if p.PayloadLen != 0 {
				t.Fatalf("PayloadLen = %d, want 0", p.PayloadLen)
			}
			if !VerifyTCPChecksum(b, &p) {
				t.Fatal("TCP checksum does not verify")
			}
			if tt.seg.Src.Addr().Is4() && Checksum(b[:IPv4HeaderLen]) != 0 {
				t.Fatal("IPv4 header checksum does not verify")
			}
			crossCheck(t, b, &tt.seg)
		})
	}
}

// crossCheck decodes b with gopacket, an independent implementation, and
// compares fields and checksums with what was asked for.
func crossCheck(t *testing.T, b []byte, s *Segment) {
	t.Helper()
	first := layers.LayerTypeIPv4
	if s.Src.Addr().Is6() {
		first = layers.LayerTypeIPv6
	}
	pkt := gopacket.NewPacket(b, first, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("gopacket: %v", el.Error())
	}
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		t.Fatal("gopacket found no TCP layer")
	}
	if uint16(tcp.SrcPort) != s.Src.Port() || uint16(tcp.DstPort) != s.Dst.Port() || tcp.Seq != s.Seq || tcp.Ack != s.Ack || tcp.Window != s.Window {
		t.Fatalf("gopacket sees ports %d>%d seq %d ack %d win %d", tcp.SrcPort, tcp.DstPort, tcp.Seq, tcp.Ack, tcp.Window)
	}
	if tcp.SYN != s.Flags.Has(SYN) || tcp.ACK != s.Flags.Has(ACK) || tcp.RST != s.Flags.Has(RST) || tcp.FIN != s.Flags.Has(FIN) {
		t.Fatalf("gopacket flags differ: SYN=%v ACK=%v RST=%v FIN=%v, want %v", tcp.SYN, tcp.ACK, tcp.RST, tcp.FIN, s.Flags)
	}
	var mss, ws, sackPerm, ts bool
	for _, o := range tcp.Options {
		switch o.OptionType {
		case layers.TCPOptionKindMSS:
			mss = binary.BigEndian.Uint16(o.OptionData) == s.Options.MSS
		case layers.TCPOptionKindWindowScale:
			ws = o.OptionData[0] == s.Options.WindowScale
		case layers.TCPOptionKindSACKPermitted:
			sackPerm = true
		case layers.TCPOptionKindTimestamps:
			ts = binary.BigEndian.Uint32(o.OptionData) == s.Options.TSVal
		}
	}
	if mss != s.Options.HasMSS || ws != s.Options.HasWindowScale || sackPerm != s.Options.SACKPermitted || ts != s.Options.HasTimestamps {
		t.Fatalf("gopacket options %v differ from %+v", tcp.Options, s.Options)
	}

	// Recompute the checksums with gopacket's serializer and compare.
	var net gopacket.NetworkLayer
	if ip4, ok := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		if ip4.SrcIP.String() != s.Src.Addr().String() || ip4.DstIP.String() != s.Dst.Addr().String() {
			t.Fatalf("gopacket addresses %v > %v", ip4.SrcIP, ip4.DstIP)
		}
		net = ip4
	} else if ip6, ok := pkt.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		if ip6.SrcIP.String() != s.Src.Addr().String() || ip6.DstIP.String() != s.Dst.Addr().String() {
			t.Fatalf("gopacket addresses %v > %v", ip6.SrcIP, ip6.DstIP)
		}
		net = ip6
	}
	want := tcp.Checksum
	if err := tcp.SetNetworkLayerForChecksum(net); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := tcp.SerializeTo(buf, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
		t.Fatal(err)
	}
	if tcp.Checksum != want {
		t.Fatalf("TCP checksum %#04x, gopacket computes %#04x", want, tcp.Checksum)
	}
}

// linuxSYN is a SYN laid out byte for byte as Linux 6.x sends it (options
// MSS, SACK-permitted, timestamps, NOP, window scale 7); checksums are zero.
var linuxSYN = []byte{
	0x45, 0x00, 0x00, 0x3c, 0x8a, 0x5e, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00,
	198, 51, 100, 2, 203, 0, 113, 2,
	0x9c, 0x40, 0x00, 0x50, 0x11, 0x22, 0x33, 0x44, 0x00, 0x00, 0x00, 0x00,
	0xa0, 0x02, 0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00,
	0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x9b, 0x3c, 0x4e, 0x1d,
	0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
}

func TestParseLinuxSYN(t *testing.T) {
	var p Packet
	if err := Parse(linuxSYN, &p); err != nil {
		t.Fatal(err)
	}
	want := Options{MSS: 1460, HasMSS: true, SACKPermitted: true, HasTimestamps: true, TSVal: 0x9b3c4e1d, WindowScale: 7, HasWindowScale: true}
	if diff := cmp.Diff(want, p.Options); diff != "" {
		t.Fatalf("options (-want +got):\n%s", diff)
	}
	if p.Source() != client4 || p.Destination() != server4 || p.Seq != 0x11223344 || p.Flags != SYN || p.Window != 64240 {
		t.Fatalf("parsed %+v", p)
	}
	if p.IPHeaderLen != 20 || p.TCPHeaderLen != 40 || p.PayloadLen != 0 || p.HasIPOptions {
		t.Fatalf("lengths ip=%d tcp=%d payload=%d options=%v", p.IPHeaderLen, p.TCPHeaderLen, p.PayloadLen, p.HasIPOptions)
	}
}

func TestParseSACKBlocksAndUnknownOptions(t *testing.T) {
	b := mustBuild(t, &Segment{Src: client4, Dst: server4, Flags: ACK})
	// Replace the header with one carrying NOP NOP SACK(2 blocks) + an
	// unknown kind 30 of length 4.
	opts := []byte{1, 1, 5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40, 30, 4, 0xaa, 0xbb}
	b = withTCPOptions(b, IPv4HeaderLen, opts)
	var p Packet
	if err := Parse(b, &p); err != nil {
		t.Fatal(err)
	}
	if p.Options.NumSACKBlocks != 2 || p.Options.SACKBlocks[0] != (SACKBlock{10, 20}) || p.Options.SACKBlocks[1] != (SACKBlock{30, 40}) {
		t.Fatalf("SACK blocks %+v", p.Options)
	}
}

// withTCPOptions returns a copy of the packet b with its TCP options
// replaced by opts (padded with EOL to 4 bytes), lengths fixed up.
func withTCPOptions(b []byte, ipLen int, opts []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	out := append([]byte(nil), b[:ipLen+TCPHeaderLen]...)
	out = append(out, opts...)
	out[ipLen+12] = byte((TCPHeaderLen+len(opts))/4) << 4
	if out[0]>>4 == 4 {
		binary.BigEndian.PutUint16(out[2:], uint16(len(out)))
	} else {
		binary.BigEndian.PutUint16(out[4:], uint16(len(out)-IPv6HeaderLen))
	}
	return out
}

func TestParseErrors(t *testing.T) {
	syn := mustBuild(t, &Segment{Src: client4, Dst: server4, Flags: SYN, Options: linuxSYNOptions()})
	syn6 := mustBuild(t, &Segment{Src: client6, Dst: server6, Flags: SYN, Options: linuxSYNOptions()})
	mod := func(b []byte, f func(b []byte) []byte) []byte { return f(append([]byte(nil), b...)) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"version 5", mod(syn, func(b []byte) []byte { b[0] = 0x55; return b }), ErrVersion},
		{"short v4 header", syn[:19], ErrTruncated},
		{"IHL below 5", mod(syn, func(b []byte) []byte { b[0] = 0x44; return b }), ErrIPHeaderLength},
		{"IHL past buffer", mod(syn, func(b []byte) []byte { b[0] = 0x4f; return b[:40] }), ErrTruncated},
		{"total length below IHL", mod(syn, func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 10); return b }), ErrTotalLength},
		{"total length past buffer", mod(syn, func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 200); return b }), ErrTruncated},
		{"more fragments", mod(syn, func(b []byte) []byte { b[6] |= 0x20; return b }), ErrFragment},
		{"fragment offset", mod(syn, func(b []byte) []byte { b[7] = 1; return b }), ErrFragment},
		{"UDP", mod(syn, func(b []byte) []byte { b[9] = 17; return b }), ErrNotTCP},
		{"truncated TCP header", mod(syn, func(b []byte) []byte { binary.BigEndian.PutUint16(b[2:], 30); return b[:30] }), ErrTruncated},
		{"data offset below 5", mod(syn, func(b []byte) []byte { b[32] = 0x40; return b }), ErrDataOffset},
		{"data offset past segment", mod(syn, func(b []byte) []byte { b[32] = 0xf0; return b }), ErrTruncated},
		{"option length 0", withTCPOptions(syn, 20, []byte{2, 0, 5, 0xb4}), ErrOptionLength},
		{"option length 1", withTCPOptions(syn, 20, []byte{30, 1, 0, 0}), ErrOptionLength},
		{"option overrun", withTCPOptions(syn, 20, []byte{1, 1, 30, 9}), ErrOptionLength},
		{"kind without length byte", withTCPOptions(syn, 20, []byte{1, 1, 1, 2}), ErrOptionLength},
		{"MSS length 3", withTCPOptions(syn, 20, []byte{2, 3, 5, 0}), ErrOptionLength},
		{"window scale length 4", withTCPOptions(syn, 20, []byte{3, 4, 7, 0}), ErrOptionLength},
		{"SACK-permitted length 3", withTCPOptions(syn, 20, []byte{4, 3, 0, 0}), ErrOptionLength},
		{"SACK no blocks", withTCPOptions(syn, 20, []byte{1, 1, 5, 2}), ErrOptionLength},
		{"SACK odd length", withTCPOptions(syn, 20, []byte{5, 6, 0, 0, 0, 0, 0, 0}), ErrOptionLength},
		{"timestamps length 8", withTCPOptions(syn, 20, []byte{8, 8, 0, 0, 0, 0, 0, 0}), ErrOptionLength},
		{"short v6 header", syn6[:39], ErrTruncated},
		{"v6 payload past buffer", mod(syn6, func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 500); return b }), ErrTruncated},
		{"v6 jumbogram", mod(syn6, func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 0); return b }), ErrJumbogram},
		{"v6 UDP", mod(syn6, func(b []byte) []byte { b[6] = 17; return b }), ErrExtensionHeader},
		{"v6 ESP", mod(syn6, func(b []byte) []byte { b[6] = 50; return b }), ErrExtensionHeader},
		{"v6 real fragment", withExtension(syn6, protoFragment, []byte{0, 0, 0x00, 0x01, 0, 0, 0, 1}), ErrFragment},
		{"v6 ext header overrun", withExtension(syn6, protoDestOpts, []byte{0, 200, 1, 4, 0, 0, 0, 0}), ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := Parse(tt.in, &p); !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
		})
	}
}

// withExtension inserts one IPv6 extension header (next-header byte and
// body given as ext, whose first byte is overwritten) before the TCP header.
func withExtension(b []byte, kind byte, ext []byte) []byte {
	out := append([]byte(nil), b[:IPv6HeaderLen]...)
	ext = append([]byte(nil), ext...)
	ext[0] = out[6]
	out[6] = kind
	out = append(out, ext...)
	out = append(out, b[IPv6HeaderLen:]...)
	binary.BigEndian.PutUint16(out[4:], uint16(len(out)-IPv6HeaderLen))
	return out
}

func TestParseIPv6ExtensionHeaders(t *testing.T) {
	syn6 := mustBuild(t, &Segment{Src: client6, Dst: server6, Seq: 77, Flags: SYN, Options: linuxSYNOptions()})
	b := withExtension(syn6, protoHopByHop, []byte{0, 0, 1, 4, 0, 0, 0, 0})                      // hop-by-hop, PadN
	b = withExtension(b, protoDestOpts, []byte{0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // 16 bytes
	b = withExtension(b, protoFragment, []byte{0, 0, 0, 0, 0, 0, 0, 9})                          // atomic fragment
	var p Packet
	if err := Parse(b, &p); err != nil {
		t.Fatal(err)
	}
	if p.Seq != 77 || p.Options.MSS != 1460 || !p.HasIPOptions || p.IPHeaderLen != IPv6HeaderLen+8+16+8 {
		t.Fatalf("parsed %+v", p)
	}
	// Checksums do not cover extension headers, so it still verifies.
	if !VerifyTCPChecksum(b, &p) {
		t.Fatal("checksum")
	}
	// Nine headers exceed the walk's bound.
	for range 9 {
		b = withExtension(b, protoDestOpts, []byte{0, 0, 1, 4, 0, 0, 0, 0})
	}
	if err := Parse(b, &p); !errors.Is(err, ErrTooManyHeaders) {
		t.Fatalf("Parse = %v, want %v", err, ErrTooManyHeaders)
	}
}

func TestParseIPv4OptionsAndPayload(t *testing.T) {
	syn := mustBuild(t, &Segment{Src: client4, Dst: server4, Seq: 9, Flags: SYN | PSH})
	// Insert 4 bytes of IP options (NOP x3 + EOL) and 5 bytes of payload.
	b := append([]byte(nil), syn[:20]...)
	b = append(b, 1, 1, 1, 0)
	b = append(b, syn[20:]...)
	b = append(b, 'h', 'e', 'l', 'l', 'o')
	b[0] = 0x46
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	var p Packet
	if err := Parse(b, &p); err != nil {
		t.Fatal(err)
	}
	if !p.HasIPOptions || p.IPHeaderLen != 24 || p.PayloadLen != 5 || p.Seq != 9 {
		t.Fatalf("parsed %+v", p)
	}
}

func TestBuildErrors(t *testing.T) {
	b := make([]byte, MaxHandshakeLen)
	if _, err := Build(b, &Segment{Src: client4, Dst: server6}); !errors.Is(err, ErrAddressFamilies) {
		t.Fatalf("mixed families: %v", err)
	}
	if _, err := Build(b, &Segment{Dst: server4}); !errors.Is(err, ErrInvalidAddress) {
		t.Fatalf("zero source: %v", err)
	}
	if _, err := Build(b[:30], &Segment{Src: client4, Dst: server4}); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
	// A v4-mapped v6 address builds as IPv4.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(client4.Addr().As16()), 1)
	n, err := Build(b, &Segment{Src: mapped, Dst: server4, Flags: SYN})
	if err != nil || b[0]>>4 != 4 || n != 40 {
		t.Fatalf("mapped: n=%d err=%v version=%d", n, err, b[0]>>4)
	}
}

func TestIncrementalChecksum(t *testing.T) {
	b := mustBuild(t, &Segment{Src: server4, Dst: client4, Seq: 1000, Ack: 2000, Flags: ACK, Window: 0})
	tcp := b[IPv4HeaderLen:]
	for _, win := range []uint16{1, 0xffff, 502, 0} {
		old := binary.BigEndian.Uint16(tcp[14:])
		check := binary.BigEndian.Uint16(tcp[16:])
		binary.BigEndian.PutUint16(tcp[14:], win)
		binary.BigEndian.PutUint16(tcp[16:], UpdateChecksum16(check, old, win))
		var p Packet
		if err := Parse(b, &p); err != nil || !VerifyTCPChecksum(b, &p) {
			t.Fatalf("after window %d: checksum does not verify (err %v)", win, err)
		}
	}
	for _, seq := range []uint32{0, 0xffffffff, 0x80000000, 12345} {
		old := binary.BigEndian.Uint32(tcp[4:])
		check := binary.BigEndian.Uint16(tcp[16:])
		binary.BigEndian.PutUint32(tcp[4:], seq)
		binary.BigEndian.PutUint16(tcp[16:], UpdateChecksum32(check, old, seq))
		var p Packet
		if err := Parse(b, &p); err != nil || !VerifyTCPChecksum(b, &p) {
			t.Fatalf("after seq %#x: checksum does not verify (err %v)", seq, err)
		}
	}
}

func TestChecksumKnownValue(t *testing.T) {
	// RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded),
	// so the checksum is its complement.
	if got := Checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Fatalf("Checksum = %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	// Odd length pads with zero.
	if Checksum([]byte{0xab}) != ^uint16(0xab00) {
		t.Fatal("odd length")
	}
}

func TestZeroAllocations(t *testing.T) {
	b := make([]byte, MaxHandshakeLen)
	seg := Segment{Src: server4, Dst: client4, Seq: 1, Ack: 2, Flags: SYN | ACK, Options: linuxSYNOptions()}
	var p Packet
	if n := testing.AllocsPerRun(100, func() {
		if err := Parse(linuxSYN, &p); err != nil {
			t.Fatal(err)
		}
		if _, err := Build(b, &seg); err != nil {
			t.Fatal(err)
		}
		_ = Parse(linuxSYN[:30], &p)
	}); n != 0 {
		t.Fatalf("Parse+Build allocate %.1f times per run", n)
	}
}

func TestFlagsString(t *testing.T) {
	if got := (SYN | ACK).String(); got != "SYN|ACK" {
		t.Fatalf("got %q", got)
	}
	if got := Flags(0).String(); got != "none" {
		t.Fatalf("got %q", got)
	}
}

func TestSetSeqAck(t *testing.T) {
	for _, s := range []Segment{
		{Src: netip.MustParseAddrPort("198.51.100.2:40000"), Dst: netip.MustParseAddrPort("203.0.113.2:80"), Seq: 0xfffffff0, Ack: 7, Flags: ACK | PSH, Window: 502},
		{Src: netip.MustParseAddrPort("[2001:db8:c::2]:40000"), Dst: netip.MustParseAddrPort("[2001:db8:b::2]:443"), Seq: 1, Ack: 0x80000000, Flags: ACK, Window: 1},
	} {
		b := mustBuild(t, &s)
		var p Packet
		if err := Parse(b, &p); err != nil {
			t.Fatal(err)
		}
		SetSeq(b, p.IPHeaderLen, 0x01020304)
		SetAck(b, p.IPHeaderLen, Ack(b, p.IPHeaderLen)+0x7fff0000)
		var got Packet
		if err := Parse(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.Seq != 0x01020304 || got.Ack != s.Ack+0x7fff0000 {
			t.Fatalf("seq %#x ack %#x", got.Seq, got.Ack)
		}
		if !VerifyTCPChecksum(b, &got) {
			t.Fatal("checksum not updated")
		}
	}
}
