package nfq

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/nf"
)

// ErrNotHeld is returned by Release for a packet that is not held: never
// held, or released already.
var ErrNotHeld = errors.New("packet not held")

// holds is what the receive loop shares with Release: the ids of the held
// packets and a message buffer for their verdicts. The loop alone adds
// holds; Release alone removes them (doc.go, "Holding packets").
type holds struct {
	mu  sync.Mutex
	set heldSet
	rc  syscall.RawConn // the queue's socket, once the loop runs

	// handling is the id of the packet in Handle, with handlingBit set
	// (ids may be 0), or 0 between packets. The loop writes it around each
	// Handle; Release reads it to tell a packet whose Hold the loop has
	// not recorded yet from one that was never held.
	handling atomic.Uint64

	// count is the number of packets held, for the loop to read without
	// the lock and for Held.
	count atomic.Int64

	// early is a Release of the packet in Handle, made before the loop
	// recorded its Hold: the loop sends it when Handle returns Hold (see
	// receiver.hold) and drops it otherwise. Its message is in earlyBuf.
	early        earlyRelease
	earlyPending atomic.Bool // early.set, readable without the lock
	earlyBuf     []byte

	// msg is the message buffer of Release; send writes out with
	// writeFn, made once so that no closure is allocated per call.
	msg      []byte
	out      []byte
	outErrno syscall.Errno
	writeFn  func(fd uintptr) bool

	// Releases sent, counted as they are written.
	releasedAccept, releasedDrop, rewritten atomic.Uint64
}

// earlyRelease is a Release that came before the Hold it releases.
type earlyRelease struct {
	set     bool
	id      uint32
	verdict uint32
	len     int  // message length in earlyBuf
	packet  bool // the message carries a packet
}

const handlingBit = 1 << 32

// maxVerdictMsg is the longest verdict message: one carrying a packet of
// MaxPacket bytes.
const maxVerdictMsg = payloadHdrLen + (MaxPacket+3)&^3

// init readies the holds for a receive loop on rc, for at most n packets
// held at a time (the kernel's queue length: a held packet keeps its
// place in the queue).
func (h *holds) init(n int, rc syscall.RawConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rc = rc
	h.set = heldSet{ids: make([]uint32, n), gone: make([]bool, n)}
	h.count.Store(0)
	h.msg = make([]byte, maxVerdictMsg)
	h.earlyBuf = make([]byte, maxVerdictMsg)
	h.writeFn = h.write
}

// Held is the number of packets held now: handed to the handler, which
// returned nf.Hold, and not yet released. They wait in the kernel's queue
// and count in its queue_total (KernelQueueStats.Waiting).
func (q *Queue) Held() int { return int(q.holds.count.Load()) }

// Release gives a held packet (its handler returned nf.Hold) its verdict,
// v: nf.Accept or nf.Drop. A non-nil packet replaces the packet's bytes
// when it is accepted: a whole IP packet of 1 to MaxPacket bytes, with
// valid checksums, since the kernel computes none (it is ignored for
// nf.Drop). Release sends the verdict at once, in a message of its own,
// and allocates nothing.
//
// Release is safe to call from any goroutine, concurrently with the
// receive loop, and from the handler itself, also for the packet it is
// handling: a Release that comes before its handler has returned nf.Hold
// is kept and sent when it returns (then in order with the batch's other
// verdicts), or discarded and counted as a verdict error if the handler
// returns another verdict.
//
// Releasing a packet that is not held (never held, released already)
// fails with ErrNotHeld and sends nothing. A packet the kernel dropped on
// its own meanwhile (its interface went down) is refused by the kernel,
// which the receive loop counts in Stats.VerdictErrors.
func (q *Queue) Release(id uint32, v nf.Verdict, packet []byte) error {
	var kv uint32
	switch v {
	case nf.Accept:
		kv = nfAccept
	case nf.Drop:
		kv = nfDrop
	default:
		return fmt.Errorf("nfq: queue %d: release packet %d: verdict %v: want %v or %v", q.cfg.Queue, id, v, nf.Accept, nf.Drop)
	}
	if packet != nil && (len(packet) == 0 || len(packet) > MaxPacket) {
		return fmt.Errorf("nfq: queue %d: release packet %d: packet of %d bytes, want 1 to %d", q.cfg.Queue, id, len(packet), MaxPacket)
	}
	if kv == nfDrop {
		packet = nil
	}
	h := &q.holds
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.set.remove(id):
		h.count.Store(int64(h.set.live))
		err := h.send(h.msg[:putRelease(h.msg, q.cfg.Queue, id, kv, packet)])
		q.countRelease(err, kv, packet != nil)
		if err != nil {
			return fmt.Errorf("nfq: queue %d: release packet %d: %w", q.cfg.Queue, id, err)
		}
		return nil

	case h.handling.Load() == handlingBit|uint64(id) && !(h.early.set && h.early.id == id):
		// Its handler has not returned yet: keep the release for the loop.
		if h.early.set {
			q.discardEarly() // a stale one, see receiver.hold
		}
		h.early = earlyRelease{set: true, id: id, verdict: kv, packet: packet != nil}
		h.early.len = putRelease(h.earlyBuf, q.cfg.Queue, id, kv, packet)
		h.earlyPending.Store(true)
		return nil
	}
	return fmt.Errorf("nfq: queue %d: release packet %d: %w", q.cfg.Queue, id, ErrNotHeld)
}

// putRelease writes the verdict message of a release into b and returns
// its length.
func putRelease(b []byte, queue uint16, id, verdict uint32, packet []byte) int {
	putVerdict(b, queue, id, verdict, len(packet))
	if len(packet) == 0 {
		return verdictMsgLen
	}
	n := payloadHdrLen + copy(b[payloadHdrLen:], packet)
	for ; n%4 != 0; n++ {
		b[n] = 0
	}
	return n
}

// countRelease counts a release written with error err.
func (q *Queue) countRelease(err error, verdict uint32, packet bool) {
	h := &q.holds
	switch {
	case err != nil:
		q.verdictErrors.Add(1)
	case verdict == nfAccept:
		q.accepted.Add(1)
		h.releasedAccept.Add(1)
		if packet {
			h.rewritten.Add(1)
		}
	default:
		q.dropped.Add(1)
		h.releasedDrop.Add(1)
	}
}

// sendEarly sends the early release, with h.mu held, and forgets it.
func (q *Queue) sendEarly() {
	h := &q.holds
	e := h.early
	h.early = earlyRelease{}
	h.earlyPending.Store(false)
	q.countRelease(h.send(h.earlyBuf[:e.len]), e.verdict, e.packet)
}

// discardEarly drops the early release, with h.mu held: its handler
// returned a verdict other than nf.Hold, which the packet got instead.
func (q *Queue) discardEarly() {
	h := &q.holds
	id := h.early.id
	h.early = earlyRelease{}
	h.earlyPending.Store(false)
	q.verdictErrors.Add(1)
	if ok, suppressed := q.releaseLog.allow(); ok {
		q.log.Warn().Uint32("id", id).Uint64("suppressed", suppressed).Msg("packet released while its handler gave it another verdict than hold; release ignored")
	}
}

// send writes one message from a buffer of h, with h.mu held.
func (h *holds) send(b []byte) error {
	if h.rc == nil {
		return errors.New("queue not running")
	}
	h.out, h.outErrno = b, 0
	err := h.rc.Write(h.writeFn)
	if err == nil && h.outErrno != 0 {
		err = h.outErrno
	}
	h.out = nil
	return err
}

// write is the syscall.RawConn write function of send; like the receive
// loop's, a raw system call that never waits.
func (h *holds) write(fd uintptr) bool {
	for {
		_, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&h.out[0])), uintptr(len(h.out)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		h.outErrno = e
		return true
	}
}

// after reports whether packet id a comes after b; ids wrap around, as
// the kernel compares them (nfq_id_after).
func after(a, b uint32) bool { return int32(a-b) > 0 }

// heldSet is the set of held packet ids in a fixed array, in the order
// they were held, which is the kernel's id order: adding is appending,
// the smallest is the first, removing is a binary search that marks the
// id gone. Gone ids are trimmed from both ends, and the live ones moved to
// the front when the array's end is reached; nothing is allocated.
type heldSet struct {
	ids  []uint32
	gone []bool
	head int // ids[head:head+n] is in use, gone ones included
	n    int
	live int
}

// add records id, and reports false if the set is full.
func (s *heldSet) add(id uint32) bool {
	if s.n > 0 && !after(id, s.ids[s.head+s.n-1]) {
		return s.insert(id) // out of order: not from the kernel
	}
	if s.head+s.n == len(s.ids) {
		s.compact()
		if s.n == len(s.ids) {
			return false
		}
	}
	i := s.head + s.n
	s.ids[i], s.gone[i] = id, false
	s.n++
	s.live++
	return true
}

// insert adds an id that does not come after the last one, in its place.
func (s *heldSet) insert(id uint32) bool {
	i := s.search(id)
	if i < s.head+s.n && s.ids[i] == id {
		if s.gone[i] {
			s.gone[i] = false
			s.live++
		}
		return true
	}
	if s.head+s.n == len(s.ids) {
		s.compact()
		if s.n == len(s.ids) {
			return false
		}
		i = s.search(id)
	}
	end := s.head + s.n
	copy(s.ids[i+1:end+1], s.ids[i:end])
	copy(s.gone[i+1:end+1], s.gone[i:end])
	s.ids[i], s.gone[i] = id, false
	s.n++
	s.live++
	return true
}

// remove forgets id and reports whether it was held.
func (s *heldSet) remove(id uint32) bool {
	i := s.search(id)
	if i == s.head+s.n || s.ids[i] != id || s.gone[i] {
		return false
	}
	s.gone[i] = true
	s.live--
	if s.live == 0 {
		s.head, s.n = 0, 0
		return true
	}
	for s.gone[s.head] {
		s.head++
		s.n--
	}
	for s.gone[s.head+s.n-1] {
		s.n--
	}
	return true
}

// search returns the index of the first id in use that does not come
// before id.
func (s *heldSet) search(id uint32) int {
	lo, hi := s.head, s.head+s.n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if after(id, s.ids[m]) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// min returns the smallest id held; ok is false when none is.
func (s *heldSet) min() (id uint32, ok bool) {
	if s.live == 0 {
		return 0, false
	}
	return s.ids[s.head], true
}

// compact moves the live ids to the front.
func (s *heldSet) compact() {
	j := 0
	for i := s.head; i < s.head+s.n; i++ {
		if !s.gone[i] {
			s.ids[j], s.gone[j] = s.ids[i], false
			j++
		}
	}
	s.head, s.n = 0, j
}
