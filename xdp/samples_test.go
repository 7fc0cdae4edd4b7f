package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/packet"
)

// TestSampleReaderWaitsInThePoller: a Read on an empty ring waits in the
// network poller, with no goroutine in a system call, and returns the
// sample the program submits meanwhile; a deadline ends the wait, and so
// does Close.
func TestSampleReaderWaitsInThePoller(t *testing.T) { forKinds(t, testSampleReaderWaits) }

type readResult struct {
	s   Sample
	err error
}

func testSampleReaderWaits(t *testing.T, h *harness) {
	r, err := h.p.Samples()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	onOneCPU(t) // the first SYN on a CPU is sampled
	read := func() <-chan readResult {
		c := make(chan readResult, 1)
		go func() {
			s, err := r.Read()
			s.Frame = bytes.Clone(s.Frame)
			c <- readResult{s, err}
		}()
		return c
	}
	// waitParked waits until one goroutine more than before waits, and
	// then checks for a while that none more than before is in a system
	// call.
	waitParked := func(c <-chan readResult) {
		t.Helper()
		syscalls, waiting := schedCounts()
		if !poll.Until(5*time.Second, func() bool { _, w := schedCounts(); return w > waiting }) {
			t.Fatal("the Read never waited in the poller")
		}
		if !poll.Stays(200*time.Millisecond, func() bool { s, _ := schedCounts(); return s <= syscalls }) {
			t.Fatal("a goroutine is in a system call while the Read waits")
		}
		if len(c) != 0 {
			t.Fatalf("Read returned on an empty ring: %+v", <-c)
		}
	}

	c := read()
	waitParked(c)
	syn := ether(rawSegment(netip.MustParseAddrPort("198.51.100.9:40000"), service4, 9, 0, packet.SYN, linuxOpts(1460, 7), nil))
	want := bytes.Clone(syn[:min(len(syn), sampleBytes)])
	if v, _ := h.run(syn); v != vTX {
		t.Fatalf("SYN: %v, want tx", v)
	}
	select {
	case got := <-c:
		if got.err != nil {
			t.Fatal(got.err)
		}
		if got.s.Service != 0 || !bytes.Equal(got.s.Frame, want) {
			t.Fatalf("sample of service %d, frame %x; want service 0, frame %x", got.s.Service, got.s.Frame, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting Read did not return the sample submitted")
	}

	r.SetDeadline(time.Now().Add(50 * time.Millisecond))
	select {
	case got := <-read():
		if !errors.Is(got.err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past its deadline: %v, want %v", got.err, os.ErrDeadlineExceeded)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read waited past its deadline")
	}

	r.SetDeadline(time.Time{})
	c = read()
	waitParked(c)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-c:
		if !errors.Is(got.err, os.ErrClosed) {
			t.Fatalf("Read of a closed reader: %v, want %v", got.err, os.ErrClosed)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close left a Read waiting")
	}
	if f := r.Fill(); f != 0 {
		t.Errorf("a closed reader's ring is %.4f full", f)
	}
}

// schedCounts is how many goroutines are in a system call (or cgo), and
// how many wait, as the runtime counts them.
func schedCounts() (syscalls, waiting uint64) {
	s := []metrics.Sample{
		{Name: "/sched/goroutines/not-in-go:goroutines"},
		{Name: "/sched/goroutines/waiting:goroutines"},
	}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

// TestSampleRingWraps: rounds of samples that together pass the end of
// the ring more than once all arrive, in order, each the SYN it sampled.
func TestSampleRingWraps(t *testing.T) { forKinds(t, testSampleRingWraps) }

func testSampleRingWraps(t *testing.T, h *harness) {
	r, err := h.p.Samples()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	onOneCPU(t)
	// Each round fills about half the 1 MiB ring (144-byte records).
	const rounds, perRound = 3, 3600
	src := netip.MustParseAddrPort("198.51.100.9:40000")
	seqAt := 14 + 20 + 4 // in an IPv4 frame without options
	next := uint32(0)
	for round := range rounds {
		first := next
		for range perRound * SampleEvery {
			syn := ether(rawSegment(src, service4, next, 0, packet.SYN, linuxOpts(1460, 7), nil))
			if v, _ := h.run(syn); v != vTX {
				t.Fatalf("SYN %d: %v, want tx", next, v)
			}
			next++
		}
		r.SetDeadline(time.Unix(1, 0))
		want := first
		for {
			s, err := r.Read()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := binary.BigEndian.Uint32(s.Frame[seqAt:]); got != want {
				t.Fatalf("round %d: sample of SYN %d, want %d", round, got, want)
			}
			want += SampleEvery
		}
		if want != next {
			t.Fatalf("round %d: samples up to SYN %d of %d", round, want, next)
		}
	}
}
