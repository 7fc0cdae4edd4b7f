package engine

import "sync/atomic"

// Counter names one of the engine's per-service event counts.
type Counter uint8

// Counters. Each is counted per service (and once for packets that match
// no service), per writer, so counting never contends across workers.
const (
	SYNReceived        Counter = iota // client SYNs seen
	SYNACKSent                        // cookie SYN-ACKs sent
	CookieValid                       // client ACKs whose cookie validated
	CookieInvalid                     // client ACKs dropped: no pending flow, bad cookie
	BackendSYNSent                    // SYNs replayed to a backend, retries included
	BackendRetry                      // replayed SYNs resent to a silent backend
	HandedOff                         // flows handed to kernel conntrack
	HandoffFailed                     // conntrack entry could not be created
	BackendReset                      // backend answered a replayed SYN with RST
	BackendTimeout                    // backend never answered; client reset
	ClientReset                       // client reset a flow before its hand-off
	PendingFull                       // valid ACK dropped: pending table full
	OptionMismatch                    // backend SYN-ACK options differ from those announced
	Malformed                         // packets that failed to parse
	SendError                         // packets the sender failed to transmit
	AmplificationGuard                // SYN-ACK not sent: it would exceed the SYN
	DuplicateACK                      // the third ACK again, or a probe, for a flow already pending
	Unmatched                         // packets of no pending flow, passed on
	SYNPassed                         // SYNs let through to the backend (passthrough or off)
	FirstACK                          // first ACKs of flows let through, observed once
	SYNAllowed                        // SYNs from an allowed source, let through unchallenged
	SYNDenied                         // SYNs from a denied source, dropped
	HalfOpenEvicted                   // half-open entries pushed out of a full table
	ModeChanges                       // switches between passthrough and cookie mode
	StalePassed                       // segments of closing handed-off flows, passed on
	EntryReplaced                     // stale conntrack entries replaced by a new flow on the same ports
	EarlyDataHeld                     // client segments held in their queue until the backend answers
	EarlyDataReleased                 // held early segments sent on to the backend, translated
	TranslatedClient                  // client segments of an established flow that met no entry yet: ack translated, passed
	TranslatedBackend                 // backend segments of an established flow that met no entry yet: seq translated, passed
	EarlyDataRefused                  // early segments dropped at once: per-flow or global bound, no holder
	EarlyDataDropped                  // held segments dropped because their flow ended before the hand-off
	EarlyDataLost                     // held segments the queue refused a verdict for
	EndedUnseen                       // flows that ended (both FINs, or an RST) before their entry saw them: entry deleted, or none made
	SACKDropped                       // client ACKs with SACK blocks that met no entry, or a closing one: dropped, not translated
	OldFlowAnswer                     // client ACKs of a pending flow past its request, answering an earlier flow's segment: dropped
	numCounters
)

var counterNames = [numCounters]string{
	SYNReceived:        "syn_received",
	SYNACKSent:         "synack_sent",
	CookieValid:        "cookie_valid",
	CookieInvalid:      "cookie_invalid",
	BackendSYNSent:     "backend_syn_sent",
	BackendRetry:       "backend_retry",
	HandedOff:          "handed_off",
	HandoffFailed:      "handoff_failed",
	BackendReset:       "backend_reset",
	BackendTimeout:     "backend_timeout",
	ClientReset:        "client_reset",
	PendingFull:        "pending_full",
	OptionMismatch:     "option_mismatch",
	Malformed:          "malformed",
	SendError:          "send_error",
	AmplificationGuard: "amplification_guard",
	DuplicateACK:       "duplicate_ack",
	Unmatched:          "unmatched",
	SYNPassed:          "syn_passed",
	FirstACK:           "first_ack",
	SYNAllowed:         "syn_allowed",
	SYNDenied:          "syn_denied",
	HalfOpenEvicted:    "half_open_evicted",
	ModeChanges:        "mode_changes",
	StalePassed:        "stale_passed",
	EntryReplaced:      "entry_replaced",
	EarlyDataHeld:      "early_data_held",
	EarlyDataReleased:  "early_data_released",
	TranslatedClient:   "translated_client",
	TranslatedBackend:  "translated_backend",
	EarlyDataRefused:   "early_data_refused",
	EarlyDataDropped:   "early_data_dropped",
	EarlyDataLost:      "early_data_lost",
	EndedUnseen:        "ended_unseen",
	SACKDropped:        "sack_dropped",
	OldFlowAnswer:      "old_flow_answer",
}

// String returns the counter's stable snake_case name.
func (c Counter) String() string {
	if c < numCounters {
		return counterNames[c]
	}
	return "unknown"
}

// Counters lists every counter, in order.
func Counters() []Counter {
	cs := make([]Counter, numCounters)
	for i := range cs {
		cs[i] = Counter(i)
	}
	return cs
}

// counterSet is one writer's counts: index 0 is "no service", then one row
// per service. Rows are padded so two writers never share a cache line.
type counterSet struct {
	rows []counterRow
}

type counterRow struct {
	v [numCounters]atomic.Uint64
	_ [64]byte
}

func newCounterSet(services int) *counterSet {
	return &counterSet{rows: make([]counterRow, services+1)}
}

// add counts one event for service index svc (-1 for none).
func (s *counterSet) add(svc int, c Counter) {
	s.rows[svc+1].v[c].Add(1)
}

// Stats is a snapshot of the counters of one service.
type Stats [numCounters]uint64

// Get returns one counter's value.
func (s *Stats) Get(c Counter) uint64 { return s[c] }

// Add adds n to one counter's value.
func (s *Stats) Add(c Counter, n uint64) { s[c] += n }

// CounterSource counts, per service, events the engine did not see. It
// returns them by value: Stats stays on the stack, and Stats() allocates
// nothing.
type CounterSource interface {
	Counts(svc int) Stats
}
