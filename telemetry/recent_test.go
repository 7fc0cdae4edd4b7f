package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// decodeRecent returns the "i" field of each recent line, in order, and
// fails on a line that is not a JSON object with an event.
func decodeRecent(t *testing.T, lines []json.RawMessage) (is []int, events []string) {
	t.Helper()
	for _, l := range lines {
		var m struct {
			Event string `json:"event"`
			I     *int   `json:"i"`
		}
		if err := json.Unmarshal(l, &m); err != nil || m.Event == "" {
			t.Fatalf("recent line %q: %v", l, err)
		}
		events = append(events, m.Event)
		if m.I != nil {
			is = append(is, *m.I)
		}
	}
	return is, events
}

// The last RecentEvents lines that passed, newest first; stats lines and
// lines the limit held back are not among them.
func TestRecentEvents(t *testing.T) {
	var out bytes.Buffer
	log, lim := NewLogger(&out, FormatJSON, zerolog.InfoLevel, LimitConfig{Burst: 3, Now: newFakeClock().Now})
	if got := lim.Recent(); len(got) != 0 {
		t.Fatalf("recent before any line: %q", got)
	}
	for i := range 7 {
		log.Warn().Str(FieldEvent, EventModeChange).Int("i", i).Msg("service mode changed")
	}
	is, _ := decodeRecent(t, lim.Recent())
	if fmt.Sprint(is) != "[2 1 0]" {
		t.Fatalf("after 7 mode changes with a burst of 3: recent %v, want [2 1 0] (held-back lines are not kept)", is)
	}
	// Exempt kinds pass whatever their number; the ring keeps the last 20
	// of them, the stats lines in between left out.
	for i := 100; i < 130; i++ {
		log.Warn().Str(FieldEvent, EventAttackStart).Int("i", i).Msg("attack started")
		log.Info().Str(FieldEvent, EventStats).Int("i", -i).Msg("service statistics")
	}
	is, events := decodeRecent(t, lim.Recent())
	var want []int
	for i := 129; i > 129-RecentEvents; i-- {
		want = append(want, i)
	}
	if fmt.Sprint(is) != fmt.Sprint(want) {
		t.Fatalf("recent %v, want %v", is, want)
	}
	for _, ev := range events {
		if ev != EventAttackStart {
			t.Fatalf("recent holds a %s line", ev)
		}
	}
	// Every stats line still reached the output.
	if n := strings.Count(out.String(), `"event":"stats"`); n != 30 {
		t.Fatalf("%d stats lines written, want 30", n)
	}
}

// A line that is not a JSON object, or too long to keep, does not enter
// the result; one longer than a slot's first size still does.
func TestRecentOddLines(t *testing.T) {
	lim := NewLineLimiter(io.Discard, LimitConfig{})
	long := `{"event":"config_reloaded","changes":["` + strings.Repeat("x", 3*recentSlotCap) + `"]}` + "\n"
	huge := `{"event":"config_reloaded","changes":["` + strings.Repeat("y", recentLineMax) + `"]}` + "\n"
	for _, l := range []string{`{"event":"start"}` + "\n", "not json\n", long, `{"event":"stop"` + "\n", huge, "\n"} {
		lim.Write([]byte(l))
	}
	got := lim.Recent()
	if len(got) != 2 || string(got[0]) != strings.TrimSpace(long) || string(got[1]) != `{"event":"start"}` {
		var short []string
		for _, g := range got {
			short = append(short, string(g[:min(len(g), 40)]))
		}
		t.Fatalf("recent = %q; want the long line, then start", short)
	}
	// Recent's lines are copies: later writes do not change them.
	for range RecentEvents {
		lim.Write([]byte(`{"event":"stop"}` + "\n"))
	}
	if string(got[1]) != `{"event":"start"}` {
		t.Fatalf("a returned line changed under a later write: %q", got[1])
	}
}

// Keeping a line allocates nothing once the ring is warm: the limiter's
// Write, ring included, costs the logger no allocation per line.
func TestRecentNoAllocs(t *testing.T) {
	lim := NewLineLimiter(io.Discard, LimitConfig{})
	line := []byte(`{"level":"warn","event":"attack_end","service":"203.0.113.2:80","top_sources":[{"prefix":"198.18.7.0/24","syns":1009920,"completed":0}],"message":"attack ended"}` + "\n")
	for range RecentEvents {
		lim.Write(line)
	}
	if n := testing.AllocsPerRun(1000, func() { lim.Write(line) }); n != 0 {
		t.Fatalf("Write allocates %v times per line", n)
	}
}

// Writers and readers at once: no race (run with -race), no torn line.
func TestRecentConcurrent(t *testing.T) {
	log, lim := NewLogger(io.Discard, FormatJSON, zerolog.InfoLevel, LimitConfig{Burst: 1 << 30})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				log.Warn().Str(FieldEvent, EventBackendUnreachable).Int("w", w).Int("i", i).Str("pad", strings.Repeat("p", i%300)).Msg("x")
			}
		})
	}
	for range 200 {
		got := lim.Recent()
		if len(got) > RecentEvents {
			t.Fatalf("%d recent lines", len(got))
		}
		decodeRecent(t, got)
	}
	wg.Wait()
	if got := lim.Recent(); len(got) != RecentEvents {
		t.Fatalf("%d recent lines after 8000, want %d", len(got), RecentEvents)
	}
}

func BenchmarkLimiterWrite(b *testing.B) {
	lim := NewLineLimiter(io.Discard, LimitConfig{Burst: 1 << 30})
	line := []byte(`{"level":"warn","event":"backend_unreachable","service":"203.0.113.2:80","message":"backend probe failed"}` + "\n")
	b.ReportAllocs()
	for b.Loop() {
		lim.Write(line)
	}
}

// Whatever is written through the limiter, Recent returns at most
// RecentEvents lines, each a JSON object that was written, newest first.
func FuzzRecent(f *testing.F) {
	f.Add([]byte(`{"event":"start"}`+"\n"), []byte("not json\n"), 3)
	f.Add([]byte(`{"event":"stats"}`), []byte(`{"event":"x","a":[1,2]}`+"\n\n"), 25)
	f.Fuzz(func(t *testing.T, a, b []byte, n int) {
		lim := NewLineLimiter(io.Discard, LimitConfig{Burst: 1 << 30})
		n = max(0, n%64)
		var written [][]byte
		for i := range n {
			line := a
			if i%2 == 1 {
				line = b
			}
			lim.Write(line)
			written = append(written, bytes.TrimRight(line, "\n"))
		}
		got := lim.Recent()
		if len(got) > RecentEvents {
			t.Fatalf("%d lines", len(got))
		}
		for i, g := range got {
			if !json.Valid(g) || g[0] != '{' {
				t.Fatalf("line %d not a JSON object: %q", i, g)
			}
		}
		// The newest kept line is the last written one, if that one was
		// kept at all.
		if len(got) > 0 && len(written) > 0 {
			last := written[len(written)-1]
			if json.Valid(last) && len(last) > 0 && len(last) <= recentLineMax && last[0] == '{' && string(eventName(last)) != EventStats && !bytes.Equal(got[0], last) {
				t.Fatalf("newest %q, last written %q", got[0], last)
			}
		}
	})
}
