package capture

import "encoding/binary"

// FromEthernet returns the IP packet an Ethernet frame carries, after up to
// two VLAN tags (802.1Q, 802.1ad), for offering a frame from a link-layer
// path such as XDP. It reports false for a frame carrying anything but
// IPv4 or IPv6, or too short to tell.
func FromEthernet(frame []byte) ([]byte, bool) {
	const (
		typeIPv4   = 0x0800
		typeIPv6   = 0x86dd
		typeVLAN   = 0x8100
		typeQinQ   = 0x88a8
		headerLen  = 14
		tagLen     = 4
		maxVLANTag = 2
	)
	off := headerLen - 2 // the EtherType
	for tags := 0; ; tags++ {
		if len(frame) < off+2 {
			return nil, false
		}
		switch binary.BigEndian.Uint16(frame[off:]) {
		case typeIPv4, typeIPv6:
			return frame[off+2:], true
		case typeVLAN, typeQinQ:
			if tags == maxVLANTag {
				return nil, false
			}
			off += tagLen
		default:
			return nil, false
		}
	}
}
