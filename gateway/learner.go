package gateway

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/backendinfo"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// probeTimeout bounds one probe connection.
const probeTimeout = 2 * time.Second

// learner keeps the engine's backend options current.
type learner struct {
	eng  *engine.Engine
	log  zerolog.Logger
	mark uint32
	down map[int]bool // per service index: last probe failed (log changes only)
	// now asks the loop for a round at once (a reload added services);
	// downNow for one within downProbeEvery (judgedDown).
	now, downNow chan struct{}
	health       *health
	probe        func(ctx context.Context) // probeAll; a test's stand-in
}

func newLearner(eng *engine.Engine, log zerolog.Logger, mark uint32, h *health) *learner {
	l := &learner{eng: eng, log: log, mark: mark, down: make(map[int]bool), now: make(chan struct{}, 1), downNow: make(chan struct{}, 1), health: h}
	l.probe = l.probeAll
	return l
}

// wake asks for a round of probes soon, without waiting.
func (l *learner) wake() {
	select {
	case l.now <- struct{}{}:
	default:
	}
}

func (l *learner) probeAll(ctx context.Context) {
	for _, s := range l.eng.Services() {
		if l.eng.BackendFixed(s.Index) {
			continue // the operator's options: nothing to learn
		}
		i, svc := s.Index, s.Addr
		o, err := backendinfo.Probe(ctx, svc, l.mark, probeTimeout)
		if ctx.Err() != nil {
			return // stopping: the probe's failure says nothing
		}
		l.health.probed(s, err, time.Now())
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

// loop probes every backend each interval, and every downProbeEvery
// while one is down. The gateway's heartbeat judges their health
// (health.judge) and tells the loop of a backend judged down (judgedDown).
func (l *learner) loop(ctx context.Context, every time.Duration) {
	next := time.Now().Add(every)
	probe := time.NewTimer(every)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.downNow:
			if soon := time.Now().Add(downProbeEvery); soon.Before(next) {
				next = soon
				probe.Reset(downProbeEvery)
			}
			continue
		case <-probe.C:
		case <-l.now:
		}
		l.probe(ctx)
		wait := every
		if l.health.anyDown() {
			wait = min(every, downProbeEvery)
		}
		next = time.Now().Add(wait)
		probe.Reset(wait)
	}
}

// judgedDown tells the loop that a backend is down, so that it is probed
// within downProbeEvery; it never waits.
func (l *learner) judgedDown() {
	select {
	case l.downNow <- struct{}{}:
	default:
	}
}
