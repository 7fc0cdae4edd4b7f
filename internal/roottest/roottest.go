// Package roottest gates tests that need root and the kernel's netfilter.
//
// Such tests are skipped on a developer's unprivileged run, but in CI
// (CI set in the environment) a missing privilege is a failure: a skipped
// integration test is not a passing one.
package roottest

import (
	"os"
	"testing"
)

// Require skips t when not running as root, or fails it under CI.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root; CI must run the suite as root")
	}
	t.Skip("needs root (network namespaces, netfilter)")
}
