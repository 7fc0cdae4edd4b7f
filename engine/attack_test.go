package engine

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// synFeed sends a harness's engine SYNs, a control tick's worth at a
// time.
type synFeed struct {
	h    *harness
	sent int // SYNs so far
}

// tick sends rate SYNs a second for one control tick, then runs the
// control loop's step.
func (f *synFeed) tick(rate int) {
	for range rate * int(controlTick) / int(time.Second) {
		f.h.handle(f.h.synFrom(f.sent), nf.Drop)
		f.sent++
	}
	f.h.send.take()
	f.h.clock.advance(controlTick)
	f.h.e.control(f.h.clock.now())
}

// attackLines takes the attack events reported so far.
func attackLines(h *harness) (starts, ends []string) {
	for _, l := range h.events.take() {
		switch {
		case strings.HasPrefix(l, "attack_start"):
			starts = append(starts, l)
		case strings.HasPrefix(l, "attack_end"):
			ends = append(ends, l)
		}
	}
	return starts, ends
}

// TestAttackInAlwaysMode: in always mode the state never switches, and
// the SYN rate alone starts and ends an attack. A rate flapping around
// the watermarks within the hold time stays one attack, whose totals
// count every SYN answered.
func TestAttackInAlwaysMode(t *testing.T) {
	h := autoHarness(t, ModeAlways)
	feed := &synFeed{h: h}
	tick := feed.tick
	// Quiet, then a flood well above syn_rate_high (1000/s).
	for range 20 {
		tick(100)
	}
	quietSYNs := feed.sent
	for range 30 {
		tick(3000)
	}
	// Flapping: above the low watermark (200/s) and below the high one,
	// then briefly below the low one, for less than the hold time (10 s).
	for range 5 {
		for range 10 {
			tick(600)
		}
		for range 10 {
			tick(100)
		}
	}
	starts, ends := attackLines(h)
	if len(starts) != 1 || len(ends) != 0 {
		t.Fatalf("flood and flapping: starts %q, ends %q; want one start, no end", starts, ends)
	}
	if !strings.Contains(starts[0], "syn_rate") {
		t.Errorf("start %q: want reason syn_rate", starts[0])
	}
	// Calm for longer than the hold time: the one end.
	for range 150 {
		tick(0)
	}
	starts, ends = attackLines(h)
	if len(starts) != 0 || len(ends) != 1 {
		t.Fatalf("after the calm: starts %q, ends %q; want just one end", starts, ends)
	}
	// Every SYN from the last quiet tick on counts, each answered once.
	attackSYNs := feed.sent - quietSYNs
	for _, want := range []string{"calm", "peak=3000", "syns=" + strconv.Itoa(attackSYNs), "synacks=" + strconv.Itoa(attackSYNs)} {
		if !strings.Contains(ends[0], want) {
			t.Errorf("end %q lacks %s", ends[0], want)
		}
	}
}

// TestAttackEndsOnStop: an engine that stops during an attack ends it,
// so that a log with an attack's start has its end; one that stops in
// calm reports no attack.
func TestAttackEndsOnStop(t *testing.T) {
	stopped := func(ctx context.Context) context.Context {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		return ctx
	}
	h := autoHarness(t, ModeAlways)
	feed := &synFeed{h: h}
	for range 20 {
		feed.tick(100)
	}
	quietSYNs := feed.sent
	for range 30 {
		feed.tick(3000)
	}
	if starts, _ := attackLines(h); len(starts) != 1 {
		t.Fatalf("flood: starts %q, want one", starts)
	}
	if err := h.e.Run(stopped(t.Context())); err != nil {
		t.Fatal(err)
	}
	starts, ends := attackLines(h)
	if len(starts) != 0 || len(ends) != 1 {
		t.Fatalf("at the stop: starts %q, ends %q; want one end", starts, ends)
	}
	for _, want := range []string{" stop ", "peak=3000", "syns=" + strconv.Itoa(feed.sent-quietSYNs)} {
		if !strings.Contains(ends[0], want) {
			t.Errorf("end %q lacks %q", ends[0], want)
		}
	}
	if h.e.Attack(0) != nil {
		t.Error("an attack is still in progress after the stop")
	}

	calm := autoHarness(t, ModeAlways)
	quiet := &synFeed{h: calm}
	for range 20 {
		quiet.tick(100)
	}
	if err := calm.e.Run(stopped(t.Context())); err != nil {
		t.Fatal(err)
	}
	if starts, ends := attackLines(calm); len(starts)+len(ends) != 0 {
		t.Fatalf("a calm engine's stop: starts %q, ends %q; want none", starts, ends)
	}
}

// TestAttackEndsWithItsService: a reload that removes a service under
// attack ends the attack at the next tick; back, the service starts from
// calm: no second end, and a new flood is a new attack.
func TestAttackEndsWithItsService(t *testing.T) {
	h := autoHarness(t, ModeAlways)
	feed := &synFeed{h: h}
	for range 30 {
		feed.tick(3000)
	}
	if starts, _ := attackLines(h); len(starts) != 1 {
		t.Fatalf("flood: starts %q, want one", starts)
	}
	if err := h.e.Reconfigure([]ServiceConfig{{Addr: server6}}); err != nil {
		t.Fatal(err)
	}
	h.clock.advance(controlTick)
	h.e.control(h.clock.now())
	starts, ends := attackLines(h)
	if len(starts) != 0 || len(ends) != 1 || !strings.Contains(ends[0], " removed ") {
		t.Fatalf("after the removal: starts %q, ends %q; want one end, removed", starts, ends)
	}

	if err := h.e.Reconfigure([]ServiceConfig{{Addr: server, Mode: ModeAlways, Thresholds: testThresholds}, {Addr: server6}}); err != nil {
		t.Fatal(err)
	}
	for range 200 { // past the hold time
		feed.tick(0)
	}
	if starts, ends := attackLines(h); len(starts)+len(ends) != 0 {
		t.Fatalf("back and calm: starts %q, ends %q; want none", starts, ends)
	}
	for range 30 {
		feed.tick(3000)
	}
	if starts, ends := attackLines(h); len(starts) != 1 || len(ends) != 0 {
		t.Fatalf("a new flood: starts %q, ends %q; want one start", starts, ends)
	}
}

// TestAttackSources: a concentrated flood's prefix leads the attack's
// sources, and the prefix of a client that completes handshakes shows
// its completions.
func TestAttackSources(t *testing.T) {
	h := newHarness(t, nil)
	heavy := netip.MustParsePrefix("198.18.7.0/24")
	// 4000 SYNs from one /24, spread over its hosts and ports.
	for i := range 4000 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 7, byte(i)}), uint16(1024+i))
		h.handle(syn(src, server, linuxOptions()), nf.Drop)
	}
	h.send.take()
	// 40 handshakes completed by the real client.
	for i := range 40 {
		c := netip.AddrPortFrom(client.Addr(), uint16(41000+i))
		h.handle(syn(c, server, linuxOptions()), nf.Drop)
		cookie := h.expect(1)[0].p.Seq
		h.handle(packet.Segment{Src: c, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
		h.expect(1)
	}
	src := h.e.sourcesOf(h.e.svc(0))
	if len(src.Top) < 2 {
		t.Fatalf("sources %+v: want the flood's prefix and the client's", src)
	}
	if src.Top[0].Prefix != heavy || src.Top[0].Completed != 0 {
		t.Errorf("heaviest source %+v, want %s with no completion", src.Top[0], heavy)
	}
	// Sampled one in SourceSampling: within one sample's weight.
	if d := int(src.Top[0].SYNs) - 4000; d < -SourceSampling || d > SourceSampling {
		t.Errorf("%s: %d SYNs counted, want 4000 ± %d", heavy, src.Top[0].SYNs, SourceSampling)
	}
	clientPrefix := netip.PrefixFrom(client.Addr(), 24).Masked()
	var found bool
	for _, s := range src.Top {
		if s.Prefix == clientPrefix {
			found = true
			// Completions count once the prefix is tracked: from its
			// first sampled SYN, at most SourceSampling-1 in.
			if s.Completed > 40 || s.Completed <= 40-SourceSampling {
				t.Errorf("client prefix completed %d handshakes, want 40 (less up to %d before it was first sampled)", s.Completed, SourceSampling-1)
			}
		}
	}
	if !found {
		t.Errorf("the client's prefix %s is not among the sources %+v", clientPrefix, src.Top)
	}
	if src.TopShare < 0.95 {
		t.Errorf("top share %.2f for a flood from one prefix, want near 1", src.TopShare)
	}
	if src.Spread > 0.1 {
		t.Errorf("spread %.2f for a flood from one prefix, want near 0", src.Spread)
	}
}
