package heavyhitter

import (
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"
)

// benchAddrs is a flood as the sketch meets it: a share spoofed evenly
// over IPv4, the rest from ten heavy /24s.
func benchAddrs(spoofed float64) []netip.Addr {
	r := rand.New(rand.NewPCG(1, 2))
	addrs := make([]netip.Addr, 1<<16)
	for i := range addrs {
		if r.Float64() >= spoofed {
			addrs[i] = netip.AddrFrom4([4]byte{198, 18, byte(r.IntN(10)), byte(r.IntN(256))})
		} else {
			addrs[i] = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		}
	}
	return addrs
}

func newBenchSketch(b *testing.B) *Sketch {
	s, err := New(Config{Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkObserve is one writer's cost per SYN, for floods from ten
// prefixes, spoofed ones (every SYN displaces a counter), and half and half.
func BenchmarkObserve(b *testing.B) {
	for _, bc := range []struct {
		name    string
		spoofed float64
	}{{"concentrated", 0}, {"half", 0.5}, {"spoofed", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			addrs := benchAddrs(bc.spoofed)
			s := newBenchSketch(b)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				s.Observe(addrs[i&(len(addrs)-1)])
			}
		})
	}
}

// BenchmarkObserveParallel is the cost per SYN with every writer locking
// the one sketch for each SYN.
func BenchmarkObserveParallel(b *testing.B) {
	addrs := benchAddrs(0.5)
	s := newBenchSketch(b)
	var seq atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seq.Add(1) * 7919)
		for pb.Next() {
			s.Observe(addrs[i&(len(addrs)-1)])
			i++
		}
	})
}

// BenchmarkObserveKeysParallel is the cost per SYN with every writer
// handing over batches of 64, as a queue worker's receive batch would.
func BenchmarkObserveKeysParallel(b *testing.B) {
	addrs := benchAddrs(0.5)
	s := newBenchSketch(b)
	var seq atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(seq.Add(1) * 7919)
		var keys [64]Key
		n := 0
		for pb.Next() {
			keys[n] = PrefixOf(addrs[i&(len(addrs)-1)])
			i++
			if n++; n == len(keys) {
				s.ObserveKeys(keys[:])
				n = 0
			}
		}
		s.ObserveKeys(keys[:n])
	})
}

// BenchmarkObserveOwnSketch is the floor the other two are held against:
// every writer its own sketch, no sharing at all.
func BenchmarkObserveOwnSketch(b *testing.B) {
	addrs := benchAddrs(0.5)
	var seq atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		s, _ := New(Config{Seed: 1})
		i := int(seq.Add(1) * 7919)
		for pb.Next() {
			s.Observe(addrs[i&(len(addrs)-1)])
			i++
		}
	})
}

// BenchmarkTop is the once-a-second reader's cost for a top 10.
func BenchmarkTop(b *testing.B) {
	addrs := benchAddrs(0.5)
	s := newBenchSketch(b)
	for _, a := range addrs {
		s.Observe(a)
	}
	var buf [10]Entry
	b.ReportAllocs()
	for b.Loop() {
		s.Top(buf[:])
		s.Summary()
	}
}

// BenchmarkNew reports, as B/op, all the memory a sketch with the default
// config will ever hold.
func BenchmarkNew(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(Config{}); err != nil {
			b.Fatal(err)
		}
	}
}
