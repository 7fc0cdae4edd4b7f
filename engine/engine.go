package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/packet"
	"github.com/synguard/synguard/telemetry"
)

// Verdict is what netfilter should do with a queued packet.
type Verdict uint8

// Verdicts.
const (
	Drop Verdict = iota
	Accept
)

func (v Verdict) String() string {
	if v == Accept {
		return "accept"
	}
	return "drop"
}

// Sender transmits an IP packet the engine built. Implementations must be
// safe for concurrent use and must not retain b.
type Sender interface {
	Send(b []byte, dst netip.Addr) error
}

// BatchSender is a Sender that can also send many packets at once. A
// Worker whose engine's Sender implements it gets a Batch of its own from
// NewBatch and sends its packets through it (see Worker.HandleBatched);
// the engine's own goroutines (retries, hand-offs) still use Send.
type BatchSender interface {
	Sender
	NewBatch() Batch
}

// Batch collects packets and sends them together. It is used by one
// goroutine only.
type Batch interface {
	// Add queues a copy of the IP packet b for dst. It reports false, and
	// queues nothing, when it cannot take the packet: the batch is full,
	// or the packet is not one it can send (the Worker then flushes and,
	// failing again, uses Send).
	Add(b []byte, dst netip.Addr) bool
	// Flush sends the queued packets, in the order they were added, and
	// empties the batch. For each packet that could not be sent it calls
	// failed with the packet's index (0 for the first one added) and the
	// error.
	Flush(failed func(i int, err error))
}

// Handoffer creates the kernel conntrack entry for a flow. It may block on
// netlink I/O, so the engine calls it only from its hand-off goroutines.
type Handoffer interface {
	Create(h conntrack.Handoff) error
}

// Replacer is a Handoffer that can also remove an entry. With one, a
// hand-off that finds the kernel still holding an entry for its tuple (a
// client reusing the ports of a flow in TIME_WAIT) replaces it; without
// one, the old entry is taken as the hand-off's.
type Replacer interface {
	Delete(client, server netip.AddrPort) error
}

// Engine holds the state shared by all workers: services, the pending
// table and the hand-off queue.
type Engine struct {
	cfg      Config
	log      zerolog.Logger
	services map[netip.AddrPort]int
	list     []netip.AddrPort
	backend  []atomic.Uint32 // packed BackendOptions per service
	learned  []atomic.Bool   // per service: options learned at least once

	// Per service: current state (cookie or passthrough), half-open
	// table and its last count. The controller (Run) writes states;
	// workers read them with one atomic load per SYN.
	states    []atomic.Uint32
	halfOpen  []*halfOpenTable
	halfOpenN []atomic.Int64
	ctrl      []serviceControl

	mu      sync.Mutex
	pending *pendingTable

	handoffs chan flowKey

	countersMu sync.Mutex
	counters   []*counterSet

	// own writers' counters and scratch buffers
	timerCounters   *counterSet
	handoffCounters *counterSet
}

// New validates cfg and builds an Engine. Call Run to start its background
// work and NewWorker for each packet source.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	e := &Engine{
		cfg:      cfg,
		log:      cfg.Logger,
		services: make(map[netip.AddrPort]int, len(cfg.Services)),
		list:     append([]netip.AddrPort(nil), cfg.Services...),
		backend:  make([]atomic.Uint32, len(cfg.Services)),
		learned:  make([]atomic.Bool, len(cfg.Services)),
		pending:  newPendingTable(cfg.MaxPending),
		handoffs: make(chan flowKey, 4096),
	}
	for i, s := range cfg.Services {
		e.services[s] = i
		opts := DefaultBackendOptions(s.Addr().Is6())
		if cfg.BackendOverride != nil {
			opts = *cfg.BackendOverride
		}
		e.backend[i].Store(packBackend(opts))
	}
	e.timerCounters = e.newCounters()
	e.handoffCounters = e.newCounters()

	n := len(cfg.Services)
	e.states = make([]atomic.Uint32, n)
	e.halfOpen = make([]*halfOpenTable, n)
	e.halfOpenN = make([]atomic.Int64, n)
	e.ctrl = make([]serviceControl, n)
	start := cfg.Now()
	for i := range n {
		initial := StatePassthrough
		if cfg.Mode == ModeAlways {
			initial = StateCookie
		}
		e.states[i].Store(uint32(initial))
		e.halfOpen[i] = newHalfOpenTable(DefaultHalfOpenSlots, cfg.Thresholds.HandshakeTimeout, start)
		e.ctrl[i] = serviceControl{
			ctrl:   controller{th: cfg.Thresholds},
			syns:   newRateWindow(controlWindow),
			passed: newRateWindow(controlWindow),
			acks:   newRateWindow(controlWindow),
		}
	}
	return e, nil
}

// State is what a service does with SYNs right now.
type State uint32

// States.
const (
	// StatePassthrough lets SYNs through to the backend untouched.
	StatePassthrough State = iota
	// StateCookie answers SYNs with cookies.
	StateCookie
)

// String returns the state's metric label: "cookie" or "passthrough".
func (s State) String() string {
	if s == StateCookie {
		return "cookie"
	}
	return "passthrough"
}

// ServiceState returns service svc's current state.
func (e *Engine) ServiceState(svc int) State { return State(e.states[svc].Load()) }

// Mode returns the configured mode.
func (e *Engine) Mode() Mode { return e.cfg.Mode }

// HalfOpen returns service svc's half-open count at the last control tick.
func (e *Engine) HalfOpen(svc int) int { return int(e.halfOpenN[svc].Load()) }

func (e *Engine) newCounters() *counterSet {
	s := newCounterSet(len(e.list))
	e.countersMu.Lock()
	e.counters = append(e.counters, s)
	e.countersMu.Unlock()
	return s
}

// Services returns the protected services, in configuration order.
func (e *Engine) Services() []netip.AddrPort { return append([]netip.AddrPort(nil), e.list...) }

// Stats sums the counters of service index svc over all writers; svc -1
// is packets that matched no service.
func (e *Engine) Stats(svc int) Stats {
	var out Stats
	e.countersMu.Lock()
	defer e.countersMu.Unlock()
	for _, s := range e.counters {
		for c := range out {
			out[c] += s.rows[svc+1].v[c].Load()
		}
	}
	return out
}

// Pending returns how many flows wait on their backend or linger after
// their hand-off.
func (e *Engine) Pending() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pending.len()
}

// Backend returns the options announced to clients of service svc.
func (e *Engine) Backend(svc int) BackendOptions { return unpackBackend(e.backend[svc].Load()) }

// LearnBackend records options observed for service svc (from a probe
// connection or a backend SYN-ACK). An operator override wins.
func (e *Engine) LearnBackend(svc int, opts BackendOptions, source string) {
	if e.cfg.BackendOverride != nil {
		return
	}
	old := e.backend[svc].Swap(packBackend(opts))
	first := !e.learned[svc].Swap(true)
	if first || old != packBackend(opts) {
		e.log.Info().Str("event", telemetry.EventBackendOptionsLearned).
			Str("service", e.list[svc].String()).Str("source", source).
			Uint16("mss", opts.MSS).Int8("wscale", int8(opts.WindowScale)).
			Bool("sack", opts.SACKPermitted).Msg("backend TCP options learned")
	}
}

// packBackend packs options into 32 bits so a worker reads them with one
// atomic load: MSS | (scale+1)<<16 | sack<<24.
func packBackend(o BackendOptions) uint32 {
	v := uint32(o.MSS) | uint32(uint8(o.WindowScale+1))<<16
	if o.SACKPermitted {
		v |= 1 << 24
	}
	return v
}

func unpackBackend(v uint32) BackendOptions {
	return BackendOptions{
		MSS:           uint16(v),
		WindowScale:   cookies.WindowScale(int8(uint8(v>>16)) - 1),
		SACKPermitted: v&(1<<24) != 0,
	}
}

// Control loop timing: a sample every controlTick, rates over
// controlWindow ticks (one second), so a flood is noticed within a second.
const (
	controlTick   = 100 * time.Millisecond
	controlWindow = 10
)

// serviceControl is the controller's per-service state; only Run's
// goroutine touches it.
type serviceControl struct {
	ctrl               controller
	syns, passed, acks *rateWindow
}

// control samples every service and switches states (auto mode).
func (e *Engine) control(now time.Time) {
	for i := range e.ctrl {
		st := e.Stats(i)
		c := &e.ctrl[i]
		n := e.halfOpen[i].count(now)
		e.halfOpenN[i].Store(int64(n))
		rate, _ := c.syns.add(now, st.Get(SYNReceived))
		_, passed := c.passed.add(now, st.Get(SYNPassed))
		_, acks := c.acks.add(now, st.Get(FirstACK))
		s := Sample{HalfOpen: n, SYNRate: rate, Completion: 1}
		if passed > 0 {
			s.Completion = min(float64(acks)/float64(passed), 1)
		}
		if e.cfg.Mode != ModeAuto {
			continue
		}
		changed, reason := c.ctrl.step(now, s)
		if !changed {
			continue
		}
		from := e.ServiceState(i)
		to := StatePassthrough
		if c.ctrl.cookie {
			to = StateCookie
		}
		e.states[i].Store(uint32(to))
		e.timerCounters.add(i, ModeChanges)
		telemetry.LogModeChange(e.log, telemetry.ModeChange{
			Service: e.list[i], From: from.String(), To: to.String(), Reason: reason,
			HalfOpen: s.HalfOpen, SYNRate: s.SYNRate, CompletionRatio: s.Completion,
		})
	}
}

// Run drives retries, expiries and hand-offs until ctx is done.
func (e *Engine) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	const handoffWorkers = 2
	for range handoffWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.runHandoffs(ctx, e.newCounters())
		}()
	}
	tick := time.NewTicker(e.tickInterval())
	defer tick.Stop()
	ctl := time.NewTicker(controlTick)
	defer ctl.Stop()
	var buf [packet.MaxHandshakeLen]byte
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-tick.C:
			e.Tick(buf[:])
		case <-ctl.C:
			e.control(e.cfg.Now())
		}
	}
}

func (e *Engine) tickInterval() time.Duration {
	d := e.cfg.RetryInitial / 5
	if d < 10*time.Millisecond {
		d = 10 * time.Millisecond
	}
	return d
}

// Worker handles packets from one queue. It is not safe for concurrent
// use; give each receive goroutine its own.
type Worker struct {
	e   *Engine
	c   *counterSet
	pkt packet.Packet
	buf [packet.MaxHandshakeLen]byte

	// With a BatchSender: this worker's batch, and what each packet in it
	// counts once Flush knows whether it went out.
	batch    Batch
	queued   []queuedSend
	failedFn func(i int, err error) // w.sendFailed, bound once
}

// queuedSend is the accounting of one packet waiting in a Worker's batch.
type queuedSend struct {
	svc    int
	ok     Counter // counted when sent; noCount for none
	failed bool
}

// NewWorker returns a worker with its own scratch space and counters, and
// its own Batch when the engine's Sender is a BatchSender.
func (e *Engine) NewWorker() *Worker {
	if bs, ok := e.cfg.Send.(BatchSender); ok {
		return e.NewWorkerWithBatch(bs.NewBatch())
	}
	return &Worker{e: e, c: e.newCounters()}
}

// NewWorkerWithBatch returns a worker that sends through b, which the
// caller may keep and steer (the gateway points each reply at the link
// its packet came in on). b is used only from the worker's goroutine.
func (e *Engine) NewWorkerWithBatch(b Batch) *Worker {
	w := &Worker{e: e, c: e.newCounters(), batch: b}
	w.queued = make([]queuedSend, 0, 64)
	w.failedFn = w.sendFailed
	return w
}

// Hook is the netfilter hook a packet was queued from (the numbering of
// enum nf_inet_hooks).
type Hook uint8

// Hooks.
const (
	HookPrerouting Hook = iota
	HookInput
	HookForward
	HookOutput
	HookPostrouting
	// HookStaleEntry marks a segment queued by the rule for handed-off
	// flows whose conntrack entry is about to expire (the firewall's
	// stale mark): usually the old flow's last segments, or a client
	// reusing its ports.
	HookStaleEntry Hook = 0xfe
	// HookUnknown is for callers that cannot tell.
	HookUnknown Hook = 0xff
)

// Handle decides the verdict for one queued IP packet b whose hook is not
// known. It may send packets; it never blocks on anything but the sender.
func (w *Worker) Handle(b []byte) Verdict { return w.HandleAt(b, HookUnknown) }

// HandleAt decides the verdict for one IP packet b queued from hook. In
// PREROUTING the engine sees SYNs (raw table) and the first established
// packet of flows it let through (mangle table); in the filter hooks it
// sees segments conntrack found invalid or untracked. Whatever it sends in
// reply has been handed to the Sender when it returns.
func (w *Worker) HandleAt(b []byte, hook Hook) Verdict {
	v := w.HandleBatched(b, hook)
	w.Flush()
	return v
}

// HandleBatched is HandleAt for a caller that handles packets in batches:
// with a BatchSender, the packets it sends in reply wait in the worker's
// batch until Flush, so that a whole receive batch goes out in one system
// call. Call Flush after the last packet of each batch; without a
// BatchSender, HandleBatched is HandleAt.
func (w *Worker) HandleBatched(b []byte, hook Hook) Verdict {
	p := &w.pkt
	if err := packet.Parse(b, p); err != nil {
		// Only TCP segments of protected services are queued, and
		// conntrack has already reassembled fragments: what fails to
		// parse is malformed, and a backend must not see it.
		w.c.add(w.e.malformedService(b), Malformed)
		return Drop
	}
	if svc, ok := w.e.services[p.Destination()]; ok {
		return w.fromClient(svc, b, hook)
	}
	if svc, ok := w.e.services[p.Source()]; ok {
		return w.fromServer(svc)
	}
	w.c.add(-1, Unmatched)
	return Accept
}

func (w *Worker) fromClient(svc int, b []byte, hook Hook) Verdict {
	p := &w.pkt
	isSYN := p.Flags&(packet.SYN|packet.ACK|packet.RST|packet.FIN) == packet.SYN
	switch {
	case isSYN:
		w.c.add(svc, SYNReceived)
		if w.e.ServiceState(svc) == StatePassthrough {
			w.passSYN(svc)
			return Accept
		}
		w.answerSYN(svc, len(b))
		return Drop
	case hook == HookStaleEntry:
		// The flow's entry is closing. A cookie ACK here is a client
		// reusing the ports: replay it, and the hand-off replaces the
		// entry. Anything else is the old flow's tail: the kernel's.
		if p.Flags&(packet.ACK|packet.SYN|packet.RST|packet.FIN) != packet.ACK {
			return Accept
		}
		if w.clientACK(svc, true) {
			return Accept
		}
		return Drop
	case hook == HookPrerouting:
		// Only the mangle rule queues non-SYNs in PREROUTING: the first
		// established packet of a flow let through. It is the kernel's
		// flow; note the completed handshake and let it go.
		w.firstACK(svc)
		return Accept
	case w.e.cfg.Mode == ModeOff:
		// Observe only: whatever conntrack found invalid passes, as it
		// would without synguard.
		return Accept
	case p.Flags.Has(packet.SYN):
		// SYN with ACK, RST or FIN: nothing a client sends in a
		// handshake (conntrack calls it invalid too). In particular a
		// SYN+RST must not abort a pending flow as a reset would.
		w.c.add(svc, Malformed)
		return Drop
	case p.Flags.Has(packet.RST):
		w.clientReset(svc)
		return Drop
	case p.Flags&(packet.ACK|packet.SYN) == packet.ACK:
		w.clientACK(svc, false)
		return Drop
	}
	// SYN+ACK, FIN without ACK, no flags: nothing a client sends in a
	// handshake. Drop, like conntrack-invalid traffic should be.
	w.c.add(svc, Malformed)
	return Drop
}

// passSYN lets a SYN through to the backend and counts it as half-open.
func (w *Worker) passSYN(svc int) {
	p := &w.pkt
	k := flowKey{client: p.Source(), server: p.Destination()}
	added, evicted := w.e.halfOpen[svc].add(k, w.e.cfg.Now())
	if added {
		w.c.add(svc, SYNPassed)
	}
	if evicted {
		w.c.add(svc, HalfOpenEvicted)
	}
}

// firstACK records that a flow let through completed its handshake.
func (w *Worker) firstACK(svc int) {
	p := &w.pkt
	k := flowKey{client: p.Source(), server: p.Destination()}
	if w.e.halfOpen[svc].complete(k, w.e.cfg.Now()) {
		w.c.add(svc, FirstACK)
	}
}

// clientOptions converts a SYN's options to what a cookie carries.
func clientOptions(o *packet.Options) cookies.Options {
	c := cookies.Options{WindowScale: cookies.NoWindowScale, SACKPermitted: o.SACKPermitted}
	if o.HasMSS {
		c.MSS = o.MSS
	}
	if o.HasWindowScale {
		c.WindowScale = cookies.WindowScale(min(o.WindowScale, packet.MaxWindowScale))
	}
	return c
}

// announce chooses the SYN-ACK options for a client: the backend's own,
// limited to what the client offered. Offering only what the client sent
// also keeps the SYN-ACK no larger than the SYN.
func announce(client *packet.Options, backend BackendOptions) BackendOptions {
	a := BackendOptions{WindowScale: cookies.NoWindowScale}
	if client.HasMSS {
		a.MSS = backend.MSS
	}
	if client.HasWindowScale {
		a.WindowScale = backend.WindowScale
	}
	a.SACKPermitted = client.SACKPermitted && backend.SACKPermitted
	return a
}

func (a BackendOptions) packetOptions() packet.Options {
	o := packet.Options{SACKPermitted: a.SACKPermitted}
	if a.MSS != 0 {
		o.MSS, o.HasMSS = a.MSS, true
	}
	if a.WindowScale != cookies.NoWindowScale {
		o.WindowScale, o.HasWindowScale = uint8(a.WindowScale), true
	}
	return o
}

// answerSYN sends the cookie SYN-ACK: window 0 so the client sends no data
// before the backend is ready, no timestamps because the kernel cannot
// translate them for a flow it did not proxy.
func (w *Worker) answerSYN(svc int, synLen int) {
	p := &w.pkt
	client, server := p.Source(), p.Destination()
	cookie := w.e.cfg.Cookies.Generate(client, server, p.Seq, clientOptions(&p.Options))
	a := announce(&p.Options, w.e.Backend(svc))
	seg := packet.Segment{
		Src: server, Dst: client,
		Seq: uint32(cookie), Ack: p.Seq + 1,
		Flags:   packet.SYN | packet.ACK,
		Options: a.packetOptions(),
	}
	n, err := packet.Build(w.buf[:], &seg)
	if err != nil {
		w.c.add(svc, SendError)
		return
	}
	if n > synLen {
		w.c.add(svc, AmplificationGuard)
		return
	}
	w.transmit(svc, w.buf[:n], client.Addr(), SYNACKSent)
}

// clientACK validates a client's ACK. Besides the handshake's third ACK
// (seq = ISN+1), a client whose ACK was lost sends zero-window probes with
// seq = ISN; both prove the cookie, so both are accepted.
//
// It reports whether the ACK proved nothing: no pending flow, no valid
// cookie. stale says the segment belongs to a closing handed-off flow,
// where that is the normal case and not worth counting as invalid.
func (w *Worker) clientACK(svc int, stale bool) (invalid bool) {
	p := &w.pkt
	k := flowKey{client: p.Source(), server: p.Destination()}
	e := w.e
	cookie := cookies.Cookie(p.Ack - 1)
	e.mu.Lock()
	if f := e.pending.get(k); f != nil {
		if f.state != stateDone || f.cookie == cookie {
			e.mu.Unlock()
			w.c.add(svc, DuplicateACK)
			return false
		}
		// The record of a flow already handed off, lingering only to
		// re-ACK its backend: a different cookie means a new flow on the
		// same ports, which takes its place.
		e.pending.remove(k)
	}
	e.mu.Unlock()

	isn := p.Seq - 1
	opts, ok := e.cfg.Cookies.Validate(k.client, k.server, isn, cookie)
	if !ok && p.PayloadLen == 0 {
		isn = p.Seq
		opts, ok = e.cfg.Cookies.Validate(k.client, k.server, isn, cookie)
	}
	if !ok {
		if stale {
			w.c.add(svc, StalePassed)
		} else {
			w.c.add(svc, CookieInvalid)
		}
		return true
	}
	w.c.add(svc, CookieValid)

	now := e.cfg.Now()
	f := &pendingFlow{
		svc:          svc,
		state:        stateReplaying,
		clientISN:    isn,
		cookie:       cookie,
		client:       opts,
		announced:    announceFromCookie(opts, e.Backend(svc)),
		clientWindow: p.Window,
		validated:    now,
		nextRetry:    now.Add(e.cfg.RetryInitial),
	}
	e.mu.Lock()
	added := e.pending.add(k, f)
	e.mu.Unlock()
	if !added {
		w.c.add(svc, PendingFull)
		return false
	}
	seg := backendSYN(k, f)
	w.send(svc, &seg, BackendSYNSent)
	return false
}

// announceFromCookie reconstructs the SYN-ACK options from the client's
// options as the cookie carries them: the ACK repeats none of the SYN's.
func announceFromCookie(c cookies.Options, backend BackendOptions) BackendOptions {
	o := packet.Options{
		MSS: c.MSS, HasMSS: true,
		SACKPermitted:  c.SACKPermitted,
		HasWindowScale: c.WindowScale != cookies.NoWindowScale,
	}
	return announce(&o, backend)
}

// backendSYN is the client's SYN replayed to the backend: the client's ISN
// and its options as the cookie carried them, without timestamps.
func backendSYN(k flowKey, f *pendingFlow) packet.Segment {
	o := packet.Options{
		MSS: f.client.MSS, HasMSS: f.client.MSS != 0,
		SACKPermitted: f.sackNegotiated(),
	}
	window := uint32(f.clientWindow)
	if scale := f.clientScale(); scale != cookies.NoWindowScale {
		o.WindowScale, o.HasWindowScale = uint8(scale), true
		window <<= uint(scale)
	}
	return packet.Segment{
		Src: k.client, Dst: k.server,
		Seq:     f.clientISN,
		Flags:   packet.SYN,
		Window:  uint16(min(window, 0xffff)),
		Options: o,
	}
}

// send builds seg into buf and transmits it, counting ok on success.
func (e *Engine) send(c *counterSet, svc int, buf []byte, seg *packet.Segment, ok Counter) bool {
	n, err := packet.Build(buf, seg)
	if err == nil {
		err = e.cfg.Send.Send(buf[:n], seg.Dst.Addr())
	}
	if err != nil {
		c.add(svc, SendError)
		return false
	}
	if ok < numCounters {
		c.add(svc, ok)
	}
	return true
}

// noCount marks a send that has no success counter of its own.
const noCount = numCounters

// send builds seg and transmits it from the worker: through its batch when
// it has one, at once otherwise.
func (w *Worker) send(svc int, seg *packet.Segment, ok Counter) {
	n, err := packet.Build(w.buf[:], seg)
	if err != nil {
		w.c.add(svc, SendError)
		return
	}
	w.transmit(svc, w.buf[:n], seg.Dst.Addr(), ok)
}

// transmit sends the built packet b to dst, counting ok once it is sent
// (for a batched packet: at Flush).
func (w *Worker) transmit(svc int, b []byte, dst netip.Addr, ok Counter) {
	if w.batch != nil {
		added := w.batch.Add(b, dst)
		if !added && len(w.queued) > 0 {
			w.Flush()
			added = w.batch.Add(b, dst)
		}
		if added {
			w.queued = append(w.queued, queuedSend{svc: svc, ok: ok})
			return
		}
	}
	if err := w.e.cfg.Send.Send(b, dst); err != nil {
		w.c.add(svc, SendError)
		return
	}
	if ok < numCounters {
		w.c.add(svc, ok)
	}
}

// Flush sends the packets waiting in the worker's batch (see
// HandleBatched). It does nothing without a BatchSender.
func (w *Worker) Flush() {
	if len(w.queued) == 0 {
		return
	}
	w.batch.Flush(w.failedFn)
	for i := range w.queued {
		q := &w.queued[i]
		switch {
		case q.failed:
			w.c.add(q.svc, SendError)
		case q.ok < numCounters:
			w.c.add(q.svc, q.ok)
		}
	}
	w.queued = w.queued[:0]
}

// sendFailed is the Batch's report of packet i not sent.
func (w *Worker) sendFailed(i int, _ error) {
	if i >= 0 && i < len(w.queued) {
		w.queued[i].failed = true
	}
}

// clientReset handles a client RST before the hand-off: forget the flow
// and, if the backend may have a half-open connection, reset it too.
func (w *Worker) clientReset(svc int) {
	p := &w.pkt
	k := flowKey{client: p.Source(), server: p.Destination()}
	e := w.e
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil || f.state == stateDone {
		e.mu.Unlock()
		w.c.add(svc, CookieInvalid)
		return
	}
	e.pending.remove(k)
	isn := f.clientISN
	e.mu.Unlock()
	w.c.add(svc, ClientReset)
	seg := packet.Segment{Src: k.client, Dst: k.server, Seq: isn + 1, Flags: packet.RST}
	w.send(svc, &seg, noCount)
}

func (w *Worker) fromServer(svc int) Verdict {
	p := &w.pkt
	k := flowKey{client: p.Destination(), server: p.Source()}
	e := w.e
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil {
		e.mu.Unlock()
		// Not a flow of ours: traffic conntrack finds invalid for its
		// own reasons. Passing it is what the kernel would do.
		w.c.add(svc, Unmatched)
		return Accept
	}
	switch {
	case p.Flags.Has(packet.SYN|packet.ACK) && p.Ack == f.clientISN+1:
		switch f.state {
		case stateReplaying:
			f.state = stateHandingOff
			f.serverISN = p.Seq
			f.serverWindow = p.Window
			f.serverScale = cookies.NoWindowScale
			if p.Options.HasWindowScale {
				f.serverScale = cookies.WindowScale(min(p.Options.WindowScale, packet.MaxWindowScale))
			}
			f.expires = e.cfg.Now().Add(e.cfg.Linger)
			observed := observedBackend(&p.Options)
			mismatch := f.announced.mismatch(observed)
			e.mu.Unlock()
			if mismatch {
				w.c.add(svc, OptionMismatch)
			}
			e.learnFromSYNACK(svc, observed, mismatch)
			select {
			case e.handoffs <- k:
			default:
				// Hand-off backlog full: drop this SYN-ACK; the
				// backend retransmits it and the retry finds the
				// flow still replaying.
				e.mu.Lock()
				f.state = stateReplaying
				e.mu.Unlock()
			}
		case stateDone:
			// Our ACK was lost and the backend retransmits: ACK again.
			seg := f.backendACK(k)
			e.mu.Unlock()
			w.send(svc, &seg, noCount)
		default:
			e.mu.Unlock()
		}
		return Drop
	case p.Flags.Has(packet.RST) && f.state != stateDone:
		e.pending.remove(k)
		cookie, isn := f.cookie, f.clientISN
		e.mu.Unlock()
		w.c.add(svc, BackendReset)
		seg := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(cookie) + 1, Ack: isn + 1, Flags: packet.RST | packet.ACK}
		w.send(svc, &seg, noCount)
		return Drop
	}
	e.mu.Unlock()
	if f.state == stateDone {
		// Past the hand-off the kernel owns the flow.
		return Accept
	}
	// Anything else from the backend before the hand-off (data from a
	// server-first protocol racing our ACK) would reach the client with
	// untranslated sequence numbers: drop it, the backend retransmits.
	return Drop
}

func observedBackend(o *packet.Options) BackendOptions {
	b := BackendOptions{MSS: o.MSS, WindowScale: cookies.NoWindowScale, SACKPermitted: o.SACKPermitted}
	if !o.HasMSS {
		b.MSS = 536
	}
	if o.HasWindowScale {
		b.WindowScale = cookies.WindowScale(min(o.WindowScale, packet.MaxWindowScale))
	}
	return b
}

// mismatch reports whether the backend's SYN-ACK contradicts what the
// client was told. Only options the client was told about count: a
// backend cannot scale or SACK if the client did not offer it.
func (a BackendOptions) mismatch(observed BackendOptions) bool {
	if a.MSS != 0 && a.MSS > observed.MSS {
		return true
	}
	if a.WindowScale != cookies.NoWindowScale && a.WindowScale != observed.WindowScale {
		return true
	}
	return a.SACKPermitted && !observed.SACKPermitted
}

// learnFromSYNACK folds a backend's observed SYN-ACK into what clients are
// told. Only options the client offered are observable, so the others keep
// their learned values.
func (e *Engine) learnFromSYNACK(svc int, observed BackendOptions, mismatch bool) {
	if !mismatch {
		return
	}
	cur := e.Backend(svc)
	if observed.MSS != 0 {
		cur.MSS = observed.MSS
	}
	cur.WindowScale = observed.WindowScale
	cur.SACKPermitted = observed.SACKPermitted
	e.log.Warn().Str("event", telemetry.EventBackendOptionMismatch).Str("service", e.list[svc].String()).
		Uint16("mss", observed.MSS).Int8("wscale", int8(observed.WindowScale)).
		Bool("sack", observed.SACKPermitted).Msg("backend SYN-ACK options differ from those announced")
	e.LearnBackend(svc, cur, "syn_ack")
}

func (f *pendingFlow) backendACK(k flowKey) packet.Segment {
	return packet.Segment{Src: k.client, Dst: k.server, Seq: f.clientISN + 1, Ack: f.serverISN + 1, Flags: packet.ACK, Window: f.clientWindow}
}

// runHandoffs completes handshakes whose backend answered.
func (e *Engine) runHandoffs(ctx context.Context, c *counterSet) {
	var buf [packet.MaxHandshakeLen]byte
	for {
		select {
		case <-ctx.Done():
			return
		case k := <-e.handoffs:
			e.handoff(c, buf[:], k)
		}
	}
}

// handoff creates the conntrack entry, then ACKs the backend, then opens
// the client's window. The window update must follow the entry: the
// client's first data has to find the entry, or conntrack calls it
// invalid and the client waits for a retransmit.
func (e *Engine) handoff(c *counterSet, buf []byte, k flowKey) {
	e.mu.Lock()
	f := e.pending.get(k)
	if f == nil || f.state != stateHandingOff {
		e.mu.Unlock()
		return
	}
	fl := *f
	e.mu.Unlock()

	h := conntrack.Handoff{
		Client: k.client, Server: k.server,
		CookieISN:         uint32(fl.cookie),
		ServerISN:         fl.serverISN,
		ClientWindowScale: conntrack.WindowScale(fl.clientScale()),
		ServerWindowScale: conntrack.WindowScale(fl.serverScale),
		Mark:              e.cfg.HandoffMark,
		Timeout:           e.cfg.ConntrackTimeout,
	}
	err := e.cfg.Handoff.Create(h)
	if r, ok := e.cfg.Handoff.(Replacer); ok && errors.Is(err, conntrack.ErrExists) {
		// The kernel still holds the entry of an earlier flow on these
		// ports (TIME_WAIT): its sequence adjustment belongs to that flow.
		if err = r.Delete(k.client, k.server); err == nil || errors.Is(err, conntrack.ErrNotFound) {
			err = e.cfg.Handoff.Create(h)
		}
		if err == nil {
			c.add(fl.svc, EntryReplaced)
		}
	}
	if err != nil && !errors.Is(err, conntrack.ErrExists) {
		c.add(fl.svc, HandoffFailed)
		e.log.Error().Err(err).Str("event", telemetry.EventHandoffFailed).Str("service", k.server.String()).Msg("conntrack hand-off failed")
		e.mu.Lock()
		e.pending.remove(k)
		e.mu.Unlock()
		e.resetBoth(c, buf, k, &fl)
		return
	}

	seg := fl.backendACK(k)
	e.send(c, fl.svc, buf, &seg, noCount)

	// The backend's SYN-ACK window is unscaled; express it in the scale
	// the client was told.
	window := uint32(fl.serverWindow)
	if fl.announced.WindowScale != cookies.NoWindowScale && fl.serverScale != cookies.NoWindowScale {
		window >>= uint(fl.announced.WindowScale)
		if window == 0 && fl.serverWindow != 0 {
			window = 1
		}
	}
	update := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(fl.cookie) + 1, Ack: fl.clientISN + 1, Flags: packet.ACK, Window: uint16(window)}
	e.send(c, fl.svc, buf, &update, noCount)

	e.mu.Lock()
	if f := e.pending.get(k); f != nil {
		f.state = stateDone
		f.expires = e.cfg.Now().Add(e.cfg.Linger)
	}
	e.mu.Unlock()
	c.add(fl.svc, HandedOff)
	if e.cfg.HandshakeLatency != nil {
		e.cfg.HandshakeLatency(fl.svc, e.cfg.Now().Sub(fl.validated))
	}
}

// resetBoth aborts a flow on both sides.
func (e *Engine) resetBoth(c *counterSet, buf []byte, k flowKey, f *pendingFlow) {
	toClient := packet.Segment{Src: k.server, Dst: k.client, Seq: uint32(f.cookie) + 1, Ack: f.clientISN + 1, Flags: packet.RST | packet.ACK}
	e.send(c, f.svc, buf, &toClient, noCount)
	toServer := packet.Segment{Src: k.client, Dst: k.server, Seq: f.clientISN + 1, Flags: packet.RST}
	e.send(c, f.svc, buf, &toServer, noCount)
}

// Tick resends replayed SYNs to silent backends, gives up on those that
// stay silent, and forgets handed-off flows past their linger time. Run
// calls it periodically; tests call it with a synthetic clock.
func (e *Engine) Tick(buf []byte) {
	now := e.cfg.Now()
	type action struct {
		k     flowKey
		f     pendingFlow
		reset bool
	}
	var actions []action
	e.mu.Lock()
	for k, f := range e.pending.flows {
		switch f.state {
		case stateReplaying:
			if now.Before(f.nextRetry) {
				continue
			}
			if f.retries >= e.cfg.SYNRetries {
				e.pending.remove(k)
				actions = append(actions, action{k: k, f: *f, reset: true})
				continue
			}
			f.retries++
			f.nextRetry = now.Add(e.cfg.RetryInitial << f.retries)
			actions = append(actions, action{k: k, f: *f})
		case stateHandingOff, stateDone:
			if now.After(f.expires) {
				e.pending.remove(k)
			}
		}
	}
	e.mu.Unlock()
	for _, a := range actions {
		if a.reset {
			e.timerCounters.add(a.f.svc, BackendTimeout)
			e.resetBoth(e.timerCounters, buf, a.k, &a.f)
			continue
		}
		e.timerCounters.add(a.f.svc, BackendRetry)
		seg := backendSYN(a.k, &a.f)
		e.send(e.timerCounters, a.f.svc, buf, &seg, BackendSYNSent)
	}
}
