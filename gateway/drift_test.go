package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/syncbuf"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/telemetry"
)

// fakeRules is a ruleset whose Check and Restore results a test scripts,
// call by call; past the script, Check finds nothing and Restore works.
type fakeRules struct {
	mu       sync.Mutex
	missing  [][]string // what each Check finds
	checkErr []error    // what each Check returns
	restErr  []error    // what each Restore returns
	checks   int
	restores int
}

func (f *fakeRules) Check(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.checks
	f.checks++
	if k < len(f.checkErr) && f.checkErr[k] != nil {
		return nil, f.checkErr[k]
	}
	if k < len(f.missing) {
		return f.missing[k], nil
	}
	return nil, nil
}

func (f *fakeRules) Restore(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.restores
	f.restores++
	if k < len(f.restErr) {
		return f.restErr[k]
	}
	return nil
}

func (f *fakeRules) counts() (checks, restores int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checks, f.restores
}

// logLine is the part of a log line these tests look at.
type logLine struct {
	Level   string   `json:"level"`
	Event   string   `json:"event"`
	Missing []string `json:"missing"`
	TookMS  *int64   `json:"took_ms"`
	Error   string   `json:"error"`
}

func logLines(t *testing.T, log string) []logLine {
	t.Helper()
	var out []logLine
	for l := range strings.Lines(log) {
		var line logLine
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, line)
	}
	return out
}

// watchWith runs a rules watch over rules, checking every period, with
// notifications from changes, until the test ends. The rules are not in
// nf_tables, so the period holds whatever the notifications.
func watchWith(t *testing.T, rules ruleset, period time.Duration, changes chan struct{}) (*rulesWatch, *syncbuf.Buffer) {
	t.Helper()
	return watchNotified(t, rules, period, changes, nil, false)
}

// watchNotified is watchWith with the channel closed when notifications
// are lost, and whether the rules are in nf_tables. The quiet period is
// an hour.
func watchNotified(t *testing.T, rules ruleset, period time.Duration, changes, lost chan struct{}, nft bool) (*rulesWatch, *syncbuf.Buffer) {
	t.Helper()
	var log syncbuf.Buffer
	w := newRulesWatch(zerolog.New(&log))
	w.period, w.quiet, w.settle = period, time.Hour, time.Millisecond
	w.inNFTables = func() bool { return nft }
	w.subscribe = func() (<-chan struct{}, <-chan struct{}, func(), error) {
		if changes == nil {
			return nil, nil, nil, errors.New("no notifications in this test")
		}
		return changes, lost, func() {}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx, rules) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, &log
}

const missingJump = "IPv4 raw PREROUTING jump to SYNGUARD-PREROUTING"

// noLeaks fails t if goroutines started during the test outlive its
// cleanups.
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func TestRulesWatch(t *testing.T) {
	noLeaks(t)
	boom := errors.New("iptables-restore: simulated rejection")
	tests := []struct {
		name     string
		rules    *fakeRules
		restores int       // Restore calls once it settles
		restored uint64    // synguard_rules_restored_total then
		events   []logLine // what it logs, without took_ms
	}{
		{
			name:  "intact",
			rules: &fakeRules{},
		},
		{
			name:     "flushed once",
			rules:    &fakeRules{missing: [][]string{nil, {missingJump, "IPv4 raw SYNGUARD-PREROUTING rules 1-2"}}},
			restores: 1, restored: 1,
			events: []logLine{{Level: "warn", Event: telemetry.EventRulesRestored, Missing: []string{missingJump, "IPv4 raw SYNGUARD-PREROUTING rules 1-2"}}},
		},
		{
			name:     "restore fails, then works next round",
			rules:    &fakeRules{missing: [][]string{{missingJump}, {missingJump}}, restErr: []error{boom}},
			restores: 2, restored: 1,
			events: []logLine{
				{Level: "error", Event: telemetry.EventRulesRestoreFailed, Missing: []string{missingJump}, Error: boom.Error()},
				{Level: "warn", Event: telemetry.EventRulesRestored, Missing: []string{missingJump}},
			},
		},
		{
			name:  "check fails",
			rules: &fakeRules{checkErr: []error{boom}},
			events: []logLine{
				{Level: "error", Event: telemetry.EventRulesRestoreFailed, Missing: []string{}, Error: boom.Error()},
			},
		},
		{
			name:  "rules removed",
			rules: &fakeRules{checkErr: []error{firewall.ErrRemoved, firewall.ErrRemoved}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, log := watchWith(t, tt.rules, time.Millisecond, nil)
			// Settled: several rounds past the scripted ones.
			poll.Must(t, 10*time.Second, "the watch does not check", func() bool {
				checks, _ := tt.rules.counts()
				return checks >= 6
			})
			if _, restores := tt.rules.counts(); restores != tt.restores {
				t.Errorf("%d restores, want %d", restores, tt.restores)
			}
			if got := w.restored.Load(); got != tt.restored {
				t.Errorf("restored counter %d, want %d", got, tt.restored)
			}
			lines := logLines(t, log.String())
			for k, l := range lines {
				if l.Event == telemetry.EventRulesRestored && (l.TookMS == nil || *l.TookMS < 0) {
					t.Errorf("rules_restored without took_ms: %+v", l)
				}
				lines[k].TookMS = nil
			}
			if diff := cmp.Diff(tt.events, lines); diff != "" {
				t.Errorf("log (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRulesWatchNotified: a change notification makes the watch check at
// once, not at its next period.
func TestRulesWatchNotified(t *testing.T) {
	noLeaks(t)
	rules := &fakeRules{missing: [][]string{{missingJump}}}
	changes := make(chan struct{})
	w, _ := watchWith(t, rules, time.Hour, changes)
	changes <- struct{}{}
	poll.Must(t, 10*time.Second, "no restore after a notification", func() bool { return w.restored.Load() == 1 })
}

// TestRulesWatchQuiet: with the rules in nf_tables and notifications
// coming, the watch checks once at start and then at its quiet period (an
// hour here), not every period; once the notifications are lost it checks every period again.
// With the rules elsewhere (legacy iptables), notifications or not, it
// checks every period.
func TestRulesWatchQuiet(t *testing.T) {
	noLeaks(t)
	t.Run("nf_tables", func(t *testing.T) {
		rules := &fakeRules{}
		changes, lost := make(chan struct{}), make(chan struct{})
		watchNotified(t, rules, time.Millisecond, changes, lost, true)
		// One check at start, for changes before the watch joined.
		poll.Must(t, 10*time.Second, "no check at start", func() bool { checks, _ := rules.counts(); return checks == 1 })
		if !poll.Stays(200*time.Millisecond, func() bool { checks, _ := rules.counts(); return checks == 1 }) {
			checks, _ := rules.counts()
			t.Fatalf("%d checks within 200 ms with notifications to rely on, want the one at start", checks)
		}
		changes <- struct{}{}
		poll.Must(t, 10*time.Second, "no check after a notification", func() bool { checks, _ := rules.counts(); return checks == 2 })
		close(lost)
		poll.Must(t, 10*time.Second, "no checks every period once notifications are lost", func() bool {
			checks, _ := rules.counts()
			return checks >= 5
		})
	})
	t.Run("legacy", func(t *testing.T) {
		rules := &fakeRules{}
		watchNotified(t, rules, time.Millisecond, make(chan struct{}), make(chan struct{}), false)
		poll.Must(t, 10*time.Second, "no checks every period", func() bool {
			checks, _ := rules.counts()
			return checks >= 5
		})
	})
}

// TestOwnChainsInNFTables: synguard's chains are found in nf_tables once
// it installed its rules through iptables (the nf_tables variant here),
// and not before.
func TestOwnChainsInNFTables(t *testing.T) {
	ns := nstest.New(t, "sggw-nft")
	found := func() (in bool) {
		_ = ns.Do(func() error { in = ownChainsInNFTables(); return nil })
		return in
	}
	if found() {
		t.Fatal("synguard's chains found in nf_tables before any rule was installed")
	}
	installIn(t, ns, firewall.Config{
		Services: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:80")},
		Queues:   1, EngineMark: firewall.DefaultEngineMark, HandoffMark: firewall.DefaultHandoffMark,
	})
	if !found() {
		t.Fatalf("synguard's chains not found in nf_tables:\n%s", saveRules(t, ns))
	}
}

// TestEnterNetns: a goroutine started outside the namespace acts inside
// it once it entered: the commands it runs see the namespace's ruleset.
func TestEnterNetns(t *testing.T) {
	ns := nstest.New(t, "sggw-enter")
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	want, err := ns.Output(context.Background(), "readlink", "/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		if err := enterNetns(fd); err != nil {
			got <- err.Error()
			return
		}
		out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(out)
	}()
	if g := <-got; g != want {
		t.Fatalf("inside: %q, want the namespace's %q", g, want)
	}
}

// installIn installs real rules for c in ns, as the gateway does, and
// removes them at cleanup.
func installIn(t *testing.T, ns *netns.NS, c firewall.Config) *firewall.Installed {
	t.Helper()
	var inst *firewall.Installed
	if err := ns.Do(func() (err error) {
		inst, err = firewall.Install(context.Background(), c)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Do(func() error { return inst.Remove(context.Background()) }) })
	return inst
}

// TestRulesWatchKernelNotification: with real rules in a namespace and a
// period too long to matter, a flush is repaired because the kernel
// announced it; the repair's own announcements do not start another.
func TestRulesWatchKernelNotification(t *testing.T) {
	noLeaks(t)
	ns := nstest.New(t, "sggw-notify")
	c := firewall.Config{
		Services: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:80")},
		Queues:   1, EngineMark: firewall.DefaultEngineMark, HandoffMark: firewall.DefaultHandoffMark,
	}
	inst := installIn(t, ns, c)
	installed := saveRules(t, ns)

	var log syncbuf.Buffer
	w := newRulesWatch(zerolog.New(&log))
	w.period = time.Hour
	joined := make(chan error, 1)
	w.subscribe = func() (<-chan struct{}, <-chan struct{}, func(), error) {
		changes, lost, stop, err := netfilterChanges()
		joined <- err
		return changes, lost, stop, err
	}
	var p part
	_ = ns.Do(func() error { p = w.part(inst); return nil }) // pinned to ns
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := <-joined; err != nil {
		t.Fatal(err)
	}

	if err := ns.Run(context.Background(), "iptables", "-F"); err != nil {
		t.Fatal(err)
	}
	if !poll.Until(10*time.Second, func() bool { return w.restored.Load() >= 1 && saveRules(t, ns) == installed }) {
		t.Fatalf("a flush was not repaired:\n%s\nrules:\n%s", log.String(), saveRules(t, ns))
	}
	n := w.restored.Load()
	if !poll.Stays(time.Second, func() bool { return w.restored.Load() == n }) {
		t.Fatalf("the watch restores again with nothing changed:\n%s", log.String())
	}
	if !strings.Contains(log.String(), `"missing":["IPv4 filter FORWARD jump to SYNGUARD-FORWARD","IPv4 filter SYNGUARD-FORWARD rules 1-4"]`) {
		t.Errorf("log does not name what the flush removed:\n%s", log.String())
	}
}

// saveRules is iptables-save in ns without its timestamped comments.
func saveRules(t *testing.T, ns *netns.NS) string {
	t.Helper()
	var b strings.Builder
	for l := range strings.Lines(iptablesSave(t, ns)) {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l)
		}
	}
	return b.String()
}

// TestGatewayRestoresRules: a serving gateway puts its rules back after a
// flush and counts it, and still removes them all when it stops, without
// its watch putting them back then.
func TestGatewayRestoresRules(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ns := nstest.New(t, "sggw-drift")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncbuf.Buffer
	cfg := lifecycleConfig()
	cfg.Logger = zerolog.New(&logs)
	repaired := make(chan bool, 1)
	err, rules := serveIn(t, ns, ctx, cfg, func(g *gateway) {
		g.watch.period = 20 * time.Millisecond
		installed := saveRules(t, ns)
		go func() {
			defer cancel()
			_ = ns.Run(context.Background(), "iptables", "-t", "raw", "-F")
			repaired <- poll.Until(10*time.Second, func() bool {
				return g.watch.restored.Load() == 1 && saveRules(t, ns) == installed &&
					(&source{watch: g.watch}).RulesRestored() == 1
			})
		}()
	})
	if !<-repaired {
		t.Fatalf("the raw table's rules were not put back:\n%s", logs.String())
	}
	if err != nil {
		t.Fatalf("serve after cancel: %v", err)
	}
	if strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("rules left after stop:\n%s", rules)
	}
	if !strings.Contains(logs.String(), `"event":"rules_restored","missing":["IPv4 raw PREROUTING jump to SYNGUARD-PREROUTING"`) {
		t.Fatalf("no rules_restored event naming the raw jump:\n%s", logs.String())
	}
}
