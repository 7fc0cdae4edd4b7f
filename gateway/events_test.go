package gateway

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// TestHandedOffStages: a hand-off's steps feed the stage histograms, the
// entry's only when an entry was made.
func TestHandedOffStages(t *testing.T) {
	ev := events{log: zerolog.Nop(), handshake: telemetry.NewHistograms(1), stages: telemetry.NewHistograms(len(telemetry.HandshakeStages))}
	ev.HandedOff(0, engine.HandoffTiming{Backend: time.Millisecond, Wait: time.Millisecond, Entry: 50 * time.Microsecond})
	ev.HandedOff(0, engine.HandoffTiming{Backend: time.Millisecond, Wait: 2 * time.Millisecond, NoEntry: true})
	count := func(h *telemetry.Histograms, i int) uint64 {
		s, _ := h.Snapshot(i)
		return s.Count
	}
	if b, w, e := count(ev.stages, telemetry.StageBackend), count(ev.stages, telemetry.StageWait), count(ev.stages, telemetry.StageEntry); b != 2 || w != 2 || e != 1 {
		t.Errorf("stages observed: backend %d, wait %d, entry %d; want 2, 2, 1", b, w, e)
	}
	if n := count(ev.handshake, 0); n != 2 {
		t.Errorf("handshakes observed: %d, want 2", n)
	}
}
