package nfq

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/nf"
)

// Receive path sizes; doc.go explains the choices.
const (
	// rxBatch is the most packet messages one recvmmsg returns, and so
	// the most packets one verdict write covers.
	rxBatch = 64

	// rxSlot is the receive buffer of one message: the largest packet
	// message the kernel builds (a whole packet of up to copyRange bytes
	// plus its headers and metadata attributes), so that no message is
	// ever truncated. Only the bytes a message fills are touched.
	rxSlot = copyRange + 1 + 2048

	// maxVerdictMsgs bounds the verdict messages of one write: one per
	// packet when every verdict differs from the one before, and the
	// re-queue of the packets kept back during setup.
	maxVerdictMsgs = rxBatch + 1

	// maxWrite bounds the bytes of one verdict write, which the socket's
	// send buffer must hold (sendBuffer): only verdicts carrying packets
	// reach it, and then the batch takes more than one write.
	maxWrite = 128 << 10
)

// receiver is the receive loop of one queue: recvmmsg into preallocated
// buffers, parse, hand each packet to the handler, and send the verdicts
// of a whole batch in one write. Everything in it belongs to the receive
// goroutine; nothing is allocated per packet.
type receiver struct {
	q     *Queue
	rc    syscall.RawConn
	h     BatchHandler
	after afterVerdicts // h, when it is one

	msgs []unix.Mmsghdr
	iovs []unix.Iovec
	bufs []byte // rxBatch slots of rxSlot bytes

	// The result of the last recvmmsg, set by recvFn. Both closures are
	// made once: a closure made per call would be allocated per call.
	n      int
	errno  syscall.Errno
	recvFn func(fd uintptr) bool

	// Verdict messages of the current batch, and the packets they cover.
	// A message carrying a packet has its header in out and its packet
	// in the receive buffer (nf.AcceptRewritten): pkts says where it goes,
	// and the write gathers them with iov.
	out          []byte
	pkts         []outPacket
	iov          []unix.Iovec
	outBytes     int
	outAccept    uint64
	outDrop      uint64
	outRewritten uint64
	sendErrno    syscall.Errno
	sendFn       func(fd uintptr) bool

	// holding says whether packets may be held, and minHeld is then the
	// smallest id held, or one that was released since: batch verdicts
	// must not reach it. Only this loop adds holds, and it refreshes the
	// two once per batch, so they err only on the safe side.
	holding bool
	minHeld uint32

	// The run of consecutive packets with the same verdict being built:
	// one NFQNL_MSG_VERDICT_BATCH covers it.
	runLen     uint64
	runID      uint32
	runVerdict uint32

	requeued bool // the packets kept back during setup were re-queued
	msg      packetMsg
	pkt      Packet

	// Counted per batch, published to the Queue's atomics after it.
	received, malformed, held uint64
}

// outPacket is a packet that a verdict message carries: it follows
// out[:at].
type outPacket struct {
	at     int
	packet []byte
}

// zeros pads a packet in a verdict message to 4 bytes.
var zeros [4]byte

// rawConner is the part of *netlink.Conn the receive loop needs; tests
// give it another socket.
type rawConner interface {
	SyscallConn() (syscall.RawConn, error)
}

func newReceiver(q *Queue, c rawConner, h BatchHandler) (*receiver, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	r := &receiver{
		q:    q,
		rc:   rc,
		h:    h,
		msgs: make([]unix.Mmsghdr, rxBatch),
		iovs: make([]unix.Iovec, rxBatch),
		bufs: make([]byte, rxBatch*rxSlot),
		out:  make([]byte, 0, maxVerdictMsgs*payloadHdrLen),
		pkts: make([]outPacket, 0, maxVerdictMsgs),
		iov:  make([]unix.Iovec, 0, 3*maxVerdictMsgs+1),
	}
	r.after, _ = h.(afterVerdicts)
	n := int(q.cfg.MaxQueueLen)
	if n == 0 {
		n = DefaultMaxQueueLen
	}
	q.holds.init(n, rc)
	for i := range r.msgs {
		r.iovs[i].Base = &r.bufs[i*rxSlot]
		r.iovs[i].SetLen(rxSlot)
		r.msgs[i].Hdr.Iov = &r.iovs[i]
		r.msgs[i].Hdr.SetIovlen(1)
	}
	r.recvFn = r.recvmmsg
	r.sendFn = r.write
	return r, nil
}

// run receives and handles batches until the socket is closed. It returns
// nil when the queue is shutting down, the error otherwise.
func (r *receiver) run() error {
	for {
		err := r.receive()
		if err == nil {
			r.q.errStreak = 0
			r.handle()
			continue
		}
		if r.q.isStopping() {
			return nil
		}
		if r.q.receiveFailed(err) {
			return err
		}
	}
}

// receive reads the next batch: at least one message, waiting for it in
// the netpoller (not in the kernel), so that closing the socket ends the
// wait.
func (r *receiver) receive() error {
	r.n, r.errno = 0, 0
	if err := r.rc.Read(r.recvFn); err != nil {
		return err
	}
	if r.errno != 0 {
		return r.errno
	}
	return nil
}

// recvmmsg is the syscall.RawConn read function: false asks the netpoller
// to wait until the socket is readable.
//
// It is a raw system call, invisible to the Go scheduler: it never blocks
// (MSG_DONTWAIT) and only copies what is queued. Announced to the
// scheduler (syscall.Syscall), a call that takes longer than sysmon's 20 µs
// tick, like copying a batch, gets its P handed to another thread, and
// under a flood that is most calls: measured, sysmon's wake-ups and the
// hand-offs cost a third of the process's CPU (doc.go).
func (r *receiver) recvmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])),
			uintptr(len(r.msgs)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// handle hands the received batch to the handler and sends its verdicts.
func (r *receiver) handle() {
	if r.holding {
		r.refreshHolds()
	}
	for i := range r.n {
		m := &r.msgs[i]
		b := r.bufs[i*rxSlot : i*rxSlot+int(min(m.Len, rxSlot))]
		r.messages(b, m.Hdr.Flags&unix.MSG_TRUNC != 0)
	}
	r.h.Flush()
	r.closeRun()
	r.sendVerdicts()
	if r.after != nil {
		r.after.AfterVerdicts()
	}
	q := r.q
	if q.holds.earlyPending.Load() {
		// A Release raced with its handler's return of another verdict.
		q.holds.mu.Lock()
		if q.holds.early.set {
			q.discardEarly()
		}
		q.holds.mu.Unlock()
	}
	q.batches.Add(1)
	if r.received != 0 {
		q.received.Add(r.received)
		r.received = 0
	}
	if r.malformed != 0 {
		q.malformed.Add(r.malformed)
		r.malformed = 0
	}
	if r.held != 0 {
		q.heldTotal.Add(r.held)
		r.held = 0
	}
}

// refreshHolds updates holding and minHeld after releases.
func (r *receiver) refreshHolds() {
	h := &r.q.holds
	if h.count.Load() == 0 {
		r.holding = false
		return
	}
	h.mu.Lock()
	r.minHeld, r.holding = h.set.min()
	h.mu.Unlock()
}

// messages handles the netlink messages of one datagram. The kernel sends
// one packet message per datagram, but netlink allows several.
func (r *receiver) messages(b []byte, truncated bool) {
	for len(b) >= nlmsgHdrLen {
		l := int(nativeUint32(b[0:4]))
		typ := nativeUint16(b[4:6])
		if l < nlmsgHdrLen || l > len(b) {
			if truncated && typ == nfnlPacketMsg {
				// Cannot happen with rxSlot-sized buffers; should it,
				// the packet id is in the part we have.
				r.packet(b[nlmsgHdrLen:], true)
				return
			}
			r.malformed++
			r.q.logMalformed("netlink message with a bad length")
			return
		}
		switch typ {
		case nfnlPacketMsg:
			r.packet(b[nlmsgHdrLen:l], false)
		case nlmsgError:
			// Verdicts ask for no acknowledgement, so an error message is
			// the kernel rejecting one (ENOENT: an id it no longer holds).
			if l >= nlmsgHdrLen+4 {
				if errno := int32(nativeUint32(b[nlmsgHdrLen : nlmsgHdrLen+4])); errno != 0 {
					r.verdictRejected(syscall.Errno(-errno))
				}
			}
		case nlmsgNoop, nlmsgDone:
		}
		b = b[min(align4(l), len(b)):]
	}
	if len(b) > 0 {
		r.malformed++
		r.q.logMalformed("datagram shorter than a netlink header")
	}
}

// packet handles one packet message: body is the message after its
// netlink header.
func (r *receiver) packet(body []byte, truncated bool) {
	m := &r.msg
	parsePacketMsg(body, m)
	if !m.hasID {
		// Not a packet: nothing to give a verdict to.
		r.malformed++
		r.q.logMalformed("message without packet id")
		return
	}
	if !r.requeued {
		r.requeueSetup(m.id)
	}
	if truncated || len(m.payload) == 0 {
		// The engine cannot judge a packet it cannot see. It must still get
		// a verdict, or it holds a queue slot until the socket closes; the
		// operator's fail-open choice says which.
		r.malformed++
		r.q.logMalformed("packet without payload")
		v := nf.Drop
		if r.q.cfg.FailOpen {
			v = nf.Accept
		}
		r.verdict(m.id, v, nil)
		return
	}
	r.received++
	p := &r.pkt
	*p = Packet{ID: m.id, Payload: m.payload, Mark: m.mark, Hook: m.hook, InIndex: m.inDev, HwAddr: m.hwAddr}
	handling := &r.q.holds.handling
	handling.Store(handlingBit | uint64(m.id))
	v := r.h.Handle(p)
	p.Payload, p.HwAddr = nil, nil
	if v == nf.Hold {
		r.hold(m.id)
		return
	}
	handling.Store(0)
	r.verdict(m.id, v, m.payload)
}

// hold records that packet id is held, or sends the Release that came
// for it while its handler ran.
func (r *receiver) hold(id uint32) {
	q := r.q
	h := &q.holds
	h.mu.Lock()
	defer h.mu.Unlock()
	h.handling.Store(0)
	if h.early.set {
		if h.early.id == id {
			// After the verdicts before it, which go out first.
			r.closeRun()
			r.sendVerdicts()
			q.sendEarly()
			r.held++
			return
		}
		q.discardEarly()
	}
	if !h.set.add(id) {
		// More held than the kernel's queue holds: ids the kernel
		// dropped on its own that nobody released. Drop this one too.
		if ok, suppressed := q.releaseLog.allow(); ok {
			q.log.Warn().Uint32("id", id).Int("held", h.set.live).Uint64("suppressed", suppressed).Msg("too many packets held; dropping")
		}
		r.verdict(id, nf.Drop, nil)
		return
	}
	h.count.Store(int64(h.set.live))
	r.held++
	if !r.holding {
		r.holding, r.minHeld = true, id
	}
}

// requeueSetup re-queues the packets the setup filter kept back: every id
// before first, the first one delivered to us (see holdPacketsFilter). Its
// message goes out first, before any verdict that would cover those ids.
func (r *receiver) requeueSetup(first uint32) {
	r.requeued = true
	if first <= 1 {
		return
	}
	r.closeRun()
	r.appendVerdict(first-1, nfRepeat)
	r.q.log.Debug().Uint32("up_to_id", first-1).Msg("re-queueing packets kept back during setup")
}

// verdict records packet id's verdict; payload is the packet, which
// nf.AcceptRewritten sends back. Consecutive packets with the same verdict
// share one batch verdict message, unless they come after a held packet:
// then each has its own.
func (r *receiver) verdict(id uint32, v nf.Verdict, payload []byte) {
	kv := uint32(nfDrop)
	switch v {
	case nf.Accept:
		kv = nfAccept
	case nf.AcceptRewritten:
		r.closeRun()
		r.appendSingle(id, nfAccept, payload)
		return
	}
	if r.holding && after(id, r.minHeld) {
		r.closeRun()
		r.appendSingle(id, kv, nil)
		return
	}
	if r.runLen > 0 && kv == r.runVerdict {
		r.runID = id
		r.runLen++
		return
	}
	r.closeRun()
	r.runID, r.runVerdict, r.runLen = id, kv, 1
}

// closeRun turns the run being built into a verdict message. A batch
// verdict covers every packet up to its id that still waits: the ones of
// this run, because every earlier packet already has its verdict or is
// held after the run, and the kernel queues to us in id order.
func (r *receiver) closeRun() {
	if r.runLen == 0 {
		return
	}
	if r.runVerdict == nfAccept {
		r.outAccept += r.runLen
	} else {
		r.outDrop += r.runLen
	}
	r.appendVerdict(r.runID, r.runVerdict)
	r.runLen = 0
}

// appendVerdict adds a batch verdict message.
func (r *receiver) appendVerdict(id, verdict uint32) {
	r.room(verdictMsgLen, false)
	n := len(r.out)
	r.out = r.out[:n+verdictMsgLen]
	putVerdictBatch(r.out[n:], r.q.cfg.Queue, id, verdict)
	r.outBytes += verdictMsgLen
}

// appendSingle adds a verdict message for packet id alone, carrying
// packet unless it is nil, and counts it.
func (r *receiver) appendSingle(id, verdict uint32, packet []byte) {
	size, hdr := verdictMsgLen, verdictMsgLen
	if packet != nil {
		size, hdr = payloadHdrLen+align4(len(packet)), payloadHdrLen
	}
	r.room(size, packet != nil)
	n := len(r.out)
	r.out = r.out[:n+hdr]
	putVerdict(r.out[n:], r.q.cfg.Queue, id, verdict, len(packet))
	if packet != nil {
		r.pkts = append(r.pkts, outPacket{at: len(r.out), packet: packet})
		r.outRewritten++
	}
	r.outBytes += size
	if verdict == nfAccept {
		r.outAccept++
	} else {
		r.outDrop++
	}
}

// room sends the messages collected so far if a message of size bytes
// would not fit in this write.
func (r *receiver) room(size int, packet bool) {
	// More messages than packets in a batch only if a datagram carried
	// several packet messages.
	if len(r.out)+payloadHdrLen > cap(r.out) || r.outBytes+size > maxWrite ||
		packet && len(r.pkts) == cap(r.pkts) {
		r.sendVerdicts()
	}
}

// sendVerdicts writes the collected verdict messages in one go; the
// kernel handles them in order.
func (r *receiver) sendVerdicts() {
	if len(r.out) == 0 {
		return
	}
	if len(r.pkts) > 0 {
		r.gather()
	}
	r.sendErrno = 0
	err := r.rc.Write(r.sendFn)
	if err == nil && r.sendErrno != 0 {
		err = r.sendErrno
	}
	q := r.q
	if err != nil {
		q.verdictErrors.Add(r.outAccept + r.outDrop)
		if ok, suppressed := q.verdictLog.allow(); ok {
			q.log.Warn().Err(err).Uint64("packets", r.outAccept+r.outDrop).Uint64("suppressed", suppressed).Msg("sending verdicts failed")
		}
	} else {
		if r.outAccept != 0 {
			q.accepted.Add(r.outAccept)
		}
		if r.outDrop != 0 {
			q.dropped.Add(r.outDrop)
		}
		if r.outRewritten != 0 {
			q.holds.rewritten.Add(r.outRewritten)
		}
	}
	r.out, r.pkts, r.iov = r.out[:0], r.pkts[:0], r.iov[:0]
	r.outBytes, r.outAccept, r.outDrop, r.outRewritten = 0, 0, 0, 0
}

// gather lists the pieces of a write with packets in it: the messages in
// out, each packet after its header, and its padding.
func (r *receiver) gather() {
	prev := 0
	for _, p := range r.pkts {
		r.addIov(r.out[prev:p.at])
		r.addIov(p.packet)
		if pad := align4(len(p.packet)) - len(p.packet); pad > 0 {
			r.addIov(zeros[:pad])
		}
		prev = p.at
	}
	r.addIov(r.out[prev:])
}

func (r *receiver) addIov(b []byte) {
	if len(b) == 0 {
		return
	}
	r.iov = append(r.iov, unix.Iovec{Base: &b[0]})
	r.iov[len(r.iov)-1].SetLen(len(b))
}

// write is the syscall.RawConn write function. A netlink message to the
// kernel is handled within the system call, so it never waits for room,
// and is a raw system call like recvmmsg's. A write with packets in it
// gathers its pieces (writev).
func (r *receiver) write(fd uintptr) bool {
	for {
		var e syscall.Errno
		if len(r.iov) > 0 {
			_, _, e = unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&r.iov[0])), uintptr(len(r.iov)))
		} else {
			_, _, e = unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.out[0])), uintptr(len(r.out)))
		}
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.sendErrno = e
		return true
	}
}

// verdictRejected counts a verdict the kernel refused.
func (r *receiver) verdictRejected(errno syscall.Errno) {
	q := r.q
	q.verdictErrors.Add(1)
	if ok, suppressed := q.verdictLog.allow(); ok {
		q.log.Warn().Err(errno).Uint64("suppressed", suppressed).Msg("kernel rejected a verdict")
	}
}
