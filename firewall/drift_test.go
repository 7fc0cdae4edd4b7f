package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab/netns"
)

// These tests need root: they run the real iptables tools on the real
// kernel in namespaces of their own (see install_test.go).

// full is a configuration that uses every table and both families.
func full() Config {
	c := base("203.0.113.10:80", "203.0.113.11:443", "[2001:db8::10]:80")
	c.ObserveFirstACK, c.ReopenWithin, c.StaleMark = true, 120, DefaultStaleMark
	return c
}

// installIn installs c in ns and removes it at cleanup.
func installIn(t *testing.T, ns *netns.NS, c Config) *Installed {
	t.Helper()
	c.Runner = nsRunner{ns}
	inst, err := Install(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inst.Remove(context.Background()) })
	return inst
}

// check is Check that fails t on error.
func check(t *testing.T, inst *Installed) []string {
	t.Helper()
	missing, err := inst.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return missing
}

// TestCheckIntact: right after Install, in gateway and in local mode,
// Check finds nothing: Rules writes every rule as the save tools print it.
func TestCheckIntact(t *testing.T) {
	roottest.Require(t)
	local := full()
	local.Local = true
	for name, c := range map[string]Config{"gateway": full(), "local": local} {
		t.Run(name, func(t *testing.T) {
			ns := nstest.New(t, "sgfw-chk")
			sh(t, ns, operatorRules)
			inst := installIn(t, ns, c)
			if missing := check(t, inst); len(missing) != 0 {
				t.Fatalf("Check right after Install: %q", missing)
			}
		})
	}
}

// TestRestoreDrift breaks the installed rules as other tools and people
// do, and expects Check to name exactly what broke, Restore to put back
// synguard's rules as Install left them, with each jump first again, and
// the operator's rules untouched.
func TestRestoreDrift(t *testing.T) {
	roottest.Require(t)
	const v4Forward = "IPv4 filter SYNGUARD-FORWARD rules 1-10"
	tests := []struct {
		name   string
		script string
		want   []string
	}{
		{
			name:   "filter flushed",
			script: "iptables -F",
			want:   []string{"IPv4 filter FORWARD jump to SYNGUARD-FORWARD", v4Forward, "IPv4 filter SYNGUARD-STALE rules 1-2"},
		},
		{
			name:   "raw flushed",
			script: "iptables -t raw -F",
			want: []string{
				"IPv4 raw PREROUTING jump to SYNGUARD-PREROUTING", "IPv4 raw OUTPUT jump to SYNGUARD-OUTPUT",
				"IPv4 raw SYNGUARD-PREROUTING rules 1-3", "IPv4 raw SYNGUARD-OUTPUT rule 1",
			},
		},
		{
			name:   "one jump deleted",
			script: "iptables -t raw -D PREROUTING -j SYNGUARD-PREROUTING",
			want:   []string{"IPv4 raw PREROUTING jump to SYNGUARD-PREROUTING"},
		},
		{
			name:   "a chain deleted",
			script: "iptables -t mangle -D PREROUTING -j SYNGUARD-PREROUTING; iptables -t mangle -F SYNGUARD-PREROUTING; iptables -t mangle -X SYNGUARD-PREROUTING",
			want:   []string{"IPv4 mangle PREROUTING jump to SYNGUARD-PREROUTING", "IPv4 mangle chain SYNGUARD-PREROUTING"},
		},
		{
			name:   "a rule altered",
			script: "iptables -R SYNGUARD-FORWARD 3 -d 203.0.113.10/32 -p tcp --dport 81 -j RETURN",
			want:   []string{"IPv4 filter SYNGUARD-FORWARD rule 3"},
		},
		{
			name:   "a rule put in synguard's chain",
			script: "iptables -t raw -A SYNGUARD-OUTPUT -j ACCEPT",
			want:   []string{"IPv4 raw SYNGUARD-OUTPUT: 1 rule too many"},
		},
		{
			name:   "IPv6 raw flushed and a v4 rule deleted",
			script: "ip6tables -t raw -F; iptables -t raw -D SYNGUARD-PREROUTING 2",
			want: []string{
				"IPv4 raw SYNGUARD-PREROUTING rules 2-3",
				"IPv6 raw PREROUTING jump to SYNGUARD-PREROUTING", "IPv6 raw OUTPUT jump to SYNGUARD-OUTPUT",
				"IPv6 raw SYNGUARD-PREROUTING rules 1-2", "IPv6 raw SYNGUARD-OUTPUT rule 1",
			},
		},
		{
			name:   "iptables-restore without --noflush",
			script: `printf '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p udp -j ACCEPT\n-A FORWARD -p udp -j ACCEPT\nCOMMIT\n' | iptables-restore`,
			want:   []string{"IPv4 filter FORWARD jump to SYNGUARD-FORWARD", "IPv4 filter chain SYNGUARD-FORWARD", "IPv4 filter chain SYNGUARD-STALE"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			ns := nstest.New(t, "sgfw-drift")
			sh(t, ns, operatorRules)
			inst := installIn(t, ns, full())
			installed := savedBoth(t, ns)

			sh(t, ns, tt.script)
			if diff := cmp.Diff(tt.want, check(t, inst)); diff != "" {
				t.Fatalf("Check after %q (-want +got):\n%s", tt.script, diff)
			}
			if err := inst.Restore(ctx); err != nil {
				t.Fatal(err)
			}
			if missing := check(t, inst); len(missing) != 0 {
				t.Fatalf("Check after Restore: %q", missing)
			}
			// The operator's rules stayed (a flush took them; the
			// restore brought back its own), synguard's are as installed.
			after := savedBoth(t, ns)
			if strings.Contains(tt.script, "-F") || strings.Contains(tt.script, "iptables-restore") {
				after, installed = ownedOnly(after), ownedOnly(installed)
			}
			if diff := cmp.Diff(installed, after); diff != "" {
				t.Errorf("rules after Restore differ from Install's (-installed +restored):\n%s", diff)
			}
			if err := inst.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			assertClean(t, ns)
		})
	}
}

// ownedOnly keeps of savedBoth's text the headings, table lines and lines
// naming a SYNGUARD chain, with each jump's position in its chain, so
// that rulesets whose foreign rules differ can still be compared.
func ownedOnly(saved string) string {
	var b strings.Builder
	pos := map[string]int{}
	for line := range strings.Lines(saved) {
		if chain, ok := strings.CutPrefix(line, "-A "); ok {
			chain, _, _ = strings.Cut(chain, " ")
			pos[chain]++
			if strings.Contains(line, "SYNGUARD") && !OwnsChain(chain) {
				line = fmt.Sprintf("(position %d) %s", pos[chain], line)
			}
		}
		if strings.HasPrefix(line, "*") {
			clear(pos)
		}
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, "*") || strings.Contains(line, "SYNGUARD") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// TestForeignChangesAreNotDrift: other tools' rules, even one put in front
// of synguard's jump, are no drift, and Restore changes nothing.
func TestForeignChangesAreNotDrift(t *testing.T) {
	roottest.Require(t)
	ns := nstest.New(t, "sgfw-foreign")
	inst := installIn(t, ns, full())
	sh(t, ns, `
iptables -A FORWARD -p udp -j ACCEPT
iptables -t raw -I PREROUTING 1 -p udp -j ACCEPT
ip6tables -N OPERATOR
ip6tables -A FORWARD -j OPERATOR
iptables -t nat -A POSTROUTING -j MASQUERADE
`)
	before := savedBoth(t, ns)
	if missing := check(t, inst); len(missing) != 0 {
		t.Fatalf("Check after foreign changes: %q", missing)
	}
	if err := inst.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, savedBoth(t, ns)); diff != "" {
		t.Errorf("Restore with nothing missing changed the rules (-before +after):\n%s", diff)
	}
}

// TestReplace swaps configurations and expects, each time, exactly the
// rules a fresh Install of the new configuration makes (compared with a
// second namespace), the operator's rules kept, and Remove to leave
// nothing afterwards.
func TestReplace(t *testing.T) {
	roottest.Require(t)
	v4 := base("203.0.113.10:80")
	v4.ReopenWithin, v4.StaleMark = 120, DefaultStaleMark
	with := func(c Config, change func(*Config)) Config {
		c = c.clone()
		change(&c)
		return c
	}
	addService := with(v4, func(c *Config) { c.Services = append(c.Services, netip.MustParseAddrPort("203.0.113.11:443")) })
	addFamily := with(addService, func(c *Config) { c.Services = append(c.Services, netip.MustParseAddrPort("[2001:db8::10]:80")) })
	observe := with(addFamily, func(c *Config) { c.ObserveFirstACK = true })
	local := with(observe, func(c *Config) { c.Local = true })
	requeued := with(local, func(c *Config) { c.Queue, c.Queues, c.FailOpen = 5, 2, true })
	steps := []struct {
		name string
		cfg  Config
	}{
		{"add a service", addService},
		{"add a family", addFamily},
		{"observe first ACKs", observe},
		{"local", local},
		{"other queues", requeued},
		{"back to gateway, no first ACKs", addFamily},
		{"remove the IPv4 services, keep IPv6", with(addFamily, func(c *Config) { c.Services = c.Services[2:] })},
		{"remove the IPv6 family", v4},
	}
	ctx := context.Background()
	ns := nstest.New(t, "sgfw-repl")
	sh(t, ns, operatorRules)
	inst := installIn(t, ns, v4)
	for _, step := range steps {
		if err := inst.Replace(ctx, step.cfg); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		ref := nstest.New(t, "sgfw-ref")
		sh(t, ref, operatorRules)
		refInst := installIn(t, ref, step.cfg)
		if diff := cmp.Diff(savedBoth(t, ref), savedBoth(t, ns)); diff != "" {
			t.Fatalf("%s: rules after Replace differ from a fresh Install's (-install +replace):\n%s", step.name, diff)
		}
		if missing := check(t, inst); len(missing) != 0 {
			t.Fatalf("%s: Check after Replace: %q", step.name, missing)
		}
		_ = refInst.Remove(ctx)
		_ = ref.Delete()
	}
	if err := inst.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
	if !errors.Is(inst.Replace(ctx, v4), ErrRemoved) {
		t.Error("Replace after Remove did not return ErrRemoved")
	}
	if _, err := inst.Check(ctx); !errors.Is(err, ErrRemoved) {
		t.Errorf("Check after Remove: %v, want ErrRemoved", err)
	}
	assertClean(t, ns)
}

// TestReplaceSysctls: a family added by Replace gets its forwarding
// sysctl, and Remove puts it back.
func TestReplaceSysctls(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	ns := nstest.New(t, "sgfw-rsys")
	before := sysctls(t, ns, tcpLoose, forward4, forward6)
	inst := installIn(t, ns, base("203.0.113.10:80"))
	if got := sysctls(t, ns, forward6)[forward6]; got != "0" {
		t.Fatalf("%s = %s with IPv4 services only", forward6, got)
	}
	if err := inst.Replace(ctx, base("203.0.113.10:80", "[2001:db8::10]:80")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{tcpLoose: "0", forward4: "1", forward6: "1"}, sysctls(t, ns, tcpLoose, forward4, forward6)); diff != "" {
		t.Errorf("sysctls after Replace added IPv6 (-want +got):\n%s", diff)
	}
	if err := inst.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, sysctls(t, ns, tcpLoose, forward4, forward6)); diff != "" {
		t.Errorf("sysctls after Remove (-before +after):\n%s", diff)
	}
}

// breakRestore is a namespace runner whose next restore of one family
// commits the first table of its input and then fails, as a rule the
// kernel rejects in a later table does.
type breakRestore struct {
	nsRunner
	tool string
	arm  *atomic.Bool
}

func (b breakRestore) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if name == b.tool && b.arm.CompareAndSwap(true, false) {
		script := fmt.Sprintf(`awk '1; /^COMMIT$/ { exit }' | %s --noflush --wait && echo '%s: simulated rejection of the second table' >&2; exit 2`, name, name)
		return b.ns.Command(ctx, "sh", "-c", script)
	}
	return b.nsRunner.Command(ctx, name, args...)
}

// TestReplaceFailureKeepsOldRules: a Replace whose restore fails half-way
// through a family, after the other family already changed, leaves the
// previous rules in force, exactly, and says so; Check and Restore keep
// to the previous configuration.
func TestReplaceFailureKeepsOldRules(t *testing.T) {
	roottest.Require(t)
	for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
		t.Run(tool, func(t *testing.T) {
			ctx := context.Background()
			ns := nstest.New(t, "sgfw-rfail")
			sh(t, ns, operatorRules)
			arm := &atomic.Bool{}
			old := base("203.0.113.10:80", "[2001:db8::10]:80")
			old.Runner = breakRestore{nsRunner{ns}, tool, arm}
			inst, err := Install(ctx, old)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = inst.Remove(context.Background()) })
			before := savedBoth(t, ns)

			c := base("203.0.113.10:80", "203.0.113.11:80", "[2001:db8::11]:80")
			c.ObserveFirstACK = true
			arm.Store(true)
			err = inst.Replace(ctx, c)
			if err == nil {
				t.Fatal("Replace succeeded")
			}
			for _, want := range []string{"simulated rejection", "the previous rules are in force"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if diff := cmp.Diff(before, savedBoth(t, ns)); diff != "" {
				t.Fatalf("rules after the failed Replace (-before +after):\n%s", diff)
			}
			sh(t, ns, "iptables -t raw -F; ip6tables -F")
			if err := inst.Restore(ctx); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(ownedOnly(before), ownedOnly(savedBoth(t, ns))); diff != "" {
				t.Fatalf("Restore after the failed Replace did not restore the previous rules (-before +after):\n%s", diff)
			}
		})
	}
}

// TestRemoveAfterRestore: Remove takes away what Restore put back, and
// Restore after Remove puts nothing back.
func TestRemoveAfterRestore(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	ns := nstest.New(t, "sgfw-rmre")
	inst := installIn(t, ns, full())
	sh(t, ns, "iptables -F; ip6tables -t raw -F; iptables -t mangle -F")
	if err := inst.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	assertClean(t, ns)
	if err := inst.Restore(ctx); !errors.Is(err, ErrRemoved) {
		t.Errorf("Restore after Remove: %v, want ErrRemoved", err)
	}
	assertClean(t, ns)
}

// BenchmarkCheck measures one Check of intact rules in both families and
// every table (six save commands), the rules watch's cost every period,
// run as the gateway runs it: on a thread inside the namespace.
func BenchmarkCheck(b *testing.B) {
	roottest.Require(b)
	ns := nstest.New(b, "sgfw-bchk")
	err := ns.Do(func() error {
		inst, err := Install(context.Background(), full())
		if err != nil {
			return err
		}
		defer inst.Remove(context.Background())
		var before, after unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &before)
		for b.Loop() {
			if missing, err := inst.Check(context.Background()); err != nil || len(missing) != 0 {
				return fmt.Errorf("Check: %q, %v", missing, err)
			}
		}
		_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &after)
		cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "child-cpu-µs/op")
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
