package heavyhitter

import (
	"cmp"
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

func newSketch(t testing.TB, cfg Config) *Sketch {
	t.Helper()
	if cfg.Seed == 0 {
		cfg.Seed = 42
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func addr4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }

func prefix(s string) Key { return PrefixOf(netip.MustParsePrefix(s).Addr()) }

func TestNewConfig(t *testing.T) {
	tests := []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{Capacity: 1, SampleSize: MinSampleSize}, true},
		{Config{Capacity: MaxCapacity, SampleSize: MaxSampleSize}, true},
		{Config{Capacity: -1}, false},
		{Config{Capacity: MaxCapacity + 1}, false},
		{Config{SampleSize: MinSampleSize - 1}, false},
		{Config{SampleSize: MaxSampleSize + 1}, false},
	}
	for _, tt := range tests {
		s, err := New(tt.cfg)
		if tt.ok != (err == nil) || (err == nil) != (s != nil) {
			t.Errorf("New(%+v) = %v, %v", tt.cfg, s, err)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v): %v is not ErrConfig", tt.cfg, err)
		}
	}
}

// TestExactBelowCapacity: with no more prefixes than counters, every count
// is exact, and Top orders and cuts as documented.
func TestExactBelowCapacity(t *testing.T) {
	s := newSketch(t, Config{Capacity: 4})
	feed := []struct {
		src       string
		syns      int
		completed int
	}{
		{"198.51.100.1", 5, 0},
		{"198.51.100.200", 2, 3}, // same /24 as above
		{"203.0.113.9", 4, 4},
		{"2001:db8:1::1", 3, 0},
		{"2001:db8:1:ffff::2", 1, 1}, // same /48
		{"192.0.2.1", 1, 0},
	}
	for _, f := range feed {
		a := netip.MustParseAddr(f.src)
		for range f.syns {
			s.Observe(a)
		}
		for range f.completed {
			s.Complete(a)
		}
	}
	want := []Entry{
		{Prefix: prefix("198.51.100.0/24"), SYNs: 7, Completed: 3},
		{Prefix: prefix("2001:db8:1::/48"), SYNs: 4, Completed: 1},
		{Prefix: prefix("203.0.113.0/24"), SYNs: 4, Completed: 4},
		{Prefix: prefix("192.0.2.0/24"), SYNs: 1},
	}
	// Ties go by key, and an IPv4 key sorts before an IPv6 one.
	want[1], want[2] = want[2], want[1]
	for _, n := range []int{0, 1, 2, 3, 4, 10} {
		got := s.Top(make([]Entry, n))
		if w := want[:min(n, len(want))]; !slices.Equal(got, w) {
			t.Errorf("Top(%d):\n got %+v\nwant %+v", n, got, w)
		}
	}
	sum := s.Summary()
	wantSum := Summary{SYNs: 16, Completed: 8, Spread: 1.0 / 16, Distinct: 4, Exact: true, Floor: 1}
	if sum != wantSum {
		t.Errorf("Summary() = %+v, want %+v", sum, wantSum)
	}

	s.Reset()
	if got := s.Top(make([]Entry, 10)); len(got) != 0 {
		t.Errorf("after Reset, Top = %+v", got)
	}
	if got := s.Summary(); got != (Summary{Exact: true}) {
		t.Errorf("after Reset, Summary = %+v", got)
	}
}

// TestTakeover: a prefix taking over the smallest counter inherits its
// count as error, but not its completions.
func TestTakeover(t *testing.T) {
	s := newSketch(t, Config{Capacity: 2})
	a, b, c := addr4(192, 0, 2, 1), addr4(198, 51, 100, 1), addr4(203, 0, 113, 1)
	s.ObserveN(a, 3)
	s.ObserveN(b, 2)
	s.Complete(b)
	s.Complete(b)
	s.Observe(c)  // takes over b's counter
	s.Complete(b) // b is not tracked any more
	s.Complete(c)
	want := []Entry{
		{Prefix: PrefixOf(a), SYNs: 3},
		{Prefix: PrefixOf(c), SYNs: 3, Err: 2, Completed: 1},
	}
	if got := s.Top(make([]Entry, 3)); !slices.Equal(got, want) {
		t.Fatalf("Top:\n got %+v\nwant %+v", got, want)
	}
	if sum := s.Summary(); sum.Completed != 4 || sum.Floor != 3 {
		t.Fatalf("Summary() = %+v, want 4 completed, floor 3", sum)
	}
}

// TestNothingCounted: the invalid address, the zero key and a zero weight
// leave the sketch as it was.
func TestNothingCounted(t *testing.T) {
	s := newSketch(t, Config{})
	s.Observe(netip.Addr{})
	s.ObserveN(addr4(198, 51, 100, 1), 0)
	s.ObserveKey(Key{}, 5)
	s.ObserveKeys([]Key{{}, {}})
	s.Complete(netip.Addr{})
	if got := s.Summary(); got != (Summary{Exact: true}) {
		t.Fatalf("Summary() = %+v", got)
	}
}

// TestCompletedStandsApart: a prefix whose handshakes complete and one
// whose never do are told apart among the heavy hitters, while a spoofed
// flood churns the other counters.
func TestCompletedStandsApart(t *testing.T) {
	s := newSketch(t, Config{Capacity: 16})
	want := newTruth()
	r := rand.New(rand.NewPCG(7, 7))
	nat, bots := addr4(198, 51, 100, 10), addr4(203, 0, 113, 66)
	for i := range 50_000 {
		var a netip.Addr
		switch i % 4 {
		case 0:
			a = nat
		case 1:
			a = bots
		default:
			a = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), 1})
		}
		s.Observe(a)
		want.observe(a, 1)
		if a == nat && i%8 == 0 {
			s.Complete(a)
			want.complete(a)
		}
	}
	if err := check(s, want); err != nil {
		t.Fatal(err)
	}
	top := s.Top(make([]Entry, 2))
	got := map[Key]Entry{top[0].Prefix: top[0], top[1].Prefix: top[1]}
	if e := got[PrefixOf(nat)]; e.Completed != want.completed[e.Prefix] || e.Completed == 0 {
		t.Errorf("the completing prefix: %+v, want %d completed", e, want.completed[PrefixOf(nat)])
	}
	if e := got[PrefixOf(bots)]; e.SYNs == 0 || e.Completed != 0 {
		t.Errorf("the never-completing prefix: %+v", e)
	}
}

// TestWeighted: ObserveN counts n SYNs and one observation.
func TestWeighted(t *testing.T) {
	s := newSketch(t, Config{Capacity: 2})
	want := newTruth()
	feed := []struct {
		a netip.Addr
		n uint32
	}{
		{addr4(198, 51, 100, 1), 64}, {addr4(198, 51, 100, 2), 64}, {addr4(203, 0, 113, 1), 64},
		{addr4(192, 0, 2, 1), 1}, {addr4(198, 18, 0, 1), math.MaxUint32},
	}
	for _, f := range feed {
		s.ObserveN(f.a, f.n)
		want.observe(f.a, f.n)
	}
	if err := check(s, want); err != nil {
		t.Fatal(err)
	}
	sum := s.Summary()
	// 198.51.100/24 was observed twice: every other SYN came in a single
	// observation.
	if wantSpread := 1 - 128/float64(want.total); sum.Spread != wantSpread {
		t.Errorf("spread %v, want %v", sum.Spread, wantSpread)
	}
}

func TestObserveKeys(t *testing.T) {
	a, b := newSketch(t, Config{}), newSketch(t, Config{})
	keys := []Key{prefix("192.0.2.0/24"), {}, prefix("2001:db8::/48"), prefix("192.0.2.0/24")}
	a.ObserveKeys(keys)
	for _, k := range keys {
		b.ObserveKey(k, 1)
	}
	ta, tb := a.Top(make([]Entry, 10)), b.Top(make([]Entry, 10))
	if !slices.Equal(ta, tb) || a.Summary() != b.Summary() || len(ta) != 2 {
		t.Fatalf("ObserveKeys: %+v %+v; one at a time: %+v %+v", ta, a.Summary(), tb, b.Summary())
	}
}

// zipfStream draws n SYNs: half from ten heavy prefixes with Zipf weights,
// half from a long Zipf tail over a million prefixes whose head is
// flattened, so even the tail's heaviest are far below the heavy ten.
func zipfStream(seed uint64, n int) ([]netip.Addr, []Key) {
	r := rand.New(rand.NewPCG(seed, 1))
	heavyZipf := rand.NewZipf(r, 1.1, 1, 9)
	tailZipf := rand.NewZipf(r, 1.2, 100, 1<<20)
	heavy := make([]Key, 10)
	out := make([]netip.Addr, n)
	for i := range heavy {
		heavy[i] = PrefixOf(addr4(198, 18, byte(i), 0))
	}
	for i := range out {
		if r.IntN(2) == 0 {
			out[i] = addr4(198, 18, byte(heavyZipf.Uint64()), byte(r.Uint32()))
		} else {
			// Tail ranks map to scattered /24s outside 198.18.0.0/24-198.18.9.0/24.
			v := uint32(mix(tailZipf.Uint64()+1000)) | 1<<31
			out[i] = addr4(byte(v>>24), byte(v>>16), byte(v>>8), byte(r.Uint32()))
		}
	}
	return out, heavy
}

// TestZipfTopK: for several streams, the true ten heaviest prefixes are
// exactly the ten reported, and every documented bound holds.
func TestZipfTopK(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		stream, heavy := zipfStream(seed, 200_000)
		s := newSketch(t, Config{Capacity: 64, Seed: seed})
		want := newTruth()
		for i, a := range stream {
			s.Observe(a)
			want.observe(a, 1)
			if i%5000 == 0 {
				if err := check(s, want); err != nil {
					t.Fatalf("seed %d after %d SYNs: %v", seed, i+1, err)
				}
			}
		}
		if err := check(s, want); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		// The ten are certainly on top if the lightest of them outweighs
		// the heaviest other prefix by more than any counter's error.
		// Check the stream gives that margin; otherwise the test proves
		// nothing.
		var lightest, rest uint64 = math.MaxUint64, 0
		for k, n := range want.syns {
			if slices.Contains(heavy, k) {
				lightest = min(lightest, n)
			} else {
				rest = max(rest, n)
			}
		}
		floor := s.Summary().Floor
		if lightest <= rest+floor {
			t.Fatalf("seed %d: stream leaves no margin: lightest heavy %d, heaviest other %d, floor %d", seed, lightest, rest, floor)
		}
		var got []Key
		for _, e := range s.Top(make([]Entry, 10)) {
			got = append(got, e.Prefix)
		}
		slices.SortFunc(got, func(a, b Key) int { return cmp.Compare(a.v, b.v) })
		if !slices.Equal(got, heavy) {
			t.Errorf("seed %d: top 10 %v, want %v", seed, got, heavy)
		}
	}
}

func randomAddr(r *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
}

// TestSpread: a spoofed flood reads near 1, a concentrated one near 0, and
// mixes near their true share of single-seen prefixes, within the
// sample's error.
func TestSpread(t *testing.T) {
	tests := []struct {
		name   string
		single float64 // share of SYNs from fresh random sources
		v6     bool
		lo, hi float64 // the bounds on the estimate
	}{
		{"spoofed IPv4", 1, false, 0.8, 1},
		{"spoofed IPv6", 1, true, 0.8, 1},
		{"concentrated", 0, false, 0, 0},
		{"mostly concentrated", 0.1, false, 0.05, 0.2},
		{"half", 0.5, true, 0.35, 0.65},
		{"mostly spoofed", 0.9, false, 0.75, 1},
	}
	for _, tt := range tests {
		for seed := uint64(1); seed <= 3; seed++ {
			r := rand.New(rand.NewPCG(seed, 2))
			s := newSketch(t, Config{Seed: seed})
			want := newTruth()
			for range 100_000 {
				a := addr4(198, 18, byte(r.IntN(20)), byte(r.Uint32()))
				if r.Float64() < tt.single {
					a = randomAddr(r, tt.v6)
				}
				s.Observe(a)
				want.observe(a, 1)
			}
			if err := check(s, want); err != nil {
				t.Fatalf("%s, seed %d: %v", tt.name, seed, err)
			}
			sum := s.Summary()
			exact := want.spread()
			// Some 700 sampled prefixes give a standard error near 4%:
			// allow well over three of them.
			if sum.Spread < tt.lo || sum.Spread > tt.hi || math.Abs(sum.Spread-exact) > 0.15*exact {
				t.Errorf("%s, seed %d: spread %.3f (exact %.3f, level %d), want %.2f..%.2f", tt.name, seed, sum.Spread, exact, s.spread.level, tt.lo, tt.hi)
			}
			t.Logf("%s, seed %d: spread %.3f, exact %.3f; distinct %d, exact %d", tt.name, seed, sum.Spread, exact, sum.Distinct, len(want.syns))
			if d, n := float64(sum.Distinct), float64(len(want.syns)); math.Abs(d-n) > 0.15*n {
				t.Errorf("%s, seed %d: distinct %v, exactly %v", tt.name, seed, d, n)
			}
		}
	}
}

// TestConcurrent: writers observing and completing while a reader takes
// snapshots lose nothing (run it with -race).
func TestConcurrent(t *testing.T) {
	s := newSketch(t, Config{Capacity: 16, SampleSize: 64})
	const writers, each = 4, 20_000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var reads int
	wg.Go(func() {
		var buf [10]Entry
		for {
			select {
			case <-stop:
				return
			default:
			}
			top := s.Top(buf[:])
			sum := s.Summary()
			var n uint64
			for _, e := range top {
				n += e.SYNs
			}
			if n > sum.SYNs {
				t.Errorf("snapshot counts %d above total %d", n, sum.SYNs)
			}
			reads++
		}
	})
	var writing sync.WaitGroup
	for w := range writers {
		writing.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 3))
			keys := make([]Key, 0, 64)
			for i := range each {
				a := randomAddr(r, i%2 == 0)
				switch i % 3 {
				case 0:
					s.Observe(a)
				case 1:
					s.ObserveN(a, 1)
				default:
					if keys = append(keys, PrefixOf(a)); len(keys) == cap(keys) {
						s.ObserveKeys(keys)
						keys = keys[:0]
					}
				}
				s.Complete(a)
			}
			s.ObserveKeys(keys)
		})
	}
	writing.Wait()
	close(stop)
	wg.Wait()
	if sum := s.Summary(); sum.SYNs != writers*each || sum.Completed != writers*each {
		t.Fatalf("after %d reads: %+v, want %d SYNs and completions", reads, sum, writers*each)
	}
}

// TestAllocs: nothing on the packet path or the reader's allocates.
func TestAllocs(t *testing.T) {
	s := newSketch(t, Config{Capacity: 8, SampleSize: 16})
	r := rand.New(rand.NewPCG(1, 1))
	addrs := make([]netip.Addr, 4096)
	keys := make([]Key, len(addrs))
	for i := range addrs {
		addrs[i] = randomAddr(r, i%3 == 0)
		keys[i] = PrefixOf(addrs[i])
	}
	var buf [10]Entry
	i := 0
	ops := map[string]func(){
		"Observe":     func() { s.Observe(addrs[i%len(addrs)]); i++ },
		"ObserveN":    func() { s.ObserveN(addrs[i%len(addrs)], 64); i++ },
		"ObserveKeys": func() { s.ObserveKeys(keys[:64]) },
		"Complete":    func() { s.Complete(addrs[i%len(addrs)]); i++ },
		"Top":         func() { s.Top(buf[:]) },
		"Summary":     func() { s.Summary() },
		"Reset":       func() { s.Reset() },
	}
	for name, op := range ops {
		if n := testing.AllocsPerRun(1000, op); n != 0 {
			t.Errorf("%s: %v allocations", name, n)
		}
	}
}
