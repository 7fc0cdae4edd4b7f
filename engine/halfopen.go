package engine

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"
	"time"
)

// halfOpenTable counts a service's half-open connections: SYNs let through
// to the backend whose handshake has not completed, younger than the
// handshake timeout. It is a fixed array of slots, so a flood cannot grow
// it; past its capacity new SYNs replace the oldest of their neighbours,
// and the count saturates near the capacity, far above any watermark.
//
// Each slot is one atomic word: a 40-bit tag of the flow's keyed hash and
// a 24-bit timestamp in ticks since the table was made. Workers insert and
// complete with compare-and-swap, so queues never wait for each other.
type halfOpenTable struct {
	slots   []atomic.Uint64
	mask    uint64
	seed    uint64
	start   time.Time
	timeout atomic.Uint64 // in ticks; a reload may change it
}

const (
	halfOpenTick  = 10 * time.Millisecond
	tickBits      = 24
	tickMask      = 1<<tickBits - 1
	halfOpenProbe = 8 // slots examined per operation
	// DefaultHalfOpenSlots is the capacity of each service's table.
	DefaultHalfOpenSlots = 1 << 14
)

func newHalfOpenTable(slots int, timeout time.Duration, start time.Time) *halfOpenTable {
	n := 1
	for n < slots {
		n <<= 1
	}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	t := &halfOpenTable{
		slots: make([]atomic.Uint64, n),
		mask:  uint64(n - 1),
		seed:  binary.LittleEndian.Uint64(seed[:]),
		start: start,
	}
	t.setTimeout(timeout)
	return t
}

// setTimeout sets how long an entry counts as half-open.
func (t *halfOpenTable) setTimeout(d time.Duration) {
	t.timeout.Store(uint64(max(d/halfOpenTick, 1)))
}

// mix is the splitmix64 finaliser.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// hash is keyed with a random seed so that nobody outside can aim SYNs at
// one group of slots.
func (t *halfOpenTable) hash(k flowKey) uint64 {
	c, s := k.client.Addr().As16(), k.server.Addr().As16()
	h := t.seed
	h = mix(h ^ binary.LittleEndian.Uint64(c[:8]))
	h = mix(h ^ binary.LittleEndian.Uint64(c[8:]))
	h = mix(h ^ binary.LittleEndian.Uint64(s[:8]))
	h = mix(h ^ binary.LittleEndian.Uint64(s[8:]))
	return mix(h ^ uint64(k.client.Port())<<16 ^ uint64(k.server.Port()))
}

func (t *halfOpenTable) tick(now time.Time) uint64 {
	return uint64(now.Sub(t.start)/halfOpenTick) & tickMask
}

// live reports whether slot word v holds an entry younger than the timeout.
func (t *halfOpenTable) live(v, now uint64) bool {
	return v != 0 && (now-v)&tickMask < t.timeout.Load()
}

// tagOf returns the 40-bit tag of hash h, never 0 (0 marks an empty slot).
func tagOf(h uint64) uint64 {
	tag := h >> tickBits
	if tag == 0 {
		tag = 1
	}
	return tag << tickBits
}

// add records a SYN let through. It reports whether the flow is new: a
// retransmitted SYN keeps its first timestamp and is not counted again.
// evicted reports that a live entry had to make room.
func (t *halfOpenTable) add(k flowKey, now time.Time) (added, evicted bool) {
	h := t.hash(k)
	tag, tk := tagOf(h), t.tick(now)
	word := tag | tk // never 0: tags are never 0
	oldest, oldestAge := -1, uint64(0)
	for i := range uint64(halfOpenProbe) {
		idx := int((h + i) & t.mask)
		v := t.slots[idx].Load()
		if v&^tickMask == tag && t.live(v, tk) {
			return false, false
		}
		if !t.live(v, tk) {
			if t.slots[idx].CompareAndSwap(v, word) {
				return true, false
			}
			continue
		}
		if age := (tk - v) & tickMask; oldest < 0 || age > oldestAge {
			oldest, oldestAge = idx, age
		}
	}
	if oldest >= 0 {
		t.slots[oldest].Store(word)
	}
	return true, true
}

// complete records the flow's first ACK; it reports whether the flow was
// counted as half-open.
func (t *halfOpenTable) complete(k flowKey, now time.Time) bool {
	h := t.hash(k)
	tag, tk := tagOf(h), t.tick(now)
	for i := range uint64(halfOpenProbe) {
		idx := (h + i) & t.mask
		v := t.slots[idx].Load()
		if v&^tickMask == tag && t.live(v, tk) {
			return t.slots[idx].CompareAndSwap(v, 0)
		}
	}
	return false
}

// count returns the live entries and clears expired ones, so that stale
// timestamps never come back to life when the tick counter wraps.
func (t *halfOpenTable) count(now time.Time) int {
	tk := t.tick(now)
	n := 0
	for i := range t.slots {
		v := t.slots[i].Load()
		switch {
		case v == 0:
		case t.live(v, tk):
			n++
		default:
			t.slots[i].CompareAndSwap(v, 0)
		}
	}
	return n
}
