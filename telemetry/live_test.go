package telemetry

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/syncbuf"
)

func newTestTelemetry(src *fakeSource, clk *fakeClock, log zerolog.Logger, lim *LineLimiter) *Telemetry {
	hs := NewHistograms(len(src.services))
	return New(Config{
		Source:        src,
		Collector:     CollectorConfig{Counters: testCounters, Modes: []string{"cookie", "passthrough", "off"}, Handshake: hs, Log: lim},
		Logger:        log,
		StatsInterval: 10 * time.Second,
		Now:           clk.Now,
	})
}

// The JSON the dashboard polls: its keys are the page's contract.
func TestStatsJSONShape(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	tel := newTestTelemetry(src, clk, zerolog.Nop(), NewLineLimiter(io.Discard, LimitConfig{}))
	tel.sampleLive()
	clk.Advance(time.Second)
	tel.sampleLive()

	resp, body := scrape(t, tel.Handler(), "/api/stats")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/stats: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		slices.Sort(k)
		return k
	}
	if diff := cmp.Diff([]string{"log_suppressed", "queues", "sample_seconds", "services", "time", "uptime_seconds"}, keys(doc)); diff != "" {
		t.Fatalf("top-level keys (-want +got):\n%s", diff)
	}
	svcs := doc["services"].([]any)
	if len(svcs) != 2 {
		t.Fatalf("%d services, want 2", len(svcs))
	}
	s0 := svcs[0].(map[string]any)
	if diff := cmp.Diff([]string{"half_open", "handshake_ms", "history", "mode", "pending", "rates", "service", "totals"}, keys(s0)); diff != "" {
		t.Fatalf("service keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cookie_invalid", "cookie_valid", "handed_off", "syn", "synack", "xdp_synack"}, keys(s0["rates"].(map[string]any))); diff != "" {
		t.Fatalf("rate keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cookie_invalid", "cookie_valid", "half_open", "handed_off", "syn", "synack", "t"}, keys(s0["history"].(map[string]any))); diff != "" {
		t.Fatalf("history keys (-want +got):\n%s", diff)
	}
	q0 := doc["queues"].([]any)[0].(map[string]any)
	if diff := cmp.Diff([]string{"enobufs", "kernel_drops", "queue", "received", "received_rate"}, keys(q0)); diff != "" {
		t.Fatalf("queue keys (-want +got):\n%s", diff)
	}
	if s0["service"] != "203.0.113.10:80" || s0["mode"] != "cookie" || s0["handshake_ms"] != nil {
		t.Fatalf("service 0: %v", s0)
	}
	if got := s0["totals"].(map[string]any)[CounterSYNReceived]; got != 1000.0 {
		t.Fatalf("totals.syn_received = %v, want 1000", got)
	}
}

// Rates are growth over the sample's real elapsed time; history holds one
// point per sample, at most historyLen.
func TestStatsRatesAndHistory(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	tel := newTestTelemetry(src, clk, zerolog.Nop(), nil)
	tel.sampleLive() // baseline: no point yet

	src.add(0, CounterSYNReceived, 500)
	src.add(0, CounterSYNACKSent, 490)
	src.add(0, CounterCookieValid, 4)
	src.add(0, CounterCookieInvalid, 6)
	src.add(0, CounterHandedOff, 2)
	src.set(func(f *fakeSource) { f.services[1].HalfOpen = 30; f.queues[0].Received += 1000 })
	tel.handshake.Observe(0, 2*time.Millisecond)
	tel.handshake.Observe(0, 4*time.Millisecond)
	clk.Advance(500 * time.Millisecond) // a late tick: rates use the real gap
	tel.sampleLive()

	v := tel.Stats()
	want := Rates{SYN: 1000, SYNACK: 980, CookieValid: 8, CookieInvalid: 12, HandedOff: 4}
	if diff := cmp.Diff(want, v.Services[0].Rates); diff != "" {
		t.Fatalf("rates (-want +got):\n%s", diff)
	}
	if v.Services[0].HandshakeMS == nil || *v.Services[0].HandshakeMS != 3 {
		t.Fatalf("handshake_ms = %v, want 3", v.Services[0].HandshakeMS)
	}
	if v.Services[1].HalfOpen != 30 || v.Services[1].History.HalfOpen[0] != 30 {
		t.Fatalf("half-open %d, history %v", v.Services[1].HalfOpen, v.Services[1].History.HalfOpen)
	}
	if v.Queues[0].ReceivedRate != 2000 {
		t.Fatalf("queue rate %v, want 2000", v.Queues[0].ReceivedRate)
	}
	clk.Advance(time.Second)
	tel.sampleLive() // a second without hand-offs keeps the last mean
	if ms := tel.Stats().Services[0].HandshakeMS; ms == nil || *ms != 3 {
		t.Fatalf("handshake_ms after a quiet second = %v, want 3 still", ms)
	}
	if n := len(v.Services[0].History.SYN); n != 1 || v.Services[0].History.SYN[0] != 1000 {
		t.Fatalf("history after one interval: %v", v.Services[0].History.SYN)
	}
	if v.UptimeSeconds != 0.5 {
		t.Fatalf("uptime %v, want 0.5", v.UptimeSeconds)
	}

	for i := range historyLen + 30 {
		src.add(0, CounterSYNReceived, uint64(i))
		clk.Advance(time.Second)
		tel.sampleLive()
	}
	h := tel.Stats().Services[0].History
	if len(h.Time) != historyLen || len(h.SYN) != historyLen || len(h.HalfOpen) != historyLen {
		t.Fatalf("history lengths t=%d syn=%d half_open=%d, want %d", len(h.Time), len(h.SYN), len(h.HalfOpen), historyLen)
	}
	if last := h.SYN[historyLen-1]; last != historyLen+29 {
		t.Fatalf("newest point %v, want %d", last, historyLen+29)
	}
	if h.Time[0] >= h.Time[historyLen-1] {
		t.Fatal("history not oldest first")
	}
}

// The page and its assets are served from the binary, reference nothing
// outside it, and forbid the browser from loading anything else.
func TestDashboardSelfContained(t *testing.T) {
	tel := newTestTelemetry(newFakeSource(), newFakeClock(), zerolog.Nop(), nil)
	h := tel.Handler()
	resp, page := scrape(t, h, "/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Fatalf("CSP %q", csp)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 3 {
		t.Fatalf("page references %d assets: %v", len(refs), refs)
	}
	for _, r := range refs {
		ref := r[1]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if strings.Contains(ref, "//") {
			t.Errorf("page references %q outside the gateway", ref)
			continue
		}
		if resp, _ := scrape(t, h, "/"+ref); resp.StatusCode != http.StatusOK {
			t.Errorf("GET /%s: %s", ref, resp.Status)
		}
	}
	for _, asset := range []string{"/dashboard/app.js", "/dashboard/style.css"} {
		_, body := scrape(t, h, asset)
		for _, bad := range []string{"https://", "url(http", `fetch("http`, "import "} {
			if strings.Contains(body, bad) {
				t.Errorf("%s contains %q: it must load nothing from elsewhere", asset, bad)
			}
		}
	}
	if resp, _ := scrape(t, h, "/nonexistent"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nonexistent: %s, want 404", resp.Status)
	}
}

// Run samples and reports while scrapes and page polls arrive: nothing
// races (run with -race), every scrape is served, and Run stops with its
// context.
func TestRunConcurrentWithScrapes(t *testing.T) {
	src := newFakeSource()
	out := &syncbuf.Buffer{}
	log, lim := NewLogger(out, FormatJSON, zerolog.InfoLevel, LimitConfig{})
	tel := New(Config{
		Source:        src,
		Collector:     CollectorConfig{Counters: testCounters, Handshake: NewHistograms(2), Log: lim},
		Logger:        log,
		StatsInterval: 20 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tel.Run(ctx); close(done) }()
	h := tel.Handler()
	// The source moves and both pages are read, round after round, until
	// Run has written a stats line: its sampling and reporting ran in
	// the midst of the scrapes.
	rounds := 0
	if !poll.Until(5*time.Second, func() bool {
		src.add(rounds%2, CounterSYNReceived, 10)
		tel.handshake.Observe(rounds%2, time.Millisecond)
		for _, path := range []string{"/metrics", "/api/stats"} {
			if resp, _ := scrape(t, h, path); resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s", path, resp.Status)
			}
		}
		rounds++
		return strings.Contains(out.String(), `"event":"stats"`)
	}) {
		t.Fatalf("no stats line in 5 s (%d rounds of scrapes) at a 20 ms interval:\n%s", rounds, out.String())
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop with its context")
	}
}
