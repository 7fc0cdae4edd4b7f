package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/synguard/synguard/capture"
	"github.com/synguard/synguard/cookies"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
	"github.com/synguard/synguard/xdp"
)

// xdpFreshness is how long past the engine's last control step the
// program answers. The program is brought in step after every control step
// (engine.Config.AfterControl), at least every engine.QuietControlTick, so
// an engine that stalls for this long loses its fast path and the NFQUEUE
// path, with its --fail semantics, takes every packet.
const xdpFreshness = 2 * engine.QuietControlTick

// fastPath is the fast path on the gateway's links (the XDP program, or
// the same code at tc ingress), kept in step with the engine: each service's mode and backend options, the cookie keys
// and a deadline renewed from the engine's heartbeat.
type fastPath struct {
	prog *xdp.Program
	log  zerolog.Logger
	// written is what the program's service map holds, by service index,
	// so only changes are written.
	written map[int]xdp.Service
	lists   map[int]sourceLists
	// keys are the program's keys, derived again only when now leaves
	// their middle epoch.
	keys cookies.EpochKeys
	// synced is when the program was last brought in step (Unix ns), -1
	// once it was detached after a failure: for the watchdog (lastSync).
	synced atomic.Int64
	// replay says the client side runs at tc, where it completes
	// handshakes (replay.go); links are each service address's link
	// toward it (0: none).
	replay bool
	links  map[netip.Addr]int
}

// openFastPath loads the program and attaches it to the configured links
// (by default every link clients can arrive on). With --xdp auto a link
// or a kernel that cannot take it is logged and left to the NFQUEUE path;
// an explicit mode that cannot be had is an error. It returns nil when
// nothing was attached.
func openFastPath(cfg Config) (*fastPath, error) {
	if cfg.XDP == xdp.ModeOff {
		return nil, nil
	}
	log := cfg.Logger
	warn := func(err error) {
		log.Warn().Err(err).Str(telemetry.FieldEvent, telemetry.EventXDPUnavailable).
			Msg("XDP fast path unavailable; the NFQUEUE path handles these packets")
	}
	unavailable := func(err error) (*fastPath, error) {
		if cfg.XDP != xdp.ModeAuto {
			return nil, err
		}
		warn(err)
		return nil, nil
	}
	names := cfg.XDPInterfaces
	if len(names) == 0 {
		var err error
		if names, err = xdp.DefaultInterfaces(); err != nil {
			return unavailable(err)
		}
	}
	if len(cfg.Services) > xdp.MaxServices {
		return unavailable(fmt.Errorf("xdp: %d services, the program holds %d", len(cfg.Services), xdp.MaxServices))
	}
	prog, err := xdp.Load()
	if err != nil {
		return unavailable(err)
	}
	for _, name := range names {
		if _, err := prog.Attach(name, cfg.XDP); err != nil {
			if cfg.XDP != xdp.ModeAuto {
				prog.Close()
				return nil, err
			}
			warn(err)
		}
	}
	if len(prog.Attached()) == 0 {
		prog.Close()
		return nil, nil
	}
	f := &fastPath{prog: prog, log: log, written: make(map[int]xdp.Service), lists: make(map[int]sourceLists),
		links: make(map[netip.Addr]int)}
	f.replay = !cfg.Local && slices.ContainsFunc(prog.Attached(), func(a xdp.Attachment) bool { return a.Mode == xdp.ModeTC })
	return f, nil
}

// Counts are the program's counts as engine counters, for the engine to
// add to its own: the control loop and the metrics see the SYNs answered
// at the driver.
func (f *fastPath) Counts(svc int) engine.Stats {
	var s engine.Stats
	c, err := f.prog.Counters(svc)
	if err != nil {
		return s
	}
	s.Add(engine.SYNReceived, c.SYNReceived)
	s.Add(engine.SYNACKSent, c.SYNACKSent)
	s.Add(engine.AmplificationGuard, c.AmplificationGuard)
	s.Add(engine.CookieInvalid, c.ACKInvalid)
	s.Add(engine.SYNDenied, c.SYNDenied)
	return s
}

// syncLists writes service i's allow and deny lists when they changed
// (the program drops denied sources' SYNs itself) and reports whether it
// has any.
func (f *fastPath) syncLists(eng *engine.Engine, i int) (bool, error) {
	allow, deny := eng.SourceLists(i)
	has := len(allow) > 0 || len(deny) > 0
	w := f.lists[i]
	if slices.Equal(w.allow, allow) && slices.Equal(w.deny, deny) {
		return has, nil
	}
	if err := f.prog.SetSourceLists(i, allow, deny); err != nil {
		return false, err
	}
	f.lists[i] = sourceLists{allow, deny}
	return has, nil
}

// sourceLists are the lists written for one service.
type sourceLists struct{ allow, deny []netip.Prefix }

// step brings the program in step with eng. install calls it once, so the
// program answers from the start, and the engine on its timer goroutine
// after each control tick, so the sync costs no wake-up of its own. An
// error detaches the program for good: protection goes on through the
// NFQUEUE path.
func (f *fastPath) step(eng *engine.Engine, jar *cookies.Jar, now time.Time) {
	if f.synced.Load() == -1 {
		return
	}
	if err := f.sync(eng, jar, now); err != nil {
		f.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventXDPFailed).
			Msg("XDP fast path detached; the NFQUEUE path handles every packet")
		f.prog.Detach()
		f.synced.Store(-1)
		return
	}
	f.synced.Store(now.UnixNano())
}

// sync writes what changed of each service and renews the keys and the
// deadline: xdpFreshness past now, the control tick it follows (or the
// install, before the engine's first tick).
func (f *fastPath) sync(eng *engine.Engine, jar *cookies.Jar, now time.Time) error {
	live := eng.Services()
	for _, sv := range live {
		i := sv.Index
		b := eng.Backend(i)
		lists, err := f.syncLists(eng, i)
		if err != nil {
			return err
		}
		s := xdp.Service{Addr: sv.Addr, Mode: xdpMode(eng, i), Lists: lists, EarlyData: eng.EarlyData(),
			MSS: b.MSS, WindowScale: b.WindowScale, SACKPermitted: b.SACKPermitted,
			ReplayIfindex: f.replayLink(sv.Addr.Addr())}
		if w, ok := f.written[i]; ok && s == w {
			continue
		}
		if err := f.prog.SetService(i, s); err != nil {
			return err
		}
		f.written[i] = s
	}
	if len(f.written) > len(live) {
		// A reload removed services: their packets pass to the rules,
		// which no longer queue them.
		for i, w := range f.written {
			if !slices.ContainsFunc(live, func(sv engine.Service) bool { return sv.Index == i }) {
				if err := f.prog.RemoveService(w.Addr); err != nil {
					return err
				}
				if err := f.prog.SetSourceLists(i, nil, nil); err != nil {
					return err
				}
				delete(f.written, i)
				delete(f.lists, i)
			}
		}
	}
	if !f.keysCover(now) {
		f.keys = jar.EpochKeys(now)
	}
	return f.prog.Renew(f.keys, now.Add(xdpFreshness))
}

// lastSync is when the program was last brought in step (zero before the
// first time), and false once it was detached after a failure.
func (f *fastPath) lastSync() (time.Time, bool) {
	switch ns := f.synced.Load(); ns {
	case -1:
		return time.Time{}, false
	case 0:
		return time.Time{}, true
	default:
		return time.Unix(0, ns), true
	}
}

// keysCover reports whether now lies in the middle epoch of f.keys, the
// one EpochKeys was asked for.
func (f *fastPath) keysCover(now time.Time) bool {
	p := int64(f.keys.Period)
	if p == 0 {
		return false
	}
	start := time.Unix(0, (f.keys.First+1)*p)
	return !now.Before(start) && now.Before(start.Add(f.keys.Period))
}

// xdpMode is what the program does with service i's packets.
func xdpMode(eng *engine.Engine, i int) xdp.ServiceMode {
	switch {
	case eng.ServiceMode(i) == engine.ModeOff:
		return xdp.Observe
	case eng.ServiceState(i) == engine.StateCookie:
		return xdp.Cookie
	}
	return xdp.Passthrough
}

// attachments names each link's mode (native, generic or tc) for the
// start event.
func (f *fastPath) attachments() *zerolog.Event {
	d := zerolog.Dict()
	if f != nil {
		for _, a := range f.prog.Attached() {
			d.Str(a.Interface, a.Mode.String())
		}
	}
	return d
}

// actions are the program's verdict counts for synguard_xdp_packets_total.
func (f *fastPath) actions() map[string]uint64 {
	a, err := f.prog.Actions()
	if err != nil {
		return nil
	}
	return map[string]uint64{"pass": a.Pass, "drop": a.Drop, "tx": a.TX, "forward": a.Forward}
}

// counters adds service svc's fast-path counters to m, beside the
// engine's (which include them), so a dashboard can tell which path
// answers.
func (f *fastPath) counters(svc int, m map[string]uint64) {
	c, err := f.prog.Counters(svc)
	if err != nil {
		return
	}
	m[telemetry.CounterXDPSYNACKSent] = c.SYNACKSent
	m[telemetry.CounterXDPACKDropped] = c.ACKInvalid
	m[telemetry.CounterXDPHandshakeCompleted] = c.Completed
	m[telemetry.CounterXDPTranslated] = c.Translated
}

// ringLost logs that one of the program's rings cannot be read (msg, err)
// and waits for the stop: losing a ring costs what it feeds, never the
// protection, so it is not fatal.
func (f *fastPath) ringLost(ctx context.Context, err error, msg string) error {
	f.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventXDPFailed).Msg(msg)
	<-ctx.Done()
	return nil
}

// runSamples feeds the SYNs the program samples (one in xdp.SampleEvery
// of those it answers or drops, at most one per xdp.SampleGap on a CPU,
// each weighing the SYNs since the last) to the engine's counts by
// source and to the attack's pcap sample, until ctx is done (readSamples
// says when it reads them). Without them an attack answered at the
// driver would have no sources; losing them costs the attribution, not
// the protection, so a failure is logged, not fatal.
func (f *fastPath) runSamples(ctx context.Context, eng *engine.Engine, caps *captures) error {
	r, err := f.prog.Samples()
	if err != nil {
		return f.ringLost(ctx, err, "XDP samples unavailable: attacks answered at the driver have no sources")
	}
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	failed := func(err error) error {
		if ctx.Err() != nil {
			return nil // the ring was closed for the stop
		}
		return f.ringLost(ctx, err, "XDP samples stopped: attacks answered at the driver have no sources")
	}
	use := func(s xdp.Sample) {
		ip, ok := capture.FromEthernet(s.Frame)
		if !ok {
			return
		}
		src, ok := sourceAddr(ip)
		if !ok {
			return
		}
		eng.ObserveSource(s.Service, src, s.Weight)
		caps.offer(s.Service, ip, time.Now())
	}
	return readSamples(ctx, r, use, failed)
}

// sampleRing is what readSamples needs of an xdp.SampleReader.
type sampleRing interface {
	Read() (xdp.Sample, error)
	SetDeadline(t time.Time)
	Fill() float64
}

// readSamples hands r's samples to use until ctx is done, and an error
// reading them to failed. It waits on a quiet ring; once a sample wakes
// it, it pauses (nextSamplePoll) and drains, and waits again only after a
// pause that brought nothing. A flood's samples thus cost a wake-up per
// pause, however far apart the program spaces them (xdp.SampleGap):
// draining at once, it found the ring empty behind a lone sample and
// waited again, a wake-up per sample (2,900–4,400 context switches in
// 10 s of a 10k SYN/s flood, against 710–840).
func readSamples(ctx context.Context, r sampleRing, use func(xdp.Sample), failed func(error) error) error {
	pause := time.NewTimer(samplePoll)
	pause.Stop()
	for {
		r.SetDeadline(time.Time{})
		s, err := r.Read()
		if err != nil {
			return failed(err)
		}
		use(s)
		// Pause and drain, without waiting, while samples come.
		r.SetDeadline(time.Unix(1, 0))
		wait := samplePoll
		for {
			pause.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-pause.C:
			}
			fill := r.Fill()
			n := 0
			for {
				s, err := r.Read()
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					return failed(err)
				}
				use(s)
				n++
			}
			if n == 0 {
				break
			}
			wait = nextSamplePoll(wait, fill)
		}
	}
}

// samplePoll is the longest readSamples leaves a ring that has samples.
// The ring (xdp/synguard.c) holds about 3,850, so 100 ms keeps up with
// 38,000 samples a second (four CPUs at xdp.SampleGap's most); more
// shorten it. Each
// drain is a wake-up, and on a quiet gateway the wake-ups cost more than
// the samples.
const samplePoll = 100 * time.Millisecond

// nextSamplePoll is the pause before the next drain, given the last pause
// and the share of the ring it filled: short enough that the ring fills
// to half at the same rate, at least a millisecond and at most
// samplePoll. A full ring has lost samples, so the pause at least halves.
func nextSamplePoll(last time.Duration, fill float64) time.Duration {
	next := samplePoll
	if fill > 0 {
		next = time.Duration(float64(last) / (2 * fill))
	}
	return min(max(next, time.Millisecond), samplePoll)
}
