package engine

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

var testThresholds = Thresholds{
	HalfOpenHigh: 100, HalfOpenLow: 20,
	SYNRateHigh: 1000, SYNRateLow: 200,
	Hold: 10 * time.Second, HandshakeTimeout: 5 * time.Second,
}

func TestControllerThresholdsAndHysteresis(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		at      time.Duration
		s       Sample
		change  bool
		reason  string
		cookies bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"quiet stays passthrough", []step{
			{0, Sample{HalfOpen: 99, SYNRate: 999}, false, "", false},
			{time.Second, Sample{HalfOpen: 50, SYNRate: 500}, false, "", false},
		}},
		{"half-open high switches", []step{
			{0, Sample{HalfOpen: 100}, true, ReasonHalfOpen, true},
		}},
		{"syn rate high switches", []step{
			{0, Sample{HalfOpen: 10, SYNRate: 1000}, true, ReasonSYNRate, true},
		}},
		{"half-open wins when both cross", []step{
			{0, Sample{HalfOpen: 500, SYNRate: 5000}, true, ReasonHalfOpen, true},
		}},
		{"no flapping between the watermarks", []step{
			{0, Sample{HalfOpen: 150}, true, ReasonHalfOpen, true},
			{time.Second, Sample{HalfOpen: 50, SYNRate: 500}, false, "", true}, // between low and high: stay
			{30 * time.Second, Sample{HalfOpen: 50, SYNRate: 500}, false, "", true},
		}},
		{"calm for the hold time returns", []step{
			{0, Sample{SYNRate: 5000}, true, ReasonSYNRate, true},
			{time.Second, Sample{HalfOpen: 20, SYNRate: 200}, false, "", true}, // calm starts
			{10*time.Second + 999*time.Millisecond, Sample{HalfOpen: 0, SYNRate: 0}, false, "", true},
			{11 * time.Second, Sample{}, true, ReasonCalm, false},
		}},
		{"a blip restarts the hold", []step{
			{0, Sample{SYNRate: 5000}, true, ReasonSYNRate, true},
			{time.Second, Sample{}, false, "", true},
			{9 * time.Second, Sample{SYNRate: 201}, false, "", true}, // above low: not calm
			{12 * time.Second, Sample{}, false, "", true},            // calm again from 12 s
			{21 * time.Second, Sample{}, false, "", true},
			{22 * time.Second, Sample{}, true, ReasonCalm, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := controller{th: testThresholds}
			for i, st := range tt.steps {
				change, reason := c.step(at(st.at), st.s)
				if change != st.change || reason != st.reason || c.cookie != st.cookies {
					t.Fatalf("step %d at %s %+v: change=%v reason=%q cookie=%v, want %v %q %v",
						i, st.at, st.s, change, reason, c.cookie, st.change, st.reason, st.cookies)
				}
			}
		})
	}
}

func TestRateWindow(t *testing.T) {
	w := newRateWindow(10)
	t0 := time.Unix(0, 0)
	if r, _ := w.add(t0, 1000); r != 0 {
		t.Fatalf("first sample rate %v", r)
	}
	var total uint64 = 1000
	var r float64
	for i := 1; i <= 20; i++ {
		total += 300 // 300 per 100 ms = 3000/s
		r, _ = w.add(t0.Add(time.Duration(i)*100*time.Millisecond), total)
	}
	if r < 2999 || r > 3001 {
		t.Fatalf("steady rate %v, want 3000", r)
	}
	// The flood stops: within a second the rate is 0.
	for i := 21; i <= 30; i++ {
		r, _ = w.add(t0.Add(time.Duration(i)*100*time.Millisecond), total)
	}
	if r != 0 {
		t.Fatalf("rate %v a second after the flood, want 0", r)
	}
}

// TestRateWindowAfterQuietSteps: after steps a second apart, the rate is
// the newest step's alone, and a step that comes early (a nudge) gives the
// rate since the last step, not one averaged over quiet seconds.
func TestRateWindowAfterQuietSteps(t *testing.T) {
	w := newRateWindow(rateSamples)
	t0 := time.Unix(0, 0)
	w.add(t0, 0)
	var total uint64
	for i := 1; i <= 12; i++ {
		total += 100
		if r, _ := w.add(t0.Add(time.Duration(i)*QuietControlTick), total); r != 100 {
			t.Fatalf("quiet step %d: rate %v, want 100", i, r)
		}
	}
	total += 500
	at := t0.Add(12*QuietControlTick + 250*time.Millisecond)
	if r, n := w.add(at, total); r != 2000 || n != 500 {
		t.Fatalf("250 ms after a quiet step: rate %v over %d events, want 2000 over 500", r, n)
	}
	// Fast steps from there: the window fills up to a second again.
	for i := 1; i <= rateSamples; i++ {
		total += 300
		at = at.Add(controlTick)
		w.add(at, total)
	}
	if r, _ := w.add(at.Add(controlTick), total+300); r < 2999 || r > 3001 {
		t.Fatalf("a second of fast steps at 3000/s: rate %v", r)
	}
}

// TestQuietControlLoop: with every service quiet the control loop waits a
// second between steps; SYNs past the quiet budget (the low watermark's
// worth of a quiet step), whether a worker sees them or the fast path
// samples them, wake it once, and the step it then takes acts on the
// flood at once and goes back to the fast period. A reload wakes it too.
func TestQuietControlLoop(t *testing.T) {
	h := autoHarness(t, ModeAuto)
	e := h.e
	if p := e.controlStep(h.clock.now()); p != QuietControlTick {
		t.Fatalf("without traffic the next step is %v away, want %v", p, QuietControlTick)
	}
	// Traffic well under the low watermarks stays quiet (these SYNs
	// stay half-open: fewer than the half-open low watermark).
	syn := 0
	for range 3 {
		for range 5 {
			h.handle(h.synFrom(syn), nf.Accept)
			syn++
		}
		h.clock.advance(QuietControlTick)
		if p := e.controlStep(h.clock.now()); p != QuietControlTick {
			t.Fatalf("at 5 SYN/s the next step is %v away, want %v", p, QuietControlTick)
		}
		if len(e.nudge) != 0 {
			t.Fatal("5 SYNs in a quiet second woke the control loop")
		}
	}
	budget := int(testThresholds.SYNRateLow * QuietControlTick.Seconds())
	for range budget - 1 {
		h.handle(h.synFrom(syn), nf.Accept)
		syn++
	}
	if len(e.nudge) != 0 {
		t.Fatalf("%d SYNs, one short of the quiet budget, woke the control loop", budget-1)
	}
	for range 50 {
		h.handle(h.synFrom(syn), nf.Accept)
		syn++
	}
	select {
	case <-e.nudge:
	default:
		t.Fatalf("%d SYNs in a quiet step did not wake the control loop", budget+49)
	}
	if len(e.nudge) != 0 {
		t.Fatal("the control loop was woken twice in one quiet step")
	}
	h.clock.advance(250 * time.Millisecond)
	if p := e.controlStep(h.clock.now()); p != controlTick {
		t.Fatalf("after the wake-up the next step is %v away, want %v", p, controlTick)
	}
	if e.ServiceState(0) != StateCookie {
		t.Fatalf("a flood of %d half-open flows seen at the wake-up: state %v, want %v", budget+49, e.ServiceState(0), StateCookie)
	}
	for range 2 * budget {
		h.handle(h.synFrom(syn), nf.Drop)
		syn++
	}
	if len(e.nudge) != 0 {
		t.Fatal("SYNs woke a control loop that was not quiet")
	}

	// The fast path's samples count by their weight.
	h = autoHarness(t, ModeAlways)
	e = h.e
	e.controlStep(h.clock.now())
	src := netip.MustParseAddr("198.18.0.1")
	for range budget/8 - 1 {
		e.ObserveSource(0, src, 8)
	}
	if len(e.nudge) != 0 {
		t.Fatal("samples short of the quiet budget woke the control loop")
	}
	e.ObserveSource(0, src, 8)
	if len(e.nudge) != 1 {
		t.Fatalf("samples worth %d SYNs did not wake the control loop", budget)
	}

	// A reload is taken at once, and so synced to the fast path.
	h = autoHarness(t, ModeAuto)
	e = h.e
	e.controlStep(h.clock.now())
	if len(e.nudge) != 0 {
		t.Fatal("the control loop was woken before any reload")
	}
	if err := e.Reconfigure([]ServiceConfig{{Addr: server}}); err != nil {
		t.Fatal(err)
	}
	if len(e.nudge) != 1 {
		t.Fatal("a reload did not wake the quiet control loop")
	}
}

func flow(i int) flowKey {
	return flowKey{
		client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(1024+i%60000)),
		server: server,
	}
}

func TestHalfOpenTable(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	tab := newHalfOpenTable(1024, 5*time.Second, t0)
	for i := range 100 {
		if added, _ := tab.add(flow(i), t0); !added {
			t.Fatalf("flow %d not added", i)
		}
	}
	// A retransmitted SYN is not a new half-open flow.
	if added, _ := tab.add(flow(7), t0.Add(time.Second)); added {
		t.Fatal("retransmitted SYN counted twice")
	}
	if n := tab.count(t0.Add(time.Second)); n != 100 {
		t.Fatalf("count %d, want 100", n)
	}
	for i := range 40 {
		if !tab.complete(flow(i), t0.Add(2*time.Second)) {
			t.Fatalf("flow %d not completed", i)
		}
	}
	if tab.complete(flow(3), t0.Add(2*time.Second)) {
		t.Fatal("completed twice")
	}
	if tab.complete(flow(5000), t0.Add(2*time.Second)) {
		t.Fatal("completed a flow never added")
	}
	if n := tab.count(t0.Add(2 * time.Second)); n != 60 {
		t.Fatalf("count %d after 40 completions, want 60", n)
	}
	// Older than the handshake timeout: no longer half-open.
	if n := tab.count(t0.Add(5*time.Second + halfOpenTick)); n != 0 {
		t.Fatalf("count %d after the timeout, want 0", n)
	}
	// Expired entries were cleared: a later flood starts from zero even
	// after the tick counter wraps.
	later := t0.Add(tickMask * halfOpenTick)
	if n := tab.count(later); n != 0 {
		t.Fatalf("count %d after a wrap, want 0", n)
	}
}

func TestHalfOpenTableBoundedUnderFlood(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	tab := newHalfOpenTable(1024, 5*time.Second, t0)
	evictions := 0
	for i := range 100_000 {
		if _, ev := tab.add(flow(i), t0.Add(time.Duration(i)*time.Microsecond)); ev {
			evictions++
		}
	}
	n := tab.count(t0.Add(200 * time.Millisecond))
	if n != 1024 || evictions < 100_000-1024-1024 {
		t.Fatalf("count %d evictions %d: want the table full (1024) and the rest evicted", n, evictions)
	}
	if len(tab.slots) != 1024 {
		t.Fatal("table grew")
	}
}

func TestHalfOpenAddAllocatesNothing(t *testing.T) {
	tab := newHalfOpenTable(1024, 5*time.Second, time.Unix(0, 0))
	k := flow(1)
	now := time.Unix(1, 0)
	if n := testing.AllocsPerRun(100, func() {
		tab.add(k, now)
		tab.complete(k, now)
	}); n != 0 {
		t.Fatalf("%.1f allocations", n)
	}
}

// autoHarness is a harness in auto mode with test thresholds.
func autoHarness(t *testing.T, mode Mode) *harness {
	return newHarness(t, func(c *Config) {
		c.Mode = mode
		c.Thresholds = testThresholds
	})
}

func (h *harness) synFrom(i int) packet.Segment {
	k := flow(i)
	return packet.Segment{Src: k.client, Dst: k.server, Seq: uint32(i), Flags: packet.SYN, Options: linuxOptions()}
}

func TestAutoPassesQuietSYNsUntouched(t *testing.T) {
	h := autoHarness(t, ModeAuto)
	if h.e.ServiceState(0) != StatePassthrough {
		t.Fatal("auto mode does not start in passthrough")
	}
	h.handle(h.synFrom(1), nf.Accept)
	h.expect(0) // no SYN-ACK of ours: the backend answers itself
	if h.stat(SYNPassed) != 1 || h.stat(SYNACKSent) != 0 {
		t.Fatal("passed SYN not counted")
	}
	h.e.control(h.clock.now())
	if h.e.HalfOpen(0) != 1 {
		t.Fatalf("half-open %d, want 1", h.e.HalfOpen(0))
	}
	// The flow's first ACK, queued once from mangle PREROUTING.
	k := flow(1)
	ack := build(t, packet.Segment{Src: k.client, Dst: k.server, Seq: 2, Ack: 99, Flags: packet.ACK})
	if v := h.handleAt(ack, nf.Prerouting); v != nf.Accept {
		t.Fatalf("first ACK verdict %v", v)
	}
	h.expect(0)
	h.e.control(h.clock.now())
	if h.e.HalfOpen(0) != 0 || h.stat(FirstACK) != 1 {
		t.Fatalf("half-open %d first ACKs %d after the handshake", h.e.HalfOpen(0), h.stat(FirstACK))
	}
	// An established packet the table never saw (a flow older than
	// synguard) still passes.
	other := build(t, packet.Segment{Src: flow(2).client, Dst: server, Seq: 2, Ack: 99, Flags: packet.ACK})
	if v := h.handleAt(other, nf.Prerouting); v != nf.Accept {
		t.Fatal("an established flow's packet was dropped")
	}
}

func TestAutoSwitchesUnderFloodAndBack(t *testing.T) {
	h := autoHarness(t, ModeAuto)
	step := func() { h.clock.advance(controlTick); h.e.control(h.clock.now()) }
	h.e.control(h.clock.now())
	// A flood of SYNs that never complete: half-open reaches the high
	// watermark at the next control tick.
	for i := range testThresholds.HalfOpenHigh {
		h.handle(h.synFrom(i), nf.Accept)
	}
	floodEnd := h.clock.now()
	step()
	if h.e.ServiceState(0) != StateCookie {
		t.Fatalf("still %v with %d half-open", h.e.ServiceState(0), h.e.HalfOpen(0))
	}
	if h.stat(ModeChanges) != 1 {
		t.Fatal("mode change not counted")
	}
	// Now SYNs get cookies and are dropped.
	h.handle(h.synFrom(100_000), nf.Drop)
	if sa := h.expect(1)[0].p; sa.Flags != packet.SYN|packet.ACK {
		t.Fatalf("in cookie mode a SYN got %v", sa.Flags)
	}
	// The flood stops. Half-open entries age out after the handshake
	// timeout, then the hold time runs; the service returns within their
	// sum plus a tick or two.
	var back time.Duration
	for h.clock.now().Sub(floodEnd) < 30*time.Second {
		step()
		if h.e.ServiceState(0) == StatePassthrough {
			back = h.clock.now().Sub(floodEnd)
			break
		}
	}
	if back == 0 {
		t.Fatal("did not return to passthrough within 30 s of the flood's end")
	}
	if want := testThresholds.HandshakeTimeout + testThresholds.Hold; back < want || back > want+time.Second {
		t.Fatalf("returned after %s, want about %s", back, want)
	}
	if h.stat(ModeChanges) != 2 {
		t.Fatal("return not counted")
	}
	h.handle(h.synFrom(200_000), nf.Accept)
}

func TestAutoSwitchesOnSYNRate(t *testing.T) {
	h := autoHarness(t, ModeAuto)
	h.e.control(h.clock.now())
	// 150 SYNs per 100 ms (1500/s), each completing at once: half-open
	// stays at 0, the rate crosses 1000/s.
	i := 0
	for tick := 0; tick < 10 && h.e.ServiceState(0) == StatePassthrough; tick++ {
		for range 150 {
			h.handle(h.synFrom(i), nf.Accept)
			k := flow(i)
			h.handleAt(build(t, packet.Segment{Src: k.client, Dst: k.server, Flags: packet.ACK}), nf.Prerouting)
			i++
		}
		h.clock.advance(controlTick)
		h.e.control(h.clock.now())
	}
	if h.e.ServiceState(0) != StateCookie {
		t.Fatalf("1500 SYN/s did not switch to cookies (half-open %d)", h.e.HalfOpen(0))
	}
	if h.e.HalfOpen(0) != 0 {
		t.Fatalf("half-open %d with every handshake completed", h.e.HalfOpen(0))
	}
}

func TestOffModeObservesOnly(t *testing.T) {
	h := autoHarness(t, ModeOff)
	for i := range 500 {
		h.handle(h.synFrom(i), nf.Accept)
	}
	h.clock.advance(controlTick)
	h.e.control(h.clock.now())
	if h.e.ServiceState(0) != StatePassthrough || h.e.HalfOpen(0) != 500 {
		t.Fatalf("off mode: state %v half-open %d", h.e.ServiceState(0), h.e.HalfOpen(0))
	}
	// An invalid ACK passes too: off mode never drops.
	h.handle(packet.Segment{Src: client, Dst: server, Seq: 5, Ack: 9, Flags: packet.ACK}, nf.Accept)
	h.expect(0)
}

func TestAlwaysModeNeverPasses(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Mode = ModeAlways; c.Thresholds = testThresholds })
	for range 50 {
		h.clock.advance(time.Second)
		h.e.control(h.clock.now())
	}
	if h.e.ServiceState(0) != StateCookie {
		t.Fatal("always mode left cookie state")
	}
}

func BenchmarkHandleSYNPassthrough(b *testing.B) {
	pkts := make([][]byte, 1024)
	for i := range pkts {
		k := flow(i)
		pkts[i] = build(b, packet.Segment{Src: k.client, Dst: k.server, Seq: 1, Flags: packet.SYN, Options: linuxOptions()})
	}
	benchHandle(b, ModeAuto, nf.Prerouting, 64, pkts...)
}

// fastPathCounts stands in for a fast path outside the engine (XDP) that
// answers SYNs itself.
type fastPathCounts struct{ syns atomic.Uint64 }

func (f *fastPathCounts) Counts(svc int) Stats {
	var s Stats
	if svc == 0 {
		s.Add(SYNReceived, f.syns.Load())
		s.Add(SYNACKSent, f.syns.Load())
	}
	return s
}

// TestExtraCountsDriveTheControlLoop: SYNs answered outside the engine
// count in its Stats, and keep a service in cookie mode while they come:
// otherwise the engine, seeing nothing, would switch back to passthrough
// in the middle of a flood the fast path is absorbing.
func TestExtraCountsDriveTheControlLoop(t *testing.T) {
	fast := &fastPathCounts{}
	h := newHarness(t, func(c *Config) {
		c.Mode = ModeAuto
		c.Thresholds = testThresholds
		c.Extra = fast
	})
	step := func() { h.clock.advance(controlTick); h.e.control(h.clock.now()) }
	h.e.control(h.clock.now())
	for range 40 { // 4 s of a flood at 10 × SYNRateHigh, seen only outside
		fast.syns.Add(uint64(testThresholds.SYNRateHigh))
		step()
	}
	if h.e.ServiceState(0) != StateCookie {
		t.Fatalf("service in %v during a flood counted outside the engine", h.e.ServiceState(0))
	}
	if h.stat(SYNReceived) != fast.syns.Load() || h.stat(SYNACKSent) != fast.syns.Load() {
		t.Fatalf("Stats SYNs %d, SYN-ACKs %d; want the fast path's %d", h.stat(SYNReceived), h.stat(SYNACKSent), fast.syns.Load())
	}
	if n := testing.AllocsPerRun(100, func() { h.e.Stats(0) }); n != 0 {
		t.Fatalf("Stats with an extra source allocates %.1f times", n)
	}
}
