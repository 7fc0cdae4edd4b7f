package telemetry

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/html"
)

// TestDashboardIncidentInBrowser serves the dashboard from a source in
// the midst of an incident and reads the page a real headless Chromium
// renders: the attack with its hot prefix and hint, the dead backend and
// why hand-offs fail, the attack history, the latest events.
func TestDashboardIncidentInBrowser(t *testing.T) {
	browser := requireChromium(t)
	clk := newFakeClock()
	src := newIncidentSource(clk)
	log, lim := NewLogger(&bytes.Buffer{}, FormatJSON, zerolog.InfoLevel, LimitConfig{})
	tel := newTestTelemetry(src, clk, log, lim)
	tel.sampleLive()
	log.Warn().Str(FieldEvent, EventAttackStart).Str("service", src.services[0].Service).Str("reason", "syn_rate").
		Any("top_sources", src.services[0].Attack.TopSources).Msg("attack started")
	src.add(0, CounterSYNReceived, 30000)
	src.add(0, CounterCookieValid, 30)
	src.add(0, CounterBackendReset, 30)
	clk.Advance(time.Second)
	tel.sampleLive()
	srv := httptest.NewServer(tel.Handler())
	defer srv.Close()

	dom := runChromium(t, browser, "--dump-dom", srv.URL+"/")
	cards := findAll(dom, func(n *html.Node) bool {
		return n.Data == "article" && attr(n, "class") == "card" && hasAttr(n, "data-service")
	})
	if len(cards) != 2 {
		t.Fatalf("%d service cards, want 2", len(cards))
	}
	hit, quiet := cards[0], cards[1]
	if got := attr(hit, "data-service"); got != src.services[0].Service {
		t.Fatalf("first card is %q", got)
	}

	// The attack in progress: its sources, heaviest first, and the hint.
	box := first(hit, hasClass("attack"))
	if box == nil || hasAttr(box, "hidden") {
		t.Fatal("no attack shown on the service under attack")
	}
	var rows [][]string
	for _, tr := range findAll(box, func(n *html.Node) bool { return n.Data == "tr" && hasAttr(n, "data-prefix") }) {
		rows = append(rows, cells(tr))
	}
	if len(rows) != 2 || strings.Join(rows[0], " ") != hotPrefix+" 1,009,920 0" || rows[1][0] != realPrefix {
		t.Fatalf("top sources shown: %v", rows)
	}
	if hint := text(first(box, dataIs("data-attack", "hint"))); hint != HintConcentrated {
		t.Errorf("hint %q, want %q", hint, HintConcentrated)
	}
	if sum := text(first(box, dataIs("data-attack", "summary"))); !strings.Contains(sum, "(42s, syn_rate)") || !strings.Contains(sum, "peak 30,112 SYN/s") {
		t.Errorf("attack summary %q", sum)
	}

	// The dead backend, and why validated flows are not handed off.
	st := first(hit, dataIs("data-backend", "state"))
	if attr(st, "data-state") != "down" || text(st) != "down" {
		t.Errorf("backend state %q (%q), want down", text(st), attr(st, "data-state"))
	}
	if d := text(first(hit, dataIs("data-backend", "detail"))); !strings.Contains(d, "resets") || !strings.Contains(d, "down for 13s") {
		t.Errorf("backend detail %q", d)
	}
	if o := text(first(hit, dataIs("data-backend", "options"))); o != "MSS 1460 · window scale 7 · SACK on · learned" {
		t.Errorf("options %q", o)
	}
	reset := first(hit, dataIs("data-failure", "backend_reset"))
	if c := cells(reset); attr(reset, "class") != "warn" || c[1] != "30" || c[2] != "60" {
		t.Errorf("backend reset row %v (class %q), want 30/s, 60 in all, flagged", c, attr(reset, "class"))
	}
	if why := text(first(hit, dataIs("data-backend", "why"))); !strings.Contains(why, "resets the replayed SYNs") {
		t.Errorf("why hand-offs fail: %q", why)
	}

	// The attacks that ended, newest first.
	var history [][]string
	for _, tr := range findAll(first(hit, hasClass("attacks")), func(n *html.Node) bool { return n.Data == "tr" && n.Parent.Data == "tbody" }) {
		history = append(history, cells(tr))
	}
	if len(history) != 2 || history[0][2] != "1m 00s" || history[0][3] != "5,000" || history[0][6] != "203.0.113.0/24 ("+HintSpoofed+")" || history[1][6] != "—" {
		t.Errorf("attack history %v", history)
	}

	// The quiet service: no attack, backend up with fixed options.
	if box := first(quiet, hasClass("attack")); !hasAttr(box, "hidden") {
		t.Error("an attack shown on the quiet service")
	}
	if st := first(quiet, dataIs("data-backend", "state")); attr(st, "data-state") != "up" {
		t.Errorf("quiet service's backend %q", attr(st, "data-state"))
	}
	if o := text(first(quiet, dataIs("data-backend", "options"))); o != "MSS 1440 · window scale none · SACK off · fixed" {
		t.Errorf("quiet options %q", o)
	}
	if e := first(quiet, dataIs("data-history", "empty")); hasAttr(e, "hidden") {
		t.Error("the quiet service's empty history is not said to be empty")
	}

	// The latest events.
	ev := first(dom, dataIs("data-event", EventAttackStart))
	if ev == nil || !strings.Contains(text(ev), hotPrefix) {
		t.Errorf("events table: %q", text(first(dom, func(n *html.Node) bool { return attr(n, "id") == "events" })))
	}
	if x := text(first(dom, func(n *html.Node) bool { return attr(n, "id") == "xdp" })); !strings.Contains(x, "tx 1,000,000") {
		t.Errorf("XDP line %q", x)
	}
	// SYNGUARD_SCREENSHOT=PATH keeps a picture of the page, to look at.
	if keep := os.Getenv("SYNGUARD_SCREENSHOT"); keep != "" {
		runChromium(t, browser, "--hide-scrollbars", "--window-size=1400,1400", "--screenshot="+keep, srv.URL+"/")
	}
}

// requireChromium finds the browser; without one the test fails in CI and
// is skipped elsewhere.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not installed; CI must install it (apt-get install chromium)")
	}
	t.Skip("needs chromium (apt-get install chromium)")
	return ""
}

// runChromium loads the page in headless Chromium with args (--dump-dom,
// or --screenshot), lets it poll and render (virtual time), and returns
// the DOM it ends with, parsed (empty without --dump-dom).
func runChromium(t *testing.T, browser string, args ...string) *html.Node {
	t.Helper()
	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--no-first-run", "--mute-audio",
		"--user-data-dir="+profile, "--virtual-time-budget=2000")
	cmd.Args = append(cmd.Args, args...)
	// Chromium's helpers die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	doc, err := html.Parse(&stdout)
	if err != nil {
		t.Fatalf("parse the DOM: %v", err)
	}
	return doc
}

func attr(n *html.Node, key string) string {
	if n == nil {
		return ""
	}
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func hasAttr(n *html.Node, key string) bool {
	if n == nil {
		return false
	}
	for _, a := range n.Attr {
		if a.Key == key {
			return true
		}
	}
	return false
}

func hasClass(c string) func(*html.Node) bool {
	return func(n *html.Node) bool { return n.Type == html.ElementNode && attr(n, "class") == c }
}

func dataIs(key, val string) func(*html.Node) bool {
	return func(n *html.Node) bool { return n.Type == html.ElementNode && attr(n, key) == val }
}

// findAll returns the elements under n (n included) that match, in
// document order.
func findAll(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	if n == nil {
		return nil
	}
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && match(d) {
			out = append(out, d)
		}
	}
	return out
}

func first(n *html.Node, match func(*html.Node) bool) *html.Node {
	if all := findAll(n, match); len(all) > 0 {
		return all[0]
	}
	return nil
}

// text is n's text as shown, whitespace collapsed.
func text(n *html.Node) string {
	if n == nil {
		return ""
	}
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
			b.WriteByte(' ')
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// cells are a row's cell texts.
func cells(tr *html.Node) []string {
	var out []string
	for _, td := range findAll(tr, func(n *html.Node) bool { return n.Data == "td" }) {
		out = append(out, text(td))
	}
	return out
}
