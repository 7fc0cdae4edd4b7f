package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// countLines counts the lines in b per event name.
func countLines(t *testing.T, b []byte) map[string]int {
	t.Helper()
	out := make(map[string]int)
	for line := range strings.Lines(string(b)) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line is not JSON: %q: %v", line, err)
		}
		ev, _ := m[FieldEvent].(string)
		out[ev]++
	}
	return out
}

// A flood of one event kind, logged through the real zerolog logger,
// yields at most Burst lines per second; every held-back line is counted;
// other kinds keep their own budget.
func TestLimiterBoundsBurstPerSecond(t *testing.T) {
	clk := newFakeClock()
	var out bytes.Buffer
	log, lim := NewLogger(&out, FormatJSON, zerolog.InfoLevel, LimitConfig{Burst: 5, Period: time.Second, Now: clk.Now})

	const seconds, perSecond = 10, 10000
	for s := range seconds {
		before := out.Len()
		for i := range perSecond {
			log.Error().Str(FieldEvent, EventHandoffFailed).Int("i", i).Msg("conntrack hand-off failed")
			if i%1000 == 0 {
				log.Warn().Str(FieldEvent, EventBackendUnreachable).Msg("backend probe failed")
			}
			clk.Advance(time.Second / perSecond)
		}
		got := countLines(t, out.Bytes()[before:])
		if got[EventHandoffFailed] > 5 || got[EventBackendUnreachable] > 5 {
			t.Fatalf("second %d: %v lines, want at most 5 of each kind", s, got)
		}
		if got[EventHandoffFailed] == 0 || got[EventBackendUnreachable] == 0 {
			t.Fatalf("second %d: %v: a kind got no line at all", s, got)
		}
	}
	total := countLines(t, out.Bytes())
	sup := lim.Suppressed()
	if uint64(total[EventHandoffFailed])+sup[EventHandoffFailed] != seconds*perSecond {
		t.Fatalf("handoff_failed: %d written + %d suppressed != %d logged", total[EventHandoffFailed], sup[EventHandoffFailed], seconds*perSecond)
	}
	if uint64(total[EventBackendUnreachable])+sup[EventBackendUnreachable] != seconds*perSecond/1000 {
		t.Fatalf("backend_unreachable: %d written + %d suppressed", total[EventBackendUnreachable], sup[EventBackendUnreachable])
	}
	if total[EventHandoffFailed] != 5*seconds {
		t.Fatalf("handoff_failed: %d lines in %d s, want the full budget of 5 per second", total[EventHandoffFailed], seconds)
	}
}

// Exempt kinds (lifecycle, stats) are never held back, and lines without
// an event name share one budget.
func TestLimiterExemptAndUnnamed(t *testing.T) {
	clk := newFakeClock()
	var out bytes.Buffer
	log, lim := NewLogger(&out, FormatJSON, zerolog.DebugLevel, LimitConfig{Burst: 2, Now: clk.Now})
	for range 50 {
		log.Info().Str(FieldEvent, EventStats).Msg("service statistics")
		log.Debug().Msg("no event name")
	}
	got := countLines(t, out.Bytes())
	if got[EventStats] != 50 {
		t.Fatalf("stats lines: %d, want all 50", got[EventStats])
	}
	if got[""] != 2 || lim.Suppressed()[kindNone] != 48 {
		t.Fatalf("unnamed: %d written, %d suppressed; want 2 and 48", got[""], lim.Suppressed()[kindNone])
	}
	if _, ok := lim.Suppressed()[EventStats]; ok {
		t.Fatal("exempt kind listed in the suppressed counts")
	}
}

// Unknown names past the table's bound share one budget, so the table
// cannot grow without bound.
func TestLimiterTableBounded(t *testing.T) {
	var out bytes.Buffer
	lim := NewLineLimiter(&out, LimitConfig{Burst: 1, Now: newFakeClock().Now})
	for i := range 1000 {
		fmt.Fprintf(lim, `{"event":"kind_%d"}`+"\n", i)
	}
	if n := len(lim.Suppressed()); n > maxKinds+1 {
		t.Fatalf("limiter tracks %d kinds, want at most %d", n, maxKinds+1)
	}
	// A line each for the kinds that fit in the table, one for all the
	// rest together.
	if lines, want := strings.Count(out.String(), "\n"), maxKinds+1; lines != want {
		t.Fatalf("%d lines written, want %d: one per tracked kind and one for the rest", lines, want)
	}
	if n, want := lim.Suppressed()[kindOther], uint64(1000-maxKinds-1); n != want {
		t.Fatalf("%d lines of kinds past the table's bound suppressed, want %d", n, want)
	}
}

func TestEventName(t *testing.T) {
	tests := []struct{ line, want string }{
		{`{"level":"info","event":"start","time":"x"}`, "start"},
		{`{"level":"info","message":"a \"event\":\"fake\" in a string","event":"stop"}`, "stop"},
		{`{"level":"info"}`, ""},
		{`{"event":"unterminated`, ""},
	}
	for _, tc := range tests {
		if got := string(eventName([]byte(tc.line))); got != tc.want {
			t.Errorf("eventName(%s) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

// Every line has time, level and event; the console format still goes
// through the limiter.
func TestLoggerLineShape(t *testing.T) {
	var out bytes.Buffer
	log, _ := NewLogger(&out, FormatJSON, zerolog.InfoLevel, LimitConfig{})
	LogModeChange(log, ModeChange{
		Service: netip.MustParseAddrPort("203.0.113.10:80"), From: "passthrough", To: "cookie",
		Reason: "half_open_high", HalfOpen: 1234, SYNRate: 5012.345, CompletionRatio: 0.0412,
	})
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %q", out.String())
	}
	want := map[string]any{
		"level": "warn", "event": "mode_change", "service": "203.0.113.10:80", "from": "passthrough",
		"to": "cookie", "reason": "half_open_high", "half_open": 1234.0, "syn_rate": 5012.35,
		"completion_ratio": 0.04, "message": "service mode changed",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v (%T), want %v", k, m[k], m[k], v)
		}
	}
	if ts, ok := m["time"].(string); !ok {
		t.Errorf("no time field: %v", m)
	} else if _, err := time.Parse(time.RFC3339, ts); err != nil {
		t.Errorf("time %q: %v", ts, err)
	}

	out.Reset()
	clk := newFakeClock()
	log, lim := NewLogger(&out, FormatConsole, zerolog.InfoLevel, LimitConfig{Burst: 1, Now: clk.Now})
	log.Info().Str(FieldEvent, EventHandoffFailed).Msg("first")
	log.Info().Str(FieldEvent, EventHandoffFailed).Msg("second")
	if s := out.String(); !strings.Contains(s, "first") || strings.Contains(s, "second") || strings.HasPrefix(s, "{") {
		t.Fatalf("console output %q: want the first line only, as text", s)
	}
	if lim.Suppressed()[EventHandoffFailed] != 1 {
		t.Fatalf("console: suppressed %v", lim.Suppressed())
	}
}
