package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/backendinfo"
	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/rawsock"
	"github.com/synguard/synguard/telemetry"
)

// Config is a validated gateway configuration, built from flags.
type Config struct {
	Services []netip.AddrPort
	Mode     engine.Mode
	Queue    uint16
	Queues   uint16
	Local    bool
	FailOpen bool
	KeyFile  string
	// MetricsAddr is HOST:PORT for /metrics, /api/stats and the dashboard
	// at /; empty disables them.
	MetricsAddr string
	// StatsInterval is how often a stats event per service is logged; 0
	// means telemetry.DefaultStatsInterval.
	StatsInterval time.Duration
	// LogLimiter is the rate limit Logger's lines pass through, for
	// synguard_log_suppressed_total; nil leaves that metric out.
	LogLimiter *telemetry.LineLimiter
	// Thresholds drive auto mode; zero means engine.DefaultThresholds.
	Thresholds engine.Thresholds
	// Backend overrides learned backend options when non-nil.
	Backend    *engine.BackendOptions
	MaxPending int
	// ProbeInterval is how often backends are probed for their options.
	ProbeInterval time.Duration

	EngineMark, HandoffMark uint32
	// StaleMark tags segments of closing handed-off flows; ReopenWithin
	// is how close to expiry (seconds) an entry counts as closing. Zero
	// means DefaultStaleMark and DefaultReopenWithin; at start the latter
	// is replaced by the namespace's TIME_WAIT timeout.
	StaleMark    uint32
	ReopenWithin uint32
	// ReplyPath says how the engine's replies to a queued packet leave:
	// back out the interface it came in on (the default) or routed.
	ReplyPath ReplyPath
	Logger    zerolog.Logger
}

// ReplyPath is how replies to queued packets (SYN-ACKs, above all) leave
// the host.
type ReplyPath uint8

// Reply paths.
const (
	// ReplyIngress sends a reply back out the interface its packet came
	// in on, to the neighbour that sent it, through a packet socket: no
	// route lookup and no netfilter output hooks (see package rawsock).
	// Replies to packets with no such link (sent by this host, or from
	// a tunnel) are routed.
	ReplyIngress ReplyPath = iota
	// ReplyRoute routes every reply and passes it through the output
	// hooks, as the kernel's SYNPROXY does: for asymmetric routing, or
	// OUTPUT rules that must see SYN-ACKs.
	ReplyRoute
)

func (p ReplyPath) String() string {
	if p == ReplyRoute {
		return "route"
	}
	return "ingress"
}

// ParseReplyPath reads --reply-path.
func ParseReplyPath(s string) (ReplyPath, error) {
	switch s {
	case "ingress":
		return ReplyIngress, nil
	case "route":
		return ReplyRoute, nil
	}
	return 0, fmt.Errorf("unknown reply path %q: want ingress or route", s)
}

// DefaultProbeInterval re-learns backend options often enough to follow
// a sysctl change on the backend, rarely enough to be invisible.
const DefaultProbeInterval = time.Minute

// probeTimeout bounds one probe connection.
const probeTimeout = 2 * time.Second

// FirewallConfig returns the firewall configuration for c.
func (c *Config) FirewallConfig() firewall.Config {
	return firewall.Config{
		Services:    c.Services,
		Queue:       c.Queue,
		Queues:      c.Queues,
		Local:       c.Local,
		FailOpen:    c.FailOpen,
		EngineMark:  c.EngineMark,
		HandoffMark: c.HandoffMark,
		// Only a mode that lets SYNs through needs to see first ACKs.
		ObserveFirstACK: c.Mode != engine.ModeAlways,
		StaleMark:       cmp.Or(c.StaleMark, firewall.DefaultStaleMark),
		ReopenWithin:    cmp.Or(c.ReopenWithin, DefaultReopenWithin),
	}
}

// DefaultReopenWithin is the kernel's default TIME_WAIT timeout in
// conntrack (nf_conntrack_tcp_timeout_time_wait), in seconds.
const DefaultReopenWithin = 120

// timeWaitTimeout reads the namespace's conntrack TIME_WAIT timeout: an
// entry with at most this long to live may belong to a closed flow whose
// ports a client reuses.
func timeWaitTimeout() (uint32, error) {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait")
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	return uint32(v), err
}

func (c *Config) setDefaults() {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.EngineMark == 0 {
		c.EngineMark = firewall.DefaultEngineMark
	}
	if c.HandoffMark == 0 {
		c.HandoffMark = firewall.DefaultHandoffMark
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.Mode == 0 {
		c.Mode = engine.ModeAuto
	}
}

// Run protects the configured services until ctx is done, then removes
// every rule it installed.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg.setDefaults()
	log := cfg.Logger
	if err := cfg.FirewallConfig().Validate(); err != nil {
		return err
	}

	jar, err := cookies.New(cookies.Config{KeyFile: cfg.KeyFile})
	if err != nil {
		return fmt.Errorf("cookie keys: %w", err)
	}
	sender, err := rawsock.Open(cfg.EngineMark)
	if err != nil {
		return err
	}
	defer sender.Close()
	table, err := conntrack.Open()
	if err != nil {
		return fmt.Errorf("open conntrack: %w", err)
	}
	defer table.Close()
	// Opening the table loaded conntrack for the namespace, so its
	// TIME_WAIT timeout can be read now.
	if cfg.ReopenWithin == 0 {
		if v, err := timeWaitTimeout(); err == nil && v > 0 {
			cfg.ReopenWithin = v
		}
	}

	handshake := telemetry.NewHistograms(len(cfg.Services))
	eng, err := engine.New(engine.Config{
		Services:        cfg.Services,
		Mode:            cfg.Mode,
		Cookies:         jar,
		Send:            batchSender{sender},
		Handoff:         table,
		HandoffMark:     cfg.HandoffMark,
		BackendOverride: cfg.Backend,
		MaxPending:      cfg.MaxPending,
		Thresholds:      cfg.Thresholds,
		Logger:          log,

		HandshakeLatency: handshake.Observe,
	})
	if err != nil {
		return err
	}

	queues := make([]*nfq.Queue, 0, cfg.Queues)
	defer func() {
		for _, q := range queues {
			q.Close()
		}
	}()
	for i := range cfg.Queues {
		q, err := nfq.Open(nfq.Config{Queue: cfg.Queue + i, FailOpen: cfg.FailOpen, Logger: log.With().Str(telemetry.FieldEvent, telemetry.EventQueue).Logger()})
		if err != nil {
			return fmt.Errorf("open queue %d: %w", cfg.Queue+i, err)
		}
		queues = append(queues, q)
	}

	names := make([]string, 0)
	for _, c := range engine.Counters() {
		names = append(names, c.String())
	}
	tel := telemetry.New(telemetry.Config{
		Source: &source{eng: eng, queues: queues, first: cfg.Queue, mode: cfg.Mode.String()},
		Collector: telemetry.CollectorConfig{
			Counters:  names,
			Modes:     []string{engine.StateCookie.String(), engine.StatePassthrough.String(), engine.ModeOff.String()},
			Handshake: handshake,
			Log:       cfg.LogLimiter,
		},
		Logger:        log,
		StatsInterval: cfg.StatsInterval,
	})
	var metrics *http.Server
	if cfg.MetricsAddr != "" {
		ln, err := telemetry.Listen(cfg.MetricsAddr)
		if err != nil {
			return err
		}
		metrics = telemetry.NewServer(tel.Handler())
		go func() {
			if err := metrics.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error().Err(err).Str("event", telemetry.EventMetricsFailed).Msg("metrics server stopped")
			}
		}()
		defer metrics.Close()
	}

	fwCfg := cfg.FirewallConfig()
	rules, err := firewall.Install(ctx, fwCfg)
	if err != nil {
		return fmt.Errorf("install rules: %w", err)
	}
	services := make([]string, len(cfg.Services))
	for i, s := range cfg.Services {
		services[i] = s.String()
	}
	log.Info().Str("event", telemetry.EventRulesInstalled).Strs("services", services).
		Uint16("queue", cfg.Queue).Uint16("queues", cfg.Queues).Bool("local", cfg.Local).
		Bool("fail_open", cfg.FailOpen).Msg("firewall rules installed")
	defer func() {
		// ctx is done by now; removal gets its own bounded time.
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if rerr := rules.Remove(rctx); rerr != nil {
			log.Error().Err(rerr).Str("event", telemetry.EventRulesRemoveFailed).Msg("could not remove firewall rules")
			err = errors.Join(err, rerr)
			return
		}
		log.Info().Str("event", telemetry.EventRulesRemoved).Msg("firewall rules removed")
	}()

	probeMark := uint32(0)
	if cfg.Local {
		// A probe to a service on this host loops back through our own
		// SYN rule; the engine's mark lets it pass untouched.
		probeMark = cfg.EngineMark
	}
	learner := &learner{eng: eng, log: log, mark: probeMark, down: make([]bool, len(cfg.Services))}
	if cfg.Backend == nil {
		learner.probeAll(ctx)
	}

	// Without a packet socket every reply is routed; say which way they go.
	viaIngress := cfg.ReplyPath == ReplyIngress && sender.CanReplyOnLink()
	replyPath := ReplyRoute
	if viaIngress {
		replyPath = ReplyIngress
	}
	log.Info().Str("event", telemetry.EventStart).Str("mode", cfg.Mode.String()).Strs("services", services).
		Str("metrics", cfg.MetricsAddr).Str("reply_path", replyPath.String()).Msg("synguard protecting services")

	var wg sync.WaitGroup
	errs := make(chan error, len(queues)+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- eng.Run(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		tel.Run(ctx)
	}()
	for _, q := range queues {
		h := queueHandler{staleMark: fwCfg.StaleMark}
		if viaIngress {
			h.replies = &replyBatch{Batch: sender.NewBatch()}
			h.w = eng.NewWorkerWithBatch(h.replies)
		} else {
			h.w = eng.NewWorker()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- q.RunBatch(ctx, h)
		}()
	}
	if cfg.Backend == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			learner.loop(ctx, cfg.ProbeInterval)
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
		// A queue or the engine stopped on its own: that is fatal, and
		// the deferred removal takes the rules down.
		if runErr == nil {
			runErr = errors.New("a worker stopped unexpectedly")
		}
	}
	// Workers stop on ctx; when one failed first, stop the rest by
	// closing the queues (the deferred Close) after the rules are gone.
	if runErr != nil {
		log.Error().Err(runErr).Str("event", telemetry.EventWorkerFailed).Msg("stopping")
		return runErr
	}
	wg.Wait()
	log.Info().Str("event", telemetry.EventStop).Msg("synguard stopping")
	return nil
}

// batchSender gives each engine worker a rawsock batch, so that the
// replies to one receive batch leave in one sendmmsg.
type batchSender struct{ *rawsock.Sender }

func (s batchSender) NewBatch() engine.Batch { return s.Sender.NewBatch() }

// queueHandler feeds one queue's packets to its worker a receive batch at
// a time: verdicts per packet, the worker's replies flushed per batch.
type queueHandler struct {
	w         *engine.Worker
	staleMark uint32
	replies   *replyBatch // w's batch with ReplyIngress; nil otherwise
}

func (h queueHandler) Handle(p *nfq.Packet) nfq.Verdict {
	if h.replies != nil {
		h.replies.arrived(p)
	}
	hook := engine.Hook(p.Hook)
	if p.Mark == h.staleMark {
		hook = engine.HookStaleEntry
	}
	if h.w.HandleBatched(p.Payload, hook) == engine.Accept {
		return nfq.Accept
	}
	return nfq.Drop
}

func (h queueHandler) Flush() { h.w.Flush() }

// replyBatch is a worker's Batch that sends each reply to the packet in
// hand back out the link that packet came in on, and everything else (a
// replayed SYN to the backend, say) through the routing table.
type replyBatch struct {
	*rawsock.Batch
	from netip.Addr   // source address of the packet in hand
	link rawsock.Link // the link it came in on; invalid when unknown
}

// arrived records where p came from, before the worker handles it.
func (r *replyBatch) arrived(p *nfq.Packet) {
	r.from, r.link = netip.Addr{}, rawsock.Link{}
	link, ok := rawsock.LinkFrom(p.InIndex, p.HwAddr)
	if !ok {
		return
	}
	if src, ok := sourceAddr(p.Payload); ok {
		r.from, r.link = src, link
	}
}

// Add sends b on the ingress link when it goes back to the packet's
// sender.
func (r *replyBatch) Add(b []byte, dst netip.Addr) bool {
	if r.link.IsValid() && dst == r.from {
		return r.Batch.AddVia(b, dst, r.link)
	}
	return r.Batch.Add(b, dst)
}

// sourceAddr reads the source address of the IP packet p.
func sourceAddr(p []byte) (netip.Addr, bool) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(p[12:16])), true
	case len(p) >= 40 && p[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(p[8:24])), true
	}
	return netip.Addr{}, false
}

// learner keeps the engine's backend options current.
type learner struct {
	eng  *engine.Engine
	log  zerolog.Logger
	mark uint32
	down []bool // per service: last probe failed (log changes only)
}

func (l *learner) probeAll(ctx context.Context) {
	for i, svc := range l.eng.Services() {
		o, err := backendinfo.Probe(ctx, svc, l.mark, probeTimeout)
		if err != nil {
			if !l.down[i] {
				l.log.Warn().Err(err).Str("event", telemetry.EventBackendUnreachable).Str("service", svc.String()).
					Msg("backend probe failed; announcing last known or default options")
			}
			l.down[i] = true
			continue
		}
		l.down[i] = false
		l.eng.LearnBackend(i, engine.BackendOptions{
			MSS:           o.MSS,
			WindowScale:   cookies.WindowScale(o.WindowScale),
			SACKPermitted: o.SACKPermitted,
		}, "probe")
	}
}

func (l *learner) loop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.probeAll(ctx)
		}
	}
}

// source feeds the metrics collector.
type source struct {
	eng    *engine.Engine
	queues []*nfq.Queue
	first  uint16 // number of queues[0]; the rest follow in order
	mode   string
}

func (s *source) ServiceCounters() []telemetry.ServiceCounters {
	svcs := s.eng.Services()
	out := make([]telemetry.ServiceCounters, len(svcs))
	for i, svc := range svcs {
		st := s.eng.Stats(i)
		m := make(map[string]uint64, len(st))
		for _, c := range engine.Counters() {
			m[c.String()] = st.Get(c)
		}
		out[i] = telemetry.ServiceCounters{Service: svc.String(), Mode: s.serviceMode(i), Counters: m, HalfOpen: s.eng.HalfOpen(i), Pending: s.eng.Pending()}
	}
	return out
}

// serviceMode is the synguard_mode label of service i: what it does with
// SYNs now (cookie or passthrough), or off when synguard only observes.
func (s *source) serviceMode(i int) string {
	if s.eng.Mode() == engine.ModeOff {
		return engine.ModeOff.String()
	}
	return s.eng.ServiceState(i).String()
}

func (s *source) QueueCounters() []telemetry.QueueCounters {
	kernel, _ := nfq.KernelStats()
	out := make([]telemetry.QueueCounters, len(s.queues))
	for i, q := range s.queues {
		st := q.Stats()
		qc := telemetry.QueueCounters{Queue: s.first + uint16(i), Received: st.Received, Batches: st.Batches, ENOBUFS: st.ENOBUFS, VerdictError: st.VerdictErrors}
		for _, k := range kernel {
			if k.Queue == qc.Queue {
				qc.KernelDrops = k.QueueDropped + k.UserDropped
			}
		}
		out[i] = qc
	}
	return out
}
