package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// runReloads applies a new configuration each time one is asked for,
// until ctx is done. A reload that fails leaves the running configuration
// fully in force.
func (g *gateway) runReloads(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.cfg.Reload:
			g.reloadOnce(ctx)
		}
	}
}

// reloadOnce loads and applies the configuration, and logs the outcome.
func (g *gateway) reloadOnce(ctx context.Context) {
	log := g.cfg.Logger
	start := time.Now()
	g.notify.reloading()
	// Applied or rejected, synguard is ready again with what is in force.
	defer func() { g.notify.ready(g.status()) }()
	next, err := g.cfg.Load()
	if err == nil {
		var changes []string
		if changes, err = g.apply(ctx, next); err == nil {
			log.Info().Str(telemetry.FieldEvent, telemetry.EventConfigReloaded).Strs("changes", changes).
				Int64("took_ms", time.Since(start).Milliseconds()).Msg("configuration reloaded")
			return
		}
	}
	log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventConfigRejected).
		Msg("configuration rejected; the running configuration stays in force")
}

// apply puts in force what a reload can change of loaded (the services
// and their default settings; Load refuses the rest) and returns what
// changed. The engine learns of new services before the rules send it
// their packets; if the rules cannot be replaced, the engine goes back to
// the running configuration.
func (g *gateway) apply(ctx context.Context, loaded Config) ([]string, error) {
	next := g.cfg
	next.Services, next.Mode, next.Thresholds, next.Backend = loaded.Services, loaded.Mode, loaded.Thresholds, loaded.Backend
	next.setDefaults()
	fw := next.FirewallConfig()
	if err := fw.Validate(); err != nil {
		return nil, err
	}
	running, wanted := g.cfg.resolvedServices(), next.resolvedServices()
	changes := serviceChanges(running, wanted)
	if len(changes) == 0 {
		return nil, nil
	}
	if err := g.eng.Reconfigure(wanted); err != nil {
		return nil, err
	}
	if err := g.rules.Replace(ctx, fw); err != nil {
		if rerr := g.eng.Reconfigure(running); rerr != nil {
			err = fmt.Errorf("%w; and the engine could not go back: %v", err, rerr)
		}
		return nil, err
	}
	g.cfg = next
	if g.learner != nil {
		g.learner.wake()
	}
	return changes, nil
}

// resolvedServices are the services with the defaults filled in: what
// the engine applies.
func (c *Config) resolvedServices() []engine.ServiceConfig {
	out := make([]engine.ServiceConfig, len(c.Services))
	for i, s := range c.Services {
		s.Mode = c.modeOf(s)
		if s.Thresholds == (engine.Thresholds{}) {
			s.Thresholds = c.Thresholds
		}
		if s.Thresholds == (engine.Thresholds{}) {
			s.Thresholds = engine.DefaultThresholds
		}
		if s.Backend == nil {
			s.Backend = c.Backend
		}
		out[i] = s
	}
	return out
}

// serviceChanges describes, one line each, how the services next differ
// from old: added, removed, and each setting changed, named by its
// configuration key.
func serviceChanges(old, next []engine.ServiceConfig) []string {
	var out []string
	byAddr := make(map[netip.AddrPort]engine.ServiceConfig, len(old))
	for _, s := range old {
		byAddr[s.Addr] = s
	}
	for _, n := range next {
		o, ok := byAddr[n.Addr]
		delete(byAddr, n.Addr)
		if !ok {
			out = append(out, "added "+n.Addr.String())
			continue
		}
		changed := func(key, from, to string) {
			if from != to {
				out = append(out, fmt.Sprintf("%s: %s %s -> %s", n.Addr, key, from, to))
			}
		}
		changed("mode", o.Mode.String(), n.Mode.String())
		ot, nt := o.Thresholds, n.Thresholds
		changed("half_open_high", strconv.Itoa(ot.HalfOpenHigh), strconv.Itoa(nt.HalfOpenHigh))
		changed("half_open_low", strconv.Itoa(ot.HalfOpenLow), strconv.Itoa(nt.HalfOpenLow))
		changed("syn_rate_high", ftoa(ot.SYNRateHigh), ftoa(nt.SYNRateHigh))
		changed("syn_rate_low", ftoa(ot.SYNRateLow), ftoa(nt.SYNRateLow))
		changed("hold", ot.Hold.String(), nt.Hold.String())
		changed("handshake_timeout", ot.HandshakeTimeout.String(), nt.HandshakeTimeout.String())
		changed("backend", backendString(o.Backend), backendString(n.Backend))
		changed("allow", fmt.Sprint(o.Allow), fmt.Sprint(n.Allow))
		changed("deny", fmt.Sprint(o.Deny), fmt.Sprint(n.Deny))
	}
	for _, o := range old {
		if _, gone := byAddr[o.Addr]; gone {
			out = append(out, "removed "+o.Addr.String())
		}
	}
	return out
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// backendString describes fixed backend options, or "learned".
func backendString(b *engine.BackendOptions) string {
	if b == nil {
		return "learned"
	}
	ws := "none"
	if b.WindowScale != cookies.NoWindowScale {
		ws = strconv.Itoa(int(b.WindowScale))
	}
	return fmt.Sprintf("mss=%d,wscale=%s,sack=%t", b.MSS, ws, b.SACKPermitted)
}
