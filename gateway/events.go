package gateway

import (
	"net/netip"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// events logs what the engine reports as structured events and feeds the
// handshake histogram.
type events struct {
	log       zerolog.Logger
	handshake *telemetry.Histograms
}

func (e events) ModeChanged(c engine.ModeChange) {
	telemetry.LogModeChange(e.log, telemetry.ModeChange{
		Service: c.Service, From: c.From.String(), To: c.To.String(), Reason: c.Reason,
		HalfOpen: c.HalfOpen, SYNRate: c.SYNRate, CompletionRatio: c.Completion,
	})
}

func (e events) BackendLearned(svc netip.AddrPort, o engine.BackendOptions, source string) {
	e.log.Info().Str(telemetry.FieldEvent, telemetry.EventBackendOptionsLearned).
		Str("service", svc.String()).Str("source", source).
		Uint16("mss", o.MSS).Int8("wscale", int8(o.WindowScale)).
		Bool("sack", o.SACKPermitted).Msg("backend TCP options learned")
}

func (e events) BackendMismatch(svc netip.AddrPort, o engine.BackendOptions) {
	e.log.Warn().Str(telemetry.FieldEvent, telemetry.EventBackendOptionMismatch).
		Str("service", svc.String()).
		Uint16("mss", o.MSS).Int8("wscale", int8(o.WindowScale)).
		Bool("sack", o.SACKPermitted).Msg("backend SYN-ACK options differ from those announced")
}

func (e events) HandoffFailed(svc netip.AddrPort, err error) {
	e.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventHandoffFailed).
		Str("service", svc.String()).Msg("conntrack hand-off failed")
}

func (e events) HandedOff(svc int, d time.Duration) { e.handshake.Observe(svc, d) }
