package telemetry

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// SamplePeriod is how often the dashboard's figures are sampled: the
// rates it shows are over this period, and its charts get one point per
// period.
const SamplePeriod = time.Second

// historyLen is how many samples the dashboard's charts show: two minutes.
const historyLen = 120

// Rates are per-second rates of a service's key counters over one period.
type Rates struct {
	SYN           float64 `json:"syn"`
	SYNACK        float64 `json:"synack"`
	CookieValid   float64 `json:"cookie_valid"`
	CookieInvalid float64 `json:"cookie_invalid"`
	HandedOff     float64 `json:"handed_off"`
	// XDPSYNACK is the part of SYNACK the XDP fast path sent.
	XDPSYNACK float64 `json:"xdp_synack"`
}

// History is a service's recent samples, oldest first, one column per
// figure; Time is in Unix milliseconds.
type History struct {
	Time          []int64   `json:"t"`
	SYN           []float64 `json:"syn"`
	SYNACK        []float64 `json:"synack"`
	CookieValid   []float64 `json:"cookie_valid"`
	CookieInvalid []float64 `json:"cookie_invalid"`
	HandedOff     []float64 `json:"handed_off"`
	HalfOpen      []int     `json:"half_open"`
}

func (h *History) push(t time.Time, r Rates, halfOpen int) {
	h.Time = keep(append(h.Time, t.UnixMilli()))
	h.SYN = keep(append(h.SYN, r.SYN))
	h.SYNACK = keep(append(h.SYNACK, r.SYNACK))
	h.CookieValid = keep(append(h.CookieValid, r.CookieValid))
	h.CookieInvalid = keep(append(h.CookieInvalid, r.CookieInvalid))
	h.HandedOff = keep(append(h.HandedOff, r.HandedOff))
	h.HalfOpen = keep(append(h.HalfOpen, halfOpen))
}

// keep drops the oldest entries past historyLen, reusing the array.
func keep[T any](s []T) []T {
	if n := len(s) - historyLen; n > 0 {
		s = s[:copy(s, s[n:])]
	}
	return s
}

func (h *History) clone() History {
	return History{
		Time: append([]int64{}, h.Time...), SYN: append([]float64{}, h.SYN...),
		SYNACK: append([]float64{}, h.SYNACK...), CookieValid: append([]float64{}, h.CookieValid...),
		CookieInvalid: append([]float64{}, h.CookieInvalid...), HandedOff: append([]float64{}, h.HandedOff...),
		HalfOpen: append([]int{}, h.HalfOpen...),
	}
}

// ServiceView is one service as the dashboard shows it.
type ServiceView struct {
	Service  string `json:"service"`
	Mode     string `json:"mode"`
	HalfOpen int    `json:"half_open"`
	Pending  int    `json:"pending"`
	// Rates are over the last sample period.
	Rates Rates `json:"rates"`
	// HandshakeMS is the mean backend handshake time, in milliseconds, of
	// the flows handed off in the latest period that had any; null before
	// the first hand-off.
	HandshakeMS *float64 `json:"handshake_ms"`
	// Totals are every engine counter since start.
	Totals  map[string]uint64 `json:"totals"`
	History History           `json:"history"`
}

// QueueView is one NFQUEUE as the dashboard shows it.
type QueueView struct {
	Queue        uint16  `json:"queue"`
	Received     uint64  `json:"received"`
	ReceivedRate float64 `json:"received_rate"`
	KernelDrops  uint64  `json:"kernel_drops"`
	ENOBUFS      uint64  `json:"enobufs"`
}

// StatsView is the document /api/stats serves.
type StatsView struct {
	Time          time.Time         `json:"time"`
	UptimeSeconds float64           `json:"uptime_seconds"`
	SampleSeconds float64           `json:"sample_seconds"`
	Services      []ServiceView     `json:"services"`
	Queues        []QueueView       `json:"queues"`
	LogSuppressed map[string]uint64 `json:"log_suppressed"`
	// HandoffEntries is the kernel's count of conntrack entries with the
	// hand-off mark, read for this request; absent when unknown.
	HandoffEntries *int `json:"handoff_entries,omitempty"`
}

// sample is everything read from the source at one moment.
type sample struct {
	at        time.Time
	services  []ServiceCounters
	queues    []QueueCounters
	handshake []HistogramSnapshot
}

// live keeps the dashboard's recent history.
type live struct {
	mu      sync.Mutex
	started time.Time
	last    *sample
	views   []ServiceView // by service index, History included
	queues  []QueueView
}

// read takes a sample from the source.
func (t *Telemetry) read() *sample {
	s := &sample{at: t.now(), services: t.src.ServiceCounters(), queues: t.src.QueueCounters()}
	for i := range s.services {
		h, _ := t.handshake.Snapshot(i)
		s.handshake = append(s.handshake, h)
	}
	return s
}

// sampleLive reads the source and appends a point to the dashboard's
// history. The first sample only sets the baseline for rates.
func (t *Telemetry) sampleLive() {
	l := &t.live
	l.mu.Lock()
	defer l.mu.Unlock()
	// Read under the lock, so samples are appended in the order taken.
	cur := t.read()
	prev := l.last
	l.last = cur
	views := make([]ServiceView, len(cur.services))
	for i, sc := range cur.services {
		v := ServiceView{Service: sc.Service, Mode: sc.Mode, HalfOpen: sc.HalfOpen, Pending: sc.Pending, Totals: sc.Counters}
		if i < len(l.views) && l.views[i].Service == sc.Service {
			v.History = l.views[i].History
			v.HandshakeMS = l.views[i].HandshakeMS
		}
		if prev != nil && i < len(prev.services) && prev.services[i].Service == sc.Service {
			dt := cur.at.Sub(prev.at).Seconds()
			v.Rates = ratesBetween(prev.services[i].Counters, sc.Counters, dt)
			if m, ok := cur.handshake[i].Mean(prev.handshake[i]); ok {
				ms := float64(m) / float64(time.Millisecond)
				v.HandshakeMS = &ms
			}
			v.History.push(cur.at, v.Rates, sc.HalfOpen)
		}
		views[i] = v
	}
	l.views = views
	l.queues = l.queues[:0]
	for i, q := range cur.queues {
		qv := QueueView{Queue: q.Queue, Received: q.Received, KernelDrops: q.KernelDrops, ENOBUFS: q.ENOBUFS}
		if prev != nil && i < len(prev.queues) && prev.queues[i].Queue == q.Queue {
			qv.ReceivedRate = rate(prev.queues[i].Received, q.Received, cur.at.Sub(prev.at).Seconds())
		}
		l.queues = append(l.queues, qv)
	}
}

// ratesBetween computes the key rates between two readings dt seconds
// apart.
func ratesBetween(prev, cur map[string]uint64, dt float64) Rates {
	r := func(name string) float64 { return rate(prev[name], cur[name], dt) }
	return Rates{
		SYN:           r(CounterSYNReceived),
		SYNACK:        r(CounterSYNACKSent),
		CookieValid:   r(CounterCookieValid),
		CookieInvalid: r(CounterCookieInvalid),
		HandedOff:     r(CounterHandedOff),
		XDPSYNACK:     r(CounterXDPSYNACKSent),
	}
}

// rate is a counter's growth per second; a counter that went backwards
// (it cannot, but a restarted source could) counts as no growth.
func rate(prev, cur uint64, dt float64) float64 {
	if dt <= 0 || cur < prev {
		return 0
	}
	return float64(cur-prev) / dt
}

// Stats returns the dashboard's current document. Before the first
// sample it takes one, so the page never starts empty.
func (t *Telemetry) Stats() StatsView {
	t.live.mu.Lock()
	empty := t.live.last == nil
	t.live.mu.Unlock()
	if empty {
		t.sampleLive()
	}
	// Counted outside the lock: a dump of a large table takes a while.
	var entries *int
	if n, ok := handoffEntries(t.src); ok {
		entries = &n
	}
	l := &t.live
	l.mu.Lock()
	defer l.mu.Unlock()
	v := StatsView{
		Time:          l.last.at,
		UptimeSeconds: l.last.at.Sub(l.started).Seconds(),
		SampleSeconds: SamplePeriod.Seconds(),
		Services:      make([]ServiceView, len(l.views)),
		Queues:        append([]QueueView{}, l.queues...),
		LogSuppressed: map[string]uint64{},
	}
	v.HandoffEntries = entries
	for i, s := range l.views {
		s.History = s.History.clone()
		v.Services[i] = s
	}
	if t.limiter != nil {
		v.LogSuppressed = t.limiter.Suppressed()
	}
	return v
}

func (t *Telemetry) serveStats(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(t.Stats()); err != nil {
		// The client went away; nothing to tell it.
		return
	}
}
