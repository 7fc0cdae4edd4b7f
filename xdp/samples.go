package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SampleEvery is how sparsely the program hands the SYNs it answers or
// drops to Samples: one in SampleEvery on each CPU, but no two within
// SampleGap of each other. Each sample weighs the SYNs since the last.
const SampleEvery = 8

// SampleGap is the least time between two samples on a CPU: 10,000
// samples a second per CPU at most, which an 80,000 SYN/s flood reaches.
// Past it samples weigh more rather than coming faster, so reading them
// costs userspace what it costs at that rate, however fast the flood.
const SampleGap = 100 * time.Microsecond

// sampleBytes is how much of each sampled frame the program copies.
const sampleBytes = 128

// Sample is one sampled SYN: the index of its service, the first bytes
// of its frame (Ethernet header included) and how many SYNs it stands
// for.
type Sample struct {
	Service int
	Frame   []byte
	// Weight is the SYNs its CPU answered or dropped since its previous
	// sample, this one included: SampleEvery, or more past SampleGap's
	// rate (1 for a CPU's first).
	Weight uint32
	// Event says the record is a flow's event (ReplayEvent), not a SYN.
	Event bool
}

// The ring buffer's record header (include/uapi/linux/bpf.h): the length,
// with two flag bits, then a page offset the reader does not need.
const (
	ringBusyBit    = 1 << 31 // reserved, not yet submitted
	ringDiscardBit = 1 << 30 // discarded: skipped
	ringHeaderLen  = 8
)

// SampleReader reads the program's sampled SYNs from the ring buffer's
// shared memory, and waits for them in the Go runtime's network poller.
//
// It makes no system call. A goroutine that waits in one (as a reader
// built on epoll_wait does) keeps its P, and the runtime's monitor then
// polls every 20 µs until it takes the P back 10 ms later, at every wait:
// on a quiet gateway, where every SampleEvery-th legitimate SYN wakes the
// reader, that was a fifth of the process's CPU.
type SampleReader struct {
	// mu is held by Read for its whole call, waiting included, and by
	// Close to unmap the ring once Read has let go.
	mu     sync.Mutex
	closed atomic.Bool
	// deadline is SetDeadline's, in Unix nanoseconds; 0 for none.
	deadline atomic.Int64
	file     *os.File // a duplicate of the ring's descriptor, in the poller
	rc       syscall.RawConn
	// cons is the consumer position's page (read-write); prod the
	// producer position's page (read-only), then the data pages mapped
	// twice, so a record that wraps is contiguous.
	cons, prod []byte
	data       []byte
	mask       uintptr
	frame      [sampleBytes]byte
}

// Samples opens the program's ring of sampled SYNs. Only one reader may
// be open at a time.
func (p *Program) Samples() (*SampleReader, error) {
	r, err := openSampleRing(p.objs.Samples.FD(), int(p.objs.Samples.MaxEntries()))
	if err != nil {
		return nil, fmt.Errorf("xdp: open the sample ring: %w", err)
	}
	return r, nil
}

func openSampleRing(mapFD, size int) (_ *SampleReader, err error) {
	page := os.Getpagesize()
	if size <= 0 || size&(size-1) != 0 || size%page != 0 {
		return nil, fmt.Errorf("ring of %d bytes: want a power of two pages", size)
	}
	r := &SampleReader{mask: uintptr(size - 1)}
	defer func() {
		if err != nil {
			if r.file != nil {
				r.file.Close()
			}
			r.release()
		}
	}()
	if r.cons, err = unix.Mmap(mapFD, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map the consumer page: %w", err)
	}
	if r.prod, err = unix.Mmap(mapFD, int64(page), page+2*size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map the data pages: %w", err)
	}
	r.data = r.prod[page:]
	fd, err := unix.FcntlInt(uintptr(mapFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the ring's descriptor: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("duplicate the ring's descriptor: %w", err)
	}
	r.file = os.NewFile(uintptr(fd), "sample ring")
	// A descriptor the poller did not take has no deadlines.
	if err := r.file.SetReadDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("wait on the ring in the network poller: %w", err)
	}
	if r.rc, err = r.file.SyscallConn(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *SampleReader) consumerPos() *uintptr { return (*uintptr)(unsafe.Pointer(&r.cons[0])) }
func (r *SampleReader) producerPos() *uintptr { return (*uintptr)(unsafe.Pointer(&r.prod[0])) }

// available is how many bytes of records the ring holds unread.
func (r *SampleReader) available() uintptr {
	return atomic.LoadUintptr(r.producerPos()) - atomic.LoadUintptr(r.consumerPos())
}

// Read waits for the next sample. Its Frame is valid until the next Read.
// After Close it returns an error wrapping os.ErrClosed; past the
// deadline, one wrapping os.ErrDeadlineExceeded.
func (r *SampleReader) Read() (Sample, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.closed.Load() {
			return Sample{}, fmt.Errorf("xdp: read samples: %w", os.ErrClosed)
		}
		s, ok, err := r.next()
		if ok || err != nil {
			return s, err
		}
		if d := r.deadline.Load(); d != 0 && time.Now().UnixNano() >= d {
			return Sample{}, fmt.Errorf("xdp: read samples: %w", os.ErrDeadlineExceeded)
		}
		// The kernel wakes the ring's waiters when a record is submitted
		// to a ring read to its end, as this one is now.
		err = r.rc.Read(func(uintptr) bool { return r.closed.Load() || r.available() > 0 })
		switch {
		case r.closed.Load():
		case errors.Is(err, os.ErrDeadlineExceeded):
			return Sample{}, fmt.Errorf("xdp: read samples: %w", os.ErrDeadlineExceeded)
		case err != nil:
			return Sample{}, fmt.Errorf("xdp: read samples: %w", err)
		}
	}
}

// next takes the next submitted sample out of the ring, skipping
// discarded records and malformed samples; ok is false when there is
// none yet.
func (r *SampleReader) next() (s Sample, ok bool, err error) {
	cons, prod := r.consumerPos(), r.producerPos()
	for {
		pos := atomic.LoadUintptr(cons)
		if pos == atomic.LoadUintptr(prod) {
			return Sample{}, false, nil
		}
		off := pos & r.mask
		header := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[off])))
		if header&ringBusyBit != 0 {
			return Sample{}, false, nil
		}
		n := uintptr(header &^ (ringBusyBit | ringDiscardBit))
		if n > r.mask+1-ringHeaderLen {
			return Sample{}, false, fmt.Errorf("xdp: read samples: record of %d bytes in a ring of %d", n, r.mask+1)
		}
		if header&ringDiscardBit == 0 {
			s, ok = r.parse(r.data[off+ringHeaderLen : off+ringHeaderLen+n])
		}
		// Records are 8-byte aligned. The kernel may reuse the space
		// once the position has moved: the frame was copied.
		atomic.StoreUintptr(cons, pos+(ringHeaderLen+n+7)&^7)
		if ok {
			return s, true, nil
		}
	}
}

// parse copies the sample in record b: the service (4 bytes), the
// frame's length and the sample's weight (2 bytes each; an event's
// length takes all 4), the frame.
func (r *SampleReader) parse(b []byte) (Sample, bool) {
	if len(b) < 8 {
		return Sample{}, false
	}
	svc := binary.NativeEndian.Uint32(b[0:4])
	event := svc&sampleEvent != 0
	var (
		n      int
		weight uint32
	)
	if event {
		n = int(binary.NativeEndian.Uint32(b[4:8]))
	} else {
		n = int(binary.NativeEndian.Uint16(b[4:6]))
		weight = uint32(binary.NativeEndian.Uint16(b[6:8]))
	}
	if n > sampleBytes || 8+n > len(b) {
		return Sample{}, false
	}
	return Sample{Service: int(svc &^ sampleEvent), Event: event, Weight: weight, Frame: r.frame[:copy(r.frame[:], b[8:8+n])]}, true
}

// SetDeadline bounds Read's wait: once the ring is empty past t, Read
// returns an error wrapping os.ErrDeadlineExceeded, at once for a t
// already past. The zero time waits without limit.
func (r *SampleReader) SetDeadline(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = max(t.UnixNano(), 1)
	}
	r.deadline.Store(ns)
	_ = r.file.SetReadDeadline(t)
}

// Fill is the share of the ring that unread samples hold, from 0 to 1.
func (r *SampleReader) Fill() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.prod == nil {
		return 0
	}
	return float64(r.available()) / float64(r.mask+1)
}

// Close stops the reader; a Read waiting returns.
func (r *SampleReader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	err := r.file.Close() // wakes a waiting Read
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(err, r.release())
}

// release unmaps the ring.
func (r *SampleReader) release() error {
	var errs []error
	for _, m := range [][]byte{r.cons, r.prod} {
		if m != nil {
			errs = append(errs, unix.Munmap(m))
		}
	}
	r.cons, r.prod, r.data = nil, nil, nil
	return errors.Join(errs...)
}
