package cookies

import (
	"path/filepath"
	"testing"
	"time"
)

// probeSchedule is when a client whose cookie ACK went unanswered sends it
// again, after the first: its zero-window probes, which carry the same
// cookie, back off from a 200 ms timeout (Linux; the tail of a 15 s wait).
var probeSchedule = []time.Duration{0, 200 * time.Millisecond, 600 * time.Millisecond, 1400 * time.Millisecond,
	3 * time.Second, 6200 * time.Millisecond, 12600 * time.Millisecond}

// failoverCheck is a handshake that straddles a fail-over: gateway a makes
// the cookie at (real) time at, the client's ACK reaches gateway b, whose
// clock is skew ahead of a's, delay later, then again on probeSchedule. It
// returns how many of those the client sent before one validated, or -1.
func failoverCheck(a, b *Jar, bClock *fakeClock, at time.Time, delay, skew time.Duration) int {
	c := flow4.generate(a, Options{MSS: 1460, WindowScale: 7, SACKPermitted: true})
	for i, p := range probeSchedule {
		bClock.Set(at.Add(delay + p + skew))
		if _, ok := flow4.validate(b, c); ok {
			return i
		}
	}
	return -1
}

// TestFailoverClockSkew checks the clock tolerance docs/ha.md states for a
// gateway pair sharing a key file: with the standby's clock up to 10 s off
// the master's either way, every handshake whose cookie the master made
// and whose ACK reaches the standby up to 5 s later (a fail-over) is
// completed by the standby. A clock ahead costs nothing; a clock behind by
// s makes the cookies of the first s-minus-delay of each epoch wait for a
// retransmission, and only those. With the clocks a period apart it fails:
// the test can tell.
func TestFailoverClockSkew(t *testing.T) {
	t.Parallel()
	key := filepath.Join(t.TempDir(), "cookie.key")
	if err := WriteKeyFile(key); err != nil {
		t.Fatal(err)
	}
	aClock, bClock := newFakeClock(time.Time{}), newFakeClock(time.Time{})
	jar := func(c *fakeClock) *Jar {
		j, err := New(Config{KeyFile: key, Now: c.Now})
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	master, standby := jar(aClock), jar(bClock)
	period := DefaultPeriod
	first := epochStart(testEpoch) // testPeriod is the default period
	if testPeriod != period {
		t.Fatalf("testPeriod %v, want the default %v", testPeriod, period)
	}

	for _, skew := range []time.Duration{0, time.Second, -time.Second, 10 * time.Second, -10 * time.Second} {
		for _, delay := range []time.Duration{0, time.Second, 5 * time.Second} {
			retried := 0
			// Cookies made every 100 ms through two epochs.
			for at := first; at.Before(first.Add(2 * period)); at = at.Add(100 * time.Millisecond) {
				aClock.Set(at)
				n := failoverCheck(master, standby, bClock, at, delay, skew)
				phase := at.Sub(first) % period
				// The first ACK fails only on a standby still in the
				// epoch before the cookie's.
				late := phase+delay+skew < 0
				switch {
				case n < 0:
					t.Fatalf("skew %v, delay %v: cookie made %v into its epoch never validated on the standby", skew, delay, phase)
				case n > 0 && !late:
					t.Fatalf("skew %v, delay %v: cookie made %v into its epoch needed %d retransmissions, want none", skew, delay, phase, n)
				case n == 0 && late:
					t.Fatalf("skew %v, delay %v: cookie made %v into its epoch validated on a standby in the epoch before", skew, delay, phase)
				case n > 0:
					retried++
				}
			}
			if skew >= 0 && retried > 0 {
				t.Errorf("skew %v, delay %v: %d cookies needed a retransmission", skew, delay, retried)
			}
		}
	}

	// A standby a whole period behind never validates what the master made
	// in most of its epoch, however often the client retries.
	lost := 0
	for at := first; at.Before(first.Add(period)); at = at.Add(time.Second) {
		aClock.Set(at)
		if failoverCheck(master, standby, bClock, at, time.Second, -period) < 0 {
			lost++
		}
	}
	if lost < 30 {
		t.Errorf("a standby a period behind lost %d of 60 cookies, want most: the check cannot fail", lost)
	}
}
