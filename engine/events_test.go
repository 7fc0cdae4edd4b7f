package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// recordedEvents keeps every event the engine reports, one line each.
type recordedEvents struct {
	mu    sync.Mutex
	lines []string
}

func (r *recordedEvents) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func (r *recordedEvents) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.lines
	r.lines = nil
	return out
}

func (r *recordedEvents) ModeChanged(c ModeChange) {
	r.add("mode %s %s->%s %s half_open=%d", c.Service, c.From, c.To, c.Reason, c.HalfOpen)
}

func (r *recordedEvents) BackendLearned(svc netip.AddrPort, o BackendOptions, source string) {
	r.add("learned %s %s mss=%d wscale=%d sack=%v", svc, source, o.MSS, o.WindowScale, o.SACKPermitted)
}

func (r *recordedEvents) BackendMismatch(svc netip.AddrPort, o BackendOptions) {
	r.add("mismatch %s mss=%d wscale=%d sack=%v", svc, o.MSS, o.WindowScale, o.SACKPermitted)
}

func (r *recordedEvents) HandoffFailed(svc netip.AddrPort, err error) {
	r.add("handoff_failed %s %v", svc, err)
}

func (r *recordedEvents) SendFailed(svc netip.AddrPort, err error) {
	r.add("send_failed %s %v", svc, err)
}

func (r *recordedEvents) HandedOff(svc int, t HandoffTiming) {
	r.add("handed_off %d backend=%v wait=%v entry=%v", svc, t.Backend, t.Wait, t.Entry)
}

func (r *recordedEvents) AttackStarted(a AttackStart) {
	r.add("attack_start %s %s syn_rate=%.0f", a.Service, a.Reason, a.SYNRate)
}

func (r *recordedEvents) AttackEnded(a AttackEnd) {
	r.add("attack_end %s %s %v peak=%.0f syns=%d synacks=%d valid=%d handed_off=%d", a.Service, a.Ended, a.Duration, a.PeakSYNRate, a.SYNs, a.SYNACKs, a.CookieValid, a.HandedOff)
}

func (h *harness) expectEvents(want ...string) {
	h.t.Helper()
	if got := h.events.take(); !slices.Equal(got, want) {
		h.t.Fatalf("events:\n%q\nwant:\n%q", got, want)
	}
}

func TestEventsOfAHandoff(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(linuxOptions())
	h.clock.advance(3 * time.Millisecond)
	// The backend announces MSS 1400 and scale 9, not the assumed 1460 and 7.
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65535,
		Options: packet.Options{MSS: 1400, HasMSS: true, SACKPermitted: true, WindowScale: 9, HasWindowScale: true}}, nf.Drop)
	h.drainHandoffs()
	h.expectEvents(
		"mismatch 203.0.113.2:80 mss=1400 wscale=9 sack=true",
		"learned 203.0.113.2:80 syn_ack mss=1400 wscale=9 sack=true",
		"handed_off 0 backend=3ms wait=0s entry=0s",
	)
}

// TestHandoffTiming: each step of a hand-off is timed apart.
func TestHandoffTiming(t *testing.T) {
	h := newHarness(t, nil)
	h.handoff.onCreate = func() { h.clock.advance(time.Millisecond) }
	h.handshake(linuxOptions())
	h.clock.advance(3 * time.Millisecond)
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65535,
		Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}, nf.Drop)
	h.clock.advance(2 * time.Millisecond)
	h.drainHandoffs()
	h.expectEvents("handed_off 0 backend=3ms wait=2ms entry=1ms")
}

func TestEventOfAFailedHandoff(t *testing.T) {
	h := newHarness(t, nil)
	h.handoff.err = errors.New("netlink says no")
	h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65535,
		Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}, nf.Drop)
	h.drainHandoffs()
	h.expectEvents("handoff_failed 203.0.113.2:80 netlink says no")
}

func TestLearnBackendReportsChangesOnly(t *testing.T) {
	h := newHarness(t, nil)
	o := BackendOptions{MSS: 1400, WindowScale: 9, SACKPermitted: true}
	h.e.LearnBackend(0, o, "probe")
	h.e.LearnBackend(0, o, "probe")
	o.MSS = 1380
	h.e.LearnBackend(0, o, "probe")
	h.expectEvents(
		"learned 203.0.113.2:80 probe mss=1400 wscale=9 sack=true",
		"learned 203.0.113.2:80 probe mss=1380 wscale=9 sack=true",
	)
}

func TestEventsOfModeChanges(t *testing.T) {
	h := autoHarness(t, ModeAuto)
	h.e.control(h.clock.now())
	for i := range testThresholds.HalfOpenHigh {
		h.handle(h.synFrom(i), nf.Accept)
	}
	h.clock.advance(controlTick)
	h.e.control(h.clock.now())
	h.expectEvents(fmt.Sprintf("mode 203.0.113.2:80 passthrough->cookie half_open half_open=%d", testThresholds.HalfOpenHigh),
		"attack_start 203.0.113.2:80 half_open syn_rate=1000")
	// Quiet past the handshake timeout and the hold time (15 s): back.
	for range 300 {
		h.clock.advance(controlTick)
		h.e.control(h.clock.now())
		if h.e.ServiceState(0) == StatePassthrough {
			break
		}
	}
	h.expectEvents("mode 203.0.113.2:80 cookie->passthrough calm half_open=0",
		"attack_end 203.0.113.2:80 calm 14.9s peak=1000 syns=100 synacks=0 valid=0 handed_off=0")
}
