package gateway

import (
	"testing"
	"time"

	"github.com/synguard/synguard/cookies"
)

// The fast path derives keys again only when the clock leaves the epoch
// they were derived for; within it they are the jar's, unchanged.
func TestFastPathKeysCover(t *testing.T) {
	jar, err := cookies.New(cookies.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var f fastPath
	at := time.Unix(1_800_000_000, 0) // an epoch boundary of the default period
	if f.keysCover(at) {
		t.Fatal("no keys yet, yet covered")
	}
	f.keys = jar.EpochKeys(at)
	for _, tt := range []struct {
		at   time.Time
		want bool
	}{
		{at, true},
		{at.Add(cookies.DefaultPeriod - time.Nanosecond), true},
		{at.Add(cookies.DefaultPeriod), false},
		{at.Add(-time.Nanosecond), false},
	} {
		if got := f.keysCover(tt.at); got != tt.want {
			t.Errorf("keysCover(%v) = %v, want %v", tt.at.Sub(at), got, tt.want)
		}
		if tt.want && jar.EpochKeys(tt.at) != f.keys {
			t.Errorf("at %v the jar's keys differ from the cached ones", tt.at.Sub(at))
		}
	}
}

// The samples reader pauses so that the ring fills to half at the rate
// the last pause showed, within [1 ms, samplePoll].
func TestNextSamplePoll(t *testing.T) {
	for _, tt := range []struct {
		last time.Duration
		fill float64
		want time.Duration
	}{
		{samplePoll, 0, samplePoll},     // samples came after the fill was read
		{samplePoll, 0.01, samplePoll},  // slow: the longest pause
		{samplePoll, 0.5, samplePoll},   // half full: as it was
		{samplePoll, 1, samplePoll / 2}, // full: samples were lost
		{4 * time.Millisecond, 0.8, 2500 * time.Microsecond},
		{2 * time.Millisecond, 1, time.Millisecond}, // no shorter than 1 ms
		{time.Millisecond, 0.1, 5 * time.Millisecond},
	} {
		if got := nextSamplePoll(tt.last, tt.fill); got != tt.want {
			t.Errorf("nextSamplePoll(%v, %.2f) = %v, want %v", tt.last, tt.fill, got, tt.want)
		}
	}
}
