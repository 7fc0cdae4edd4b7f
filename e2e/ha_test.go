package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
)

// The HA tests run an active/standby pair (docs/ha.md) in namespaces with
// the docs/ha files as they are: a client and a backend behind two
// gateways, each running conntrackd, synguard (one shared key file) and
// keepalived. The master dies as a box dies (lab.HA.Kill: every process
// SIGKILLed, the links gone), and the tests check what the guide promises:
// handed-off flows survive, short connections across the fail-over
// succeed, a returning gateway takes its flows back without breaking them
// and, as the control that shows the test can fail, without conntrackd a
// flow dies with its gateway.

// haFiles are the files the guide shows, read from the tree rather than
// from the copies built into synguard.
var haFiles = os.DirFS("../docs/ha")

var haSeq atomic.Int32

// Time limits of the fail-over steps (keepalived's adverts are 1 s apart,
// a backup takes over after three are missed).
const (
	haTakeover   = 15 * time.Second // a backup holding both VIPs once the master is gone
	haPreemption = 40 * time.Second // a booted gw-a holding them again (resync, preempt_delay)
)

// newHA builds an HA lab, removed (with everything it started) when the
// test ends; on failure the daemons' logs are shown.
func newHA(t *testing.T, noSync bool) *lab.HA {
	t.Helper()
	requireHATools(t)
	if lab.SynguardRunDir != firewall.RecordDir {
		t.Fatalf("lab.SynguardRunDir %s is not firewall.RecordDir %s: a killed gateway's files would stay", lab.SynguardRunDir, firewall.RecordDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := lab.HAUp(ctx, lab.HAConfig{
		Name:   fmt.Sprintf("sgh%d-%d", os.Getpid()%100000, haSeq.Add(1)),
		Binary: binary,
		Files:  haFiles,
		NoSync: noSync,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, node := range []string{lab.NodeA, lab.NodeB} {
				for _, f := range []string{"keepalived.log", "conntrackd.log", "synguard.log"} {
					t.Logf("%s %s:\n%s", node, f, tail(h.Log(node, f), 30))
				}
			}
		}
		if err := h.Down(context.Background()); err != nil {
			t.Errorf("lab down: %v", err)
		}
		for _, name := range lab.HANamespaceNames(h.Name) {
			if _, err := os.Stat("/run/netns/" + name); err == nil {
				t.Errorf("namespace %s left after down", name)
			}
		}
		if _, err := os.Stat(h.Dir); err == nil {
			t.Errorf("%s left after down", h.Dir)
		}
	})
	return h
}

// requireHATools: root, keepalived and conntrackd, or the test fails in CI
// and is skipped elsewhere.
func requireHATools(t *testing.T) {
	t.Helper()
	roottest.Require(t)
	for _, tool := range []string{"keepalived", "conntrackd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed; CI must install it (apt-get install keepalived conntrackd)", tool)
			}
			t.Skipf("needs %s (apt-get install keepalived conntrackd)", tool)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// entryOn looks up the conntrack entry client -> server in node's
// namespace.
func entryOn(t *testing.T, h *lab.HA, node string, client, server netip.AddrPort) (conntrack.Entry, bool) {
	t.Helper()
	ns := h.NodeNS(node)
	if ns == nil {
		t.Fatalf("%s is down", node)
	}
	var tb *conntrack.Table
	if err := ns.Do(func() (err error) {
		tb, err = conntrack.Open()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	e, ok, err := tb.Lookup(client, server)
	if err != nil {
		t.Fatal(err)
	}
	return e, ok
}

// startDownload runs d from the client in the background; the returned
// channel gets its result.
func startDownload(h *lab.HA, d *lab.PacedDownload) <-chan error {
	done := make(chan error, 1)
	go func() { done <- d.Run(context.Background(), h.Client, h.Service) }()
	return done
}

// waitFlowed waits until d has received at least n bytes and has its
// client address.
func waitFlowed(t *testing.T, d *lab.PacedDownload, n int64, done <-chan error) netip.AddrPort {
	t.Helper()
	poll.Must(t, 20*time.Second, fmt.Sprintf("download to receive %d bytes", n), func() bool {
		select {
		case err := <-done:
			t.Fatalf("download ended early: %v", err)
		default:
		}
		return d.Received() >= n
	})
	client, ok := d.Client()
	if !ok {
		t.Fatal("download has no client address")
	}
	return client
}

func waitDownload(t *testing.T, d *lab.PacedDownload, done <-chan error, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("download still running after %v (%d of %d bytes)", limit, d.Received(), d.Size)
		return nil
	}
}

func handoffEntries(t *testing.T, h *lab.HA, node string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := h.HandoffEntries(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func waitMaster(t *testing.T, h *lab.HA, node string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := h.WaitMaster(context.Background(), node, limit); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// A download handed off on the master is copied to the standby (with its
// sequence adjustment, which the gauge there counts) and finishes intact
// through the standby after the master dies mid-way.
func TestHADownloadSurvivesFailover(t *testing.T) {
	h := newHA(t, false)
	d := &lab.PacedDownload{Size: 48 << 20, Rate: 6 << 20, Stall: 30 * time.Second}
	done := startDownload(h, d)
	client := waitFlowed(t, d, 6<<20, done)

	onA, ok := entryOn(t, h, lab.NodeA, client, h.Service)
	if !ok || onA.Mark != firewall.DefaultHandoffMark || onA.SeqAdjReply == (conntrack.SeqAdjust{}) {
		t.Fatalf("gw-a: the download's entry is %+v (found %v), want it handed off with a sequence adjustment", onA, ok)
	}
	var onB conntrack.Entry
	poll.Must(t, 5*time.Second, "the download's entry copied to gw-b", func() bool {
		onB, ok = entryOn(t, h, lab.NodeB, client, h.Service)
		return ok
	})
	if onB.Mark != onA.Mark || onB.SeqAdjReply != onA.SeqAdjReply || onB.TCPState != conntrack.TCPEstablished {
		t.Fatalf("gw-b's copy %+v differs from gw-a's entry %+v in mark, sequence adjustment or state", onB, onA)
	}
	if onB.ClientFlags&conntrack.FlagBeLiberal == 0 || onB.ServerFlags&conntrack.FlagBeLiberal == 0 {
		t.Errorf("gw-b's copy is not BE_LIBERAL both ways: %v / %v", onB.ClientFlags, onB.ServerFlags)
	}
	if n := handoffEntries(t, h, lab.NodeB); n < 1 {
		t.Errorf("gw-b: synguard_handoff_entries = %d, want the download's copy counted", n)
	}

	if err := h.Kill(context.Background(), lab.NodeA); err != nil {
		t.Fatal(err)
	}
	atKill := d.Received()
	took := waitMaster(t, h, lab.NodeB, haTakeover)
	if err := waitDownload(t, d, done, 2*time.Minute); err != nil {
		t.Fatalf("the download broke across the fail-over (%d of %d bytes at the kill): %v", atKill, d.Size, err)
	}
	if atKill >= d.Size {
		t.Fatalf("the download had finished before the kill: nothing was tested")
	}
	t.Logf("killed at %d MiB of %d; gw-b held both VIPs %v later; longest stall %v",
		atKill>>20, d.Size>>20, took.Round(10*time.Millisecond), d.LongestStall().Round(10*time.Millisecond))
}

// Of a few thousand short connections opened at a steady rate across the
// master's death, at most 1% fail. Those whose handshake straddles it
// complete on the standby, which accepts the dead gateway's cookies: to
// have many of them, the client's segments after its SYNs are held back
// from half a second before the kill until the standby holds the VIPs (as
// if they were lost with the dead box), so every handshake answered by
// gw-a in that time is completed by gw-b from the client's retransmitted
// ACK (a zero-window probe). Without the shared key they would all fail.
func TestHAShortConnectionsAcrossFailover(t *testing.T) {
	h := newHA(t, false)
	const (
		rate  = 200
		count = 3000
	)
	tally := &lab.ConnTally{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		lab.RunConns(context.Background(), h.Client, h.Service, rate, count, 15*time.Second, tally)
	}()
	poll.Must(t, 30*time.Second, "500 connections before the kill", func() bool {
		ok, failed := tally.Totals()
		return ok+failed >= 500
	})
	ctx := context.Background()
	hold := []string{"OUTPUT", "-p", "tcp", "-d", h.Service.Addr().String(), "--dport", fmt.Sprint(h.Service.Port()), "!", "--syn", "-j", "DROP"}
	if err := h.Client.Run(ctx, "iptables", append([]string{"-I"}, hold...)...); err != nil {
		t.Fatal(err)
	}
	synacks := func(node string) float64 {
		m, err := lab.ScrapeMetrics(ctx, h.NodeNS(node), lab.HAMetricsAddr)
		if err != nil {
			t.Fatal(err)
		}
		return m["synguard_synack_sent_total"]
	}
	// Handshakes gw-a answers and the client cannot complete.
	const pending = 50
	before := synacks(lab.NodeA)
	poll.Must(t, 10*time.Second, fmt.Sprintf("gw-a answering %d more SYNs", pending), func() bool {
		return synacks(lab.NodeA) >= before+pending
	})
	if err := h.Kill(ctx, lab.NodeA); err != nil {
		t.Fatal(err)
	}
	okAtKill, failedAtKill := tally.Totals()
	took := waitMaster(t, h, lab.NodeB, haTakeover)
	if err := h.Client.Run(ctx, "iptables", append([]string{"-D"}, hold...)...); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("connections still running after 2 minutes")
	}
	ok, failed := tally.Totals()
	if ok+failed != count {
		t.Fatalf("%d connections ended, want %d", ok+failed, count)
	}
	if okAtKill+failedAtKill > count-rate*int(took/time.Second+1) {
		t.Fatalf("only %d connections opened after the kill: the fail-over was not crossed", count-okAtKill-failedAtKill)
	}
	t.Logf("%d of %d failed (%.2f%%); gw-b held both VIPs %v after the kill; errors: %v",
		failed, count, 100*float64(failed)/count, took.Round(10*time.Millisecond), tally.Errors())
	if failed*100 > count {
		t.Errorf("%d of %d connections failed, more than 1%%: %v", failed, count, tally.Errors())
	}
	m, err := lab.ScrapeMetrics(context.Background(), h.NodeNS(lab.NodeB), lab.HAMetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	sent, valid := m["synguard_synack_sent_total"], m["synguard_cookie_valid_total"]
	t.Logf("gw-b: %.0f SYN-ACKs sent, %.0f cookies valid, %.0f flows handed off", sent, valid, m["synguard_flows_handed_off_total"])
	// gw-b validated the cookies of the held handshakes, which gw-a made.
	if valid < sent+pending/2 {
		t.Errorf("gw-b validated %.0f cookies and sent %.0f SYN-ACKs: it completed fewer than %d of the %d handshakes gw-a answered",
			valid, sent, pending/2, pending)
	}
}

// A preempting failback moves the flows established on the survivor back
// to the returning gateway without breaking them: gw-a boots with an
// empty table, asks gw-b for its table (primary-backup.sh backup), holds
// the download's entry before it takes the VIPs back, and the download
// and short connections across the move all succeed.
func TestHAFailback(t *testing.T) {
	h := newHA(t, false)
	if err := h.Kill(context.Background(), lab.NodeA); err != nil {
		t.Fatal(err)
	}
	waitMaster(t, h, lab.NodeB, haTakeover)

	d := &lab.PacedDownload{Size: 64 << 20, Rate: 3 << 20, Stall: 30 * time.Second}
	done := startDownload(h, d)
	client := waitFlowed(t, d, 1<<20, done)
	if _, ok := entryOn(t, h, lab.NodeB, client, h.Service); !ok {
		t.Fatal("gw-b has no entry for the download it carries")
	}
	tally := &lab.ConnTally{}
	connsDone := make(chan struct{})
	go func() {
		defer close(connsDone)
		lab.RunConns(context.Background(), h.Client, h.Service, 100, 2000, 15*time.Second, tally)
	}()

	bootAt := time.Now()
	if err := h.Boot(context.Background(), lab.NodeA); err != nil {
		t.Fatal(err)
	}
	// The copy must be on gw-a before gw-a holds a VIP.
	var synced bool
	poll.Must(t, haPreemption, "gw-a holding both VIPs again", func() bool {
		c, b, err := h.VIPs(context.Background(), lab.NodeA)
		if err != nil {
			t.Fatal(err)
		}
		if !synced {
			_, synced = entryOn(t, h, lab.NodeA, client, h.Service)
			if !synced && (c || b) {
				t.Fatalf("gw-a took a VIP back before it had the download's entry")
			}
		}
		return c && b
	})
	took := time.Since(bootAt)
	atTakeover := d.Received()
	if err := waitDownload(t, d, done, 2*time.Minute); err != nil {
		t.Fatalf("the download broke across the failback (%d of %d bytes when gw-a took over): %v", atTakeover, d.Size, err)
	}
	if atTakeover >= d.Size {
		t.Fatal("the download had finished before gw-a took over: nothing was tested")
	}
	select {
	case <-connsDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("connections still running after 2 minutes")
	}
	ok, failed := tally.Totals()
	t.Logf("gw-a held both VIPs %v after booting; download longest stall %v; %d of %d connections failed: %v",
		took.Round(10*time.Millisecond), d.LongestStall().Round(10*time.Millisecond), failed, ok+failed, tally.Errors())
	if failed*100 > ok+failed {
		t.Errorf("%d of %d connections across the failback failed, more than 1%%", failed, ok+failed)
	}
	if n := handoffEntries(t, h, lab.NodeA); n < 1 {
		t.Errorf("gw-a: synguard_handoff_entries = %d after the failback", n)
	}
}

// The control: without conntrackd the standby has no entry for the
// download, and after the master dies the download stalls and fails,
// although the standby serves new connections. It shows the other tests
// can fail.
func TestHAWithoutConntrackdDownloadBreaks(t *testing.T) {
	h := newHA(t, true)
	d := &lab.PacedDownload{Size: 48 << 20, Rate: 6 << 20, Stall: 10 * time.Second}
	done := startDownload(h, d)
	client := waitFlowed(t, d, 6<<20, done)
	if !poll.Stays(time.Second, func() bool {
		_, ok := entryOn(t, h, lab.NodeB, client, h.Service)
		return !ok
	}) {
		t.Fatal("gw-b has an entry for the download without conntrackd")
	}
	if n := handoffEntries(t, h, lab.NodeB); n != 0 {
		t.Errorf("gw-b: synguard_handoff_entries = %d without conntrackd, want 0", n)
	}
	if err := h.Kill(context.Background(), lab.NodeA); err != nil {
		t.Fatal(err)
	}
	atKill := d.Received()
	waitMaster(t, h, lab.NodeB, haTakeover)
	err := waitDownload(t, d, done, 2*time.Minute)
	if err == nil {
		t.Fatal("the download survived its gateway's death without conntrackd")
	}
	t.Logf("the download broke after %d of %d MiB (%d at the kill): %v", d.Received()>>20, d.Size>>20, atKill>>20, err)
	if r := lab.Probe(context.Background(), h.Client, h.Service, 15*time.Second); !r.OK {
		t.Errorf("a new connection through gw-b failed: %v", r.Err)
	}
}

// TestHADemo runs `synguard lab ha demo` as a user would: a line a second
// with the VIP holder and both gateways' entry counts, gw-a dead after
// the kill, a passing verdict, and nothing left behind.
func TestHADemo(t *testing.T) {
	requireHATools(t)
	name := fmt.Sprintf("sgh%d-%d", os.Getpid()%100000, haSeq.Add(1))
	t.Cleanup(func() {
		if err := lab.HADown(context.Background(), name); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "lab", "ha", "demo", "--name", name,
		"--size", "48", "--rate", "8", "--conns", "20", "--kill-after", "2s").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"gw-a killed", "gw-b holds both VIPs", "48.0 MiB intact", "verdict: PASS"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	var before bool
	var last []string
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasSuffix(f[0], "s") || f[0] == "t" {
			continue
		}
		if f[1] == "gw-a" && f[2] != "dead" && f[3] != "-" {
			before = true
		}
		last = f
	}
	// The last line is the state the download ended in, however soon
	// after the take-over that was.
	if !before || last == nil || last[1] != "gw-b" || last[2] != "dead" {
		t.Errorf("want a line with gw-a holding the VIPs (%v) and a last line with gw-b holding them and gw-a dead (%q):\n%s", before, last, text)
	}
	for _, ns := range lab.HANamespaceNames(name) {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("the demo left namespace %s", ns)
		}
	}
}
