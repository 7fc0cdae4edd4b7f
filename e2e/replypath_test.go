package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/telemetry"
)

// TestReplyPath: with --reply-path ingress (the default) a SYN-ACK goes
// back out the interface its SYN came in on, to the neighbour that sent
// it, so it reaches a client the gateway's routing table has no way to (a
// blackhole route) and never crosses the gateway's OUTPUT chains; with
// --reply-path route the same SYN-ACK is routed, fails on the blackhole
// and is counted as a send error; without the blackhole it is routed
// through OUTPUT. For each address family.
func TestReplyPath(t *testing.T) {
	topo := newLab(t, lab.Config{})
	for _, fam := range []struct {
		name   string
		client netip.Addr
		svc    netip.AddrPort
		save   string
	}{
		{"IPv4", topo.ClientAddr, netip.AddrPortFrom(topo.BackendAddr, 80), "iptables-save"},
		{"IPv6", topo.ClientAddr6, netip.AddrPortFrom(topo.BackendAddr6, 80), "ip6tables-save"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			serve(t, topo.Backend, fam.svc)
			bits := 32
			if fam.client.Is6() {
				bits = 128
			}
			hole := netip.PrefixFrom(fam.client, bits).String()
			if err := topo.Gateway.Run(t.Context(), "ip", "route", "add", "blackhole", hole); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = topo.Gateway.Run(context.Background(), "ip", "route", "del", "blackhole", hole) }) // if still there
			// Count the SYN-ACKs toward the client that take the routed way
			// out: a rule without a target in raw OUTPUT.
			tool := strings.TrimSuffix(fam.save, "-save")
			count := []string{"-t", "raw", "-A", "OUTPUT", "-d", hole, "-p", "tcp", "--tcp-flags", "SYN,ACK", "SYN,ACK", "-m", "comment", "--comment", "sgtest-synack"}
			if err := topo.Gateway.Run(t.Context(), tool, count...); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				count[2] = "-D"
				_ = topo.Gateway.Run(context.Background(), tool, count...)
			})

			for _, step := range []struct {
				path      string
				blackhole bool
			}{{"ingress", true}, {"route", true}, {"route", false}} {
				if !step.blackhole {
					if err := topo.Gateway.Run(t.Context(), "ip", "route", "del", "blackhole", hole); err != nil {
						t.Fatal(err)
					}
				}
				before := outputCounter(t, topo, fam.save)
				// The engine's reply path: XDP would answer the SYNs first.
				g := startGateway(t, topo.Gateway, "--protect", fam.svc.String(), "--mode", "always", "--reply-path", step.path, "--xdp", "off")
				if !poll.Until(5*time.Second, func() bool { return strings.Contains(g.log.String(), `"reply_path":"`+step.path+`"`) }) {
					t.Fatalf("no start event with reply_path %q:\n%s", step.path, g.log.String())
				}
				err := connect(topo, fam.svc)
				// The client can have its SYN-ACK before the worker counts
				// it: wait for the count this step expects, then read all.
				var sent, failed float64
				poll.Until(5*time.Second, func() bool {
					sent = g.serviceMetric("synguard_synack_sent_total", fam.svc)
					failed = g.serviceMetric("synguard_send_error_total", fam.svc)
					if step.path == "ingress" || !step.blackhole {
						return sent >= 1
					}
					return failed >= 1
				})
				routed := outputCounter(t, topo, fam.save) - before
				g.stop()
				switch {
				case step.path == "ingress":
					if err != nil {
						t.Fatalf("ingress: connect through a gateway with no route back: %v", err)
					}
					if sent < 1 || failed != 0 || routed != 0 {
						t.Fatalf("ingress: %v SYN-ACKs sent, %v send errors, %d through raw OUTPUT; want ≥ 1, 0, 0", sent, failed, routed)
					}
				case step.blackhole:
					if err == nil {
						t.Fatal("route: connect succeeded past a blackhole route; the test proves nothing")
					}
					if failed < 1 {
						t.Fatalf("route: %v send errors, want the SYN-ACKs the blackhole refused", failed)
					}
					// The log says why, once a second at most: the
					// kernel's refusal (EINVAL for a blackhole route).
					reasons := g.events(telemetry.EventSendFailed)
					if len(reasons) == 0 || !strings.Contains(reasons[0].Error, syscall.EINVAL.Error()) || len(reasons) > 4 {
						t.Fatalf("route: send_failed events %+v for %v send errors in about 2 s; want 1 to 4, the first with %q", reasons, failed, syscall.EINVAL.Error())
					}
				default:
					// The counting rule does see routed SYN-ACKs, so its 0
					// above means something.
					if err != nil || routed < 1 {
						t.Fatalf("route: connect %v, %d SYN-ACKs through raw OUTPUT; want success and ≥ 1", err, routed)
					}
				}
			}
		})
	}
}

// connect opens a TCP connection from the lab's client to svc and closes
// it: it succeeds once the client has the SYN-ACK.
func connect(topo *lab.Topology, svc netip.AddrPort) error {
	return topo.Client.Do(func() error {
		c, err := net.DialTimeout("tcp", svc.String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// outputCounter reads the packet counter of the test's sgtest-synack rule
// in the gateway's raw OUTPUT: SYN-ACKs to the client routed so far. The
// counters are cumulative; each reading is taken before the next gateway.
func outputCounter(t *testing.T, topo *lab.Topology, save string) int {
	t.Helper()
	out, err := topo.Gateway.Output(t.Context(), save, "-c", "-t", "raw")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if strings.Contains(line, "sgtest-synack") {
			var n, b int
			if _, err := fmt.Sscanf(line, "[%d:%d]", &n, &b); err == nil {
				return n
			}
		}
	}
	t.Fatalf("no counting rule in:\n%s", out)
	return 0
}
