package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	ctnl "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/handoff"
)

var (
	// ErrTimeout reports that the kernel did not answer within the request
	// deadline. The request may still have taken effect.
	ErrTimeout = errors.New("ctnetlink request timed out")
	// ErrClosed reports use of a closed Table.
	ErrClosed = errors.New("conntrack table closed")
)

// Deadlines for one ctnetlink request.
const (
	// RequestTimeout bounds Create: a single message and its ack.
	RequestTimeout = 2 * time.Second
	// DumpTimeout bounds Lookup and Marked, which walk the whole table.
	DumpTimeout = 10 * time.Second
)

// Table creates entries in the kernel's connection tracking table over
// ctnetlink, in the network namespace Open was called in.
//
// A Table is safe for concurrent use. Requests are serialised on one netlink
// socket (the socket would serialise them anyway) and each is bounded by a
// deadline.
type Table struct {
	mu     sync.Mutex
	conn   *ctnl.Conn // for dumps; nil after a deadline expired: redialled on next use
	closed bool

	// Create and Delete's own socket and buffers (request.go).
	fd     int // -1 after a deadline expired: reopened on next use
	seq    uint32
	req    []byte // the requests being sent, in reqBuf
	reqBuf [MaxBatch * reqBufSize]byte
	resp   [respBufSize]byte
	errnos [MaxBatch]unix.Errno // of the requests sent

	netns          int           // fd of the namespace, to redial in it
	defaultTimeout time.Duration // for Handoff.Timeout 0

	requestTimeout, dumpTimeout time.Duration
}

// Open opens a ctnetlink socket in the calling thread's network namespace.
// A caller inside a namespace has its goroutine locked to the thread (as
// netns.NS.Do does); later calls may come from any goroutine.
//
// Open reads the namespace's nf_conntrack_tcp_timeout_established as the
// default hand-off timeout, falling back to DefaultTimeout.
func Open() (*Table, error) {
	// Keep the namespace handle, the sysctl and the socket on one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	ns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open table: network namespace: %w", err)
	}
	c, err := ctnl.Dial(nil)
	if err != nil {
		unix.Close(ns)
		return nil, fmt.Errorf("conntrack: open table: %w", err)
	}
	fd, err := openSocket(RequestTimeout)
	if err != nil {
		c.Close()
		unix.Close(ns)
		return nil, fmt.Errorf("conntrack: open table: %w", err)
	}
	return &Table{
		conn:           c,
		fd:             fd,
		netns:          ns,
		defaultTimeout: establishedTimeout(),
		requestTimeout: RequestTimeout,
		dumpTimeout:    DumpTimeout,
	}, nil
}

// establishedTimeout returns the calling thread's namespace's timeout for
// established TCP flows: what the kernel itself sets when it sees a
// handshake complete.
func establishedTimeout() time.Duration {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
	if err != nil {
		return DefaultTimeout
	}
	s, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil || s == 0 {
		return DefaultTimeout
	}
	return time.Duration(s) * time.Second
}

// Close closes the socket. It waits for a request in progress, which its
// deadline bounds.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var err error
	if t.conn != nil {
		err = t.conn.Close()
		t.conn = nil
	}
	t.closeSocket()
	unix.Close(t.netns)
	return err
}

// Create creates the kernel entry for a handed-off flow: ESTABLISHED,
// SEEN_REPLY|ASSURED|CONFIRMED, liberal window tracking with the negotiated
// window scales, the hand-off mark, and the reply-direction sequence
// adjustment from ServerISN to CookieISN.
//
// An entry that already exists yields an error matching handoff.ErrExists; a kernel
// that does not answer within RequestTimeout one matching ErrTimeout.
// Create allocates nothing unless it fails.
func (t *Table) Create(h handoff.Flow) error {
	e, err := newEntry(h, t.defaultTimeout)
	if err == nil {
		entries := [1]entrySpec{e}
		var errnos [1]unix.Errno
		if err = t.creates(entries[:], errnos[:]); err == nil && errnos[0] != 0 {
			err = errnos[0]
		}
	}
	return createError(h, err)
}

// createError wraps the error of h's create, nil for none.
func createError(h handoff.Flow, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) {
		err = fmt.Errorf("%w: %w", handoff.ErrExists, err)
	}
	return fmt.Errorf("create conntrack entry %s -> %s: %w", h.Client, h.Server, err)
}

// CreateBatch creates the entries of flows as Create does, up to MaxBatch
// of them in one write and, when none fails, one read: errs[i] (len(errs)
// must be at least len(flows)) is what Create would have returned for
// flows[i]. It allocates nothing unless a create fails. The kernel makes
// the entries in order, each independently of the others' outcome.
func (t *Table) CreateBatch(flows []handoff.Flow, errs []error) {
	errs = errs[:len(flows)]
	for len(flows) > 0 {
		n := min(len(flows), MaxBatch)
		t.createBatch(flows[:n], errs[:n])
		flows, errs = flows[n:], errs[n:]
	}
}

func (t *Table) createBatch(flows []handoff.Flow, errs []error) {
	var (
		entries [MaxBatch]entrySpec
		of      [MaxBatch]int // flows index of each entry
		n       int
	)
	for i, h := range flows {
		e, err := newEntry(h, t.defaultTimeout)
		errs[i] = createError(h, err)
		if err == nil {
			entries[n], of[n] = e, i
			n++
		}
	}
	if n == 0 {
		return
	}
	var errnos [MaxBatch]unix.Errno
	err := t.creates(entries[:n], errnos[:n])
	for j := range n {
		i := of[j]
		switch {
		case errnos[j] != 0:
			errs[i] = createError(flows[i], errnos[j])
		case err != nil:
			errs[i] = createError(flows[i], err)
		}
	}
}

// creates sends the creates of entries (one, or a batch) in one write,
// only the last asking for an ack, and returns each one's errno in errnos.
func (t *Table) creates(entries []entrySpec, errnos []unix.Errno) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	base, err := t.prepare()
	if err != nil {
		return err
	}
	first, last := base+1, base+uint32(len(entries))
	t.seq = last
	b := t.reqBuf[:0]
	for j := range entries {
		at := len(b)
		b = appendCreate(b, first+uint32(j), &entries[j])
		if j < len(entries)-1 {
			// A create that succeeds silently; one that fails is answered.
			binary.NativeEndian.PutUint16(b[at+6:], createFlags&^unix.NLM_F_ACK)
		}
	}
	t.req = b
	err = t.roundTrip(first, last)
	copy(errnos, t.errnos[:len(entries)])
	return err
}

// Delete removes the TCP entry whose original direction is client -> server.
// The engine uses it when a client reuses the ports of a flow whose entry
// the kernel still keeps (TIME_WAIT lasts two minutes): the old entry, with
// its sequence adjustment, must give way to the new flow's. A missing
// entry is reported as handoff.ErrNotFound.
func (t *Table) Delete(client, server netip.AddrPort) error {
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	err := t.delete(client, server)
	if errors.Is(err, unix.ENOENT) {
		err = fmt.Errorf("%w: %w", handoff.ErrNotFound, err)
	}
	if err != nil {
		return fmt.Errorf("delete conntrack entry %s -> %s: %w", client, server, err)
	}
	return nil
}

func (t *Table) delete(client, server netip.AddrPort) error {
	if !client.Addr().IsValid() || client.Addr().Is4() != server.Addr().Is4() {
		return errors.New("client and server must be addresses of one family")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	seq, err := t.prepare()
	if err != nil {
		return err
	}
	seq++
	t.seq = seq
	t.req = appendDelete(t.reqBuf[:0], seq, client, server)
	if err := t.roundTrip(seq, seq); err != nil {
		return err
	}
	if errno := t.errnos[0]; errno != 0 {
		return errno
	}
	return nil
}

// Lookup finds the TCP entry whose original direction is client -> server by
// dumping the table's entries of that address family and filtering them;
// ok is false when there is none. A dump walks the whole table: Lookup is
// for tests and diagnostics, not for a hot path. (A Get of the one entry
// would be cheaper but never returns with mdlayher/netlink v1.11.2: the
// kernel's reply is flagged multi-part and ends with an ack, not DONE.)
func (t *Table) Lookup(client, server netip.AddrPort) (Entry, bool, error) {
	client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	family := netfilter.ProtoIPv4
	if client.Addr().Is6() {
		family = netfilter.ProtoIPv6
	}
	flows, err := t.dump(ctnl.NewFilter().Family(family))
	if err != nil {
		return Entry{}, false, fmt.Errorf("look up conntrack entry %s -> %s: %w", client, server, err)
	}
	for _, f := range flows {
		if !isTCP(f) {
			continue
		}
		o := f.TupleOrig
		if o.IP.SourceAddress == client.Addr() && o.Proto.SourcePort == client.Port() &&
			o.IP.DestinationAddress == server.Addr() && o.Proto.DestinationPort == server.Port() {
			return entryFromFlow(f), true, nil
		}
	}
	return Entry{}, false, nil
}

// Marked returns the TCP entries, IPv4 and IPv6, whose connmark equals mark:
// with the hand-off mark, the flows handed to the kernel that are still alive.
// The kernel does the filtering.
func (t *Table) Marked(mark uint32) ([]Entry, error) {
	flows, err := t.dump(ctnl.NewFilter().Mark(mark).MarkMask(^uint32(0)))
	if err != nil {
		return nil, fmt.Errorf("list conntrack entries with mark %#x: %w", mark, err)
	}
	var entries []Entry
	for _, f := range flows {
		if isTCP(f) && f.Mark == mark {
			entries = append(entries, entryFromFlow(f))
		}
	}
	return entries, nil
}

func (t *Table) dump(filter ctnl.Filter) ([]ctnl.Flow, error) {
	var flows []ctnl.Flow
	err := t.do(t.dumpTimeout, func(c *ctnl.Conn) error {
		var err error
		flows, err = c.DumpFilter(filter, nil)
		return err
	})
	return flows, err
}

// do runs one request on the socket with a deadline. ti-mo/conntrack does
// not expose the socket's deadline, so the deadline closes the socket, which
// interrupts a blocked read; the next request opens a new one in the same
// namespace.
func (t *Table) do(timeout time.Duration, req func(*ctnl.Conn) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if t.conn == nil {
		c, err := t.redial()
		if err != nil {
			return fmt.Errorf("reopen ctnetlink socket: %w", err)
		}
		t.conn = c
	}

	c := t.conn
	deadline := time.AfterFunc(timeout, func() { c.Close() })
	err := req(c)
	if deadline.Stop() {
		return err
	}
	// The deadline fired and closed the socket, perhaps just after the reply
	// arrived: a successful request stays successful.
	t.conn = nil
	if err != nil {
		return fmt.Errorf("%w after %v: %w", ErrTimeout, timeout, err)
	}
	return nil
}

// redial opens a socket in the Table's namespace. Entering a namespace needs
// CAP_SYS_ADMIN, so that is only done when the calling thread is elsewhere.
func (t *Table) redial() (*ctnl.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	var want, here unix.Stat_t
	if err := unix.Fstat(t.netns, &want); err != nil {
		return nil, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &here); err != nil {
		return nil, err
	}
	cfg := &netlink.Config{}
	if want.Dev != here.Dev || want.Ino != here.Ino {
		cfg.NetNS = t.netns
	}
	return ctnl.Dial(cfg)
}
