package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// Capture receives copies of the IP packets crossing one interface, in
// both directions, from an AF_PACKET socket: what a test or a scenario
// checks on the wire. One goroutine reads at a time; Close it once reading
// has stopped.
type Capture struct {
	fd int
}

// captureBuffer is the capture socket's receive buffer, enough for tens of
// thousands of handshake packets between reads.
const captureBuffer = 32 << 20

// OpenCapture starts capturing on iface in ns (nil: the caller's namespace).
func OpenCapture(ns *netns.NS, iface string) (*Capture, error) {
	c := &Capture{fd: -1}
	err := do(ns, func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		// Protocol 0 receives nothing; bind below starts the capture on
		// iface alone. Opened with ETH_P_ALL, the socket would take every
		// interface's packets until bound.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureBuffer); err != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, captureBuffer)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	return c, nil
}

// ErrCaptureTimeout is returned by Read when nothing arrived in time.
var ErrCaptureTimeout = errors.New("capture: timeout")

// Read waits up to timeout for the next packet, copies its IP packet into
// b and returns its length and whether the interface sent (rather than
// received) it.
func (c *Capture) Read(b []byte, timeout time.Duration) (n int, outgoing bool, err error) {
	tv := unix.NsecToTimeval(max(timeout, time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, false, err
	}
	for {
		n, from, err := unix.Recvfrom(c.fd, b, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return 0, false, ErrCaptureTimeout
		case err != nil:
			return 0, false, err
		}
		ll, _ := from.(*unix.SockaddrLinklayer)
		return n, ll != nil && ll.Pkttype == unix.PACKET_OUTGOING, nil
	}
}

// Close stops the capture.
func (c *Capture) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// htons converts v to network byte order, as AF_PACKET wants protocols.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
