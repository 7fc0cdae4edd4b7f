package heavyhitter

import "math"

// spreadSample estimates how much of the traffic comes from prefixes seen
// once. It keeps every prefix whose hash falls in the sampled part of the
// hash space, exactly, and halves that part whenever the sample is full
// (Wegman's adaptive sampling; Flajolet, "On adaptive sampling", 1990).
// Whether a prefix is sampled depends on its hash alone, never on how
// much it sends, so the sampled prefixes are a uniform random 2^-level
// share of all prefixes seen, each with its exact history.
//
// A count-min sketch, the obvious alternative, cannot do this job: once
// the distinct prefixes outnumber its width every cell is taken, a new
// prefix no longer looks new, and under exactly the flood the figure is
// for (spoofed, evenly spread) it would report no spread at all.
type spreadSample struct {
	keys   []Key
	seen   []seen
	index  index
	seed   uint64
	level  uint   // prefixes sampled: those whose hash has level leading zeros
	single uint64 // weight of sampled prefixes seen once
}

// seen is one sampled prefix: its weight and whether it was seen more than
// once.
type seen struct {
	weight uint64
	more   bool
}

func newSpreadSample(size int, seed uint64) spreadSample {
	return spreadSample{
		keys:  make([]Key, 0, size),
		seen:  make([]seen, 0, size),
		index: newIndex(size, seed),
		// The sampling hash must not be the index's, whose low bits
		// choose slots: a sample would crowd into few of them.
		seed: mix(seed ^ 0x9e3779b97f4a7c15),
	}
}

func (s *spreadSample) sampled(k Key) bool {
	return s.level == 0 || mix(k.v^s.seed)>>(64-s.level) == 0
}

// add records one observation of k standing for n SYNs.
func (s *spreadSample) add(k Key, n uint64) {
	if !s.sampled(k) {
		return
	}
	slot, ok := s.index.find(s.keys, k)
	if ok {
		e := &s.seen[s.index.pos(slot)]
		if !e.more {
			e.more = true
			s.single -= e.weight
		}
		e.weight += n
		return
	}
	if len(s.keys) == cap(s.keys) {
		return // only at level 63, which a sample of 16 or more never reaches
	}
	s.index.set(slot, len(s.keys))
	s.keys = append(s.keys, k)
	s.seen = append(s.seen, seen{weight: n})
	s.single += n
	for len(s.keys) == cap(s.keys) && s.level < 63 {
		s.halve()
	}
}

// halve drops the prefixes outside the next, halved part of the hash
// space. It runs once each time the distinct prefixes double beyond the
// sample's size, so its O(size) cost is spread thin.
func (s *spreadSample) halve() {
	s.level++
	s.index.clear()
	s.single = 0
	kept := 0
	for i, k := range s.keys {
		if !s.sampled(k) {
			continue
		}
		s.keys[kept], s.seen[kept] = k, s.seen[i]
		slot, _ := s.index.find(s.keys[:kept], k)
		s.index.set(slot, kept)
		if !s.seen[kept].more {
			s.single += s.seen[kept].weight
		}
		kept++
	}
	s.keys, s.seen = s.keys[:kept], s.seen[:kept]
}

// scale is the inverse of the sampled share, 2^level.
func (s *spreadSample) scale() float64 { return math.Ldexp(1, int(s.level)) }

// spread estimates the share of total's weight from prefixes seen once.
func (s *spreadSample) spread(total uint64) float64 {
	if total == 0 {
		return 0
	}
	return min(1, float64(s.single)*s.scale()/float64(total))
}

// distinct estimates the number of distinct prefixes seen.
func (s *spreadSample) distinct() uint64 {
	return uint64(float64(len(s.keys)) * s.scale())
}

func (s *spreadSample) reset() {
	s.keys, s.seen = s.keys[:0], s.seen[:0]
	s.index.clear()
	s.level, s.single = 0, 0
}
