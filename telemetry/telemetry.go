package telemetry

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// DefaultStatsInterval is how often a stats line per service is logged.
const DefaultStatsInterval = 10 * time.Second

// Config wires telemetry to a running gateway.
type Config struct {
	Source Source
	// Collector says what /metrics exports besides the Source; its
	// Handshake and Log are also what the dashboard and stats lines use.
	Collector CollectorConfig
	// Logger receives the periodic events: stats, queue_overflow,
	// log_suppressed.
	Logger zerolog.Logger
	// StatsInterval is how often they are logged; 0 means
	// DefaultStatsInterval.
	StatsInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CallerSamples says the caller calls Sample about every
	// SamplePeriod, from a wake-up it has anyway, so that Run does not
	// wake for the dashboard too. Should those calls stop for
	// sampleFallback, Run samples again by itself until they resume.
	CallerSamples bool
}

// sampleFallback is how long Run waits for a caller's Sample
// (Config.CallerSamples) before it samples by itself.
const sampleFallback = 3 * SamplePeriod

// Telemetry is the operator's view of a running gateway: Prometheus
// metrics and the live dashboard over HTTP (Handler), and periodic log
// events (Run).
type Telemetry struct {
	src       Source
	collector *Collector
	counters  []string
	handshake *Histograms
	limiter   *LineLimiter
	log       zerolog.Logger
	interval  time.Duration
	now       func() time.Time

	live   live
	report report
	// fallback fires when the caller's samples stopped
	// (Config.CallerSamples); nil when Run samples by itself.
	fallback *time.Timer
}

// New builds the telemetry of one gateway.
func New(cfg Config) *Telemetry {
	t := &Telemetry{
		src:       cfg.Source,
		collector: NewCollector(cfg.Source, cfg.Collector),
		counters:  cfg.Collector.Counters,
		handshake: cfg.Collector.Handshake,
		limiter:   cfg.Collector.Log,
		log:       cfg.Logger,
		interval:  cfg.StatsInterval,
		now:       cfg.Now,
	}
	if t.interval <= 0 {
		t.interval = DefaultStatsInterval
	}
	if t.now == nil {
		t.now = time.Now
	}
	t.live.started = t.now()
	if cfg.CallerSamples {
		t.fallback = time.NewTimer(sampleFallback)
	}
	return t
}

// Sample reads the source now and adds a point to the dashboard's
// figures, as Run does once a second: for a caller that samples instead
// of Run (Config.CallerSamples), and for tools and tests that drive the
// clock (Config.Now) themselves.
func (t *Telemetry) Sample() {
	t.sampleLive()
	if t.fallback != nil {
		t.fallback.Reset(sampleFallback)
	}
}

// Run samples the source once a second for the dashboard (or only when
// the caller's samples stopped, Config.CallerSamples) and logs the
// periodic events every stats interval, until ctx is done.
func (t *Telemetry) Run(ctx context.Context) {
	t.sampleLive()
	t.startReport()
	var live <-chan time.Time
	if t.fallback != nil {
		defer t.fallback.Stop()
		live = t.fallback.C
	} else {
		tick := time.NewTicker(SamplePeriod)
		defer tick.Stop()
		live = tick.C
	}
	stats := time.NewTicker(t.interval)
	defer stats.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-live:
			t.sampleLive()
			if t.fallback != nil {
				// Each period, until the caller's Sample resets it.
				t.fallback.Reset(SamplePeriod)
			}
		case <-stats.C:
			t.logReport()
		}
	}
}
