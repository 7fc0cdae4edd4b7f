package heavyhitter

// spaceSaving is Metwally, Agrawal and El Abbadi's space-saving summary
// ("Efficient computation of frequent and top-k elements in data streams",
// 2005), weighted: m counters, the smallest one taken over by a prefix it
// does not track. Counters sit in dense arrays (keys[i], counts[i]) found
// through an index; a min-heap of positions ordered by SYNs finds the
// smallest in O(1) and keeps itself in O(log m) per update.
type spaceSaving struct {
	keys   []Key
	counts []counts
	heap   []heapSlot // a min-heap by syns
	index  index
}

// counts is one tracked prefix. syns is at least its true SYN count and
// syns-err at most; completed counts only what happened while tracked.
type counts struct {
	syns      uint64
	err       uint64
	completed uint64
	at        int32 // its place in heap
}

// heapSlot is a heap element: a position and a copy of its SYNs, so that the
// heap's comparisons read only the heap.
type heapSlot struct {
	syns uint64
	p    int32
}

func newSpaceSaving(m int, seed uint64) spaceSaving {
	return spaceSaving{
		keys:   make([]Key, 0, m),
		counts: make([]counts, 0, m),
		heap:   make([]heapSlot, 0, m),
		index:  newIndex(m, seed),
	}
}

// add counts n SYNs for k.
func (s *spaceSaving) add(k Key, n uint64) {
	slot, ok := s.index.find(s.keys, k)
	if ok {
		p := s.index.pos(slot)
		s.counts[p].syns += n
		at := s.counts[p].at
		s.heap[at].syns = s.counts[p].syns
		s.down(int(at))
		return
	}
	if len(s.keys) < cap(s.keys) {
		p := len(s.keys)
		s.keys = append(s.keys, k)
		s.counts = append(s.counts, counts{syns: n, at: int32(len(s.heap))})
		s.heap = append(s.heap, heapSlot{syns: n, p: int32(p)})
		s.index.set(slot, p)
		s.up(len(s.heap) - 1)
		return
	}
	// Full: the prefix takes over the smallest counter and inherits its
	// count as the bound on what it may have sent while untracked.
	p := int(s.heap[0].p)
	old, _ := s.index.find(s.keys, s.keys[p])
	s.index.remove(s.keys, old)
	s.keys[p] = k
	slot, _ = s.index.find(s.keys, k)
	s.index.set(slot, p)
	least := s.counts[p].syns
	s.counts[p].syns = least + n
	s.counts[p].err = least
	s.counts[p].completed = 0
	s.heap[0].syns = least + n
	s.down(0)
}

// complete counts a completed handshake for k if k is tracked.
func (s *spaceSaving) complete(k Key) {
	if slot, ok := s.index.find(s.keys, k); ok {
		s.counts[s.index.pos(slot)].completed++
	}
}

// floor is the smallest tracked count once every counter is in use, else
// 0: a prefix that sent more SYNs than this is certainly tracked, and no
// entry's err exceeds it.
func (s *spaceSaving) floor() uint64 {
	if len(s.heap) < cap(s.heap) {
		return 0
	}
	return s.heap[0].syns
}

func (s *spaceSaving) reset() {
	s.keys = s.keys[:0]
	s.counts = s.counts[:0]
	s.heap = s.heap[:0]
	s.index.clear()
}

func (s *spaceSaving) less(i, j int) bool {
	return s.heap[i].syns < s.heap[j].syns
}

func (s *spaceSaving) swap(i, j int) {
	h := s.heap
	h[i], h[j] = h[j], h[i]
	s.counts[h[i].p].at = int32(i)
	s.counts[h[j].p].at = int32(j)
}

func (s *spaceSaving) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !s.less(i, parent) {
			return
		}
		s.swap(i, parent)
		i = parent
	}
}

func (s *spaceSaving) down(i int) {
	n := len(s.heap)
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if c+1 < n && s.less(c+1, c) {
			c++
		}
		if !s.less(c, i) {
			return
		}
		s.swap(i, c)
		i = c
	}
}
