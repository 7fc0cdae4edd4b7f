package xdp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/packet"
)

// TestSamples: one SYN in SampleEvery that the program answers or drops
// reaches the sample ring, with its service, its frame as it came in
// and its weight: the SYNs since the previous sample (1 for the first).
func TestSamples(t *testing.T) { forKinds(t, testSamples) }

func testSamples(t *testing.T, h *harness) {
	r := openSamples(t, h)
	noSampleGap(t, h)
	const n = 4 * SampleEvery
	var frames [][]byte
	for i := range n {
		f := ether(rawSegment(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 40000), service4, uint32(i), 0, packet.SYN, linuxOpts(1460, 7), nil))
		frames = append(frames, bytes.Clone(f))
		if v, _ := h.run(f); v != vTX {
			t.Fatalf("SYN %d: %v, want tx", i, v)
		}
	}
	if f := r.Fill(); f <= 0 || f >= 1 {
		t.Errorf("ring %.4f full with %d samples in it", f, n/SampleEvery)
	}
	got := drainSamples(t, r)
	if f := r.Fill(); f != 0 {
		t.Errorf("ring %.4f full once drained", f)
	}
	if len(got) != n/SampleEvery {
		t.Fatalf("%d samples of %d SYNs, want %d", len(got), n, n/SampleEvery)
	}
	for i, s := range got {
		want := uint32(SampleEvery)
		if i == 0 {
			want = 1 // the CPU's first SYN
		}
		if s.Weight != want {
			t.Errorf("sample %d weighs %d SYNs, want %d", i, s.Weight, want)
		}
		if s.Service != 0 {
			t.Errorf("sample of service %d, want 0", s.Service)
		}
		found := false
		for _, f := range frames {
			found = found || bytes.Equal(s.Frame, f[:min(len(f), sampleBytes)])
		}
		if !found {
			t.Errorf("sample %x is none of the SYNs sent, as they came in", s.Frame)
		}
	}
}

// TestSampleReaderWaitsInThePoller: a Read on an empty ring waits in the
// network poller, with no goroutine in a system call, and returns the
// sample the program submits meanwhile; a deadline ends the wait, and so
// does Close.
func TestSampleReaderWaitsInThePoller(t *testing.T) { forKinds(t, testSampleReaderWaits) }

type readResult struct {
	s   Sample
	err error
}

// reading is a Read in a goroutine of its own, known by its ID.
type reading struct {
	id     string // goroutineID
	result chan readResult
}

func testSampleReaderWaits(t *testing.T, h *harness) {
	r := openSamples(t, h) // the first SYN on a CPU is sampled
	read := func() reading {
		started := make(chan string)
		c := reading{result: make(chan readResult, 1)}
		go func() {
			started <- goroutineID()
			s, err := r.Read()
			s.Frame = bytes.Clone(s.Frame)
			c.result <- readResult{s, err}
		}()
		c.id = <-started
		return c
	}
	// waitParked waits until the Read's goroutine waits in the network
	// poller, and then checks for a while that it stays there, never in
	// a system call. Only its own state counts: other tests' goroutines
	// come and go meanwhile.
	waitParked := func(c reading) {
		t.Helper()
		if !poll.Until(5*time.Second, func() bool { return goroutineState(c.id) == "IO wait" }) {
			t.Fatalf("the Read never waited in the poller (%q)", goroutineState(c.id))
		}
		if !poll.Stays(200*time.Millisecond, func() bool { return goroutineState(c.id) == "IO wait" }) {
			t.Fatalf("the waiting Read left the poller (%q)", goroutineState(c.id))
		}
		if len(c.result) != 0 {
			t.Fatalf("Read returned on an empty ring: %+v", <-c.result)
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
	case got := <-c.result:
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
	case got := <-read().result:
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
	case got := <-c.result:
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

// goroutineID is the calling goroutine's "goroutine N ", as its stack
// dump starts (goroutineState).
func goroutineID() string {
	buf := make([]byte, 64)
	return "goroutine " + string(bytes.Fields(buf[:runtime.Stack(buf, false)])[1]) + " "
}

// goroutineState is the state the runtime gives the goroutine whose
// stack dump starts with id ("goroutine N "), as in "IO wait" or
// "syscall"; empty when there is no such goroutine.
func goroutineState(id string) string {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if rest, ok := strings.CutPrefix(g, id+"["); ok {
			state, _, _ := strings.Cut(rest, "]")
			state, _, _ = strings.Cut(state, ",") // ", 2 minutes"
			return state
		}
	}
	return ""
}

// TestSampleRingWraps: rounds of samples that together pass the end of
// the ring more than once all arrive, in order, each the SYN it sampled.
func TestSampleRingWraps(t *testing.T) { forKinds(t, testSampleRingWraps) }

func testSampleRingWraps(t *testing.T, h *harness) {
	r := openSamples(t, h)
	noSampleGap(t, h)
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
		want := first
		for _, s := range drainSamples(t, r) {
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

// TestSamplesPastTheGap: within SampleGap of a CPU's last sample no SYN
// is sampled, and the next one after it weighs every SYN since, so the
// counts by source keep the flood's size however few samples it gets.
func TestSamplesPastTheGap(t *testing.T) { forKinds(t, testSamplesPastTheGap) }

func testSamplesPastTheGap(t *testing.T, h *harness) {
	r := openSamples(t, h)
	// Long enough that the burst below fits in it on a loaded machine.
	const gap = 500 * time.Millisecond
	if err := h.p.setSampleGap(gap); err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("198.51.100.9:40000")
	send := func(n int) {
		t.Helper()
		for i := range n {
			if v, _ := h.run(ether(rawSegment(src, service4, uint32(i), 0, packet.SYN, linuxOpts(1460, 7), nil))); v != vTX {
				t.Fatalf("SYN %d: %v, want tx", i, v)
			}
		}
	}
	start := time.Now()
	const burst = 5 * SampleEvery
	send(burst)
	if took := time.Since(start); took >= gap {
		t.Fatalf("%d SYNs took %v, longer than the gap of %v the test needs them inside", burst, took, gap)
	}
	got := drainSamples(t, r)
	if len(got) != 1 || got[0].Weight != 1 {
		t.Fatalf("%d SYNs within the gap: samples %+v, want one, the first, weighing 1", burst, got)
	}
	// The next SYN whose turn it is, past the gap, is sampled.
	poll.Must(t, 5*time.Second, "the gap never passed", func() bool { return time.Since(start) > gap })
	send(1)
	got = drainSamples(t, r)
	if len(got) != 1 || got[0].Weight != burst {
		t.Fatalf("a SYN past the gap: samples %+v, want one weighing %d", got, burst)
	}
}

// noSampleGap lets the harness program sample every SampleEvery-th SYN
// however close together: tests send them faster than SampleGap allows.
func noSampleGap(t *testing.T, h *harness) {
	t.Helper()
	if err := h.p.setSampleGap(0); err != nil {
		t.Fatal(err)
	}
}

// openSamples opens the harness program's sample ring for the test, and
// keeps the test on one CPU: each CPU counts toward its own next sample,
// and BPF_PROG_TEST_RUN runs on the caller's, so a thread that migrated
// would start a second count and sample more.
func openSamples(t *testing.T, h *harness) *SampleReader {
	t.Helper()
	r, err := h.p.Samples()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	onOneCPU(t)
	return r
}

// drainSamples reads what the ring holds, without waiting (a deadline
// already past), the frames copied.
func drainSamples(t *testing.T, r *SampleReader) []Sample {
	t.Helper()
	r.SetDeadline(time.Unix(1, 0))
	var got []Sample
	for {
		s, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		s.Frame = bytes.Clone(s.Frame)
		got = append(got, s)
	}
}
