package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
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
	hs := NewHistograms(len(src.services))
	tel := New(Config{
		Source:    plainSource{src},
		Collector: CollectorConfig{Counters: testCounters, Handshake: hs, Log: NewLineLimiter(io.Discard, LimitConfig{})},
		Now:       clk.Now,
	})
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
	if diff := cmp.Diff([]string{"events", "log_suppressed", "queues", "sample_seconds", "services", "time", "uptime_seconds", "xdp"}, keys(doc)); diff != "" {
		t.Fatalf("top-level keys (-want +got):\n%s", diff)
	}
	svcs := doc["services"].([]any)
	if len(svcs) != 2 {
		t.Fatalf("%d services, want 2", len(svcs))
	}
	s0 := svcs[0].(map[string]any)
	if diff := cmp.Diff([]string{"attack", "attacks", "backend", "half_open", "handshake_ms", "history", "mode", "pending", "rates", "service", "totals"}, keys(s0)); diff != "" {
		t.Fatalf("service keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"backend_reset", "backend_timeout", "cookie_invalid", "cookie_valid", "handed_off", "handoff_failed", "pending_full", "syn", "synack", "xdp_synack"}, keys(s0["rates"].(map[string]any))); diff != "" {
		t.Fatalf("rate keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cookie_invalid", "cookie_valid", "half_open", "handed_off", "syn", "synack", "t"}, keys(s0["history"].(map[string]any))); diff != "" {
		t.Fatalf("history keys (-want +got):\n%s", diff)
	}
	q0 := doc["queues"].([]any)[0].(map[string]any)
	if diff := cmp.Diff([]string{"enobufs", "kernel_drops", "kind", "queue", "received", "received_rate"}, keys(q0)); diff != "" {
		t.Fatalf("queue keys (-want +got):\n%s", diff)
	}
	if q1 := doc["queues"].([]any)[1].(map[string]any); q0["kind"] != QueueSYN || q1["kind"] != QueueCompletion || q1["queue"] != 8.0 {
		t.Fatalf("queues %v, %v: want SYN queue 7 and completion queue 8", q0, q1)
	}
	if s0["service"] != "203.0.113.10:80" || s0["mode"] != "cookie" || s0["handshake_ms"] != nil {
		t.Fatalf("service 0: %v", s0)
	}
	if diff := cmp.Diff([]string{"mss", "options", "reason", "sack", "since", "up", "wscale"}, keys(s0["backend"].(map[string]any))); diff != "" {
		t.Fatalf("backend keys (-want +got):\n%s", diff)
	}
	// A quiet service, a source that reports no attacks, no XDP, nothing
	// logged: empty lists and nulls, never missing keys.
	if s0["attack"] != nil || s0["backend"].(map[string]any)["up"] != nil {
		t.Fatalf("attack %v, backend %v: want null attack and backend state", s0["attack"], s0["backend"])
	}
	if a, ok := s0["attacks"].([]any); !ok || len(a) != 0 {
		t.Fatalf("attacks %v, want []", s0["attacks"])
	}
	if e, ok := doc["events"].([]any); !ok || len(e) != 0 || doc["xdp"] != nil {
		t.Fatalf("events %v, xdp %v: want [] and null", doc["events"], doc["xdp"])
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

// During an incident /api/stats carries, per service, the attack in
// progress with its sources and a hint, the backend's state and options,
// the ended attacks (at most AttackHistory, whatever the source returns);
// at top level the XDP actions and the latest events.
func TestStatsIncident(t *testing.T) {
	clk := newFakeClock()
	src := newIncidentSource(clk)
	svc := src.services[0].Service
	for i := range 30 { // older attacks past the bound
		start := clk.Now().Add(-time.Duration(3+i) * time.Hour)
		src.ended[svc] = append(src.ended[svc], Attack{Started: start, Ended: start.Add(time.Minute), Reason: "syn_rate"})
	}
	log, lim := NewLogger(io.Discard, FormatJSON, zerolog.InfoLevel, LimitConfig{})
	tel := newTestTelemetry(src, clk, log, lim)
	tel.sampleLive()
	log.Warn().Str(FieldEvent, EventAttackStart).Str("service", svc).Msg("attack started")
	log.Info().Str(FieldEvent, EventStats).Str("service", svc).Msg("service statistics")
	src.add(0, CounterBackendReset, 30)
	src.set(func(f *fakeSource) { f.xdp["tx"] += 29000 })
	clk.Advance(time.Second)
	tel.sampleLive()
	if src.asked != AttackHistory {
		t.Errorf("Attacks asked for %d per service, want %d", src.asked, AttackHistory)
	}

	_, body := scrape(t, tel.Handler(), "/api/stats")
	var doc struct {
		Time     time.Time `json:"time"`
		Services []struct {
			Rates   map[string]float64 `json:"rates"`
			Backend map[string]any     `json:"backend"`
			Attack  map[string]any     `json:"attack"`
			Attacks []map[string]any   `json:"attacks"`
		} `json:"services"`
		XDP    []map[string]any `json:"xdp"`
		Events []map[string]any `json:"events"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	now := clk.Now()
	rfc := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339Nano) }
	s0, s1 := doc.Services[0], doc.Services[1]

	wantAttack := map[string]any{
		"started": rfc(-42 * time.Second), "ended": nil, "duration_s": 42.0, "reason": "syn_rate",
		"peak_syn_rate": 30112.4, "syns": 1012345.0, "handed_off": 0.0, "completion_ratio": 0.0004,
		"top_sources": []any{
			map[string]any{"prefix": hotPrefix, "syns": 1009920.0, "completed": 0.0},
			map[string]any{"prefix": realPrefix, "syns": 412.0, "completed": 410.0},
		},
		"spread": 0.002, "top_share": 0.998, "hint": HintConcentrated,
	}
	// The source's clock moved a second since the incident was set up.
	if diff := cmp.Diff(wantAttack, s0.Attack); diff != "" {
		t.Errorf("attack (-want +got):\n%s", diff)
	}
	wantBackend := map[string]any{"up": false, "reason": "resets", "since": rfc(-13 * time.Second), "mss": 1460.0, "wscale": 7.0, "sack": true, "options": "learned"}
	if diff := cmp.Diff(wantBackend, s0.Backend); diff != "" {
		t.Errorf("backend 0 (-want +got):\n%s", diff)
	}
	if s1.Backend["up"] != true || s1.Backend["wscale"] != -1.0 || s1.Backend["options"] != "fixed" || s1.Attack != nil {
		t.Errorf("service 1: backend %v, attack %v", s1.Backend, s1.Attack)
	}
	if s0.Rates[CounterBackendReset] != 30 {
		t.Errorf("backend_reset rate %v, want 30", s0.Rates[CounterBackendReset])
	}

	if len(s0.Attacks) != AttackHistory || len(s1.Attacks) != 0 {
		t.Fatalf("%d and %d ended attacks, want %d and 0", len(s0.Attacks), len(s1.Attacks), AttackHistory)
	}
	first := s0.Attacks[0]
	if first["started"] != rfc(-601*time.Second) || first["ended"] != rfc(-541*time.Second) || first["duration_s"] != 60.0 || first["hint"] != HintSpoofed {
		t.Errorf("newest ended attack: %v", first)
	}
	if second := s0.Attacks[1]; second["hint"] != "" || fmt.Sprint(second["top_sources"]) != "[]" || second["duration_s"] != 90.0 {
		t.Errorf("an attack without sources: %v", second)
	}

	wantXDP := []map[string]any{
		{"action": "drop", "packets": 12.0, "rate": 0.0},
		{"action": "pass", "packets": 3000.0, "rate": 0.0},
		{"action": "tx", "packets": 1029000.0, "rate": 29000.0},
	}
	if diff := cmp.Diff(wantXDP, doc.XDP); diff != "" {
		t.Errorf("xdp (-want +got):\n%s", diff)
	}
	if len(doc.Events) != 1 || doc.Events[0]["event"] != EventAttackStart || doc.Events[0]["service"] != svc {
		t.Errorf("events %v, want the attack_start line alone", doc.Events)
	}
}

// FetchStats reads back what the handler serves; a closed port is
// ErrUnreachable, and something else answering is told apart.
func TestFetchStats(t *testing.T) {
	clk := newFakeClock()
	src := newIncidentSource(clk)
	log, lim := NewLogger(io.Discard, FormatJSON, zerolog.InfoLevel, LimitConfig{})
	tel := newTestTelemetry(src, clk, log, lim)
	log.Error().Str(FieldEvent, EventHandoffFailed).Str("service", "203.0.113.10:80").Msg("conntrack hand-off failed")
	tel.sampleLive()
	clk.Advance(time.Second)
	tel.sampleLive()
	srv := httptest.NewServer(tel.Handler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	got, err := FetchStats(context.Background(), srv.Client(), addr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tel.Stats(), got); diff != "" {
		t.Errorf("fetched stats differ from the served ones (-want +got):\n%s", diff)
	}

	other := httptest.NewServer(http.NotFoundHandler())
	_, err = FetchStats(context.Background(), other.Client(), strings.TrimPrefix(other.URL, "http://"))
	if err == nil || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "404") {
		t.Errorf("a server without /api/stats: %v", err)
	}
	closed := strings.TrimPrefix(other.URL, "http://")
	other.Close()
	if _, err := FetchStats(context.Background(), http.DefaultClient, closed); !errors.Is(err, ErrUnreachable) {
		t.Errorf("a closed port: %v, want ErrUnreachable", err)
	}
	notJSON := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>") }))
	defer notJSON.Close()
	if _, err := FetchStats(context.Background(), notJSON.Client(), strings.TrimPrefix(notJSON.URL, "http://")); err == nil || !strings.Contains(err.Error(), "not synguard's stats") {
		t.Errorf("a page that is not JSON: %v", err)
	}
}

// countingSource counts the readings taken of it: a sample for the
// dashboard or the stats lines reads the queues once.
type countingSource struct {
	*fakeSource
	reads atomic.Int64
}

func (c *countingSource) QueueCounters() []QueueCounters {
	c.reads.Add(1)
	return c.fakeSource.QueueCounters()
}

// With CallerSamples, Run samples once at its start and then leaves the
// samples to the caller; when the caller's samples stop, Run takes over,
// sampleFallback later, once a period.
func TestCallerSamples(t *testing.T) {
	t.Parallel()
	src := &countingSource{fakeSource: newFakeSource()}
	tel := New(Config{Source: src, Collector: CollectorConfig{Counters: testCounters, Handshake: NewHistograms(2)},
		StatsInterval: time.Hour, CallerSamples: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tel.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// The dashboard's first sample and the stats lines' baseline.
	if !poll.Until(5*time.Second, func() bool { return src.reads.Load() >= 2 }) {
		t.Fatalf("%d readings at Run's start, want 2", src.reads.Load())
	}
	start := src.reads.Load()
	// One and a half periods of the caller's samples: a Run sampling by
	// itself would have added one.
	calls := 0
	for end := time.Now().Add(SamplePeriod * 3 / 2); time.Now().Before(end); calls++ {
		tel.Sample()
		time.Sleep(SamplePeriod / 10)
	}
	if got := src.reads.Load() - start; got != int64(calls) {
		t.Errorf("%d samples for %d of the caller's: Run sampled by itself", got, calls)
	}
	stopped := time.Now()
	before := src.reads.Load()
	if !poll.Until(sampleFallback+3*SamplePeriod, func() bool { return src.reads.Load() >= before+2 }) {
		t.Fatalf("Run took %d samples in %v after the caller's stopped, want 2", src.reads.Load()-before, time.Since(stopped))
	}
	if d := time.Since(stopped); d < sampleFallback {
		t.Errorf("Run sampled by itself %v after the caller's last sample, before sampleFallback (%v)", d, sampleFallback)
	}
}
