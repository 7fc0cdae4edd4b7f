package telemetry

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// handoffSource is a fakeSource that also counts hand-off entries.
type handoffSource struct {
	*fakeSource
	mu    sync.Mutex
	n     int
	err   error
	calls int
}

func (h *handoffSource) HandoffEntries() (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	return h.n, h.err
}

// The hand-off entry count is read at each scrape and each /api/stats
// request, and left out (not the whole scrape failed) when it fails.
func TestHandoffEntries(t *testing.T) {
	src := &handoffSource{fakeSource: newFakeSource(), n: 1234}
	tel := New(Config{Source: src, Collector: CollectorConfig{Counters: testCounters}, Logger: zerolog.Nop(), Now: newFakeClock().Now})

	stats := func() map[string]any {
		t.Helper()
		resp, body := scrape(t, tel.Handler(), "/api/stats")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /api/stats: %s", resp.Status)
		}
		var doc map[string]any
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatal(err)
		}
		return doc
	}

	_, body := scrape(t, tel.Handler(), "/metrics")
	if got := family(body, "synguard_handoff_entries"); len(got) != 1 || got[0] != "synguard_handoff_entries 1234" {
		t.Errorf("metrics: synguard_handoff_entries = %q, want 1234", got)
	}
	if !strings.Contains(body, "# TYPE synguard_handoff_entries gauge") {
		t.Error("synguard_handoff_entries is not a gauge")
	}
	if got := stats()["handoff_entries"]; got != 1234.0 {
		t.Errorf("/api/stats handoff_entries = %v, want 1234", got)
	}

	src.mu.Lock()
	src.n, src.err = 0, errors.New("ctnetlink: no answer")
	calls := src.calls
	src.mu.Unlock()
	resp, body := scrape(t, tel.Handler(), "/metrics")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a failed count failed the scrape: %s", resp.Status)
	}
	if got := family(body, "synguard_handoff_entries"); len(got) != 0 {
		t.Errorf("metrics after a failed count: %q, want no sample", got)
	}
	if got, ok := stats()["handoff_entries"]; ok {
		t.Errorf("/api/stats after a failed count: handoff_entries = %v, want absent", got)
	}
	if src.calls != calls+2 {
		t.Errorf("%d counts for a scrape and a stats request, want 2 (read on demand, not cached)", src.calls-calls)
	}

	// A source without the count exports no such series.
	plain := newTestTelemetry(newFakeSource(), newFakeClock(), zerolog.Nop(), nil)
	if _, body := scrape(t, plain.Handler(), "/metrics"); strings.Contains(body, "synguard_handoff_entries ") {
		t.Error("a source without a hand-off count exports synguard_handoff_entries")
	}
}
