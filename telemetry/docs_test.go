package telemetry_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// oneService is a Source with one service carrying every engine counter.
type oneService struct{}

func (oneService) ServiceCounters() []telemetry.ServiceCounters {
	m := map[string]uint64{}
	for _, c := range engine.Counters() {
		m[c.String()] = 1
	}
	return []telemetry.ServiceCounters{{Service: "203.0.113.2:80", Mode: "cookie", Counters: m}}
}

func (oneService) QueueCounters() []telemetry.QueueCounters {
	return []telemetry.QueueCounters{{Queue: 0}}
}

func (oneService) HandoffEntries() (int, error) { return 0, nil }

// exported returns the metric names the gateway's telemetry exports, as
// wired by the gateway: every engine counter, histograms and the limiter.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	var names []string
	for _, c := range engine.Counters() {
		names = append(names, c.String())
	}
	tel := telemetry.New(telemetry.Config{
		Source: oneService{},
		Collector: telemetry.CollectorConfig{
			Counters:  names,
			Modes:     []string{"cookie", "passthrough", "off"},
			Handshake: telemetry.NewHistograms(1),
			Log:       telemetry.NewLineLimiter(io.Discard, telemetry.LimitConfig{}),
		},
	})
	// The limiter lists a kind once it has seen it.
	rec := httptest.NewRecorder()
	tel.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	out := map[string]bool{"synguard_log_suppressed_total": true}
	for line := range strings.Lines(rec.Body.String()) {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ = strings.Cut(name, " ")
			out[name] = true
		}
	}
	return out
}

var metricRe = regexp.MustCompile(`synguard_[a-z0-9_]+`)

// Every metric the Grafana dashboard queries is one synguard exports, so
// a renamed metric cannot leave a panel silently empty.
func TestGrafanaDashboardQueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	have := exported(t)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range metricRe.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if !have[base] {
					t.Errorf("panel %q queries %s, which synguard does not export", p.Title, name)
				}
				used[base] = true
			}
		}
	}
	for _, must := range []string{
		"synguard_syn_received_total", "synguard_synack_sent_total", "synguard_cookie_valid_total",
		"synguard_cookie_invalid_total", "synguard_half_open", "synguard_mode",
		"synguard_flows_handed_off_total", "synguard_queue_dropped_total", "synguard_backend_handshake_seconds",
	} {
		if !have[must] {
			t.Errorf("%s is not exported", must)
		}
		if !used[must] {
			t.Errorf("the Grafana dashboard does not show %s", must)
		}
	}
}

// Every event has a section in docs/events.md with an example line of
// that event.
func TestEventsDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, ev := range telemetry.Events() {
		if !regexp.MustCompile("(?m)^#### .*`" + ev + "`").MatchString(doc) {
			t.Errorf("event %s has no section in docs/events.md", ev)
		}
		if !strings.Contains(doc, `"event":"`+ev+`"`) {
			t.Errorf("event %s has no example line in docs/events.md", ev)
		}
	}
}
