package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/telemetry"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// statusSource is a telemetry source whose figures a test sets; it
// reports ended attacks and XDP actions too, as the gateway's does.
type statusSource struct {
	mu       sync.Mutex
	services []telemetry.ServiceCounters
	queues   []telemetry.QueueCounters
	xdp      map[string]uint64
	ended    map[string][]telemetry.Attack
}

func (s *statusSource) ServiceCounters() []telemetry.ServiceCounters {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]telemetry.ServiceCounters, len(s.services))
	for i, sc := range s.services {
		sc.Counters = maps.Clone(sc.Counters)
		out[i] = sc
	}
	return out
}

func (s *statusSource) QueueCounters() []telemetry.QueueCounters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]telemetry.QueueCounters(nil), s.queues...)
}

func (s *statusSource) XDPActions() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.xdp)
}

func (s *statusSource) Attacks(int) map[string][]telemetry.Attack {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.ended)
}

// grow applies one second of traffic to service i's counters.
func (s *statusSource) grow(i int, d map[string]uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range d {
		s.services[i].Counters[k] += v
	}
}

// statusServer serves /api/stats, through telemetry's own handler, for a
// source after two samples two seconds apart. second changes the source's
// figures between the samples.
func statusServer(t *testing.T, src *statusSource, second func(now time.Time)) *httptest.Server {
	t.Helper()
	start := time.Date(2026, 3, 1, 11, 58, 0, 0, time.UTC)
	now := start
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	tel := telemetry.New(telemetry.Config{Source: src, Now: clock})
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	tel.Sample()
	// Two seconds: the rates are halves of the growth, some of them
	// fractions.
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if second != nil {
		second(clock())
	}
	tel.Sample()
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func counters(kv ...any) map[string]uint64 {
	m := map[string]uint64{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = uint64(kv[i+1].(int))
	}
	return m
}

// incidentSource: one service under a concentrated flood with its backend
// resetting, one quiet with its backend up, one whose backend has no
// verdict yet; two queues, XDP answering.
func incidentSource() (*statusSource, func(now time.Time)) {
	src := &statusSource{
		services: []telemetry.ServiceCounters{
			{Service: "203.0.113.10:80", Mode: "cookie", Counters: counters(
				telemetry.CounterSYNReceived, 2000000, telemetry.CounterSYNACKSent, 1999000,
				telemetry.CounterCookieValid, 500, telemetry.CounterCookieInvalid, 1200, telemetry.CounterHandedOff, 400,
				telemetry.CounterBackendReset, 100), HalfOpen: 0, Pending: 3},
			{Service: "[2001:db8::10]:443", Mode: "passthrough", Counters: counters(
				telemetry.CounterSYNReceived, 4000, telemetry.CounterHandedOff, 0), HalfOpen: 17},
			{Service: "192.0.2.25:25", Mode: "off", Counters: counters(telemetry.CounterSYNReceived, 9)},
		},
		queues: []telemetry.QueueCounters{{Queue: 0, Kind: telemetry.QueueSYN, Received: 5000000, KernelDrops: 1234}, {Queue: 1, Kind: telemetry.QueueSYN, Received: 4900000},
			{Queue: 2, Kind: telemetry.QueueCompletion, Received: 1200}, {Queue: 3, Kind: telemetry.QueueCompletion, Received: 1100}},
		xdp: map[string]uint64{"tx": 1500000, "drop": 1200, "pass": 9000},
	}
	return src, func(now time.Time) {
		src.grow(0, counters(telemetry.CounterSYNReceived, 30112, telemetry.CounterSYNACKSent, 30100,
			telemetry.CounterCookieValid, 31, telemetry.CounterCookieInvalid, 7, telemetry.CounterBackendReset, 30))
		src.grow(1, counters(telemetry.CounterSYNReceived, 12, telemetry.CounterHandedOff, 12))
		src.mu.Lock()
		defer src.mu.Unlock()
		src.queues[0].Received += 30200
		src.queues[1].Received += 9
		src.xdp["tx"] += 29000
		src.services[0].Backend = telemetry.Backend{Up: false, Reason: "resets", Since: now.Add(-75 * time.Second), MSS: 1460, WindowScale: 7, SACK: true, Options: "learned"}
		src.services[0].Attack = &telemetry.Attack{
			Started: now.Add(-41 * time.Second), Reason: "syn_rate", PeakSYNRate: 30112,
			SYNs: 1012345, HandedOff: 0, Completion: 0.0004,
			TopSources: []telemetry.SourceCount{{Prefix: "198.18.7.0/24", SYNs: 1009920}, {Prefix: "198.51.100.0/24", SYNs: 412, Completed: 410}},
			Spread:     0.002,
			TopShare:   0.998,
		}
		src.services[1].Backend = telemetry.Backend{Up: true, Reason: "probe", Since: now.Add(-time.Hour), MSS: 1440, WindowScale: -1, Options: "fixed"}
		src.services[1].Attack = &telemetry.Attack{Started: now.Add(-3 * time.Second), Reason: "half_open", PeakSYNRate: 12, SYNs: 40}
	}
}

func TestStatusGolden(t *testing.T) {
	tests := []struct {
		name string
		src  func() (*statusSource, func(time.Time))
	}{
		{"incident", incidentSource},
		{"quiet", func() (*statusSource, func(time.Time)) {
			src := &statusSource{
				services: []telemetry.ServiceCounters{{Service: "203.0.113.10:80", Mode: "passthrough", Counters: counters(telemetry.CounterSYNReceived, 100)}},
				queues:   []telemetry.QueueCounters{{Queue: 7, Kind: telemetry.QueueSYN, Received: 100}, {Queue: 8, Kind: telemetry.QueueCompletion, Received: 40}},
			}
			return src, func(now time.Time) {
				src.grow(0, counters(telemetry.CounterSYNReceived, 3))
				src.mu.Lock()
				defer src.mu.Unlock()
				src.queues[0].Received += 3
				src.services[0].Backend = telemetry.Backend{Up: true, Reason: "probe", Since: now.Add(-time.Minute)}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, second := tt.src()
			addr := statusServer(t, src, second).Listener.Addr().String()
			var out bytes.Buffer
			st := statusView{addr: addr, client: http.DefaultClient, loc: time.UTC}
			if err := st.once(context.Background(), &out); err != nil {
				t.Fatal(err)
			}
			// The test server's port changes from run to run.
			got := strings.ReplaceAll(out.String(), addr, "127.0.0.1:9847")
			golden(t, filepath.Join("testdata", "status_"+tt.name+".golden"), got)
		})
	}
}

// golden compares got with the file at path, or rewrites it with -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to write it)", err, t.Name())
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s\ngot:\n%s", path, diff, got)
	}
}

// syncBuffer is a bytes.Buffer safe to read while the view writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// watching is a watch loop running in the background.
type watching struct {
	out    *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

func startWatch(st statusView, tty bool) *watching {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watching{out: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- st.watch(ctx, w.out, 10*time.Millisecond, tty) }()
	return w
}

// waitFor waits until the output holds n of what.
func (w *watching) waitFor(t *testing.T, what string, n int) {
	t.Helper()
	if !poll.Until(10*time.Second, func() bool { return strings.Count(w.out.String(), what) >= n }) {
		w.cancel()
		t.Fatalf("no %d×%q in 10 s:\n%s", n, what, w.out.String())
	}
}

// stop interrupts the loop and returns what it wrote and returned.
func (w *watching) stop(t *testing.T) (string, error) {
	t.Helper()
	w.cancel()
	select {
	case err := <-w.done:
		return w.out.String(), err
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not stop with its context")
	}
	return "", nil
}

// --watch: successive tables separated by a blank line when stdout is
// not a terminal, each frame drawn over the last on one; it stops
// cleanly when interrupted.
func TestStatusWatch(t *testing.T) {
	src, second := incidentSource()
	st := statusView{addr: statusServer(t, src, second).Listener.Addr().String(), client: http.DefaultClient, loc: time.UTC}
	var one bytes.Buffer
	if err := st.once(context.Background(), &one); err != nil {
		t.Fatal(err)
	}

	w := startWatch(st, false)
	w.waitFor(t, "synguard on ", 3)
	out, err := w.stop(t)
	if err != nil {
		t.Fatalf("watch returned %v when interrupted", err)
	}
	if strings.Contains(out, "\x1b") {
		t.Fatal("escape codes written to something that is not a terminal")
	}
	// The figures do not move (nothing samples): every frame is the same
	// table.
	frames := strings.Split(out, "\n\nsynguard on ")
	want := strings.TrimPrefix(strings.TrimSuffix(one.String(), "\n"), "synguard on ")
	if len(frames) < 3 || "synguard on "+want != frames[0] {
		t.Fatalf("frames are not the table separated by blank lines:\n%s", out)
	}
	for i, f := range frames[1:] {
		if f != want && f != want+"\n" {
			t.Fatalf("frame %d:\n%s\nwant\n%s", i+1, f, want)
		}
	}

	w = startWatch(st, true)
	w.waitFor(t, clearScreen, 3)
	out, err = w.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range strings.Split(out, clearScreen)[1:] {
		if f != one.String() {
			t.Fatalf("terminal frame %d is not the table drawn from the top:\n%q", i, f)
		}
	}
}

// The first read must succeed; a later failure (synguard restarting) is
// shown and retried.
func TestStatusWatchSurvivesRestart(t *testing.T) {
	src, second := incidentSource()
	srv := statusServer(t, src, second)
	st := statusView{addr: srv.Listener.Addr().String(), client: http.DefaultClient, loc: time.UTC}
	w := startWatch(st, false)
	w.waitFor(t, "synguard on ", 1)
	srv.Close()
	w.waitFor(t, "retrying every 10ms", 2)
	out, err := w.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "synguard on ") || !strings.Contains(out, "no synguard answering on "+st.addr) {
		t.Fatalf("watch output:\n%s", out)
	}

	// Bounded, so a loop that retried from the start would fail here
	// rather than hang.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = st.watch(ctx, io.Discard, 10*time.Millisecond, false)
	if err == nil || err.Error() != "no synguard answering on "+st.addr+" (is it running with --metrics?)" {
		t.Fatalf("first read failing: %v", err)
	}
}

func TestStatusCommandLine(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no address", []string{"status"}, "no metrics address: give --metrics HOST:PORT"},
		{"no port", []string{"status", "--metrics", "localhost"}, `--metrics "localhost": want HOST:PORT`},
		{"bad port", []string{"status", "--metrics", "127.0.0.1:http"}, `port "http"`},
		{"no host", []string{"status", "--metrics", ":9847"}, "no host"},
		{"fast interval", []string{"status", "--metrics", "127.0.0.1:9847", "--watch", "--interval", "1ms"}, "--interval 1ms: want 100ms or more"},
		{"stray argument", []string{"status", "--metrics", "127.0.0.1:9847", "now"}, `unexpected argument "now"`},
	} {
		t.Run(tt.name, func(t *testing.T) { wantUsageError(t, tt.args, tt.want) })
	}

	// Nothing listening: exit 1, and the message says what to check.
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	_, stderr, code := runCLI("status", "--metrics", addr)
	if want := "synguard: no synguard answering on " + addr + " (is it running with --metrics?)\n"; code != 1 || stderr != want {
		t.Fatalf("exit %d, stderr %q; want 1, %q", code, stderr, want)
	}

	// The real command, once, against telemetry's handler.
	src, second := incidentSource()
	addr = statusServer(t, src, second).Listener.Addr().String()
	stdout, stderr, code := runCLI("status", "--metrics", addr)
	if code != 0 || !strings.Contains(stdout, "198.18.7.0/24") || !strings.Contains(stdout, "DOWN 1m15s: resets") {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
}

func TestStatusFormats(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{fmtInt(0), "0"}, {fmtInt(999), "999"}, {fmtInt(1000), "1,000"}, {fmtInt(1234567), "1,234,567"},
		{fmtInt(18446744073709551615), "18,446,744,073,709,551,615"},
		{fmtRate(0), "0"}, {fmtRate(0.25), "0.2"}, {fmtRate(3), "3"}, {fmtRate(9.94), "9.9"}, {fmtRate(9.96), "10"}, {fmtRate(10.4), "10"}, {fmtRate(30111.6), "30,112"},
		{fmtPct(0), "0.0%"}, {fmtPct(0.0004), "0.04%"}, {fmtPct(0.05), "5.0%"}, {fmtPct(1), "100%"},
		{fmtDuration(-1), "0s"}, {fmtDuration(59.4), "59s"}, {fmtDuration(59.6), "1m00s"}, {fmtDuration(3725), "1h02m"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// --watch clears the screen only on a terminal: a pseudo-terminal is one,
// a pipe and a buffer are not.
func TestStatusIsTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if !isTerminal(pts) || isTerminal(w) || isTerminal(&bytes.Buffer{}) {
		t.Fatalf("terminal: pts %v, pipe %v, buffer %v; want true, false, false", isTerminal(pts), isTerminal(w), isTerminal(&bytes.Buffer{}))
	}
}
