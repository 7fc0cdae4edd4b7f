package poll

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	start := time.Now()
	if !Until(5*time.Second, func() bool { return n.Add(1) >= 3 }) {
		t.Fatal("Until gave up on a condition that held on the third check")
	}
	if got := n.Load(); got != 3 {
		t.Fatalf("checked %d times, want 3", got)
	}
	if el := time.Since(start); el >= 5*time.Second {
		t.Fatalf("returned after %v, not as soon as the condition held", el)
	}
}

func TestUntilGivesUpAtTheDeadline(t *testing.T) {
	var n atomic.Int32
	if Until(50*time.Millisecond, func() bool { n.Add(1); return false }) {
		t.Fatal("Until reported a condition that never held")
	}
	if n.Load() < 2 {
		t.Fatalf("checked %d times in 50 ms, want several", n.Load())
	}
}

func TestStaysFailsOnTheFirstLapse(t *testing.T) {
	var n atomic.Int32
	if Stays(5*time.Second, func() bool { return n.Add(1) < 3 }) {
		t.Fatal("Stays reported a condition that lapsed on the third check")
	}
	if got := n.Load(); got != 3 {
		t.Fatalf("checked %d times, want 3", got)
	}
	if !Stays(30*time.Millisecond, func() bool { return true }) {
		t.Fatal("Stays reported a lapse of a condition that always held")
	}
}
