package packet

import (
	"encoding/binary"
	"net/netip"
)

// DefaultHopLimit is the TTL / hop limit of built packets when Segment
// leaves it zero (Linux's default).
const DefaultHopLimit = 64

// MaxHandshakeLen bounds what Build writes: an IPv6 header and a TCP header
// with every option Build emits.
const MaxHandshakeLen = IPv6HeaderLen + TCPHeaderLen + 20

// Segment describes a handshake segment to build. Options.HasMSS,
// SACKPermitted, HasWindowScale and HasTimestamps choose which options are
// emitted; SACK blocks are never emitted.
type Segment struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    Flags
	Window   uint16
	Options  Options
	HopLimit uint8
}

// Build writes s as an IPv4 or IPv6 packet (by the addresses' family) into
// b and returns its length. Both checksums are filled in.
func Build(b []byte, s *Segment) (int, error) {
	src, dst := s.Src.Addr(), s.Dst.Addr()
	if !src.IsValid() || !dst.IsValid() {
		return 0, ErrInvalidAddress
	}
	// An IPv4-mapped IPv6 address would silently change the family.
	src, dst = src.Unmap(), dst.Unmap()
	if src.Is4() != dst.Is4() {
		return 0, ErrAddressFamilies
	}
	ipLen := IPv6HeaderLen
	if src.Is4() {
		ipLen = IPv4HeaderLen
	}
	tcpLen := TCPHeaderLen + s.Options.optionsLen()
	total := ipLen + tcpLen
	if len(b) < total {
		return 0, ErrShortBuffer
	}
	hop := s.HopLimit
	if hop == 0 {
		hop = DefaultHopLimit
	}

	if src.Is4() {
		h := b[:IPv4HeaderLen]
		h[0] = 0x45
		h[1] = 0
		binary.BigEndian.PutUint16(h[2:], uint16(total))
		binary.BigEndian.PutUint16(h[4:], 0)      // ID: unused with DF set
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
		h[8] = hop
		h[9] = protoTCP
		h[10], h[11] = 0, 0
		s4, d4 := src.As4(), dst.As4()
		copy(h[12:16], s4[:])
		copy(h[16:20], d4[:])
		binary.BigEndian.PutUint16(h[10:], Checksum(h))
	} else {
		h := b[:IPv6HeaderLen]
		binary.BigEndian.PutUint32(h[0:], 6<<28)
		binary.BigEndian.PutUint16(h[4:], uint16(tcpLen))
		h[6] = protoTCP
		h[7] = hop
		s16, d16 := src.As16(), dst.As16()
		copy(h[8:24], s16[:])
		copy(h[24:40], d16[:])
	}

	t := b[ipLen:total]
	binary.BigEndian.PutUint16(t[0:], s.Src.Port())
	binary.BigEndian.PutUint16(t[2:], s.Dst.Port())
	binary.BigEndian.PutUint32(t[4:], s.Seq)
	binary.BigEndian.PutUint32(t[8:], s.Ack)
	t[12] = byte(tcpLen/4) << 4
	t[13] = byte(s.Flags)
	binary.BigEndian.PutUint16(t[14:], s.Window)
	t[16], t[17] = 0, 0 // checksum, below
	t[18], t[19] = 0, 0 // urgent pointer
	writeOptions(t[TCPHeaderLen:], &s.Options)
	binary.BigEndian.PutUint16(t[16:], TCPChecksum(src, dst, t))
	return total, nil
}

// writeOptions emits options in Linux's order and padding: MSS, then
// SACK-permitted + timestamps (or NOP NOP + timestamps, or NOP NOP +
// SACK-permitted), then NOP + window scale. b must hold o.optionsLen() bytes.
func writeOptions(b []byte, o *Options) {
	i := 0
	if o.HasMSS {
		b[i], b[i+1] = optMSS, 4
		binary.BigEndian.PutUint16(b[i+2:], o.MSS)
		i += 4
	}
	switch {
	case o.HasTimestamps:
		if o.SACKPermitted {
			b[i], b[i+1] = optSACKPermitted, 2
		} else {
			b[i], b[i+1] = optNOP, optNOP
		}
		b[i+2], b[i+3] = optTimestamps, 10
		binary.BigEndian.PutUint32(b[i+4:], o.TSVal)
		binary.BigEndian.PutUint32(b[i+8:], o.TSEcr)
		i += 12
	case o.SACKPermitted:
		b[i], b[i+1], b[i+2], b[i+3] = optNOP, optNOP, optSACKPermitted, 2
		i += 4
	}
	if o.HasWindowScale {
		b[i], b[i+1], b[i+2], b[i+3] = optNOP, optWindowScale, 3, o.WindowScale
	}
}
