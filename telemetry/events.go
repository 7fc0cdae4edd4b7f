package telemetry

import (
	"io"
	"math"
	"net/netip"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// FieldEvent is the key of the stable event name every log line carries.
const FieldEvent = "event"

// Event names: the values of the "event" field. They are part of the
// log schema (docs/events.md); log queries and alerts match on them, so a
// name never changes meaning once released.
const (
	// Lifecycle.
	EventStart             = "start"
	EventStop              = "stop"
	EventRulesInstalled    = "rules_installed"
	EventRulesRemoved      = "rules_removed"
	EventRulesRemoveFailed = "rules_remove_failed"
	EventWorkerFailed      = "worker_failed"
	EventMetricsFailed     = "metrics_failed"
	// A reload (SIGHUP) applied, or rejected with the running
	// configuration left in force.
	EventConfigReloaded = "config_reloaded"
	EventConfigRejected = "config_rejected"

	// Protection state.
	EventModeChange = "mode_change"
	// An attack on a service: pressure past a high watermark, then calm
	// for the hold time. One start and one end per attack.
	EventAttackStart = "attack_start"
	EventAttackEnd   = "attack_end"
	// An attack's packet sample could not be started or written.
	EventCaptureFailed = "capture_failed"
	EventStats         = "stats"

	// Backends.
	EventBackendOptionsLearned = "backend_options_learned"
	EventBackendOptionMismatch = "backend_option_mismatch"
	EventBackendUnreachable    = "backend_unreachable"
	EventHandoffFailed         = "handoff_failed"
	// A packet synguard built (a SYN-ACK, a replayed SYN, a client's
	// early data sent on) could not be sent; one line a second at most.
	EventSendFailed = "send_failed"
	// A backend's health changed: replayed SYNs or probes fail, or
	// succeed again.
	EventBackendDown = "backend_down"
	EventBackendUp   = "backend_up"

	// The queue between netfilter and synguard.
	EventQueueOverflow = "queue_overflow"
	// EventQueue tags the NFQUEUE layer's own diagnostics (receive and
	// verdict errors); the message says which.
	EventQueue = "queue"

	// EventLogSuppressed reports lines the rate limit held back.
	EventLogSuppressed = "log_suppressed"

	// The XDP fast path: not available at start (--xdp auto), or
	// detached after an error.
	EventXDPUnavailable = "xdp_unavailable"
	EventXDPFailed      = "xdp_failed"

	// The rules watch: synguard's firewall rules were found changed by
	// someone else and put back, or could not be checked or put back.
	EventRulesRestored      = "rules_restored"
	EventRulesRestoreFailed = "rules_restore_failed"
	// The service manager (systemd): the packet path failed its health
	// check, so the watchdog is withheld, or recovered; a notification
	// could not be sent.
	EventWatchdogUnhealthy = "watchdog_unhealthy"
	EventWatchdogRecovered = "watchdog_recovered"
	EventNotifyFailed      = "notify_failed"
)

// Events lists every event name, so documentation and tests can check
// they cover them all.
func Events() []string {
	return []string{
		EventStart, EventStop, EventRulesInstalled, EventRulesRemoved, EventRulesRemoveFailed,
		EventWorkerFailed, EventMetricsFailed, EventConfigReloaded, EventConfigRejected, EventModeChange, EventAttackStart, EventAttackEnd, EventCaptureFailed, EventStats,
		EventBackendOptionsLearned, EventBackendOptionMismatch, EventBackendUnreachable,
		EventHandoffFailed, EventSendFailed, EventBackendDown, EventBackendUp, EventQueueOverflow, EventQueue, EventLogSuppressed,
		EventXDPUnavailable, EventXDPFailed, EventRulesRestored, EventRulesRestoreFailed,
		EventWatchdogUnhealthy, EventWatchdogRecovered, EventNotifyFailed,
	}
}

// Format is how log lines are written.
type Format uint8

// Formats.
const (
	// FormatJSON writes one JSON object per line, for log pipelines.
	FormatJSON Format = iota
	// FormatConsole writes aligned, coloured text for people.
	FormatConsole
)

// NewLogger returns synguard's event logger and the limiter its lines
// pass through. The limiter bounds the lines per event kind and counts
// those it holds back (for synguard_log_suppressed_total); lines that
// pass are written to w as JSON or, for people, as console text. Every
// line carries the time, level, event and the event's typed fields.
func NewLogger(w io.Writer, f Format, level zerolog.Level, limit LimitConfig) (zerolog.Logger, *LineLimiter) {
	if f == FormatConsole {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !isTerminal(w)}
	}
	// The limiter reads the event name from the JSON line, so it sits
	// before the console formatting.
	lim := NewLineLimiter(w, limit)
	return zerolog.New(lim).Level(level).With().Timestamp().Logger(), lim
}

// ModeChange is a service switching mode, as the engine's controller
// decided it.
type ModeChange struct {
	Service netip.AddrPort
	// From and To are synguard_mode's label values, e.g. "passthrough"
	// and "cookie".
	From, To string
	// Reason names what crossed a watermark, e.g. "half_open_high".
	Reason string
	// The figures the decision was taken on.
	HalfOpen        int
	SYNRate         float64
	CompletionRatio float64
}

// LogModeChange logs c as a mode_change event, at warn level: a switch
// means a service's traffic changed character, which an operator wants
// to see even with info lines filtered out.
func LogModeChange(log zerolog.Logger, c ModeChange) {
	log.Warn().Str(FieldEvent, EventModeChange).
		Str("service", c.Service.String()).
		Str("from", c.From).Str("to", c.To).Str("reason", c.Reason).
		Int("half_open", c.HalfOpen).
		Float64("syn_rate", round2(c.SYNRate)).
		Float64("completion_ratio", round2(c.CompletionRatio)).
		Msg("service mode changed")
}

// round2 keeps rates readable in logs: two decimals are plenty.
func round2(v float64) float64 { return math.Round(v*100) / 100 }

// isTerminal reports whether w is a character device, where colours help;
// in a file or pipe their escape codes are noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
