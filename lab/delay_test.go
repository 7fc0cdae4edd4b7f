package lab

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeLink is both ends of a delay line in memory: readFrame hands out
// the frames sent on in, noting when; writeFrame records what the line
// sent, and when, after waiting for gate when there is one.
type fakeLink struct {
	in   chan []byte
	gate chan struct{}
	fail bool // writeFrame fails

	mu      sync.Mutex
	readAt  []int64
	written [][]byte
	sentAt  []int64
}

func newFakeLink() *fakeLink { return &fakeLink{in: make(chan []byte, 1024)} }

var errClosed = errors.New("closed")

func (f *fakeLink) readFrame(b []byte) (int, error) {
	frame, ok := <-f.in
	if !ok {
		return 0, errClosed
	}
	f.mu.Lock()
	f.readAt = append(f.readAt, monotonicNow())
	f.mu.Unlock()
	copy(b, frame)
	return len(frame), nil
}

func (f *fakeLink) writeFrame(b []byte) error {
	if f.gate != nil {
		<-f.gate
	}
	if f.fail {
		return errClosed
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.written = append(f.written, bytes.Clone(b))
	f.sentAt = append(f.sentAt, monotonicNow())
	return nil
}

// run starts l between f's two ends and returns a function that ends the
// input and waits for both goroutines.
func run(l *delayLine, f *fakeLink) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.receive(f) }()
	go func() { defer wg.Done(); l.send(f) }()
	return func() { close(f.in); wg.Wait() }
}

func frame(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	copy(b, fmt.Sprintf("frame %d", i))
	return b
}

// Every frame comes out whole, in the order it went in, and none before
// the delay since it was read.
func TestDelayLineKeepsOrderAndDelays(t *testing.T) {
	const n, delay = 300, 3 * time.Millisecond
	l := newDelayLine(delay, n, 256)
	f := newFakeLink()
	wait := run(l, f)
	for i := range n {
		f.in <- frame(i, 60+i%190)
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // some frames find the line idle
		}
	}
	wait()
	if len(f.written) != n {
		t.Fatalf("%d frames out of %d", len(f.written), n)
	}
	for i, b := range f.written {
		if !bytes.Equal(b, frame(i, 60+i%190)) {
			t.Fatalf("frame %d out of order or changed: %q", i, b[:12])
		}
		if early := time.Duration(f.readAt[i] + int64(delay) - f.sentAt[i]); early > 0 {
			t.Errorf("frame %d sent %v before its delay was up", i, early)
		}
	}
	if s := l.stats(); s != (RelayStats{Forwarded: n}) {
		t.Errorf("stats %+v, want %d forwarded and nothing dropped", s, n)
	}
}

// Past its slots the line drops, and counts, rather than grow; the frames
// it kept still go out.
func TestDelayLineDropsPastItsBound(t *testing.T) {
	const slots, n = 4, 10
	l := newDelayLine(time.Microsecond, slots, 64)
	f := newFakeLink()
	// The first frame's write waits for the gate, holding its slot; the
	// next three fill the others and the rest find none.
	f.gate = make(chan struct{})
	wait := run(l, f)
	for i := range n {
		f.in <- frame(i, 64)
	}
	// Wait for the reader to have taken every frame: the channel is empty
	// and the dropped ones are counted.
	deadline := time.Now().Add(5 * time.Second)
	for l.stats().QueueFull < n-slots && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(f.gate)
	wait()
	if s := l.stats(); s != (RelayStats{Forwarded: slots, QueueFull: n - slots}) {
		t.Fatalf("stats %+v, want %d forwarded and %d dropped for a full queue", s, slots, n-slots)
	}
	for i, b := range f.written {
		if !bytes.Equal(b, frame(i, 64)) {
			t.Errorf("kept frame %d is %q", i, b[:12])
		}
	}
}

// A frame larger than a slot is dropped and counted, not cut and sent;
// the slot serves the next frame.
func TestDelayLineDropsOversizeFrames(t *testing.T) {
	l := newDelayLine(time.Microsecond, 3, 100)
	f := newFakeLink()
	wait := run(l, f)
	f.in <- frame(1, 100)
	f.in <- frame(2, 101)
	f.in <- frame(3, 50)
	wait()
	if s := l.stats(); s != (RelayStats{Forwarded: 2, Oversize: 1}) {
		t.Fatalf("stats %+v", s)
	}
	if len(f.written) != 2 || !bytes.Equal(f.written[0], frame(1, 100)) || !bytes.Equal(f.written[1], frame(3, 50)) {
		t.Fatalf("written %d frames", len(f.written))
	}
}

// Frames the other link refuses are counted, and the line goes on.
func TestDelayLineCountsSendErrors(t *testing.T) {
	l := newDelayLine(time.Microsecond, 8, 64)
	f := newFakeLink()
	f.fail = true
	wait := run(l, f)
	for i := range 5 {
		f.in <- frame(i, 64)
	}
	wait()
	if s := l.stats(); s != (RelayStats{SendErrors: 5}) || s.Dropped() != 5 {
		t.Fatalf("stats %+v", s)
	}
}

// Once stopped, the line sends nothing more, and what waits is dropped
// without waiting out its delay.
func TestDelayLineStop(t *testing.T) {
	l := newDelayLine(time.Hour, 8, 64)
	f := newFakeLink()
	wait := run(l, f)
	f.in <- frame(0, 64)
	for len(f.in) > 0 {
		time.Sleep(time.Millisecond)
	}
	l.stop()
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a stopped line still waits")
	}
	if len(f.written) != 0 {
		t.Fatalf("a stopped line sent %d frames", len(f.written))
	}
}

// The first frame's sleep may already be under way when stop comes: it
// then waits out that frame's delay (here short) and sends nothing.
func TestDelayLineStopDuringDelay(t *testing.T) {
	l := newDelayLine(50*time.Millisecond, 8, 64)
	f := newFakeLink()
	wait := run(l, f)
	f.in <- frame(0, 64)
	f.in <- frame(1, 64)
	for len(f.in) > 0 {
		time.Sleep(time.Millisecond)
	}
	l.stop()
	wait()
	if len(f.written) != 0 {
		t.Fatalf("a stopped line sent %d frames", len(f.written))
	}
}

func TestStartRelayRejects(t *testing.T) {
	for _, tt := range []struct {
		delay time.Duration
		a     string
		want  string
	}{
		{0, "lo", "delay 0s outside"},
		{-time.Millisecond, "lo", "outside"},
		{MaxRelayDelay + 1, "lo", "outside"},
		{time.Millisecond, "no-such-link", "no-such-link"},
	} {
		r, err := StartRelay(nil, tt.a, "lo", tt.delay)
		if err == nil {
			r.Close()
			t.Errorf("StartRelay(%s, %v) did not fail", tt.a, tt.delay)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("StartRelay(%s, %v): %v, want %q", tt.a, tt.delay, err, tt.want)
		}
	}
}

// nullLink hands out the same frame, stop times, and discards what is
// sent; at most cap(tokens) frames are in the line at once.
type nullLink struct {
	frame  []byte
	n      int
	stop   int
	tokens chan struct{}
}

func (f *nullLink) readFrame(b []byte) (int, error) {
	if f.n == f.stop {
		return 0, errClosed
	}
	f.n++
	<-f.tokens
	return copy(b, f.frame), nil
}

func (f *nullLink) writeFrame([]byte) error {
	f.tokens <- struct{}{}
	return nil
}

// A frame costs no allocation on its way through the line.
func BenchmarkDelayLine(b *testing.B) {
	const slots = 1024
	l := newDelayLine(time.Nanosecond, slots, 2048)
	// A slot is taken before a frame is read and freed after its write:
	// one more for the reader waiting, one for the sender freeing.
	link := &nullLink{frame: make([]byte, 1514), stop: b.N, tokens: make(chan struct{}, slots-2)}
	for range slots - 2 {
		link.tokens <- struct{}{}
	}
	b.ReportAllocs()
	b.SetBytes(1514)
	b.ResetTimer()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.receive(link) }()
	go func() { defer wg.Done(); l.send(link) }()
	wg.Wait()
	if s := l.stats(); s != (RelayStats{Forwarded: uint64(b.N)}) {
		b.Fatalf("stats %+v for %d frames", s, b.N)
	}
}
