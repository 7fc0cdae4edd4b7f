// Package nstest gives integration tests network namespaces of their own:
// named uniquely for the test process, removed when the test ends,
// whatever its outcome, so that nothing a test does reaches the host's
// own network.
package nstest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/roottest"
	"github.com/synguard/synguard/lab"
	"github.com/synguard/synguard/lab/netns"
)

// createTimeout bounds the ip(8) commands that make a namespace.
const createTimeout = 30 * time.Second

var seq atomic.Int64

// New creates a namespace (loopback up) named prefix-PID-N and removes it
// at cleanup, taking its netfilter rules and links with it. It needs root
// (roottest.Require).
func New(t testing.TB, prefix string) *netns.NS {
	t.Helper()
	roottest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	ns, err := netns.Create(ctx, fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A test may have removed it already; gone is what cleanup wants.
		if err := ns.Delete(); err != nil && netns.Exists(ns.Name) {
			t.Errorf("remove test namespace %s: %v", ns.Name, err)
		}
	})
	return ns
}

// Addrs are one side's addresses on a Pair's link.
type Addrs struct{ V4, V6 netip.Addr }

// Pair makes two namespaces (New) joined by a veth pair, eth0 in each with
// MTU 1500, a's addresses on the first and b's on the second (as /24 and
// /64, without duplicate address detection), up and ready to carry
// traffic when it returns.
func Pair(t testing.TB, prefix string, a, b Addrs) (*netns.NS, *netns.NS) {
	t.Helper()
	nsA, nsB := New(t, prefix+"-a"), New(t, prefix+"-b")
	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	defer cancel()
	if err := netns.Run(ctx, "ip", "link", "add", "eth0", "netns", nsA.Name, "mtu", "1500",
		"type", "veth", "peer", "name", "eth0", "netns", nsB.Name, "mtu", "1500"); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		ns    *netns.NS
		addrs Addrs
	}{{nsA, a}, {nsB, b}} {
		for _, args := range [][]string{
			{"addr", "add", side.addrs.V4.String() + "/24", "dev", "eth0"},
			{"addr", "add", side.addrs.V6.String() + "/64", "dev", "eth0", "nodad"},
			{"link", "set", "eth0", "up"},
		} {
			if err := side.ns.Run(ctx, "ip", args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, ns := range []*netns.NS{nsA, nsB} {
		if err := lab.WaitLinkReady(ctx, ns, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	return nsA, nsB
}

// Listen opens a TCP listener on addr inside ns, closed when the test
// ends.
func Listen(t testing.TB, ns *netns.NS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ListenTCP opens a TCP listener on addr inside ns that accepts and closes
// connections until the test ends, and returns its address.
func ListenTCP(t testing.TB, ns *netns.NS, addr string) *net.TCPAddr {
	t.Helper()
	ln := Listen(t, ns, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}
