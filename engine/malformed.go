package engine

import "net/netip"

// malformedService returns the index of the service a packet that
// packet.Parse rejected was sent to or from, or -1.
//
// The rules queue only segments to and from protected services, so most
// malformed packets belong to one: a SYN with a broken option list, a bad
// data offset, a segment cut short. Counting them under their service
// makes them visible in the per-service metrics. Only the plain case is
// read, an IPv4 header whose length is sane or an IPv6 header followed
// directly by TCP, with the first four bytes of the TCP header (the
// ports) present; anything else (extension header chains, fragments, a
// header too short to hold the ports) stays unattributed, counted under
// no service.
func (e *Engine) malformedService(b []byte) int {
	var src, dst netip.Addr
	var tcp []byte
	switch {
	case len(b) >= 20 && b[0]>>4 == 4:
		ihl := int(b[0]&0x0f) * 4
		frag := (uint16(b[6])<<8 | uint16(b[7])) & 0x3fff
		if ihl < 20 || b[9] != 6 || frag != 0 || len(b) < ihl+4 {
			return -1
		}
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		tcp = b[ihl:]
	case len(b) >= 44 && b[0]>>4 == 6:
		if b[6] != 6 {
			return -1
		}
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		tcp = b[40:]
	default:
		return -1
	}
	sport, dport := uint16(tcp[0])<<8|uint16(tcp[1]), uint16(tcp[2])<<8|uint16(tcp[3])
	t := e.table.Load()
	if svc, ok := t.lookup(netip.AddrPortFrom(dst, dport)); ok {
		return svc
	}
	if svc, ok := t.lookup(netip.AddrPortFrom(src, sport)); ok {
		return svc
	}
	return -1
}
