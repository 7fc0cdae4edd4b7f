package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
)

// TestServerSpeaksFirst: a client of a protocol whose server speaks first
// (SMTP, SSH) sends nothing after its ACK, so its greeting comes only once
// the backend has taken the gateway's ACK of its SYN-ACK. In cookie mode
// the backend must take that ACK at once: it rejects none (TcpExt
// TSEcrRejected, an ACK echoing a timestamp the backend never sent) and
// resends no SYN-ACK (TCPSynRetrans: no usable ACK came), either of which
// would hold the greeting back by the backend's SYN-ACK timeout, a
// second. For the fast path at tc, the queue alone and early data off,
// both families.
func TestServerSpeaksFirst(t *testing.T) {
	const conns = 10
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"tc", nil},
		{"xdp off", []string{"--xdp", "off"}},
		{"early data off", []string{"--early-data=false"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			topo := newLab(t, lab.Config{})
			services := []netip.AddrPort{netip.AddrPortFrom(topo.BackendAddr, 7001), netip.AddrPortFrom(topo.BackendAddr6, 7001)}
			for _, s := range services {
				b, err := lab.ServeGreeting(context.Background(), topo.Backend, s)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = b.Close() })
			}
			args := append([]string{"--protect", services[0].String() + "," + services[1].String(), "--mode", "always"}, tt.args...)
			g := startGateway(t, topo.Gateway, args...)

			before := nstest.TCPExt(t, topo.Backend)
			for _, service := range services {
				var slowest time.Duration
				for range conns {
					r := lab.ProbeGreeting(context.Background(), topo.LegitClient(), service, 10*time.Second)
					if !r.OK {
						t.Fatalf("%s: %v", service, r.Err)
					}
					slowest = max(slowest, r.FirstByte-r.Handshake)
				}
				t.Logf("%s: %d greetings, the slowest %v after connect", service, conns, slowest)
			}
			after := nstest.TCPExt(t, topo.Backend)
			for _, counter := range []string{"TSEcrRejected", "TCPSynRetrans"} {
				if n := after[counter] - before[counter]; n != 0 {
					t.Errorf("backend TcpExt %s: %d in %d connections, want 0", counter, n, conns*len(services))
				}
			}
			// The fast path reports its handshakes to the engine up to 5 ms late.
			want := float64(conns * len(services))
			if !poll.Until(5*time.Second, func() bool { return g.metric("synguard_cookie_valid_total") >= want }) {
				t.Errorf("synguard_cookie_valid_total %v, want %v: the connections were not made in cookie mode", g.metric("synguard_cookie_valid_total"), want)
			}
		})
	}
}
