package heavyhitter

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
)

// Defaults and bounds of Config.
const (
	DefaultCapacity   = 64
	DefaultSampleSize = 1024
	MaxCapacity       = 1 << 16
	MinSampleSize     = 16
	MaxSampleSize     = 1 << 20
)

// Config sizes a Sketch. The zero Config takes the defaults.
type Config struct {
	// Capacity is the number of prefixes tracked, m (DefaultCapacity).
	// Any prefix that sent more than 1/m of the SYNs is tracked; a top 10
	// is solid with m of 5 to 10 times 10.
	Capacity int
	// SampleSize is the number of prefixes the spread estimate keeps
	// (DefaultSampleSize). Its relative error is about 1/sqrt(SampleSize/2)
	// once a flood has more distinct prefixes than this.
	SampleSize int
	// Seed keys the sketch's hashes; 0 picks a random one. Set it only
	// to make a test repeat.
	Seed uint64
}

func (c Config) withDefaults() (Config, error) {
	if c.Capacity == 0 {
		c.Capacity = DefaultCapacity
	}
	if c.SampleSize == 0 {
		c.SampleSize = DefaultSampleSize
	}
	if c.Capacity < 1 || c.Capacity > MaxCapacity {
		return c, fmt.Errorf("capacity %d out of range 1..%d", c.Capacity, MaxCapacity)
	}
	if c.SampleSize < MinSampleSize || c.SampleSize > MaxSampleSize {
		return c, fmt.Errorf("sample size %d out of range %d..%d", c.SampleSize, MinSampleSize, MaxSampleSize)
	}
	for c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	return c, nil
}

// Entry is one tracked prefix.
type Entry struct {
	Prefix Key
	// SYNs is at least the prefix's true SYN count, and SYNs-Err at most:
	// Err is what the prefix may have been credited for SYNs of prefixes
	// it displaced.
	SYNs uint64
	Err  uint64
	// Completed counts the prefix's handshakes that completed while it
	// was tracked: never more than the truth, and equal to it for a
	// prefix tracked since before its first SYN.
	Completed uint64
}

// Guaranteed returns the SYNs the prefix certainly sent, SYNs-Err.
func (e Entry) Guaranteed() uint64 { return e.SYNs - e.Err }

// Summary describes all the traffic a Sketch has seen since its last Reset.
type Summary struct {
	SYNs      uint64 // all SYNs, exact (weights included)
	Completed uint64 // all completed handshakes, exact
	// Spread estimates the share of SYNs from prefixes seen in one
	// observation only: near 1 for a spoofed flood spread evenly, near 0
	// for one from a few prefixes. Exact while Exact is true.
	Spread float64
	// Distinct estimates the number of distinct prefixes seen, exact
	// while Exact is true.
	Distinct uint64
	// Exact reports that every prefix seen is still in the spread sample,
	// so Spread and Distinct are exact counts, not estimates.
	Exact bool
	// Floor is the smallest tracked SYN count once all counters are in
	// use (else 0): every prefix with more SYNs than Floor is in Top, and
	// no entry's Err exceeds it. Floor is at most SYNs/Capacity.
	Floor uint64
}

// A Sketch counts SYNs and completed handshakes by source prefix for one
// service, in memory fixed at New whatever the traffic. Its methods are
// safe for concurrent use and allocate nothing.
type Sketch struct {
	mu        sync.Mutex
	top       spaceSaving
	spread    spreadSample
	syns      uint64
	completed uint64
}

// ErrConfig is wrapped by New's errors.
var ErrConfig = errors.New("heavyhitter: bad config")

// New returns an empty Sketch sized by cfg.
func New(cfg Config) (*Sketch, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return &Sketch{
		top:    newSpaceSaving(cfg.Capacity, cfg.Seed),
		spread: newSpreadSample(cfg.SampleSize, cfg.Seed),
	}, nil
}

// Observe counts one SYN from src.
func (s *Sketch) Observe(src netip.Addr) { s.ObserveKey(PrefixOf(src), 1) }

// ObserveN counts one observation of src standing for n SYNs, as a sampled
// fast path reports them: a source seen in 1 of every n SYNs is
// ObserveN(src, n). Counts and totals grow by n; the spread counts the
// observation, so with sampled input "seen once" means seen once in the
// sample.
func (s *Sketch) ObserveN(src netip.Addr, n uint32) { s.ObserveKey(PrefixOf(src), n) }

// ObserveKey is ObserveN for a prefix already keyed. The zero Key and
// n == 0 count nothing.
func (s *Sketch) ObserveKey(k Key, n uint32) {
	if !k.IsValid() || n == 0 {
		return
	}
	s.mu.Lock()
	s.add(k, uint64(n))
	s.mu.Unlock()
}

// ObserveKeys counts one SYN for each key under one lock: the way to feed a
// batch. Zero keys are skipped.
func (s *Sketch) ObserveKeys(keys []Key) {
	s.mu.Lock()
	for _, k := range keys {
		if k.IsValid() {
			s.add(k, 1)
		}
	}
	s.mu.Unlock()
}

func (s *Sketch) add(k Key, n uint64) {
	s.syns += n
	s.top.add(k, n)
	s.spread.add(k, n)
}

// Complete counts a completed handshake from src. The total always grows;
// src's entry only if its prefix is tracked.
func (s *Sketch) Complete(src netip.Addr) {
	k := PrefixOf(src)
	if !k.IsValid() {
		return
	}
	s.mu.Lock()
	s.completed++
	s.top.complete(k)
	s.mu.Unlock()
}

// Top fills dst with the heaviest tracked prefixes, most SYNs first (ties
// by prefix, so the order is stable), and returns the filled part: at most
// len(dst) entries, fewer if fewer prefixes are tracked.
//
//	var buf [10]heavyhitter.Entry
//	top := s.Top(buf[:])
func (s *Sketch) Top(dst []Entry) []Entry {
	if len(dst) == 0 {
		return dst
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &s.top
	if len(dst) >= len(t.keys) {
		dst = dst[:len(t.keys)]
		for p, k := range t.keys {
			dst[p] = t.entry(p, k)
		}
		slices.SortFunc(dst, byWeight)
		return dst
	}
	// Fewer wanted than tracked: keep the heaviest len(dst) by insertion
	// into the sorted prefix of dst; k and m are small.
	n := 0
	for p, k := range t.keys {
		e := t.entry(p, k)
		i := n
		if i == len(dst) {
			if byWeight(e, dst[i-1]) >= 0 {
				continue
			}
			i--
		} else {
			n++
		}
		for i > 0 && byWeight(e, dst[i-1]) < 0 {
			dst[i] = dst[i-1]
			i--
		}
		dst[i] = e
	}
	return dst[:n]
}

func (t *spaceSaving) entry(p int, k Key) Entry {
	c := &t.counts[p]
	return Entry{Prefix: k, SYNs: c.syns, Err: c.err, Completed: c.completed}
}

// byWeight orders entries by SYNs descending, then by prefix.
func byWeight(a, b Entry) int {
	if c := cmp.Compare(b.SYNs, a.SYNs); c != 0 {
		return c
	}
	return cmp.Compare(a.Prefix.v, b.Prefix.v)
}

// Summary returns the totals and the spread. Read after Top, its totals
// cover at least the traffic Top's entries count.
func (s *Sketch) Summary() Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Summary{
		SYNs:      s.syns,
		Completed: s.completed,
		Spread:    s.spread.spread(s.syns),
		Distinct:  s.spread.distinct(),
		Exact:     s.spread.level == 0,
		Floor:     s.top.floor(),
	}
}

// Reset forgets everything, for a new attack. Memory is kept.
func (s *Sketch) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.top.reset()
	s.spread.reset()
	s.syns, s.completed = 0, 0
}
