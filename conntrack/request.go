package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is the hot path of the hand-off: Create and Delete as
// hand-written ctnetlink requests, encoded into a buffer the Table keeps
// and sent on a plain blocking netlink socket, one write and one read
// each. ti-mo/conntrack builds the same messages with some 130
// allocations and three system calls; the dumps, which are not hot, still
// use it.

// ctnetlink's message types and attributes
// (linux/netfilter/nfnetlink_conntrack.h), as far as Create and Delete
// use them. nfnlSubsysCTNetlink and ipctnlMsgCTNew are in count.go.
const (
	ipctnlMsgCTDelete = 2

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaProtoInfo  = 4
	ctaTimeout    = 7
	// ctaMark is in count.go.
	ctaSeqAdjReply = 16

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaProtoInfoTCP = 1

	ctaProtoInfoTCPState          = 1
	ctaProtoInfoTCPWScaleOriginal = 2
	ctaProtoInfoTCPWScaleReply    = 3
	ctaProtoInfoTCPFlagsOriginal  = 4
	ctaProtoInfoTCPFlagsReply     = 5

	ctaSeqAdjCorrectionPos        = 1
	ctaSeqAdjOffsetBefore         = 2
	ctaSeqAdjOffsetAfter          = 3
	nlaNested                     = 0x8000 // NLA_F_NESTED
	nfnlHdrLen                    = 4      // struct nfgenmsg
	nlaHdrLen                     = 4      // struct nlattr
	createFlags                   = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK
	deleteFlags                   = unix.NLM_F_REQUEST | unix.NLM_F_ACK
	ctMsgNew               uint16 = nfnlSubsysCTNetlink<<8 | ipctnlMsgCTNew
	ctMsgDelete            uint16 = nfnlSubsysCTNetlink<<8 | ipctnlMsgCTDelete
)

// Buffer sizes. The largest request, an IPv6 create with an adjustment, is
// 272 bytes; a write carries up to MaxBatch of them. With NETLINK_CAP_ACK
// set, an ack is a header, an errno and the request's header, 36 bytes,
// one per datagram; the rest is slack.
const (
	reqBufSize  = 512
	respBufSize = 512
)

// MaxBatch is how many creates CreateBatch sends in one write.
const MaxBatch = 16

// entrySpec is a validated hand-off, everything its entry's request
// carries: see newEntry in handoff.go.
type entrySpec struct {
	client, server           netip.AddrPort // unmapped, same family
	timeout                  uint32         // seconds, non-zero
	mark                     uint32
	flags                    TCPFlags // both directions
	clientScale, serverScale uint8    // 0 without FlagWindowScale
	adj                      SeqAdjust
	hasAdj                   bool
}

// msgWriter appends netlink attributes to a buffer of fixed capacity. It
// never grows the buffer: a request that does not fit is a programming
// error, caught by the encoding tests.
type msgWriter struct {
	b []byte
}

func (w *msgWriter) put16(v uint16) { w.b = binary.NativeEndian.AppendUint16(w.b, v) }
func (w *msgWriter) put32(v uint32) { w.b = binary.NativeEndian.AppendUint32(w.b, v) }

// attr writes an attribute header for a payload of n bytes.
func (w *msgWriter) attr(typ uint16, n int) {
	w.put16(uint16(nlaHdrLen + n))
	w.put16(typ)
}

// pad aligns the buffer to NLA_ALIGNTO (4).
func (w *msgWriter) pad() {
	for len(w.b)%4 != 0 {
		w.b = append(w.b, 0)
	}
}

func (w *msgWriter) u8(typ uint16, v uint8) {
	w.attr(typ, 1)
	w.b = append(w.b, v)
	w.pad()
}

// be16 and be32 write integers in network byte order, as ctnetlink wants
// them. (NLA_F_NET_BYTEORDER is not set: the kernel ignores it and
// ti-mo/conntrack does not send it.)
func (w *msgWriter) be16(typ uint16, v uint16) {
	w.attr(typ, 2)
	w.b = binary.BigEndian.AppendUint16(w.b, v)
	w.pad()
}

func (w *msgWriter) be32(typ uint16, v uint32) {
	w.attr(typ, 4)
	w.b = binary.BigEndian.AppendUint32(w.b, v)
}

// nest opens a nested attribute; end closes it, filling in its length.
func (w *msgWriter) nest(typ uint16) int {
	at := len(w.b)
	w.attr(typ|nlaNested, 0)
	return at
}

func (w *msgWriter) end(at int) {
	binary.NativeEndian.PutUint16(w.b[at:], uint16(len(w.b)-at))
}

func (w *msgWriter) addr(typ uint16, a netip.Addr) {
	if a.Is4() {
		b := a.As4()
		w.attr(typ, 4)
		w.b = append(w.b, b[:]...)
		return
	}
	b := a.As16()
	w.attr(typ, 16)
	w.b = append(w.b, b[:]...)
}

// tuple writes CTA_TUPLE_ORIG or CTA_TUPLE_REPLY for a TCP flow src -> dst.
func (w *msgWriter) tuple(typ uint16, src, dst netip.AddrPort) {
	t := w.nest(typ)
	ip := w.nest(ctaTupleIP)
	if src.Addr().Is4() {
		w.addr(ctaIPv4Src, src.Addr())
		w.addr(ctaIPv4Dst, dst.Addr())
	} else {
		w.addr(ctaIPv6Src, src.Addr())
		w.addr(ctaIPv6Dst, dst.Addr())
	}
	w.end(ip)
	proto := w.nest(ctaTupleProto)
	w.u8(ctaProtoNum, unix.IPPROTO_TCP)
	w.be16(ctaProtoSrcPort, src.Port())
	w.be16(ctaProtoDstPort, dst.Port())
	w.end(proto)
	w.end(t)
}

// header starts a message: nlmsghdr (length filled in by finish) and
// nfgenmsg for the flow's family, version 0, resource 0.
func (w *msgWriter) header(typ, flags uint16, seq uint32, family uint8) int {
	at := len(w.b)
	w.put32(0)
	w.put16(typ)
	w.put16(flags)
	w.put32(seq)
	w.put32(0) // port id: the kernel's
	w.b = append(w.b, family, unix.NFNETLINK_V0, 0, 0)
	return at
}

func (w *msgWriter) finish(at int) {
	binary.NativeEndian.PutUint32(w.b[at:], uint32(len(w.b)-at))
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// appendCreate appends the IPCTNL_MSG_CT_NEW request for e, attributes in
// the order ti-mo/conntrack writes them.
func appendCreate(b []byte, seq uint32, e *entrySpec) []byte {
	w := msgWriter{b}
	m := w.header(ctMsgNew, createFlags, seq, family(e.client.Addr()))
	w.tuple(ctaTupleOrig, e.client, e.server)
	w.tuple(ctaTupleReply, e.server, e.client)
	w.be32(ctaTimeout, e.timeout)
	w.be32(ctaStatus, uint32(handoffStatus))
	w.be32(ctaMark, e.mark)

	pi := w.nest(ctaProtoInfo)
	tcp := w.nest(ctaProtoInfoTCP)
	w.u8(ctaProtoInfoTCPState, tcpEstablished)
	w.u8(ctaProtoInfoTCPWScaleOriginal, e.clientScale)
	w.u8(ctaProtoInfoTCPWScaleReply, e.serverScale)
	// struct nf_ct_tcp_flags {__u8 flags; __u8 mask;}
	w.be16(ctaProtoInfoTCPFlagsOriginal, packTCPFlags(e.flags, managedFlags))
	w.be16(ctaProtoInfoTCPFlagsReply, packTCPFlags(e.flags, managedFlags))
	w.end(tcp)
	w.end(pi)

	if e.hasAdj {
		adj := w.nest(ctaSeqAdjReply)
		w.be32(ctaSeqAdjCorrectionPos, e.adj.Position)
		w.be32(ctaSeqAdjOffsetBefore, e.adj.Before)
		w.be32(ctaSeqAdjOffsetAfter, e.adj.After)
		w.end(adj)
	}
	w.finish(m)
	return w.b
}

// appendDelete appends the IPCTNL_MSG_CT_DELETE request for the TCP entry
// client -> server (both unmapped, same family), both tuples given as
// ti-mo/conntrack gives them.
func appendDelete(b []byte, seq uint32, client, server netip.AddrPort) []byte {
	w := msgWriter{b}
	m := w.header(ctMsgDelete, deleteFlags, seq, family(client.Addr()))
	w.tuple(ctaTupleOrig, client, server)
	w.tuple(ctaTupleReply, server, client)
	w.finish(m)
	return w.b
}

// errShortAck reports a reply too short to be a netlink ack.
var errShortAck = errors.New("truncated netlink ack")

// parseAcks walks a datagram for the acks of requests first..last, sent
// together: each one's errno goes to errnos[seq-first] (0 for success),
// and done is true once the last request's ack was seen. Only the last
// request asks for an ack; an earlier one is answered only when it fails,
// and in order, so the last ack means all were done. Other messages (a
// late ack of an earlier request) are skipped.
func parseAcks(b []byte, first, last uint32, errnos []unix.Errno) (done bool, err error) {
	for len(b) >= nlmsgHdrLen {
		l := binary.NativeEndian.Uint32(b[0:4])
		if l < nlmsgHdrLen || uint64(l) > uint64(len(b)) {
			return false, errShortAck
		}
		seq := binary.NativeEndian.Uint32(b[8:12])
		if i := seq - first; binary.NativeEndian.Uint16(b[4:6]) == unix.NLMSG_ERROR && i <= last-first && int(i) < len(errnos) {
			if l < nlmsgHdrLen+4 {
				return false, errShortAck
			}
			errnos[i] = unix.Errno(-int32(binary.NativeEndian.Uint32(b[nlmsgHdrLen:])))
			if seq == last {
				return true, nil
			}
		}
		next := (int(l) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return false, nil
}

// openSocket opens a blocking NETLINK_NETFILTER socket in the calling
// thread's namespace. The send and receive timeouts are the request
// deadline: a read the kernel never answers fails with EAGAIN.
func openSocket(timeout time.Duration) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	for _, o := range []struct {
		name string
		set  func() error
	}{
		{"bind", func() error { return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}) }},
		// An error ack carries only the request's header, not the request.
		{"NETLINK_CAP_ACK", func() error { return unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1) }},
		{"SO_RCVTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) }},
		{"SO_SNDTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv) }},
	} {
		if err := o.set(); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("netlink socket: %s: %w", o.name, err)
		}
	}
	return fd, nil
}

// openSocketIn opens the socket in the namespace netns. Entering a
// namespace needs CAP_SYS_ADMIN, so that is done only when the calling
// thread is elsewhere, and then on a thread of its own that exits after.
func openSocketIn(netns int, timeout time.Duration) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	same, err := inNetNS(netns)
	if err != nil {
		return -1, err
	}
	if same {
		return openSocket(timeout)
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread leaves the namespace of the process,
		// so it ends with this goroutine.
		runtime.LockOSThread()
		if err := unix.Setns(netns, unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		fd, err := openSocket(timeout)
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// inNetNS reports whether the calling thread, locked, is in namespace netns.
func inNetNS(netns int) (bool, error) {
	var want, here unix.Stat_t
	if err := unix.Fstat(netns, &want); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &here); err != nil {
		return false, err
	}
	return want.Dev == here.Dev && want.Ino == here.Ino, nil
}

// roundTrip sends the requests first..last in t.req, the last of them
// asking for an ack, and waits for that ack, with t.mu held: one write,
// and one read unless a request fails or a signal interrupts the read.
// The errnos land in t.errnos[:last-first+1]. Requests the kernel does not
// answer before the socket's timeout close the socket, so a late ack
// cannot be taken for the next request's; the next request opens another
// in the Table's namespace.
func (t *Table) roundTrip(first, last uint32) error {
	errnos := t.errnos[:last-first+1]
	clear(errnos)
	if err := t.send(); err != nil {
		t.closeSocket()
		if err == unix.EAGAIN {
			return fmt.Errorf("%w after %v: %w", ErrTimeout, t.requestTimeout, err)
		}
		return err
	}
	var deadline time.Time // set at the first interrupted read
	for {
		n, err := t.receive()
		switch {
		case err == unix.EINTR:
			// A signal interrupts a read with a timeout whatever
			// SA_RESTART says (signal(7)); retry within the deadline.
			if deadline.IsZero() {
				deadline = time.Now().Add(t.requestTimeout)
			}
			if time.Now().Before(deadline) {
				continue
			}
			err = unix.EAGAIN
			fallthrough
		case err == unix.EAGAIN:
			t.closeSocket()
			return fmt.Errorf("%w after %v: %w", ErrTimeout, t.requestTimeout, err)
		case err != nil:
			t.closeSocket()
			return err
		}
		done, err := parseAcks(t.resp[:n], first, last, errnos)
		if err != nil {
			t.closeSocket()
			return err
		}
		if done {
			return nil
		}
	}
}

// prepare readies the socket for requests, with t.mu held, and returns
// the sequence number after which theirs follow.
func (t *Table) prepare() (uint32, error) {
	if t.closed {
		return 0, ErrClosed
	}
	if t.fd < 0 {
		fd, err := openSocketIn(t.netns, t.requestTimeout)
		if err != nil {
			return 0, fmt.Errorf("reopen ctnetlink socket: %w", err)
		}
		t.fd = fd
	}
	return t.seq, nil
}

// send writes t.req. The kernel handles ctnetlink requests within the
// write, acks included, so it is a raw system call the Go scheduler does
// not see: announced, the first system call after an idle spell wakes
// sysmon, which then polls every 20 µs while the hand-off runs, and on a
// virtual machine those wake-ups cost more than the request (nfq/doc.go).
// Only a full socket buffer makes it wait, announced, for room.
func (t *Table) send() error {
	p := unsafe.Pointer(&t.req[0])
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(t.fd), uintptr(p), uintptr(len(t.req)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		return nil
	case unix.EAGAIN:
		_, err := unix.Write(t.fd, t.req)
		return err
	}
	return e
}

// receive reads the next answers into t.resp: those already queued
// without announcing the call (see send), and otherwise waiting up to the
// socket's timeout.
func (t *Table) receive() (int, error) {
	p := unsafe.Pointer(&t.resp[0])
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(t.fd), uintptr(p), uintptr(len(t.resp)), unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		return int(n), nil
	case unix.EAGAIN:
		return unix.Read(t.fd, t.resp[:])
	}
	return 0, e
}

func (t *Table) closeSocket() {
	if t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
	}
}
