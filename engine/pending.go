package engine

import (
	"net/netip"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/packet"
)

// newReplaying is the record of a flow of service svc whose client
// returned a valid cookie at now, with its ISN, the options the cookie
// carries and its ACK's window: its SYN is replayed to the backend now,
// and again from nextRetry on.
func (e *Engine) newReplaying(svc int, isn uint32, cookie cookies.Cookie, opts cookies.Options, window uint16, now time.Time) *pendingFlow {
	return &pendingFlow{
		svc:          svc,
		state:        stateReplaying,
		clientISN:    isn,
		cookie:       cookie,
		client:       opts,
		announced:    announceFromCookie(opts, e.Backend(svc)),
		clientWindow: window,
		validated:    now,
		nextRetry:    now.Add(e.cfg.RetryInitial),
	}
}

// flowKey names a flow by its client and server ends.
type flowKey struct {
	client, server netip.AddrPort
}

// flowState is where a pending flow is in its hand-off.
type flowState uint8

const (
	// stateReplaying: the client's SYN was replayed; waiting for the backend.
	stateReplaying flowState = iota + 1
	// stateHandingOff: the backend answered; the conntrack entry is being made.
	stateHandingOff
	// stateDone: handed off; kept briefly to re-ACK a retransmitted SYN-ACK.
	stateDone
)

// pendingFlow is what the engine remembers of a cookie-validated flow.
type pendingFlow struct {
	svc          int
	state        flowState
	clientISN    uint32
	cookie       cookies.Cookie
	client       cookies.Options // decoded from the cookie, replayed to the backend
	announced    BackendOptions  // what the client was told in our SYN-ACK
	clientWindow uint16          // window field of the client's ACK (scaled)

	serverISN    uint32
	serverWindow uint16 // SYN-ACK window (never scaled)
	serverScale  cookies.WindowScale

	validated time.Time // when the client's ACK validated
	answered  time.Time // when the backend's SYN-ACK came
	nextRetry time.Time
	retries   int
	expires   time.Time // stateDone / stateHandingOff give-up time

	held heldRefs // early data waiting in its queue (earlydata.go)
	// reused says the client reuses the ports of a closing flow whose
	// entry is still there (its cookie ACK came through the stale rule):
	// the backend is ACKed only once the hand-off replaced that entry,
	// or its answer would meet the old one.
	reused bool
	// acked says the backend was ACKed: from then on the segments that
	// meet no entry are translated rather than held.
	acked bool
	// missed is how the flow ended, as far as the engine passed it on
	// itself: the FINs and RSTs its conntrack entry never saw.
	missed endings
	// replayed says the fast path replayed the SYN (FastPathReplayed)
	// and keeps a record of the flow, forgotten once the entry exists;
	// completed, that it also ACKed the backend and opened the client's
	// window, so the hand-off sends no window update.
	replayed, completed bool
	// endedAtFastPath says the flow ended, or began to, while the fast
	// path carried it, before the engine heard it was answered: no entry
	// was made, and the fast path's record, which carries it to its end,
	// is forgotten with the flow (once over).
	endedAtFastPath bool
}

// endings are the ways a flow ends that the engine passed on in place of
// its conntrack entry: segments that met no entry (not made yet) and were
// translated, released early data, or untracked copies. An entry that saw
// neither FIN nor the RST would stay established until its timeout, days
// later; once the flow has ended so, the engine deletes it, and lingering
// segments meet the flow's record instead (Engine.missedEnding).
type endings uint8

const (
	clientFIN endings = 1 << iota
	backendFIN
	reset
)

// endingOf is how a segment with flags, from the end whose FIN is fin,
// ends its flow: reset, fin, or not at all.
func endingOf(flags packet.Flags, fin endings) endings {
	switch {
	case flags.Has(packet.RST):
		return reset
	case flags.Has(packet.FIN):
		return fin
	}
	return 0
}

// over says the flow ended without its entry seeing the end: both FINs,
// or an RST. One missed FIN is not: the entry sees the other end's, and
// its close timeouts apply.
func (m endings) over() bool {
	return m&reset != 0 || m&(clientFIN|backendFIN) == clientFIN|backendFIN
}

// pendingTable is a bounded map of flows waiting on their backend. The
// bound holds under any flood: only ACKs carrying a valid cookie create
// entries, and past the bound they are dropped (the client's zero-window
// probes retry later).
type pendingTable struct {
	flows map[flowKey]*pendingFlow
	max   int
}

func newPendingTable(max int) *pendingTable {
	return &pendingTable{flows: make(map[flowKey]*pendingFlow), max: max}
}

func (t *pendingTable) get(k flowKey) *pendingFlow { return t.flows[k] }

// add inserts f under k, reporting false when the table is full.
func (t *pendingTable) add(k flowKey, f *pendingFlow) bool {
	if len(t.flows) >= t.max {
		return false
	}
	t.flows[k] = f
	return true
}

func (t *pendingTable) remove(k flowKey) { delete(t.flows, k) }

func (t *pendingTable) len() int { return len(t.flows) }
