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
	// now asks the loop for a round at once (a reload added services).
	now    chan struct{}
	health *health
}

func newLearner(eng *engine.Engine, log zerolog.Logger, mark uint32, h *health) *learner {
	return &learner{eng: eng, log: log, mark: mark, down: make(map[int]bool), now: make(chan struct{}, 1), health: h}
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

// loop probes every backend each interval (every downProbeEvery while
// one is down) and judges their health each second.
func (l *learner) loop(ctx context.Context, every time.Duration) {
	judge := time.NewTicker(time.Second)
	defer judge.Stop()
	next := time.Now().Add(every)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-judge.C:
			l.health.judge(l.eng, now)
			if soon := now.Add(downProbeEvery); l.health.anyDown() && soon.Before(next) {
				next = soon
			}
			if now.Before(next) {
				continue
			}
		case <-l.now:
		}
		l.probeAll(ctx)
		next = time.Now().Add(every)
	}
}
