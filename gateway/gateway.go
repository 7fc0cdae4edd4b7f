package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/synguard/synguard/capture"
	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/rawsock"
	"github.com/synguard/synguard/telemetry"
)

// Run protects the configured services until ctx is done or one of its
// parts fails, then removes every rule it installed. It returns only once
// every goroutine it started has stopped: open, install, serve.
func Run(ctx context.Context, cfg Config) error {
	return run(ctx, cfg, nil)
}

// run is Run with a hook for tests: beforeServe, when set, sees the
// gateway once it is open and installed, before it serves.
func run(ctx context.Context, cfg Config, beforeServe func(*gateway)) error {
	g, err := open(cfg)
	if err != nil {
		return err
	}
	defer g.close()
	rules, err := g.install(ctx)
	if err != nil {
		return err
	}
	if beforeServe != nil {
		beforeServe(g)
	}
	return g.serve(ctx, rules)
}

// gateway is a running synguard's parts.
type gateway struct {
	cfg        Config
	sender     *rawsock.Sender
	table      *conntrack.Table
	entries    *conntrack.Counter     // counts the hand-off mark's entries for the metrics
	queueStats *nfq.KernelStatsReader // the kernel's queue table, for the metrics
	eng        *engine.Engine
	queues     []*nfq.Queue
	tel        *telemetry.Telemetry
	metrics    net.Listener // nil without --metrics
	replyPath  ReplyPath    // in effect: ingress needs a packet socket
	jar        *cookies.Jar
	fast       *fastPath // nil without XDP
	lock       *instanceLock
	attacks    *attackHistory
	health     *health
	captures   *captures
	rules      *firewall.Installed // set by install
	learner    *learner            // set by install
	watch      *rulesWatch         // keeps the rules in place once installed
	notify     *notifier           // tells systemd how the gateway is doing (notify.go)

	lastBeat time.Time // of heartbeat

	// parts run concurrently while the gateway serves; install adds the
	// backend learner. The first to fail stops them all.
	parts []part
}

// heartbeat is the gateway's once-a-second work: the dashboard's sample
// and the backends' health. It runs after the engine's control steps,
// which come at least once a second (engine.QuietControlTick), so that an
// idle gateway wakes once a second for all of it: on a quiet machine each
// wake-up costs more than the work it does.
func (g *gateway) heartbeat(now time.Time) {
	if now.Sub(g.lastBeat) < telemetry.SamplePeriod-beatSlack {
		return
	}
	g.lastBeat = now
	g.tel.Sample()
	g.health.judge(g.eng, now)
	if g.learner != nil && g.health.anyDown() {
		g.learner.judgedDown()
	}
}

// beatSlack lets a control step that comes a little early still beat: the
// engine's quiet period is exactly telemetry.SamplePeriod.
const beatSlack = 50 * time.Millisecond

// part is one of the gateway's goroutines. run returns when ctx is done;
// returning before that is a failure, with or without an error.
type part struct {
	name string
	run  func(ctx context.Context) error
}

// open makes every part that needs no rules: keys, sockets, the conntrack
// table, the engine, the queues (bound before any rule feeds them) and
// the metrics listener. On error what was opened is closed again.
func open(cfg Config) (_ *gateway, err error) {
	cfg.setDefaults()
	if err := cfg.FirewallConfig().Validate(); err != nil {
		return nil, err
	}
	jar, err := cookies.New(cookies.Config{KeyFile: cfg.KeyFile})
	if err != nil {
		return nil, fmt.Errorf("cookie keys: %w", err)
	}
	g := &gateway{cfg: cfg, jar: jar, notify: newNotifier(cfg.Logger)}
	defer func() {
		// g, not the result: a failed open returns nil.
		if err != nil {
			g.close()
		}
	}()
	// One synguard per network namespace, before anything changes.
	if g.lock, err = lockInstance(cfg.LockDir); err != nil {
		return nil, err
	}
	if g.sender, err = rawsock.Open(cfg.EngineMark); err != nil {
		return nil, err
	}
	if g.table, err = conntrack.Open(); err != nil {
		return nil, err
	}
	if g.entries, err = conntrack.OpenCounter(); err != nil {
		return nil, err
	}
	// Opening the table loaded conntrack for the namespace, so its
	// TIME_WAIT timeout can be read now.
	g.cfg.ResolveReopenWithin()
	g.replyPath = ReplyRoute
	if cfg.ReplyPath == ReplyIngress && g.sender.CanReplyOnLink() {
		g.replyPath = ReplyIngress
	}

	// The fast path goes on the links before the rules: it answers
	// nothing until the engine runs and renews it.
	if g.fast, err = openFastPath(cfg); err != nil {
		return nil, err
	}
	var extra engine.CounterSource
	var replays engine.Replayer
	if g.fast != nil {
		extra = g.fast
		if g.fast.replay {
			replays = replayer{g.fast.prog}
		}
	}

	g.watch = newRulesWatch(cfg.Logger)
	handshake := telemetry.NewHistograms(engine.MaxServices)
	stages := telemetry.NewHistograms(len(telemetry.HandshakeStages))
	g.attacks, g.health = newAttackHistory(), newHealth(cfg.Logger)
	var dir *capture.Dir
	if cfg.CaptureDir != "" {
		if dir, err = capture.OpenDir(cfg.CaptureDir, capture.DirConfig{}); err != nil {
			return nil, fmt.Errorf("capture directory: %w", err)
		}
	}
	g.captures = newCaptures(dir, cfg.Logger)
	g.eng, err = engine.New(engine.Config{
		Services:        cfg.Services,
		Mode:            cfg.Mode,
		Cookies:         jar,
		NewBatch:        func() engine.Batch { return g.sender.NewBatch() },
		Kernel:          g.table,
		Replayer:        replays,
		HandoffMark:     cfg.HandoffMark,
		BackendOverride: cfg.Backend,
		MaxPending:      cfg.MaxPending,
		EarlyData:       cfg.EarlyData,
		Thresholds:      cfg.Thresholds,
		Events:          events{log: cfg.Logger, handshake: handshake, stages: stages, attacks: g.attacks, captures: g.captures},
		Extra:           extra,
		AfterControl: func(now time.Time) {
			if g.fast != nil {
				g.fast.step(g.eng, g.jar, now)
			}
			g.heartbeat(now)
		},
	})
	if err != nil {
		return nil, err
	}
	g.captures.eng = g.eng

	// The SYN queues, then as many completion queues (docs/architecture.md,
	// Queues and fail-open): g.queueOf tells them apart.
	for i := range 2 * cfg.Queues {
		q, err := nfq.Open(nfq.Config{Queue: cfg.Queue + i, FailOpen: cfg.FailOpen, Logger: cfg.Logger.With().Str(telemetry.FieldEvent, telemetry.EventQueue).Logger()})
		if err != nil {
			return nil, err
		}
		g.queues = append(g.queues, q)
	}
	// Bound queues imply the kernel's table; telemetry reads it each second.
	if g.queueStats, err = nfq.OpenKernelStats(); err != nil {
		return nil, err
	}

	names := make([]string, 0)
	for _, c := range engine.Counters() {
		names = append(names, c.String())
	}
	if g.fast != nil {
		names = append(names, telemetry.CounterXDPSYNACKSent, telemetry.CounterXDPACKDropped,
			telemetry.CounterXDPHandshakeCompleted, telemetry.CounterXDPTranslated)
	}
	g.tel = telemetry.New(telemetry.Config{
		Source: &source{eng: g.eng, queues: g.queues, queueStats: g.queueStats, queueOf: g.queueOf, fast: g.fast, health: g.health, attacks: g.attacks, watch: g.watch,
			entries: g.entries, handoffMark: cfg.HandoffMark},
		Collector: telemetry.CollectorConfig{
			Counters:  names,
			Modes:     []string{engine.StateCookie.String(), engine.StatePassthrough.String(), engine.ModeOff.String()},
			Handshake: handshake,
			Stages:    stages,
			Log:       cfg.LogLimiter,
		},
		Logger:        cfg.Logger,
		CallerSamples: true, // g.heartbeat
		StatsInterval: cfg.StatsInterval,
	})
	if cfg.MetricsAddr != "" {
		if g.metrics, err = telemetry.Listen(cfg.MetricsAddr); err != nil {
			return nil, err
		}
	}
	g.parts = g.workers()
	return g, nil
}

// workers are the parts that move packets and report: the engine's
// timers and hand-offs, one worker per queue, telemetry and the metrics
// server.
func (g *gateway) workers() []part {
	parts := []part{
		{"engine", g.eng.Run},
		{"telemetry", func(ctx context.Context) error { g.tel.Run(ctx); return nil }},
	}
	staleMark := g.cfg.FirewallConfig().StaleMark
	for i, q := range g.queues {
		h := newQueueHandler(g.eng, q, g.sender, g.replyPath, staleMark)
		parts = append(parts, part{queueName(g.queueOf(i)), func(ctx context.Context) error {
			return q.RunBatch(ctx, h)
		}})
	}
	if g.metrics != nil {
		parts = append(parts, part{"metrics", g.serveMetrics})
	}
	if g.fast != nil {
		parts = append(parts, part{"xdp samples", func(ctx context.Context) error { return g.fast.runSamples(ctx, g.eng, g.captures) }})
		if g.fast.replay {
			parts = append(parts, part{"xdp handshakes", func(ctx context.Context) error { return g.fast.runHandshakes(ctx, g.eng) }})
		}
	}
	if g.cfg.Reload != nil && g.cfg.Load != nil {
		parts = append(parts, part{"reload", g.runReloads})
	}
	return parts
}

// queueOf is the number and kind of g.queues[i]: the SYN queues come
// first, then as many completion queues.
func (g *gateway) queueOf(i int) (num uint16, kind string) {
	num, kind = g.cfg.Queue+uint16(i), telemetry.QueueSYN
	if i >= int(g.cfg.Queues) {
		kind = telemetry.QueueCompletion
	}
	return num, kind
}

// queueName names a queue for people: "SYN queue 0", "completion queue 1".
func queueName(num uint16, kind string) string {
	if kind == telemetry.QueueSYN {
		return fmt.Sprintf("SYN queue %d", num)
	}
	return fmt.Sprintf("%s queue %d", kind, num)
}

// serveMetrics serves /metrics, /api/stats and the dashboard until ctx is
// done. A server that fails is logged and stays down: protection matters
// more than its view, and goes on.
func (g *gateway) serveMetrics(ctx context.Context) error {
	srv := telemetry.NewServer(g.tel.Handler())
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(g.metrics); !errors.Is(err, http.ErrServerClosed) {
		g.cfg.Logger.Error().Err(err).Str("event", telemetry.EventMetricsFailed).Msg("metrics server stopped")
		<-ctx.Done()
	}
	return nil
}

// install puts the firewall rules in place and learns the backends'
// options (a service is announced with what its backend will accept from
// its first cookie on).
func (g *gateway) install(ctx context.Context) (*firewall.Installed, error) {
	cfg := g.cfg
	log := cfg.Logger
	rules, err := firewall.Install(ctx, cfg.FirewallConfig())
	if err != nil {
		return nil, err
	}
	g.rules = rules
	services := make([]string, len(cfg.Services))
	for i, s := range cfg.Services {
		services[i] = s.Addr.String()
	}
	log.Info().Str("event", telemetry.EventRulesInstalled).Strs("services", services).
		Uint16("queue", cfg.Queue).Uint16("queues", cfg.Queues).Bool("local", cfg.Local).
		Bool("fail_open", cfg.FailOpen).Msg("firewall rules installed")
	g.parts = append(g.parts, g.watch.part(rules))

	probeMark := uint32(0)
	if cfg.Local {
		// A probe to a service on this host loops back through our own
		// SYN rule; the engine's mark lets it pass untouched.
		probeMark = cfg.EngineMark
	}
	l := newLearner(g.eng, log, probeMark, g.health)
	g.learner = l
	l.probeAll(ctx)
	g.parts = append(g.parts, part{"backend learner", func(ctx context.Context) error {
		l.loop(ctx, cfg.ProbeInterval)
		return nil
	}})
	if g.fast != nil {
		// In step before the start: the rules queue no SYN the program
		// answers, and the engine's first control tick is 100 ms away.
		g.fast.step(g.eng, g.jar, time.Now())
	}
	fw := cfg.FirewallConfig()
	log.Info().Str("event", telemetry.EventStart).Str("mode", cfg.Mode.String()).Strs("services", services).
		Str("syn_queues", fw.SYNQueues().String()).Str("completion_queues", fw.CompletionQueues().String()).
		Str("metrics", cfg.MetricsAddr).Str("reply_path", g.replyPath.String()).
		Dict("xdp", g.fast.attachments()).Msg("synguard protecting services")
	g.ready()
	return rules, nil
}

// serve runs every part until ctx is done or one fails, then stops in
// order: the rules go first, so no packet is queued to a worker that has
// stopped, then the parts, and serve waits for all of them.
func (g *gateway) serve(ctx context.Context, rules *firewall.Installed) error {
	log := g.cfg.Logger
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	eg, failed := errgroup.WithContext(workCtx)
	for _, p := range g.parts {
		eg.Go(func() error {
			err := p.run(failed)
			if failed.Err() != nil {
				return nil // told to stop: whatever it says now is the stop's echo
			}
			if err == nil {
				err = errors.New("stopped unexpectedly")
			}
			return fmt.Errorf("%s: %w", p.name, err)
		})
	}

	select {
	case <-ctx.Done():
		log.Info().Str("event", telemetry.EventStop).Msg("synguard stopping")
	case <-failed.Done():
		// The failure is logged once every part has had its say.
	}
	g.notify.stopping()
	// The fast path goes first: a cookie it answered must not find the
	// rules that complete its handshake gone.
	if g.fast != nil {
		g.fast.prog.Detach()
	}
	removeErr := g.remove(rules)
	stopWork()
	runErr := eg.Wait()
	if runErr != nil {
		log.Error().Err(runErr).Str("event", telemetry.EventWorkerFailed).Msg("stopping")
	}
	return errors.Join(runErr, removeErr)
}

// remove takes the rules down, with a bounded time of its own: the
// caller's context is usually done by now.
func (g *gateway) remove(rules *firewall.Installed) error {
	log := g.cfg.Logger
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rules.Remove(ctx); err != nil {
		log.Error().Err(err).Str("event", telemetry.EventRulesRemoveFailed).Msg("could not remove firewall rules")
		return err
	}
	log.Info().Str("event", telemetry.EventRulesRemoved).Msg("firewall rules removed")
	return nil
}

// close releases what open made; the queues' close unbinds them.
func (g *gateway) close() {
	g.captures.closeAll()
	if g.fast != nil {
		g.fast.prog.Close()
	}
	for _, q := range g.queues {
		q.Close()
	}
	if g.metrics != nil {
		g.metrics.Close()
	}
	if g.table != nil {
		g.table.Close()
	}
	if g.entries != nil {
		g.entries.Close()
	}
	if g.queueStats != nil {
		g.queueStats.Close()
	}
	if g.sender != nil {
		g.sender.Close()
	}
	g.lock.release()
}
