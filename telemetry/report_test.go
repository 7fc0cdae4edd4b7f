package telemetry

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// lines decodes the JSON lines in b.
func lines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(string(b)) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		out = append(out, m)
	}
	return out
}

func byEvent(ls []map[string]any, event string) []map[string]any {
	var out []map[string]any
	for _, l := range ls {
		if l[FieldEvent] == event {
			out = append(out, l)
		}
	}
	return out
}

// reporting is a Telemetry with a fake source and clock whose periodic
// report has started, logging JSON to out.
type reporting struct {
	src *fakeSource
	clk *fakeClock
	tel *Telemetry
	log zerolog.Logger
	out *bytes.Buffer
}

// startReporting starts a report whose log limiter lets burst lines of an
// event through (0: the default).
func startReporting(burst int) reporting {
	r := reporting{src: newFakeSource(), clk: newFakeClock(), out: &bytes.Buffer{}}
	log, lim := NewLogger(r.out, FormatJSON, zerolog.InfoLevel, LimitConfig{Burst: burst, Now: r.clk.Now})
	r.log = log
	r.tel = newTestTelemetry(r.src, r.clk, log, lim)
	r.tel.startReport()
	return r
}

func TestReportStatsLines(t *testing.T) {
	r := startReporting(0)
	src, clk, tel, out := r.src, r.clk, r.tel, r.out

	src.add(0, CounterSYNReceived, 20000)
	src.add(0, CounterSYNACKSent, 19990)
	src.add(0, CounterCookieInvalid, 50)
	src.add(0, CounterHandedOff, 10)
	tel.handshake.Observe(0, 500*time.Microsecond)
	clk.Advance(10 * time.Second)
	tel.logReport()

	stats := byEvent(lines(t, out.Bytes()), EventStats)
	if len(stats) != 2 {
		t.Fatalf("%d stats lines, want one per service:\n%s", len(stats), out.String())
	}
	s := stats[0]
	want := map[string]any{
		"level": "info", "service": "203.0.113.10:80", "mode": "cookie", "interval_s": 10.0,
		"half_open": 0.0, "pending": 2.0, "syn_rate": 2000.0, "synack_rate": 1999.0,
		"cookie_valid_rate": 0.0, "cookie_invalid_rate": 5.0, "handoff_rate": 1.0, "handshake_ms": 0.5,
		CounterSYNReceived: 21000.0, CounterHandedOff: 16.0, "backend_retry": 1.0,
	}
	for k, v := range want {
		if s[k] != v {
			t.Errorf("stats %s = %v, want %v", k, s[k], v)
		}
	}
	if _, ok := stats[1]["handshake_ms"]; ok {
		t.Error("handshake_ms logged for a service with no hand-off in the interval")
	}
	if stats[1]["half_open"] != 12.0 || stats[1]["mode"] != "passthrough" {
		t.Errorf("second service: %v", stats[1])
	}
	if n := len(byEvent(lines(t, out.Bytes()), EventQueueOverflow)); n != 0 {
		t.Fatalf("%d queue_overflow lines without drops", n)
	}
}

func TestReportQueueOverflowOncePerInterval(t *testing.T) {
	r := startReporting(0)
	src, clk, tel, out := r.src, r.clk, r.tel, r.out

	// Drops grow many times within one interval: one line sums them.
	for range 100 {
		src.set(func(f *fakeSource) { f.queues[0].KernelDrops += 30; f.queues[0].ENOBUFS++ })
	}
	// Then a quiet interval: nothing.
	ov := oneLineInTwoIntervals(t, clk, tel, out, EventQueueOverflow)
	want := map[string]any{"level": "warn", "queue": 7.0, "kind": "syn", "dropped": 3000.0, "dropped_total": 3000.0, "enobufs": 100.0, "enobufs_total": 100.0, "interval_s": 10.0}
	for k, v := range want {
		if ov[0][k] != v {
			t.Errorf("queue_overflow %s = %v, want %v", k, ov[0][k], v)
		}
	}
}

// oneLineInTwoIntervals runs two report intervals, the second one quiet,
// and requires exactly one line of event in out: the first interval's.
func oneLineInTwoIntervals(t *testing.T, clk *fakeClock, tel *Telemetry, out *bytes.Buffer, event string) []map[string]any {
	t.Helper()
	for range 2 {
		clk.Advance(10 * time.Second)
		tel.logReport()
	}
	got := byEvent(lines(t, out.Bytes()), event)
	if len(got) != 1 {
		t.Fatalf("%d %s lines, want 1 (none for the quiet interval):\n%s", len(got), event, out.String())
	}
	return got
}

func TestReportLogSuppressed(t *testing.T) {
	r := startReporting(3)
	clk, tel, out, log := r.clk, r.tel, r.out, r.log
	for range 1000 {
		log.Error().Str(FieldEvent, EventHandoffFailed).Msg("conntrack hand-off failed")
	}
	sup := oneLineInTwoIntervals(t, clk, tel, out, EventLogSuppressed)
	if sup[0]["suppressed_event"] != EventHandoffFailed || sup[0]["suppressed"] != 997.0 || sup[0]["suppressed_total"] != 997.0 {
		t.Fatalf("log_suppressed line %v", sup[0])
	}
}
