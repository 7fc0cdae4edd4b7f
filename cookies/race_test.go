//go:build race

package cookies

// raceEnabled reports whether the race detector is on. It makes the
// package's arithmetic some twenty times slower, so the two long sweeps
// (TestRoundTrip, TestForgery) thin themselves out under it.
const raceEnabled = true
