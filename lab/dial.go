package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// dial connects to target from inside ns (nil: the caller's namespace)
// and returns once the handshake is over, it failed or ctx is done.
//
// Only the socket is made inside ns: it keeps that namespace for its
// life, so the connect and the wait for it run on any thread. Dialing
// within ns.Do instead waited for the handshake on a thread locked to the
// goroutine, and the Go runtime woke that thread through another at every
// handshake: a hand-off between threads that a probe timed with the
// gateway, and that no client outside this lab pays.
func dial(ctx context.Context, ns *netns.NS, target netip.AddrPort) (net.Conn, error) {
	if ns == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", target.String())
	}
	family, sa := sockaddr(target)
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return os.NewSyscallError("socket", err)
	}); err != nil {
		return nil, dialError(target, err)
	}
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close() // FileConn holds its own duplicate
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return nil, dialError(target, os.NewSyscallError("connect", err))
	}
	fc, err := net.FileConn(f)
	if err != nil {
		return nil, dialError(target, err)
	}
	c, ok := fc.(*net.TCPConn)
	if !ok {
		fc.Close()
		return nil, dialError(target, fmt.Errorf("socket is a %T", fc))
	}
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Unix(1, 0)) })
	err = waitConnected(c)
	if !stop() {
		err = ctx.Err() // what moved the deadline
	}
	if err != nil {
		c.Close()
		return nil, dialError(target, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return &dialedConn{TCPConn: c, remote: net.TCPAddrFromAddrPort(target)}, nil
}

// waitConnected waits in the network poller until c's non-blocking
// connect ends, as the net package's own dialer does: a socket error ends
// it, a peer name means the handshake is over, and anything else is a
// wake-up before either.
func waitConnected(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var connErr error
	if err := rc.Write(func(fd uintptr) bool {
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			connErr = os.NewSyscallError("getsockopt", err)
		case soErr != 0:
			connErr = os.NewSyscallError("connect", unix.Errno(soErr))
		default:
			if _, err := unix.Getpeername(int(fd)); err != nil {
				return false // still connecting
			}
		}
		return true
	}); err != nil {
		return err
	}
	return connErr
}

func dialError(target netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(target), Err: err}
}

// dialedConn is a connection dial made: net.FileConn read its peer while
// the handshake was under way, when there was none to read.
type dialedConn struct {
	*net.TCPConn
	remote net.Addr
}

func (c *dialedConn) RemoteAddr() net.Addr { return c.remote }
