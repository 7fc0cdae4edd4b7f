package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/internal/syncbuf"
	"github.com/synguard/synguard/nfq"
)

// notifySocket is a service manager's end of NOTIFY_SOCKET: a real
// unixgram socket, named in the environment for the rest of the test.
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &notifySocket{t: t, conn: conn}
}

// pending returns the notifications that have arrived, without waiting:
// a datagram is in the socket once the sender's write returns.
func (s *notifySocket) pending() []string {
	s.t.Helper()
	rc, err := s.conn.SyscallConn()
	if err != nil {
		s.t.Fatal(err)
	}
	var out []string
	var recvErr error
	buf := make([]byte, 4096)
	err = rc.Control(func(fd uintptr) {
		for {
			n, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			if err != nil {
				if !errors.Is(err, unix.EAGAIN) {
					recvErr = err
				}
				return
			}
			out = append(out, string(buf[:n]))
		}
	})
	if err := errors.Join(err, recvErr); err != nil {
		s.t.Fatal(err)
	}
	return out
}

// count is how many of msgs have a line equal to line.
func count(msgs []string, line string) int {
	n := 0
	for _, m := range msgs {
		for l := range strings.SplitSeq(m, "\n") {
			if l == line {
				n++
			}
		}
	}
	return n
}

// TestBeat: a healthy tick sends WATCHDOG=1; an unhealthy one sends none,
// logs why once for the whole spell and shows it in STATUS; recovery
// resumes the watchdog and puts the ready status back.
func TestBeat(t *testing.T) {
	sock := listenNotify(t)
	var logs syncbuf.Buffer
	n := newNotifier(zerolog.New(&logs))
	n.ready("protecting 192.0.2.10:80; mode auto; queue 0")
	if got := sock.pending(); len(got) != 1 || got[0] != "READY=1\nSTATUS=protecting 192.0.2.10:80; mode auto; queue 0" {
		t.Fatalf("ready sent %q", got)
	}

	n.beat(nil)
	if got := sock.pending(); len(got) != 1 || got[0] != "WATCHDOG=1" {
		t.Fatalf("healthy tick sent %q, want WATCHDOG=1", got)
	}
	stalled := errors.New("the engine's control loop last ran 7s ago")
	n.beat(stalled)
	if got := sock.pending(); len(got) != 1 || got[0] != "STATUS=unhealthy: "+stalled.Error() {
		t.Fatalf("first unhealthy tick sent %q, want only the status", got)
	}
	n.beat(stalled)
	n.beat(errors.New("queue 0: 12 packets wait for a verdict"))
	if got := sock.pending(); len(got) != 0 {
		t.Fatalf("unhealthy ticks sent %q, want nothing", got)
	}
	if c := strings.Count(logs.String(), `"event":"watchdog_unhealthy"`); c != 1 {
		t.Fatalf("%d watchdog_unhealthy lines for one spell, want 1:\n%s", c, logs.String())
	}
	if !strings.Contains(logs.String(), stalled.Error()) {
		t.Fatalf("the unhealthy line does not say why:\n%s", logs.String())
	}

	n.beat(nil)
	if got := sock.pending(); len(got) != 1 || got[0] != "WATCHDOG=1\nSTATUS=protecting 192.0.2.10:80; mode auto; queue 0" {
		t.Fatalf("recovery sent %q", got)
	}
	if !strings.Contains(logs.String(), `"event":"watchdog_recovered"`) {
		t.Fatalf("no watchdog_recovered line:\n%s", logs.String())
	}
}

// TestReloadingNotifications: a reload's begin carries RELOADING=1 and a
// CLOCK_MONOTONIC timestamp systemd can order, its end READY=1 with the
// new status.
func TestReloadingNotifications(t *testing.T) {
	sock := listenNotify(t)
	n := newNotifier(zerolog.Nop())
	before := monotonicUsec()
	n.reloading()
	n.ready("protecting 192.0.2.11:443; mode always; queue 0")
	after := monotonicUsec()
	got := sock.pending()
	if len(got) != 2 {
		t.Fatalf("sent %q, want two notifications", got)
	}
	lines := strings.Split(got[0], "\n")
	if lines[0] != "RELOADING=1" || len(lines) != 3 || lines[2] != "STATUS=reloading the configuration" {
		t.Fatalf("reload start sent %q", got[0])
	}
	var usec int64
	if _, err := fmt.Sscanf(lines[1], "MONOTONIC_USEC=%d", &usec); err != nil || usec < before || usec > after {
		t.Fatalf("reload start %q: want MONOTONIC_USEC in [%d, %d]", lines[1], before, after)
	}
	if got[1] != "READY=1\nSTATUS=protecting 192.0.2.11:443; mode always; queue 0" {
		t.Fatalf("reload end sent %q", got[1])
	}
}

// TestNoNotifySocket: outside systemd nothing is sent and nothing fails.
func TestNoNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	var logs syncbuf.Buffer
	n := newNotifier(zerolog.New(&logs))
	n.ready("x")
	n.beat(nil)
	n.stopping()
	if logs.String() != "" {
		t.Fatalf("logged without a service manager:\n%s", logs.String())
	}
}

// TestWatchdogFollowsTheHeartbeat runs the watchdog on a real ticker
// against a real socket, with the engine's heartbeat injected: pings
// arrive while it beats, stop when it stalls, and resume when it beats
// again.
func TestWatchdogFollowsTheHeartbeat(t *testing.T) {
	sock := listenNotify(t)
	var logs syncbuf.Buffer
	n := newNotifier(zerolog.New(&logs))
	n.ready("protecting 192.0.2.10:80")
	sock.pending()

	var stalledAt atomic.Pointer[time.Time] // nil while beating
	h := &pathHealth{maxAge: 50 * time.Millisecond, since: time.Now(), heartbeat: func() time.Time {
		if at := stalledAt.Load(); at != nil {
			return *at
		}
		return time.Now()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	tick := time.NewTicker(5 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- n.watchdog(ctx, tick.C, h.check) }()
	t.Cleanup(func() {
		cancel()
		tick.Stop()
		// A full socket blocks a send; closed, it fails the send instead.
		sock.conn.Close()
		<-done
	})

	var got []string
	poll.Must(t, 5*time.Second, "three WATCHDOG=1 while the heartbeat beats", func() bool {
		got = append(got, sock.pending()...)
		return count(got, "WATCHDOG=1") >= 3
	})

	now := time.Now()
	stalledAt.Store(&now)
	poll.Must(t, 5*time.Second, "a watchdog_unhealthy event once the heartbeat stalled", func() bool {
		return strings.Contains(logs.String(), `"event":"watchdog_unhealthy"`)
	})
	// Whatever was sent before the event was sent before the stall was
	// seen; from here on nothing may be.
	sock.pending()
	quiet := poll.Stays(300*time.Millisecond, func() bool {
		return count(sock.pending(), "WATCHDOG=1") == 0
	})
	if !quiet {
		t.Fatal("WATCHDOG=1 sent while the heartbeat was stalled")
	}
	if !strings.Contains(logs.String(), "control loop last ran") {
		t.Fatalf("the unhealthy event does not name the stalled heartbeat:\n%s", logs.String())
	}

	stalledAt.Store(nil)
	got = nil
	poll.Must(t, 5*time.Second, "WATCHDOG=1 again once the heartbeat beats", func() bool {
		got = append(got, sock.pending()...)
		return count(got, "WATCHDOG=1") >= 1
	})
}

// TestPathHealth: what the health check makes of each source.
func TestPathHealth(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	fresh := func() time.Time { return start.Add(10 * time.Second) }
	now := start.Add(10*time.Second + 200*time.Millisecond)

	for _, tc := range []struct {
		name string
		h    pathHealth
		want string // a part of the error; "" for healthy
	}{
		{"healthy engine", pathHealth{heartbeat: fresh}, ""},
		{"stalled engine", pathHealth{heartbeat: func() time.Time { return start.Add(8 * time.Second) }}, "control loop last ran 2.2s ago"},
		{"engine never ticked, just started", pathHealth{heartbeat: func() time.Time { return time.Time{} }, since: now.Add(-100 * time.Millisecond)}, ""},
		{"engine never ticked", pathHealth{heartbeat: func() time.Time { return time.Time{} }, since: start}, "control loop last ran 10.2s ago"},
		{"fast path in step", pathHealth{heartbeat: fresh, fastSynced: func() (time.Time, bool) { return fresh(), true }}, ""},
		{"fast path behind", pathHealth{heartbeat: fresh, fastSynced: func() (time.Time, bool) { return start, true }}, "XDP fast path was last brought in step with the engine 10.2s ago"},
		{"fast path detached after a failure", pathHealth{heartbeat: fresh, fastSynced: func() (time.Time, bool) { return time.Time{}, false }}, ""},
		{"queue table unreadable", pathHealth{heartbeat: fresh, queues: []queueProbe{{num: 0}},
			kernel: func() ([]nfq.KernelQueueStats, error) { return nil, errors.New("nfq: kernel stats: no such file") }}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			h.maxAge = time.Second
			if h.since.IsZero() {
				h.since = start
			}
			err := h.check(now)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unhealthy: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestQueueProbe walks one queue through successive checks: its kernel
// table line and its worker's batch count at each.
func TestQueueProbe(t *testing.T) {
	type step struct {
		kernel  []nfq.KernelQueueStats
		batches uint64
		want    string // a part of the error; "" for healthy
		held    int    // packets the worker holds on purpose
	}
	line := func(port, waiting, lastID uint32) []nfq.KernelQueueStats {
		return []nfq.KernelQueueStats{{Queue: 3, PortID: 999}, {Queue: 7, PortID: port, Waiting: waiting, LastID: lastID}}
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"idle", []step{{line(42, 0, 0), 0, "", 0}, {line(42, 0, 0), 0, "", 0}, {line(42, 0, 0), 0, "", 0}}},
		{"busy", []step{{line(42, 3, 100), 10, "", 0}, {line(42, 5, 900), 50, "", 0}, {line(42, 0, 950), 51, "", 0}}},
		{"stuck under traffic", []step{{line(42, 0, 100), 10, "", 0}, {line(42, 40, 140), 11, "", 0}, {line(42, 90, 190), 11, "SYN queue 7: 90 packets wait", 0}, {line(42, 90, 250), 11, "queue 7", 0}}},
		// Held back while the queue was set up, released by the next
		// arrival: no arrival, no fault.
		{"held packets, no traffic", []step{{line(42, 4, 4), 0, "", 0}, {line(42, 4, 4), 0, "", 0}, {line(42, 4, 4), 0, "", 0}}},
		{"held packets released", []step{{line(42, 4, 4), 0, "", 0}, {line(42, 0, 5), 1, "", 0}}},
		{"first sight of a backlog", []step{{line(42, 90, 190), 11, "", 0}}},
		{"recovers", []step{{line(42, 5, 10), 1, "", 0}, {line(42, 9, 20), 1, "9 packets wait", 0}, {line(42, 0, 30), 2, "", 0}}},
		{"unbound", []step{{line(42, 0, 0), 0, "", 0}, {[]nfq.KernelQueueStats{{Queue: 3}}, 0, "SYN queue 7 is bound to no socket", 0}}},
		{"bound by another socket", []step{{line(43, 0, 0), 0, "SYN queue 7 is bound to netlink port 43, not to its worker's 42", 0}}},
		// Early data waits on purpose: a packet arriving between two
		// checks, while the worker has yet to run its batch, is no fault.
		{"early data held, an arrival", []step{
			{kernel: line(42, 4, 100), batches: 10, held: 4}, {kernel: line(42, 5, 101), batches: 10, held: 4}, {kernel: line(42, 4, 101), batches: 11, held: 4}}},
		{"early data held, stuck beyond it", []step{
			{kernel: line(42, 4, 100), batches: 10, held: 4}, {kernel: line(42, 6, 140), batches: 10, held: 4}, {kernel: line(42, 9, 190), batches: 10, want: "5 packets wait", held: 4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var batches uint64
			var held int
			q := queueProbe{num: 7, name: "SYN queue 7", port: 42, batches: func() uint64 { return batches }, held: func() int { return held }}
			for i, s := range tc.steps {
				batches, held = s.batches, s.held
				err := q.check(s.kernel, s.held)
				switch {
				case s.want == "" && err != nil:
					t.Fatalf("check %d: unhealthy: %v", i, err)
				case s.want != "" && (err == nil || !strings.Contains(err.Error(), s.want)):
					t.Fatalf("check %d: got %v, want an error with %q", i, err, s.want)
				}
			}
		})
	}
}

// readyOrder records, at each log line of interest, which notifications
// had already arrived: the order of events across the log and the socket.
type readyOrder struct {
	mu   sync.Mutex
	sock *notifySocket
	seen []string          // every notification, in order
	at   map[string]string // event → notifications seen when it was logged, joined by |
}

func (o *readyOrder) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen = append(o.seen, o.sock.pending()...)
	for _, ev := range []string{"rules_installed", "start", "rules_removed"} {
		if strings.Contains(string(p), `"event":"`+ev+`"`) {
			o.at[ev] = strings.Join(o.seen, "|")
		}
	}
	return len(p), nil
}

// TestReadyOnlyOnceRulesAreLive runs a real gateway in a namespace with a
// service manager's socket: nothing is sent while it starts; READY=1,
// with a status naming its service and mode, arrives after the rules are
// installed and the start event is logged, and before it serves;
// STOPPING=1 arrives as the stop begins, before the rules come down.
func TestReadyOnlyOnceRulesAreLive(t *testing.T) {
	ns := nstest.New(t, "sggw-notify")
	sock := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "") // the watchdog reads another thread's namespace; tested above
	order := &readyOrder{sock: sock, at: map[string]string{}}
	cfg := lifecycleConfig()
	cfg.Logger = zerolog.New(order)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var atServe []string
	err, rules := serveIn(t, ns, ctx, cfg, func(g *gateway) {
		order.mu.Lock()
		order.seen = append(order.seen, sock.pending()...)
		atServe = append([]string(nil), order.seen...)
		order.mu.Unlock()
		cancel()
	})
	if err != nil {
		t.Fatalf("serve: %v", err)
	}
	if strings.Contains(rules, "SYNGUARD") {
		t.Fatalf("rules left after stop:\n%s", rules)
	}
	for _, ev := range []string{"rules_installed", "start"} {
		if got, ok := order.at[ev]; !ok || got != "" {
			t.Fatalf("at the %s event (logged: %v) the service manager had %q, want nothing yet", ev, ok, got)
		}
	}
	want := "READY=1\nSTATUS=protecting 192.0.2.10:80; mode always; SYN queues 7-8, completion queues 9-10"
	if len(atServe) != 1 || atServe[0] != want {
		t.Fatalf("when serving began the service manager had %q, want %q", atServe, want)
	}
	got, ok := order.at["rules_removed"]
	if !ok || got != want+"|STOPPING=1\nSTATUS=stopping: removing the rules" {
		t.Fatalf("at rules_removed (logged: %v) the service manager had %q, want READY then STOPPING", ok, got)
	}
}

// TestPathHealthOnRealQueues runs the health check against the kernel's
// own queue table, with SYNs queued by the real rules: a queue whose
// worker runs stays healthy however many SYNs it handles; a queue whose
// worker does not run is found stuck once a SYN waited at one check and
// another arrived by the next.
func TestPathHealthOnRealQueues(t *testing.T) {
	for _, stall := range []bool{false, true} {
		t.Run(fmt.Sprintf("stalled=%v", stall), func(t *testing.T) {
			ns := nstest.New(t, "sggw-health")
			if err := ns.Run(context.Background(), "ip", "addr", "add", "192.0.2.10/32", "dev", "lo"); err != nil {
				t.Fatal(err)
			}
			cfg := lifecycleConfig()
			cfg.Queues, cfg.MetricsAddr = 1, ""
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var results []error
			checked := make(chan error, 1)
			err := ns.Do(func() error {
				return run(ctx, cfg, func(g *gateway) {
					if stall {
						for i := range g.parts {
							if strings.HasPrefix(g.parts[i].name, "SYN queue ") {
								g.parts[i].run = func(ctx context.Context) error { <-ctx.Done(); return nil }
							}
						}
					}
					go func() {
						defer cancel()
						checked <- ns.Do(func() error {
							h := g.pathHealth(time.Minute)
							// The watchdog looks at every queue, the
							// completion queue too.
							if len(h.queues) != 2 || h.queues[0].name != "SYN queue 7" || h.queues[1].name != "completion queue 8" ||
								h.queues[0].port != g.queues[0].PortID() || h.queues[1].port != g.queues[1].PortID() {
								return fmt.Errorf("health probes %+v, want SYN queue 7 and completion queue 8 with their workers' ports", h.queues)
							}
							results = append(results, h.check(time.Now()))
							for i := range 3 {
								// A SYN from a new port each time: through lo
								// it meets the SYN rule in raw PREROUTING.
								d := net.Dialer{Timeout: 200 * time.Millisecond}
								if c, err := d.Dial("tcp", "192.0.2.10:80"); err == nil {
									c.Close()
								}
								var waiting uint32
								settled := poll.Until(5*time.Second, func() bool {
									k, err := nfq.KernelStats()
									if err != nil || len(k) != 2 || k[0].Queue != 7 {
										return false
									}
									waiting = k[0].Waiting
									if stall {
										return waiting == uint32(i+1)
									}
									// Handled, and queued in the first place.
									return waiting == 0 && k[0].LastID >= uint32(i+1)
								})
								if !settled {
									return fmt.Errorf("after SYN %d the queue holds %d packets", i+1, waiting)
								}
								results = append(results, h.check(time.Now()))
							}
							return nil
						})
					}()
				})
			})
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if err := <-checked; err != nil {
				t.Fatal(err)
			}
			for i, err := range results {
				switch {
				case !stall || i < 2:
					if err != nil {
						t.Errorf("check %d: %v, want healthy", i, err)
					}
				case err == nil || !strings.Contains(err.Error(), "SYN queue 7: ") || !strings.Contains(err.Error(), "its worker has handled none"):
					t.Errorf("check %d: %v, want queue 7 stuck", i, err)
				}
			}
		})
	}
}
