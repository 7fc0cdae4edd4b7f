package heavyhitter

import (
	"net/netip"
	"testing"
)

func TestPrefixOf(t *testing.T) {
	tests := []struct {
		addr string
		want string // "" for no prefix
	}{
		{"198.51.100.7", "198.51.100.0/24"},
		{"203.0.113.255", "203.0.113.0/24"},
		{"0.0.0.0", "0.0.0.0/24"},
		{"255.255.255.255", "255.255.255.0/24"},
		{"::ffff:198.51.100.7", "198.51.100.0/24"},
		{"2001:db8:1234:5678::1", "2001:db8:1234::/48"},
		{"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8:ffff::/48"},
		{"fe80::1%eth0", "fe80::/48"},
		{"::", "::/48"},
		{"", ""},
	}
	for _, tt := range tests {
		var a netip.Addr
		if tt.addr != "" {
			a = netip.MustParseAddr(tt.addr)
		}
		k := PrefixOf(a)
		if k.IsValid() != (tt.want != "") {
			t.Errorf("PrefixOf(%v).IsValid() = %v", a, k.IsValid())
			continue
		}
		if tt.want == "" {
			if k != (Key{}) || k.Prefix() != (netip.Prefix{}) {
				t.Errorf("PrefixOf(%v) = %v, want the zero Key", a, k)
			}
			continue
		}
		if got := k.String(); got != tt.want {
			t.Errorf("PrefixOf(%v) = %s, want %s", a, got, tt.want)
		}
		text, err := k.MarshalText()
		if err != nil || string(text) != tt.want {
			t.Errorf("PrefixOf(%v).MarshalText() = %q, %v, want %q", a, text, err, tt.want)
		}
		if k.Is4() == k.Is6() {
			t.Errorf("PrefixOf(%v): Is4 %v, Is6 %v", a, k.Is4(), k.Is6())
		}
	}
}

// TestKeyDistinguishesFamilies checks that an IPv4 /24 and the IPv6 /48
// with the same leading bytes are different keys.
func TestKeyDistinguishesFamilies(t *testing.T) {
	v4 := PrefixOf(netip.MustParseAddr("32.1.13.1"))
	v6 := PrefixOf(netip.MustParseAddr("2001:d00::1"))
	if v4 == v6 {
		t.Fatalf("%v and %v share a key", v4, v6)
	}
}

// FuzzPrefixOf checks for any address that its key's prefix is the
// address's own /24 or /48, and that equal prefixes give equal keys.
func FuzzPrefixOf(f *testing.F) {
	f.Add([]byte{198, 51, 100, 7}, []byte{198, 51, 100, 200})
	f.Add(netip.MustParseAddr("2001:db8::1").AsSlice(), netip.MustParseAddr("2001:db8:0:1::1").AsSlice())
	f.Add(netip.MustParseAddr("::ffff:198.51.100.7").AsSlice(), []byte{198, 51, 100, 8})
	f.Fuzz(func(t *testing.T, ab, bb []byte) {
		a, _ := netip.AddrFromSlice(ab)
		b, _ := netip.AddrFromSlice(bb)
		ka, kb := PrefixOf(a), PrefixOf(b)
		if !a.IsValid() {
			if ka.IsValid() {
				t.Fatalf("invalid address gave key %v", ka)
			}
			return
		}
		p := ka.Prefix()
		if !p.IsValid() || !p.Contains(a.Unmap()) || p != p.Masked() {
			t.Fatalf("PrefixOf(%v) = %v", a, p)
		}
		if b.IsValid() {
			bits := Bits6
			if b.Unmap().Is4() {
				bits = Bits4
			}
			pb, _ := b.Unmap().Prefix(bits)
			if (pb == p) != (ka == kb) {
				t.Fatalf("%v -> %v (%v), %v -> %v (%v)", a, p, ka, b, pb, kb)
			}
		}
	})
}
