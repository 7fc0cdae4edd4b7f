package engine

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

// fakeReplayer is the fast path's record of replayed flows: Endings and
// Forget report the endings set for a flow, Forget also those set in
// lateEndings (noted after the engine looked).
type fakeReplayer struct {
	forgot      []netip.AddrPort // clients
	forgotEnded []netip.AddrPort // clients, ForgetEnded
	endings     map[netip.AddrPort]FastEndings
	lateEndings map[netip.AddrPort]FastEndings
	pending     map[netip.AddrPort]ReplayedFlow // records whose event was not read
}

func (r *fakeReplayer) Pending(client, _ netip.AddrPort) (ReplayedFlow, bool) {
	f, ok := r.pending[client]
	return f, ok
}

func (r *fakeReplayer) Forget(client, _ netip.AddrPort, _ cookies.Cookie) (FastEndings, error) {
	r.forgot = append(r.forgot, client)
	delete(r.pending, client)
	e, l := r.endings[client], r.lateEndings[client]
	return FastEndings{ClientFIN: e.ClientFIN || l.ClientFIN, ServerFIN: e.ServerFIN || l.ServerFIN,
		RST: e.RST || l.RST, Replaced: e.Replaced || l.Replaced}, nil
}

func (r *fakeReplayer) Endings(client, _ netip.AddrPort, _ cookies.Cookie) FastEndings {
	e := r.endings[client]
	e.Gone = slices.Contains(r.forgot, client)
	return e
}

func (r *fakeReplayer) ForgetEnded(client, _ netip.AddrPort, _ cookies.Cookie) {
	r.forgotEnded = append(r.forgotEnded, client)
}

func newReplayHarness(t *testing.T) (*harness, *fakeReplayer) {
	r := &fakeReplayer{endings: make(map[netip.AddrPort]FastEndings), lateEndings: make(map[netip.AddrPort]FastEndings),
		pending: make(map[netip.AddrPort]ReplayedFlow)}
	return newHarness(t, func(c *Config) { c.Replayer, c.EarlyData = r, true }), r
}

// cookieFor is the cookie the fast path would have given the client's
// SYN (linuxOptions), as the engine gives it.
func (h *harness) cookieFor(c netip.AddrPort) uint32 {
	h.t.Helper()
	h.handle(syn(c, server, linuxOptions()), nf.Drop)
	return h.expect(1)[0].p.Seq
}

// TestFastPathCompletedHandshake: a flow whose SYN the fast path replayed
// and whose backend it ACKed gets its entry from the engine, as a flow the
// engine completed would, but no window update (the fast path sent it),
// and the fast path's record is forgotten once the entry exists.
func TestFastPathCompletedHandshake(t *testing.T) {
	for _, replayedFirst := range []bool{true, false} {
		h, r := newReplayHarness(t)
		cookie := h.cookieFor(client)
		const serverISN = 0x20
		ev := ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502}
		if replayedFirst {
			h.e.FastPathReplayed(ev)
			if h.e.Pending() != 1 || h.stat(BackendSYNSent) != 1 || h.stat(CookieValid) != 1 {
				t.Fatalf("after the replay: %d pending, %d SYNs sent, %d valid cookies; want 1 each", h.e.Pending(), h.stat(BackendSYNSent), h.stat(CookieValid))
			}
			h.drainHandoffs()
			if len(h.handoff.got) != 0 {
				t.Fatal("handed off before the backend answered")
			}
		}
		ev.Answered, ev.ServerISN, ev.ServerScale = true, serverISN, 7
		h.e.FastPathReplayed(ev)
		h.drainHandoffs()
		want := handoff.Flow{Client: client, Server: server, CookieISN: cookie, ServerISN: serverISN,
			ClientWindowScale: 7, ServerWindowScale: 7, Mark: 0x5347}
		if len(h.handoff.got) != 1 || h.handoff.got[0] != want {
			t.Fatalf("replayed first %v: hand-offs %+v, want %+v", replayedFirst, h.handoff.got, want)
		}
		h.expect(0) // the window update was the fast path's
		if len(r.forgot) != 1 || r.forgot[0] != client {
			t.Fatalf("forgot %v, want the flow once", r.forgot)
		}
		if h.stat(HandedOff) != 1 || h.stat(BackendSYNSent) != 1 {
			t.Fatalf("%d handed off, %d SYNs sent; want 1 each", h.stat(HandedOff), h.stat(BackendSYNSent))
		}
		// A segment that reaches the queue later (the entry not seen
		// yet) is translated from the flow's record.
		req := appendPayload(build(t, packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK | packet.PSH, Window: 502}), []byte("GET /"))
		if v := h.handleAt(req, nf.Forward); v != nf.AcceptRewritten {
			t.Fatalf("a later client segment: verdict %v, want accept_rewritten", v)
		}
	}
}

// TestFastPathReplayRetried: the engine resends a replayed SYN the backend
// does not answer, as it resends its own, and when it gives up resets
// both ends and has the fast path forget the flow.
func TestFastPathReplayRetried(t *testing.T) {
	h, r := newReplayHarness(t)
	cookie := h.cookieFor(client)
	h.e.FastPathReplayed(ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502})
	h.expect(0)
	h.clock.advance(DefaultRetryInitial + DefaultRetryInitial/2)
	h.e.Tick()
	resent := h.expect(1)[0].p
	if resent.Destination() != server || resent.Flags != packet.SYN || resent.Seq != clientISN ||
		resent.Options.MSS != 1460 || resent.Options.WindowScale != 7 || !resent.Options.SACKPermitted {
		t.Fatalf("resent SYN %+v", resent)
	}
	if h.stat(BackendRetry) != 1 {
		t.Fatalf("%d retries counted, want 1", h.stat(BackendRetry))
	}
	for range 10 {
		h.clock.advance(4 * DefaultRetryInitial << 4)
		h.e.Tick()
	}
	if h.stat(BackendTimeout) != 1 || h.e.Pending() != 0 {
		t.Fatalf("%d timeouts, %d pending; want 1 and 0", h.stat(BackendTimeout), h.e.Pending())
	}
	if len(r.forgot) != 1 || r.forgot[0] != client {
		t.Fatalf("forgot %v, want the flow once", r.forgot)
	}
}

// answeredAtFastPath tells the engine that the fast path replayed client's
// SYN (cookie) and completed its backend's handshake (ISN 0x30), and lets
// the hand-offs run.
func (h *harness) answeredAtFastPath(cookie uint32) {
	h.e.FastPathReplayed(ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN,
		ClientWindow: 502, Answered: true, ServerISN: 0x30, ServerScale: cookies.NoWindowScale})
	h.drainHandoffs()
}

// TestFastPathEndedBeforeEntry: a flow the fast path carried to its end
// (both FINs, or an RST), or into it (one FIN), before the engine heard
// it was answered gets no entry; the fast path's record, which carries it
// to its end, is forgotten with the flow, and a retransmitted SYN-ACK is
// still ACKed.
func TestFastPathEndedBeforeEntry(t *testing.T) {
	for _, ended := range []FastEndings{{ClientFIN: true, ServerFIN: true}, {RST: true}, {ServerFIN: true}, {ClientFIN: true}, {Replaced: true}} {
		h, r := newReplayHarness(t)
		cookie := h.cookieFor(client)
		r.endings[client] = ended
		h.answeredAtFastPath(cookie)
		if len(h.handoff.got) != 0 || h.handoff.deleted != 0 || h.stat(EndedUnseen) != 1 || h.stat(HandedOff) != 1 {
			t.Fatalf("ended %v: %d created, %d deleted, %d ended unseen, %d handed off; want 0, 0, 1, 1",
				ended, len(h.handoff.got), h.handoff.deleted, h.stat(EndedUnseen), h.stat(HandedOff))
		}
		if len(r.forgot) != 0 || len(r.forgotEnded) != 0 || h.e.Pending() != 1 {
			t.Fatalf("ended %v: forgot %v and %v, %d pending; want the record and the flow kept", ended, r.forgot, r.forgotEnded, h.e.Pending())
		}
		synack := build(t, packet.Segment{Src: server, Dst: client, Seq: 0x30, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65535})
		h.handleAt(synack, nf.Forward)
		if got := h.expect(1)[0].p; got.Flags != packet.ACK || got.Ack != 0x31 || got.Destination() != server {
			t.Fatalf("ended %v: answer to a retransmitted SYN-ACK %+v, want the backend's ACK", ended, got)
		}
		h.clock.advance(DefaultLinger + time.Second)
		h.e.Tick()
		if h.e.Pending() != 0 || len(r.forgotEnded) != 1 || r.forgotEnded[0] != client || len(r.forgot) != 0 {
			t.Fatalf("ended %v: after the linger %d pending, forgot %v and %v; want the record forgotten with the flow",
				ended, h.e.Pending(), r.forgot, r.forgotEnded)
		}
	}
}

// TestFastPathEndedWhileEntryMade: a flow that ends after the engine
// looked, while its entry is made, or whose ports a new connection took
// meanwhile (its record replaced), has the entry deleted at once.
func TestFastPathEndedWhileEntryMade(t *testing.T) {
	for _, late := range []FastEndings{{ClientFIN: true, ServerFIN: true}, {Replaced: true}} {
		h, r := newReplayHarness(t)
		cookie := h.cookieFor(client)
		r.lateEndings[client] = late
		h.answeredAtFastPath(cookie)
		if len(h.handoff.got) != 1 || h.handoff.deleted != 1 || h.stat(EndedUnseen) != 1 {
			t.Fatalf("%+v: %d created, %d deleted, %d ended unseen; want 1 each", late, len(h.handoff.got), h.handoff.deleted, h.stat(EndedUnseen))
		}
		if len(r.forgot) != 1 || len(r.forgotEnded) != 0 {
			t.Fatalf("%+v: forgot %v and %v; want the record forgotten at the hand-off", late, r.forgot, r.forgotEnded)
		}
	}
}

// TestFastPathDeferred: when the client's request reaches the queue before
// the backend answered the fast path's SYN, the engine completes the flow
// as its own: it holds the request, ACKs the backend's answer, releases
// the request, and sends the window update; then it forgets the fast
// path's record.
func TestFastPathDeferred(t *testing.T) {
	h, r := newReplayHarness(t)
	cookie := h.cookieFor(client)
	h.e.FastPathReplayed(ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502})
	req := build(t, packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK | packet.PSH, Window: 502})
	if v := h.handleAt(appendPayload(req, []byte("GET /")), nf.Forward); v != nf.Hold {
		t.Fatalf("request behind the fast path's replay: verdict %v, want hold", v)
	}
	h.expect(0) // the fast path's SYN is out; no second one
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 0x40, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160}, nf.Drop)
	if ack := h.expect(1)[0].p; ack.Destination() != server || ack.Ack != 0x41 {
		t.Fatalf("ACK to backend %+v", ack)
	}
	h.drainHandoffs()
	if update := h.expect(1)[0].p; update.Destination() != client || update.Seq != cookie+1 {
		t.Fatalf("window update %+v", update)
	}
	if len(r.forgot) != 1 {
		t.Fatalf("forgot %v, want the flow once", r.forgot)
	}
}

// TestFastPathAdoptedOnTheBackendsAnswer: a backend's answer that reaches
// the queue before the engine read the fast path's event (an RST, here)
// finds the flow through the fast path's record: the client is reset, the
// request it held released as dropped, and the record forgotten.
func TestFastPathAdoptedOnTheBackendsAnswer(t *testing.T) {
	h, r := newReplayHarness(t)
	cookie := h.cookieFor(client)
	r.pending[client] = ReplayedFlow{Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502}
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 0, Ack: clientISN + 1, Flags: packet.RST | packet.ACK}, nf.Drop)
	rst := h.expect(1)[0].p
	if rst.Destination() != client || rst.Flags != packet.RST|packet.ACK || rst.Seq != cookie+1 || rst.Ack != clientISN+1 {
		t.Fatalf("reset to the client %+v", rst)
	}
	if h.stat(BackendReset) != 1 || h.stat(Unmatched) != 0 || h.e.Pending() != 0 {
		t.Fatalf("%d backend resets, %d unmatched, %d pending; want 1, 0, 0", h.stat(BackendReset), h.stat(Unmatched), h.e.Pending())
	}
	if len(r.forgot) != 1 {
		t.Fatalf("forgot %v, want the flow once", r.forgot)
	}
	// The event of the replayed SYN, read after all that, starts
	// nothing again: no second flow, no SYN resent to the closed port.
	h.e.FastPathReplayed(ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502})
	h.clock.advance(DefaultRetryInitial * 2)
	h.e.Tick()
	h.expect(0)
	if h.e.Pending() != 0 || h.stat(CookieValid) != 1 || h.stat(BackendSYNSent) != 1 {
		t.Fatalf("after the late event: %d pending, %d valid cookies, %d SYNs sent; want 0, 1, 1", h.e.Pending(), h.stat(CookieValid), h.stat(BackendSYNSent))
	}
	// Without a record it is no flow of ours.
	h.handle(packet.Segment{Src: server, Dst: netip.AddrPortFrom(client.Addr(), client.Port()+1), Seq: 0, Ack: 7, Flags: packet.RST | packet.ACK}, nf.Accept)
	if h.stat(Unmatched) != 1 {
		t.Fatalf("%d unmatched, want 1", h.stat(Unmatched))
	}
}

// TestFastPathTimerSetOnceCaughtUp: the flows the fast path's events
// start set no timer until the reader has read every event there is; a
// flow answered by then has the timer set for the end of its linger, not
// for a retry it will never need, and one still waiting for its backend
// for its first retry. Too many flows before the reader catches up set
// the timer anyway.
func TestFastPathTimerSetOnceCaughtUp(t *testing.T) {
	h, _ := newReplayHarness(t)
	e := h.e
	due := func() time.Duration {
		if ns := e.due.Load(); ns != 0 {
			return time.Unix(0, ns).Sub(h.clock.now())
		}
		return 0
	}
	cookie := h.cookieFor(client)
	ev := ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502}
	e.FastPathReplayed(ev)
	ev.Answered, ev.ServerISN, ev.ServerScale = true, 0x30, cookies.NoWindowScale
	e.FastPathReplayed(ev)
	h.drainHandoffs()
	if d := due(); d != 0 {
		t.Fatalf("timer due in %v before the reader caught up, want unset", d)
	}
	e.FastPathCaughtUp()
	if d, want := due(), DefaultLinger+e.forgetSlack(); d != want {
		t.Fatalf("an answered flow: timer due in %v, want %v (its linger)", d, want)
	}

	h, _ = newReplayHarness(t)
	e = h.e
	cookie = h.cookieFor(client)
	e.FastPathReplayed(ReplayedFlow{Service: 0, Client: client, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502})
	e.FastPathCaughtUp()
	if d, want := due(), DefaultRetryInitial+e.retrySlack(); d != want {
		t.Fatalf("a flow waiting for its backend: timer due in %v, want %v (its retry)", d, want)
	}
	e.due.Store(0)
	e.FastPathCaughtUp()
	if d := due(); d != 0 {
		t.Fatalf("caught up again with no new flow: timer due in %v, want unset", d)
	}

	h, _ = newReplayHarness(t)
	e = h.e
	for i := range maxFastStarted {
		c := netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i))
		cookie := h.cookieFor(c)
		e.FastPathReplayed(ReplayedFlow{Service: 0, Client: c, Server: server, Cookie: cookies.Cookie(cookie), ClientISN: clientISN, ClientWindow: 502})
		if d := due(); (d != 0) != (i == maxFastStarted-1) {
			t.Fatalf("after %d flows not caught up: timer due in %v; want it set by flow %d alone", i+1, d, maxFastStarted)
		}
	}
}
