package engine

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
)

// TestAttackInAlwaysMode: in always mode the state never switches, and
// the SYN rate alone starts and ends an attack. A rate flapping around
// the watermarks within the hold time stays one attack, whose totals
// count every SYN answered.
func TestAttackInAlwaysMode(t *testing.T) {
	h := autoHarness(t, ModeAlways)
	// SYNs per tick for a given rate per second.
	perTick := func(rate int) int { return rate * int(controlTick) / int(time.Second) }
	sent := 0
	tick := func(rate int) {
		for range perTick(rate) {
			h.handle(h.synFrom(sent), nf.Drop)
			sent++
		}
		h.send.take()
		h.clock.advance(controlTick)
		h.e.control(h.clock.now())
	}
	attackLines := func() (starts, ends []string) {
		for _, l := range h.events.take() {
			switch {
			case strings.HasPrefix(l, "attack_start"):
				starts = append(starts, l)
			case strings.HasPrefix(l, "attack_end"):
				ends = append(ends, l)
			}
		}
		return starts, ends
	}
	// Quiet, then a flood well above syn_rate_high (1000/s).
	for range 20 {
		tick(100)
	}
	quietSYNs := sent
	for range 30 {
		tick(3000)
	}
	// Flapping: above the low watermark (200/s) and below the high one,
	// then briefly below the low one, for less than the hold time (10 s).
	for range 5 {
		for range 10 {
			tick(600)
		}
		for range 10 {
			tick(100)
		}
	}
	starts, ends := attackLines()
	if len(starts) != 1 || len(ends) != 0 {
		t.Fatalf("flood and flapping: starts %q, ends %q; want one start, no end", starts, ends)
	}
	if !strings.Contains(starts[0], "syn_rate") {
		t.Errorf("start %q: want reason syn_rate", starts[0])
	}
	// Calm for longer than the hold time: the one end.
	for range 150 {
		tick(0)
	}
	starts, ends = attackLines()
	if len(starts) != 0 || len(ends) != 1 {
		t.Fatalf("after the calm: starts %q, ends %q; want just one end", starts, ends)
	}
	// Every SYN from the last quiet tick on counts, each answered once.
	attackSYNs := sent - quietSYNs
	for _, want := range []string{"peak=3000", "syns=" + strconv.Itoa(attackSYNs), "synacks=" + strconv.Itoa(attackSYNs)} {
		if !strings.Contains(ends[0], want) {
			t.Errorf("end %q lacks %s", ends[0], want)
		}
	}
}
