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
}

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
	return t
}

// Run samples the source once a second for the dashboard and logs the
// periodic events every stats interval, until ctx is done.
func (t *Telemetry) Run(ctx context.Context) {
	t.sampleLive()
	t.startReport()
	live := time.NewTicker(SamplePeriod)
	defer live.Stop()
	stats := time.NewTicker(t.interval)
	defer stats.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-live.C:
			t.sampleLive()
		case <-stats.C:
			t.logReport()
		}
	}
}
