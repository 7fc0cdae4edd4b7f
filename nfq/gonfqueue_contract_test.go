package nfq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
)

// What Open's hand-over of go-nfqueue's socket (bind, park and shutdown in
// queue.go) assumes about go-nfqueue. TestGoNfqueueContract checks each
// against the library and a real queue, and names the one that broke.
const (
	assumeOpenOnlyDials = "nfqueue.Open only dials the netlink socket and binds no queue, " +
		"so the setup filter and the stale-message discard come before any packet message can arrive"
	assumeConIsTheSocket = "Nfqueue.Con is the queue's one netlink socket: the fd behind Con.SyscallConn has " +
		"the port id Con.PID(), and SetBPF, RemoveBPF and SetReadDeadline work on it"
	assumeRegisterConfigures = "RegisterWithErrorFunc binds the queue to Con and configures it before it returns: " +
		"the kernel lists it with port id Con.PID(), copy mode packet (Copymode NfQnlCopyPacket) " +
		"and the whole packet copied (MaxPacketLen, clamped by the kernel)"
	assumeExchangeNeedsNoPackets = "RegisterWithErrorFunc's configuration exchange on Con needs no packet message: " +
		"it succeeds with holdPacketsFilter attached while packets stream into the queue"
	assumeQueueParams = "Config.MaxQueueLen and Config.Flags (NfQaCfgFlagFailOpen) reach the kernel " +
		"(the queue holds MaxQueueLen packets; the overflow is dropped and counted, or accepted with fail-open)"
	assumeHookNeverCalled = "go-nfqueue's receive goroutine reads Con only through Con.Receive, which holdPacketsFilter " +
		"keeps packets from: the HookFunc is never called"
	assumeDeadlineParks = "a read deadline in the past set on Con fails the blocked receive of go-nfqueue's goroutine, " +
		"which then calls the ErrorFunc (on that goroutine, once) and reads nothing while the ErrorFunc blocks"
	assumeSocketIsOurs = "while the ErrorFunc blocks, the packet messages on Con are left to nfq's own reads of " +
		"the fd, and the verdicts nfq writes to the fd are the ones the kernel applies"
	assumeNonZeroStops       = "an ErrorFunc that returns non-zero ends go-nfqueue's receive loop: it is not called again"
	assumeCloseAfterConClose = "Nfqueue.Close after Con.Close (shutdown closes the socket first, then releases the " +
		"ErrorFunc) returns promptly and waits for go-nfqueue's goroutines: none is left"
	assumeClosingUnbinds = "closing Con unbinds the queue (go-nfqueue's own unbind then fails on the closed " +
		"socket, which is expected)"
)

const goNfqueueModule = "github.com/florianl/go-nfqueue/v2"

// goNfqueueVersion is the version of go-nfqueue the test is built with:
// from the build information when it lists dependencies (a test binary's
// does not), else as go.mod requires it.
func goNfqueueVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, m := range info.Deps {
			if m.Path != goNfqueueModule {
				continue
			}
			if m.Replace != nil {
				return m.Version + " (replaced by " + m.Replace.Path + " " + m.Replace.Version + ")"
			}
			return m.Version
		}
	}
	if b, err := os.ReadFile("../go.mod"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == goNfqueueModule {
				return f[1]
			}
		}
	}
	return "(version unknown)"
}

// broken fails t: go-nfqueue no longer behaves as assumed.
func broken(t *testing.T, assumption, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s %s breaks nfq's hand-over of its socket (queue.go: bind, park, shutdown)\n"+
		"assumption: %s\nobserved:   %s", goNfqueueModule, goNfqueueVersion(), assumption, fmt.Sprintf(format, args...))
}

// TestGoNfqueueContract drives go-nfqueue through the steps of Open and
// Close on a real queue, exactly as bind, park and shutdown use it, and
// checks after each step what they rely on. An upgrade of go-nfqueue that
// changes any of it fails here, naming the assumption, rather than as a
// hang or a lost packet in Open or in the receive loop.
func TestGoNfqueueContract(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failopen=%v", failOpen), func(t *testing.T) { testGoNfqueueContract(t, failOpen) })
	}
}

func testGoNfqueueContract(t *testing.T, failOpen bool) {
	const (
		queue       = 60
		maxQueueLen = 4
		burst       = 10
	)
	ns := nstest.New(t, "sgt-nfqc")

	// A UDP service behind the queue, and a client. With fail-open, what
	// the full queue lets past arrives at the service; so do the packets
	// nfq accepts.
	var rx, tx *net.UDPConn
	if err := ns.Do(func() (err error) {
		if rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			return err
		}
		tx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close(); tx.Close() })
	if err := rx.SetReadBuffer(1 << 20); err != nil {
		t.Fatal(err)
	}
	dst := rx.LocalAddr().(*net.UDPAddr)
	if err := ns.Run(context.Background(), "iptables", "-A", "INPUT", "-p", "udp", "--dport", strconv.Itoa(dst.Port),
		"-j", "NFQUEUE", "--queue-num", strconv.Itoa(queue)); err != nil {
		t.Fatal(err)
	}
	var arrived sync.Map // payload -> *atomic.Int32: what reached the service
	countArrived := func(payload string) int32 {
		n, _ := arrived.LoadOrStore(payload, new(atomic.Int32))
		return n.(*atomic.Int32).Load()
	}
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := rx.ReadFromUDP(buf)
			if err != nil {
				return // closed at cleanup
			}
			c, _ := arrived.LoadOrStore(string(buf[:n]), new(atomic.Int32))
			c.(*atomic.Int32).Add(1)
		}
	}()
	send := func(payload string) {
		t.Helper()
		if _, err := tx.WriteToUDP([]byte(payload), dst); err != nil {
			t.Fatal(err)
		}
	}
	kernel := func() (KernelQueueStats, bool) {
		t.Helper()
		var all []KernelQueueStats
		if err := ns.Do(func() (err error) {
			all, err = KernelStats()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, s := range all {
			if s.Queue == queue {
				return s, true
			}
		}
		return KernelQueueStats{}, false
	}

	goroutinesBefore := runtime.NumGoroutine()

	// bind: nfqueue.Open with the configuration bind passes.
	var flags uint32
	if failOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	log := zerolog.New(zerolog.NewTestWriter(t))
	var lib *nfqueue.Nfqueue
	if err := ns.Do(func() (err error) {
		lib, err = nfqueue.Open(&nfqueue.Config{
			NfQueue:      queue,
			MaxQueueLen:  maxQueueLen,
			MaxPacketLen: copyRange,
			Copymode:     nfqueue.NfQnlCopyPacket,
			Flags:        flags,
			AfFamily:     unix.AF_UNSPEC,
			Logger:       nfLogger{&log},
		})
		return err
	}); err != nil {
		t.Fatalf("nfqueue.Open: %v", err)
	}

	// The callbacks park like onError and onPacket, and count.
	var hookCalls, errCalls atomic.Int32
	firstErr := make(chan error, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseCallbacks := func() { releaseOnce.Do(func() { close(release) }) }
	hook := func(nfqueue.Attribute) int {
		hookCalls.Add(1)
		<-release
		return 1
	}
	errfn := func(err error) int {
		if errCalls.Add(1) == 1 {
			firstErr <- err
		}
		<-release
		return 1
	}
	var closeOnce sync.Once
	closeAll := func() (conErr, nfErr error, returned bool) {
		closeOnce.Do(func() {
			conErr = lib.Con.Close()
			releaseCallbacks()
			done := make(chan error, 1)
			go func() { done <- lib.Close() }()
			select {
			case nfErr = <-done:
				returned = true
			case <-time.After(5 * time.Second):
			}
		})
		return conErr, nfErr, returned
	}
	t.Cleanup(func() { closeAll() })

	if lib.Con == nil || lib.Con.PID() == 0 {
		broken(t, assumeConIsTheSocket, "nfqueue.Open returned Con %v with port id 0", lib.Con)
	}
	if ks, ok := kernel(); ok {
		broken(t, assumeOpenOnlyDials, "queue %d is bound right after nfqueue.Open: kernel lists %+v", queue, ks)
	}
	rc, err := lib.Con.SyscallConn()
	if err != nil {
		broken(t, assumeConIsTheSocket, "Con.SyscallConn: %v", err)
	}
	var sa unix.Sockaddr
	var saErr error
	if err := rc.Control(func(fd uintptr) { sa, saErr = unix.Getsockname(int(fd)) }); err != nil || saErr != nil {
		broken(t, assumeConIsTheSocket, "getsockname on Con's fd: %v, %v", err, saErr)
	}
	if nl, ok := sa.(*unix.SockaddrNetlink); !ok || nl.Pid != lib.Con.PID() {
		broken(t, assumeConIsTheSocket, "Con's fd is bound to %#v, Con.PID() is %d", sa, lib.Con.PID())
	}
	if err := lib.Con.SetBPF(holdPacketsFilter); err != nil {
		broken(t, assumeConIsTheSocket, "Con.SetBPF(holdPacketsFilter): %v", err)
	}

	// Register while packets stream into the queue: from the bind command
	// on they are queued to us, and the filter keeps them off the socket.
	streamCtx, stopStream := context.WithCancel(context.Background())
	var streamed atomic.Int64
	var streamWG sync.WaitGroup
	streamWG.Go(func() {
		for i := 0; i < 10_000_000 && streamCtx.Err() == nil; i++ { // bounded
			if _, err := tx.WriteToUDP([]byte("stream"), dst); err != nil {
				t.Error(err)
				return
			}
			streamed.Add(1)
		}
	})
	t.Cleanup(func() { stopStream(); streamWG.Wait() })
	poll.Must(t, 2*time.Second, "the packet stream did not start", func() bool { return streamed.Load() > 100 })
	err = lib.RegisterWithErrorFunc(context.Background(), hook, errfn)
	if err != nil {
		broken(t, assumeExchangeNeedsNoPackets, "RegisterWithErrorFunc with the setup filter attached, %d packets streamed: %v", streamed.Load(), err)
	}
	// The stream goes on until the kernel has queued packets to us, so
	// that go-nfqueue's goroutine, in its receive, has had packets to take.
	ks, ok := kernel()
	poll.Until(2*time.Second, func() bool { ks, ok = kernel(); return ks.LastID > 0 })
	stopStream()
	streamWG.Wait()
	switch {
	case !ok:
		broken(t, assumeRegisterConfigures, "queue %d not listed by the kernel after RegisterWithErrorFunc returned", queue)
	case ks.PortID != lib.Con.PID():
		broken(t, assumeRegisterConfigures, "queue bound to port id %d, Con.PID() is %d", ks.PortID, lib.Con.PID())
	case ks.CopyMode != 2 || ks.CopyRange < copyRange-4:
		broken(t, assumeRegisterConfigures, "kernel lists copy mode %d, copy range %d; want 2 (packet) and at least %d", ks.CopyMode, ks.CopyRange, copyRange-4)
	}
	if ks.LastID == 0 {
		t.Fatalf("no packet was queued to the bound queue (%d streamed): the test proves nothing", streamed.Load())
	}
	if n := hookCalls.Load(); n != 0 {
		broken(t, assumeHookNeverCalled, "HookFunc called %d times during setup", n)
	}

	// park: a read deadline in the past.
	if err := lib.Con.SetReadDeadline(time.Unix(1, 0)); err != nil {
		broken(t, assumeConIsTheSocket, "Con.SetReadDeadline: %v", err)
	}
	select {
	case err := <-firstErr:
		t.Logf("go-nfqueue %s parked with ErrorFunc(%v)", goNfqueueVersion(), err)
	case <-time.After(parkTimeout):
		broken(t, assumeDeadlineParks, "ErrorFunc not called within %v of the read deadline (HookFunc called %d times)", parkTimeout, hookCalls.Load())
	}
	if err := lib.Con.SetReadDeadline(time.Time{}); err != nil {
		broken(t, assumeConIsTheSocket, "clearing Con's read deadline: %v", err)
	}

	// The queue's length and flags, seen through a burst while the filter
	// still holds every packet message back: the queue fills up, the rest
	// overflows.
	verdictAll(t, rc, kernel, queue, nfDrop)
	ks, _ = kernel()
	droppedBefore := ks.QueueDropped
	for range burst {
		send("burst")
	}
	wantPast := int32(0)
	if failOpen {
		wantPast = burst - maxQueueLen
	}
	if !poll.Until(2*time.Second, func() bool {
		ks, _ = kernel()
		return ks.Waiting == maxQueueLen && countArrived("burst") == wantPast &&
			(failOpen || ks.QueueDropped-droppedBefore == burst-maxQueueLen)
	}) {
		broken(t, assumeQueueParams, "after %d packets into a queue configured with MaxQueueLen %d, fail-open %v: kernel %+v "+
			"(queue_dropped %d before), %d reached the service; want %d waiting and %d past the queue",
			burst, maxQueueLen, failOpen, ks, droppedBefore, countArrived("burst"), maxQueueLen, wantPast)
	}
	if failOpen && ks.QueueDropped != droppedBefore {
		broken(t, assumeQueueParams, "fail-open queue counted %d queue drops", ks.QueueDropped-droppedBefore)
	}

	// The receive loop's turn: the filter goes, packets reach the socket,
	// and only nfq reads them and answers them.
	verdictAll(t, rc, kernel, queue, nfDrop)
	if err := lib.Con.RemoveBPF(); err != nil {
		broken(t, assumeConIsTheSocket, "Con.RemoveBPF: %v", err)
	}
	const ours = 3
	for range ours {
		send("ours")
	}
	var ids []uint32
	if !poll.Until(2*time.Second, func() bool {
		got, err := readPacketIDs(rc)
		if err != nil {
			t.Fatalf("reading Con's fd: %v", err)
		}
		ids = append(ids, got...)
		return len(ids) >= ours
	}) || len(ids) != ours {
		broken(t, assumeSocketIsOurs, "read %d packet messages from Con's fd (ids %v), want %d; HookFunc called %d times, ErrorFunc %d",
			len(ids), ids, ours, hookCalls.Load(), errCalls.Load())
	}
	if err := writeVerdict(rc, queue, ids[len(ids)-1], nfAccept); err != nil {
		broken(t, assumeSocketIsOurs, "writing a verdict to Con's fd: %v", err)
	}
	if !poll.Until(2*time.Second, func() bool { return countArrived("ours") == ours }) {
		ks, _ = kernel()
		broken(t, assumeSocketIsOurs, "%d of the %d packets accepted by a verdict written to Con's fd reached the service; kernel %+v",
			countArrived("ours"), ours, ks)
	}
	if h, e := hookCalls.Load(), errCalls.Load(); h != 0 || e != 1 {
		broken(t, assumeDeadlineParks, "while parked: HookFunc called %d times, ErrorFunc %d; want 0 and 1", h, e)
	}

	// shutdown: close the socket, release the callbacks, close go-nfqueue.
	conErr, nfErr, returned := closeAll()
	if conErr != nil {
		t.Errorf("Con.Close: %v", conErr)
	}
	if !returned {
		broken(t, assumeCloseAfterConClose, "Nfqueue.Close did not return within 5s")
	}
	t.Logf("Nfqueue.Close after Con.Close: %v", nfErr)
	if n := errCalls.Load(); n != 1 {
		broken(t, assumeNonZeroStops, "ErrorFunc called %d times", n)
	}
	if n := hookCalls.Load(); n != 0 {
		broken(t, assumeHookNeverCalled, "HookFunc called %d times", n)
	}
	if !poll.Until(2*time.Second, func() bool { _, ok := kernel(); return !ok }) {
		ks, _ := kernel()
		broken(t, assumeClosingUnbinds, "queue still bound after Con and Nfqueue were closed: %+v", ks)
	}
	if !poll.Until(2*time.Second, func() bool { return runtime.NumGoroutine() <= goroutinesBefore }) {
		buf := make([]byte, 1<<16)
		broken(t, assumeCloseAfterConClose, "goroutines: %d before nfqueue.Open, %d after Nfqueue.Close\n%s",
			goroutinesBefore, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}

// verdictAll gives every packet waiting in queue the verdict, through the
// socket's fd, and waits until none waits.
func verdictAll(t *testing.T, rc syscall.RawConn, kernel func() (KernelQueueStats, bool), queue uint16, verdict uint32) {
	t.Helper()
	ks, _ := kernel()
	if ks.Waiting == 0 {
		return
	}
	if err := writeVerdict(rc, queue, ks.LastID, verdict); err != nil {
		broken(t, assumeSocketIsOurs, "writing a verdict to Con's fd: %v", err)
	}
	if !poll.Until(2*time.Second, func() bool { ks, _ = kernel(); return ks.Waiting == 0 }) {
		broken(t, assumeSocketIsOurs, "a batch verdict up to id %d written to Con's fd left %+v", ks.LastID, ks)
	}
}

// writeVerdict writes one NFQNL_MSG_VERDICT_BATCH to the socket, as the
// receive loop does.
func writeVerdict(rc syscall.RawConn, queue uint16, id, verdict uint32) error {
	b := make([]byte, verdictMsgLen)
	putVerdictBatch(b, queue, id, verdict)
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), b)
		return !errors.Is(werr, unix.EAGAIN)
	})
	if err != nil {
		return err
	}
	return werr
}

// readPacketIDs reads what waits on the socket, without waiting, and
// returns the ids of the packet messages among it.
func readPacketIDs(rc syscall.RawConn) ([]uint32, error) {
	buf := make([]byte, rxSlot)
	var ids []uint32
	var rerr error
	err := rc.Control(func(fd uintptr) {
		for {
			n, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) {
					rerr = err
				}
				return
			}
			for b := buf[:n]; len(b) >= nlmsgHdrLen; {
				l := int(nativeUint32(b[0:4]))
				if l < nlmsgHdrLen || l > len(b) {
					break
				}
				if nativeUint16(b[4:6]) == nfnlPacketMsg {
					var m packetMsg
					parsePacketMsg(b[nlmsgHdrLen:l], &m)
					if m.hasID {
						ids = append(ids, m.id)
					}
				}
				b = b[min(align4(l), len(b)):]
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return ids, rerr
}
