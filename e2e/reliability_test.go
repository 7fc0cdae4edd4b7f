package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/packet"
)

// The reliability tests: synguard under crashes, overload, failing
// backends, forged and malformed traffic. Each one checks a guarantee
// listed in docs/reliability.md.

// waitStarted waits for the gateway's start event: its workers run from
// then on (the metrics answer earlier, while backends are being probed).
func (g *gateway) waitStarted() {
	g.t.Helper()
	if !poll.Until(15*time.Second, func() bool { return strings.Contains(g.log.String(), `"event":"start"`) }) {
		g.t.Fatalf("no start event after 15 s:\n%s", g.log.String())
	}
}

// checkOneCopy requires the rules installed in the gateway namespace to be
// exactly one copy of what `synguard rules ARGS` renders: each rule and
// each jump to a chain as many times as the rendering has it (once per
// family), no more.
func checkOneCopy(t *testing.T, topo *lab.Topology, args ...string) {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"rules"}, args...)...).Output()
	if err != nil {
		t.Fatalf("synguard rules: %v", err)
	}
	want := make(map[string]int)
	for l := range strings.Lines(string(out)) {
		l = strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(l, "-I "); ok {
			// "-I PREROUTING 1 -j SYNGUARD-PREROUTING" is saved as
			// "-A PREROUTING -j SYNGUARD-PREROUTING".
			chain, spec, _ := strings.Cut(rest, " 1 ")
			l = "-A " + chain + " " + spec
		}
		if strings.HasPrefix(l, "-A ") {
			want[l]++
		}
	}
	if len(want) == 0 {
		t.Fatalf("synguard rules printed no rules:\n%s", out)
	}
	s := saved(t, topo.Gateway)
	got := make(map[string]int)
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); strings.Contains(l, "SYNGUARD") && strings.HasPrefix(l, "-A ") {
			got[l]++
		}
	}
	for rule, n := range want {
		if got[rule] != n {
			t.Fatalf("rule %q installed %d times, want %d:\n%s", rule, got[rule], n, s)
		}
	}
	for rule := range got {
		if want[rule] == 0 {
			t.Fatalf("rule %q installed but not rendered:\n%s", rule, s)
		}
	}
}

// TestCrashKeepsFlowsRestartCleansUp: kill -9 of synguard in the middle
// of a download. The handed-off flow lives in the kernel and completes
// intact. The rules stay behind, so with --fail closed new connections
// get nowhere (and the backend sees none of their SYNs) until synguard is
// back. A restart in the same namespace replaces the leftovers with
// exactly one copy of its rules and serves new connections; SIGTERM then
// removes every rule and puts back the sysctl the first run changed.
func TestCrashKeepsFlowsRestartCleansUp(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	syns := watchSYNs(t, topo)
	loose := sysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_loose")
	args := []string{"--protect", service.String(), "--mode", "always", "--fail", "closed"}
	g := startGateway(t, topo.Gateway, args...)
	g.waitStarted()

	// At 4 MiB/s the download spans 8 s, so the crash finds it mid-transfer.
	const size, rate = 32 * mib, 4 * mib
	var got atomic.Int64
	done := make(chan error, 1)
	go func() { done <- slowDownload(topo.Client, service, size, rate, func(n int64) { got.Store(n) }) }()
	if !poll.Until(10*time.Second, func() bool { return got.Load() >= 4*mib }) {
		t.Fatalf("download stuck at %d bytes before the crash", got.Load())
	}
	g.kill()
	atCrash := got.Load()

	// Down, fail closed: the rules are there, nobody serves the queue.
	if s := saved(t, topo.Gateway); !strings.Contains(s, "-j SYNGUARD-PREROUTING") {
		t.Fatalf("the crash removed the rules; fail closed needs them:\n%s", s)
	}
	before := syns.From(topo.ClientAddr)
	if r := lab.Probe(context.Background(), topo.Client, service, 1500*time.Millisecond); r.OK {
		t.Fatal("a new connection succeeded while synguard was down with --fail closed")
	}
	if n := syns.From(topo.ClientAddr) - before; n != 0 {
		t.Fatalf("with synguard down and --fail closed, %d SYNs reached the backend", n)
	}

	g2 := startGateway(t, topo.Gateway, args...)
	g2.waitStarted()
	checkOneCopy(t, topo, args...)
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("new connection after the restart: %v", r.Err)
	}

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("download across the crash and the restart: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("download did not finish")
	}
	// The restarted gateway saw only the probe's handshake packets: the
	// download's flow never came back to the queue.
	// Closing flows' final ACKs visit the queue once each (the
	// port-reuse rule) and are passed untouched; they are not counted.
	if q, want := g2.metric("synguard_queue_received_total")-g2.metric("synguard_stale_passed_total"), g2.handshakeQueued(); q != want {
		t.Fatalf("restarted gateway's queue received %v packets besides closing flows' final ACKs, want %v (one probe's handshake)", q, want)
	}
	t.Logf("download: %d MiB at the crash, %d MiB intact at the end", atCrash/mib, size/mib)

	g2.stop()
	if s := saved(t, topo.Gateway); strings.Contains(s, "SYNGUARD") {
		t.Fatalf("rules left after SIGTERM:\n%s", s)
	}
	if v := sysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_loose"); v != loose {
		t.Fatalf("nf_conntrack_tcp_loose = %s after crash, restart and stop; want %s as before synguard first ran", v, loose)
	}
}

// TestQueueOverflow floods one queue with two generators at their
// maximum and stalls the gateway under them until the queue is full
// (stallUntilFull), so that it overflows on any machine. With --fail closed the kernel drops the
// excess, counts it, and no spoofed SYN reaches the backend. With --fail
// open the kernel lets the excess through unseen (and counts it nowhere;
// docs/architecture.md, "Queues and fail-open"), so spoofed SYNs do reach
// the backend. Either way the
// receive loop carries on: afterwards a legitimate client gets through
// and the queue counter grows.
func TestQueueOverflow(t *testing.T) {
	for _, fail := range []string{"closed", "open"} {
		t.Run("fail "+fail, func(t *testing.T) {
			topo := newLab(t, lab.Config{DisableIPv6: true})
			service := netip.AddrPortFrom(topo.BackendAddr, 80)
			serve(t, topo.Backend, service)
			syns := watchSYNs(t, topo)
			// The queue must be what overflows: the fast path would
			// answer the flood before it.
			g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--fail", fail, "--xdp", "off")
			g.waitStarted()

			const count = 2 * 300_000
			wait1 := flood(t, topo.Client, service, 0, count/2, 3*time.Second)
			wait2 := flood(t, topo.Client, service, 0, count/2, 3*time.Second)
			g.stallUntilFull(0)
			out := wait1() + wait2()
			// Only what the engine counted once it was done with the
			// flood tells whether it fell behind, and only what the
			// backend's watch counted by then whether the excess passed.
			g.waitIdle()
			settleSYNs(t, topo, syns)
			m, err := g.metrics()
			if err != nil {
				t.Fatalf("metrics after the overload: %v", err)
			}
			t.Logf("floods:\n%s", strings.TrimSpace(out))
			t.Logf("queue: %v received, %v dropped by the kernel; engine: %v SYNs, %v SYN-ACKs; backend: %d spoofed SYNs",
				m["synguard_queue_received_total"], m["synguard_queue_dropped_total"], m["synguard_syn_received_total"],
				m["synguard_synack_sent_total"], syns.Spoofed())
			if m["synguard_syn_received_total"] >= count {
				t.Fatalf("the engine kept up with the whole flood (%v SYNs); the queue never overflowed", m["synguard_syn_received_total"])
			}
			switch fail {
			case "closed":
				if n := syns.Spoofed(); n != 0 {
					t.Fatalf("fail closed: %d spoofed SYNs reached the backend", n)
				}
				if m["synguard_queue_dropped_total"] == 0 {
					t.Fatal("fail closed: the kernel's queue drops were not counted")
				}
			case "open":
				if syns.Spoofed() == 0 {
					t.Fatal("fail open: no spoofed SYN reached the backend; the excess should pass")
				}
			}

			// The receive loop is alive.
			q := m["synguard_queue_received_total"]
			if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
				t.Fatalf("legitimate client after the overload: %v", r.Err)
			}
			if after := g.metric("synguard_queue_received_total"); after < q+3 {
				t.Fatalf("queue received %v packets after the overload, %v before the probe: the receive loop stopped", after, q)
			}
			if !g.alive() {
				t.Fatal("gateway exited")
			}
		})
	}
}

// TestBackendFailures: backends that reset (nothing listens), stay
// silent (their firewall drops SYNs) or are slow (a listen backlog of 1
// and one accept per 20 ms, offered a new client every 10 ms), each under
// many concurrent clients. Every client gets its answer within a bound:
// an RST at once, an RST after the engine's retries, or its data. The
// pending table empties, and over two rounds the gateway's memory,
// threads and conntrack entries stay flat: nothing leaks.
//
// The slow backend's clients arrive 10 ms apart, as independent clients
// do. Fifty clients started in the same millisecond against a backlog of
// 1 would retransmit in lockstep after the backend dropped their
// handshakes, and each lockstep burst would find room for two: some would
// wait through TCP's exponential backoff for tens of seconds, through
// synguard or without it.
func TestBackendFailures(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	resetting := netip.AddrPortFrom(topo.BackendAddr, 81) // nothing listens
	silent := netip.AddrPortFrom(topo.BackendAddr, 82)
	slow := netip.AddrPortFrom(topo.BackendAddr, 83)
	serve(t, topo.Backend, silent)
	if err := topo.Backend.Run(context.Background(), "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "82", "--syn", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	serveSlow(t, topo, slow, 1, 20*time.Millisecond)

	g := startGateway(t, topo.Gateway, "--protect", strings.Join([]string{resetting.String(), silent.String(), slow.String()}, ","), "--mode", "always")
	g.waitStarted()
	// Closed flows leave conntrack within a second instead of minutes.
	for _, s := range []string{"time_wait", "close", "close_wait", "fin_wait", "last_ack"} {
		setSysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_timeout_"+s, "1")
	}

	const (
		resetClients  = 20
		silentClients = 20
		slowClients   = 100
		slowParallel  = 50
	)
	type outcome struct {
		ok, reset, other int
		slowest          time.Duration
		firstOther       error
	}
	run := func(target netip.AddrPort, clients, parallel int, every, timeout time.Duration) *outcome {
		var (
			mu  sync.Mutex
			o   outcome
			wg  sync.WaitGroup
			sem = make(chan struct{}, parallel)
		)
		for range clients {
			time.Sleep(every)
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				r := lab.Probe(context.Background(), topo.Client, target, timeout)
				mu.Lock()
				defer mu.Unlock()
				o.slowest = max(o.slowest, r.Total)
				switch {
				case r.OK:
					o.ok++
				case strings.Contains(r.Err.Error(), "connection reset"):
					o.reset++
				default:
					o.other++
					if o.firstOther == nil {
						o.firstOther = r.Err
					}
				}
			}()
		}
		wg.Wait()
		return &o
	}

	var rounds []procStatus
	for round := 1; round <= 2; round++ {
		var wg sync.WaitGroup
		var rst, sil, slw *outcome
		wg.Add(3)
		go func() { defer wg.Done(); rst = run(resetting, resetClients, resetClients, 0, 5*time.Second) }()
		go func() { defer wg.Done(); sil = run(silent, silentClients, silentClients, 0, 15*time.Second) }()
		go func() {
			defer wg.Done()
			slw = run(slow, slowClients, slowParallel, 10*time.Millisecond, 15*time.Second)
		}()
		wg.Wait()
		t.Logf("round %d: resetting backend: %d reset (slowest %v); silent: %d reset (slowest %v); slow: %d ok, %d reset (slowest %v)",
			round, rst.reset, rst.slowest.Round(time.Millisecond), sil.reset, sil.slowest.Round(time.Millisecond), slw.ok, slw.reset, slw.slowest.Round(time.Millisecond))
		for name, o := range map[string]*outcome{"resetting": rst, "silent": sil, "slow": slw} {
			if o.other != 0 {
				t.Fatalf("round %d, %s backend: %d clients neither connected nor were reset; first: %v", round, name, o.other, o.firstOther)
			}
		}
		if rst.reset != resetClients || sil.reset != silentClients {
			t.Fatalf("round %d: %d of %d clients of the resetting backend and %d of %d of the silent one were reset",
				round, rst.reset, resetClients, sil.reset, silentClients)
		}
		if rst.slowest > 2*time.Second {
			t.Fatalf("round %d: a client of the resetting backend waited %v for its RST", round, rst.slowest)
		}
		if slw.ok == 0 {
			t.Fatalf("round %d: no client of the slow backend got through", round)
		}

		// The pending table empties once the last flows have lingered.
		if !poll.Until(engineLinger+2*time.Second, func() bool { return g.metric("synguard_pending_flows") == 0 }) {
			t.Fatalf("round %d: %v flows still pending", round, g.metric("synguard_pending_flows"))
		}
		if !poll.Until(10*time.Second, func() bool { return len(conntrackEntries(t, topo.Gateway, topo.ClientAddr)) == 0 }) {
			left := conntrackEntries(t, topo.Gateway, topo.ClientAddr)
			t.Fatalf("round %d: %d conntrack entries of the client remain after its flows closed:\n%s", round, len(left), strings.Join(left, "\n"))
		}
		p := g.proc()
		t.Logf("round %d: gateway %s", round, p)
		rounds = append(rounds, p)
	}

	m, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("engine: %v backend resets, %v backend timeouts, %v retries, %v hand-offs, %v option mismatches",
		m["synguard_backend_reset_total"], m["synguard_backend_timeout_total"], m["synguard_backend_retry_total"],
		m["synguard_flows_handed_off_total"], m["synguard_option_mismatch_total"])
	if m["synguard_backend_reset_total"] < 2*resetClients || m["synguard_backend_timeout_total"] != 2*silentClients {
		t.Fatalf("backend resets %v (want at least %d), timeouts %v (want %d)", m["synguard_backend_reset_total"], 2*resetClients, m["synguard_backend_timeout_total"], 2*silentClients)
	}
	// Round two repeats round one: a leak would show as growth.
	if grew := rounds[1].RSS - rounds[0].RSS; grew > 8*mib {
		t.Fatalf("resident memory grew by %.1f MiB from round 1 to round 2", float64(grew)/mib)
	}
	if rounds[1].Threads > rounds[0].Threads+2 {
		t.Fatalf("threads grew from %d to %d", rounds[0].Threads, rounds[1].Threads)
	}
}

// TestForgedACKFlood sends a million ACKs with random sequence and
// acknowledgement numbers from spoofed sources. Each is one blind guess
// at a cookie, tried as a third ACK and as a zero-window probe, so it
// passes with probability 2^-23. The test requires the backend
// handshakes opened (valid cookies, hand-offs, spoofed SYNs at the
// backend) to stay within what that predicts (at most 3, where a few
// hundredths are expected), and not one packet to leave toward the
// spoofed sources: no reflection, no amplification.
func TestForgedACKFlood(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	syns := watchSYNs(t, topo)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")
	g.waitStarted()
	replies := watchSpoofReplies(t, topo.Gateway, topo.GatewayClientSide)

	const count = 1_000_000
	st, err := forgeACKs(topo.Client, service, count, ackFloodRate, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The engine done with the last ACKs, and the watches caught up with
	// whatever it let through or sent back.
	g.waitIdle()
	replies.settle(t)
	settleSYNs(t, topo, syns)
	m, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	examined := m["synguard_cookie_invalid_total"] + m["synguard_cookie_valid_total"]
	expected := examined * math.Pow(2, -23)
	t.Logf("sent %d forged ACKs in %v (%.0f/s), %d send errors; the engine examined %.0f (%.0f%%), %v dropped by the kernel's queue",
		st.Sent, st.Elapsed.Round(time.Millisecond), float64(st.Sent)/st.Elapsed.Seconds(), st.Errors, examined, 100*examined/float64(st.Sent), m["synguard_queue_dropped_total"])
	t.Logf("valid cookies %v (expected %.3f), hand-offs %v, spoofed SYNs at the backend %d, replies toward spoofed sources %d",
		m["synguard_cookie_valid_total"], expected, m["synguard_flows_handed_off_total"], syns.Spoofed(), replies.Count())
	if st.Sent < count {
		t.Fatalf("only %d of %d ACKs sent", st.Sent, count)
	}
	if examined < count/10 {
		t.Fatalf("the engine examined only %.0f ACKs; the test needs a large sample", examined)
	}
	if v := m["synguard_cookie_valid_total"]; v > 3 {
		t.Fatalf("%v forged ACKs validated; 2^-23 per ACK predicts %.3f", v, expected)
	}
	if v := m["synguard_flows_handed_off_total"]; v > 3 {
		t.Fatalf("%v flows handed off from forged ACKs", v)
	}
	if n := syns.Spoofed(); n > 3 {
		t.Fatalf("%d SYNs from spoofed sources reached the backend", n)
	}
	// Invalid ACKs get no reply at all. A forged ACK that validated by
	// chance is no longer invalid: its flow is handed off like any other
	// and gets its one window update.
	if n, valid := replies.Count(), int64(m["synguard_cookie_valid_total"]); n > valid {
		t.Fatalf("the gateway sent %d packets toward the spoofed sources for %d valid forgeries (first: %s)", n, valid, replies.First())
	}
	if d := replies.Dropped(); d != 0 {
		t.Fatalf("the reply capture lost %d packets", d)
	}
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("legitimate client after the ACK flood: %v", r.Err)
	}
}

// ackFloodRate paces the forged ACKs to about what one engine worker
// examines, so that most of them are really tried rather than dropped by
// the kernel's full queue (which would test nothing).
const ackFloodRate = 100_000

// engineLinger is how long the engine keeps a handed-off flow's record
// (engine.DefaultLinger).
const engineLinger = 3 * time.Second

// TestMemoryBoundedUnderFlood: peak resident memory of the gateway under
// a 10-second SYN flood at the generator's maximum stays under 64 MiB.
// The flood must really have loaded the gateway: at least half of the
// SYNs sent reached its queue (taken or dropped there).
func TestMemoryBoundedUnderFlood(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always")
	g.waitStarted()
	idle := g.proc()

	out := flood(t, topo.Client, service, 0, 5_000_000, 10*time.Second)()
	g.waitIdle()
	peak := g.proc()
	m, err := g.metrics()
	if err != nil {
		t.Fatal(err)
	}
	sent := floodSent(t, out)
	t.Logf("flood: %s", strings.TrimSpace(out))
	t.Logf("engine: %v SYNs answered, %v dropped by the kernel's queue", m["synguard_synack_sent_total"], m["synguard_queue_dropped_total"])
	t.Logf("gateway idle: %s; after the flood: %s", idle, peak)
	if reached := m["synguard_syn_received_total"] + m["synguard_queue_dropped_total"]; reached < float64(sent)/2 {
		t.Fatalf("%v of the %d SYNs sent reached the gateway's queue: no flood to measure under", reached, sent)
	}
	const bound = 64 * mib
	if peak.HWM > bound {
		t.Fatalf("peak resident memory %.1f MiB, bound %d MiB", float64(peak.HWM)/mib, bound/mib)
	}
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("legitimate client after the flood: %v", r.Err)
	}
}

// TestCookieKeySharedAcrossRestart: with a shared --key-file, a cookie
// issued by one gateway process validates in the next. The test plays
// the client by hand: it sends a SYN, captures the cookie SYN-ACK,
// restarts the gateway with the same key file, and sends the ACK; the
// backend must then receive the replayed SYN. Restarted with a different
// key, the same ACK is refused. (Key rotation inside one process, with
// handshakes in flight across it, is TestHandshakeAcrossKeyRotation in
// the engine package.)
func TestCookieKeySharedAcrossRestart(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	syns := watchSYNs(t, topo)
	dir := t.TempDir()
	key, other := filepath.Join(dir, "key"), filepath.Join(dir, "other")
	for _, f := range []string{key, other} {
		if err := cookies.WriteKeyFile(f); err != nil {
			t.Fatal(err)
		}
	}

	// The client's kernel knows nothing of these handshakes and would
	// reset them; keep it quiet for the ports the test uses.
	const port = 40404
	if err := topo.Client.Run(context.Background(), "iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", fmt.Sprintf("%d:%d", port, port+1),
		"--tcp-flags", "RST", "RST", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	c, err := lab.OpenCapture(topo.Client, topo.ClientSide)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := openIPSender(t, topo.Client)

	// handshake sends a SYN from port to a gateway using the first key
	// file, restarts the gateway with the second, and sends the ACK.
	handshake := func(port uint16, first, second string) (valid, invalid float64, replayed bool) {
		me := netip.AddrPortFrom(topo.ClientAddr, port)
		const isn = 0x5eed1234
		g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--key-file", first)
		g.waitStarted()
		syn := buildSegment(t, packet.Segment{Src: me, Dst: service, Seq: isn, Flags: packet.SYN, Window: 64240,
			Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}})
		if err := send.send(syn, service.Addr()); err != nil {
			t.Fatal(err)
		}
		synack := awaitSegment(t, c, func(p *packet.Packet) bool {
			return p.Source() == service && p.Destination() == me && p.Flags == packet.SYN|packet.ACK
		})
		if synack.Ack != isn+1 {
			t.Fatalf("SYN-ACK acknowledges %#x, want %#x", synack.Ack, isn+1)
		}
		g.stop()

		g = startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--key-file", second)
		g.waitStarted()
		before := syns.From(topo.ClientAddr)
		ack := buildSegment(t, packet.Segment{Src: me, Dst: service, Seq: isn + 1, Ack: synack.Seq + 1, Flags: packet.ACK, Window: 502})
		if err := send.send(ack, service.Addr()); err != nil {
			t.Fatal(err)
		}
		// The gateway's verdict on the ACK first; then, for a valid
		// cookie, the replayed SYN it sends to the backend, or, for an
		// invalid one, everything that reached the backend until now:
		// nothing from the client.
		poll.Must(t, 3*time.Second, "the gateway did not examine the ACK", func() bool {
			return g.metric("synguard_cookie_valid_total")+g.metric("synguard_cookie_invalid_total") >= 1
		})
		valid, invalid = g.metric("synguard_cookie_valid_total"), g.metric("synguard_cookie_invalid_total")
		if valid > 0 {
			replayed = poll.Until(3*time.Second, func() bool { return syns.From(topo.ClientAddr) > before })
		} else {
			settleSYNs(t, topo, syns)
			replayed = syns.From(topo.ClientAddr) > before
		}
		g.stop()
		return valid, invalid, replayed
	}
	if valid, invalid, replayed := handshake(port, key, key); valid != 1 || invalid != 0 || !replayed {
		t.Fatalf("same key file: %v valid, %v invalid, SYN replayed to the backend: %v; want the cookie accepted", valid, invalid, replayed)
	}
	if valid, invalid, replayed := handshake(port+1, key, other); valid != 0 || invalid != 1 || replayed {
		t.Fatalf("other key file: %v valid, %v invalid, SYN replayed: %v; want the cookie refused", valid, invalid, replayed)
	}
}

// buildSegment builds a packet with synguard's packet builder.
func buildSegment(t *testing.T, s packet.Segment) []byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen)
	n, err := packet.Build(b, &s)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

// awaitSegment reads c until a TCP segment matching want arrives (at most
// 3 s).
func awaitSegment(t *testing.T, c *lab.Capture, want func(*packet.Packet) bool) packet.Packet {
	t.Helper()
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := c.Read(buf, time.Until(deadline))
		if errors.Is(err, lab.ErrCaptureTimeout) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var p packet.Packet
		if packet.Parse(buf[:n], &p) == nil && want(&p) {
			return p
		}
	}
	t.Fatal("expected segment not captured within 3 s")
	return packet.Packet{}
}

// malformedCase is one kind of bad input the gateway is sent, built from
// a spoofed source and the protected service.
type malformedCase struct {
	name string
	v6   bool
	// build returns the packet (or its fragments) exactly as it goes on
	// the wire.
	build func(t *testing.T, src, dst netip.AddrPort) [][]byte
	// fate is what happens to it: fateAnswered (a well-formed SYN the
	// engine answers with a cookie), fateMalformed (the engine drops it
	// and counts it as malformed under the service), fateUnattributed
	// (the engine drops it and counts it as malformed under no service:
	// its IP header chain cannot be read, so no service can be named, and
	// the per-service metrics do not show it), fateKernel (the kernel
	// drops it, or passes it on unqueued, before it can reach the engine).
	fate string
}

const (
	fateAnswered     = "answered"
	fateMalformed    = "malformed"
	fateUnattributed = "unattributed"
	fateKernel       = "kernel"
)

// TestMalformedInput sends the live gateway bad header and option
// lengths, odd flag combinations, IP options, truncations, fragments, a
// SYN with payload and IPv6 extension headers, 50 of each from spoofed
// sources, straight onto the client's link so nothing fixes them on the
// way. After each kind a legitimate client must still connect. The
// gateway must not crash, must count what reaches it, must keep no state
// (nothing pending) and must not grow. The table the test logs records
// which kinds the kernel stops before synguard sees them; the fates are
// asserted, so a change of behaviour on either side shows.
func TestMalformedInput(t *testing.T) {
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	service6 := netip.AddrPortFrom(topo.BackendAddr6, 80)
	serve(t, topo.Backend, service)
	serve(t, topo.Backend, service6)
	// The engine's handling of what it is queued; the XDP program's of the
	// same inputs is xdp's TestPassesWhatItDoesNotHandle.
	g := startGateway(t, topo.Gateway, "--protect", service.String()+","+service6.String(), "--mode", "always", "--xdp", "off")
	g.waitStarted()
	wire := openLinkSender(t, topo)

	const copies = 50
	// The last one subtracts from the first: the final ACKs of the
	// legitimate probes' flows, which visit the queue once when they
	// close (the port-reuse rule), whenever they happen to arrive.
	counters := []string{"synguard_queue_received_total", "synguard_syn_received_total", "synguard_synack_sent_total",
		"synguard_malformed_total", "synguard_cookie_invalid_total", "synguard_stale_passed_total"}
	// Two rounds of the same input: the first warms the process up (its
	// heap, the metrics server), the second must not grow it.
	var rss []procStatus
	for round := 1; round <= 2; round++ {
		var table strings.Builder
		fmt.Fprintf(&table, "%-44s %8s %6s %8s %10s %8s  %s\n", "input (50 of each)", "queued", "SYNs", "SYN-ACKs", "malformed", "invalid", "fate")
		for k, mc := range malformedCases() {
			m0, err := g.metrics()
			if err != nil {
				t.Fatalf("%s: gateway metrics: %v (alive: %v)", mc.name, err, g.alive())
			}
			dst := service
			if mc.v6 {
				dst = service6
			}
			for i := range copies {
				src := spoofSource(mc.v6, k*copies+i)
				for _, b := range mc.build(t, src, dst) {
					if err := wire.send(b); err != nil {
						t.Fatalf("%s: send: %v", mc.name, err)
					}
				}
			}
			g.waitIdle()
			m1, err := g.metrics()
			if err != nil {
				t.Fatalf("after %s: gateway metrics: %v (alive: %v)", mc.name, err, g.alive())
			}
			d := make([]float64, len(counters))
			for j, c := range counters {
				d[j] = m1[c] - m0[c]
			}
			// The queue counts a packet after its verdict, the engine
			// while it decides: a closing flow's final ACK can fall into
			// the window in one counter and not the other. Every copy must
			// have been queued (raw), and no more than the strays besides
			// those ACKs (corrected).
			raw := d[0]
			d[0] -= d[5]
			fmt.Fprintf(&table, "%-44s %8.0f %6.0f %8.0f %10.0f %8.0f  %s\n", mc.name, d[0], d[1], d[2], d[3], d[4], mc.fate)
			queued, syns, synacks, malformed, invalid := d[0], d[1], d[2], d[3], d[4]
			// The queue counter may also catch a stray packet or two of the
			// legitimate probes' flows (a late retransmission, the final
			// ACK of a flow that closed in this window): allow that much
			// in the queued count; the engine's own counts stay exact.
			const stray = 2
			queuedAll := raw >= copies && queued <= copies+stray
			var ok bool
			switch mc.fate {
			case fateAnswered:
				ok = syns == copies && synacks == copies && malformed == 0
			case fateMalformed:
				ok = queuedAll && malformed == copies && synacks == 0
			case fateUnattributed:
				ok = queuedAll && syns == 0 && synacks == 0 && malformed == 0 && invalid == 0
			case fateKernel:
				ok = queued <= stray && syns == 0 && malformed == 0
			}
			if !ok {
				t.Errorf("round %d, %s: want %s; counted %v", round, mc.name, mc.fate, d)
			}

			// A legitimate client right after each kind of bad input.
			legit := service
			if k%2 == 1 {
				legit = service6
			}
			if r := lab.Probe(context.Background(), topo.Client, legit, 5*time.Second); !r.OK {
				t.Fatalf("legitimate client to %s after %s: %v", legit, mc.name, r.Err)
			}
		}
		if round == 1 {
			t.Logf("what reached the engine:\n%s", table.String())
		}
		if !g.alive() {
			t.Fatal("gateway exited")
		}
		// Only the legitimate probes' flows may linger; wait them out.
		if !poll.Until(engineLinger+2*time.Second, func() bool { return g.metric("synguard_pending_flows") == 0 }) {
			t.Fatalf("%v flows pending after the bad input", g.metric("synguard_pending_flows"))
		}
		rss = append(rss, g.proc())
	}
	t.Logf("gateway after round 1: %s; after round 2: %s", rss[0], rss[1])
	if grew := rss[1].RSS - rss[0].RSS; grew > 8*mib {
		t.Fatalf("resident memory grew by %.1f MiB from round 1 to round 2", float64(grew)/mib)
	}
}

// spoofSource returns the i-th spoofed source of a family.
func spoofSource(v6 bool, i int) netip.AddrPort {
	port := uint16(20000 + i)
	if v6 {
		a := lab.SpoofPrefix6.Addr().As16()
		a[14], a[15] = byte(i>>8), byte(i)
		return netip.AddrPortFrom(netip.AddrFrom16(a), port)
	}
	a := lab.SpoofPrefix4.Addr().As4()
	a[2], a[3] = byte(i>>8), byte(i)
	return netip.AddrPortFrom(netip.AddrFrom4(a), port)
}

func malformedCases() []malformedCase {
	linux := packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, HasTimestamps: true, TSVal: 1, WindowScale: 7, HasWindowScale: true}
	syn := func(t *testing.T, src, dst netip.AddrPort) []byte {
		return buildSegment(t, packet.Segment{Src: src, Dst: dst, Seq: 1000, Flags: packet.SYN, Window: 64240, Options: linux})
	}
	// one wraps a function that mutates a Linux-like SYN (or, with
	// flags, a segment with those flags) into a single packet.
	one := func(flags packet.Flags, opts packet.Options, mutate func(b []byte) []byte) func(*testing.T, netip.AddrPort, netip.AddrPort) [][]byte {
		return func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			b := buildSegment(t, packet.Segment{Src: src, Dst: dst, Seq: 1000, Flags: flags, Window: 64240, Options: opts})
			return [][]byte{mutate(b)}
		}
	}
	keep := func(b []byte) []byte { return b }
	const ip4, tcpOpts = packet.IPv4HeaderLen, packet.IPv4HeaderLen + packet.TCPHeaderLen
	return []malformedCase{
		{name: "control: a well-formed SYN", build: one(packet.SYN, linux, keep), fate: fateAnswered},
		{name: "TCP option of length 0", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[tcpOpts+1] = 0
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "TCP option running past the header", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[tcpOpts+1] = 44
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "MSS option of length 3", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[tcpOpts+1] = 3
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "TCP data offset 4 (below the header)", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[ip4+12] = 4 << 4
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "TCP data offset past the packet", build: one(packet.SYN, packet.Options{}, func(b []byte) []byte {
			b[ip4+12] = 15 << 4
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "IP header length 4", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[0] = 0x44
			return refreshIPv4Checksum(b)
		}), fate: fateKernel},
		{name: "IP total length beyond the packet", build: one(packet.SYN, linux, func(b []byte) []byte {
			put16(b[2:], uint16(len(b)+20))
			return refreshIPv4Checksum(b)
		}), fate: fateKernel},
		{name: "IP total length cutting the TCP options", build: one(packet.SYN, linux, func(b []byte) []byte {
			put16(b[2:], uint16(tcpOpts+4))
			return refreshIPv4Checksum(b)
		}), fate: fateMalformed},
		{name: "IP total length cutting the TCP header", build: one(packet.SYN, linux, func(b []byte) []byte {
			put16(b[2:], uint16(ip4+12))
			return refreshIPv4Checksum(b)
		}), fate: fateMalformed},
		{name: "bad IPv4 header checksum", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[10] ^= 0xff
			return b
		}), fate: fateKernel},
		{name: "bad TCP checksum", build: one(packet.SYN, linux, func(b []byte) []byte {
			b[ip4+16] ^= 0xff
			return b
		}), fate: fateAnswered},
		{name: "IPv4 options (record route)", build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			// Record route with room for one address, then end of list.
			return [][]byte{insertIPv4Options(syn(t, src, dst), []byte{7, 7, 4, 0, 0, 0, 0, 0})}
		}, fate: fateAnswered},
		{name: "SYN with payload", build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return [][]byte{appendTCPPayload(syn(t, src, dst), []byte("early data"))}
		}, fate: fateAnswered},
		{name: "SYN+FIN", build: one(packet.SYN|packet.FIN, linux, keep), fate: fateMalformed},
		{name: "SYN+RST", build: one(packet.SYN|packet.RST, linux, keep), fate: fateMalformed},
		{name: "SYN+ACK from a client", build: one(packet.SYN|packet.ACK, linux, keep), fate: fateMalformed},
		{name: "no flags", build: one(0, packet.Options{}, keep), fate: fateMalformed},
		{name: "all flags", build: one(0xff, packet.Options{}, keep), fate: fateMalformed},
		{name: "ACK with an option of length 0", build: one(packet.ACK, packet.Options{MSS: 1460, HasMSS: true}, func(b []byte) []byte {
			b[tcpOpts+1] = 0
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "SYN in two IPv4 fragments", build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return splitIPv4(syn(t, src, dst), 24)
		}, fate: fateAnswered},
		{name: "first IPv4 fragment alone", build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return splitIPv4(syn(t, src, dst), 24)[:1]
		}, fate: fateKernel},
		{name: "IPv6: control, a well-formed SYN", v6: true, build: one(packet.SYN, linux, keep), fate: fateAnswered},
		{name: "IPv6: TCP option of length 0", v6: true, build: one(packet.SYN, linux, func(b []byte) []byte {
			b[packet.IPv6HeaderLen+packet.TCPHeaderLen+1] = 0
			return refreshTCPChecksum(b)
		}), fate: fateMalformed},
		{name: "IPv6: hop-by-hop options + SYN", v6: true, build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return [][]byte{prependExtHeader(syn(t, src, dst), 0, padNHeader(8))}
		}, fate: fateAnswered},
		{name: "IPv6: routing header type 0 + SYN", v6: true, build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			// Type 0, no segments left, one address (the destination).
			rh := make([]byte, 24)
			rh[1], rh[2], rh[3] = 2, 0, 0
			a := dst.Addr().As16()
			copy(rh[8:], a[:])
			return [][]byte{prependExtHeader(syn(t, src, dst), 43, rh)}
		}, fate: fateAnswered},
		{name: "IPv6: atomic fragment + SYN", v6: true, build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return [][]byte{prependExtHeader(syn(t, src, dst), 44, []byte{0, 0, 0, 0, 0, 0, 0x12, 0x34})}
		}, fate: fateAnswered},
		{name: "IPv6: SYN in two fragments", v6: true, build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return splitIPv6(syn(t, src, dst), 24)
		}, fate: fateAnswered},
		{name: "IPv6: nine destination options headers", v6: true, build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			b := syn(t, src, dst)
			for range 9 {
				b = prependExtHeader(b, 60, padNHeader(8))
			}
			return [][]byte{b}
		}, fate: fateUnattributed},
		{name: "IPv6: unknown extension header before TCP", v6: true, build: func(t *testing.T, src, dst netip.AddrPort) [][]byte {
			return [][]byte{prependExtHeader(syn(t, src, dst), 253, padNHeader(8))}
		}, fate: fateKernel},
		{name: "IPv6: payload length beyond the packet", v6: true, build: one(packet.SYN, linux, func(b []byte) []byte {
			put16(b[4:], uint16(len(b)))
			return b
		}), fate: fateKernel},
	}
}
