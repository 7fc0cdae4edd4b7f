package heavyhitter

import "net/netip"

// Prefix lengths the sketch counts by: a /24 is the smallest IPv4 block
// routed between networks, a /48 the usual IPv6 site assignment, so either
// is what an upstream filter would block.
const (
	Bits4 = 24
	Bits6 = 48
)

// Key is a source prefix, /24 for IPv4 and /48 for IPv6, packed into one
// word: the family in the top byte, the prefix's bytes in the low ones. It
// is comparable and allocation-free; the zero Key is no prefix.
type Key struct{ v uint64 }

const (
	tag4 = 4 << 56
	tag6 = 6 << 56
)

// PrefixOf returns the key of a's prefix. An IPv4-mapped IPv6 address
// counts as the IPv4 address it maps, and a zone is ignored. The invalid
// Addr gives the zero Key, which the sketch does not count.
func PrefixOf(a netip.Addr) Key {
	if a.Is4() || a.Is4In6() {
		b := a.Unmap().As4()
		return Key{tag4 | uint64(b[0])<<16 | uint64(b[1])<<8 | uint64(b[2])}
	}
	if a.Is6() {
		b := a.As16()
		return Key{tag6 | uint64(b[0])<<40 | uint64(b[1])<<32 | uint64(b[2])<<24 |
			uint64(b[3])<<16 | uint64(b[4])<<8 | uint64(b[5])}
	}
	return Key{}
}

// IsValid reports whether k is a prefix, not the zero Key.
func (k Key) IsValid() bool { return k.v != 0 }

// Is4 reports whether k is an IPv4 /24.
func (k Key) Is4() bool { return k.v>>56 == 4 }

// Is6 reports whether k is an IPv6 /48.
func (k Key) Is6() bool { return k.v>>56 == 6 }

// Prefix returns k as a netip.Prefix (the zero Prefix for the zero Key).
func (k Key) Prefix() netip.Prefix {
	switch {
	case k.Is4():
		a := netip.AddrFrom4([4]byte{byte(k.v >> 16), byte(k.v >> 8), byte(k.v)})
		return netip.PrefixFrom(a, Bits4)
	case k.Is6():
		var b [16]byte
		for i := range 6 {
			b[i] = byte(k.v >> (40 - 8*i))
		}
		return netip.PrefixFrom(netip.AddrFrom16(b), Bits6)
	}
	return netip.Prefix{}
}

// String returns the prefix in CIDR notation, e.g. "198.51.100.0/24".
func (k Key) String() string { return k.Prefix().String() }

// MarshalText makes a Key log and encode as its CIDR notation; the zero
// Key is the empty string.
func (k Key) MarshalText() ([]byte, error) { return k.Prefix().MarshalText() }
