package heavyhitter

import (
	"net/netip"
	"testing"
)

// FuzzSketch reads a byte stream as operations on a small sketch (4
// counters, a sample of 16, so eviction and halving happen all the time)
// with addresses taken from the stream, and checks every documented bound
// and internal invariant against exact counts after each operation.
func FuzzSketch(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 0, 2, 3, 1, 6, 198, 51, 100, 7, 2, 9, 200})
	f.Add([]byte{1, 198, 51, 100, 7, 1, 198, 51, 100, 8, 4, 1, 2, 3, 3, 5, 7, 9})
	f.Add(append([]byte{2}, netip.MustParseAddr("2001:db8::1").AsSlice()...))
	f.Add([]byte{0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 0, 9, 0, 10, 0, 11, 0, 12, 0, 13, 0, 14, 0, 15, 0, 16, 0, 17, 6, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		s, err := New(Config{Capacity: 4, SampleSize: MinSampleSize, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		want := newTruth()
		take := func(n int) []byte {
			n = min(n, len(ops))
			b := ops[:n]
			ops = ops[n:]
			return b
		}
		// small draws from a universe of 32 /24s, so prefixes repeat.
		small := func() netip.Addr {
			b := take(1)
			if len(b) == 0 {
				return netip.Addr{}
			}
			return addr4(198, 51, b[0]%32, 1)
		}
		for len(ops) > 0 {
			switch op := take(1)[0]; op % 8 {
			case 0:
				a := small()
				s.Observe(a)
				want.observe(a, 1)
			case 1:
				a, _ := netip.AddrFromSlice(take(4))
				s.Observe(a)
				want.observe(a, 1)
			case 2:
				a, _ := netip.AddrFromSlice(take(16))
				s.Observe(a)
				want.observe(a, 1)
			case 3:
				a := small()
				var n uint32
				if b := take(1); len(b) == 1 {
					n = uint32(b[0]) << (op >> 5) // up to 2^7 times a byte
				}
				s.ObserveN(a, n)
				want.observe(a, n)
			case 4:
				var keys [4]Key
				for i := range keys {
					a := small()
					keys[i] = PrefixOf(a)
					want.observe(a, 1)
				}
				s.ObserveKeys(keys[:])
			case 5, 7:
				a := small()
				s.Complete(a)
				want.complete(a)
			case 6:
				s.Reset()
				want = newTruth()
			}
			if err := check(s, want); err != nil {
				t.Fatal(err)
			}
		}
	})
}
