package nstest

import (
	"testing"

	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// TCPExt reads ns's TcpExt counters (lab.TCPExt), failing t if it cannot.
func TCPExt(t testing.TB, ns *netns.NS) map[string]uint64 {
	t.Helper()
	c, err := lab.TCPExt(ns)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
