package heavyhitter

// mix is MurmurHash3's 64-bit finalizer: a bijection whose every output bit
// depends on every input bit. Keys are xored with a per-sketch random seed
// before mixing, so a sender cannot pick prefixes that pile into one slot
// of the index or one corner of the spread sample without first learning
// the seed, and the sketch reveals no hash.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// index maps keys to positions in a dense array the caller owns (keys[i] is
// the key at position i) with open addressing and linear probing. Its
// slots hold position+1, 0 marking an empty slot; there are at least twice
// as many slots as positions, so a probe ends at an empty slot quickly.
type index struct {
	slots []int32
	mask  uint64
	seed  uint64
}

func newIndex(positions int, seed uint64) index {
	n := 2
	for n < 2*positions {
		n *= 2
	}
	return index{slots: make([]int32, n), mask: uint64(n - 1), seed: seed}
}

func (x *index) home(k Key) uint64 { return mix(k.v^x.seed) & x.mask }

// find returns the slot holding k and true, or the empty slot where k
// would go and false.
func (x *index) find(keys []Key, k Key) (uint64, bool) {
	for i := x.home(k); ; i = (i + 1) & x.mask {
		p := x.slots[i]
		if p == 0 {
			return i, false
		}
		if keys[p-1] == k {
			return i, true
		}
	}
}

// pos returns the position in slot s.
func (x *index) pos(s uint64) int { return int(x.slots[s]) - 1 }

// set puts position p into slot s, which find returned empty.
func (x *index) set(s uint64, p int) { x.slots[s] = int32(p + 1) }

// remove empties slot s and shifts later members of its probe run back, so
// every key stays reachable from its home slot without tombstones.
func (x *index) remove(keys []Key, s uint64) {
	hole := s
	for i := (s + 1) & x.mask; x.slots[i] != 0; i = (i + 1) & x.mask {
		h := x.home(keys[x.slots[i]-1])
		// The member at i may fill the hole unless its home lies
		// cyclically in (hole, i]: then it would move before its home.
		if (i-h)&x.mask >= (i-hole)&x.mask {
			x.slots[hole] = x.slots[i]
			hole = i
		}
	}
	x.slots[hole] = 0
}

func (x *index) clear() { clear(x.slots) }
