package gateway

import (
	"context"
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

// The learner probes each interval, at once when woken, and, once a
// backend is judged down, within downProbeEvery and every downProbeEvery
// after that while it stays down.
func TestLearnerProbesSoonWhileDown(t *testing.T) {
	// Not parallel: the lifecycle tests want no other goroutine of ours.
	h := newHealth(zerolog.Nop())
	l := newLearner(nil, zerolog.Nop(), 0, h)
	probes := make(chan time.Time, 16)
	l.probe = func(context.Context) { probes <- time.Now() }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.loop(ctx, time.Hour); close(done) }()
	defer func() { cancel(); <-done }()
	next := func(within time.Duration) time.Time {
		t.Helper()
		select {
		case at := <-probes:
			return at
		case <-time.After(within):
			t.Fatalf("no probe within %v", within)
			return time.Time{}
		}
	}

	// Woken: a round at once.
	woken := time.Now()
	l.wake()
	if d := next(time.Second).Sub(woken); d > 500*time.Millisecond {
		t.Errorf("woken, the probe came %v later", d)
	}

	svc := engine.Service{Index: 0, Addr: netip.MustParseAddrPort("192.0.2.10:80")}
	h.probed(svc, errors.New("connection refused"), time.Now())
	judged := time.Now()
	l.judgedDown()
	first := next(downProbeEvery + 2*time.Second)
	if d := first.Sub(judged); d < downProbeEvery-100*time.Millisecond {
		t.Errorf("probed %v after the judgement, want about %v", d, downProbeEvery)
	}
	// Still down after that probe: again downProbeEvery later, with no
	// judgement in between.
	if d := next(downProbeEvery + 2*time.Second).Sub(first); d < downProbeEvery-100*time.Millisecond {
		t.Errorf("probed again %v later, want about %v", d, downProbeEvery)
	}
	select {
	case at := <-probes:
		t.Errorf("an extra probe %v after the judgement", at.Sub(judged))
	default:
	}
}
