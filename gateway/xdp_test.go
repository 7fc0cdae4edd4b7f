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
