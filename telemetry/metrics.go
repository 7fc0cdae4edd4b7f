package telemetry

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "synguard"

// ServiceCounters is one service's counters at scrape time.
type ServiceCounters struct {
	Service string
	Mode    string
	// Counters maps a stable snake_case counter name to its value.
	Counters map[string]uint64
	Pending  int
}

// QueueCounters are one NFQUEUE's counters.
type QueueCounters struct {
	Queue        uint16
	Received     uint64
	KernelDrops  uint64 // queue_dropped + user_dropped from the kernel
	ENOBUFS      uint64
	VerdictError uint64
}

// Source is what the collector reads at each scrape.
type Source interface {
	ServiceCounters() []ServiceCounters
	QueueCounters() []QueueCounters
}

// counterHelp documents the engine counters that have their own metric
// names; any other counter is exported as synguard_<name>_total too.
var counterHelp = map[string]string{
	"syn_received":   "Client SYNs to a protected service seen by the engine.",
	"synack_sent":    "Cookie SYN-ACKs sent.",
	"cookie_valid":   "Client ACKs whose SYN cookie validated.",
	"cookie_invalid": "Client ACKs dropped because no flow or cookie matched.",
	"handed_off":     "Flows handed off to kernel conntrack.",
}

// metricName maps an engine counter name to its exported metric name.
func metricName(counter string) string {
	if counter == "handed_off" {
		return Namespace + "_flows_handed_off_total"
	}
	return Namespace + "_" + counter + "_total"
}

// Collector exports a Source as Prometheus metrics.
type Collector struct {
	src   Source
	descs map[string]*prometheus.Desc
	mode  *prometheus.Desc
	pend  *prometheus.Desc
	qRecv *prometheus.Desc
	qDrop *prometheus.Desc
	qNoBu *prometheus.Desc
	qVErr *prometheus.Desc
}

// NewCollector builds a collector for counters with the given names.
func NewCollector(src Source, counterNames []string) *Collector {
	c := &Collector{src: src, descs: make(map[string]*prometheus.Desc)}
	for _, n := range counterNames {
		help := counterHelp[n]
		if help == "" {
			help = fmt.Sprintf("Engine events of kind %s.", n)
		}
		c.descs[n] = prometheus.NewDesc(metricName(n), help, []string{"service"}, nil)
	}
	c.mode = prometheus.NewDesc(Namespace+"_mode", "1 for the mode each service is in.", []string{"service", "mode"}, nil)
	c.pend = prometheus.NewDesc(Namespace+"_pending_flows", "Cookie-validated flows waiting on their backend or lingering after hand-off.", []string{"service"}, nil)
	c.qRecv = prometheus.NewDesc(Namespace+"_queue_received_total", "Packets received from the NFQUEUE.", []string{"queue"}, nil)
	c.qDrop = prometheus.NewDesc(Namespace+"_queue_dropped_total", "Packets the kernel dropped because the queue or its socket was full (/proc/net/netfilter/nfnetlink_queue).", []string{"queue"}, nil)
	c.qNoBu = prometheus.NewDesc(Namespace+"_queue_enobufs_total", "Times the kernel reported the queue socket's buffer overflowed.", []string{"queue"}, nil)
	c.qVErr = prometheus.NewDesc(Namespace+"_queue_verdict_errors_total", "Verdicts that could not be delivered.", []string{"queue"}, nil)
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{c.mode, c.pend, c.qRecv, c.qDrop, c.qNoBu, c.qVErr} {
		ch <- d
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
		ch <- prometheus.MustNewConstMetric(c.mode, prometheus.GaugeValue, 1, s.Service, s.Mode)
		ch <- prometheus.MustNewConstMetric(c.pend, prometheus.GaugeValue, float64(s.Pending), s.Service)
	}
	for _, q := range c.src.QueueCounters() {
		id := fmt.Sprint(q.Queue)
		ch <- prometheus.MustNewConstMetric(c.qRecv, prometheus.CounterValue, float64(q.Received), id)
		ch <- prometheus.MustNewConstMetric(c.qDrop, prometheus.CounterValue, float64(q.KernelDrops), id)
		ch <- prometheus.MustNewConstMetric(c.qNoBu, prometheus.CounterValue, float64(q.ENOBUFS), id)
		ch <- prometheus.MustNewConstMetric(c.qVErr, prometheus.CounterValue, float64(q.VerdictError), id)
	}
}

// Handler returns the HTTP handler serving /metrics for the collector.
func Handler(c *Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
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
