package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// CountTimeout bounds one Count: the dump of the whole table the kernel
// walks to find the marked entries.
const CountTimeout = 5 * time.Second

// ctnetlink's numbers (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h).
const (
	nfnlSubsysCTNetlink = 1
	ipctnlMsgCTNew      = 0
	ipctnlMsgCTGet      = 1
	ctaMark             = 8
	ctaMarkMask         = 21

	nlmsgHdrLen = 16
	// countBufSize holds any datagram of a dump: the kernel sizes them by
	// the reader's largest read, capped at 32 KiB.
	countBufSize = 64 << 10
)

// Counter counts the kernel's conntrack entries that carry a connmark: with
// the hand-off mark, the flows synguard handed off that are still alive, and
// on a standby gateway the ones conntrackd copied there.
//
// A count is one ctnetlink dump the kernel filters by mark. The reply is read
// into one buffer the Counter keeps and only its message headers are walked,
// so a count allocates nothing per entry however many there are; its cost is
// the kernel's walk of the table, bounded by CountTimeout. A Counter is safe
// for concurrent use; counts are serialised.
type Counter struct {
	mu      sync.Mutex
	conn    *netlink.Conn // nil after a failed count: redialled in netns
	closed  bool
	netns   int // fd of the namespace, to redial in it
	buf     []byte
	timeout time.Duration
}

// OpenCounter opens a ctnetlink socket in the calling thread's network
// namespace, as Open does.
func OpenCounter() (*Counter, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open counter: network namespace: %w", err)
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		unix.Close(ns)
		return nil, fmt.Errorf("conntrack: open counter: %w", err)
	}
	return &Counter{conn: c, netns: ns, buf: make([]byte, countBufSize), timeout: CountTimeout}, nil
}

// Close closes the socket, waiting for a count in progress.
func (c *Counter) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var err error
	if c.conn != nil {
		err = c.conn.Close()
		c.conn = nil
	}
	unix.Close(c.netns)
	return err
}

// Count returns how many entries, IPv4 and IPv6, of any protocol, have
// connmark mark (all 32 bits). An entry created or destroyed during the
// count may or may not be counted.
func (c *Counter) Count(mark uint32) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, ErrClosed
	}
	if c.conn == nil {
		conn, err := c.redial()
		if err != nil {
			return 0, fmt.Errorf("count conntrack entries: reopen ctnetlink socket: %w", err)
		}
		c.conn = conn
	}
	n, err := c.count(mark)
	if err != nil {
		// A dump left half read would make the next request EBUSY: start
		// over on a new socket.
		c.conn.Close()
		c.conn = nil
		return 0, fmt.Errorf("count conntrack entries with mark %#x: %w", mark, err)
	}
	return n, nil
}

func (c *Counter) count(mark uint32) (int, error) {
	// nfgenmsg (AF_UNSPEC: both families, version 0, resource 0), then
	// CTA_MARK and CTA_MARK_MASK, big-endian as ctnetlink wants them.
	var req [4 + 8 + 8]byte
	binary.NativeEndian.PutUint16(req[4:], 8)
	binary.NativeEndian.PutUint16(req[6:], ctaMark)
	binary.BigEndian.PutUint32(req[8:], mark)
	binary.NativeEndian.PutUint16(req[12:], 8)
	binary.NativeEndian.PutUint16(req[14:], ctaMarkMask)
	binary.BigEndian.PutUint32(req[16:], ^uint32(0))

	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	sent, err := c.conn.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysCTNetlink<<8 | ipctnlMsgCTGet),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: req[:],
	})
	if err != nil {
		return 0, err
	}
	rc, err := c.conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		n    int
		rerr error
	)
	// One closure for the whole dump: a read per datagram allocates nothing.
	read := func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), c.buf)
		return rerr != unix.EAGAIN
	}
	count := 0
	for {
		err := rc.Read(read)
		if err == nil {
			err = rerr
		}
		if err != nil {
			return 0, err
		}
		done, got, err := countMessages(c.buf[:n], sent.Header.Sequence)
		if err != nil {
			return 0, err
		}
		count += got
		if done {
			return count, nil
		}
	}
}

// countMessages walks one datagram of a dump reply to request seq: the
// conntrack entries it carries, and whether it ends the dump. Messages of
// another sequence number are skipped.
func countMessages(b []byte, seq uint32) (done bool, n int, err error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return false, 0, fmt.Errorf("truncated netlink header (%d bytes)", len(b))
		}
		l := binary.NativeEndian.Uint32(b[0:4])
		typ := binary.NativeEndian.Uint16(b[4:6])
		if l < nlmsgHdrLen || uint64(l) > uint64(len(b)) {
			return false, 0, fmt.Errorf("netlink message length %d in a %d-byte datagram", l, len(b))
		}
		if binary.NativeEndian.Uint32(b[8:12]) == seq {
			switch typ {
			case unix.NLMSG_DONE:
				return true, n, nil
			case unix.NLMSG_ERROR:
				if l < nlmsgHdrLen+4 {
					return false, 0, errors.New("truncated netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(b[nlmsgHdrLen:])); e != 0 {
					return false, 0, syscall.Errno(-e)
				}
			case nfnlSubsysCTNetlink<<8 | ipctnlMsgCTNew:
				n++
			}
		}
		next := (int(l) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return false, n, nil
}

// redial opens a socket in the Counter's namespace, entering it only when
// the calling thread is elsewhere (as Table.redial does).
func (c *Counter) redial() (*netlink.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var want, here unix.Stat_t
	if err := unix.Fstat(c.netns, &want); err != nil {
		return nil, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &here); err != nil {
		return nil, err
	}
	cfg := &netlink.Config{}
	if want.Dev != here.Dev || want.Ino != here.Ino {
		cfg.NetNS = c.netns
	}
	return netlink.Dial(unix.NETLINK_NETFILTER, cfg)
}
