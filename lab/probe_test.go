package lab_test

import (
	"testing"
	"time"

	"github.com/synguard/synguard/lab"
)

// A connect that got no answer has retransmitted its SYN at 1 s, 3 s,
// 7 s, ...: Linux's initial timeout, doubling.
func TestSYNRetransmitsWithin(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{999 * time.Millisecond, 0},
		{time.Second, 1},
		{2999 * time.Millisecond, 1},
		{3 * time.Second, 2},
		{5 * time.Second, 2},
		{7 * time.Second, 3},
		{15 * time.Second, 4},
		{-time.Second, 0},
	} {
		if got := lab.SYNRetransmitsWithin(tt.d); got != tt.want {
			t.Errorf("SYNRetransmitsWithin(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}
