package telemetry_test

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

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
	return []telemetry.ServiceCounters{{
		Service: "203.0.113.2:80", Mode: "cookie", Counters: m,
		Backend: telemetry.Backend{Up: true, Since: time.Unix(1, 0)},
	}}
}

func (oneService) QueueCounters() []telemetry.QueueCounters {
	return []telemetry.QueueCounters{{Queue: 0, Kind: telemetry.QueueSYN}, {Queue: 1, Kind: telemetry.QueueCompletion}}
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
		"synguard_backend_up", "synguard_attack_active", "synguard_attacks_total",
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

// eventExamples returns, per event, the fields of its example lines in
// docs/events.md.
func eventExamples(t *testing.T) map[string]map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	for line := range strings.Lines(string(b)) {
		var m map[string]any
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		ev, _ := m["event"].(string)
		if out[ev] == nil {
			out[ev] = map[string]bool{}
		}
		for k := range m {
			out[ev][k] = true
		}
	}
	return out
}

var (
	lokiEventRe = regexp.MustCompile(`event="([a-z_]+)"`)
	lokiLabelRe = regexp.MustCompile(`([a-z_]+)="[a-z_]+\[`) // json name="field[0]..."
	templateRe  = regexp.MustCompile(`{{\s*\.?([a-z_]+)\s*}}`)
)

// The Grafana dashboard's annotations come from synguard's own events,
// in Loki, with the stream selector docs/events.md's queries use; each
// field they show is one the event carries (as its example lines show)
// or one they extract.
func TestGrafanaAnnotationsUseEvents(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Annotations struct {
			List []struct {
				Name       string `json:"name"`
				BuiltIn    int    `json:"builtIn"`
				Datasource struct {
					Type, UID string
				} `json:"datasource"`
				Expr        string                `json:"expr"`
				Target      struct{ Expr string } `json:"target"`
				TitleFormat string                `json:"titleFormat"`
				TextFormat  string                `json:"textFormat"`
				TagKeys     string                `json:"tagKeys"`
			} `json:"list"`
		} `json:"annotations"`
		Templating struct {
			List []struct {
				Name, Type string
				Query      json.RawMessage // a string for a datasource variable
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		var q string
		if v.Type == "datasource" && json.Unmarshal(v.Query, &q) == nil {
			vars["${"+v.Name+"}"] = q
		}
	}
	examples := eventExamples(t)
	known := telemetry.Events()
	annotated := map[string]bool{}
	for _, a := range dash.Annotations.List {
		if a.BuiltIn == 1 {
			continue
		}
		if a.Datasource.Type != "loki" || vars[a.Datasource.UID] != "loki" {
			t.Errorf("annotation %q: datasource %+v is not the dashboard's Loki variable", a.Name, a.Datasource)
		}
		if a.Expr == "" || a.Target.Expr != a.Expr {
			t.Errorf("annotation %q: expr %q, target expr %q: want the same query in both", a.Name, a.Expr, a.Target.Expr)
		}
		if !strings.HasPrefix(a.Expr, `{app="synguard"} | json | `) {
			t.Errorf("annotation %q: %q does not select synguard's JSON events as docs/events.md does", a.Name, a.Expr)
		}
		evs := lokiEventRe.FindAllStringSubmatch(a.Expr, -1)
		if len(evs) != 1 {
			t.Errorf("annotation %q: %q names %d events, want one", a.Name, a.Expr, len(evs))
			continue
		}
		ev := evs[0][1]
		if !slices.Contains(known, ev) {
			t.Errorf("annotation %q: no event %q", a.Name, ev)
		}
		annotated[ev] = true
		fields := maps.Clone(examples[ev])
		if fields == nil {
			t.Errorf("annotation %q: docs/events.md has no example line of %s", a.Name, ev)
			continue
		}
		for _, m := range lokiLabelRe.FindAllStringSubmatch(a.Expr, -1) {
			fields[m[1]] = true
		}
		for _, m := range templateRe.FindAllStringSubmatch(a.TitleFormat+" "+a.TextFormat, -1) {
			if !fields[m[1]] {
				t.Errorf("annotation %q shows {{%s}}, which %s lines do not carry", a.Name, m[1], ev)
			}
		}
		for _, k := range strings.Split(a.TagKeys, ",") {
			if k != "" && !fields[k] {
				t.Errorf("annotation %q tags with %q, which %s lines do not carry", a.Name, k, ev)
			}
		}
	}
	for _, ev := range []string{telemetry.EventAttackStart, telemetry.EventAttackEnd} {
		if !annotated[ev] {
			t.Errorf("no annotation from %s", ev)
		}
	}
}
