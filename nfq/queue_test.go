package nfq_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/nfq"
)

// seen records what a handler saw, for checks after the fact.
type seen struct {
	mu   sync.Mutex
	segs []segment
	pkts []nfq.Packet // without Payload
	errs []error
}

func (s *seen) add(p *nfq.Packet) segment {
	seg, err := parse(p.Payload)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs = append(s.errs, err)
	}
	s.segs = append(s.segs, seg)
	c := *p
	c.Payload = nil
	s.pkts = append(s.pkts, c)
	return seg
}

func (s *seen) snapshot() ([]segment, []nfq.Packet, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]segment(nil), s.segs...), append([]nfq.Packet(nil), s.pkts...), append([]error(nil), s.errs...)
}

// TestVerdicts queues the SYNs of a TCP service on 127.0.0.1 (or ::1) and
// checks that Accept lets the connection through and Drop stops it, and
// that the handler sees the real SYN with its hook and mark.
func TestVerdicts(t *testing.T) {
	const (
		queue = 7
		mark  = 0x2a
	)
	for _, tc := range []struct {
		name    string
		v6      bool
		verdict nf.Verdict
	}{
		{"accept/ipv4", false, nf.Accept},
		{"drop/ipv4", false, nf.Drop},
		{"accept/ipv6", true, nf.Accept},
		{"drop/ipv6", true, nf.Drop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := nstest.New(t, "sgt-nfq")
			host := "127.0.0.1"
			if tc.v6 {
				host = "::1"
			}
			addr := nstest.ListenTCP(t, ns, net.JoinHostPort(host, "0"))
			port := strconv.Itoa(addr.Port)
			iptables(t, ns, tc.v6, "-t", "mangle", "-A", "INPUT", "-p", "tcp", "--dport", port, "-j", "MARK", "--set-mark", strconv.Itoa(mark))
			iptables(t, ns, tc.v6, "-A", "INPUT", "-p", "tcp", "--dport", port, "--syn", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))

			q := openQueue(t, ns, nfq.Config{Queue: queue})
			var s seen
			runQueue(t, q, func(p *nfq.Packet) nf.Verdict {
				s.add(p)
				return tc.verdict
			})

			err := dialTCP(ns, addr, 1500*time.Millisecond)
			switch tc.verdict {
			case nf.Accept:
				if err != nil {
					t.Fatalf("connect with Accept verdict: %v", err)
				}
			case nf.Drop:
				if err == nil {
					t.Fatal("connect succeeded although the handler dropped the SYN")
				}
				if !isTimeout(err) {
					t.Fatalf("connect with Drop verdict: want a timeout, got %v", err)
				}
			}

			segs, pkts, errs := s.snapshot()
			if len(errs) > 0 {
				t.Fatalf("handler could not parse packets: %v", errs)
			}
			if len(segs) == 0 {
				t.Fatal("handler saw no packet")
			}
			wantVersion := 4
			if tc.v6 {
				wantVersion = 6
			}
			for i, seg := range segs {
				if seg.version != wantVersion || seg.proto != 6 || seg.dport != uint16(addr.Port) || !seg.syn {
					t.Errorf("packet %d: got %+v, want a TCP SYN over IPv%d to port %d", i, seg, wantVersion, addr.Port)
				}
				if pkts[i].Hook != 1 {
					t.Errorf("packet %d: hook %d, want 1 (INPUT)", i, pkts[i].Hook)
				}
				if pkts[i].Mark != mark {
					t.Errorf("packet %d: mark %#x, want %#x", i, pkts[i].Mark, mark)
				}
			}
			if len(pkts) > 1 && pkts[1].ID == pkts[0].ID {
				t.Errorf("two packets with the same id %d", pkts[0].ID)
			}

			// The connection can complete before the receive goroutine
			// counts the verdict it just sent.
			// Each segment arrives on its own (a retransmission is a second
			// later), so each is a batch of its own.
			want := nfq.Stats{Received: uint64(len(segs)), Batches: uint64(len(segs))}
			if tc.verdict == nf.Accept {
				want.Verdicts.Accept = want.Received
			} else {
				want.Verdicts.Drop = want.Received
			}
			if !poll.Until(time.Second, func() bool { return q.Stats() == want }) {
				t.Fatalf("Stats = %+v, want %+v", q.Stats(), want)
			}
		})
	}
}

// TestPacketsWaitForRun checks that packets queued between Open and Run are
// held, not lost, and that the kernel lists the queue with our port id.
func TestPacketsWaitForRun(t *testing.T) {
	const queue = 3
	ns := nstest.New(t, "sgt-nfq")
	addr := nstest.ListenTCP(t, ns, "127.0.0.1:0")
	iptables(t, ns, false, "-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(addr.Port), "--syn", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))
	q := openQueue(t, ns, nfq.Config{Queue: queue})

	dialed := make(chan error, 1)
	go func() { dialed <- dialTCP(ns, addr, 5*time.Second) }()

	var ks nfq.KernelQueueStats
	if !poll.Until(2*time.Second, func() bool {
		var ok bool
		ks, ok = kernelStats(t, ns, queue)
		return ok && ks.Waiting > 0
	}) {
		t.Fatalf("kernel never showed a waiting packet; last stats %+v", ks)
	}
	if ks.PortID != q.PortID() || ks.CopyMode != 2 || ks.CopyRange < 0xffff-4 {
		t.Fatalf("kernel stats %+v: want port id %d, copy mode 2 (packet), copy range ≥ %d", ks, q.PortID(), 0xffff-4)
	}
	select {
	case err := <-dialed:
		t.Fatalf("connect finished before Run: %v", err)
	default:
	}

	var n atomic.Int32
	runQueue(t, q, func(p *nfq.Packet) nf.Verdict {
		n.Add(1)
		return nf.Accept
	})
	if err := <-dialed; err != nil {
		t.Fatalf("connect held until Run: %v", err)
	}
	if n.Load() == 0 {
		t.Fatal("handler saw no packet")
	}
	if ks, _ := kernelStats(t, ns, queue); ks.Waiting != 0 || ks.QueueDropped != 0 || ks.UserDropped != 0 {
		t.Fatalf("kernel stats after the verdicts: %+v, want nothing waiting or dropped", ks)
	}
}

// TestENOBUFSSurvival overflows a minimal socket buffer with a burst and
// checks that the overflow is counted and the loop keeps delivering.
func TestENOBUFSSurvival(t *testing.T) {
	const (
		queue = 11
		burst = 3000
	)
	ns := nstest.New(t, "sgt-nfq")
	sender := udpSender(t, ns)
	// Closed ports: nothing listens, packets are only queued.
	const burstPort, markerPort = 9, 10
	for _, port := range []int{burstPort, markerPort} {
		iptables(t, ns, false, "-A", "INPUT", "-p", "udp", "--dport", strconv.Itoa(port), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))
	}
	q := openQueue(t, ns, nfq.Config{Queue: queue, ReadBuffer: 1}) // the kernel's minimum, a few KiB

	var bursts, markers atomic.Int32
	runQueue(t, q, func(p *nfq.Packet) nf.Verdict {
		seg, err := parse(p.Payload)
		if err != nil || seg.proto != 17 {
			t.Errorf("unexpected packet %+v: %v", seg, err)
			return nf.Drop
		}
		switch seg.dport {
		case burstPort:
			bursts.Add(1)
			time.Sleep(50 * time.Microsecond) // a slow handler
		case markerPort:
			markers.Add(1)
		}
		return nf.Drop
	})

	payload := make([]byte, 64)
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: burstPort}
	for range burst {
		if _, err := sender.WriteToUDP(payload, dst); err != nil {
			t.Fatal(err)
		}
	}
	// Wait for the burst to drain: the kernel holds nothing for us any more.
	if !poll.Until(10*time.Second, func() bool {
		ks, ok := kernelStats(t, ns, queue)
		return ok && ks.Waiting == 0 && ks.LastID >= burst
	}) {
		ks, _ := kernelStats(t, ns, queue)
		t.Fatalf("burst did not drain: kernel stats %+v, handler saw %d", ks, bursts.Load())
	}

	st := q.Stats()
	ks, _ := kernelStats(t, ns, queue)
	t.Logf("burst of %d: handler saw %d; stats %+v; kernel %+v", burst, bursts.Load(), st, ks)
	if st.ENOBUFS == 0 {
		t.Error("no ENOBUFS counted although the socket buffer overflowed")
	}
	if ks.UserDropped == 0 {
		t.Error("kernel counted no user_dropped packets")
	}
	if got := uint64(bursts.Load()) + ks.UserDropped + ks.QueueDropped; got != burst {
		t.Errorf("handler saw %d + kernel dropped %d+%d = %d, want the burst of %d", bursts.Load(), ks.UserDropped, ks.QueueDropped, got, burst)
	}
	if st.Received != uint64(bursts.Load()) || st.Verdicts.Drop != st.Received || st.ReceiveErrors != 0 || st.VerdictErrors != 0 {
		t.Errorf("stats %+v inconsistent with %d packets handled", st, bursts.Load())
	}

	// The loop survived: a fresh packet still reaches the handler.
	if _, err := sender.WriteToUDP(payload, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: markerPort}); err != nil {
		t.Fatal(err)
	}
	if !poll.Until(2*time.Second, func() bool { return markers.Load() == 1 }) {
		t.Fatalf("packet after the overflow never reached the handler; stats %+v", q.Stats())
	}
}

// TestFailOpen checks that FailOpen reaches the kernel: with a tiny queue
// and a slow handler, the overflow is accepted unseen when failing open and
// dropped (and counted) when failing closed.
func TestFailOpen(t *testing.T) {
	const (
		queue = 5
		burst = 300
	)
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failopen=%v", failOpen), func(t *testing.T) {
			ns := nstest.New(t, "sgt-nfq")
			var rx *net.UDPConn
			if err := ns.Do(func() (err error) {
				rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rx.Close() })
			if err := rx.SetReadBuffer(4 << 20); err != nil {
				t.Fatal(err)
			}
			dst := rx.LocalAddr().(*net.UDPAddr)
			iptables(t, ns, false, "-A", "INPUT", "-p", "udp", "--dport", strconv.Itoa(dst.Port), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))

			q := openQueue(t, ns, nfq.Config{Queue: queue, MaxQueueLen: 4, FailOpen: failOpen})
			var handled atomic.Int32
			runQueue(t, q, func(p *nfq.Packet) nf.Verdict {
				handled.Add(1)
				time.Sleep(time.Millisecond) // a slow handler, so that the queue of 4 overflows
				return nf.Accept
			})

			sender := udpSender(t, ns)
			for range burst {
				if _, err := sender.WriteToUDP([]byte("x"), dst); err != nil {
					t.Fatal(err)
				}
			}
			if !poll.Until(5*time.Second, func() bool {
				ks, ok := kernelStats(t, ns, queue)
				return ok && ks.Waiting == 0 && ks.LastID == uint32(handled.Load())
			}) {
				t.Fatal("queue did not drain")
			}
			var delivered int
			buf := make([]byte, 16)
			for {
				rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, _, err := rx.ReadFromUDP(buf); err != nil {
					break
				}
				delivered++
			}
			ks, _ := kernelStats(t, ns, queue)
			t.Logf("handled %d, delivered %d, kernel %+v", handled.Load(), delivered, ks)
			if int(handled.Load()) >= burst {
				t.Fatalf("the queue of 4 never overflowed (handled all %d)", burst)
			}
			if failOpen {
				if delivered != burst {
					t.Errorf("fail-open delivered %d of %d", delivered, burst)
				}
				if ks.QueueDropped != 0 {
					t.Errorf("fail-open: kernel queue_dropped = %d, want 0", ks.QueueDropped)
				}
			} else {
				if delivered != int(handled.Load()) {
					t.Errorf("fail-closed delivered %d, handler accepted %d", delivered, handled.Load())
				}
				if ks.QueueDropped+ks.UserDropped != uint64(burst)-uint64(handled.Load()) {
					t.Errorf("fail-closed: kernel dropped %d+%d, want %d", ks.QueueDropped, ks.UserDropped, burst-int(handled.Load()))
				}
			}
		})
	}
}

// TestMultipleQueues runs two queues side by side, each with its own
// socket, goroutine and traffic.
func TestMultipleQueues(t *testing.T) {
	ns := nstest.New(t, "sgt-nfq")
	queues := []uint16{20, 21}
	type qs struct {
		addr *net.TCPAddr
		q    *nfq.Queue
		s    seen
	}
	all := make([]*qs, len(queues))
	for i, num := range queues {
		x := &qs{addr: nstest.ListenTCP(t, ns, "127.0.0.1:0")}
		iptables(t, ns, false, "-A", "INPUT", "-p", "tcp", "--dport", strconv.Itoa(x.addr.Port), "--syn", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(num)))
		x.q = openQueue(t, ns, nfq.Config{Queue: num})
		runQueue(t, x.q, func(p *nfq.Packet) nf.Verdict {
			x.s.add(p)
			return nf.Accept
		})
		all[i] = x
	}
	if all[0].q.PortID() == all[1].q.PortID() {
		t.Fatalf("both queues on netlink port %d", all[0].q.PortID())
	}
	var wg sync.WaitGroup
	for _, x := range all {
		for range 5 {
			wg.Go(func() {
				if err := dialTCP(ns, x.addr, 2*time.Second); err != nil {
					t.Errorf("connect to %v: %v", x.addr, err)
				}
			})
		}
	}
	wg.Wait()
	for i, x := range all {
		segs, _, _ := x.s.snapshot()
		if len(segs) != 5 {
			t.Errorf("queue %d saw %d SYNs, want 5", queues[i], len(segs))
		}
		for _, seg := range segs {
			if seg.dport != uint16(x.addr.Port) {
				t.Errorf("queue %d saw a SYN to port %d, want only %d", queues[i], seg.dport, x.addr.Port)
			}
		}
		ks, ok := kernelStats(t, ns, queues[i])
		if !ok || ks.PortID != x.q.PortID() {
			t.Errorf("kernel stats for queue %d: %+v (listed %v), want port id %d", queues[i], ks, ok, x.q.PortID())
		}
	}
}

// TestRunStopsPromptly checks that Run returns nil soon after its context
// is cancelled, that the queue is unbound and no goroutine is left behind.
func TestRunStopsPromptly(t *testing.T) {
	const queue = 30
	ns := nstest.New(t, "sgt-nfq")
	sender := udpSender(t, ns)
	iptables(t, ns, false, "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))
	before := runtime.NumGoroutine()

	var q *nfq.Queue
	if err := ns.Do(func() (err error) {
		q, err = nfq.Open(nfq.Config{Queue: queue})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var handled atomic.Int32
	go func() {
		done <- q.Run(ctx, func(*nfq.Packet) nf.Verdict {
			handled.Add(1)
			return nf.Accept
		})
	}()
	// Run is under way once a packet has been through its loop.
	if _, err := sender.WriteToUDP([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}); err != nil {
		t.Fatal(err)
	}
	poll.Must(t, 2*time.Second, "Run handed no packet to its handler", func() bool { return handled.Load() > 0 })
	if _, ok := kernelStats(t, ns, queue); !ok {
		t.Fatal("queue not bound while running")
	}

	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Run did not return within 1s of cancel")
	}
	t.Logf("Run returned %v after cancel", time.Since(start))
	if ks, ok := kernelStats(t, ns, queue); ok {
		t.Fatalf("queue still bound after Run returned: %+v", ks)
	}
	if err := q.Run(context.Background(), func(*nfq.Packet) nf.Verdict { return nf.Accept }); !errors.Is(err, nfq.ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close after Run: %v", err)
	}

	if !poll.Until(2*time.Second, func() bool { return runtime.NumGoroutine() <= before }) {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// TestRunWithDoneContext checks that Run given a context that is already
// done returns nil at once and unbinds the queue.
func TestRunWithDoneContext(t *testing.T) {
	const queue = 32
	ns := nstest.New(t, "sgt-nfq")
	var q *nfq.Queue
	if err := ns.Do(func() (err error) {
		q, err = nfq.Open(nfq.Config{Queue: queue})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx, func(*nfq.Packet) nf.Verdict { return nf.Accept }) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run with a done context: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run with a done context did not return")
	}
	if ks, ok := kernelStats(t, ns, queue); ok {
		t.Fatalf("queue still bound after Run returned: %+v", ks)
	}
}

// TestCloseBeforeRun checks Close on a queue that never ran, with packets
// waiting, and that Run afterwards reports the queue closed.
func TestCloseBeforeRun(t *testing.T) {
	const queue = 31
	ns := nstest.New(t, "sgt-nfq")
	before := runtime.NumGoroutine()
	sender := udpSender(t, ns)
	iptables(t, ns, false, "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))
	var q *nfq.Queue
	if err := ns.Do(func() (err error) {
		q, err = nfq.Open(nfq.Config{Queue: queue})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := sender.WriteToUDP([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}); err != nil {
			t.Fatal(err)
		}
	}
	if !poll.Until(2*time.Second, func() bool { ks, _ := kernelStats(t, ns, queue); return ks.Waiting == 10 }) {
		t.Fatal("packets not waiting")
	}
	closed := make(chan error, 1)
	go func() { closed <- q.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close blocked with packets waiting for Run")
	}
	if err := q.Run(context.Background(), func(*nfq.Packet) nf.Verdict { return nf.Accept }); !errors.Is(err, nfq.ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
	if !poll.Until(2*time.Second, func() bool { return runtime.NumGoroutine() <= before }) {
		t.Fatalf("goroutines: %d before, %d after", before, runtime.NumGoroutine())
	}
}

// TestOpenQueueInUse checks that a queue number bound by another socket is
// refused rather than shared.
func TestOpenQueueInUse(t *testing.T) {
	const queue = 40
	ns := nstest.New(t, "sgt-nfq")
	first := openQueue(t, ns, nfq.Config{Queue: queue})
	err := ns.Do(func() error {
		q, err := nfq.Open(nfq.Config{Queue: queue})
		if err == nil {
			q.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("second Open of a bound queue succeeded")
	}
	if want := fmt.Sprintf("bound by another socket, netlink port id %d", first.PortID()); !strings.Contains(err.Error(), want) {
		t.Fatalf("second Open: %v; want it to say %q", err, want)
	}
}

// TestOpenUnderLoad binds a queue repeatedly while packets stream into it:
// packets arriving during setup must neither make Open fail nor be left
// waiting in the kernel without a verdict.
func TestOpenUnderLoad(t *testing.T) {
	const (
		queue = 50
		opens = 30
		port  = 9
	)
	ns := nstest.New(t, "sgt-nfq")
	sender := udpSender(t, ns)
	iptables(t, ns, false, "-A", "INPUT", "-p", "udp", "--dport", strconv.Itoa(port), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
		for i := 0; i < 10_000_000 && ctx.Err() == nil; i++ { // bounded
			if _, err := sender.WriteToUDP([]byte("x"), dst); err != nil {
				t.Error(err)
				return
			}
			sent.Add(1)
		}
	})
	t.Cleanup(wg.Wait)
	if !poll.Until(time.Second, func() bool { return sent.Load() > 1000 }) {
		t.Fatal("sender not sending")
	}

	for i := range opens {
		err := ns.Do(func() error {
			q, err := nfq.Open(nfq.Config{Queue: queue})
			if err != nil {
				return err
			}
			return q.Close()
		})
		if err != nil {
			t.Fatalf("open %d of %d under load: %v", i+1, opens, err)
		}
	}

	// Bind once more and run; then stop the stream. Every packet the kernel
	// queued to us, including those held back during setup, must get its
	// verdict: nothing may stay waiting.
	q := openQueue(t, ns, nfq.Config{Queue: queue})
	var handled atomic.Int64
	var firstID atomic.Uint32
	runQueue(t, q, func(p *nfq.Packet) nf.Verdict {
		firstID.CompareAndSwap(0, p.ID)
		handled.Add(1)
		return nf.Drop
	})
	if !poll.Until(2*time.Second, func() bool { return handled.Load() > 1000 }) {
		t.Fatalf("handler saw only %d packets", handled.Load())
	}
	cancel()
	wg.Wait()
	var ks nfq.KernelQueueStats
	if !poll.Until(5*time.Second, func() bool {
		ks, _ = kernelStats(t, ns, queue)
		return ks.Waiting == 0
	}) {
		t.Fatalf("packets left waiting in the kernel: %+v (first id seen %d)", ks, firstID.Load())
	}
	st := q.Stats()
	t.Logf("sent %d; first id the handler saw %d; stats %+v; kernel %+v", sent.Load(), firstID.Load(), st, ks)
	if st.VerdictErrors != 0 || st.ReceiveErrors != 0 || st.Malformed != 0 {
		t.Errorf("errors counted: %+v", st)
	}
}

// TestKernelStatsReaderFollowsTheTable reads the kernel's queue table
// through one open file while queues are bound and unbound: each read
// shows the table as it is then, also once it outgrows the first buffer.
func TestKernelStatsReaderFollowsTheTable(t *testing.T) {
	ns := nstest.New(t, "sgt-nfq")
	var r *nfq.KernelStatsReader
	if err := ns.Do(func() (err error) {
		r, err = nfq.OpenKernelStats()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	listed := func() map[uint16]uint32 {
		t.Helper()
		all, err := r.Read()
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		m := make(map[uint16]uint32, len(all))
		for _, s := range all {
			m[s.Queue] = s.PortID
		}
		return m
	}
	if got := listed(); len(got) != 0 {
		t.Fatalf("fresh namespace lists queues %v", got)
	}
	// About 55 bytes a line: 80 queues outgrow a 4 KiB buffer.
	const n = 80
	queues := make([]*nfq.Queue, n)
	for i := range queues {
		queues[i] = openQueue(t, ns, nfq.Config{Queue: uint16(100 + i)})
	}
	got := listed()
	for i, q := range queues {
		if id, ok := got[uint16(100+i)]; !ok || id != q.PortID() {
			t.Errorf("queue %d listed %v with port id %d, want port id %d", 100+i, ok, id, q.PortID())
		}
	}
	if len(got) != n {
		t.Errorf("%d queues listed, want %d", len(got), n)
	}
	for _, q := range queues[n/2:] {
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got := listed(); len(got) != n/2 {
		t.Errorf("%d queues listed after %d were closed, want %d", len(got), n-n/2, n/2)
	}
}
