package gateway

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/internal/syncbuf"
)

func TestBackendHealth(t *testing.T) {
	var logs syncbuf.Buffer
	h := newHealth(zerolog.New(&logs))
	svc := engine.Service{Index: 3, Addr: netip.MustParseAddrPort("192.0.2.10:80")}
	now := time.Unix(1_800_000_000, 0)
	var st engine.Stats
	step := func(handed, resets, timeouts uint64) {
		st.Add(engine.HandedOff, handed)
		st.Add(engine.BackendReset, resets)
		st.Add(engine.BackendTimeout, timeouts)
		now = now.Add(time.Second)
		h.judgeCounts(svc, st, now)
	}
	expect := func(up bool, reason string) {
		t.Helper()
		gotUp, gotReason, _ := h.view(svc.Index)
		if gotUp != up || gotReason != reason {
			t.Fatalf("backend up=%v reason %q, want up=%v %q", gotUp, gotReason, up, reason)
		}
	}
	step(5, 0, 0) // first look: a baseline, no judgement
	expect(false, "no evidence yet")
	if _, _, since := h.view(svc.Index); !since.IsZero() {
		t.Error("a backend without evidence has a since")
	}
	step(0, 3, 0)
	expect(false, "resets")
	step(0, 0, 0) // nothing new: the last evidence stands
	expect(false, "resets")
	step(0, 0, 2)
	expect(false, "silence")
	h.probed(svc, nil, now)
	expect(true, "probe")
	h.probed(svc, errors.New("connection refused"), now)
	expect(false, "probe: connection refused")
	if !h.anyDown() {
		t.Error("anyDown is false with a backend down")
	}
	step(1, 1, 0) // a hand-off beats a reset in the same second
	expect(true, "handed_off")

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	var transitions []string
	for _, l := range lines {
		for _, ev := range []string{`"event":"backend_down"`, `"event":"backend_up"`} {
			if strings.Contains(l, ev) {
				transitions = append(transitions, ev)
			}
		}
	}
	want := []string{`"event":"backend_down"`, `"event":"backend_up"`, `"event":"backend_down"`, `"event":"backend_up"`}
	if strings.Join(transitions, " ") != strings.Join(want, " ") {
		t.Errorf("logged transitions %v, want one line per change %v", transitions, want)
	}
}
