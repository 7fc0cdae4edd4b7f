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
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/lab/netns"
)

// PacedDownload fetches GET /bytes/Size at Rate bytes per second: slow
// enough to be under way when something happens to its flow (its gateway
// dies), and, with a small receive buffer, slow at the backend too, so
// the whole body crosses the gateways while it runs rather than sitting in
// the client's buffer. Its progress can be read while it runs.
type PacedDownload struct {
	Size int64
	Rate int64 // bytes per second
	// Stall fails the download when one read waits longer; 0 means 30 s.
	Stall time.Duration

	received atomic.Int64
	longest  atomic.Int64 // ns: the longest wait of one read
	local    atomic.Pointer[netip.AddrPort]
}

// pacedRcvBuf is the download socket's receive buffer (the kernel doubles
// it): what the backend can have sent ahead of the reader.
const pacedRcvBuf = 128 << 10

// Run downloads from target inside ns (nil: the caller's namespace) and
// checks the body's length and SHA-256.
func (d *PacedDownload) Run(ctx context.Context, ns *netns.NS, target netip.AddrPort) error {
	if d.Size < 0 || d.Size > MaxContentBytes || d.Rate <= 0 {
		return fmt.Errorf("paced download: size %d, rate %d/s", d.Size, d.Rate)
	}
	stall := d.Stall
	if stall <= 0 {
		stall = 30 * time.Second
	}
	// The expected checksum takes a while for a large body: work it out
	// meanwhile.
	want := make(chan [32]byte, 1)
	go func() { want <- ContentSHA256(d.Size) }()
	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, pacedRcvBuf)
		}); err != nil {
			return err
		}
		return serr
	}}
	var conn net.Conn
	if err := do(ns, func() (err error) {
		conn, err = dialer.DialContext(ctx, "tcp", target.String())
		return err
	}); err != nil {
		return fmt.Errorf("connect %s: %w", target, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	d.local.Store(&local)

	req := "GET /bytes/" + strconv.FormatInt(d.Size, 10) + " HTTP/1.1\r\nHost: " + target.String() +
		"\r\nUser-Agent: synguard-lab\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	sr := &stallReader{c: conn, stall: stall, longest: &d.longest}
	resp, err := http.ReadResponse(bufio.NewReaderSize(sr, 64<<10), nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	h := sha256.New()
	buf := make([]byte, 64<<10)
	start := time.Now()
	var got int64
	for got < d.Size {
		n, err := resp.Body.Read(buf[:min(int64(len(buf)), d.Size-got)])
		h.Write(buf[:n])
		got += int64(n)
		d.received.Store(got)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, d.Size, err)
		}
		due := start.Add(time.Duration(float64(got) / float64(d.Rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("after %d of %d bytes: %w", got, d.Size, ctx.Err())
			case <-time.After(wait):
			}
		}
	}
	if got != d.Size {
		return fmt.Errorf("body ended after %d of %d bytes", got, d.Size)
	}
	if sum := <-want; string(h.Sum(nil)) != string(sum[:]) {
		return errors.New("body content differs from the expected stream (SHA-256 mismatch)")
	}
	return nil
}

// Received is how many body bytes have arrived so far.
func (d *PacedDownload) Received() int64 { return d.received.Load() }

// LongestStall is the longest one read waited for data: the gap a
// fail-over left in the flow.
func (d *PacedDownload) LongestStall() time.Duration { return time.Duration(d.longest.Load()) }

// Client is the download's local address once connected.
func (d *PacedDownload) Client() (netip.AddrPort, bool) {
	p := d.local.Load()
	if p == nil {
		return netip.AddrPort{}, false
	}
	return *p, true
}

// stallReader fails a read that waits longer than stall and records the
// longest wait.
type stallReader struct {
	c       net.Conn
	stall   time.Duration
	longest *atomic.Int64
}

func (r *stallReader) Read(p []byte) (int, error) {
	start := time.Now()
	if err := r.c.SetReadDeadline(start.Add(r.stall)); err != nil {
		return 0, err
	}
	n, err := r.c.Read(p)
	if w := int64(time.Since(start)); w > r.longest.Load() {
		r.longest.Store(w)
	}
	if errors.Is(err, syscall.ETIMEDOUT) || isTimeout(err) {
		err = fmt.Errorf("no data for %v: %w", r.stall, err)
	}
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connAddrs matches the addresses in a connection's error, which make each
// error distinct.
var connAddrs = regexp.MustCompile(`tcp \S+->\S+ `)

// ConnTally counts short connections' outcomes: per window (the demo's
// second) and in all, with the first errors of each kind.
type ConnTally struct {
	mu               sync.Mutex
	ok, failed       int
	winOK, winFailed int
	errs             map[string]int
}

func (c *ConnTally) add(r ProbeResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.OK {
		c.ok++
		c.winOK++
		return
	}
	c.failed++
	c.winFailed++
	if c.errs == nil {
		c.errs = map[string]int{}
	}
	e := connAddrs.ReplaceAllString(r.Err.Error(), "tcp ")
	if _, seen := c.errs[e]; seen || len(c.errs) < 10 {
		c.errs[e]++
	}
}

// Window returns the outcomes since the last call.
func (c *ConnTally) Window() (ok, failed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok, failed = c.winOK, c.winFailed
	c.winOK, c.winFailed = 0, 0
	return ok, failed
}

// Totals returns every outcome so far.
func (c *ConnTally) Totals() (ok, failed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ok, c.failed
}

// Errors returns up to ten distinct errors of failed connections
// (addresses left out), with how often each was seen.
func (c *ConnTally) Errors() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.errs))
	for k, v := range c.errs {
		out[k] = v
	}
	return out
}

// RunConns opens count short connections to target from ns, rate per
// second (each a Probe with the given timeout: connect, fetch and check
// 1 KiB), and returns once all it opened have ended. Once ctx is done it
// opens no more; those under way run to their end or timeout.
func RunConns(ctx context.Context, ns *netns.NS, target netip.AddrPort, rate, count int, timeout time.Duration, tally *ConnTally) {
	probeCtx := context.WithoutCancel(ctx)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for range count {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tally.add(Probe(probeCtx, ns, target, timeout))
		}()
	}
}

// HADemoConfig configures HADemo.
type HADemoConfig struct {
	HAConfig
	Size      int64         // download length, bytes
	Rate      int64         // download pace, bytes per second
	Conns     int           // short connections per second, while the download runs
	KillAfter time.Duration // when the master dies, from the download's start
	// Failback boots the dead gateway again this long after its death
	// (0: never), to watch it take both VIPs back.
	Failback time.Duration
}

// connTimeout bounds one short connection: longer than a fail-over and the
// client's SYN and zero-window-probe retransmissions across it.
const connTimeout = 15 * time.Second

// HADemo builds an HA lab, runs a paced download and short connections
// through it, kills the master mid-way (and, with Failback, boots it
// again), prints a line per second, and a verdict: whether the download
// came through intact and how many connections failed. It tears the lab
// down at the end. The error is about running the demo, not its verdict.
func HADemo(ctx context.Context, cfg HADemoConfig, out io.Writer) (err error) {
	if cfg.Size <= 0 || cfg.Rate <= 0 || cfg.Conns <= 0 || cfg.KillAfter <= 0 {
		return errors.New("lab: HA demo needs a size, a rate, connections and a kill time")
	}
	h, err := HAUp(ctx, cfg.HAConfig)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.Down(context.WithoutCancel(ctx))) }()

	syncNote := "conntrackd FTFW over the sync link"
	if cfg.NoSync {
		syncNote = "no conntrackd (negative control)"
	}
	fmt.Fprintf(out, "lab %s: client %s -> VIP %s -> gw-a (master) | gw-b -> VIP %s <- backend %s\n",
		h.Name, HAClientAddr, HAClientVIP, HABackendVIP, h.Service)
	fmt.Fprintf(out, "gateways: synguard --mode %s with one key file, keepalived, %s\n", h.cfg.Mode, syncNote)
	fmt.Fprintf(out, "download: %s at %s/s; short connections: %d/s; gw-a dies at %v",
		mib(cfg.Size), mib(cfg.Rate), cfg.Conns, cfg.KillAfter)
	if cfg.Failback > 0 {
		fmt.Fprintf(out, " and boots again %v later", cfg.Failback)
	}
	fmt.Fprintln(out)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dl := &PacedDownload{Size: cfg.Size, Rate: cfg.Rate}
	dlDone := make(chan error, 1)
	start := time.Now()
	go func() { dlDone <- dl.Run(ctx, h.Client, h.Service) }()
	tally := &ConnTally{}
	connCtx, stopConns := context.WithCancel(ctx)
	defer stopConns()
	connsDone := make(chan struct{})
	go func() {
		defer close(connsDone)
		RunConns(connCtx, h.Client, h.Service, cfg.Conns, 1<<30, connTimeout, tally)
	}()

	var (
		events   = make(chan string, 8)
		errs     = make(chan error, 2)
		killedAt time.Time
		dlErr    error
		finished bool
		lastDL   int64
		lastRow  = start
	)
	fmt.Fprintf(out, "%5s  %-5s %6s %6s  %10s %10s  %8s %6s\n", "t", "VIPs", "gw-a", "gw-b", "download", "rate", "conns ok", "failed")
	// row prints the state at now; t is labelled as given.
	row := func(now time.Time, t string) {
		holder, err := h.VIPHolder(ctx)
		if err != nil {
			holder = "?"
		}
		got := dl.Received()
		ok, failed := tally.Window()
		rate := int64(float64(got-lastDL) / max(now.Sub(lastRow).Seconds(), 1e-3))
		fmt.Fprintf(out, "%5s  %-5s %6s %6s  %10s %8s/s  %8d %6d\n", t, holder,
			h.entriesCell(ctx, NodeA), h.entriesCell(ctx, NodeB), mib(got), mib(rate), ok, failed)
		lastDL, lastRow = got, now
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	kill := time.After(cfg.KillAfter)
	var boot <-chan time.Time
	for !finished {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-kill:
			// The line a second goes on meanwhile.
			killedAt = time.Now()
			go func() {
				if err := h.Kill(ctx, NodeA); err != nil {
					errs <- err
					return
				}
				events <- fmt.Sprintf("gw-a killed (SIGKILL to every process, links gone) at %.1fs", killedAt.Sub(start).Seconds())
			}()
			go h.watchTakeover(ctx, NodeB, killedAt, events)
			if cfg.Failback > 0 {
				boot = time.After(cfg.Failback)
			}
		case <-boot:
			bootAt := time.Now()
			go func() {
				if err := h.Boot(ctx, NodeA); err != nil {
					errs <- err
					return
				}
				events <- fmt.Sprintf("gw-a booted again at %.1fs (%.1fs to start conntrackd, synguard, keepalived)",
					bootAt.Sub(start).Seconds(), time.Since(bootAt).Seconds())
				h.watchTakeover(ctx, NodeA, bootAt, events)
			}()
		case err := <-errs:
			return err
		case ev := <-events:
			fmt.Fprintf(out, "       %s\n", ev)
		case dlErr = <-dlDone:
			finished = true
			stopConns()
		case now := <-tick.C:
			row(now, fmt.Sprintf("%.0fs", now.Sub(start).Seconds()))
		}
	}
	<-connsDone
	for len(events) > 0 {
		fmt.Fprintf(out, "       %s\n", <-events)
	}
	// A download that catches up after the fail-over can end between two
	// ticks; the last line is always the state it ended in.
	now := time.Now()
	row(now, fmt.Sprintf("%.1fs", now.Sub(start).Seconds()))
	ok, failed := tally.Totals()
	total := ok + failed
	failedPct := 0.0
	if total > 0 {
		failedPct = 100 * float64(failed) / float64(total)
	}
	fmt.Fprintf(out, "download: ")
	if dlErr != nil {
		fmt.Fprintf(out, "BROKEN after %s: %v\n", mib(dl.Received()), dlErr)
	} else {
		fmt.Fprintf(out, "%s intact (SHA-256 checked); longest stall %v\n", mib(cfg.Size), dl.LongestStall().Round(10*time.Millisecond))
	}
	fmt.Fprintf(out, "short connections: %d of %d succeeded, %d failed (%.2f%%)\n", ok, total, failed, failedPct)
	for e, n := range tally.Errors() {
		fmt.Fprintf(out, "  %d× %s\n", n, e)
	}
	verdict := "PASS"
	if dlErr != nil || failedPct > 1 {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "verdict: %s: the download handed off on gw-a %s its death; %.2f%% of short connections failed (at most 1%% wanted)\n",
		verdict, map[bool]string{true: "survived", false: "did not survive"}[dlErr == nil], failedPct)
	if killedAt.IsZero() {
		fmt.Fprintln(out, "note: the download ended before gw-a was killed; raise --size or lower --rate")
	}
	return nil
}

// watchTakeover reports how long after since node came to hold both VIPs.
func (h *HA) watchTakeover(ctx context.Context, node string, since time.Time, events chan<- string) {
	for ctx.Err() == nil {
		if holder, err := h.VIPHolder(ctx); err == nil && holder == node {
			events <- fmt.Sprintf("%s holds both VIPs %.2fs later", node, time.Since(since).Seconds())
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// entriesCell is node's synguard_handoff_entries for the demo's table.
func (h *HA) entriesCell(ctx context.Context, node string) string {
	if h.NodeNS(node) == nil {
		return "dead"
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	n, err := h.HandoffEntries(ctx, node)
	if err != nil {
		return "-"
	}
	return strconv.Itoa(n)
}

// mib formats a byte count in MiB.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
