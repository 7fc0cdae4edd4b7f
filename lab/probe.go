package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// ProbeBytes is the body length a Probe asks for.
const ProbeBytes = 1024

// DefaultProbeTimeout bounds a Probe given no timeout.
const DefaultProbeTimeout = 5 * time.Second

var probeSum = sync.OnceValue(func() [32]byte { return ContentSHA256(ProbeBytes) })

// ProbeResult is one legitimate client's experience.
type ProbeResult struct {
	OK        bool
	Err       error
	Handshake time.Duration // connect() until established (or failure)
	// FirstByte is connect() until the first byte of the response
	// arrived: the time to first byte a user waits for; 0 when none did.
	FirstByte time.Duration
	Total     time.Duration // connect() until the body was read and checked
	Bytes     int64         // body bytes received
	// SYNRetransmits is how many times the client's kernel sent its SYN
	// again before the handshake completed: each one a SYN or SYN-ACK
	// lost on the way, which costs the client its retransmission timeout
	// (1 s for the first). It is tcpi_total_retrans read from TCP_INFO
	// right after connect(), before anything else was sent. Where that
	// cannot be read (the connect failed, so there is no socket to ask),
	// it is the retransmissions the kernel's timer must have made in the
	// time the handshake lasted (SYNRetransmitsWithin).
	SYNRetransmits int
}

// initialSYNRTO is Linux's retransmission timeout for a SYN (TCP_TIMEOUT_INIT):
// a connect() not answered within it sends the SYN again, then after
// twice as long, and so on.
const initialSYNRTO = time.Second

// SYNRetransmitsWithin is how many SYN retransmissions a connect() that
// lasted d without an answer has made: one at 1 s, a second at 3 s, a
// third at 7 s, ...: the evidence left when TCP_INFO cannot be read. It
// is 0 below 1 s.
func SYNRetransmitsWithin(d time.Duration) int {
	n := 0
	for rto, at := initialSYNRTO, initialSYNRTO; at <= d; rto, at = 2*rto, at+2*rto {
		n++
	}
	return n
}

// Probe connects to target from inside ns (nil: the caller's namespace),
// timing the TCP handshake, then sends GET /bytes/ProbeBytes, times the
// response's first byte, reads the body and checks its length and
// content; it notes whether its SYN had to be sent again. Everything is
// bounded by timeout (DefaultProbeTimeout when not positive) and ctx.
func Probe(ctx context.Context, ns *netns.NS, target netip.AddrPort, timeout time.Duration) ProbeResult {
	return probe(ctx, ns, target, timeout, probeRequest)
}

// probe connects as Probe does and hands the connection to exchange,
// which returns the bytes it received and whether they were right; its
// I/O is bounded by ctx's deadline and ended by ctx's cancellation.
func probe(ctx context.Context, ns *netns.NS, target netip.AddrPort, timeout time.Duration,
	exchange func(net.Conn, netip.AddrPort) (int64, error)) ProbeResult {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var r ProbeResult
	start := time.Now()
	conn, err := dial(ctx, ns, target)
	r.Handshake = time.Since(start)
	if err != nil {
		r.Err = fmt.Errorf("connect %s: %w", target, err)
		r.Total = r.Handshake
		r.SYNRetransmits = SYNRetransmitsWithin(r.Handshake)
		return r
	}
	defer conn.Close()
	if r.SYNRetransmits, err = synRetransmits(conn); err != nil {
		r.SYNRetransmits = SYNRetransmitsWithin(r.Handshake)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	// Cancellation interrupts blocked I/O by moving the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fb := &firstByteConn{Conn: conn}
	r.Bytes, r.Err = exchange(fb, target)
	r.Total = time.Since(start)
	if !fb.first.IsZero() {
		r.FirstByte = fb.first.Sub(start)
	}
	r.OK = r.Err == nil
	return r
}

// synRetransmits reads how often a just-connected socket's SYN was
// retransmitted: tcpi_total_retrans counts every retransmitted segment of
// the connection, and before the first write the SYN is the only one
// there has been.
func synRetransmits(conn net.Conn) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, fmt.Errorf("%T is not a socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		info   *unix.TCPInfo
		optErr error
	)
	if err := raw.Control(func(fd uintptr) {
		info, optErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if optErr != nil {
		return 0, fmt.Errorf("TCP_INFO: %w", optErr)
	}
	return int(info.Total_retrans), nil
}

func probeRequest(conn net.Conn, target netip.AddrPort) (int64, error) {
	req := "GET /bytes/" + strconv.Itoa(ProbeBytes) + " HTTP/1.1\r\nHost: " + target.String() +
		"\r\nUser-Agent: synguard-probe\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, fmt.Errorf("send request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return n, fmt.Errorf("read body: %w", err)
	}
	if n != ProbeBytes {
		return n, fmt.Errorf("body has %d bytes, want %d", n, ProbeBytes)
	}
	want := probeSum()
	if string(h.Sum(nil)) != string(want[:]) {
		return n, errors.New("body content differs from the expected stream")
	}
	return n, nil
}

// firstByteConn notes when the first byte was read from it.
type firstByteConn struct {
	net.Conn
	first time.Time
}

func (c *firstByteConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.first.IsZero() {
		c.first = time.Now()
	}
	return n, err
}

// Download fetches GET /bytes/n from target from inside ns (nil: the
// caller's namespace) and returns the body's SHA-256 and length. It is an
// error when the status is not 200 or the length is not n; the checksum is
// for the caller to compare with ContentSHA256(n).
func Download(ctx context.Context, ns *netns.NS, target netip.AddrPort, n int64) ([32]byte, int64, error) {
	var sum [32]byte
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, ns, target)
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := "http://" + target.String() + "/bytes/" + strconv.FormatInt(n, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return sum, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return sum, 0, fmt.Errorf("download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sum, 0, fmt.Errorf("download %s: status %s", url, resp.Status)
	}
	h := sha256.New()
	got, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
	h.Sum(sum[:0])
	if err != nil {
		return sum, got, fmt.Errorf("download %s: after %d bytes: %w", url, got, err)
	}
	if got != n {
		return sum, got, fmt.Errorf("download %s: got %d bytes, want %d", url, got, n)
	}
	return sum, got, nil
}
