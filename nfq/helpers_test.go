package nfq_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/lab/netns"
	"github.com/synguard/synguard/nfq"
)

// iptables runs iptables (or ip6tables with v6) inside ns.
func iptables(t *testing.T, ns *netns.NS, v6 bool, args ...string) {
	t.Helper()
	cmd := "iptables"
	if v6 {
		cmd = "ip6tables"
	}
	if err := ns.Run(context.Background(), cmd, args...); err != nil {
		t.Fatal(err)
	}
}

// openQueue opens a queue inside ns and closes it in cleanup.
func openQueue(t *testing.T, ns *netns.NS, cfg nfq.Config) *nfq.Queue {
	t.Helper()
	var q *nfq.Queue
	if err := ns.Do(func() (err error) {
		q, err = nfq.Open(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return q
}

// runQueue runs q with h until the test ends (or stop is called) and
// checks that Run returned nil.
func runQueue(t *testing.T, q *nfq.Queue, h nfq.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx, h) }()
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return 5s after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

// dialTCP connects from inside ns.
func dialTCP(ns *netns.NS, addr *net.TCPAddr, timeout time.Duration) error {
	return ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr.String(), timeout)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// udpSender returns a UDP socket opened inside ns.
func udpSender(t *testing.T, ns *netns.NS) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// kernelStats returns the kernel's line for queue in ns.
func kernelStats(t *testing.T, ns *netns.NS, queue uint16) (nfq.KernelQueueStats, bool) {
	t.Helper()
	var all []nfq.KernelQueueStats
	if err := ns.Do(func() (err error) {
		all, err = nfq.KernelStats()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Queue == queue {
			return s, true
		}
	}
	return nfq.KernelQueueStats{}, false
}

// segment is what the tests read from a queued packet.
type segment struct {
	version int
	proto   uint8
	dport   uint16
	syn     bool // TCP SYN without ACK
}

// parse reads the IP version, the transport protocol and the destination
// port of a packet without extension headers or IPv4 options.
func parse(p []byte) (segment, error) {
	if len(p) < 1 {
		return segment{}, errors.New("empty packet")
	}
	var s segment
	var l4 []byte
	switch s.version = int(p[0] >> 4); s.version {
	case 4:
		if len(p) < 20 {
			return s, errors.New("short IPv4 header")
		}
		ihl := int(p[0]&0x0f) * 4
		s.proto, l4 = p[9], p[ihl:]
	case 6:
		if len(p) < 40 {
			return s, errors.New("short IPv6 header")
		}
		s.proto, l4 = p[6], p[40:]
	default:
		return s, fmt.Errorf("IP version %d", s.version)
	}
	if len(l4) < 4 {
		return s, errors.New("short transport header")
	}
	s.dport = binary.BigEndian.Uint16(l4[2:4])
	if s.proto == 6 {
		if len(l4) < 20 {
			return s, errors.New("short TCP header")
		}
		s.syn = l4[13]&0x12 == 0x02
	}
	return s, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || strings.Contains(fmt.Sprint(err), "timeout")
}
