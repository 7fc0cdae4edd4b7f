package heavyhitter

import (
	"fmt"
	"net/netip"
)

// truth is what a sketch should have seen, counted exactly.
type truth struct {
	syns      map[Key]uint64
	obs       map[Key]uint64 // observations (ObserveN counts one)
	completed map[Key]uint64
	total     uint64
	done      uint64
}

func newTruth() *truth {
	return &truth{syns: map[Key]uint64{}, obs: map[Key]uint64{}, completed: map[Key]uint64{}}
}

func (t *truth) observe(a netip.Addr, n uint32) {
	k := PrefixOf(a)
	if !k.IsValid() || n == 0 {
		return
	}
	t.syns[k] += uint64(n)
	t.obs[k]++
	t.total += uint64(n)
}

func (t *truth) complete(a netip.Addr) {
	k := PrefixOf(a)
	if !k.IsValid() {
		return
	}
	t.completed[k]++
	t.done++
}

// spread is the exact share of SYNs from prefixes observed once.
func (t *truth) spread() float64 {
	if t.total == 0 {
		return 0
	}
	var single uint64
	for k, n := range t.obs {
		if n == 1 {
			single += t.syns[k]
		}
	}
	return float64(single) / float64(t.total)
}

// check verifies every bound the package documents, and the structures'
// own invariants, against the truth.
func check(s *Sketch, want *truth) error {
	s.mu.Lock()
	err := checkInternals(s, want)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	sum := s.Summary()
	all := s.Top(make([]Entry, cap(s.top.keys)+1))
	if sum.SYNs != want.total || sum.Completed != want.done {
		return fmt.Errorf("summary SYNs %d completed %d, want %d %d", sum.SYNs, sum.Completed, want.total, want.done)
	}
	var counted uint64
	for i, e := range all {
		counted += e.SYNs
		if i > 0 && byWeight(all[i-1], e) >= 0 {
			return fmt.Errorf("top out of order at %d: %+v before %+v", i, all[i-1], e)
		}
		n := want.syns[e.Prefix]
		if e.SYNs < n {
			return fmt.Errorf("%v: %d SYNs reported, %d sent: an underestimate", e.Prefix, e.SYNs, n)
		}
		if e.Err > e.SYNs || e.Guaranteed() > n {
			return fmt.Errorf("%v: %d SYNs, err %d, %d sent: the bound does not hold", e.Prefix, e.SYNs, e.Err, n)
		}
		if e.Err > sum.Floor {
			return fmt.Errorf("%v: err %d above the floor %d", e.Prefix, e.Err, sum.Floor)
		}
		if e.Completed > want.completed[e.Prefix] {
			return fmt.Errorf("%v: %d completed reported, %d happened", e.Prefix, e.Completed, want.completed[e.Prefix])
		}
	}
	// Every SYN lands in exactly one counter, so the counts add up to the
	// total, no more.
	if counted != want.total {
		return fmt.Errorf("counts add up to %d, total %d", counted, want.total)
	}
	m := uint64(cap(s.top.keys))
	if len(all) > int(m) {
		return fmt.Errorf("%d entries tracked, capacity %d", len(all), m)
	}
	if sum.Floor > want.total/m {
		return fmt.Errorf("floor %d above total/capacity %d", sum.Floor, want.total/m)
	}
	tracked := map[Key]bool{}
	for _, e := range all {
		tracked[e.Prefix] = true
	}
	for k, n := range want.syns {
		if n > sum.Floor && !tracked[k] {
			return fmt.Errorf("%v sent %d SYNs, above the floor %d, and is not tracked", k, n, sum.Floor)
		}
	}
	if sum.Spread < 0 || sum.Spread > 1 {
		return fmt.Errorf("spread %v", sum.Spread)
	}
	if sum.Exact {
		if got, exact := sum.Spread, want.spread(); got != exact {
			return fmt.Errorf("exact spread %v, want %v", got, exact)
		}
		if sum.Distinct != uint64(len(want.syns)) {
			return fmt.Errorf("exact distinct %d, want %d", sum.Distinct, len(want.syns))
		}
	}
	return nil
}

func checkInternals(s *Sketch, want *truth) error {
	t := &s.top
	if len(t.keys) != len(t.counts) || len(t.keys) != len(t.heap) {
		return fmt.Errorf("space-saving: %d keys, %d counts, %d in heap", len(t.keys), len(t.counts), len(t.heap))
	}
	for i, h := range t.heap {
		if int(t.counts[h.p].at) != i || h.syns != t.counts[h.p].syns {
			return fmt.Errorf("heap %d: %+v, counter says at %d syns %d", i, h, t.counts[h.p].at, t.counts[h.p].syns)
		}
		if i > 0 && t.heap[(i-1)/2].syns > h.syns {
			return fmt.Errorf("heap order broken at %d", i)
		}
	}
	if err := checkIndex(&t.index, t.keys); err != nil {
		return fmt.Errorf("space-saving: %w", err)
	}
	sp := &s.spread
	if err := checkIndex(&sp.index, sp.keys); err != nil {
		return fmt.Errorf("spread sample: %w", err)
	}
	// The sample holds exactly the sampled prefixes seen, each with its
	// whole history: a prefix sampled now was sampled at every lower level.
	var single uint64
	n := 0
	for k, obs := range want.obs {
		if !sp.sampled(k) {
			continue
		}
		n++
		slot, ok := sp.index.find(sp.keys, k)
		if !ok {
			return fmt.Errorf("spread sample lost %v at level %d", k, sp.level)
		}
		e := sp.seen[sp.index.pos(slot)]
		if e.weight != want.syns[k] || e.more != (obs > 1) {
			return fmt.Errorf("spread sample: %v weight %d more %v, want %d after %d observations", k, e.weight, e.more, want.syns[k], obs)
		}
		if obs == 1 {
			single += e.weight
		}
	}
	if n != len(sp.keys) || single != sp.single {
		return fmt.Errorf("spread sample: %d prefixes, single %d; want %d, %d", len(sp.keys), sp.single, n, single)
	}
	if len(sp.keys) >= cap(sp.keys) {
		return fmt.Errorf("spread sample full: %d", len(sp.keys))
	}
	return nil
}

// checkIndex verifies that the index holds every position once and finds
// every key.
func checkIndex(x *index, keys []Key) error {
	used := 0
	for _, p := range x.slots {
		if p != 0 {
			used++
		}
	}
	if used != len(keys) {
		return fmt.Errorf("index holds %d positions, %d keys", used, len(keys))
	}
	for p, k := range keys {
		slot, ok := x.find(keys, k)
		if !ok || x.pos(slot) != p {
			return fmt.Errorf("index: key %v at %d not found (%v, %d)", k, p, ok, x.pos(slot))
		}
	}
	return nil
}
