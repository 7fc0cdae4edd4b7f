package engine

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/handoff"
	"github.com/synguard/synguard/internal/poll"
	"github.com/synguard/synguard/nf"
	"github.com/synguard/synguard/packet"
)

var (
	client  = netip.MustParseAddrPort("198.51.100.2:40000")
	server  = netip.MustParseAddrPort("203.0.113.2:80")
	other   = netip.MustParseAddrPort("203.0.113.9:80")
	client6 = netip.MustParseAddrPort("[2001:db8:c::2]:40000")
	server6 = netip.MustParseAddrPort("[2001:db8:b::2]:443")
)

// sent is a packet the engine transmitted, parsed.
type sent struct {
	dst netip.Addr
	p   packet.Packet
}

type fakeSender struct {
	mu   sync.Mutex
	pkts []sent
	err  error
}

func (s *fakeSender) Send(b []byte, dst netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil {
		panic("engine sent an unparsable packet: " + err.Error())
	}
	if !packet.VerifyTCPChecksum(b, &p) {
		panic("engine sent a packet with a bad checksum")
	}
	s.pkts = append(s.pkts, sent{dst, p})
	return nil
}

func (s *fakeSender) take() []sent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.pkts
	s.pkts = nil
	return out
}

// sink takes the packets a test's batches send.
type sink interface {
	Send(b []byte, dst netip.Addr) error
}

// immediate is a Batch that sends each packet through its sink as it is
// added, and reports the sink's errors at Flush: tests see what the
// engine sent at once, and the engine counts as it does in production.
type immediate struct {
	to   sink
	errs []error
}

func (b *immediate) Add(p []byte, dst netip.Addr) bool {
	b.errs = append(b.errs, b.to.Send(p, dst))
	return true
}

func (b *immediate) Flush(failed func(int, error)) {
	for i, err := range b.errs {
		if err != nil {
			failed(i, err)
		}
	}
	b.errs = b.errs[:0]
}

// immediateTo is a Config.NewBatch whose batches send to s.
func immediateTo(s sink) func() Batch {
	return func() Batch { return &immediate{to: s} }
}

type fakeHandoff struct {
	mu  sync.Mutex
	got []handoff.Flow
	err error
	// clearAfterDelete makes Delete clear err, like a kernel whose stale
	// entry is gone.
	clearAfterDelete bool
	onCreate         func() // called in Create, e.g. to move the clock
	deleted          int
}

func (h *fakeHandoff) Create(f handoff.Flow) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, f)
	if h.onCreate != nil {
		h.onCreate()
	}
	return h.err
}

func (h *fakeHandoff) Delete(client, server netip.AddrPort) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.deleted++
	if h.clearAfterDelete {
		h.err = nil
	}
	return nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type harness struct {
	t       *testing.T
	e       *Engine
	w       *Worker
	send    *fakeSender
	handoff *fakeHandoff
	events  *recordedEvents
	clock   *clock
	jar     *cookies.Jar
	queue   *fakeQueue
	lastID  uint32
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	jar, err := cookies.New(cookies.Config{Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, send: &fakeSender{}, handoff: &fakeHandoff{}, events: &recordedEvents{}, clock: c, jar: jar, queue: &fakeQueue{}}
	cfg := Config{
		Services:    []ServiceConfig{{Addr: server}, {Addr: server6}},
		Mode:        ModeAlways,
		Cookies:     jar,
		NewBatch:    immediateTo(h.send),
		Kernel:      h.handoff,
		HandoffMark: 0x5347,
		Events:      h.events,
		Now:         c.now,
	}
	if mod != nil {
		mod(&cfg)
	}
	h.e, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.w = h.e.NewWorker(cfg.NewBatch(), h.queue)
	return h
}

func build(t testing.TB, s packet.Segment) []byte {
	t.Helper()
	b := make([]byte, packet.MaxHandshakeLen+64)
	n, err := packet.Build(b, &s)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

func linuxOptions() packet.Options {
	return packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, HasTimestamps: true, TSVal: 1, WindowScale: 7, HasWindowScale: true}
}

// handle feeds a packet and checks the verdict.
// handleRaw hands b to the worker as a packet of unknown hook and flushes
// its replies, as the gateway does at the end of a receive batch.
func (h *harness) handleRaw(b []byte) nf.Verdict { return h.handleAt(b, nf.Unknown) }

// handleAt is handleRaw for a packet queued from hook.
func (h *harness) handleAt(b []byte, hook nf.Hook) nf.Verdict {
	h.lastID++
	v := h.w.Handle(b, hook, h.lastID)
	h.w.Flush()
	if v == nf.Hold {
		h.queue.hold(h.lastID, b)
	}
	return v
}

func (h *harness) handle(s packet.Segment, want nf.Verdict) {
	h.t.Helper()
	if got := h.handleRaw(build(h.t, s)); got != want {
		h.t.Fatalf("verdict for %v %s>%s = %v, want %v", s.Flags, s.Src, s.Dst, got, want)
	}
}

// expect takes what was sent and checks it is exactly n packets.
func (h *harness) expect(n int) []sent {
	h.t.Helper()
	got := h.send.take()
	if len(got) != n {
		h.t.Fatalf("sent %d packets, want %d: %+v", len(got), n, got)
	}
	return got
}

// drainHandoffs runs queued hand-offs, and deletions of entries of flows
// that ended unseen, synchronously.
func (h *harness) drainHandoffs() {
	out := h.e.newOutbox(h.e.cfg.NewBatch())
	for {
		select {
		case k := <-h.e.handoffs:
			h.e.handoff(out, k)
			out.flush()
		case k := <-h.e.ended:
			h.e.deleteEnded(out, k)
		default:
			return
		}
	}
}

func (h *harness) stat(c Counter) uint64 { s := h.e.Stats(0); return s.Get(c) }

const clientISN = 0xfffffff0 // wraps on +1 arithmetic around 2^32

func syn(src, dst netip.AddrPort, opts packet.Options) packet.Segment {
	return packet.Segment{Src: src, Dst: dst, Seq: clientISN, Flags: packet.SYN, Window: 64240, Options: opts}
}

// handshake runs SYN and ACK and returns the cookie and the replayed SYN.
func (h *harness) handshake(opts packet.Options) (cookie uint32, replay packet.Packet) {
	h.t.Helper()
	h.handle(syn(client, server, opts), nf.Drop)
	synack := h.expect(1)[0]
	cookie = synack.p.Seq
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
	r := h.expect(1)[0]
	return cookie, r.p
}

func TestSYNAnsweredWithCookie(t *testing.T) {
	h := newHarness(t, nil)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	got := h.expect(1)[0]
	p := got.p
	if got.dst != client.Addr() || p.Source() != server || p.Destination() != client {
		t.Fatalf("SYN-ACK addressed %s>%s via %s", p.Source(), p.Destination(), got.dst)
	}
	if p.Flags != packet.SYN|packet.ACK || p.Ack != clientISN+1 || p.Window != 0 {
		t.Fatalf("SYN-ACK flags %v ack %#x window %d", p.Flags, p.Ack, p.Window)
	}
	if p.Options.HasTimestamps {
		t.Fatal("SYN-ACK carries timestamps; the kernel cannot translate them after the hand-off")
	}
	def := DefaultBackendOptions(false)
	if !p.Options.HasMSS || p.Options.MSS != def.MSS || !p.Options.HasWindowScale || p.Options.WindowScale != uint8(def.WindowScale) || !p.Options.SACKPermitted {
		t.Fatalf("SYN-ACK options %+v, want the backend's %+v", p.Options, def)
	}
	opts, ok := h.jar.Validate(client, server, clientISN, cookies.Cookie(p.Seq))
	if !ok || opts.MSS != 1460 || opts.WindowScale != 7 || !opts.SACKPermitted {
		t.Fatalf("cookie does not validate with the SYN's options: %+v %v", opts, ok)
	}
	if h.stat(SYNReceived) != 1 || h.stat(SYNACKSent) != 1 || h.e.Pending() != 0 {
		t.Fatal("counters or state wrong: a SYN must leave no state")
	}

	// A retransmitted SYN gets the same cookie.
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	if again := h.expect(1)[0]; again.p.Seq != p.Seq {
		t.Fatalf("retransmitted SYN got cookie %#x, first %#x", again.p.Seq, p.Seq)
	}
}

func TestSYNACKNeverLargerThanSYN(t *testing.T) {
	tests := []struct {
		name string
		opts packet.Options
	}{
		{"no options", packet.Options{}},
		{"window scale only", packet.Options{WindowScale: 7, HasWindowScale: true}},
		{"SACK only", packet.Options{SACKPermitted: true}},
		{"MSS only", packet.Options{MSS: 1400, HasMSS: true}},
		{"MSS and SACK", packet.Options{MSS: 1400, HasMSS: true, SACKPermitted: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			in := build(t, syn(client, server, tt.opts))
			h.handleRaw(in)
			got := h.expect(1)[0]
			if l := got.p.IPHeaderLen + got.p.TCPHeaderLen; l > len(in) {
				t.Fatalf("SYN-ACK %d bytes > SYN %d bytes", l, len(in))
			}
			if got.p.Options.HasWindowScale != tt.opts.HasWindowScale || got.p.Options.SACKPermitted != tt.opts.SACKPermitted {
				t.Fatalf("announced %+v to a client that offered %+v", got.p.Options, tt.opts)
			}
		})
	}
}

func TestFullHandshakeHandsOff(t *testing.T) {
	h := newHarness(t, nil)
	cookie, replay := h.handshake(linuxOptions())

	// The backend gets the client's SYN: its ISN and options, no timestamps.
	if replay.Source() != client || replay.Destination() != server || replay.Flags != packet.SYN || replay.Seq != clientISN {
		t.Fatalf("replayed SYN %s>%s flags %v seq %#x", replay.Source(), replay.Destination(), replay.Flags, replay.Seq)
	}
	if replay.Options.MSS != 1460 || replay.Options.WindowScale != 7 || !replay.Options.SACKPermitted || replay.Options.HasTimestamps {
		t.Fatalf("replayed SYN options %+v", replay.Options)
	}
	if h.stat(CookieValid) != 1 || h.e.Pending() != 1 {
		t.Fatal("valid cookie not counted or flow not pending")
	}

	// The backend answers; the engine drops its SYN-ACK, ACKs it at once
	// and hands off.
	const serverISN = 0x10
	h.handle(packet.Segment{Src: server, Dst: client, Seq: serverISN, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160,
		Options: packet.Options{MSS: 1460, HasMSS: true, SACKPermitted: true, WindowScale: 7, HasWindowScale: true}}, nf.Drop)
	ack := h.expect(1)[0].p
	if ack.Destination() != server || ack.Flags != packet.ACK || ack.Seq != clientISN+1 || ack.Ack != serverISN+1 || ack.Window != 502 {
		t.Fatalf("ACK to backend: %+v", ack)
	}
	h.drainHandoffs()

	if len(h.handoff.got) != 1 {
		t.Fatalf("%d hand-offs, want 1", len(h.handoff.got))
	}
	want := handoff.Flow{Client: client, Server: server, CookieISN: cookie, ServerISN: serverISN,
		ClientWindowScale: 7, ServerWindowScale: 7, Mark: 0x5347}
	if got := h.handoff.got[0]; got != want {
		t.Fatalf("hand-off %+v, want %+v", got, want)
	}
	update := h.expect(1)[0].p
	if update.Destination() != client || update.Source() != server || update.Flags != packet.ACK ||
		update.Seq != cookie+1 || update.Ack != clientISN+1 || update.Window != 65160>>7 {
		t.Fatalf("window update to client: %+v", update)
	}
	if h.stat(HandedOff) != 1 {
		t.Fatal("hand-off not counted")
	}

	// The backend retransmits its SYN-ACK (our ACK was lost): ACK again,
	// without a second hand-off.
	h.handle(packet.Segment{Src: server, Dst: client, Seq: serverISN, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160}, nf.Drop)
	if again := h.expect(1)[0].p; again.Destination() != server || again.Ack != serverISN+1 {
		t.Fatalf("re-ACK %+v", again)
	}
	h.drainHandoffs()
	if len(h.handoff.got) != 1 {
		t.Fatal("second hand-off for a retransmitted SYN-ACK")
	}

	// After the linger time the record is gone.
	h.clock.advance(DefaultLinger + time.Second)
	h.e.Tick()
	if h.e.Pending() != 0 {
		t.Fatal("handed-off flow still pending after linger")
	}
}

func TestDuplicateACKAndProbes(t *testing.T) {
	h := newHarness(t, nil)
	cookie, _ := h.handshake(linuxOptions())
	// Duplicate third ACK, zero-window probe (seq = ISN), ACK with data:
	// none replays the SYN again.
	for _, seq := range []uint32{clientISN + 1, clientISN} {
		h.handle(packet.Segment{Src: client, Dst: server, Seq: seq, Ack: cookie + 1, Flags: packet.ACK}, nf.Drop)
	}
	h.expect(0)
	if h.stat(DuplicateACK) != 2 || h.stat(BackendSYNSent) != 1 {
		t.Fatalf("duplicates %d, replays %d", h.stat(DuplicateACK), h.stat(BackendSYNSent))
	}
}

func TestLostACKRecoveredByZeroWindowProbe(t *testing.T) {
	h := newHarness(t, nil)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	// The third ACK is lost; the client, facing a zero window, probes
	// with seq = ISN. The probe proves the cookie just as well.
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN, Ack: cookie + 1, Flags: packet.ACK}, nf.Drop)
	r := h.expect(1)[0].p
	if r.Flags != packet.SYN || r.Seq != clientISN || r.Destination() != server {
		t.Fatalf("probe did not replay the SYN: %+v", r)
	}
}

func TestACKCarryingData(t *testing.T) {
	h := newHarness(t, nil)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	seg := build(t, packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK | packet.PSH})
	seg = appendPayload(seg, []byte("GET / HTTP/1.1\r\n\r\n"))
	if v := h.handleRaw(seg); v != nf.Drop {
		t.Fatalf("verdict %v", v)
	}
	if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Seq != clientISN {
		t.Fatalf("data ACK did not replay the SYN: %+v", r)
	}
}

// appendPayload adds data to an IPv4 packet and fixes lengths and the TCP
// checksum.
func appendPayload(b, data []byte) []byte {
	out := append(append([]byte(nil), b...), data...)
	out[2], out[3] = byte(len(out)>>8), byte(len(out))
	out[10], out[11] = 0, 0
	ck := packet.Checksum(out[:20])
	out[10], out[11] = byte(ck>>8), byte(ck)
	tcp := out[20:]
	tcp[16], tcp[17] = 0, 0
	var p packet.Packet
	_ = packet.Parse(out, &p)
	ck = packet.TCPChecksum(p.Src, p.Dst, tcp)
	tcp[16], tcp[17] = byte(ck>>8), byte(ck)
	return out
}

func TestInvalidACKDroppedSilently(t *testing.T) {
	h := newHarness(t, nil)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	for _, seg := range []packet.Segment{
		{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 2, Flags: packet.ACK},                                   // wrong cookie
		{Src: client, Dst: server, Seq: clientISN + 7, Ack: cookie + 1, Flags: packet.ACK},                                   // wrong ISN
		{Src: netip.AddrPortFrom(client.Addr(), 40001), Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK}, // other port
	} {
		h.handle(seg, nf.Drop)
	}
	h.expect(0)
	if h.stat(CookieInvalid) != 3 || h.e.Pending() != 0 {
		t.Fatalf("invalid %d pending %d", h.stat(CookieInvalid), h.e.Pending())
	}
}

func TestClientResetBeforeHandoff(t *testing.T) {
	h := newHarness(t, nil)
	cookie, _ := h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.RST}, nf.Drop)
	rst := h.expect(1)[0].p
	if rst.Destination() != server || !rst.Flags.Has(packet.RST) || rst.Seq != clientISN+1 {
		t.Fatalf("backend not reset: %+v", rst)
	}
	if h.e.Pending() != 0 || h.stat(ClientReset) != 1 {
		t.Fatal("flow not forgotten")
	}
}

func TestBackendReset(t *testing.T) {
	h := newHarness(t, nil)
	cookie, _ := h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: server, Dst: client, Ack: clientISN + 1, Flags: packet.RST | packet.ACK}, nf.Drop)
	rst := h.expect(1)[0].p
	if rst.Destination() != client || rst.Source() != server || !rst.Flags.Has(packet.RST) || rst.Seq != cookie+1 {
		t.Fatalf("client not reset: %+v", rst)
	}
	if h.e.Pending() != 0 || h.stat(BackendReset) != 1 {
		t.Fatal("flow not forgotten")
	}
}

func TestBackendSilenceRetriesThenResets(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(linuxOptions())
	wait := DefaultRetryInitial
	for i := range DefaultSYNRetries {
		// Just before the retry is due, nothing happens.
		h.clock.advance(wait - time.Millisecond)
		h.e.Tick()
		h.expect(0)
		h.clock.advance(time.Millisecond)
		h.e.Tick()
		r := h.expect(1)[0].p
		if r.Flags != packet.SYN || r.Seq != clientISN || r.Destination() != server {
			t.Fatalf("retry %d: %+v", i+1, r)
		}
		wait *= 2
	}
	h.clock.advance(wait)
	h.e.Tick()
	out := h.expect(2)
	if out[0].p.Destination() != client || !out[0].p.Flags.Has(packet.RST) || out[1].p.Destination() != server || !out[1].p.Flags.Has(packet.RST) {
		t.Fatalf("give-up did not reset both ends: %+v", out)
	}
	if h.e.Pending() != 0 || h.stat(BackendTimeout) != 1 || h.stat(BackendRetry) != DefaultSYNRetries {
		t.Fatalf("pending %d timeouts %d retries %d", h.e.Pending(), h.stat(BackendTimeout), h.stat(BackendRetry))
	}
}

func TestKeyRotation(t *testing.T) {
	h := newHarness(t, nil)
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	// One rotation later the cookie is still good...
	h.clock.advance(cookies.DefaultPeriod)
	h.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK}, nf.Drop)
	h.expect(1)

	// ...two rotations later it is not.
	h2 := newHarness(t, nil)
	h2.handle(syn(client, server, linuxOptions()), nf.Drop)
	cookie = h2.expect(1)[0].p.Seq
	h2.clock.advance(2*cookies.DefaultPeriod + time.Second)
	h2.handle(packet.Segment{Src: client, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK}, nf.Drop)
	h2.expect(0)
	if h2.stat(CookieInvalid) != 1 {
		t.Fatal("expired cookie accepted")
	}
}

func TestPendingTableBounded(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxPending = 3 })
	for port := uint16(1000); port < 1010; port++ {
		c := netip.AddrPortFrom(client.Addr(), port)
		h.handle(packet.Segment{Src: c, Dst: server, Seq: clientISN, Flags: packet.SYN, Options: linuxOptions()}, nf.Drop)
		cookie := h.expect(1)[0].p.Seq
		h.handle(packet.Segment{Src: c, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK}, nf.Drop)
		h.send.take() // the replayed SYN, while the table has room
	}
	if h.e.Pending() != 3 || h.stat(PendingFull) != 7 {
		t.Fatalf("pending %d full %d", h.e.Pending(), h.stat(PendingFull))
	}
}

func TestHandoffFailureResetsBoth(t *testing.T) {
	h := newHarness(t, nil)
	h.handoff.err = errors.New("netlink says no")
	h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK}, nf.Drop)
	if ack := h.expect(1)[0].p; ack.Destination() != server || ack.Flags != packet.ACK {
		t.Fatalf("the backend's SYN-ACK was not ACKed at once: %+v", ack)
	}
	h.drainHandoffs()
	out := h.expect(2)
	if !out[0].p.Flags.Has(packet.RST) || !out[1].p.Flags.Has(packet.RST) {
		t.Fatalf("want RSTs, got %+v", out)
	}
	if h.stat(HandoffFailed) != 1 || h.e.Pending() != 0 {
		t.Fatal("failure not counted or flow kept")
	}
}

func TestHandoffExistingEntryIsDone(t *testing.T) {
	h := newHarness(t, nil)
	h.handoff.err = handoff.ErrExists
	h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 1000}, nf.Drop)
	h.drainHandoffs()
	h.expect(2) // ACK to backend, window update
	if h.stat(HandedOff) != 1 {
		t.Fatal("an existing entry is a completed hand-off")
	}
}

func TestOptionMismatchCountedAndLearned(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(linuxOptions())
	// The backend scales by 9, not the assumed 7.
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65535,
		Options: packet.Options{MSS: 1400, HasMSS: true, SACKPermitted: true, WindowScale: 9, HasWindowScale: true}}, nf.Drop)
	h.drainHandoffs()
	if h.stat(OptionMismatch) != 1 {
		t.Fatal("mismatch not counted")
	}
	if got := h.e.Backend(0); got.WindowScale != 9 || got.MSS != 1400 {
		t.Fatalf("backend options not learned: %+v", got)
	}
	// The hand-off carries the backend's real scale, and the window update
	// uses the scale the client was told (7).
	if h.handoff.got[0].ServerWindowScale != 9 {
		t.Fatalf("hand-off server scale %d", h.handoff.got[0].ServerWindowScale)
	}
	update := h.expect(2)[1].p
	if update.Window != 65535>>7 {
		t.Fatalf("window update %d", update.Window)
	}
	// New clients are told the learned values.
	h.handle(syn(netip.AddrPortFrom(client.Addr(), 5), server, linuxOptions()), nf.Drop)
	if p := h.expect(1)[0].p; p.Options.WindowScale != 9 || p.Options.MSS != 1400 {
		t.Fatalf("next SYN-ACK options %+v", p.Options)
	}
}

func TestOverrideWins(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.BackendOverride = &BackendOptions{MSS: 1200, WindowScale: 2, SACKPermitted: false}
	})
	h.e.LearnBackend(0, BackendOptions{MSS: 1460, WindowScale: 7, SACKPermitted: true}, "probe")
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	if p := h.expect(1)[0].p; p.Options.MSS != 1200 || p.Options.WindowScale != 2 || p.Options.SACKPermitted {
		t.Fatalf("override ignored: %+v", p.Options)
	}
}

func TestIPv6Handshake(t *testing.T) {
	h := newHarness(t, nil)
	h.handle(packet.Segment{Src: client6, Dst: server6, Seq: 7, Flags: packet.SYN, Options: linuxOptions()}, nf.Drop)
	sa := h.expect(1)[0]
	if sa.dst != client6.Addr() || sa.p.Options.MSS != DefaultBackendOptions(true).MSS {
		t.Fatalf("v6 SYN-ACK %+v", sa)
	}
	h.handle(packet.Segment{Src: client6, Dst: server6, Seq: 8, Ack: sa.p.Seq + 1, Flags: packet.ACK}, nf.Drop)
	if r := h.expect(1)[0]; r.dst != server6.Addr() || r.p.Seq != 7 {
		t.Fatalf("v6 replay %+v", r)
	}
}

func TestUnrelatedTraffic(t *testing.T) {
	h := newHarness(t, nil)
	// From a protected backend, but no flow of ours: pass.
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: 2, Flags: packet.ACK}, nf.Accept)
	// Neither end protected: pass.
	h.handle(packet.Segment{Src: client, Dst: other, Seq: 1, Flags: packet.SYN}, nf.Accept)
	// Garbage: drop.
	if v := h.handleRaw([]byte{0x45, 0, 0}); v != nf.Drop {
		t.Fatal("malformed packet accepted")
	}
	// SYN+FIN to a service: drop.
	h.handle(packet.Segment{Src: client, Dst: server, Seq: 1, Flags: packet.SYN | packet.FIN}, nf.Drop)
	h.expect(0)
}

func TestSendErrorCounted(t *testing.T) {
	h := newHarness(t, nil)
	h.send.err = errors.New("ENOBUFS")
	h.handle(syn(client, server, linuxOptions()), nf.Drop)
	if h.stat(SendError) != 1 || h.stat(SYNACKSent) != 0 {
		t.Fatal("send error not counted")
	}
}

func TestConfigErrors(t *testing.T) {
	jar, _ := cookies.New(cookies.Config{})
	base := Config{Services: []ServiceConfig{{Addr: server}}, Cookies: jar, NewBatch: immediateTo(&fakeSender{}), Kernel: &fakeHandoff{}}
	for name, mod := range map[string]func(*Config){
		"no services":  func(c *Config) { c.Services = nil },
		"port zero":    func(c *Config) { c.Services = []ServiceConfig{{Addr: netip.MustParseAddrPort("203.0.113.2:0")}} },
		"unspecified":  func(c *Config) { c.Services = []ServiceConfig{{Addr: netip.MustParseAddrPort("0.0.0.0:80")}} },
		"duplicate":    func(c *Config) { c.Services = []ServiceConfig{{Addr: server}, {Addr: server}} },
		"no batches":   func(c *Config) { c.NewBatch = nil },
		"unknown mode": func(c *Config) { c.Mode = 9 },
		"inverted half-open watermarks": func(c *Config) {
			c.Thresholds = DefaultThresholds
			c.Thresholds.HalfOpenLow = c.Thresholds.HalfOpenHigh
		},
		"inverted rate watermarks": func(c *Config) {
			c.Thresholds = DefaultThresholds
			c.Thresholds.SYNRateLow = c.Thresholds.SYNRateHigh + 1
		},
		"high watermark past table": func(c *Config) {
			c.Thresholds = DefaultThresholds
			c.Thresholds.HalfOpenHigh = DefaultHalfOpenSlots
		},
	} {
		c := base
		mod(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestHandleSYNAllocatesNothing(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.NewBatch = discardBatches })
	in := build(t, syn(client, server, linuxOptions()))
	ack := build(t, packet.Segment{Src: client, Dst: server, Seq: 5, Ack: 9, Flags: packet.ACK})
	if n := testing.AllocsPerRun(200, func() {
		h.handleRaw(in)
		h.handleRaw(ack) // invalid cookie
	}); n != 0 {
		t.Fatalf("Handle allocates %.1f times per SYN + invalid ACK", n)
	}
}

// benchHandle measures a worker of an engine in mode handling pkts in
// turn, flushing its batch every flushEvery packets, as the gateway does
// at the end of each receive batch.
func benchHandle(b *testing.B, mode Mode, hook nf.Hook, flushEvery int, pkts ...[]byte) {
	jar, err := cookies.New(cookies.Config{})
	if err != nil {
		b.Fatal(err)
	}
	e, err := New(Config{Services: []ServiceConfig{{Addr: server}}, Mode: mode, Cookies: jar, NewBatch: discardBatches, Kernel: &fakeHandoff{}})
	if err != nil {
		b.Fatal(err)
	}
	w := e.NewWorker(discardBatches(), nil)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		w.Handle(pkts[i%len(pkts)], hook, uint32(i))
		if i++; i%flushEvery == 0 {
			w.Flush()
		}
	}
}

func BenchmarkHandleSYN(b *testing.B) {
	in := build(b, syn(client, server, linuxOptions()))
	b.Run("flush=1", func(b *testing.B) { benchHandle(b, ModeAlways, nf.Prerouting, 1, in) })
	b.Run("flush=64", func(b *testing.B) { benchHandle(b, ModeAlways, nf.Prerouting, 64, in) })
}

func BenchmarkHandleInvalidACK(b *testing.B) {
	benchHandle(b, ModeAlways, nf.Forward, 1, build(b, packet.Segment{Src: client, Dst: server, Seq: 5, Ack: 9, Flags: packet.ACK}))
}

// TestNewFlowOnLingeringPorts: a client that reconnects from the ports of
// a flow just handed off (its record still lingers) is not mistaken for a
// duplicate of the old flow, and the old entry in the kernel is replaced.
func TestNewFlowOnLingeringPorts(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 1, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 1000}, nf.Drop)
	h.drainHandoffs()
	h.expect(2)
	if h.e.Pending() != 1 {
		t.Fatal("handed-off flow not lingering")
	}

	// The same ports, a new ISN.
	const isn2 = 0x12345678
	h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2, Flags: packet.SYN, Options: linuxOptions()}, nf.Drop)
	cookie2 := h.expect(1)[0].p.Seq
	h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2 + 1, Ack: cookie2 + 1, Flags: packet.ACK}, nf.Drop)
	if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Seq != isn2 {
		t.Fatalf("new flow's ACK did not replay its SYN: %+v", r)
	}
	if h.stat(DuplicateACK) != 0 {
		t.Fatal("new flow's ACK taken for a duplicate")
	}
	// A duplicate of the old flow's ACK still is one... once the new flow
	// replaced the record, it belongs to the new flow, so use its cookie.
	h.handle(packet.Segment{Src: client, Dst: server, Seq: isn2 + 1, Ack: cookie2 + 1, Flags: packet.ACK}, nf.Drop)
	if h.stat(DuplicateACK) != 1 {
		t.Fatal("duplicate of the new flow's ACK not recognised")
	}

	// The kernel still has the old flow's entry: the hand-off replaces it.
	h.handoff.err = handoff.ErrExists
	h.handoff.clearAfterDelete = true
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 77, Ack: isn2 + 1, Flags: packet.SYN | packet.ACK, Window: 1000}, nf.Drop)
	h.drainHandoffs()
	if h.handoff.deleted != 1 || h.stat(EntryReplaced) != 1 || h.stat(HandedOff) != 2 {
		t.Fatalf("deleted %d, replaced %d, handed off %d", h.handoff.deleted, h.stat(EntryReplaced), h.stat(HandedOff))
	}
	if last := h.handoff.got[len(h.handoff.got)-1]; last.CookieISN != cookie2 || last.ServerISN != 77 {
		t.Fatalf("entry created for %+v", last)
	}
}

// TestTimersWakeForPendingFlows: the timer loop stops ticking while no
// flow is pending, and a flow added later still gets its retries.
func TestTimersWakeForPendingFlows(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Now = time.Now
		c.RetryInitial = 20 * time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// The control loop has run, so the first timer tick, ten times
	// earlier, found nothing pending and stopped the ticks.
	if !poll.Until(5*time.Second, func() bool { return !h.e.LastControl().IsZero() }) {
		t.Fatal("the control loop never ran")
	}
	h.handshake(linuxOptions())
	if !poll.Until(5*time.Second, func() bool { return h.stat(BackendRetry) >= 1 }) {
		t.Fatal("a flow added while the timers were idle got no retry")
	}
}

// TestInlineHandOffs: a worker that hands off inline keeps the flows whose
// backend answered to itself until HandOffs, after its batch: the backend
// is ACKed at once, the entry and the client's window update wait for
// HandOffs, and no hand-off goroutine is given the flow. Past a hand-off
// batch's worth, the goroutines take the rest.
func TestInlineHandOffs(t *testing.T) {
	h := newHarness(t, nil)
	h.w.InlineHandOffs(h.e.cfg.NewBatch())
	h.handshake(linuxOptions())
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 5000, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160}, nf.Drop)
	if r := h.expect(1)[0].p; r.Flags != packet.ACK || r.Destination() != server {
		t.Fatalf("backend SYN-ACK answered with %+v, want the ACK to the backend", r)
	}
	if n := len(h.e.handoffs); n != 0 {
		t.Fatalf("%d flows passed to the hand-off goroutines", n)
	}
	if len(h.handoff.got) != 0 {
		t.Fatal("entry created before HandOffs")
	}
	h.w.HandOffs()
	if len(h.handoff.got) != 1 {
		t.Fatalf("%d entries after HandOffs, want 1", len(h.handoff.got))
	}
	if r := h.expect(1)[0].p; r.Destination() != client || r.Flags != packet.ACK || r.Window == 0 {
		t.Fatalf("after the entry: %+v, want the client's window update", r)
	}
	h.w.HandOffs() // nothing left
	if len(h.handoff.got) != 1 {
		t.Fatalf("%d entries after a second HandOffs, want still 1", len(h.handoff.got))
	}

	// More answers in one batch than a hand-off batch takes.
	for i := range handoffBatch + 2 {
		c := netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i)+1)
		h.handle(packet.Segment{Src: c, Dst: server, Seq: clientISN, Flags: packet.SYN, Window: 64240, Options: linuxOptions()}, nf.Drop)
		cookie := h.expect(1)[0].p.Seq
		h.handle(packet.Segment{Src: c, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
		h.expect(1)
	}
	for i := range handoffBatch + 2 {
		c := netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i)+1)
		h.handle(packet.Segment{Src: server, Dst: c, Seq: 5000, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160}, nf.Drop)
		h.expect(1)
	}
	if n := len(h.e.handoffs); n != 2 {
		t.Fatalf("%d flows passed to the hand-off goroutines, want the 2 past a batch", n)
	}
	h.w.HandOffs()
	h.drainHandoffs()
	if n := len(h.handoff.got); n != 1+handoffBatch+2 {
		t.Fatalf("%d entries, want %d", n, 1+handoffBatch+2)
	}
}

// TestFlowTimerLeftToControl: once the control loop runs, a worker that
// adds a flow whose retry is beyond the loop's next step leaves the timer
// to that step instead of moving it on the handshake's path; the step
// sets it for the earliest such deadline. A deadline before the step
// after next moves the timer at once.
func TestFlowTimerLeftToControl(t *testing.T) {
	h := newHarness(t, nil)
	e := h.e
	// SYNs above the low watermark keep the loop at its fast period.
	e.controlStep(h.clock.now())
	for i := range 100 {
		h.handle(h.synFrom(i), nf.Drop)
	}
	h.send.take()
	h.clock.advance(controlTick)
	if p := e.controlStep(h.clock.now()); p != controlTick {
		t.Fatalf("at 1000 SYN/s the next step is %v away, want %v", p, controlTick)
	}
	start := h.clock.now()
	h.handshake(linuxOptions())
	retry := start.Add(DefaultRetryInitial + e.retrySlack())
	if due, wanted := e.due.Load(), e.wanted.Load(); due != 0 || wanted != retry.UnixNano() {
		t.Fatalf("after a flow: due %d, wanted %d; want the timer untouched and %d left to the loop", due, wanted, retry.UnixNano())
	}
	h.clock.advance(controlTick)
	e.controlStep(h.clock.now())
	if due, wanted := e.due.Load(), e.wanted.Load(); due != retry.UnixNano() || wanted != 0 {
		t.Fatalf("after the control step: due %d, wanted %d; want %d, 0", due, wanted, retry.UnixNano())
	}

	// A quiet loop steps a second later: the retry cannot wait for it.
	h = newHarness(t, nil)
	e = h.e
	if p := e.controlStep(h.clock.now()); p != QuietControlTick {
		t.Fatalf("without traffic the next step is %v away, want %v", p, QuietControlTick)
	}
	start = h.clock.now()
	h.handshake(linuxOptions())
	if due, want := e.due.Load(), start.Add(DefaultRetryInitial+e.retrySlack()).UnixNano(); due != want || e.wanted.Load() != 0 {
		t.Fatalf("a retry while quiet: due %d, wanted %d; want %d at once", due, e.wanted.Load(), want)
	}

	// A retry sooner than two control periods away.
	h = newHarness(t, func(c *Config) { c.RetryInitial = 50 * time.Millisecond })
	e = h.e
	e.controlStep(h.clock.now())
	start = h.clock.now()
	h.handshake(linuxOptions())
	if due, want := e.due.Load(), start.Add(50*time.Millisecond+e.retrySlack()).UnixNano(); due != want {
		t.Fatalf("a close retry: due %d, want %d at once", due, want)
	}
}

// TestFlowTimerDue: the flow timer is set for the first deadline's end
// of slack, a new flow only moves it earlier, and once the timer fires
// (due cleared) Tick sets it for what is left: a retry, then a record's
// end; with nothing left it stays unset.
func TestFlowTimerDue(t *testing.T) {
	// A linger time longer than all the retries, so the silent flow gives
	// up before the handed-off one's record ends.
	h := newHarness(t, func(c *Config) { c.Linger = time.Minute })
	e := h.e
	due := func() time.Time {
		if ns := e.due.Load(); ns != 0 {
			return time.Unix(0, ns)
		}
		return time.Time{}
	}
	fire := func() { e.due.Store(0); e.Tick() }
	if !due().IsZero() {
		t.Fatalf("timer due at %v with no flow", due())
	}
	start := h.clock.now()
	h.handshake(linuxOptions())
	firstRetry := start.Add(DefaultRetryInitial + e.retrySlack())
	if !due().Equal(firstRetry) {
		t.Fatalf("due %v after a flow was added, want its retry %v", due(), firstRetry)
	}

	// A later flow leaves the timer alone.
	h.clock.advance(10 * time.Millisecond)
	other := netip.AddrPortFrom(client.Addr(), client.Port()+1)
	h.handle(packet.Segment{Src: other, Dst: server, Seq: clientISN, Flags: packet.SYN, Window: 64240, Options: linuxOptions()}, nf.Drop)
	cookie := h.expect(1)[0].p.Seq
	h.handle(packet.Segment{Src: other, Dst: server, Seq: clientISN + 1, Ack: cookie + 1, Flags: packet.ACK, Window: 502}, nf.Drop)
	h.expect(1)
	if !due().Equal(firstRetry) {
		t.Fatalf("due %v after a later flow, want %v still", due(), firstRetry)
	}

	// The first flow's backend answers and it is handed off; the second
	// stays silent. When the timer fires, the second's retry is next.
	h.handle(packet.Segment{Src: server, Dst: client, Seq: 5000, Ack: clientISN + 1, Flags: packet.SYN | packet.ACK, Window: 65160}, nf.Drop)
	h.expect(1)
	h.drainHandoffs()
	h.expect(1) // the window update
	handedOff := h.clock.now()
	h.clock.advance(DefaultRetryInitial)
	fire()
	if r := h.expect(1)[0].p; r.Flags != packet.SYN || r.Source() != other {
		t.Fatalf("retry %+v, want the second flow's SYN", r)
	}
	secondRetry := h.clock.now().Add(DefaultRetryInitial<<1 + e.retrySlack())
	if !due().Equal(secondRetry) {
		t.Fatalf("due %v after the retry, want the next retry %v", due(), secondRetry)
	}

	// The second flow gives up; the first one's record is what is left.
	for e.Pending() == 2 {
		h.clock.t = due()
		fire()
		h.send.mu.Lock()
		h.send.pkts = nil
		h.send.mu.Unlock()
	}
	recordEnd := handedOff.Add(time.Minute + e.forgetSlack())
	if e.Pending() != 1 || !due().Equal(recordEnd) {
		t.Fatalf("%d pending, due %v, want the record's end %v", e.Pending(), due(), recordEnd)
	}
	h.clock.t = recordEnd
	fire()
	if e.Pending() != 0 || !due().IsZero() {
		t.Fatalf("%d pending, due %v after the last record's end", e.Pending(), due())
	}
}
