package nfq

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"github.com/rs/zerolog"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Errors returned by Run.
var (
	ErrClosed  = errors.New("nfq: queue closed")
	ErrRunning = errors.New("nfq: Run called twice")
)

const (
	// logEvery rate-limits repeated warnings from the receive loop.
	logEvery = time.Second

	// maxErrorBackoff caps the pause after consecutive unexplained receive
	// errors, so a persistent error cannot spin a CPU.
	maxErrorBackoff = 100 * time.Millisecond
)

// Queue is one bound NFQUEUE with its own netlink socket. Open it, call Run
// (or RunBatch) once, Close it. Several queues are independent and may run
// concurrently, each in its own goroutine.
type Queue struct {
	cfg    Config
	log    zerolog.Logger
	nf     *nfqueue.Nfqueue
	portID uint32

	running  atomic.Bool
	stopping chan struct{} // closed when shutdown begins

	// go-nfqueue's receive goroutine parks in our callbacks once the
	// queue is configured (see bind); parked is closed when it has,
	// sockClosed when the socket is closed and it may return.
	parkOnce   sync.Once
	parked     chan struct{}
	sockClosed chan struct{}

	shutdownOnce sync.Once
	closeErr     error

	received      atomic.Uint64
	batches       atomic.Uint64
	accepted      atomic.Uint64
	dropped       atomic.Uint64
	malformed     atomic.Uint64
	verdictErrors atomic.Uint64
	receiveErrors atomic.Uint64
	enobufs       atomic.Uint64
	heldTotal     atomic.Uint64

	// Held packets, shared by the receive loop and Release.
	holds holds
	// releaseLog rate-limits warnings about holds; guarded by holds.mu.
	releaseLog limiter

	// Owned by the receive goroutine.
	errStreak     int
	enobufsLog    limiter
	receiveLog    limiter
	verdictLog    limiter
	malformedLog  limiter
	enobufsLogged uint64
}

// Open creates the netlink socket, sizes its receive buffer, binds it to
// cfg.Queue and configures the queue: whole-packet copy mode, the queue
// length and the fail-open flag. From the moment Open returns the kernel
// delivers packets to it; they wait (in the socket and the kernel queue,
// within MaxQueueLen) until Run supplies a handler.
//
// The queue is opened in the network namespace of the calling thread.
func Open(cfg Config) (*Queue, error) {
	if cfg.ReadBuffer < 0 {
		return nil, fmt.Errorf("nfq: open queue %d: negative read buffer %d", cfg.Queue, cfg.ReadBuffer)
	}
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = DefaultMaxQueueLen
	}
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = DefaultReadBuffer
	}
	q := &Queue{
		cfg:        cfg,
		log:        cfg.Logger.With().Str("component", "nfq").Uint16("queue", cfg.Queue).Logger(),
		stopping:   make(chan struct{}),
		parked:     make(chan struct{}),
		sockClosed: make(chan struct{}),
	}
	if err := q.bind(); err != nil {
		if errors.Is(err, unix.EPERM) {
			// The kernel answers EPERM both to a missing CAP_NET_ADMIN
			// and to a queue that another socket holds; say which.
			if owner, ok := boundBy(cfg.Queue); ok {
				err = fmt.Errorf("%w (the queue is bound by another socket, netlink port id %d)", err, owner)
			}
		}
		return nil, fmt.Errorf("nfq: open queue %d: %w", cfg.Queue, err)
	}
	q.log.Debug().
		Uint32("port_id", q.portID).
		Uint32("max_queue_len", cfg.MaxQueueLen).
		Int("read_buffer", cfg.ReadBuffer).
		Bool("fail_open", cfg.FailOpen).
		Msg("queue bound")
	return q, nil
}

// bind creates the socket, binds it and configures the queue. On failure
// everything is released again, including the binding.
func (q *Queue) bind() error {
	var flags uint32
	if q.cfg.FailOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	// No NfQaCfgFlagGSO: without it the kernel segments GSO/GRO aggregates
	// before queueing, so every packet we see is a real, MTU-sized packet
	// with a valid checksum, and a verdict applies to exactly one segment.
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      q.cfg.Queue,
		MaxQueueLen:  q.cfg.MaxQueueLen,
		MaxPacketLen: copyRange,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        flags,
		AfFamily:     unix.AF_UNSPEC, // queues are not per family; v4 and v6 both arrive
		Logger:       nfLogger{&q.log},
	})
	if err != nil {
		return err
	}
	q.nf = nf
	q.portID = nf.Con.PID()
	if err := q.setReadBuffer(nf.Con); err != nil {
		_ = nf.Close()
		return err
	}
	if err := setSendBuffer(nf.Con); err != nil {
		_ = nf.Close()
		return err
	}
	if err := nf.Con.SetBPF(holdPacketsFilter); err != nil {
		_ = nf.Close()
		return fmt.Errorf("attach setup filter: %w", err)
	}
	if err := q.discardStale(nf.Con); err != nil {
		_ = nf.Close()
		return err
	}
	// go-nfqueue exchanges the configuration messages, then starts its
	// receive goroutine; the context only bounds that goroutine, and
	// Close cancels it.
	if err := nf.RegisterWithErrorFunc(context.Background(), q.onPacket, q.onError); err != nil {
		_ = nf.Close()
		return err
	}
	if err := q.park(); err != nil {
		_ = q.shutdown()
		return err
	}
	if err := nf.Con.RemoveBPF(); err != nil {
		_ = q.shutdown()
		return fmt.Errorf("detach setup filter: %w", err)
	}
	return nil
}

// parkTimeout bounds the wait for go-nfqueue's receive goroutine to park.
const parkTimeout = 5 * time.Second

// park takes the socket from go-nfqueue's receive goroutine, which reads
// one message at a time into freshly allocated buffers (61 allocations and
// three system calls per packet); the receive loop of this package reads
// it instead (see doc.go). A read deadline in the past makes that
// goroutine's blocked receive fail; its error callback (onError) then
// parks it until the socket is closed. The setup filter is still attached,
// so no packet message can reach it before it parks.
func (q *Queue) park() error {
	if err := q.nf.Con.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return fmt.Errorf("interrupt go-nfqueue's receive: %w", err)
	}
	t := time.NewTimer(parkTimeout)
	defer t.Stop()
	select {
	case <-q.parked:
	case <-t.C:
		return fmt.Errorf("go-nfqueue's receive loop did not hand over the socket within %v", parkTimeout)
	}
	if err := q.nf.Con.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear read deadline: %w", err)
	}
	return nil
}

// onError is go-nfqueue's receive-error callback. It is called once, when
// park interrupts the receive (or if anything else fails it first), and
// holds the goroutine until the socket is closed. Returning non-zero then
// ends go-nfqueue's loop; its attempt to unbind fails on the closed socket,
// which unbinds the queue anyway.
func (q *Queue) onError(error) int {
	q.parkOnce.Do(func() { close(q.parked) })
	<-q.sockClosed
	return 1
}

// onPacket is go-nfqueue's per-packet callback. The setup filter keeps
// packet messages away from go-nfqueue's goroutine until it parks, so this
// does not run; should it, the packet's id is below the first one the
// receive loop sees, so the loop re-queues it (see requeueSetup), and the
// goroutine parks like onError.
func (q *Queue) onPacket(nfqueue.Attribute) int { return q.onError(nil) }

// holdPacketsFilter keeps packet messages off the socket while go-nfqueue
// configures the queue.
//
// The kernel queues to us from the bind command on, before copy mode and
// queue length are set, and go-nfqueue waits for each configuration
// acknowledgement with netlink's Execute, which fails ("mismatched
// sequence") when a packet message arrives instead. On a busy queue, say a
// gateway restarted during a flood, that is every attempt. With this socket
// filter the kernel discards the packet messages; it still counts their
// packets as delivered, so they wait in the queue for a verdict (ids
// 1..n). The first packet that reaches us after the filter is gone
// therefore has id n+1, and requeueSetup gives 1..n the verdict NF_REPEAT in
// one batch: the hook runs again, the NFQUEUE rule queues them afresh, and
// the handler sees every packet.
var holdPacketsFilter = mustAssemble(
	// nlmsghdr.nlmsg_type, host byte order, at offset 4. BPF loads are
	// big-endian, so compare with the type's bytes as stored in memory.
	bpf.LoadAbsolute{Off: 4, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(asStored(nfnlPacketMsg)), SkipTrue: 1},
	bpf.RetConstant{Val: 0xffffffff}, // keep: acknowledgements, errors
	bpf.RetConstant{Val: 0},          // drop: packets
)

// discardStale empties the socket's receive queue once the setup filter is
// in place. The socket got its port id before the filter was attached, and
// port ids are reused: the first socket of a process gets its pid, so a
// queue reopened by the same process (or by a new process with a
// recycled pid) can receive a packet message still in flight from the
// instance bound by the previous owner of the id. Such messages are not
// ours to answer (that instance is gone and the kernel drops its packets)
// and would break go-nfqueue's configuration exchange.
func (q *Queue) discardStale(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var recvErr error
	buf := make([]byte, 64)
	err = rc.Control(func(fd uintptr) {
		for {
			_, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
			switch {
			case err == nil:
				n++
			case errors.Is(err, unix.ENOBUFS):
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				return
			default:
				recvErr = err
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if recvErr != nil {
		return fmt.Errorf("discard stale messages: %w", recvErr)
	}
	if n > 0 {
		q.log.Debug().Int("messages", n).Msg("discarded messages addressed to a previous owner of our port id")
	}
	return nil
}

func asStored(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func mustAssemble(insns ...bpf.Instruction) []bpf.RawInstruction {
	raw, err := bpf.Assemble(insns)
	if err != nil {
		panic(err)
	}
	return raw
}

// setReadBuffer sizes the socket's receive buffer. SO_RCVBUFFORCE ignores
// net.core.rmem_max and needs CAP_NET_ADMIN, which binding a queue needs
// anyway; without it SO_RCVBUF gives what rmem_max allows.
func (q *Queue) setReadBuffer(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	n := q.cfg.ReadBuffer
	var opErr error
	err = rc.Control(func(fd uintptr) {
		opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		if errors.Is(opErr, unix.EPERM) {
			q.log.Warn().Int("bytes", n).Msg("SO_RCVBUFFORCE not permitted; read buffer capped by net.core.rmem_max")
			opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	})
	if err != nil {
		return err
	}
	if opErr != nil {
		return fmt.Errorf("set read buffer to %d bytes: %w", n, opErr)
	}
	return nil
}

// sendBuffer is the socket send buffer, set with SO_SNDBUFFORCE: netlink
// refuses a write larger than the buffer (EMSGSIZE), and a verdict write
// carrying packets may be maxWrite bytes long. The kernel doubles the
// value; the memory is taken only while a write is being handled.
const sendBuffer = maxWrite

// setSendBuffer sizes the socket's send buffer, as setReadBuffer does the
// receive buffer.
func setSendBuffer(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	err = rc.Control(func(fd uintptr) {
		opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
		if errors.Is(opErr, unix.EPERM) {
			opErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sendBuffer)
		}
	})
	if err != nil {
		return err
	}
	if opErr != nil {
		return fmt.Errorf("set send buffer to %d bytes: %w", sendBuffer, opErr)
	}
	return nil
}

// boundBy returns the port id of the socket bound to queue, if any.
func boundBy(queue uint16) (uint32, bool) {
	all, err := KernelStats()
	if err != nil {
		return 0, false
	}
	for _, s := range all {
		if s.Queue == queue {
			return s.PortID, true
		}
	}
	return 0, false
}

// PortID is the netlink port id of the queue's socket, as listed by
// KernelStats.
func (q *Queue) PortID() uint32 { return q.portID }

// Run hands every queued packet to h and sends h's verdict, until ctx is
// done or Close is called; then it unbinds the queue and closes the socket,
// so a Queue runs once. ENOBUFS and other transient receive errors are
// counted (see Stats) and logged, never fatal. Run returns nil when ctx is
// done or Close is called while it runs, ErrClosed if the queue was closed
// before, ErrRunning if Run was called before, and another error only if
// the receive loop cannot continue (its socket failed).
func (q *Queue) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return errors.New("nfq: nil handler")
	}
	return q.RunBatch(ctx, h)
}

// RunBatch is Run for a handler that works in batches: h.Handle is called
// for each packet of a receive batch, then h.Flush once, then the batch's
// verdicts are sent (see doc.go).
func (q *Queue) RunBatch(ctx context.Context, h BatchHandler) error {
	if h == nil {
		return errors.New("nfq: nil handler")
	}
	if !q.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	select {
	case <-q.stopping:
		return ErrClosed
	default:
	}
	// Closing the socket is what interrupts a blocked receive.
	stop := context.AfterFunc(ctx, func() { _ = q.shutdown() })
	defer stop()

	r, err := newReceiver(q, q.nf.Con, h)
	if err == nil {
		err = r.run()
	} else if q.isStopping() {
		err = nil // ctx was done already, and the socket is closed
	}
	_ = q.shutdown()
	if err != nil {
		return fmt.Errorf("nfq: queue %d: %w", q.cfg.Queue, err)
	}
	return nil
}

// Close unbinds the queue, closes its socket and waits for the receive
// goroutines to finish; a Run in progress returns nil. The kernel drops the
// packets still waiting for a verdict. Close is idempotent.
func (q *Queue) Close() error {
	return q.shutdown()
}

func (q *Queue) shutdown() error {
	q.shutdownOnce.Do(func() {
		close(q.stopping)
		// Closing the socket unbinds the queue and ends a receive in
		// progress. Only then may go-nfqueue's parked goroutine return:
		// its unbind must not race the receive loop for the socket.
		q.closeErr = q.nf.Con.Close()
		close(q.sockClosed)
		// Cancels go-nfqueue's context and waits for its goroutines; its
		// second close of the socket fails, and that is expected.
		_ = q.nf.Close()
	})
	return q.closeErr
}

// isStopping reports whether shutdown has begun.
func (q *Queue) isStopping() bool {
	select {
	case <-q.stopping:
		return true
	default:
		return false
	}
}

// Stats returns a snapshot of the queue's counters. It is safe to call
// concurrently with Run.
func (q *Queue) Stats() Stats {
	return Stats{
		Received: q.received.Load(),
		Batches:  q.batches.Load(),
		Verdicts: VerdictStats{
			Accept: q.accepted.Load(),
			Drop:   q.dropped.Load(),
		},
		Malformed:     q.malformed.Load(),
		VerdictErrors: q.verdictErrors.Load(),
		ReceiveErrors: q.receiveErrors.Load(),
		ENOBUFS:       q.enobufs.Load(),
		Holds:         q.heldTotal.Load(),
		Held:          uint64(max(q.holds.count.Load(), 0)),
		Released: VerdictStats{
			Accept: q.holds.releasedAccept.Load(),
			Drop:   q.holds.releasedDrop.Load(),
		},
		Rewritten: q.holds.rewritten.Load(),
	}
}

// receiveFailed accounts for a failed receive, on the receive goroutine,
// and reports whether the loop must end (the socket is gone).
func (q *Queue) receiveFailed(err error) (fatal bool) {
	switch {
	case errors.Is(err, unix.ENOBUFS):
		// The kernel could not append to our full socket buffer and dropped
		// (or, fail-open, accepted) packets. The socket itself is fine.
		n := q.enobufs.Add(1)
		if ok, _ := q.enobufsLog.allow(); ok {
			q.log.Warn().
				Uint64("enobufs_total", n).
				Uint64("enobufs_since_last_log", n-q.enobufsLogged).
				Msg("socket receive buffer overflowed; kernel dropped queued packets")
			q.enobufsLogged = n
		}
		return false

	case errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrClosed), errors.Is(err, unix.EBADF):
		q.log.Error().Err(err).Msg("receive loop stopped")
		return true
	}

	q.receiveErrors.Add(1)
	q.errStreak++
	if ok, suppressed := q.receiveLog.allow(); ok {
		q.log.Warn().Err(err).Int("consecutive", q.errStreak).Uint64("suppressed", suppressed).Msg("receive failed; retrying")
	}
	if q.errStreak > 1 {
		d := min(time.Millisecond<<min(q.errStreak-2, 10), maxErrorBackoff)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-q.stopping:
			t.Stop()
		}
	}
	return false
}

func (q *Queue) logMalformed(what string) {
	if ok, suppressed := q.malformedLog.allow(); ok {
		q.log.Warn().Uint64("suppressed", suppressed).Msg(what)
	}
}

// limiter lets one log line through per logEvery and counts the rest.
type limiter struct {
	last       time.Time
	suppressed uint64
}

func (l *limiter) allow() (ok bool, suppressed uint64) {
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < logEvery {
		l.suppressed++
		return false, 0
	}
	l.last, suppressed, l.suppressed = now, l.suppressed, 0
	return true, suppressed
}

// nfLogger routes go-nfqueue's own messages to debug level: they are
// per-message details (unknown attributes, parse failures, the unbind that
// fails after Close) that our counters already cover.
type nfLogger struct{ log *zerolog.Logger }

func (l nfLogger) Debugf(format string, args ...any) { l.log.Debug().Msgf(format, args...) }
func (l nfLogger) Errorf(format string, args ...any) { l.log.Debug().Msgf(format, args...) }
