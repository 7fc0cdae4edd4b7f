package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/packet"
)

// Helpers of the reliability tests: the gateway process seen from /proc,
// crafted packets sent from inside a namespace, and observers that count
// what must not happen.

// procStatus is what /proc/PID/status says about a process's memory and
// threads.
type procStatus struct {
	RSS, HWM int64 // resident set now and at its peak, bytes
	Threads  int
}

func (s procStatus) String() string {
	return fmt.Sprintf("RSS %.1f MiB, peak %.1f MiB, %d threads", float64(s.RSS)/mib, float64(s.HWM)/mib, s.Threads)
}

func readProcStatus(pid int) (procStatus, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStatus{}, err
	}
	defer f.Close()
	var s procStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "VmRSS":
			s.RSS = n << 10 // kB
		case "VmHWM":
			s.HWM = n << 10
		case "Threads":
			s.Threads = int(n)
		}
	}
	if s.Threads == 0 {
		return s, fmt.Errorf("/proc/%d/status: no Threads line", pid)
	}
	return s, sc.Err()
}

// proc reads the gateway's /proc status. `ip netns exec` executes synguard
// in its own process (no fork), so the command's pid is synguard's; the
// check on comm makes sure.
func (g *gateway) proc() procStatus {
	g.t.Helper()
	pid := g.cmd.Process.Pid
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		g.t.Fatalf("gateway process: %v", err)
	}
	if c := strings.TrimSpace(string(comm)); c != "synguard" {
		g.t.Fatalf("pid %d is %q, not synguard", pid, c)
	}
	s, err := readProcStatus(pid)
	if err != nil {
		g.t.Fatal(err)
	}
	return s
}

// kill ends the gateway with SIGKILL, as a crash would: nothing of its own
// runs, so its rules and sysctls stay behind.
func (g *gateway) kill() {
	g.t.Helper()
	if err := g.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		g.t.Fatalf("kill gateway: %v", err)
	}
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		g.t.Fatal("gateway still running 10 s after SIGKILL")
	}
}

// alive reports whether the gateway process is still running.
func (g *gateway) alive() bool {
	select {
	case err := <-g.done:
		g.done <- err
		return false
	default:
		return true
	}
}

// stallUntilFull stops the gateway's process (SIGSTOP), as a machine
// that gives it no CPU would, until the kernel's queue number queue is
// full: it holds nfq.DefaultMaxQueueLen packets, or dropped one. Then the
// gateway goes on (SIGCONT). A test that must overflow a queue stalls the
// gateway under its flood: on a fast enough machine the engine
// drains even two generators at their maximum.
func (g *gateway) stallUntilFull(queue uint16) {
	g.t.Helper()
	p := g.cmd.Process
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		g.t.Fatalf("stop gateway: %v", err)
	}
	defer func() {
		if err := p.Signal(syscall.SIGCONT); err != nil {
			g.t.Errorf("resume gateway: %v", err)
		}
	}()
	var last nfq.KernelQueueStats
	full := poll.Until(10*time.Second, func() bool {
		for _, q := range kernelQueues(g.t, g.ns) {
			if q.Queue == queue {
				last = q
				return q.Waiting >= nfq.DefaultMaxQueueLen || q.QueueDropped+q.UserDropped > 0
			}
		}
		return false
	})
	if !full {
		g.t.Fatalf("queue %d not full 10 s into the gateway's stall: %+v", queue, last)
	}
}

// waitQueueIdle waits until the gateway in ns has dealt with everything
// queued to it: no packet waits in its kernel queues for a verdict, no
// packet reached a queue since the previous look, and the gateway's own
// count of packets received (read by received, which it updates just after
// its verdicts) did not move either. Called once the senders of a flood
// are done, it returns when the gateway is done with the flood too, so that
// counters read afterwards are final.
func waitQueueIdle(t testing.TB, ns *netns.NS, received func() float64) {
	t.Helper()
	var (
		waiting, arrived uint64
		recv             float64
		lastArrived      = ^uint64(0)
		lastRecv         = -1.0
	)
	idle := poll.Until(30*time.Second, func() bool {
		waiting, arrived = 0, 0
		for _, q := range kernelQueues(t, ns) {
			// Every packet that reached a queue either got an id or was
			// dropped because the queue was full.
			waiting += uint64(q.Waiting)
			arrived += uint64(q.LastID) + q.QueueDropped
		}
		recv = received()
		still := arrived == lastArrived && recv == lastRecv
		lastArrived, lastRecv = arrived, recv
		return waiting == 0 && still
	})
	if !idle {
		t.Fatalf("the gateway's queues in %s still busy after 30 s: %d packets waiting for a verdict, %d arrived, %v received so far", ns.Name, waiting, arrived, recv)
	}
}

// waitIdle is waitQueueIdle for g.
func (g *gateway) waitIdle() {
	g.t.Helper()
	waitQueueIdle(g.t, g.ns, func() float64 { return g.metric("synguard_queue_received_total") })
}

// settleSYNs returns once w has counted every SYN that reached the backend
// before the call. It connects to a closed port of the backend from the
// gateway's own namespace, a SYN synguard does not queue, and waits until
// w has counted it: the capture delivers in order of arrival, so every SYN
// that came before it has been counted too.
func settleSYNs(t *testing.T, topo *lab.Topology, w *lab.SYNWatch) {
	t.Helper()
	from := topo.GatewayBackendAddr
	before := w.From(from)
	closed := netip.AddrPortFrom(topo.BackendAddr, 9)
	err := topo.Gateway.Do(func() error {
		c, err := net.DialTimeout("tcp", closed.String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return nil // refused, as it should be: the SYN went out
	})
	if err != nil {
		t.Fatal(err)
	}
	poll.Must(t, 5*time.Second, fmt.Sprintf("the backend's SYN watch never counted the gateway's SYN to %s", closed), func() bool {
		return w.From(from) > before
	})
}

// slowDownload is fetch reading at most rate bytes per second, so a
// transfer spans a known time. progress, if set, is called with the
// running count.
func slowDownload(ns *netns.NS, target netip.AddrPort, n, rate int64, progress func(int64)) error {
	start := time.Now()
	return fetch(ns, target, n, func(got int64) {
		if progress != nil {
			progress(got)
		}
		if ahead := time.Duration(got*int64(time.Second)/rate) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	})
}

// ipSender sends whole IP packets from inside a namespace through raw
// IPPROTO_RAW sockets. The kernel completes an IPv4 header (total length,
// checksum) and routes the packet like its own.
type ipSender struct {
	fd4, fd6 int
}

func openIPSender(t *testing.T, ns *netns.NS) *ipSender {
	t.Helper()
	s := &ipSender{fd4: -1, fd6: -1}
	err := ns.Do(func() error {
		var err error
		if s.fd4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return err
		}
		s.fd6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	t.Cleanup(func() {
		for _, fd := range []int{s.fd4, s.fd6} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
	if err != nil {
		t.Fatalf("raw socket in %s: %v", ns.Name, err)
	}
	return s
}

func (s *ipSender) send(b []byte, dst netip.Addr) error {
	if dst.Is4() {
		return unix.Sendto(s.fd4, b, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	}
	return unix.Sendto(s.fd6, b, 0, &unix.SockaddrInet6{Addr: dst.As16()})
}

// linkSender puts packets on the client's link exactly as given, addressed
// to the gateway's MAC address: unlike a raw IP socket, nothing in the
// sending kernel fixes lengths or checksums, so the gateway's kernel and
// synguard see the malformation itself.
type linkSender struct {
	fd      int
	ifindex int
	gateway net.HardwareAddr
}

func openLinkSender(t *testing.T, topo *lab.Topology) *linkSender {
	t.Helper()
	s := &linkSender{fd: -1}
	err := topo.Gateway.Do(func() error {
		ifi, err := net.InterfaceByName(topo.GatewayClientSide)
		if err != nil {
			return err
		}
		s.gateway = ifi.HardwareAddr
		return nil
	})
	if err == nil {
		err = topo.Client.Do(func() error {
			ifi, err := net.InterfaceByName(topo.ClientSide)
			if err != nil {
				return err
			}
			s.ifindex = ifi.Index
			s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			return err
		})
	}
	t.Cleanup(func() {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
	})
	if err != nil {
		t.Fatalf("link sender: %v", err)
	}
	return s
}

func (s *linkSender) send(b []byte) error {
	proto := uint16(unix.ETH_P_IP)
	if len(b) > 0 && b[0]>>4 == 6 {
		proto = unix.ETH_P_IPV6
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: s.ifindex, Halen: 6}
	copy(sa.Addr[:], s.gateway)
	return unix.Sendto(s.fd, b, 0, sa)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ackFlood is what forgeACKs sent.
type ackFlood struct {
	Sent, Errors int
	Elapsed      time.Duration
}

// forgeACKs sends count ACKs to target from inside ns, each from a random
// source in lab.SpoofPrefix4 with a random port, sequence and
// acknowledgement number, as fast as the socket takes them (rate 0) or
// paced to rate per second, and stops at count or after limit. It batches
// with sendmmsg from preallocated buffers, like the SYN flood generator.
func forgeACKs(ns *netns.NS, target netip.AddrPort, count, rate int, limit time.Duration) (ackFlood, error) {
	if !target.Addr().Is4() || count <= 0 || limit <= 0 {
		return ackFlood{}, errors.New("forgeACKs: IPv4 target, positive count and limit")
	}
	var fd int
	err := ns.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			return err
		}
		return unix.Connect(fd, &unix.SockaddrInet4{Addr: target.Addr().As4()})
	})
	if err != nil {
		return ackFlood{}, fmt.Errorf("forgeACKs: socket: %w", err)
	}
	defer unix.Close(fd)

	const batch, slot = 64, packet.MaxHandshakeLen
	buf := make([]byte, batch*slot)
	iovs := make([]unix.Iovec, batch)
	msgs := make([]unix.Mmsghdr, batch)
	for i := range msgs {
		iovs[i].Base = &buf[i*slot]
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	spoof := lab.SpoofPrefix4.Addr().As4()
	base := uint32(spoof[0])<<24 | uint32(spoof[1])<<16 | uint32(spoof[2])<<8 | uint32(spoof[3])
	hostMask := uint32(1)<<(32-lab.SpoofPrefix4.Bits()) - 1
	seg := packet.Segment{Dst: target, Flags: packet.ACK}

	var st ackFlood
	start := time.Now()
	deadline := start.Add(limit)
	for tried := 0; tried < count && time.Now().Before(deadline); {
		if rate > 0 {
			due := start.Add(time.Duration(int64(tried) * int64(time.Second) / int64(rate)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		n := min(batch, count-tried)
		for i := range n {
			v := base | rng.Uint32()&hostMask
			src := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
			seg.Src = netip.AddrPortFrom(src, uint16(1024+rng.IntN(65536-1024)))
			seg.Seq, seg.Ack = rng.Uint32(), rng.Uint32()
			seg.Window = uint16(rng.Uint32())
			k, err := packet.Build(buf[i*slot:(i+1)*slot], &seg)
			if err != nil {
				return st, err
			}
			iovs[i].SetLen(k)
		}
		for off := 0; off < n; {
			r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[off])), uintptr(n-off), 0, 0, 0)
			switch {
			case errno == unix.EINTR:
			case errno != 0:
				st.Errors++
				off++
			default:
				st.Sent += int(r)
				off += int(r)
			}
		}
		tried += n
	}
	st.Elapsed = time.Since(start)
	return st, nil
}

// spoofWatch counts the packets an interface sends toward the spoofed
// source ranges (lab.SpoofPrefix4, lab.SpoofPrefix6): the replies a flood
// from forged sources would reflect. A socket filter keeps everything else
// out of the capture, so a flood arriving on the same interface cannot
// overflow it and hide a reply. UDP datagrams are the test's own markers
// (settle), not replies: synguard sends nothing but TCP.
type spoofWatch struct {
	fd      int
	ns      *netns.NS
	count   atomic.Int64
	markers atomic.Int64
	first   atomic.Value // string: the first reply seen, for the report
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func watchSpoofReplies(t *testing.T, ns *netns.NS, iface string) *spoofWatch {
	t.Helper()
	w := &spoofWatch{fd: -1, ns: ns, stop: make(chan struct{}), done: make(chan struct{})}
	filter, err := bpf.Assemble(spoofReplyFilter())
	if err != nil {
		t.Fatal(err)
	}
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		// Protocol 0: the socket receives nothing until bind names the
		// interface and protocol, after the filter is in place. Opened
		// with ETH_P_ALL it would take every interface's packets in the
		// meantime (a metrics scrape on lo, say) and count them.
		w.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		prog := unix.SockFprog{Len: uint16(len(filter)), Filter: (*unix.SockFilter)(unsafe.Pointer(&filter[0]))}
		if err := unix.SetsockoptSockFprog(w.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
			return err
		}
		_ = unix.SetsockoptInt(w.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(w.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(w.fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		if w.fd >= 0 {
			unix.Close(w.fd)
		}
		t.Fatalf("watch replies on %s: %v", iface, err)
	}
	go w.run()
	t.Cleanup(w.close)
	return w
}

// spoofReplyFilter accepts outgoing IPv4 packets to 198.18.0.0/15 and
// IPv6 packets to 2001:db8:ff00::/40, and nothing else.
func spoofReplyFilter() []bpf.Instruction {
	const outgoing = 4 // PACKET_OUTGOING
	v4 := lab.SpoofPrefix4.Addr().As4()
	v4mask := ^uint32(0) << (32 - lab.SpoofPrefix4.Bits())
	v6 := lab.SpoofPrefix6.Addr().As16()
	if lab.SpoofPrefix6.Bits() != 40 {
		panic("spoofReplyFilter matches IPv6 on exactly 40 bits")
	}
	// Jump offsets count the instructions skipped; the numbers on the
	// right are the instructions' indexes.
	return []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},                             // 0
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: outgoing, SkipTrue: 11}, // 1: not sent: drop
		bpf.LoadAbsolute{Off: 0, Size: 1},                               // 2
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4},              // 3: IP version
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipTrue: 3},            // 4: IPv6 at 8
		bpf.LoadAbsolute{Off: 16, Size: 4},                              // 5: IPv4 destination
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: v4mask},                // 6: prefix
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: (uint32(v4[0])<<24 | uint32(v4[1])<<16 | uint32(v4[2])<<8 | uint32(v4[3])) & v4mask, SkipTrue: 4, SkipFalse: 5}, // 7
		bpf.LoadAbsolute{Off: 24, Size: 4}, // 8: IPv6 destination
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(v6[0])<<24 | uint32(v6[1])<<16 | uint32(v6[2])<<8 | uint32(v6[3]), SkipTrue: 3}, // 9
		bpf.LoadAbsolute{Off: 28, Size: 1},                                // 10: fifth byte: /40
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(v6[4]), SkipFalse: 1}, // 11
		bpf.RetConstant{Val: 0xffff},                                      // 12: accept
		bpf.RetConstant{Val: 0},                                           // 13: drop
	}
}

func (w *spoofWatch) run() {
	defer close(w.done)
	buf := make([]byte, 2048)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if n > 9 && buf[0]>>4 == 4 && buf[9] == unix.IPPROTO_UDP {
			w.markers.Add(1)
			continue
		}
		if w.count.Add(1) == 1 {
			var p packet.Packet
			desc := fmt.Sprintf("%d bytes", n)
			if packet.Parse(buf[:n], &p) == nil {
				desc = fmt.Sprintf("%s>%s %v", p.Source(), p.Destination(), p.Flags)
			}
			w.first.Store(desc)
		}
	}
}

// settle returns once w has seen every packet sent toward the spoofed
// sources before the call. It sends a UDP datagram from the watched
// namespace to a spoofed address, which leaves by the same interface as
// any reply would, and waits until w has seen it: the capture delivers in
// order, so every earlier packet has been seen too.
func (w *spoofWatch) settle(t *testing.T) {
	t.Helper()
	before := w.markers.Load()
	dst := netip.AddrPortFrom(lab.SpoofPrefix4.Addr().Next(), 9)
	if err := w.ns.Do(func() error {
		c, err := net.Dial("udp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("spoofWatch marker"))
		return err
	}); err != nil {
		t.Fatalf("marker toward %s: %v", dst, err)
	}
	poll.Must(t, 5*time.Second, "the reply watch never saw the marker sent toward "+dst.String(), func() bool {
		return w.markers.Load() > before
	})
}

// Count returns the replies seen so far.
func (w *spoofWatch) Count() int64 { return w.count.Load() }

// Dropped returns how many matching packets the capture socket lost.
func (w *spoofWatch) Dropped() uint32 {
	st, err := unix.GetsockoptTpacketStats(w.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0
	}
	return st.Drops
}

// First describes the first reply seen, or "".
func (w *spoofWatch) First() string {
	s, _ := w.first.Load().(string)
	return s
}

func (w *spoofWatch) close() {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		unix.Close(w.fd)
	})
}

// conntrackEntries counts the TCP conntrack entries in ns whose original
// source is src.
func conntrackEntries(t *testing.T, ns *netns.NS, src netip.Addr) []string {
	t.Helper()
	out, err := ns.Output(context.Background(), "conntrack", "-L", "-p", "tcp", "-s", src.String())
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	var entries []string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "tcp") {
			entries = append(entries, strings.TrimSpace(line))
		}
	}
	return entries
}

// setSysctl writes a sysctl inside the test's own namespace ns.
func setSysctl(t *testing.T, ns *netns.NS, name, value string) {
	t.Helper()
	if err := ns.Run(context.Background(), "sysctl", "-q", "-w", name+"="+value); err != nil {
		t.Fatal(err)
	}
}

// probeResults counts legitimate connections and keeps the first failure.
type probeResults struct {
	mu          sync.Mutex
	ok, failed  int
	firstFailed error
	slowest     time.Duration
}

func (r *probeResults) add(p lab.ProbeResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.slowest = max(r.slowest, p.Total)
	if p.OK {
		r.ok++
		return
	}
	r.failed++
	if r.firstFailed == nil {
		r.firstFailed = p.Err
	}
}

func (r *probeResults) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := fmt.Sprintf("%d of %d succeeded, slowest %v", r.ok, r.ok+r.failed, r.slowest.Round(time.Millisecond))
	if r.firstFailed != nil {
		s += fmt.Sprintf(", first failure: %v", r.firstFailed)
	}
	return s
}

// serveSlow serves the lab's HTTP routes on addr in the backend namespace
// with a listen backlog of backlog, accepting one connection per delay: a
// backend too busy to keep up, whose accept queue overflows and drops
// SYNs.
func serveSlow(t *testing.T, topo *lab.Topology, addr netip.AddrPort, backlog int, delay time.Duration) {
	t.Helper()
	ln, err := lab.Listen(topo.Backend, addr, backlog)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: lab.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(&slowListener{Listener: ln, delay: delay}) }()
	t.Cleanup(func() { srv.Close() })
}

type slowListener struct {
	net.Listener
	delay time.Duration
}

func (l *slowListener) Accept() (net.Conn, error) {
	time.Sleep(l.delay)
	return l.Listener.Accept()
}

// Crafting bad input. These helpers edit packets built by packet.Build;
// each keeps every field it does not mean to break consistent, so that a
// test case breaks exactly one thing.

func put16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }

func get16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// ipAddrs returns the source and destination of an IPv4 or IPv6 packet.
func ipAddrs(b []byte) (src, dst netip.Addr) {
	if b[0]>>4 == 4 {
		return netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
	}
	return netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
}

// refreshIPv4Checksum recomputes the IPv4 header checksum.
func refreshIPv4Checksum(b []byte) []byte {
	ihl := int(b[0]&0x0f) * 4
	if ihl < packet.IPv4HeaderLen || ihl > len(b) {
		ihl = packet.IPv4HeaderLen
	}
	b[10], b[11] = 0, 0
	put16(b[10:], packet.Checksum(b[:ihl]))
	return b
}

// refreshTCPChecksum recomputes the TCP checksum of a packet without IPv6 extension
// headers, over the segment its IP header claims.
func refreshTCPChecksum(b []byte) []byte {
	src, dst := ipAddrs(b)
	off, end := packet.IPv6HeaderLen, packet.IPv6HeaderLen+int(get16(b[4:]))
	if b[0]>>4 == 4 {
		off, end = int(b[0]&0x0f)*4, int(get16(b[2:]))
	}
	end = min(end, len(b))
	seg := b[off:end]
	seg[16], seg[17] = 0, 0
	put16(seg[16:], packet.TCPChecksum(src, dst, seg))
	return b
}

// insertIPv4Options inserts IP options (a multiple of 4 bytes) after the
// IPv4 header.
func insertIPv4Options(b, opts []byte) []byte {
	out := append(append(append([]byte(nil), b[:packet.IPv4HeaderLen]...), opts...), b[packet.IPv4HeaderLen:]...)
	out[0] = 0x40 | byte((packet.IPv4HeaderLen+len(opts))/4)
	put16(out[2:], uint16(len(out)))
	return refreshIPv4Checksum(out)
}

// appendTCPPayload appends data to a packet without IPv6 extension headers.
func appendTCPPayload(b, data []byte) []byte {
	out := append(append([]byte(nil), b...), data...)
	if out[0]>>4 == 4 {
		put16(out[2:], uint16(len(out)))
		refreshIPv4Checksum(out)
	} else {
		put16(out[4:], uint16(len(out)-packet.IPv6HeaderLen))
	}
	return refreshTCPChecksum(out)
}

// padNHeader is an empty hop-by-hop or destination options header of n
// bytes (a PadN option fills it); prependExtHeader sets its next-header byte.
func padNHeader(n int) []byte {
	h := make([]byte, n)
	h[1] = byte(n/8 - 1)
	h[2], h[3] = 1, byte(n-4)
	return h
}

// prependExtHeader puts an IPv6 extension header of type kind in front of
// the packet's header chain. hdr is the whole header; its first byte is
// overwritten with the chain's previous first type.
func prependExtHeader(b []byte, kind byte, hdr []byte) []byte {
	h := append([]byte(nil), hdr...)
	h[0] = b[6]
	out := append(append(append([]byte(nil), b[:packet.IPv6HeaderLen]...), h...), b[packet.IPv6HeaderLen:]...)
	out[6] = kind
	put16(out[4:], uint16(len(out)-packet.IPv6HeaderLen))
	return out
}

var splitID atomic.Uint32

// splitIPv4 splits an IPv4 packet without options in two fragments,
// the first carrying first bytes (a multiple of 8) of its payload.
func splitIPv4(b []byte, first int) [][]byte {
	id := uint16(splitID.Add(1))
	hdr, data := b[:packet.IPv4HeaderLen], b[packet.IPv4HeaderLen:]
	frag := func(part []byte, offset int, more bool) []byte {
		f := append(append([]byte(nil), hdr...), part...)
		put16(f[2:], uint16(len(f)))
		put16(f[4:], id)
		v := uint16(offset / 8)
		if more {
			v |= 0x2000
		}
		put16(f[6:], v)
		return refreshIPv4Checksum(f)
	}
	return [][]byte{frag(data[:first], 0, true), frag(data[first:], first, false)}
}

// splitIPv6 splits an IPv6 packet without extension headers in two
// fragments, the first carrying first bytes (a multiple of 8) of its
// payload.
func splitIPv6(b []byte, first int) [][]byte {
	id := splitID.Add(1)
	hdr, data := b[:packet.IPv6HeaderLen], b[packet.IPv6HeaderLen:]
	frag := func(part []byte, offset int, more bool) []byte {
		fh := []byte{b[6], 0, 0, 0, byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
		v := uint16(offset)
		if more {
			v |= 1
		}
		put16(fh[2:], v)
		f := append(append(append([]byte(nil), hdr...), fh...), part...)
		f[6] = 44
		put16(f[4:], uint16(len(f)-packet.IPv6HeaderLen))
		return f
	}
	return [][]byte{frag(data[:first], 0, true), frag(data[first:], first, false)}
}
