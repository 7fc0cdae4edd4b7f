package rawsock

import (
	"errors"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch sizes.
const (
	// BatchSize is how many packets of each address family a Batch holds:
	// one nfq receive batch's worth of replies.
	BatchSize = 64

	// SlotSize is the size of a Batch's fixed packet slots. The engine's
	// packets are nearly all handshake segments (packet.MaxHandshakeLen);
	// a larger one (a client's early data, sent on) takes a spare buffer
	// of its slot's, made when first needed and kept.
	SlotSize = 128

	// MaxPacketSize is the largest packet a Batch takes: an IPv4 packet's
	// largest total length.
	MaxPacketSize = 0xffff
)

// Batch collects packets and sends them with sendmmsg. It is used by one
// goroutine; every Batch of a Sender shares the Sender's sockets.
type Batch struct {
	s      *Sender
	v4, v6 family
	link   linkFamily
	n      int // packets added since the last Flush, all families
}

// linkFamily is the part of a Batch sent on ingress links (AddVia): packet
// slots, each with its interface and neighbour, and its destination for
// the routed fallback.
type linkFamily struct {
	fd int
	packets
	msgs  [BatchSize]unix.Mmsghdr
	sll   [BatchSize]unix.RawSockaddrLinklayer
	dst   [BatchSize]netip.Addr
	index [BatchSize]int
	n     int
}

// family is the part of a Batch sent through one socket: packet slots,
// their destinations and the message headers pointing at both.
type family struct {
	fd int
	packets
	msgs  [BatchSize]unix.Mmsghdr
	sa4   [BatchSize]unix.RawSockaddrInet4
	sa6   [BatchSize]unix.RawSockaddrInet6
	index [BatchSize]int // each message's index among all packets added
	n     int
}

// packets holds the copies of a family's packets, one per message: in its
// fixed slot, or, larger than SlotSize, in the slot's spare buffer.
type packets struct {
	slots [BatchSize][SlotSize]byte
	spare [BatchSize][]byte
	iovs  [BatchSize]unix.Iovec
}

// put copies p, 1 to MaxPacketSize bytes, into slot i and points the
// slot's iovec at the copy.
func (s *packets) put(i int, p []byte) {
	buf := s.slots[i][:]
	if len(p) > SlotSize {
		s.spare[i] = append(s.spare[i][:0], p...)
		buf = s.spare[i]
	} else {
		copy(buf, p)
	}
	s.iovs[i].Base = &buf[0]
	s.iovs[i].SetLen(len(p))
}

// packet is the copy in slot i.
func (s *packets) packet(i int) []byte {
	return unsafe.Slice(s.iovs[i].Base, s.iovs[i].Len)
}

// fits reports whether a packet of n bytes can be put.
func fits(n int) bool { return n > 0 && n <= MaxPacketSize }

// NewBatch returns a Batch that sends through s's sockets.
func (s *Sender) NewBatch() *Batch {
	b := &Batch{s: s}
	b.v4.init(s.fd4, false)
	b.v6.init(s.fd6, true)
	b.link.fd = s.fdLink
	for i := range b.link.msgs {
		h := &b.link.msgs[i].Hdr
		h.Iov = &b.link.iovs[i]
		h.SetIovlen(1)
		b.link.sll[i].Family = unix.AF_PACKET
		b.link.sll[i].Halen = 6
		h.Name = (*byte)(unsafe.Pointer(&b.link.sll[i]))
		h.Namelen = unix.SizeofSockaddrLinklayer
	}
	return b
}

func (f *family) init(fd int, v6 bool) {
	f.fd = fd
	for i := range f.msgs {
		h := &f.msgs[i].Hdr
		h.Iov = &f.iovs[i]
		h.SetIovlen(1)
		if v6 {
			f.sa6[i].Family = unix.AF_INET6
			h.Name = (*byte)(unsafe.Pointer(&f.sa6[i]))
			h.Namelen = unix.SizeofSockaddrInet6
		} else {
			f.sa4[i].Family = unix.AF_INET
			h.Name = (*byte)(unsafe.Pointer(&f.sa4[i]))
			h.Namelen = unix.SizeofSockaddrInet4
		}
	}
}

// Add queues a copy of the IP packet p for dst. It reports false when the
// family's half of the batch is full, when p is empty or larger than
// MaxPacketSize, or for IPv6 without an IPv6 socket.
func (b *Batch) Add(p []byte, dst netip.Addr) bool {
	if !fits(len(p)) {
		return false
	}
	f := &b.v4
	if !dst.Is4() && !dst.Is4In6() {
		f = &b.v6
		if f.fd < 0 {
			return false
		}
	}
	if f.n == BatchSize {
		return false
	}
	i := f.n
	f.put(i, p)
	if f == &b.v4 {
		f.sa4[i].Addr = dst.Unmap().As4()
	} else {
		f.sa6[i].Addr = dst.As16()
	}
	f.index[i] = b.n
	f.n++
	b.n++
	return true
}

// AddVia queues a copy of the IP packet p for dst, to be sent on link: a
// reply to the packet that arrived there (see the package doc). Without a
// packet socket it is Add. It reports false when the batch cannot take p,
// as Add does.
func (b *Batch) AddVia(p []byte, dst netip.Addr, link Link) bool {
	f := &b.link
	if f.fd < 0 || !link.IsValid() {
		return b.Add(p, dst)
	}
	if !fits(len(p)) || f.n == BatchSize {
		return false
	}
	i := f.n
	f.put(i, p)
	sa := &f.sll[i]
	sa.Protocol = ethertype(dst)
	sa.Ifindex = link.index
	copy(sa.Addr[:], link.addr[:])
	f.dst[i] = dst
	f.index[i] = b.n
	f.n++
	b.n++
	return true
}

// Flush sends the queued packets, those for ingress links first, then
// IPv4, then IPv6, and empties the batch. A packet the kernel refuses is
// reported to failed (with its index in Add order) and skipped; the rest
// are sent. A packet its link refuses is routed instead, and reported
// only if that fails too.
func (b *Batch) Flush(failed func(i int, err error)) {
	b.link.flush(b.s, failed)
	b.v4.flush(failed)
	b.v6.flush(failed)
	b.n = 0
}

func (f *family) flush(failed func(int, error)) {
	for off := 0; off < f.n; {
		sent, err := SendMmsg(f.fd, f.msgs[off:f.n])
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			// sendmmsg reports an error only for the first message it
			// tried; skip that one and send the rest.
			if failed != nil {
				failed(f.index[off], err)
			}
			off++
		default:
			off += sent
		}
	}
	f.n = 0
}

func (f *linkFamily) flush(s *Sender, failed func(int, error)) {
	for off := 0; off < f.n; {
		sent, err := SendMmsg(f.fd, f.msgs[off:f.n])
		switch {
		case errors.Is(err, unix.EINTR):
		case err != nil:
			// The interface is gone or down, or the packet does not fit
			// its MTU: the routing table still knows a way.
			if err := s.Send(f.packet(off), f.dst[off]); err != nil && failed != nil {
				failed(f.index[off], err)
			}
			off++
		default:
			off += sent
		}
	}
	f.n = 0
}

// SendMmsg sends msgs on fd, as many as the socket takes. It tries first
// without blocking, as a raw system call the Go scheduler does not see: a
// batch takes longer than sysmon's 20 µs tick, and an announced system
// call that long gets its P handed to another thread, which under a flood
// costs more than the sends themselves (nfq/doc.go). Only when the socket
// buffer is full does it wait, announced, for room.
func SendMmsg(fd int, msgs []unix.Mmsghdr) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	if errno == unix.EAGAIN {
		n, _, errno = unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
