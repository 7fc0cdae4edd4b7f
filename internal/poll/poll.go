// Package poll waits on conditions in tests, so that no test sleeps a
// fixed time and hopes: it checks what it waits for, often, until a
// deadline.
package poll

import (
	"testing"
	"time"
)

// Interval is how often Until checks its condition.
const Interval = 10 * time.Millisecond

// Until checks cond every Interval until it holds or d passes, and reports
// whether it held. cond is checked once more at the deadline, so a
// condition met just in time counts.
func Until(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(min(Interval, time.Until(deadline)+time.Millisecond))
	}
}

// Must is Until that fails t with the message what when cond does not
// hold within d.
func Must(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Until(d, cond) {
		t.Fatalf("after %v: %s", d, what)
	}
}

// Stays reports whether cond holds at every check for the whole of d: the
// way to assert that something does not happen (no drop, no reset) for a
// while, checked continuously rather than once after a sleep.
func Stays(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			return false
		}
		time.Sleep(min(Interval, time.Until(deadline)+time.Millisecond))
	}
	return cond()
}
