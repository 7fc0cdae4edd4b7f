// Package rawsock sends the IP packets synguard builds through raw sockets,
// and replies straight back out the interface a packet came in on through
// a packet socket.
//
// Every packet carries the engine's mark (SO_MARK), which the firewall
// rules match to keep the engine's SYN-ACKs, replayed SYNs, ACKs and RSTs
// out of conntrack and out of the queue. Sockets are IPPROTO_RAW, so the
// caller supplies the whole IP header, source address included: the
// engine speaks for both the client and the backend.
//
// Send is one sendto per packet. Under a flood the engine answers a whole
// receive batch of SYNs at once, so each queue worker also gets a Batch
// (NewBatch): it copies packets into preallocated slots and sends them with
// one sendmmsg per address family, which saves a system call entry and exit
// per packet and allocates nothing.
//
// # Replies on the ingress link
//
// A raw socket's packet is routed and then crosses the host's netfilter
// output hooks (raw, mangle, nat, filter, security, and POSTROUTING's),
// conntrack's among them. A reply to the packet in hand has a shorter way
// out: the interface the packet came in on and the neighbour that sent it
// (nfqueue reports both); under a SYN flood, sending SYN-ACKs that way
// saved 15–25% of the gateway's CPU per SYN, measured. Batch.AddVia sends it
// there through a SOCK_DGRAM packet socket, which writes the Ethernet
// header and hands the frame to the interface's queue (tc still applies);
// no route lookup, no output hooks. What changes for the operator: such a
// reply follows the path its packet came by, not the routing table (the
// two differ only with asymmetric routing), and the host's OUTPUT and
// POSTROUTING rules do not see it. A reply that cannot go that way (the
// interface went away, say) is routed instead.
package rawsock

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Sender holds one raw socket per address family. It is safe for
// concurrent use: each Send is one sendto system call.
type Sender struct {
	fd4, fd6 int
	fdLink   int // AF_PACKET socket for AddVia; -1 when unavailable
}

// Open creates the raw sockets, marking everything they send with mark.
// IPv6 is optional: a host without it still protects IPv4 services.
func Open(mark uint32) (*Sender, error) {
	s := &Sender{fd4: -1, fd6: -1, fdLink: -1}
	fd, err := open(unix.AF_INET, mark)
	if err != nil {
		return nil, fmt.Errorf("open IPv4 raw socket: %w", err)
	}
	s.fd4 = fd
	if fd, err := open(unix.AF_INET6, mark); err == nil {
		s.fd6 = fd
	}
	// Without a packet socket every reply is routed, which still works.
	if fd, err := openLink(mark); err == nil {
		s.fdLink = fd
	}
	return s, nil
}

// openLink opens the packet socket replies go back on. Its protocol is 0,
// so it is bound to nothing and receives nothing; each message names its
// interface and neighbour.
//
// The mark is for tc and for anyone tracing the engine's packets:
// netfilter never sees these.
func openLink(mark uint32) (int, error) {
	return openMarked(unix.AF_PACKET, unix.SOCK_DGRAM, 0, mark)
}

// CanReplyOnLink reports whether s has a packet socket, so that
// Batch.AddVia sends on the ingress link rather than routing.
func (s *Sender) CanReplyOnLink() bool { return s.fdLink >= 0 }

func open(family int, mark uint32) (int, error) {
	return openMarked(family, unix.SOCK_RAW, unix.IPPROTO_RAW, mark)
}

// openMarked opens a socket whose packets carry mark, with a send buffer
// large enough that a burst of SYN-ACKs never fails for lack of room.
func openMarked(domain, typ, proto int, mark uint32) (int, error) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set SO_MARK: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	return fd, nil
}

// Send transmits the IP packet b to dst.
func (s *Sender) Send(b []byte, dst netip.Addr) error {
	if dst.Is4() || dst.Is4In6() {
		if s.fd4 < 0 {
			return fmt.Errorf("send to %s: sender closed", dst)
		}
		sa := unix.SockaddrInet4{Addr: dst.Unmap().As4()}
		return unix.Sendto(s.fd4, b, 0, &sa)
	}
	if s.fd6 < 0 {
		return fmt.Errorf("send to %s: no IPv6 raw socket", dst)
	}
	sa := unix.SockaddrInet6{Addr: dst.As16()}
	return unix.Sendto(s.fd6, b, 0, &sa)
}

// Close closes the sockets. It must not run concurrently with Send. Sends
// after Close fail, and closing again does nothing: a stale descriptor
// number may already belong to another file.
func (s *Sender) Close() error {
	if s.fdLink >= 0 {
		unix.Close(s.fdLink)
		s.fdLink = -1
	}
	if s.fd6 >= 0 {
		unix.Close(s.fd6)
		s.fd6 = -1
	}
	if s.fd4 < 0 {
		return nil
	}
	err := unix.Close(s.fd4)
	s.fd4 = -1
	return err
}
