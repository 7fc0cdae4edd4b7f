package telemetry

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric name.
const Namespace = "synguard"

// Engine counter names telemetry gives a meaning to, as the engine spells
// them (engine.Counter.String()).
const (
	CounterSYNReceived   = "syn_received"
	CounterSYNACKSent    = "synack_sent"
	CounterCookieValid   = "cookie_valid"
	CounterCookieInvalid = "cookie_invalid"
	CounterHandedOff     = "handed_off"
	// The XDP fast path's share of synack_sent and cookie_invalid.
	CounterXDPSYNACKSent = "xdp_synack_sent"
	CounterXDPACKDropped = "xdp_ack_dropped"
	// Handshakes the fast path's tc programs completed in the kernel,
	// and the segments they translated before the flow's entry existed.
	CounterXDPHandshakeCompleted = "xdp_handshake_completed"
	CounterXDPTranslated         = "xdp_translated"
	// Why validated flows do not reach a hand-off.
	CounterBackendReset   = "backend_reset"
	CounterBackendTimeout = "backend_timeout"
	CounterHandoffFailed  = "handoff_failed"
	CounterPendingFull    = "pending_full"
)

// ServiceCounters is one service's counters at scrape time.
type ServiceCounters struct {
	Service string
	// Index is the service's index in the handshake histograms: the
	// engine's, which stays the same across reloads while the list's
	// order may change.
	Index int
	// Mode is the mode the service is in now; one of the collector's
	// Modes.
	Mode string
	// Counters maps a stable snake_case counter name to its value.
	Counters map[string]uint64
	// HalfOpen is the service's count of SYNs passed to the backend whose
	// handshake has not completed (0 while every SYN gets a cookie).
	HalfOpen int
	Pending  int
	// Held is the client segments held in their queues for a hand-off
	// (early data).
	Held int
	// Backend is the backend's health and the options announced for it.
	Backend Backend
	// Attack is the attack on the service now; nil when there is none.
	Attack *Attack
	// AttacksStarted counts the attacks that started on the service
	// since synguard started, the one in progress included
	// (synguard_attacks_total).
	AttacksStarted uint64
}

// Backend is a service's backend as the gateway sees it. The zero value
// is a backend with no verdict yet: neither metrics nor the dashboard
// call it down.
type Backend struct {
	// Up is false when probes fail or replayed SYNs meet resets or
	// silence, true once they succeed again.
	Up bool
	// Reason says why it is down (or what last showed it up): "probe:
	// connection refused", "resets", "silence", "handed_off", "probe".
	Reason string
	// Since is when Up last changed.
	Since time.Time
	// The options announced to clients, and how they were had:
	// "learned" (probe or SYN-ACK), "default" (not learned yet) or
	// "fixed" (configured).
	MSS         uint16
	WindowScale int // -1: the backend does not scale
	SACK        bool
	Options     string
}

// Attack is an attack in progress on a service, or one that ended.
type Attack struct {
	Started time.Time
	Ended   time.Time // zero while it lasts
	Reason  string
	// PeakSYNRate is the highest SYN rate seen so far; SYNs, HandedOff
	// and Completion are totals so far (final once it ended).
	PeakSYNRate float64
	SYNs        uint64
	HandedOff   uint64
	Completion  float64
	// TopSources are the heaviest source prefixes, heaviest first (at
	// most 10); Spread is the share of SYNs from prefixes seen once.
	TopSources []SourceCount
	Spread     float64
	// TopShare is the share of SYNs from TopSources.
	TopShare float64
}

// SourceCount is one source prefix's SYNs and completed handshakes.
type SourceCount struct {
	Prefix    string `json:"prefix"`
	SYNs      uint64 `json:"syns"`
	Completed uint64 `json:"completed"`
}

// AttackSource is a Source that reports attacks as they end, for the
// dashboard's history.
type AttackSource interface {
	// Attacks returns the attacks that ended, newest first, at most n
	// per service.
	Attacks(n int) map[string][]Attack
}

// Queue kinds: client SYNs go to SYN queues; the segments that complete
// handshakes (cookie ACKs, the backends' answers, stale-entry and first
// ACKs) to completion queues of their own, so a flood of SYNs never
// delays them.
const (
	QueueSYN        = "syn"
	QueueCompletion = "completion"
)

// QueueCounters are one NFQUEUE's counters.
type QueueCounters struct {
	Queue        uint16
	Kind         string // QueueSYN or QueueCompletion
	Received     uint64
	Batches      uint64 // receive batches (Received/Batches is the mean batch size)
	KernelDrops  uint64 // queue_dropped + user_dropped from the kernel
	ENOBUFS      uint64
	VerdictError uint64
}

// Source is what telemetry reads, at each scrape and once a second for
// the dashboard. ServiceCounters lists the services in the engine's order
// (the index Histograms.Observe is given). Both methods may be called
// concurrently.
type Source interface {
	ServiceCounters() []ServiceCounters
	QueueCounters() []QueueCounters
}

// XDPSource is a Source whose gateway may run the XDP fast path.
// XDPActions returns the program's verdict counts by action ("pass",
// "drop", "tx", "forward"), or nil when it does not run.
type XDPSource interface {
	XDPActions() map[string]uint64
}

// RulesSource is a Source whose gateway watches its firewall rules.
// RulesRestored returns how many times they were found changed and put
// back.
type RulesSource interface {
	RulesRestored() uint64
}

// HandoffSource is a Source that counts the kernel's conntrack entries
// carrying the hand-off mark: flows handed off by this gateway and, on a
// standby, the copies conntrackd made of its peer's. It is read at each
// scrape and /api/stats request, not sampled.
type HandoffSource interface {
	HandoffEntries() (int, error)
}

// counterHelp documents the engine counters that have their own metric
// names; any other counter is exported as synguard_<name>_total too.
var counterHelp = map[string]string{
	CounterSYNReceived:           "Client SYNs to a protected service seen by the engine or answered by the XDP fast path.",
	CounterSYNACKSent:            "Cookie SYN-ACKs sent, by the engine or the XDP fast path.",
	CounterCookieValid:           "Client ACKs whose SYN cookie validated.",
	CounterCookieInvalid:         "Client ACKs dropped because no flow or cookie matched.",
	CounterHandedOff:             "Flows handed off to kernel conntrack.",
	CounterXDPSYNACKSent:         "Cookie SYN-ACKs sent by the XDP fast path (included in synguard_synack_sent_total).",
	CounterXDPACKDropped:         "Forged ACKs the XDP fast path dropped (included in synguard_cookie_invalid_total).",
	CounterXDPHandshakeCompleted: "Handshakes the fast path's tc programs completed in the kernel: the backend's SYN-ACK to a SYN they replayed, ACKed and the client's window opened (included in synguard_flows_handed_off_total once the entry is made).",
	CounterXDPTranslated:         "Segments of flows the fast path's tc programs completed, translated and sent on by them before the flow's conntrack entry existed.",
}

// metricName maps an engine counter name to its exported metric name.
func metricName(counter string) string {
	if counter == CounterHandedOff {
		return Namespace + "_flows_handed_off_total"
	}
	return Namespace + "_" + counter + "_total"
}

// CollectorConfig says what a Collector exports besides its Source.
type CollectorConfig struct {
	// Counters are the engine counter names to export, one metric each.
	Counters []string
	// Modes are every value synguard_mode can take; each service gets one
	// series per value, 1 for its current mode and 0 for the others, so a
	// graph of a mode is continuous. With none, only the current mode's
	// series is exported.
	Modes []string
	// Handshake holds the backend handshake latency per service; nil
	// leaves the histogram out.
	Handshake *Histograms
	// Stages holds the hand-off's steps, by the Stage constants, over
	// all services; nil leaves the histogram out.
	Stages *Histograms
	// Log is the log line limiter whose held-back lines are exported;
	// nil leaves the metric out.
	Log *LineLimiter
}

// Collector exports a Source as Prometheus metrics.
type Collector struct {
	src       Source
	modes     []string
	handshake *Histograms
	stages    *Histograms
	log       *LineLimiter
	bounds    []float64 // HandshakeBuckets in seconds

	descs      map[string]*prometheus.Desc
	mode       *prometheus.Desc
	halfOpen   *prometheus.Desc
	pend       *prometheus.Desc
	held       *prometheus.Desc
	hsLatency  *prometheus.Desc
	hsStage    *prometheus.Desc
	suppressed *prometheus.Desc
	qRecv      *prometheus.Desc
	qDrop      *prometheus.Desc
	qNoBu      *prometheus.Desc
	qBatch     *prometheus.Desc
	qVErr      *prometheus.Desc
	xdpPackets *prometheus.Desc
	restored   *prometheus.Desc

	backendUp    *prometheus.Desc
	attackActive *prometheus.Desc
	attacks      *prometheus.Desc
	handoffs     *prometheus.Desc
}

// NewCollector builds a collector reading src.
func NewCollector(src Source, cfg CollectorConfig) *Collector {
	c := &Collector{src: src, modes: cfg.Modes, handshake: cfg.Handshake, stages: cfg.Stages, log: cfg.Log, descs: make(map[string]*prometheus.Desc)}
	for _, b := range HandshakeBuckets {
		c.bounds = append(c.bounds, b.Seconds())
	}
	for _, n := range cfg.Counters {
		help := counterHelp[n]
		if help == "" {
			help = fmt.Sprintf("Engine events of kind %s.", n)
		}
		c.descs[n] = prometheus.NewDesc(metricName(n), help, []string{"service"}, nil)
	}
	c.mode = prometheus.NewDesc(Namespace+"_mode", "1 for the mode each service is in, 0 for the others.", []string{"service", "mode"}, nil)
	c.halfOpen = prometheus.NewDesc(Namespace+"_half_open", "SYNs passed to the backend whose handshake has not completed.", []string{"service"}, nil)
	c.pend = prometheus.NewDesc(Namespace+"_pending_flows", "Cookie-validated flows waiting on their backend or lingering after hand-off.", []string{"service"}, nil)
	c.held = prometheus.NewDesc(Namespace+"_early_data_waiting", "Client segments (early data) held in their queue until their flow is handed off.", []string{"service"}, nil)
	c.hsStage = prometheus.NewDesc(Namespace+"_handshake_stage_seconds", "Each step of the hand-off, over all services: backend (the valid cookie ACK to the backend's SYN-ACK: the replayed SYN, the backend, the answer through the queue), wait (the SYN-ACK to the hand-off taking the flow, after the batch's verdicts, or the fast path's events read, up to 5 ms later), entry (creating the conntrack entry; the window update follows at once; not counted for a flow over before it was needed).", []string{"stage"}, nil)
	c.hsLatency = prometheus.NewDesc(Namespace+"_backend_handshake_seconds", "Time from a client's valid cookie ACK to its flow's hand-off: the backend's answer to the replayed SYN, and the conntrack entry.", []string{"service"}, nil)
	c.suppressed = prometheus.NewDesc(Namespace+"_log_suppressed_total", "Log lines held back by the per-event rate limit.", []string{"event"}, nil)
	// kind tells SYN queues (syn) from those of the segments that
	// complete handshakes (completion).
	queueLabels := []string{"queue", "kind"}
	c.qRecv = prometheus.NewDesc(Namespace+"_queue_received_total", "Packets received from the NFQUEUE.", queueLabels, nil)
	c.qDrop = prometheus.NewDesc(Namespace+"_queue_dropped_total", "Packets the kernel dropped because the queue or its socket was full (/proc/net/netfilter/nfnetlink_queue).", queueLabels, nil)
	c.qBatch = prometheus.NewDesc(Namespace+"_queue_batches_total", "Receive batches the queue's packets came in; received/batches is the mean batch size.", queueLabels, nil)
	c.qNoBu = prometheus.NewDesc(Namespace+"_queue_enobufs_total", "Times the kernel reported the queue socket's buffer overflowed.", queueLabels, nil)
	c.qVErr = prometheus.NewDesc(Namespace+"_queue_verdict_errors_total", "Verdicts that could not be delivered.", queueLabels, nil)
	c.backendUp = prometheus.NewDesc(Namespace+"_backend_up", "1 while the service's backend answers (probes succeed, replayed SYNs are answered), 0 while it does not; absent before the first verdict.", []string{"service"}, nil)
	c.attackActive = prometheus.NewDesc(Namespace+"_attack_active", "1 while the service is under attack (from attack_start to attack_end), else 0.", []string{"service"}, nil)
	c.attacks = prometheus.NewDesc(Namespace+"_attacks_total", "Attacks started on the service, the one in progress included.", []string{"service"}, nil)
	c.xdpPackets = prometheus.NewDesc(Namespace+"_xdp_packets_total", "Packets the XDP fast path handled, by action: tx (answered with a SYN-ACK), forward (at tc: a replayed SYN, a window update or a translated segment sent on), drop (forged ACKs, SYN-ACKs the amplification guard withheld), pass (left to the kernel and the queue).", []string{"action"}, nil)
	c.restored = prometheus.NewDesc(Namespace+"_rules_restored_total", "Times synguard found its firewall rules changed by someone else (a flush, another tool's restore) and put them back.", nil, nil)
	c.handoffs = prometheus.NewDesc(Namespace+"_handoff_entries", "Kernel conntrack entries carrying the hand-off connmark: flows handed off here and, on a standby, the copies conntrackd synchronised from its peer. Counted at scrape time.", nil, nil)
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{c.mode, c.halfOpen, c.pend, c.held, c.qRecv, c.qDrop, c.qNoBu, c.qVErr, c.qBatch, c.xdpPackets, c.restored, c.backendUp, c.attackActive, c.attacks, c.handoffs} {
		ch <- d
	}
	if c.stages != nil {
		ch <- c.hsStage
	}
	if c.handshake != nil {
		ch <- c.hsLatency
	}
	if c.log != nil {
		ch <- c.suppressed
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.ServiceCounters() {
		for name, v := range s.Counters {
			if d, ok := c.descs[name]; ok {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), s.Service)
			}
		}
		known := false
		for _, m := range c.modes {
			v := 0.0
			if m == s.Mode {
				v, known = 1, true
			}
			ch <- prometheus.MustNewConstMetric(c.mode, prometheus.GaugeValue, v, s.Service, m)
		}
		if !known {
			// A mode the gateway forgot to list still shows.
			ch <- prometheus.MustNewConstMetric(c.mode, prometheus.GaugeValue, 1, s.Service, s.Mode)
		}
		ch <- prometheus.MustNewConstMetric(c.halfOpen, prometheus.GaugeValue, float64(s.HalfOpen), s.Service)
		ch <- prometheus.MustNewConstMetric(c.pend, prometheus.GaugeValue, float64(s.Pending), s.Service)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(s.Held), s.Service)
		if up, known := s.Backend.state(); known {
			ch <- prometheus.MustNewConstMetric(c.backendUp, prometheus.GaugeValue, b2f(up), s.Service)
		}
		ch <- prometheus.MustNewConstMetric(c.attackActive, prometheus.GaugeValue, b2f(s.Attack != nil), s.Service)
		ch <- prometheus.MustNewConstMetric(c.attacks, prometheus.CounterValue, float64(s.AttacksStarted), s.Service)
		if h, ok := c.handshake.Snapshot(s.Index); ok {
			ch <- prometheus.MustNewConstHistogram(c.hsLatency, h.Count, h.Sum.Seconds(), c.cumulative(h), s.Service)
		}
	}
	for i, stage := range HandshakeStages {
		if h, ok := c.stages.Snapshot(i); ok {
			ch <- prometheus.MustNewConstHistogram(c.hsStage, h.Count, h.Sum.Seconds(), c.cumulative(h), stage)
		}
	}
	for _, q := range c.src.QueueCounters() {
		id := fmt.Sprint(q.Queue)
		ch <- prometheus.MustNewConstMetric(c.qRecv, prometheus.CounterValue, float64(q.Received), id, q.Kind)
		ch <- prometheus.MustNewConstMetric(c.qDrop, prometheus.CounterValue, float64(q.KernelDrops), id, q.Kind)
		ch <- prometheus.MustNewConstMetric(c.qNoBu, prometheus.CounterValue, float64(q.ENOBUFS), id, q.Kind)
		ch <- prometheus.MustNewConstMetric(c.qBatch, prometheus.CounterValue, float64(q.Batches), id, q.Kind)
		ch <- prometheus.MustNewConstMetric(c.qVErr, prometheus.CounterValue, float64(q.VerdictError), id, q.Kind)
	}
	if xs, ok := c.src.(XDPSource); ok {
		for action, n := range xs.XDPActions() {
			ch <- prometheus.MustNewConstMetric(c.xdpPackets, prometheus.CounterValue, float64(n), action)
		}
	}
	if rs, ok := c.src.(RulesSource); ok {
		ch <- prometheus.MustNewConstMetric(c.restored, prometheus.CounterValue, float64(rs.RulesRestored()))
	}
	if n, ok := handoffEntries(c.src); ok {
		ch <- prometheus.MustNewConstMetric(c.handoffs, prometheus.GaugeValue, float64(n))
	}
	if c.log != nil {
		for event, n := range c.log.Suppressed() {
			ch <- prometheus.MustNewConstMetric(c.suppressed, prometheus.CounterValue, float64(n), event)
		}
	}
}

// state is the backend's health, and whether there is a verdict yet.
func (b Backend) state() (up, known bool) {
	return b.Up, b.Up || !b.Since.IsZero()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// handoffEntries reads src's hand-off entry count, if it has one. A
// count that failed is left out rather than failing the whole scrape.
func handoffEntries(src Source) (int, bool) {
	hs, ok := src.(HandoffSource)
	if !ok {
		return 0, false
	}
	n, err := hs.HandoffEntries()
	return n, err == nil
}

// Listen binds the metrics address now, so a bad or busy address fails
// at start rather than in the background.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	return ln, nil
}

// NewServer returns an HTTP server with timeouts suited to scrapes.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second}
}

// cumulative is h's buckets as Prometheus wants them, by upper bound.
func (c *Collector) cumulative(h HistogramSnapshot) map[float64]uint64 {
	buckets := make(map[float64]uint64, len(c.bounds))
	for j, b := range c.bounds {
		buckets[b] = h.Cumulative[j]
	}
	return buckets
}
