package rawsock

import (
	"encoding/binary"
	"net/netip"
)

// Link is where a reply goes back to: the interface a packet arrived on
// and the link-layer address of the neighbour that sent it.
type Link struct {
	index int32
	addr  [6]byte
}

// LinkFrom returns the Link of a packet that arrived on interface index
// from link-layer address hw, as nfqueue reports them (NFQA_IFINDEX_INDEV,
// NFQA_HWADDR). It reports false for anything a reply cannot be addressed
// to directly: no interface (the packet was sent by this host), an
// address that is not a 6-byte Ethernet one (tunnels, which have none),
// the all-zero address (loopback) and group addresses, which no unicast
// sender has.
func LinkFrom(index uint32, hw []byte) (Link, bool) {
	if index == 0 || index > 1<<31-1 || len(hw) != 6 {
		return Link{}, false
	}
	var l Link
	copy(l.addr[:], hw)
	if l.addr == [6]byte{} || l.addr[0]&1 != 0 {
		return Link{}, false
	}
	l.index = int32(index)
	return l, true
}

// IsValid reports whether l came from LinkFrom's success.
func (l Link) IsValid() bool { return l.index != 0 }

// ethertype is the protocol of an IP packet to dst, in network byte order
// as sockaddr_ll wants it.
func ethertype(dst netip.Addr) uint16 {
	var b [2]byte
	if dst.Is4() || dst.Is4In6() {
		binary.BigEndian.PutUint16(b[:], 0x0800) // ETH_P_IP
	} else {
		binary.BigEndian.PutUint16(b[:], 0x86dd) // ETH_P_IPV6
	}
	return binary.NativeEndian.Uint16(b[:])
}
