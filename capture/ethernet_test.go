package capture

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestFromEthernet(t *testing.T) {
	ip := syn(t, client(1, false), server4, 1)
	frame := func(types ...uint16) []byte {
		b := make([]byte, 12) // MAC addresses
		for i, et := range types {
			b = binary.BigEndian.AppendUint16(b, et)
			if i < len(types)-1 {
				b = append(b, 0, 7) // VLAN TCI
			}
		}
		return append(b, ip...)
	}
	tests := []struct {
		name  string
		frame []byte
		ok    bool
	}{
		{"IPv4", frame(0x0800), true},
		{"IPv6", frame(0x86dd), true},
		{"802.1Q", frame(0x8100, 0x0800), true},
		{"802.1ad", frame(0x88a8, 0x8100, 0x86dd), true},
		{"three tags", frame(0x88a8, 0x8100, 0x8100, 0x0800), false},
		{"ARP", frame(0x0806), false},
		{"short", frame(0x0800)[:13], false},
		{"tag cut", frame(0x8100, 0x0800)[:15], false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		got, ok := FromEthernet(tt.frame)
		if ok != tt.ok || (ok && !bytes.Equal(got, ip)) {
			t.Errorf("%s: %x, %v", tt.name, got, ok)
		}
	}
}

// FuzzFromEthernet: no frame panics, and what comes back is the frame's
// tail after an IP EtherType.
func FuzzFromEthernet(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x81, 0x00, 0, 1, 0x08, 0x00, 0x45})
	f.Fuzz(func(t *testing.T, frame []byte) {
		ip, ok := FromEthernet(frame)
		if !ok {
			return
		}
		off := len(frame) - len(ip)
		if off < 14 || !bytes.Equal(frame[off:], ip) {
			t.Fatalf("%x: payload at %d", frame, off)
		}
		if et := binary.BigEndian.Uint16(frame[off-2:]); et != 0x0800 && et != 0x86dd {
			t.Fatalf("%x: payload after EtherType %#04x", frame, et)
		}
	})
}
