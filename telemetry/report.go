package telemetry

import (
	"maps"
	"slices"
	"time"
)

// report is the state of the periodic log events: what the last report
// saw, to log rates and growth over the interval.
type report struct {
	last       *sample
	suppressed map[string]uint64
}

// startReport sets the baseline of the first interval.
func (t *Telemetry) startReport() {
	t.report.last = t.read()
	if t.limiter != nil {
		_, t.report.suppressed = t.limiter.suppressedSince(nil)
	}
}

// logReport logs, for the interval since the last report: a stats line
// per service; a queue_overflow line per queue whose kernel drops or
// ENOBUFS grew; a log_suppressed line per event kind the limiter held
// back. Each at most once per interval, however hard the flood.
func (t *Telemetry) logReport() {
	cur := t.read()
	prev := t.report.last
	t.report.last = cur
	if prev == nil {
		return
	}
	dt := cur.at.Sub(prev.at)
	secs := dt.Seconds()

	for i, sc := range cur.services {
		if i >= len(prev.services) || prev.services[i].Service != sc.Service {
			continue
		}
		r := ratesBetween(prev.services[i].Counters, sc.Counters, secs)
		e := t.log.Info().Str(FieldEvent, EventStats).
			Str("service", sc.Service).Str("mode", sc.Mode).
			Float64("interval_s", round2(secs)).
			Int("half_open", sc.HalfOpen).Int("pending", sc.Pending).
			Float64("syn_rate", round2(r.SYN)).
			Float64("synack_rate", round2(r.SYNACK)).
			Float64("cookie_valid_rate", round2(r.CookieValid)).
			Float64("cookie_invalid_rate", round2(r.CookieInvalid)).
			Float64("handoff_rate", round2(r.HandedOff))
		if m, ok := cur.handshake[i].Mean(prev.handshake[i]); ok {
			e = e.Float64("handshake_ms", round2(float64(m)/float64(time.Millisecond)))
		}
		// Totals since start, in the engine's order, so lines compare
		// field by field.
		for _, name := range t.counters {
			e = e.Uint64(name, sc.Counters[name])
		}
		e.Msg("service statistics")
	}

	for i, q := range cur.queues {
		if i >= len(prev.queues) || prev.queues[i].Queue != q.Queue {
			continue
		}
		p := prev.queues[i]
		if q.KernelDrops <= p.KernelDrops && q.ENOBUFS <= p.ENOBUFS {
			continue
		}
		t.log.Warn().Str(FieldEvent, EventQueueOverflow).
			Uint16("queue", q.Queue).Str("kind", q.Kind).Float64("interval_s", round2(secs)).
			Uint64("dropped", sub(q.KernelDrops, p.KernelDrops)).Uint64("dropped_total", q.KernelDrops).
			Uint64("enobufs", sub(q.ENOBUFS, p.ENOBUFS)).Uint64("enobufs_total", q.ENOBUFS).
			Msg("queue overflowed: the kernel dropped (or, failing open, passed) packets synguard never saw")
	}

	if t.limiter != nil {
		var grew map[string]uint64
		grew, t.report.suppressed = t.limiter.suppressedSince(t.report.suppressed)
		for _, name := range slices.Sorted(maps.Keys(grew)) {
			t.log.Warn().Str(FieldEvent, EventLogSuppressed).
				Str("suppressed_event", name).Float64("interval_s", round2(secs)).
				Uint64("suppressed", grew[name]).Uint64("suppressed_total", t.report.suppressed[name]).
				Msg("log lines held back by the rate limit")
		}
	}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}
