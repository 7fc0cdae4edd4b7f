package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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

	// One real connection, so there is a hand-off to time.
	download(t, topo.Client, service, 64<<10, nil)
	if n := g.metric("synguard_backend_handshake_seconds_count"); n != 1 {
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
	g.waitStats(t, "a sample with the flood in its rates", func(s telemetry.ServiceView) bool {
		return s.Rates.SYN > quiet.synRate && s.Rates.SYNACK > 0
	})
	first := dashboard(t, browser, topo.Gateway, service)
	g.waitStats(t, "a sample after the first look's", func(s telemetry.ServiceView) bool {
		return int64(s.Totals[telemetry.CounterSYNReceived]) > first.synTotal
	})
	second := dashboard(t, browser, topo.Gateway, service)
	if looked := time.Since(start); looked > 18*time.Second {
		t.Fatalf("the two looks took until %v into a 20 s flood: too slow to tell", looked)
	}
	screenshot(t, browser, topo.Gateway)
	t.Logf("before the flood: %+v; during it: %+v, then %+v", quiet, first, second)
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
	entries             string // conntrack entries with the hand-off mark, as shown
}

var (
	cardRe  = regexp.MustCompile(`(?s)<article class="card" data-service="([^"]+)">(.*?)</article>`)
	fieldRe = regexp.MustCompile(`data-field="([a-z_]+)"[^>]*>([^<]*)<`)
	totalRe = regexp.MustCompile(`data-total="([a-z_]+)"[^>]*>([0-9,]+) total<`)
	lineRe  = regexp.MustCompile(`<polyline points="([^"]*)" class="line syn"`)
	entryRe = regexp.MustCompile(`id="handoff-entries"[^>]*>([^<]*)<`)
)

// dashboard loads the page in Chromium and reads the service's card from
// the rendered DOM, as text a person would read.
func dashboard(t *testing.T, browser string, ns *netns.NS, service netip.AddrPort) pageView {
	t.Helper()
	dom := runChromium(t, browser, ns, "--dump-dom", "http://"+metricsAddr+"/")
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
	var v pageView
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
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+telemetry.PathStats, nil)
	resp, err := httpClient(g.ns).Do(req)
	if err != nil {
		t.Fatalf("api/stats: %v", err)
	}
	defer resp.Body.Close()
	var v telemetry.StatsView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
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
