package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Parse errors. They are sentinels so that rejecting a packet allocates
// nothing; callers count them by identity.
var (
	ErrTruncated        = errors.New("packet truncated")
	ErrVersion          = errors.New("not an IPv4 or IPv6 packet")
	ErrIPHeaderLength   = errors.New("bad IPv4 header length")
	ErrTotalLength      = errors.New("bad IP total length")
	ErrFragment         = errors.New("IP fragment")
	ErrNotTCP           = errors.New("not TCP")
	ErrExtensionHeader  = errors.New("unsupported IPv6 extension header")
	ErrDataOffset       = errors.New("bad TCP data offset")
	ErrOptionLength     = errors.New("bad TCP option length")
	ErrAddressFamilies  = errors.New("source and destination address families differ")
	ErrShortBuffer      = errors.New("buffer too small")
	ErrInvalidAddress   = errors.New("invalid address")
	ErrTooManyHeaders   = errors.New("too many IPv6 extension headers")
	ErrJumbogram        = errors.New("IPv6 jumbogram")
	ErrBadPayloadLength = errors.New("payload length exceeds TCP segment")
)

// Header sizes.
const (
	IPv4HeaderLen = 20
	IPv6HeaderLen = 40
	TCPHeaderLen  = 20
)

// IP protocol numbers and IPv6 next-header values.
const (
	protoHopByHop = 0
	protoTCP      = 6
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoDestOpts = 60
)

// maxExtensionHeaders bounds the IPv6 header walk so a crafted chain costs
// a fixed amount of work.
const maxExtensionHeaders = 8

// Packet is a parsed TCP segment.
type Packet struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            Flags
	Window           uint16
	Options          Options
	HopLimit         uint8 // IPv4 TTL or IPv6 hop limit
	HasIPOptions     bool  // IPv4 options or IPv6 extension headers were present
	IPHeaderLen      int   // including IPv4 options or IPv6 extension headers
	TCPHeaderLen     int
	PayloadLen       int
}

// Source returns the sender's address and port.
func (p *Packet) Source() netip.AddrPort { return netip.AddrPortFrom(p.Src, p.SrcPort) }

// Destination returns the receiver's address and port.
func (p *Packet) Destination() netip.AddrPort { return netip.AddrPortFrom(p.Dst, p.DstPort) }

// IsIPv6 reports whether the packet is IPv6.
func (p *Packet) IsIPv6() bool { return p.Src.Is6() }

// Parse decodes the IP packet in b into p. On error p is left partially
// filled and must not be used.
func Parse(b []byte, p *Packet) error {
	if len(b) < 1 {
		return ErrTruncated
	}
	var (
		tcp []byte
		err error
	)
	switch b[0] >> 4 {
	case 4:
		tcp, err = parseIPv4(b, p)
	case 6:
		tcp, err = parseIPv6(b, p)
	default:
		return ErrVersion
	}
	if err != nil {
		return err
	}
	return parseTCP(tcp, p)
}

func parseIPv4(b []byte, p *Packet) ([]byte, error) {
	if len(b) < IPv4HeaderLen {
		return nil, ErrTruncated
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < IPv4HeaderLen {
		return nil, ErrIPHeaderLength
	}
	if ihl > len(b) {
		return nil, ErrTruncated
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < ihl {
		return nil, ErrTotalLength
	}
	if total > len(b) {
		return nil, ErrTruncated
	}
	// More-fragments set or a non-zero offset: the TCP header may be
	// elsewhere or split, and reassembly is the kernel's job.
	if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 {
		return nil, ErrFragment
	}
	if b[9] != protoTCP {
		return nil, ErrNotTCP
	}
	p.HopLimit = b[8]
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.HasIPOptions = ihl > IPv4HeaderLen
	p.IPHeaderLen = ihl
	return b[ihl:total], nil
}

func parseIPv6(b []byte, p *Packet) ([]byte, error) {
	if len(b) < IPv6HeaderLen {
		return nil, ErrTruncated
	}
	payload := int(binary.BigEndian.Uint16(b[4:6]))
	if payload == 0 {
		// Zero means a jumbo payload option, which no TCP segment that
		// reaches a queue legitimately uses.
		return nil, ErrJumbogram
	}
	if IPv6HeaderLen+payload > len(b) {
		return nil, ErrTruncated
	}
	p.HopLimit = b[7]
	p.HasIPOptions = false
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	end := IPv6HeaderLen + payload
	next, off := b[6], IPv6HeaderLen
	for i := 0; ; i++ {
		if next == protoTCP {
			break
		}
		if i == maxExtensionHeaders {
			return nil, ErrTooManyHeaders
		}
		if off+8 > end {
			return nil, ErrTruncated
		}
		var hdrLen int
		switch next {
		case protoHopByHop, protoRouting, protoDestOpts:
			hdrLen = (int(b[off+1]) + 1) * 8
		case protoFragment:
			// Only an atomic fragment (offset 0, no more fragments)
			// carries a whole TCP segment.
			if binary.BigEndian.Uint16(b[off+2:off+4])&0xfff9 != 0 {
				return nil, ErrFragment
			}
			hdrLen = 8
		case protoAH:
			hdrLen = (int(b[off+1]) + 2) * 4
		default:
			return nil, ErrExtensionHeader
		}
		if off+hdrLen > end {
			return nil, ErrTruncated
		}
		next = b[off]
		off += hdrLen
		p.HasIPOptions = true
	}
	p.IPHeaderLen = off
	return b[off:end], nil
}

func parseTCP(b []byte, p *Packet) error {
	if len(b) < TCPHeaderLen {
		return ErrTruncated
	}
	p.SrcPort = binary.BigEndian.Uint16(b[0:2])
	p.DstPort = binary.BigEndian.Uint16(b[2:4])
	p.Seq = binary.BigEndian.Uint32(b[4:8])
	p.Ack = binary.BigEndian.Uint32(b[8:12])
	doff := int(b[12]>>4) * 4
	if doff < TCPHeaderLen {
		return ErrDataOffset
	}
	if doff > len(b) {
		return ErrTruncated
	}
	p.Flags = Flags(b[13])
	p.Window = binary.BigEndian.Uint16(b[14:16])
	p.TCPHeaderLen = doff
	p.PayloadLen = len(b) - doff
	return parseOptions(b[TCPHeaderLen:doff], &p.Options)
}

// parseOptions decodes TCP options. Unknown kinds are skipped by their
// length; a known kind with the wrong length is an error, because a peer
// that sends one is broken or probing.
func parseOptions(b []byte, o *Options) error {
	*o = Options{}
	for i := 0; i < len(b); {
		kind := b[i]
		if kind == optEOL {
			return nil
		}
		if kind == optNOP {
			i++
			continue
		}
		if i+1 >= len(b) {
			return ErrOptionLength
		}
		n := int(b[i+1])
		if n < 2 || i+n > len(b) {
			return ErrOptionLength
		}
		v := b[i+2 : i+n]
		switch kind {
		case optMSS:
			if n != 4 {
				return ErrOptionLength
			}
			o.MSS, o.HasMSS = binary.BigEndian.Uint16(v), true
		case optWindowScale:
			if n != 3 {
				return ErrOptionLength
			}
			o.WindowScale, o.HasWindowScale = v[0], true
		case optSACKPermitted:
			if n != 2 {
				return ErrOptionLength
			}
			o.SACKPermitted = true
		case optSACK:
			blocks := (n - 2) / 8
			if (n-2)%8 != 0 || blocks == 0 || blocks > MaxSACKBlocks {
				return ErrOptionLength
			}
			for j := range blocks {
				o.SACKBlocks[j] = SACKBlock{
					Left:  binary.BigEndian.Uint32(v[j*8:]),
					Right: binary.BigEndian.Uint32(v[j*8+4:]),
				}
			}
			o.NumSACKBlocks = uint8(blocks)
		case optTimestamps:
			if n != 10 {
				return ErrOptionLength
			}
			o.TSVal = binary.BigEndian.Uint32(v[0:4])
			o.TSEcr = binary.BigEndian.Uint32(v[4:8])
			o.HasTimestamps = true
		}
		i += n
	}
	return nil
}
