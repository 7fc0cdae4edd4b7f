package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/telemetry"
)

// TestOperatorView runs a gateway in cookie mode through a hand-off and a
// bounded spoofed flood, and checks what an operator sees: the live
// dashboard, rendered by a real headless Chromium inside the gateway's
// namespace, shows the protected service and numbers that move with the
// flood; the metrics carry the handshake histogram; and every log line is
// a JSON event with time, level and event, with periodic stats lines.
func TestOperatorView(t *testing.T) {
	browser := requireChromium(t)
	topo := newLab(t, lab.Config{})
	service := netip.AddrPortFrom(topo.BackendAddr, 80)
	serve(t, topo.Backend, service)
	g := startGateway(t, topo.Gateway, "--protect", service.String(), "--mode", "always", "--stats-interval", "1s")

	// One real connection, so there is a hand-off to time (which the
	// engine hears of up to 5 ms after the handshake, where the tc
	// programs complete it). The client reads nothing more until the
	// flow's entry exists, so that the flow is still open when the
	// engine comes to make it: a flow over sooner gets none.
	var waited bool
	download(t, topo.Client, service, 4<<20, func(int64) {
		if !waited {
			waited = true
			if !poll.Until(5*time.Second, func() bool { return len(handedOff(t, topo.Gateway)) == 1 }) {
				t.Errorf("the flow's entry never came")
			}
		}
	})
	var n float64
	if !poll.Until(5*time.Second, func() bool {
		n = g.metric("synguard_backend_handshake_seconds_count")
		return n >= 1
	}) || n != 1 {
		t.Fatalf("handshake histogram counted %v flows, want 1", n)
	}

	// The page shows the last one-second sample: wait for it to include
	// the hand-off.
	var api telemetry.StatsView
	if !poll.Until(5*time.Second, func() bool {
		api = g.apiStats(t)
		return api.Services[0].Totals[telemetry.CounterHandedOff] >= 1
	}) {
		t.Fatalf("api/stats never showed the hand-off: %+v", api.Services[0])
	}
	quiet := dashboard(t, browser, topo.Gateway, service)
	if quiet.mode == "" || quiet.mode != api.Services[0].Mode {
		t.Fatalf("page shows mode %q, the API says %q", quiet.mode, api.Services[0].Mode)
	}
	if quiet.handoffs != 1 {
		t.Fatalf("page shows %d hand-offs in all, want 1", quiet.handoffs)
	}
	// The flow's entry keeps the hand-off mark through TIME_WAIT.
	if n := g.metric("synguard_handoff_entries"); n != 1 || quiet.entries != "1" {
		t.Fatalf("hand-off entries: %v in the metrics, %q on the page; want 1", n, quiet.entries)
	}

	// 3,000 SYN/s for 20 s: long enough that both looks (a browser start
	// each, seconds on a loaded machine) fall well inside the flood. The
	// page shows the last one-second sample: each look waits for the API
	// to serve a sample it can tell apart, the first one of the flood
	// (SYNs and SYN-ACKs per second above the quiet page's), the second a
	// later one (a larger SYN total than the first look showed).
	start := time.Now()
	wait := flood(t, topo.Client, service, 3000, 60000, 20*time.Second)
	// The SYN total tells a sample taken since the flood began: the
	// quiet page's rate is rounded for display, and the quiet sample's
	// own rate may lie above it.
	g.waitStats(t, "a sample with the flood in its rates", func(s telemetry.ServiceView) bool {
		return int64(s.Totals[telemetry.CounterSYNReceived]) > quiet.synTotal && s.Rates.SYN > quiet.synRate && s.Rates.SYNACK > 0
	})
	first := dashboard(t, browser, topo.Gateway, service)
	g.waitStats(t, "a sample after the first look's", func(s telemetry.ServiceView) bool {
		return int64(s.Totals[telemetry.CounterSYNReceived]) > first.synTotal
	})
	// The flood is past --syn-rate-high: the attack has started, and the
	// page's latest events say so.
	if !poll.Until(10*time.Second, func() bool { return hasEvent(g.apiStats(t), telemetry.EventAttackStart) }) {
		t.Fatalf("api/stats never listed an attack_start event: %s", g.apiStats(t).Events)
	}
	second := dashboard(t, browser, topo.Gateway, service)
	if looked := time.Since(start); looked > 18*time.Second {
		t.Fatalf("the two looks took until %v into a 20 s flood: too slow to tell", looked)
	}
	status := g.status(t) // milliseconds: still inside the flood
	screenshot(t, browser, topo.Gateway)
	t.Logf("before the flood: %v; during it: %v, then %v", quiet, first, second)
	if first.synRate <= quiet.synRate || second.synRate <= quiet.synRate {
		t.Fatalf("SYN/s on the page did not rise with the flood: %v before, %v and %v during", quiet.synRate, first.synRate, second.synRate)
	}
	if first.synackRate == 0 {
		t.Fatalf("SYN-ACK/s on the page stayed 0 in cookie mode under a flood")
	}
	// The lab's links are veth: the XDP fast path runs (generic) and
	// answers the flood; the page says so.
	if share, ok := strings.CutPrefix(first.path, "XDP "); !ok || number(t, strings.TrimSuffix(strings.Fields(share)[0], "%")) < 90 {
		t.Fatalf("the page says the SYN-ACKs came %q; want nearly all from XDP", first.path)
	}
	if !(quiet.synTotal < first.synTotal && first.synTotal < second.synTotal) {
		t.Fatalf("SYN totals on the page did not grow during the flood: %d, %d, %d", quiet.synTotal, first.synTotal, second.synTotal)
	}
	if first.points == 0 || second.points == 0 {
		t.Fatalf("charts have no points: %d, %d", first.points, second.points)
	}
	if f := forensicsOf(t, second.dom, service); !slices.Contains(f.events, telemetry.EventAttackStart) || f.backend == "" {
		t.Fatalf("the page during the flood shows events %v, backend %q", f.events, f.backend)
	}
	// synguard status during the flood: the service's line, in cookie
	// mode, SYNs and SYN-ACKs per second, and the XDP path's actions.
	t.Logf("synguard status during the flood:\n%s", status)
	line, ok := statusServices(t, status)[service.String()]
	if !ok || line.mode != second.mode || line.syn < 1000 || line.synack < 1000 || !strings.Contains(status, "\nXDP: ") {
		t.Fatalf("synguard status during a 3,000 SYN/s flood: %+v (found %v)\n%s", line, ok, status)
	}
	wait()

	g.stop()
	checkEvents(t, g.log.String(), service)
}

// requireChromium finds the browser; without one the test fails in CI and
// is skipped elsewhere, like the root requirement.
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

// runChromium runs headless Chromium inside ns with a throwaway profile
// and returns its standard output. Its whole process group dies with it.
func runChromium(t *testing.T, browser string, ns *netns.NS, args ...string) string {
	t.Helper()
	profile, err := os.MkdirTemp("", "synguard-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(profile)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--no-first-run", "--mute-audio",
		"--user-data-dir=" + profile,
		// Virtual time runs the page's timers at once; two seconds of it
		// covers the first poll of api/stats and its rendering.
		"--virtual-time-budget=2000",
	}
	cmd := ns.Command(ctx, browser, append(base, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// pageView is what the dashboard showed for one service.
type pageView struct {
	mode                string
	synRate, synackRate float64
	synTotal, handoffs  int64
	path                string // which path sent the SYN-ACKs: "XDP 98% · queue 2%"
	points              int    // points of the SYN chart's line
	dom                 string // the whole page, as rendered
	entries             string // conntrack entries with the hand-off mark, as shown
}

var (
	cardRe  = regexp.MustCompile(`(?s)<article class="card" data-service="([^"]+)">(.*?)</article>`)
	fieldRe = regexp.MustCompile(`data-field="([a-z_]+)"[^>]*>([^<]*)<`)
	totalRe = regexp.MustCompile(`data-total="([a-z_]+)"[^>]*>([0-9,]+) total<`)
	lineRe  = regexp.MustCompile(`<polyline points="([^"]*)" class="line syn"`)
	entryRe = regexp.MustCompile(`id="handoff-entries"[^>]*>([^<]*)<`)
)

// String leaves the page out.
func (v pageView) String() string {
	v.dom = fmt.Sprintf("(%d bytes)", len(v.dom))
	type plain pageView
	return fmt.Sprintf("%+v", plain(v))
}

// dashboard loads the page in Chromium and reads the service's card from
// the rendered DOM, as text a person would read.
func dashboard(t *testing.T, browser string, ns *netns.NS, service netip.AddrPort) pageView {
	t.Helper()
	dom := runChromium(t, browser, ns, "--dump-dom", "http://"+metricsAddr+"/")
	v := pageView{dom: dom}
	var card string
	for _, m := range cardRe.FindAllStringSubmatch(dom, -1) {
		if m[1] == service.String() {
			card = m[2]
		}
	}
	if card == "" {
		t.Fatalf("the page shows no card for %s:\n%s", service, dom)
	}
	if !strings.Contains(card, ">"+service.String()+"<") {
		t.Fatalf("the card does not name %s", service)
	}
	fields := map[string]string{}
	for _, m := range fieldRe.FindAllStringSubmatch(card, -1) {
		fields[m[1]] = m[2]
	}
	v.mode = fields["mode"]
	v.synRate = number(t, fields["syn"])
	v.synackRate = number(t, fields["synack"])
	v.path = fields["synack_path"]
	for _, m := range totalRe.FindAllStringSubmatch(card, -1) {
		switch m[1] {
		case telemetry.CounterSYNReceived:
			v.synTotal = int64(number(t, m[2]))
		case telemetry.CounterHandedOff:
			v.handoffs = int64(number(t, m[2]))
		}
	}
	if m := lineRe.FindStringSubmatch(card); m != nil {
		v.points = len(strings.Fields(m[1]))
	}
	if m := entryRe.FindStringSubmatch(dom); m != nil {
		v.entries = m[1]
	}
	return v
}

// number parses a figure as the page prints it ("19,950", "2.5").
func number(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(strings.ReplaceAll(strings.TrimSpace(s), ",", ""), 64)
	if err != nil {
		t.Fatalf("the page shows %q where a number belongs", s)
	}
	return f
}

// screenshot renders the page to a PNG and checks it is a real picture;
// set SYNGUARD_SCREENSHOT to a path to keep it.
func screenshot(t *testing.T, browser string, ns *netns.NS) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "dashboard.png")
	runChromium(t, browser, ns, "--hide-scrollbars", "--window-size=1280,800", "--screenshot="+path, "http://"+metricsAddr+"/")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if colours := distinctColours(img, 64); colours < 16 {
		t.Fatalf("screenshot has %d distinct colours: the page did not render", colours)
	}
	if keep := os.Getenv("SYNGUARD_SCREENSHOT"); keep != "" {
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Errorf("keep screenshot: %v", err)
		}
	}
}

// distinctColours counts colours in img, stopping at limit.
func distinctColours(img image.Image, limit int) int {
	seen := map[[4]uint32]bool{}
	r := img.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y += 3 {
		for x := r.Min.X; x < r.Max.X; x += 3 {
			cr, cg, cb, ca := img.At(x, y).RGBA()
			seen[[4]uint32{cr, cg, cb, ca}] = true
			if len(seen) >= limit {
				return len(seen)
			}
		}
	}
	return len(seen)
}

// apiStats reads the dashboard's JSON from inside the gateway namespace.
func (g *gateway) apiStats(t *testing.T) telemetry.StatsView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v, err := telemetry.FetchStats(ctx, httpClient(g.ns), metricsAddr)
	if err != nil {
		t.Fatalf("api/stats: %v", err)
	}
	if len(v.Services) == 0 {
		t.Fatal("api/stats lists no service")
	}
	return v
}

// waitStats polls api/stats until its first service satisfies cond.
func (g *gateway) waitStats(t *testing.T, what string, cond func(telemetry.ServiceView) bool) {
	t.Helper()
	var last telemetry.ServiceView
	if !poll.Until(10*time.Second, func() bool {
		last = g.apiStats(t).Services[0]
		return cond(last)
	}) {
		t.Fatalf("api/stats never served %s; last: %+v", what, last)
	}
}

// checkEvents checks the gateway's whole log: every line a JSON object
// with time, level and event; the lifecycle events in order; stats lines
// for the service that saw the flood.
func checkEvents(t *testing.T, log string, service netip.AddrPort) {
	t.Helper()
	var order []string
	var peak float64
	dec := json.NewDecoder(strings.NewReader(log))
	for {
		var line map[string]any
		err := dec.Decode(&line)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("log is not JSON lines: %v\n%s", err, log)
		}
		for _, k := range []string{"time", "level", telemetry.FieldEvent} {
			if s, ok := line[k].(string); !ok || s == "" {
				t.Fatalf("log line without %q: %v", k, line)
			}
		}
		ev := line[telemetry.FieldEvent].(string)
		if len(order) == 0 || order[len(order)-1] != ev {
			order = append(order, ev)
		}
		if ev == telemetry.EventStats {
			if line["service"] != service.String() {
				t.Fatalf("stats line for %v, want %s", line["service"], service)
			}
			if r, _ := line["syn_rate"].(float64); r > peak {
				peak = r
			}
		}
	}
	// stop is logged as the stop begins; the rules come down next.
	want := []string{telemetry.EventRulesInstalled, telemetry.EventStart, telemetry.EventStats, telemetry.EventStop, telemetry.EventRulesRemoved}
	at := 0
	for _, ev := range order {
		if at < len(want) && ev == want[at] {
			at++
		}
	}
	if at != len(want) {
		t.Fatalf("events in order %v; want %v among them, in that order", order, want)
	}
	if peak < 1000 {
		t.Fatalf("stats lines show at most %v SYN/s during a 3,000 SYN/s flood", peak)
	}
}

// status runs `synguard status` against the gateway, from inside its
// namespace, and returns what it printed.
func (g *gateway) status(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := g.ns.Command(ctx, binary, append([]string{"status", "--metrics", metricsAddr}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("synguard status: %v\n%s", err, stderr.String())
	}
	return stdout.String()
}

// statusLine is one service's line in `synguard status`.
type statusLine struct {
	mode                                         string
	halfOpen, syn, synack, valid, invalid, hando float64
	backend                                      string // "up", "DOWN 12s: resets", "?"
}

var statusColumns = regexp.MustCompile(`\s{2,}`)

// statusServices reads the service table of `synguard status`, by
// service.
func statusServices(t *testing.T, out string) map[string]statusLine {
	t.Helper()
	lines := map[string]statusLine{}
	in := false
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "SERVICE "):
			in = true
			continue
		case line == "":
			in = false
		}
		if !in {
			continue
		}
		f := statusColumns.Split(strings.TrimSpace(line), -1)
		if len(f) != 9 {
			t.Fatalf("status line %q: %d columns, want 9", line, len(f))
		}
		lines[f[0]] = statusLine{
			mode: f[1], halfOpen: number(t, f[2]), syn: number(t, f[3]), synack: number(t, f[4]),
			valid: number(t, f[5]), invalid: number(t, f[6]), hando: number(t, f[7]), backend: f[8],
		}
	}
	return lines
}

// statusAttack reads the attack on service from `synguard status`: its
// top source prefixes, heaviest first, and the spread's hint; ok is false
// when it shows no attack on the service.
func statusAttack(out string, service string) (prefixes []string, hint string, ok bool) {
	in := false
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "ATTACK on "+service+" "):
			in, ok = true, true
		case !strings.HasPrefix(line, "  "):
			in = false
		case in && strings.HasPrefix(line, "  spread "):
			_, hint, _ = strings.Cut(line, ": ")
		case in && !strings.HasPrefix(line, "  PREFIX") && !strings.HasPrefix(line, "  peak "):
			if f := strings.Fields(line); len(f) == 3 {
				prefixes = append(prefixes, f[0])
			}
		}
	}
	return prefixes, hint, ok
}

// forensics is what the dashboard shows of a service's attack and
// backend.
type forensics struct {
	attack   bool     // an attack in progress is shown
	prefixes []string // its top source prefixes, heaviest first
	hint     string   // what their spread suggests
	backend  string   // up, down or unknown
	detail   string   // why, and since when
	why      string   // why hand-offs fail, when they do
	history  int      // attacks listed as ended
	events   []string // the latest events' names, newest first
}

// dashboardForensics loads the page in Chromium inside ns and reads the
// service's attack, backend and history, and the latest events, from the
// rendered DOM.
func dashboardForensics(t *testing.T, browser string, ns *netns.NS, service netip.AddrPort) forensics {
	t.Helper()
	return forensicsOf(t, runChromium(t, browser, ns, "--dump-dom", "http://"+metricsAddr+"/"), service)
}

// forensicsOf reads the service's forensics from a rendered page.
func forensicsOf(t *testing.T, dom string, service netip.AddrPort) forensics {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(dom))
	if err != nil {
		t.Fatalf("the page's DOM: %v", err)
	}
	var card *html.Node
	for n := range doc.Descendants() {
		if n.Type == html.ElementNode && n.Data == "article" && htmlAttr(n, "data-service") == service.String() {
			card = n
		}
	}
	if card == nil {
		t.Fatalf("the page shows no card for %s", service)
	}
	var f forensics
	for n := range card.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		switch {
		case htmlAttr(n, "class") == "attack":
			f.attack = !slices.ContainsFunc(n.Attr, func(a html.Attribute) bool { return a.Key == "hidden" })
		case htmlAttr(n, "data-prefix") != "":
			f.prefixes = append(f.prefixes, htmlAttr(n, "data-prefix"))
		case htmlAttr(n, "data-attack") == "hint":
			f.hint = htmlText(n)
		case htmlAttr(n, "data-backend") == "state":
			f.backend = htmlAttr(n, "data-state")
		case htmlAttr(n, "data-backend") == "detail":
			f.detail = htmlText(n)
		case htmlAttr(n, "data-backend") == "why":
			f.why = htmlText(n)
		case n.Data == "tr" && n.Parent != nil && n.Parent.Data == "tbody" && n.Parent.Parent != nil && htmlAttr(n.Parent.Parent, "class") == "attacks":
			f.history++
		}
	}
	for n := range doc.Descendants() {
		if n.Type == html.ElementNode && n.Data == "tr" && htmlAttr(n, "data-event") != "" {
			f.events = append(f.events, htmlAttr(n, "data-event"))
		}
	}
	return f
}

func htmlAttr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// htmlText is n's text as shown, whitespace collapsed.
func htmlText(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data + " ")
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// hasEvent reports whether the document's latest events include one
// named ev.
func hasEvent(v telemetry.StatsView, ev string) bool {
	for _, e := range v.Events {
		var m struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(e, &m) == nil && m.Event == ev {
			return true
		}
	}
	return false
}

// The parsers of `synguard status` read its golden output: the services'
// lines, the attack's prefixes and hint.
func TestStatusParsers(t *testing.T) {
	b, err := os.ReadFile("../cmd/synguard/testdata/status_incident.golden")
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	lines := statusServices(t, out)
	if l := lines["203.0.113.10:80"]; len(lines) != 3 || l.mode != "cookie" || l.syn != 15056 || l.invalid != 3.5 || l.backend != "DOWN 1m15s: resets" {
		t.Fatalf("service lines %+v", lines)
	}
	prefixes, hint, ok := statusAttack(out, "203.0.113.10:80")
	if !ok || strings.Join(prefixes, " ") != "198.18.7.0/24 198.51.100.0/24" || hint != telemetry.HintConcentrated {
		t.Fatalf("attack: %v %q %v", prefixes, hint, ok)
	}
	if prefixes, _, ok := statusAttack(out, "[2001:db8::10]:443"); !ok || len(prefixes) != 0 {
		t.Fatalf("attack without sources: %v %v", prefixes, ok)
	}
	if _, _, ok := statusAttack(out, "192.0.2.25:25"); ok {
		t.Fatal("an attack read on a quiet service")
	}
}
