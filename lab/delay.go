package lab

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// Relay bounds.
const (
	// MaxRelayDelay bounds a relay's one-way delay.
	MaxRelayDelay = 5 * time.Second
	// relaySlots is the frames one direction holds at once: past it,
	// frames are dropped and counted, as a router's full queue drops.
	// 2048 frames in 10 ms (a 20 ms round trip) is 200k frames/s.
	relaySlots = 2048
	// relaySlotSize holds an Ethernet frame of the lab's 1500-byte MTU,
	// with room for a VLAN tag. The links next to the relay segment and
	// checksum in software (their tx checksumming is off), so no larger
	// frame should arrive; one that does is dropped and counted.
	relaySlotSize = 2048
	// relayRcvBuf is each receiving socket's buffer.
	relayRcvBuf = 4 << 20
	// stopLatency bounds the time a stopped relay takes to notice.
	stopLatency = 10 * time.Millisecond
)

// RelayStats counts what one direction of a Relay did with the frames it
// received.
type RelayStats struct {
	// Forwarded frames were sent out of the other link after the delay.
	Forwarded uint64
	// QueueFull frames were dropped because relaySlots frames were
	// already waiting.
	QueueFull uint64
	// Oversize frames were dropped for being larger than a slot.
	Oversize uint64
	// SendErrors are frames the other link refused.
	SendErrors uint64
}

// Dropped is every frame received and not forwarded.
func (s RelayStats) Dropped() uint64 { return s.QueueFull + s.Oversize + s.SendErrors }

// Relay forwards Ethernet frames between two links of one namespace, in
// both directions, each frame a fixed delay after it arrived: a path with
// a round-trip time of its own (twice the delay), on a kernel without
// netem. The namespace's own stack is not involved: frames are read and
// written with AF_PACKET sockets, so the hosts on either side see each
// other as on one Ethernet segment. Each direction keeps the order of its
// frames and holds at most relaySlots of them; the sleeps are the
// kernel's high-resolution timers (clock_nanosleep on threads of their
// own), since the Go runtime's timers wake up to a millisecond late. It
// runs inside the process that started it and ends with it, and gives
// that process a P more for each sleeping thread while it runs (addProcs).
type Relay struct {
	lines   [2]*delayLine // a→b, b→a
	readers [2]*packetReader
	writers [2]*packetWriter
	wg      sync.WaitGroup
	once    sync.Once
}

// StartRelay starts relaying frames between links a and b of ns (nil: the
// caller's namespace), delaying each by delay (0 < delay <= MaxRelayDelay).
// The links should have no addresses, so that the namespace's stack
// answers nothing on them.
func StartRelay(ns *netns.NS, a, b string, delay time.Duration) (*Relay, error) {
	if delay <= 0 || delay > MaxRelayDelay {
		return nil, fmt.Errorf("relay: delay %v outside (0, %v]", delay, MaxRelayDelay)
	}
	r := &Relay{}
	fail := func(err error) (*Relay, error) {
		r.closeSockets()
		return nil, fmt.Errorf("relay %s ⇄ %s: %w", a, b, err)
	}
	err := do(ns, func() error {
		for i, name := range []string{a, b} {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			if r.readers[i], err = openPacketReader(ifi.Index); err != nil {
				return err
			}
			if r.writers[i], err = openPacketWriter(ifi.Index); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	addProcs(len(r.lines))
	for i := range r.lines {
		r.lines[i] = newDelayLine(delay, relaySlots, relaySlotSize)
		from, to := r.readers[i], r.writers[1-i]
		r.wg.Add(2)
		go func() {
			defer r.wg.Done()
			r.lines[i].receive(from)
		}()
		go func() {
			defer r.wg.Done()
			r.lines[i].send(to)
		}()
	}
	return r, nil
}

// Stats returns the counts of each direction: from a to b, and from b
// to a.
func (r *Relay) Stats() (ab, ba RelayStats) {
	return r.lines[0].stats(), r.lines[1].stats()
}

// Close stops relaying, drops the frames still waiting and waits for the
// relay's goroutines. It can be called again.
func (r *Relay) Close() error {
	var err error
	r.once.Do(func() {
		for _, l := range r.lines {
			l.stop()
		}
		err = r.closeSockets()
		addProcs(-len(r.lines))
	})
	return err
}

// addProcs adds n Ps to the process (GOMAXPROCS), or takes them back. A
// sending goroutine sleeps in a system call, and a goroutine in one keeps
// its P until the runtime's monitor takes it back, which an idle monitor
// does up to 10 ms late. With both directions' frames waiting, the two
// senders held both Ps of a 2-CPU process, and a client of the same
// process whose answer was already in its socket waited for a P: 4 ms at
// every request through synguard (lab, 20 ms RTT, 45.4 ms to first byte
// against curl's 41.4; the backend's tail-loss probe kept a sender
// asleep). A relay adds a P for each sender while it runs, so the rest
// of the process keeps as many as it had.
func addProcs(n int) {
	procsMu.Lock()
	defer procsMu.Unlock()
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0)+n, 1))
}

// procsMu orders the relays' changes to GOMAXPROCS.
var procsMu sync.Mutex

// closeSockets ends the receiving goroutines by closing their sockets,
// waits for the sending ones to drain and closes theirs: a writer's
// descriptor is not closed under a write in progress.
func (r *Relay) closeSockets() error {
	var errs []error
	for _, p := range r.readers {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	r.wg.Wait()
	for _, p := range r.writers {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

// frameReader reads one frame into b and returns its length, which is
// more than len(b) when the frame did not fit (and was cut).
type frameReader interface {
	readFrame(b []byte) (int, error)
}

// frameWriter sends one frame.
type frameWriter interface {
	writeFrame(b []byte) error
}

// delayLine carries frames one way, each sent delay after it was read,
// in order. Frames wait in fixed slots, handed between the receiving and
// the sending goroutine by index, so a frame costs no allocation.
type delayLine struct {
	delay    int64 // ns
	slotSize int
	buf      []byte  // the slots, slotSize bytes each
	lens     []int   // frame length in each slot
	due      []int64 // when each slot's frame is sent, CLOCK_MONOTONIC ns
	free     chan int32
	ready    chan int32 // in arrival order, hence in due order
	scratch  []byte     // a frame dropped for want of a slot lands here
	stopped  atomic.Bool

	forwarded, queueFull, oversize, sendErrors atomic.Uint64
}

func newDelayLine(delay time.Duration, slots, slotSize int) *delayLine {
	l := &delayLine{
		delay:    int64(delay),
		slotSize: slotSize,
		buf:      make([]byte, slots*slotSize),
		lens:     make([]int, slots),
		due:      make([]int64, slots),
		free:     make(chan int32, slots),
		ready:    make(chan int32, slots),
		scratch:  make([]byte, slotSize),
	}
	for i := range slots {
		l.free <- int32(i)
	}
	return l
}

func (l *delayLine) slot(i int32) []byte {
	return l.buf[int(i)*l.slotSize : (int(i)+1)*l.slotSize]
}

// receive reads frames from r until it fails (it is closed), queueing
// each with its due time.
func (l *delayLine) receive(r frameReader) {
	defer close(l.ready)
	for {
		var (
			i   int32 = -1
			buf       = l.scratch
		)
		select {
		case i = <-l.free:
			buf = l.slot(i)
		default:
		}
		n, err := r.readFrame(buf)
		if err != nil {
			return
		}
		switch {
		case n > len(buf):
			l.oversize.Add(1)
		case i < 0:
			l.queueFull.Add(1)
		default:
			l.lens[i], l.due[i] = n, monotonicNow()+l.delay
			l.ready <- i
			continue
		}
		if i >= 0 {
			l.free <- i
		}
	}
}

// send writes each queued frame to w once it is due. It sleeps on a
// thread of its own, with the kernel's timer and the least timer slack,
// for a delay true to tens of microseconds.
func (l *delayLine) send(w frameWriter) {
	// The thread ends with the goroutine, its timer slack with it.
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	for i := range l.ready {
		// In slices, so that stop is seen within one.
		for !l.stopped.Load() {
			now := monotonicNow()
			if now >= l.due[i] {
				break
			}
			sleepUntil(min(l.due[i], now+int64(stopLatency)))
		}
		if !l.stopped.Load() {
			if err := w.writeFrame(l.slot(i)[:l.lens[i]]); err != nil {
				l.sendErrors.Add(1)
			} else {
				l.forwarded.Add(1)
			}
		}
		l.free <- i
	}
}

// stop makes send drop what is still queued, without waiting.
func (l *delayLine) stop() { l.stopped.Store(true) }

func (l *delayLine) stats() RelayStats {
	return RelayStats{
		Forwarded:  l.forwarded.Load(),
		QueueFull:  l.queueFull.Load(),
		Oversize:   l.oversize.Load(),
		SendErrors: l.sendErrors.Load(),
	}
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock sleepUntil
// sleeps on.
func monotonicNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// sleepUntil blocks the calling thread until CLOCK_MONOTONIC reaches t.
func sleepUntil(t int64) {
	ts := unix.NsecToTimespec(t)
	for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil) == unix.EINTR {
	}
}

// packetReader receives every frame arriving on one link (not those it
// sends) from an AF_PACKET socket in Go's poller, so that Close ends a
// blocked read.
type packetReader struct {
	f  *os.File
	rc syscall.RawConn
	// The read's buffer and outcome, and the function RawConn.Read
	// calls, made once: a read allocates nothing.
	buf  []byte
	n    int
	err  error
	read func(fd uintptr) bool
}

func openPacketReader(ifindex int) (*packetReader, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	for _, o := range []struct {
		level, opt, v int
	}{
		{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, relayRcvBuf},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("packet socket option %d: %w", o.opt, err)
		}
	}
	// Opened with protocol 0 it receives nothing until bound to the link,
	// rather than every link's frames in between.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket: %w", err)
	}
	p := &packetReader{f: os.NewFile(uintptr(fd), "packet")}
	if p.rc, err = p.f.SyscallConn(); err != nil {
		p.f.Close()
		return nil, err
	}
	p.read = func(fd uintptr) bool {
		// MSG_TRUNC: the frame's whole length even when it is cut.
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p.buf))), uintptr(len(p.buf)), unix.MSG_TRUNC, 0, 0)
		if errno == unix.EAGAIN || errno == unix.EINTR {
			return false
		}
		p.n, p.err = int(n), nil
		if errno != 0 {
			p.n, p.err = 0, errno
		}
		return true
	}
	return p, nil
}

func (p *packetReader) readFrame(b []byte) (int, error) {
	p.buf = b
	for {
		if err := p.rc.Read(p.read); err != nil {
			return 0, err
		}
		// A link going down is reported once, to the next read; the
		// relay goes on when it comes back up.
		if p.err != unix.ENETDOWN {
			return p.n, p.err
		}
	}
}

func (p *packetReader) Close() error { return p.f.Close() }

// packetWriter sends frames out of one link from a blocking AF_PACKET
// socket bound to it with protocol 0, so that it receives nothing.
type packetWriter struct {
	fd int
}

func openPacketWriter(ifindex int) (*packetWriter, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket: %w", err)
	}
	return &packetWriter{fd: fd}, nil
}

func (p *packetWriter) writeFrame(b []byte) error {
	for {
		_, err := unix.Write(p.fd, b)
		if err != unix.EINTR {
			return err
		}
	}
}

func (p *packetWriter) Close() error { return unix.Close(p.fd) }
