package telemetry

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
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
	// Why validated flows fail to be handed off: the backend reset the
	// replayed SYN, never answered it, conntrack refused the entry, or
	// the pending table was full.
	BackendReset   float64 `json:"backend_reset"`
	BackendTimeout float64 `json:"backend_timeout"`
	HandoffFailed  float64 `json:"handoff_failed"`
	PendingFull    float64 `json:"pending_full"`
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
	Backend BackendView       `json:"backend"`
	// Attack is the attack in progress; null when there is none.
	Attack *AttackView `json:"attack"`
	// Attacks are the attacks that ended, newest first, at most
	// AttackHistory.
	Attacks []AttackView `json:"attacks"`
}

// AttackHistory is how many ended attacks per service /api/stats lists.
const AttackHistory = 20

// BackendView is a service's backend as the dashboard shows it.
type BackendView struct {
	// Up is null while there is no verdict yet.
	Up     *bool      `json:"up"`
	Reason string     `json:"reason"`
	Since  *time.Time `json:"since"`
	// The options announced to clients; Options says how they were had:
	// learned, default or fixed.
	MSS         uint16 `json:"mss"`
	WindowScale int    `json:"wscale"`
	SACK        bool   `json:"sack"`
	Options     string `json:"options"`
}

// AttackView is an attack, in progress or ended.
type AttackView struct {
	Started time.Time `json:"started"`
	// Ended is null while the attack lasts; DurationSeconds is its length
	// so far.
	Ended           *time.Time `json:"ended"`
	DurationSeconds float64    `json:"duration_s"`
	Reason          string     `json:"reason"`
	PeakSYNRate     float64    `json:"peak_syn_rate"`
	SYNs            uint64     `json:"syns"`
	HandedOff       uint64     `json:"handed_off"`
	Completion      float64    `json:"completion_ratio"`
	// TopSources are the heaviest source prefixes, heaviest first; Spread
	// is the share of SYNs from prefixes seen once, and Hint what it
	// suggests (empty without sources).
	TopSources []SourceCount `json:"top_sources"`
	Spread     float64       `json:"spread"`
	TopShare   float64       `json:"top_share"`
	Hint       string        `json:"hint"`
}

// SpoofedSpread is the spread at and above which an attack's sources
// look spoofed: most of its SYNs come from prefixes seen once, so no
// prefix is worth blocking.
const SpoofedSpread = 0.5

// ConcentratedShare is the share of SYNs from the top prefixes at and
// above which an attack counts as coming from a few networks.
const ConcentratedShare = 0.5

// The hints an attack's sources give.
const (
	HintSpoofed      = "spread high: likely spoofed"
	HintConcentrated = "concentrated: block upstream"
	HintMany         = "many networks: blocking prefixes will not help"
)

// SpreadHint says what an attack's spread and top share suggest.
func SpreadHint(spread, topShare float64) string {
	switch {
	case spread >= SpoofedSpread:
		return HintSpoofed
	case topShare >= ConcentratedShare:
		return HintConcentrated
	}
	return HintMany
}

func backendView(b Backend) BackendView {
	v := BackendView{Reason: b.Reason, MSS: b.MSS, WindowScale: b.WindowScale, SACK: b.SACK, Options: b.Options}
	if up, known := b.state(); known {
		v.Up = &up
	}
	if !b.Since.IsZero() {
		since := b.Since
		v.Since = &since
	}
	return v
}

// attackView shows a, as of now for one in progress.
func attackView(a Attack, now time.Time) AttackView {
	v := AttackView{
		Started: a.Started, Reason: a.Reason, PeakSYNRate: a.PeakSYNRate, SYNs: a.SYNs,
		HandedOff: a.HandedOff, Completion: a.Completion, Spread: a.Spread, TopShare: a.TopShare,
		// A copy: the view outlives the source's call.
		TopSources: append([]SourceCount{}, a.TopSources...),
	}
	end := now
	if !a.Ended.IsZero() {
		ended := a.Ended
		v.Ended, end = &ended, ended
	}
	if end.After(a.Started) {
		v.DurationSeconds = end.Sub(a.Started).Seconds()
	}
	if len(v.TopSources) > 0 {
		v.Hint = SpreadHint(a.Spread, a.TopShare)
	}
	return v
}

// XDPView is one action of the XDP fast path.
type XDPView struct {
	Action  string  `json:"action"`
	Packets uint64  `json:"packets"`
	Rate    float64 `json:"rate"`
}

// QueueView is one NFQUEUE as the dashboard shows it.
type QueueView struct {
	Queue        uint16  `json:"queue"`
	Kind         string  `json:"kind"` // QueueSYN or QueueCompletion
	Received     uint64  `json:"received"`
	ReceivedRate float64 `json:"received_rate"`
	KernelDrops  uint64  `json:"kernel_drops"`
	ENOBUFS      uint64  `json:"enobufs"`
}

// StatsView is the document /api/stats serves.
type StatsView struct {
	Time          time.Time     `json:"time"`
	UptimeSeconds float64       `json:"uptime_seconds"`
	SampleSeconds float64       `json:"sample_seconds"`
	Services      []ServiceView `json:"services"`
	Queues        []QueueView   `json:"queues"`
	// XDP is the fast path's packets by action, sorted by action; null
	// when it does not run.
	XDP           []XDPView         `json:"xdp"`
	LogSuppressed map[string]uint64 `json:"log_suppressed"`
	// Events are the latest log lines, newest first, at most
	// RecentEvents, stats lines left out (LineLimiter.Recent).
	Events []json.RawMessage `json:"events"`
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
	xdp       map[string]uint64 // nil without the fast path
}

// live keeps the dashboard's recent history.
type live struct {
	mu      sync.Mutex
	started time.Time
	last    *sample
	views   []ServiceView // by service index, History included
	queues  []QueueView
	xdp     []XDPView
}

// read takes a sample from the source.
func (t *Telemetry) read() *sample {
	s := &sample{at: t.now(), services: t.src.ServiceCounters(), queues: t.src.QueueCounters()}
	for _, sc := range s.services {
		h, _ := t.handshake.Snapshot(sc.Index)
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
	if xs, ok := t.src.(XDPSource); ok {
		cur.xdp = xs.XDPActions()
	}
	var ended map[string][]Attack
	if as, ok := t.src.(AttackSource); ok {
		ended = as.Attacks(AttackHistory)
	}
	prev := l.last
	l.last = cur
	views := make([]ServiceView, len(cur.services))
	// A reload may add, remove and reorder services: match by name.
	lastView := make(map[string]int, len(l.views))
	for i, v := range l.views {
		lastView[v.Service] = i
	}
	prevAt := make(map[string]int)
	if prev != nil {
		for i, p := range prev.services {
			prevAt[p.Service] = i
		}
	}
	for i, sc := range cur.services {
		v := ServiceView{
			Service: sc.Service, Mode: sc.Mode, HalfOpen: sc.HalfOpen, Pending: sc.Pending, Totals: sc.Counters,
			Backend: backendView(sc.Backend), Attacks: []AttackView{},
		}
		if sc.Attack != nil {
			a := attackView(*sc.Attack, cur.at)
			v.Attack = &a
		}
		for j, a := range ended[sc.Service] {
			if j == AttackHistory {
				break
			}
			v.Attacks = append(v.Attacks, attackView(a, cur.at))
		}
		if j, ok := lastView[sc.Service]; ok {
			v.History = l.views[j].History
			v.HandshakeMS = l.views[j].HandshakeMS
		}
		if j, ok := prevAt[sc.Service]; ok {
			dt := cur.at.Sub(prev.at).Seconds()
			v.Rates = ratesBetween(prev.services[j].Counters, sc.Counters, dt)
			if m, ok := cur.handshake[i].Mean(prev.handshake[j]); ok {
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
		qv := QueueView{Queue: q.Queue, Kind: q.Kind, Received: q.Received, KernelDrops: q.KernelDrops, ENOBUFS: q.ENOBUFS}
		if prev != nil && i < len(prev.queues) && prev.queues[i].Queue == q.Queue {
			qv.ReceivedRate = rate(prev.queues[i].Received, q.Received, cur.at.Sub(prev.at).Seconds())
		}
		l.queues = append(l.queues, qv)
	}
	l.xdp = nil
	for _, action := range slices.Sorted(maps.Keys(cur.xdp)) {
		xv := XDPView{Action: action, Packets: cur.xdp[action]}
		if prev != nil && prev.xdp != nil {
			xv.Rate = rate(prev.xdp[action], xv.Packets, cur.at.Sub(prev.at).Seconds())
		}
		l.xdp = append(l.xdp, xv)
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

		BackendReset:   r(CounterBackendReset),
		BackendTimeout: r(CounterBackendTimeout),
		HandoffFailed:  r(CounterHandoffFailed),
		PendingFull:    r(CounterPendingFull),
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
		XDP:           l.xdp, // rebuilt, never changed, at each sample
		LogSuppressed: map[string]uint64{},
		Events:        []json.RawMessage{},
	}
	v.HandoffEntries = entries
	for i, s := range l.views {
		s.History = s.History.clone()
		v.Services[i] = s
	}
	if t.limiter != nil {
		v.LogSuppressed = t.limiter.Suppressed()
		v.Events = t.limiter.Recent()
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
