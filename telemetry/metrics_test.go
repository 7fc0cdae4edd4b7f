package telemetry

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
)

// scrape fetches path from t's handler and returns status and body.
func scrape(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// family returns the sample lines of the named metric family (for a
// histogram: its _bucket, _sum and _count lines), in exposition order.
func family(body, name string) []string {
	var out []string
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		metric, _, _ := strings.Cut(line, " ")
		metric, _, _ = strings.Cut(metric, "{")
		if metric == name || metric == name+"_bucket" || metric == name+"_sum" || metric == name+"_count" {
			out = append(out, line)
		}
	}
	return out
}

func TestCollectorExportsEveryMetric(t *testing.T) {
	src := newFakeSource()
	hs := NewHistograms(2)
	hs.Observe(0, 80*time.Microsecond)  // ≤ 100µs
	hs.Observe(0, 250*time.Microsecond) // exactly a bound: counted in it (le)
	hs.Observe(0, 3*time.Second)        // ≤ 5 s: a retried SYN
	hs.Observe(0, 9*time.Second)        // +Inf only
	hs.Observe(5, time.Millisecond)     // no such service: ignored
	lim := NewLineLimiter(io.Discard, LimitConfig{Burst: 1, Now: newFakeClock().Now})
	for range 3 {
		lim.Write([]byte(`{"level":"error","event":"handoff_failed"}` + "\n"))
	}
	lim.Write([]byte(`{"level":"info","event":"backend_unreachable"}` + "\n"))

	tel := New(Config{
		Source: src,
		Collector: CollectorConfig{
			Counters:  testCounters,
			Modes:     []string{"cookie", "passthrough", "off"},
			Handshake: hs,
			Log:       lim,
		},
		Logger: zerolog.Nop(),
	})
	resp, body := scrape(t, tel.Handler(), "/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}

	const v4, v6 = `service="203.0.113.10:80"`, `service="[2001:db8::10]:443"`
	want := map[string][]string{
		"synguard_syn_received_total":     {`synguard_syn_received_total{` + v4 + `} 1000`, `synguard_syn_received_total{` + v6 + `} 40`},
		"synguard_synack_sent_total":      {`synguard_synack_sent_total{` + v4 + `} 990`, `synguard_synack_sent_total{` + v6 + `} 0`},
		"synguard_cookie_valid_total":     {`synguard_cookie_valid_total{` + v4 + `} 7`, `synguard_cookie_valid_total{` + v6 + `} 0`},
		"synguard_cookie_invalid_total":   {`synguard_cookie_invalid_total{` + v4 + `} 3`, `synguard_cookie_invalid_total{` + v6 + `} 0`},
		"synguard_flows_handed_off_total": {`synguard_flows_handed_off_total{` + v4 + `} 6`, `synguard_flows_handed_off_total{` + v6 + `} 0`},
		"synguard_backend_retry_total":    {`synguard_backend_retry_total{` + v4 + `} 1`, `synguard_backend_retry_total{` + v6 + `} 0`},
		"synguard_half_open":              {`synguard_half_open{` + v4 + `} 0`, `synguard_half_open{` + v6 + `} 12`},
		"synguard_pending_flows":          {`synguard_pending_flows{` + v4 + `} 2`, `synguard_pending_flows{` + v6 + `} 0`},
		"synguard_mode": {
			`synguard_mode{mode="cookie",` + v4 + `} 1`,
			`synguard_mode{mode="cookie",` + v6 + `} 0`,
			`synguard_mode{mode="off",` + v4 + `} 0`,
			`synguard_mode{mode="off",` + v6 + `} 0`,
			`synguard_mode{mode="passthrough",` + v4 + `} 0`,
			`synguard_mode{mode="passthrough",` + v6 + `} 1`,
		},
		"synguard_queue_received_total":       {`synguard_queue_received_total{kind="completion",queue="8"} 60`, `synguard_queue_received_total{kind="syn",queue="7"} 2000`},
		"synguard_queue_dropped_total":        {`synguard_queue_dropped_total{kind="completion",queue="8"} 0`, `synguard_queue_dropped_total{kind="syn",queue="7"} 0`},
		"synguard_queue_enobufs_total":        {`synguard_queue_enobufs_total{kind="completion",queue="8"} 0`, `synguard_queue_enobufs_total{kind="syn",queue="7"} 0`},
		"synguard_queue_batches_total":        {`synguard_queue_batches_total{kind="completion",queue="8"} 30`, `synguard_queue_batches_total{kind="syn",queue="7"} 40`},
		"synguard_queue_verdict_errors_total": {`synguard_queue_verdict_errors_total{kind="completion",queue="8"} 0`, `synguard_queue_verdict_errors_total{kind="syn",queue="7"} 1`},
		"synguard_log_suppressed_total": {
			`synguard_log_suppressed_total{event="backend_unreachable"} 0`,
			`synguard_log_suppressed_total{event="handoff_failed"} 2`,
		},
	}
	for name, lines := range want {
		if diff := cmp.Diff(lines, family(body, name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}

	// The histogram: cumulative buckets, in seconds.
	bounds := []string{"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"}
	cum := []int{1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4}
	var hist []string
	for _, svc := range []string{v4, v6} {
		for i, b := range bounds {
			n := cum[i]
			if svc == v6 {
				n = 0
			}
			hist = append(hist, "synguard_backend_handshake_seconds_bucket{"+svc+`,le="`+b+`"} `+strconv.Itoa(n))
		}
		if svc == v4 {
			hist = append(hist, "synguard_backend_handshake_seconds_sum{"+svc+"} 12.00033", "synguard_backend_handshake_seconds_count{"+svc+"} 4")
		} else {
			hist = append(hist, "synguard_backend_handshake_seconds_sum{"+svc+"} 0", "synguard_backend_handshake_seconds_count{"+svc+"} 0")
		}
	}
	if diff := cmp.Diff(hist, family(body, "synguard_backend_handshake_seconds")); diff != "" {
		t.Errorf("synguard_backend_handshake_seconds (-want +got):\n%s", diff)
	}
	if !strings.Contains(body, "# TYPE synguard_backend_handshake_seconds histogram") {
		t.Error("synguard_backend_handshake_seconds is not typed as a histogram")
	}
	if !strings.Contains(body, "# TYPE synguard_half_open gauge") || !strings.Contains(body, "# TYPE synguard_syn_received_total counter") {
		t.Error("gauge or counter types missing")
	}
}

// A mode the gateway did not list still shows, so a new state is never
// invisible.
func TestCollectorUnlistedMode(t *testing.T) {
	src := newFakeSource()
	src.services = src.services[:1]
	src.services[0].Mode = "draining"
	tel := New(Config{Source: src, Collector: CollectorConfig{Modes: []string{"cookie", "passthrough"}}})
	_, body := scrape(t, tel.Handler(), "/metrics")
	want := []string{
		`synguard_mode{mode="cookie",service="203.0.113.10:80"} 0`,
		`synguard_mode{mode="draining",service="203.0.113.10:80"} 1`,
		`synguard_mode{mode="passthrough",service="203.0.113.10:80"} 0`,
	}
	if diff := cmp.Diff(want, family(body, "synguard_mode")); diff != "" {
		t.Errorf("synguard_mode (-want +got):\n%s", diff)
	}
	// Without histograms or a limiter, those metrics are absent, not zero.
	for _, name := range []string{"synguard_backend_handshake_seconds", "synguard_log_suppressed_total", "synguard_rules_restored_total"} {
		if bytes.Contains([]byte(body), []byte(name)) {
			t.Errorf("%s exported without a source for it", name)
		}
	}
}

// rulesSource is a Source whose gateway watches its rules.
type rulesSource struct {
	*fakeSource
	restored uint64
}

func (r rulesSource) RulesRestored() uint64 { return r.restored }

// A gateway that watches its rules exports how often it put them back: one
// series, whatever was missing.
func TestCollectorRulesRestored(t *testing.T) {
	tel := New(Config{Source: rulesSource{newFakeSource(), 3}})
	_, body := scrape(t, tel.Handler(), "/metrics")
	if diff := cmp.Diff([]string{"synguard_rules_restored_total 3"}, family(body, "synguard_rules_restored_total")); diff != "" {
		t.Errorf("synguard_rules_restored_total (-want +got):\n%s", diff)
	}
	if !strings.Contains(body, "# TYPE synguard_rules_restored_total counter") {
		t.Error("synguard_rules_restored_total is not typed as a counter")
	}
}

// Backend health and attacks: one series per service each, whatever the
// attack's sources; a backend without a verdict yet has no series rather
// than a false 0.
func TestCollectorBackendAndAttacks(t *testing.T) {
	clk := newFakeClock()
	src := newIncidentSource(clk)
	src.services = append(src.services, ServiceCounters{Service: "[2001:db8::99]:25", Mode: "passthrough", Counters: map[string]uint64{}})
	tel := New(Config{Source: src, Collector: CollectorConfig{Counters: testCounters}})
	h := tel.Handler()
	_, body := scrape(t, h, "/metrics")

	const v4, v6, fresh = `service="203.0.113.10:80"`, `service="[2001:db8::10]:443"`, `service="[2001:db8::99]:25"`
	want := map[string][]string{
		"synguard_backend_up":    {`synguard_backend_up{` + v4 + `} 0`, `synguard_backend_up{` + v6 + `} 1`},
		"synguard_attack_active": {`synguard_attack_active{` + v4 + `} 1`, `synguard_attack_active{` + v6 + `} 0`, `synguard_attack_active{` + fresh + `} 0`},
		"synguard_attacks_total": {`synguard_attacks_total{` + v4 + `} 3`, `synguard_attacks_total{` + v6 + `} 0`, `synguard_attacks_total{` + fresh + `} 0`},
	}
	for name, lines := range want {
		if diff := cmp.Diff(lines, family(body, name)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	for _, typ := range []string{"# TYPE synguard_backend_up gauge", "# TYPE synguard_attack_active gauge", "# TYPE synguard_attacks_total counter"} {
		if !strings.Contains(body, typ) {
			t.Errorf("missing %q", typ)
		}
	}
	// No prefix is ever a label: the series count does not grow with the
	// attack's sources.
	if strings.Contains(body, hotPrefix) || strings.Contains(body, "198.51.100.") {
		t.Error("a source prefix appears in the metrics")
	}

	// The attack ends, the backend comes back: the same series, new values.
	src.set(func(f *fakeSource) {
		f.services[0].Attack = nil
		f.services[0].Backend.Up = true
	})
	_, body = scrape(t, h, "/metrics")
	for name, line := range map[string]string{
		"synguard_backend_up":    `synguard_backend_up{` + v4 + `} 1`,
		"synguard_attack_active": `synguard_attack_active{` + v4 + `} 0`,
		"synguard_attacks_total": `synguard_attacks_total{` + v4 + `} 3`,
	} {
		if got := family(body, name); !slices.Contains(got, line) {
			t.Errorf("after the attack: %s = %v, want %s among them", name, got, line)
		}
	}
}

// The hand-off's stages are one histogram each, whatever the services;
// a service's handshake histogram is the one of its engine index, not of
// its place in the list.
func TestCollectorStagesAndIndexes(t *testing.T) {
	src := newFakeSource()
	hs := NewHistograms(8)
	hs.Observe(5, 3*time.Millisecond)
	stages := NewHistograms(len(HandshakeStages))
	stages.Observe(StageBackend, 700*time.Microsecond)
	stages.Observe(StageEntry, 80*time.Microsecond)
	tel := New(Config{Source: indexedSource{src, 5}, Collector: CollectorConfig{Handshake: hs, Stages: stages}})
	_, body := scrape(t, tel.Handler(), "/metrics")
	for _, want := range []string{
		`synguard_handshake_stage_seconds_count{stage="backend"} 1`,
		`synguard_handshake_stage_seconds_count{stage="wait"} 0`,
		`synguard_handshake_stage_seconds_bucket{stage="entry",le="0.0001"} 1`,
		`synguard_backend_handshake_seconds_count{service="` + src.services[0].Service + `"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %s in\n%s", want, body)
		}
	}
}

// indexedSource gives its first service engine index idx.
type indexedSource struct {
	*fakeSource
	idx int
}

func (s indexedSource) ServiceCounters() []ServiceCounters {
	out := s.fakeSource.ServiceCounters()
	out[0].Index = s.idx
	return out[:1]
}
