package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/lab"
)

// TestSecondInstanceRefused: while a gateway runs, a second `synguard
// run` in the same namespace exits at once with an error naming the first
// one's pid, and changes nothing: the first's rules stay exactly as they
// were, and its service stays protected.
func TestSecondInstanceRefused(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	args := []string{"--protect", service.String(), "--mode", "always"}
	g := startGateway(t, topo.Gateway, args...)
	g.waitStarted()
	before := rulesOnly(saved(t, topo.Gateway))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	second := topo.Gateway.Command(ctx, binary, append([]string{"run", "--queue", "7", "--metrics", "127.0.0.1:9848"}, args...)...)
	out, err := second.CombinedOutput()
	if err == nil || second.ProcessState.ExitCode() != 1 {
		t.Fatalf("second instance: %v (exit %d), want exit 1:\n%s", err, second.ProcessState.ExitCode(), out)
	}
	if want := fmt.Sprintf("another synguard (pid %d) is running in this network namespace", g.cmd.Process.Pid); !strings.Contains(string(out), want) {
		t.Fatalf("second instance said:\n%s\nwant %q", out, want)
	}
	if after := rulesOnly(saved(t, topo.Gateway)); after != before {
		t.Fatalf("the second instance changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	checkOneCopy(t, topo, args...)
	if r := lab.Probe(context.Background(), topo.Client, service, 5*time.Second); !r.OK {
		t.Fatalf("client after the refused second instance: %v", r.Err)
	}
	if !g.alive() {
		t.Fatal("the first gateway died")
	}
}

// TestRulesPrintsWhatRunInstalls: with a TIME_WAIT timeout other than the
// default, `synguard rules` in the namespace prints the ctexpire bound
// `synguard run` installs there: both read it the same way.
func TestRulesPrintsWhatRunInstalls(t *testing.T) {
	topo := newLab(t, lab.Config{DisableIPv6: true})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	setSysctl(t, topo.Gateway, "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "60")
	args := []string{"--protect", service.String(), "--mode", "always"}
	out, err := topo.Gateway.Output(context.Background(), binary, append([]string{"rules"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "--ctexpire 0:60") {
		t.Fatalf("synguard rules in a namespace with TIME_WAIT 60 s:\n%s\nwant --ctexpire 0:60", out)
	}
	g := startGateway(t, topo.Gateway, args...)
	g.waitStarted()
	if s := saved(t, topo.Gateway); !strings.Contains(s, "--ctexpire 0:60") {
		t.Fatalf("synguard run installed:\n%s\nwant --ctexpire 0:60", s)
	}
}

// rulesOnly is iptables-save output without its comment lines, which
// carry the time it ran.
func rulesOnly(saved string) string {
	var b strings.Builder
	for l := range strings.Lines(saved) {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l)
		}
	}
	return b.String()
}
