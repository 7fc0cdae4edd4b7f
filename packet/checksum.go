package packet

import (
	"encoding/binary"
	"net/netip"
)

// sum adds b to the running one's-complement sum as big-endian 16-bit
// words (an odd trailing byte is padded with zero). The result is not folded.
func sum(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	if len(b) >= 4 {
		acc += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold reduces a 64-bit running sum to 16 bits.
func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = (acc & 0xffff) + acc>>16
	}
	return uint16(acc)
}

// Checksum returns the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 { return ^fold(sum(b, 0)) }

// pseudoHeaderSum is the TCP pseudo-header's contribution for either family.
func pseudoHeaderSum(src, dst netip.Addr, length int) uint64 {
	var acc uint64
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		acc = sum(s[:], acc)
		acc = sum(d[:], acc)
	} else {
		s, d := src.As16(), dst.As16()
		acc = sum(s[:], acc)
		acc = sum(d[:], acc)
	}
	return acc + uint64(protoTCP) + uint64(length)
}

// TCPChecksum computes the checksum of the TCP segment seg (header with its
// checksum field zeroed, plus payload) between src and dst.
func TCPChecksum(src, dst netip.Addr, seg []byte) uint16 {
	return ^fold(sum(seg, pseudoHeaderSum(src, dst, len(seg))))
}

// VerifyTCPChecksum reports whether the TCP segment of a parsed packet b
// carries a correct checksum.
func VerifyTCPChecksum(b []byte, p *Packet) bool {
	end := p.IPHeaderLen + p.TCPHeaderLen + p.PayloadLen
	if end > len(b) {
		return false
	}
	seg := b[p.IPHeaderLen:end]
	return fold(sum(seg, pseudoHeaderSum(p.Src, p.Dst, len(seg)))) == 0xffff
}

// UpdateChecksum16 returns the checksum after a 16-bit field covered by it
// changed from old to new (RFC 1624, eqn. 3), without summing the packet.
func UpdateChecksum16(check, old, new uint16) uint16 {
	acc := uint64(^check) + uint64(^old) + uint64(new)
	return ^fold(acc)
}

// UpdateChecksum32 is UpdateChecksum16 for a 32-bit field such as a
// sequence number.
func UpdateChecksum32(check uint16, old, new uint32) uint16 {
	check = UpdateChecksum16(check, uint16(old>>16), uint16(new>>16))
	return UpdateChecksum16(check, uint16(old), uint16(new))
}

// SetSeq and SetAck rewrite the sequence or acknowledgement number of the
// TCP segment that starts at tcpOffset in the IP packet b and update its
// checksum to match. b must hold a whole, parsed TCP header at that
// offset.
func SetSeq(b []byte, tcpOffset int, seq uint32) { setWord(b, tcpOffset, 4, seq) }

// SetAck: see SetSeq.
func SetAck(b []byte, tcpOffset int, ack uint32) { setWord(b, tcpOffset, 8, ack) }

func setWord(b []byte, tcpOffset, field int, v uint32) {
	h := b[tcpOffset : tcpOffset+20]
	old := binary.BigEndian.Uint32(h[field : field+4])
	binary.BigEndian.PutUint32(h[field:field+4], v)
	check := binary.BigEndian.Uint16(h[16:18])
	binary.BigEndian.PutUint16(h[16:18], UpdateChecksum32(check, old, v))
}

// Ack reads the acknowledgement number of the TCP segment that starts at
// tcpOffset in the IP packet b.
func Ack(b []byte, tcpOffset int) uint32 {
	return binary.BigEndian.Uint32(b[tcpOffset+8 : tcpOffset+12])
}
