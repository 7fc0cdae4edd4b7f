package telemetry

import (
	"bytes"
	"encoding/json"
)

// RecentEvents is how many of the latest log lines the limiter keeps for
// the dashboard and /api/stats.
const RecentEvents = 20

// Bounds of a kept line. Slots start at recentSlotCap bytes, enough for
// nearly every event, and grow once to the longest line seen; a line
// longer than recentLineMax (no event synguard logs comes near it) is
// not kept, so the ring's memory is bounded whatever is logged.
const (
	recentSlotCap = 1 << 10
	recentLineMax = 16 << 10
)

// eventRing holds the latest lines, each copied into a fixed slot: adding
// one allocates nothing once its slot has grown to the line's length.
// Its owner serialises access.
type eventRing struct {
	slots [RecentEvents][]byte
	next  int // the slot the next line goes to
	n     int // lines held, at most RecentEvents
}

func newEventRing() *eventRing {
	r := &eventRing{}
	for i := range r.slots {
		r.slots[i] = make([]byte, 0, recentSlotCap)
	}
	return r
}

// add keeps a copy of line, without its trailing newline, in place of
// the oldest.
func (r *eventRing) add(line []byte) {
	line = bytes.TrimRight(line, "\n")
	if len(line) == 0 || len(line) > recentLineMax {
		return
	}
	r.slots[r.next] = append(r.slots[r.next][:0], line...)
	r.next = (r.next + 1) % RecentEvents
	r.n = min(r.n+1, RecentEvents)
}

// lines returns copies of the lines held, newest first.
func (r *eventRing) lines() [][]byte {
	out := make([][]byte, 0, r.n)
	for i := 1; i <= r.n; i++ {
		s := r.slots[(r.next-i+RecentEvents)%RecentEvents]
		out = append(out, bytes.Clone(s))
	}
	return out
}

// Recent returns the latest log lines that passed the limiter, newest
// first, at most RecentEvents, as JSON objects. The periodic stats lines
// are left out: one per service every interval would crowd out the
// events an operator looks for. A line that is not a JSON object (no
// synguard event, but a writer shared with something else) is left out
// too, so the result always encodes.
func (l *LineLimiter) Recent() []json.RawMessage {
	l.mu.Lock()
	lines := l.recent.lines()
	l.mu.Unlock()
	out := make([]json.RawMessage, 0, len(lines))
	for _, b := range lines {
		if len(b) > 0 && b[0] == '{' && json.Valid(b) {
			out = append(out, b)
		}
	}
	return out
}
