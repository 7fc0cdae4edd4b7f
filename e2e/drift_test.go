package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	sgateway "github.com/synguard/synguard/gateway"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
)

// TestRulesRepaired: other tools flush or rewrite the gateway's ruleset
// under a running gateway (queue path only: --xdp off). Within 5 s its
// rules are back as installed, a rules_restored event names what was
// missing, synguard_rules_restored_total counts it, and a spoofed SYN
// flood again sends not one SYN to the backend.
func TestRulesRepaired(t *testing.T) {
	const emptyTables = `printf '*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -p udp -j ACCEPT\nCOMMIT\n' | iptables-restore`
	for _, tc := range []struct {
		name, script string
		v6           bool
		want         []string // in rules_restored's missing
	}{
		{"iptables -F", "iptables -F", false, []string{"IPv4 filter FORWARD jump to SYNGUARD-FORWARD", "IPv4 filter SYNGUARD-FORWARD rules 1-6"}},
		{"iptables -t raw -F", "iptables -t raw -F", false, []string{"IPv4 raw PREROUTING jump to SYNGUARD-PREROUTING", "IPv4 raw SYNGUARD-PREROUTING rules 1-2"}},
		{"iptables-restore without --noflush", emptyTables, false, []string{"IPv4 raw chain SYNGUARD-PREROUTING", "IPv4 filter chain SYNGUARD-FORWARD"}},
		{"ip6tables -t raw -F", "ip6tables -t raw -F", true, []string{"IPv6 raw PREROUTING jump to SYNGUARD-PREROUTING"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo := newLab(t, lab.Config{DisableIPv6: !tc.v6})
			service := netip.AddrPortFrom(topo.BackendAddr, 80)
			if tc.v6 {
				service = netip.AddrPortFrom(topo.BackendAddr6, 80)
			}
			serve(t, topo.Backend, service)
			syns := watchSYNs(t, topo)
			g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp", "off")
			g.waitStarted()
			installed := ownRules(saved(t, topo.Gateway))

			if err := topo.Gateway.Run(context.Background(), "sh", "-c", tc.script); err != nil {
				t.Fatal(err)
			}
			if !poll.Until(5*time.Second, func() bool { return ownRules(saved(t, topo.Gateway)) == installed }) {
				t.Fatalf("rules not back 5 s after %q:\n%s\nwant:\n%s", tc.script, ownRules(saved(t, topo.Gateway)), installed)
			}
			// A restore in the middle of another tool's transaction may
			// take two rounds; each is counted and logged.
			var restored []logEvent
			poll.Must(t, 5*time.Second, "no rules_restored event", func() bool {
				restored = g.events("rules_restored")
				return len(restored) > 0
			})
			var missing []string
			for _, e := range restored {
				missing = append(missing, e.Missing...)
				if e.TookMS == nil {
					t.Errorf("rules_restored without took_ms: %+v", e)
				}
			}
			for _, w := range tc.want {
				if !slices.Contains(missing, w) {
					t.Errorf("rules_restored missing %q, want it to name %q", missing, w)
				}
			}
			if v := g.metric("synguard_rules_restored_total"); v != float64(len(restored)) {
				t.Errorf("synguard_rules_restored_total = %v, want %d (one per rules_restored)", v, len(restored))
			}
			if failed := g.events("rules_restore_failed"); len(failed) > 0 {
				t.Errorf("rules_restore_failed: %+v", failed)
			}

			// Protected again: a spoofed flood reaches the engine, not
			// the backend, and a real client gets through.
			const rate, seconds = 10000, 3
			wait := flood(t, topo.Client, service, rate, rate*seconds, seconds*time.Second)
			poll.Must(t, 5*time.Second, "the flood's SYNs never reached the gateway", func() bool {
				return g.metric("synguard_syn_received_total") >= rate/10
			})
			client := topo.ClientAddr
			if tc.v6 {
				client = topo.ClientAddr6
			}
			if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
				t.Fatalf("client from %s after the repair: %v", client, r.Err)
			}
			t.Logf("flood: %s", wait())
			g.waitIdle()
			settleSYNs(t, topo, syns)
			if n := syns.Spoofed(); n != 0 {
				t.Fatalf("backend received %d SYNs from spoofed sources after the repair", n)
			}
			if got := g.metric("synguard_syn_received_total"); got < rate*seconds/2 {
				t.Fatalf("gateway saw %v of %d flood SYNs", got, rate*seconds)
			}
		})
	}
}

// TestRulesIntactNotRepaired: with the gateway's rules untouched, and
// other tools' changes around them (rules appended, one put in front of
// synguard's jump, a NAT rule, an address moved as keepalived moves a
// VIP), nothing is restored over several check periods. The watch was
// awake all along: a jump deleted at the end is put back.
func TestRulesIntactNotRepaired(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--xdp", "off")
	g.waitStarted()
	if err := topo.Gateway.Run(context.Background(), "sh", "-ec", `
iptables -A FORWARD -p udp -j ACCEPT
iptables -t raw -I PREROUTING 1 -p udp -j ACCEPT
iptables -t nat -A POSTROUTING -o lo -j RETURN
ip6tables -A FORWARD -p udp -j ACCEPT
ip addr add 192.0.2.99/32 dev lo
`); err != nil {
		t.Fatal(err)
	}
	quiet := 3*sgateway.RulesCheckPeriod + time.Second
	if !poll.Stays(quiet, func() bool { return g.metric("synguard_rules_restored_total") == 0 }) {
		t.Fatalf("rules restored with nothing of synguard's changed:\n%s", g.log.String())
	}
	if e := g.events("rules_restored"); len(e) > 0 {
		t.Fatalf("rules_restored with nothing of synguard's changed: %+v", e)
	}
	if err := topo.Gateway.Run(context.Background(), "iptables", "-t", "raw", "-D", "PREROUTING", "-j", "SYNGUARD-PREROUTING"); err != nil {
		t.Fatal(err)
	}
	poll.Must(t, 5*time.Second, "a deleted jump was not put back", func() bool {
		return g.metric("synguard_rules_restored_total") == 1
	})
}

// ownRules keeps of iptables-save output the table lines and the lines
// naming a SYNGUARD chain, each jump to one with its position in its
// chain: what the gateway put in place, whatever else is there.
func ownRules(saved string) string {
	var b strings.Builder
	pos := map[string]int{}
	for line := range strings.Lines(saved) {
		switch {
		case strings.HasPrefix(line, "*"):
			clear(pos)
			b.WriteString(line)
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[len("-A "):], " ")
			pos[chain]++
			if strings.Contains(line, "SYNGUARD") {
				fmt.Fprintf(&b, "(%d) %s", pos[chain], line)
			}
		case strings.HasPrefix(line, ":SYNGUARD"):
			name, _, _ := strings.Cut(line, " ")
			b.WriteString(name + "\n")
		}
	}
	return b.String()
}

// logEvent is what these tests read of a log line.
type logEvent struct {
	Event   string   `json:"event"`
	Missing []string `json:"missing"`
	TookMS  *int64   `json:"took_ms"`
	Error   string   `json:"error"`
}

// events returns the gateway's log lines of one event so far.
func (g *gateway) events(name string) []logEvent {
	var out []logEvent
	for line := range strings.Lines(g.log.String()) {
		var e logEvent
		if json.Unmarshal([]byte(line), &e) == nil && e.Event == name {
			out = append(out, e)
		}
	}
	return out
}
