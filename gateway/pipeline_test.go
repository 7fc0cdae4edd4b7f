package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/packet"
	"github.com/synguard/synguard/rawsock"
)

// The packet path of a gateway, assembled in this process as Run wires it
// (queue, worker, batched sends), against the kernel of a lab: spoofed
// SYNs from the client namespace are queued in the gateway namespace's raw
// PREROUTING, answered, and the SYN-ACKs sent back to the client namespace
// (on the ingress link, or routed), which discards them.

var pipelineSeq atomic.Int32

type pipeline struct {
	q   *nfq.Queue
	eng *engine.Engine
	inj *injector
	gw  *netns.NS
}

// replyPaths are the ways out a pipeline's SYN-ACKs can take.
var replyPaths = []ReplyPath{ReplyIngress, ReplyRoute}

var service = netip.MustParseAddrPort("203.0.113.2:80")

// noHandoff is a conntrack table that takes every hand-off: the
// pipeline's SYNs never complete a handshake.
type noHandoff struct{}

func (noHandoff) Create(handoff.Flow) error        { return nil }
func (noHandoff) Delete(_, _ netip.AddrPort) error { return nil }

func newPipeline(tb testing.TB, path ReplyPath) *pipeline {
	tb.Helper()
	roottest.Require(tb)
	ctx := context.Background()
	topo, err := lab.Up(ctx, lab.Config{Name: fmt.Sprintf("sgpl%d-%d", os.Getpid()%100000, pipelineSeq.Add(1)), DisableIPv6: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := topo.Down(context.Background()); err != nil {
			tb.Errorf("lab down: %v", err)
		}
	})
	gw := topo.Gateway
	for _, rule := range [][]string{
		{"-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--syn", "-d", service.Addr().String(), "--dport", fmt.Sprint(service.Port()), "-j", "NFQUEUE", "--queue-num", "0"},
		{"-t", "raw", "-A", "OUTPUT", "-m", "mark", "--mark", fmt.Sprint(firewall.DefaultEngineMark), "-j", "CT", "--notrack"},
	} {
		if err := gw.Run(ctx, "iptables", append([]string{"-w"}, rule...)...); err != nil {
			tb.Fatal(err)
		}
	}

	p := &pipeline{gw: gw}
	var sender *rawsock.Sender
	if err := gw.Do(func() (err error) {
		if p.q, err = nfq.Open(nfq.Config{Queue: 0}); err != nil {
			return err
		}
		sender, err = rawsock.Open(firewall.DefaultEngineMark)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sender.Close() })
	jar, err := cookies.New(cookies.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	p.eng, err = engine.New(engine.Config{
		Services: []engine.ServiceConfig{{Addr: service}}, Mode: engine.ModeAlways, Cookies: jar,
		NewBatch:        func() engine.Batch { return sender.NewBatch() },
		Kernel:          noHandoff{},
		BackendOverride: &engine.BackendOptions{MSS: 1460, WindowScale: 7, SACKPermitted: true},
	})
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	h := newQueueHandler(p.eng, p.q, sender, path, firewall.DefaultStaleMark)
	go func() { done <- p.q.RunBatch(runCtx, h) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("RunBatch: %v", err)
		}
	})

	if err := topo.Client.Do(func() (err error) {
		p.inj, err = newInjector(service)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(p.inj.fd) })
	return p
}

// routed is the number of the engine's packets that took the routed way
// out: the packet counter of the raw OUTPUT rule matching its mark.
func (p *pipeline) routed(tb testing.TB) int {
	tb.Helper()
	out, err := p.gw.Output(context.Background(), "iptables", "-w", "-t", "raw", "-L", "OUTPUT", "-v", "-n", "-x")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if strings.Contains(line, "mark match") {
			n, err := strconv.Atoi(strings.Fields(line)[0])
			if err != nil {
				tb.Fatal(err)
			}
			return n
		}
	}
	tb.Fatalf("no mark rule in:\n%s", out)
	return 0
}

// answered is the number of SYN-ACKs the engine sent.
func (p *pipeline) answered() uint64 {
	st := p.eng.Stats(0)
	return st.Get(engine.SYNACKSent)
}

// await waits until the engine has answered n SYNs, without allocating.
func (p *pipeline) await(tb testing.TB, n uint64) {
	deadline := time.Now().Add(10 * time.Second)
	for p.answered() < n {
		if time.Now().After(deadline) {
			tb.Fatalf("engine answered %d SYNs of %d; queue stats %+v", p.answered(), n, p.q.Stats())
		}
		runtime.Gosched()
	}
}

// injector sends spoofed SYNs in batches through a raw socket.
type injector struct {
	fd   int
	dst  netip.AddrPort
	buf  [64][packet.MaxHandshakeLen]byte
	iovs [64]unix.Iovec
	msgs [64]unix.Mmsghdr
	seq  uint32
}

func newInjector(dst netip.AddrPort) (*injector, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4()}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	in := &injector{fd: fd, dst: dst}
	for i := range in.msgs {
		in.iovs[i].Base = &in.buf[i][0]
		in.msgs[i].Hdr.Iov = &in.iovs[i]
		in.msgs[i].Hdr.SetIovlen(1)
	}
	return in, nil
}

// send sends n ≤ 64 SYNs from distinct spoofed sources in 198.18.0.0/15.
func (in *injector) send(tb testing.TB, n int) {
	for i := range n {
		in.seq++
		src := netip.AddrFrom4([4]byte{198, 18, byte(in.seq >> 8), byte(in.seq)})
		s := packet.Segment{
			Src: netip.AddrPortFrom(src, uint16(1024+in.seq%60000)), Dst: in.dst,
			Seq: in.seq * 7919, Flags: packet.SYN, Window: 64240,
			Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true},
		}
		k, err := packet.Build(in.buf[i][:], &s)
		if err != nil {
			tb.Fatal(err)
		}
		in.iovs[i].SetLen(k)
	}
	for off := 0; off < n; {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(in.fd), uintptr(unsafe.Pointer(&in.msgs[off])), uintptr(n-off), 0, 0, 0)
		if e != 0 {
			tb.Fatalf("inject: %v", e)
		}
		off += int(r)
	}
}

// TestPipelineAllocatesNothing checks the whole path of a SYN in the
// gateway process, receive to verdict, against the real kernel: queued
// SYNs are answered, and no batch allocates.
func TestPipelineAllocatesNothing(t *testing.T) {
	for _, path := range replyPaths {
		t.Run(path.String(), func(t *testing.T) { testPipelineAllocatesNothing(t, path) })
	}
}

func testPipelineAllocatesNothing(t *testing.T, path ReplyPath) {
	p := newPipeline(t, path)
	p.inj.send(t, 64) // warm up: first use of sockets, route and neighbour
	p.await(t, 64)
	var want uint64 = 64
	if n := testing.AllocsPerRun(50, func() {
		p.inj.send(t, 64)
		want += 64
		p.await(t, want)
	}); n != 0 {
		t.Fatalf("answering 64 SYNs allocates %.1f times (in the whole process)", n)
	}
	st := p.q.Stats()
	if st.Received != want || st.Verdicts.Drop != want || st.VerdictErrors != 0 {
		t.Fatalf("queue stats %+v, want %d received and dropped", st, want)
	}
	es := p.eng.Stats(0)
	if es.Get(engine.SYNReceived) != want || es.Get(engine.SendError) != 0 {
		t.Fatalf("engine saw %d SYNs with %d send errors, want %d and 0", es.Get(engine.SYNReceived), es.Get(engine.SendError), want)
	}
	// Every SYN-ACK took the way out asked for.
	wantRouted := 0
	if path == ReplyRoute {
		wantRouted = int(want)
	}
	if n := p.routed(t); n != wantRouted {
		t.Fatalf("%d SYN-ACKs routed through OUTPUT, want %d", n, wantRouted)
	}
}

// BenchmarkPipeline measures the gateway process's packet path per SYN:
// queue receive, engine, batched SYN-ACK send and verdict, with the kernel
// work the process does for them, once per reply path. The injector, in
// this process too, sends SYNs 64 at a time and keeps at most 4096
// unanswered; the kernel queues them in its context. Allocations are
// counted over the whole process.
func BenchmarkPipeline(b *testing.B) {
	for _, path := range replyPaths {
		b.Run("reply="+path.String(), func(b *testing.B) { benchmarkPipeline(b, path) })
	}
}

func benchmarkPipeline(b *testing.B, path ReplyPath) {
	p := newPipeline(b, path)
	p.inj.send(b, 64)
	p.await(b, 64)
	const window = 4096 // SYNs in flight, well inside the queue's length
	var sent uint64 = 64
	b.ReportAllocs()
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	pending := 0 // SYNs of this batch not yet injected
	for b.Loop() {
		if pending++; pending < 64 {
			continue
		}
		for sent-p.answered() >= window {
			runtime.Gosched()
		}
		p.inj.send(b, pending)
		sent += uint64(pending)
		pending = 0
	}
	p.inj.send(b, pending)
	sent += uint64(pending)
	p.await(b, sent)
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(sent-64)/1e3, "cpu-µs/SYN")
}
