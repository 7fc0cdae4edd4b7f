package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab/netns"
)

// These tests need root. Each runs the real iptables tools and the real
// kernel inside network namespaces of its own, which it removes when done;
// the host's firewall and sysctls are never touched.

// emptyTable matches a reduced table with built-in chains only, all with
// policy ACCEPT, and no rules.
var emptyTable = regexp.MustCompile(`^\*\w+\n(:[A-Z]+ ACCEPT\n)*COMMIT\n$`)

// nsRunner is a Runner acting inside a namespace: commands run under
// `ip netns exec`, sysctls are read and written by Host on a thread that
// has entered the namespace.
type nsRunner struct{ ns *netns.NS }

func (r nsRunner) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return r.ns.Command(ctx, name, args...)
}

func (r nsRunner) ReadSysctl(name string) (value string, err error) {
	doErr := r.ns.Do(func() error {
		value, err = Host{}.ReadSysctl(name)
		return nil
	})
	return value, errors.Join(doErr, err)
}

func (r nsRunner) WriteSysctl(name, value string) error {
	return r.ns.Do(func() error { return Host{}.WriteSysctl(name, value) })
}

// sh runs a shell command line inside ns.
func sh(t *testing.T, ns *netns.NS, script string) {
	t.Helper()
	if err := ns.Run(context.Background(), "sh", "-ec", script); err != nil {
		t.Fatal(err)
	}
}

// saved returns the ruleset of one family inside ns as the save tool
// prints it, reduced to what matters here: tables sorted by name, chain
// declarations without counters, rules, COMMIT. Tables holding nothing
// but built-in chains with policy ACCEPT are left out: with the nf_tables
// backend iptables-restore creates a table it is given and nothing deletes
// it again, but an empty table changes nothing.
func saved(t *testing.T, ns *netns.NS, tool string) string {
	t.Helper()
	out, err := ns.Output(context.Background(), tool)
	if err != nil {
		t.Fatal(err)
	}
	counters := regexp.MustCompile(` \[\d+:\d+\]$`)
	var tables []string
	var cur strings.Builder
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "*"):
			cur.Reset()
			cur.WriteString(line + "\n")
		case strings.HasPrefix(line, ":"):
			cur.WriteString(counters.ReplaceAllString(line, "") + "\n")
		case strings.HasPrefix(line, "-A "):
			cur.WriteString(line + "\n")
		case line == "COMMIT":
			cur.WriteString(line + "\n")
			if !emptyTable.MatchString(cur.String()) {
				tables = append(tables, cur.String())
			}
		}
	}
	slices.Sort(tables)
	return strings.Join(tables, "")
}

// savedBoth is saved for both families, each under a heading: what the
// golden files of the install tests hold.
func savedBoth(t *testing.T, ns *netns.NS) string {
	t.Helper()
	return "# iptables-save\n" + saved(t, ns, "iptables-save") + "\n# ip6tables-save\n" + saved(t, ns, "ip6tables-save")
}

// sysctls reads names inside ns.
func sysctls(t *testing.T, ns *netns.NS, names ...string) map[string]string {
	t.Helper()
	m := make(map[string]string, len(names))
	for _, n := range names {
		v, err := nsRunner{ns}.ReadSysctl(n)
		if err != nil {
			t.Fatal(err)
		}
		m[n] = v
	}
	return m
}

const (
	tcpLoose = "net.netfilter.nf_conntrack_tcp_loose"
	forward4 = "net.ipv4.ip_forward"
	forward6 = "net.ipv6.conf.all.forwarding"
)

// operatorRules stand for the operator's own ruleset, which synguard must
// go in front of and leave as it was.
const operatorRules = `
iptables -t raw -A PREROUTING -p udp -j ACCEPT
iptables -A FORWARD -p udp -j ACCEPT
iptables -A INPUT -p udp -j ACCEPT
ip6tables -A FORWARD -p udp -j ACCEPT
`

// TestInstallRemove installs in front of an operator's ruleset, compares
// the saved rulesets with testdata/install/NAME.golden and the sysctls with
// what the mode needs, then removes and expects everything as before.
func TestInstallRemove(t *testing.T) {
	roottest.Require(t)
	tests := []struct {
		name, golden string
		cfg          Config
		presets      map[string]string // sysctls set before Install
		afterInstall map[string]string
	}{
		{
			name:   "gateway v4 and v6, balanced, fail open",
			golden: "gateway-dual-balanced-fail-open",
			cfg: func() Config {
				c := base("203.0.113.10:80", "[2001:db8::10]:443")
				c.Queue, c.Queues, c.FailOpen = 2, 2, true
				return c
			}(),
			afterInstall: map[string]string{tcpLoose: "0", forward4: "1", forward6: "1"},
		},
		{
			// Its IPv6 ruleset stays the operator's alone: no IPv6 service.
			name:   "local v4, forwarding already on",
			golden: "local-v4-forwarding-on",
			cfg: func() Config {
				c := base("203.0.113.10:22")
				c.Local, c.Queue = true, 9
				return c
			}(),
			presets: map[string]string{forward4: "1"},
			// Local mode leaves forwarding alone.
			afterInstall: map[string]string{tcpLoose: "0", forward4: "1", forward6: "0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			ns := nstest.New(t, "sgfw-inst")
			sh(t, ns, operatorRules)
			for name, v := range tt.presets {
				if err := (nsRunner{ns}).WriteSysctl(name, v); err != nil {
					t.Fatal(err)
				}
			}
			before4, before6 := saved(t, ns, "iptables-save"), saved(t, ns, "ip6tables-save")
			sysBefore := sysctls(t, ns, tcpLoose, forward4, forward6)
			if sysBefore[tcpLoose] != "1" {
				t.Fatalf("a new namespace should start with %s=1 for this test to mean something; got %s", tcpLoose, sysBefore[tcpLoose])
			}

			c := tt.cfg
			c.Runner = nsRunner{ns}
			inst, err := Install(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = inst.Remove(context.Background()) })

			golden(t, "install/"+tt.golden+".golden", savedBoth(t, ns))
			if diff := cmp.Diff(tt.afterInstall, sysctls(t, ns, tcpLoose, forward4, forward6)); diff != "" {
				t.Errorf("sysctls after Install (-want +got):\n%s", diff)
			}

			if err := inst.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			assertClean(t, ns)
			if diff := cmp.Diff(before4, saved(t, ns, "iptables-save")); diff != "" {
				t.Errorf("iptables-save after Remove differs from before Install (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(before6, saved(t, ns, "ip6tables-save")); diff != "" {
				t.Errorf("ip6tables-save after Remove differs from before Install (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(sysBefore, sysctls(t, ns, tcpLoose, forward4, forward6)); diff != "" {
				t.Errorf("sysctls after Remove (-before +after):\n%s", diff)
			}

			// Remove is idempotent, even when nothing is left to remove.
			if err := inst.Remove(ctx); err != nil {
				t.Errorf("second Remove: %v", err)
			}
			assertClean(t, ns)
		})
	}
}

// assertClean fails t if any SYNGUARD chain or jump is left in ns.
func assertClean(t *testing.T, ns *netns.NS) {
	t.Helper()
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := ns.Output(context.Background(), tool)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(out) {
			if strings.Contains(line, "SYNGUARD-") {
				t.Errorf("%s still shows: %s", tool, strings.TrimSpace(line))
			}
		}
	}
}

// TestInstallAfterCrash installs twice without removing in between, as
// after a crash, and expects one copy of every rule.
func TestInstallAfterCrash(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	ns := nstest.New(t, "sgfw-crash")
	c := base("203.0.113.10:80")
	c.Runner = nsRunner{ns}

	if _, err := Install(ctx, c); err != nil { // dropped: the crash
		t.Fatal(err)
	}
	first := savedBoth(t, ns)
	inst, err := Install(ctx, c)
	if err != nil {
		t.Fatalf("Install over a crashed run's leftovers: %v", err)
	}
	t.Cleanup(func() { _ = inst.Remove(context.Background()) })

	// One copy of every rule after each Install: the second replaced the
	// first's leftovers.
	golden(t, "install/after-crash.golden", first)
	if diff := cmp.Diff(first, savedBoth(t, ns)); diff != "" {
		t.Errorf("after the second Install (-first +second):\n%s", diff)
	}
	if err := inst.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
}

func TestRemoveLeftovers(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	ns := nstest.New(t, "sgfw-left")
	// A crashed run's chains, some referring to each other and some jumped
	// to twice, next to the operator's chains, one with a look-alike name.
	sh(t, ns, `
iptables -t raw -N SYNGUARD-PREROUTING
iptables -t raw -A SYNGUARD-PREROUTING -p tcp -j NFQUEUE --queue-num 3
iptables -t raw -A PREROUTING -j SYNGUARD-PREROUTING
iptables -t raw -A PREROUTING -p udp -j ACCEPT
iptables -t raw -A PREROUTING -j SYNGUARD-PREROUTING
iptables -t mangle -N SYNGUARD-OLD
iptables -t mangle -N OPERATOR
iptables -t mangle -A PREROUTING -j OPERATOR
iptables -t mangle -A OPERATOR -p tcp -g SYNGUARD-OLD
iptables -t mangle -A OPERATOR -p udp -j ACCEPT
iptables -N SYNGUARDIAN
iptables -A SYNGUARDIAN -j ACCEPT
iptables -A INPUT -j SYNGUARDIAN
ip6tables -N SYNGUARD-FORWARD
ip6tables -N SYNGUARD-MORE
ip6tables -A SYNGUARD-FORWARD -j SYNGUARD-MORE
ip6tables -A SYNGUARD-MORE -j RETURN
ip6tables -A FORWARD -j SYNGUARD-FORWARD
`)
	if err := removeLeftovers(ctx, nsRunner{ns}); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
	// The operator's chains and rules stay, look-alike included; nothing
	// of synguard's does, in either family.
	golden(t, "install/leftovers-removed.golden", savedBoth(t, ns))
	// Nothing left: a second run has nothing to do and must not fail.
	if err := removeLeftovers(ctx, nsRunner{ns}); err != nil {
		t.Errorf("second removeLeftovers: %v", err)
	}
}

// TestRestoreError feeds the real iptables-restore rules it rejects and
// expects its message, and the offending line where it names one, in the
// error.
func TestRestoreError(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgfw-rerr")
	tests := []struct {
		rule string
		want []string
	}{
		// Rejected while parsing: iptables-restore names the line.
		{"-A SYNGUARD-X -j NFQUEUE --queue-balance 5:2", []string{"iptables-restore: exit status", "5 should be less than 2", "failing input line: -A SYNGUARD-X -j NFQUEUE --queue-balance 5:2"}},
		// Rejected at commit (nf_tables backend: it blames COMMIT).
		{"-A SYNGUARD-X -j NO-SUCH-CHAIN", []string{"iptables-restore: exit status", "NO-SUCH-CHAIN"}},
	}
	for _, tt := range tests {
		input := "*filter\n:SYNGUARD-X - [0:0]\n" + tt.rule + "\nCOMMIT\n"
		_, err := run(context.Background(), nsRunner{ns}, []byte(input), "iptables-restore", "--noflush", "--wait")
		if err == nil {
			t.Errorf("iptables-restore accepted %s", tt.rule)
			continue
		}
		for _, want := range tt.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
		}
	}
	assertClean(t, ns) // the failed transactions left nothing
}

// failing wraps a namespace runner and breaks one step of Install.
type failing struct {
	nsRunner
	restore6 bool   // ip6tables-restore fails
	sysctl   string // writing this sysctl fails
}

func (f failing) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if f.restore6 && name == "ip6tables-restore" {
		return f.ns.Command(ctx, "sh", "-c", "cat >/dev/null; echo 'ip6tables-restore: simulated rejection' >&2; exit 2")
	}
	return f.nsRunner.Command(ctx, name, args...)
}

func (f failing) WriteSysctl(name, value string) error {
	if name == f.sysctl {
		return fmt.Errorf("simulated failure writing %s", name)
	}
	return f.nsRunner.WriteSysctl(name, value)
}

// TestInstallUndo breaks Install half-way and expects it to undo what it
// did: no chains left, sysctls as before.
func TestInstallUndo(t *testing.T) {
	roottest.Require(t)
	tests := []struct {
		name    string
		runner  func(*netns.NS) Runner
		wantErr []string
	}{
		{
			name:    "ip6tables-restore fails",
			runner:  func(ns *netns.NS) Runner { return failing{nsRunner: nsRunner{ns}, restore6: true} },
			wantErr: []string{"install IPv6 rules", "simulated rejection"},
		},
		{
			name:    "a sysctl cannot be set",
			runner:  func(ns *netns.NS) Runner { return failing{nsRunner: nsRunner{ns}, sysctl: forward6} },
			wantErr: []string{"set sysctl net.ipv6.conf.all.forwarding=1", "simulated failure"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := nstest.New(t, "sgfw-undo")
			sysBefore := sysctls(t, ns, tcpLoose, forward4, forward6)
			c := base("203.0.113.10:80", "[2001:db8::10]:80")
			c.Runner = tt.runner(ns)
			inst, err := Install(context.Background(), c)
			if err == nil {
				_ = inst.Remove(context.Background())
				t.Fatal("Install succeeded")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			assertClean(t, ns)
			if diff := cmp.Diff(sysBefore, sysctls(t, ns, tcpLoose, forward4, forward6)); diff != "" {
				t.Errorf("sysctls after failed Install (-before +after):\n%s", diff)
			}
		})
	}
}

// TestQueueBypass sends a real connection attempt at a service whose SYNs
// go to a queue nobody reads. With FailOpen the SYN must pass; without it
// it must be dropped. Two namespaces joined by a veth pair: the client at
// 198.51.100.2, the server at 203.0.113.10 protected in local mode.
func TestQueueBypass(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	for _, failOpen := range []bool{true, false} {
		t.Run(fmt.Sprintf("FailOpen=%v", failOpen), func(t *testing.T) {
			client, server := nstest.New(t, "sgfw-cli"), nstest.New(t, "sgfw-srv")
			sh(t, client, fmt.Sprintf(`
ip link add veth0 type veth peer name veth1 netns %s
ip addr add 198.51.100.2/24 dev veth0
ip link set veth0 up
ip route add 203.0.113.0/24 dev veth0
`, server.Name))
			sh(t, server, `
ip addr add 203.0.113.10/24 dev veth1
ip link set veth1 up
ip route add 198.51.100.0/24 dev veth1
`)
			service := netip.MustParseAddrPort("203.0.113.10:8080")
			nstest.ListenTCP(t, server, service.String())
			dial := func() error {
				return client.Do(func() error {
					c, err := (&net.Dialer{Timeout: 1500 * time.Millisecond}).Dial("tcp", service.String())
					if err == nil {
						c.Close()
					}
					return err
				})
			}
			if err := dial(); err != nil {
				t.Fatalf("no connection even without synguard's rules: %v", err)
			}

			c := base(service.String())
			c.Local, c.Queue, c.FailOpen = true, 77, failOpen
			c.Runner = nsRunner{server}
			inst, err := Install(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = inst.Remove(context.Background()) })

			err = dial()
			if failOpen && err != nil {
				t.Errorf("fail open, no program on the queue: connect failed: %v", err)
			}
			if !failOpen {
				var ne net.Error
				if err == nil {
					t.Errorf("fail closed, no program on the queue: connect succeeded")
				} else if !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("fail closed: connect failed with %v, want a timeout (SYN dropped)", err)
				}
			}

			if err := inst.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			if err := dial(); err != nil {
				t.Errorf("connect after Remove: %v", err)
			}
		})
	}
}
