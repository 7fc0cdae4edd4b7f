package gateway

import (
	"math"
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
	stages    *telemetry.Histograms // by telemetry.Stage*
	attacks   *attackHistory
	captures  *captures
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

func (e events) SendFailed(svc netip.AddrPort, err error) {
	e.log.Warn().Err(err).Str(telemetry.FieldEvent, telemetry.EventSendFailed).
		Str("service", svc.String()).Msg("packets could not be sent; synguard_send_error_total counts them")
}

func (e events) HandedOff(svc int, t engine.HandoffTiming) {
	e.handshake.Observe(svc, t.Total())
	e.stages.Observe(telemetry.StageBackend, t.Backend)
	e.stages.Observe(telemetry.StageWait, t.Wait)
	if !t.NoEntry {
		e.stages.Observe(telemetry.StageEntry, t.Entry)
	}
}

func (e events) AttackStarted(a engine.AttackStart) {
	pcap := e.captures.start(a.Index, a.Service.String(), time.Now())
	e.log.Warn().Str(telemetry.FieldEvent, telemetry.EventAttackStart).Str("pcap", pcap).
		Str("service", a.Service.String()).Str("reason", a.Reason).
		Float64("syn_rate", round(a.SYNRate)).Int("half_open", a.HalfOpen).
		Float64("completion_ratio", round(a.Completion)).
		Array("top_sources", sourceArray(a.Sources.Top)).Float64("spread", round(a.Sources.Spread)).
		Float64("top_share", round(a.Sources.TopShare)).Msg("attack started")
}

func (e events) AttackEnded(a engine.AttackEnd) {
	e.attacks.add(a)
	res, _ := e.captures.stop(a.Index)
	e.log.Warn().Str(telemetry.FieldEvent, telemetry.EventAttackEnd).
		Str("pcap", res.Path).Uint64("pcap_packets", res.Counts.Written).
		Str("service", a.Service.String()).Str("ended", a.Ended).
		Time("started", a.Start.UTC()).Float64("duration_s", round(a.Duration.Seconds())).
		Float64("peak_syn_rate", round(a.PeakSYNRate)).
		Uint64("syns", a.SYNs).Uint64("synacks", a.SYNACKs).
		Uint64("cookie_valid", a.CookieValid).Uint64("handed_off", a.HandedOff).
		Float64("completion_ratio", round(a.Completion)).
		Array("top_sources", sourceArray(a.Sources.Top)).Float64("spread", round(a.Sources.Spread)).
		Float64("top_share", round(a.Sources.TopShare)).Msg("attack ended")
}

// round keeps three decimals: enough for a rate or a ratio in a log line.
func round(f float64) float64 { return math.Round(f*1000) / 1000 }

// sourceArray logs source prefixes as [{prefix, syns, completed}, …].
type sourceArray []engine.SourceCount

func (s sourceArray) MarshalZerologArray(a *zerolog.Array) {
	for _, c := range s {
		a.Dict(zerolog.Dict().Str("prefix", c.Prefix.String()).Uint64("syns", c.SYNs).Uint64("completed", c.Completed))
	}
}
