package gateway

import (
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/capture"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// captures writes a pcap sample of each attack's SYNs into the capture
// directory (--capture-dir): the engine offers the SYNs it receives and
// the fast path its samples to the attacked service's Sampler.
type captures struct {
	dir *capture.Dir // nil: no capture directory
	log zerolog.Logger
	eng *engine.Engine // set once the engine is made

	mu     sync.Mutex
	active map[int]*capture.Sampler // by service index
}

func newCaptures(dir *capture.Dir, log zerolog.Logger) *captures {
	return &captures{dir: dir, log: log, active: make(map[int]*capture.Sampler)}
}

// start begins service svc's sample and returns its file, or "" when
// there is none.
func (c *captures) start(svc int, service string, at time.Time) string {
	if c == nil || c.dir == nil {
		return ""
	}
	s, err := c.dir.Start(service, at)
	if err != nil {
		c.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventCaptureFailed).Str("service", service).
			Msg("cannot sample this attack's packets")
		return ""
	}
	c.mu.Lock()
	c.active[svc] = s
	c.mu.Unlock()
	c.eng.SetSampler(svc, s)
	return s.Path()
}

// offer hands a sampled packet (an IP packet) to service svc's sample,
// if an attack on it is being captured.
func (c *captures) offer(svc int, pkt []byte, ts time.Time) {
	if c == nil || c.dir == nil {
		return
	}
	c.mu.Lock()
	s := c.active[svc]
	c.mu.Unlock()
	if s != nil {
		s.Offer(pkt, ts)
	}
}

// stop ends service svc's sample, if one is being written.
func (c *captures) stop(svc int) (capture.Result, bool) {
	if c == nil || c.dir == nil {
		return capture.Result{}, false
	}
	c.mu.Lock()
	s := c.active[svc]
	delete(c.active, svc)
	c.mu.Unlock()
	if s == nil {
		return capture.Result{}, false
	}
	c.eng.SetSampler(svc, nil)
	res, err := s.Close()
	if err != nil {
		c.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventCaptureFailed).Str("pcap", res.Path).
			Msg("the attack's packet sample is incomplete")
	}
	return res, true
}

// closeAll ends every sample being written, at stop: their files stay
// valid pcap files.
func (c *captures) closeAll() {
	if c == nil || c.dir == nil {
		return
	}
	c.mu.Lock()
	svcs := make([]int, 0, len(c.active))
	for svc := range c.active {
		svcs = append(svcs, svc)
	}
	c.mu.Unlock()
	for _, svc := range svcs {
		c.stop(svc)
	}
}
