package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	bin "encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/packet"
)

// hashServer serves at addr in ns: it reads a 4-byte length and that many
// bytes, answers with their SHA-256 and closes. A client that gets the
// hash of what it sent knows every byte reached the backend, in order.
func hashServer(t *testing.T, ns *netns.NS, addr netip.AddrPort) {
	t.Helper()
	ln := nstest.Listen(t, ns, addr.String())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				var n [4]byte
				if _, err := io.ReadFull(c, n[:]); err != nil {
					return
				}
				h := sha256.New()
				if _, err := io.CopyN(h, c, int64(bin.BigEndian.Uint32(n[:]))); err != nil {
					return
				}
				_, _ = c.Write(h.Sum(nil))
			}()
		}
	}()
}

// earlyRequest connects from ns to service and sends payload (behind its
// length) the moment the connection is up, as an HTTP or TLS client sends
// its request; it returns the hash the server answers.
func earlyRequest(ns *netns.NS, service netip.AddrPort, payload []byte, timeout time.Duration) ([]byte, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", service.String(), timeout)
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := bin.BigEndian.AppendUint32(nil, uint32(len(payload)))
	if _, err := c.Write(append(msg, payload...)); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	sum := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, sum); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return sum, nil
}

// requestBytes (with its 4-byte length) is four segments at the smallest
// MSS the lab's links announce, so it fits early data's window in both
// families and takes four segments in both.
const requestBytes = 4*1220 - 4

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// queueWaiting is the packets waiting in ns's queues for a verdict.
func queueWaiting(t *testing.T, ns *netns.NS) int {
	t.Helper()
	total := 0
	for _, q := range kernelQueues(t, ns) {
		total += int(q.Waiting)
	}
	return total
}

// clientRTT puts the early-data tests' client a real client's round trip
// away (behind the lab's delay relay): the gateway's answers then take
// the time they take on the internet, and a client that writes its
// request as soon as it is connected is not outrun by a hand-off done in
// a millisecond.
const clientRTT = 20 * time.Millisecond

// TestEarlyData: in cookie mode a client's request leaves right behind its
// ACK, before the gateway sends it anything else; its four segments wait
// in the queue while the backend's handshake completes and reach the
// backend intact. With --early-data=false the SYN-ACK's window is 0 and
// the request waits for the window update. For the fast path at tc and
// the queue alone, and both address families, from a client 20 ms away.
func TestEarlyData(t *testing.T) {
	for _, tt := range []struct {
		name  string
		args  []string
		early bool
	}{
		{"tc", nil, true},
		{"xdp off", []string{"--xdp", "off"}, true},
		{"disabled", []string{"--early-data=false"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			topo := newLab(t, lab.Config{ClientRTT: clientRTT})
			services := []netip.AddrPort{netip.AddrPortFrom(topo.BackendAddr, 7000), netip.AddrPortFrom(topo.BackendAddr6, 7000)}
			for _, s := range services {
				hashServer(t, topo.Backend, s)
			}
			args := append([]string{"--protect", services[0].String() + "," + services[1].String(), "--mode", "always"}, tt.args...)
			g := startGateway(t, topo.Gateway, args...)
			c := capture(t, topo.Remote, lab.RemoteIface)

			for _, service := range services {
				payload := randomBytes(t, requestBytes)
				sum, err := earlyRequest(topo.Remote, service, payload, 10*time.Second)
				if err != nil {
					t.Fatalf("%s: %v", service, err)
				}
				if want := sha256.Sum256(payload); string(sum) != string(want[:]) {
					t.Fatalf("%s: the backend got other bytes than the client sent", service)
				}
				checkRequestTiming(t, drain(t, c), service, len(payload)+4, tt.early)
			}

			// Whether a request waits in the queue depends on whether it
			// reaches the gateway before the hand-off is done, within a
			// millisecond: the slow backend's test below makes sure of it.
			held, released := g.metric("synguard_early_data_held_total"), g.metric("synguard_early_data_released_total")
			t.Logf("early segments held %v, released %v", held, released)
			if released != held {
				t.Fatalf("early segments held %v, released %v", held, released)
			}
			if !tt.early && held != 0 {
				t.Fatalf("early data off: %v segments held", held)
			}
			if w := g.metric("synguard_early_data_waiting"); w != 0 {
				t.Fatalf("%v segments still held after the connections ended", w)
			}
			if w := queueWaiting(t, topo.Gateway); w != 0 {
				t.Fatalf("%d packets left waiting in the queues", w)
			}
		})
	}
}

// checkRequestTiming checks, in a capture at the client, the order of one
// connection's first segments: SYN out, SYN-ACK in, then with early data
// the ACK and the whole request out before anything more comes in, and
// without it nothing of the request before the gateway's next segment
// (the window update).
func checkRequestTiming(t *testing.T, segs []captured, service netip.AddrPort, requestLen int, early bool) {
	t.Helper()
	var flow []captured
	for _, s := range segs {
		if s.p.Destination() == service || s.p.Source() == service {
			flow = append(flow, s)
		}
	}
	if len(flow) < 4 || flow[0].p.Flags != packet.SYN || !flow[1].p.Flags.Has(packet.SYN|packet.ACK) {
		t.Fatalf("%s: capture does not start with SYN, SYN-ACK: %v", service, summary(flow))
	}
	synack := flow[1].p
	if early && synack.Window == 0 || !early && synack.Window != 0 {
		t.Fatalf("%s: SYN-ACK window %d (early data %v)", service, synack.Window, early)
	}
	sent := 0
	for _, s := range flow[2:] {
		if !s.outgoing {
			break
		}
		sent += s.p.PayloadLen
	}
	switch {
	case early && sent != requestLen:
		t.Fatalf("%s: the client sent %d of %d request bytes before the gateway's next segment: %v", service, sent, requestLen, summary(flow))
	case !early && sent != 0:
		t.Fatalf("%s: the client sent %d bytes into a zero window: %v", service, sent, summary(flow))
	}
	t.Logf("%s: %v", service, summary(flow[:min(len(flow), 10)]))
}

// summary lists segments as "> SYN", "< SYN|ACK w5840", "> ACK 1460".
func summary(segs []captured) string {
	var b strings.Builder
	for _, s := range segs {
		dir := "<"
		if s.outgoing {
			dir = ">"
		}
		fmt.Fprintf(&b, "[%s %v w%d %d] ", dir, s.p.Flags, s.p.Window, s.p.PayloadLen)
	}
	return b.String()
}

// TestEarlyDataWhenTheBackendIsSlowResetsOrIsDead: early data waits as
// long as the backend takes to answer and then arrives intact; a backend
// that resets or never answers ends the flow, and the held segments are
// dropped rather than left in the queue.
func TestEarlyDataWhenTheBackendIsSlowResetsOrIsDead(t *testing.T) {
	topo := newLab(t, lab.Config{ClientRTT: clientRTT})
	slow := netip.AddrPortFrom(topo.BackendAddr, 7001)
	closed := netip.AddrPortFrom(topo.BackendAddr, 7002) // nothing listens: the backend resets
	dead := netip.AddrPortFrom(topo.BackendAddr, 7003)
	hashServer(t, topo.Backend, slow)
	hashServer(t, topo.Backend, dead)
	g := startGateway(t, topo.Gateway, "--protect", slow.String()+","+closed.String()+","+dead.String(), "--mode", "always")
	ctx := context.Background()
	dropSYNs := func(port uint16) []string {
		return []string{"-p", "tcp", "--dport", fmt.Sprint(port), "--tcp-flags", "SYN,ACK,RST,FIN", "SYN", "-j", "DROP"}
	}
	iptables := func(op string, rule []string) {
		t.Helper()
		if err := topo.Backend.Run(ctx, "iptables", append([]string{"-w", op, "INPUT"}, rule...)...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = topo.Backend.Run(ctx, "iptables", "-w", "-F", "INPUT") })

	t.Run("slow", func(t *testing.T) {
		// The backend loses the replayed SYN until the engine has sent
		// it again: the request waits at least the first retry's 250 ms.
		iptables("-A", dropSYNs(slow.Port()))
		payload := randomBytes(t, requestBytes)
		type result struct {
			sum []byte
			err error
		}
		done := make(chan result, 1)
		go func() {
			sum, err := earlyRequest(topo.Remote, slow, payload, 20*time.Second)
			done <- result{sum, err}
		}()
		poll.Must(t, 10*time.Second, "the engine never retried the replayed SYN", func() bool {
			return g.serviceMetric("synguard_backend_retry_total", slow) >= 1 && g.serviceMetric("synguard_early_data_waiting", slow) >= 1
		})
		iptables("-D", dropSYNs(slow.Port()))
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		if want := sha256.Sum256(payload); string(r.sum) != string(want[:]) {
			t.Fatal("the backend got other bytes than the client sent")
		}
		// The request's four segments waited (a retransmission of the
		// first beyond the flow's bound is refused).
		held, released := g.serviceMetric("synguard_early_data_held_total", slow), g.serviceMetric("synguard_early_data_released_total", slow)
		if held != 4 || released != held {
			t.Fatalf("early segments held %v, released %v; want the request's 4", held, released)
		}
	})

	for _, tt := range []struct {
		name    string
		service netip.AddrPort
		ended   string // the counter of the flow's end
	}{
		{"resetting", closed, "synguard_backend_reset_total"},
		{"dead", dead, "synguard_backend_timeout_total"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.service == dead {
				iptables("-A", dropSYNs(dead.Port()))
			}
			_, err := earlyRequest(topo.Remote, tt.service, randomBytes(t, requestBytes), 20*time.Second)
			if !isReset(err) {
				t.Fatalf("request to a %s backend: %v, want a connection reset", tt.name, err)
			}
			// A request segment that reaches the gateway after the flow
			// ended carries a valid cookie (seq−1 is the ISN) and starts
			// the flow again, as a data ACK whose ACK was lost would: the
			// backend resets that one too.
			if n := g.serviceMetric(tt.ended, tt.service); n < 1 {
				t.Fatalf("%s = %v, want the flow's end", tt.ended, n)
			}
			if n := g.serviceMetric("synguard_early_data_dropped_total", tt.service); n < 1 {
				t.Fatalf("%v held segments dropped, want the request's", n)
			}
			if n := g.serviceMetric("synguard_early_data_released_total", tt.service); n != 0 {
				t.Fatalf("%v segments of a failed flow released to the backend", n)
			}
			if w := g.serviceMetric("synguard_early_data_waiting", tt.service); w != 0 {
				t.Fatalf("%v segments still held", w)
			}
			if w := queueWaiting(t, topo.Gateway); w != 0 {
				t.Fatalf("%d packets left waiting in the queues", w)
			}
		})
	}
}

// isReset reports whether err is the connection reset by its peer.
func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}
