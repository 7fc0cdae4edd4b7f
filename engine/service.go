package engine

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/synguard/synguard/heavyhitter"
)

// service is everything the engine keeps for one protected service.
// Workers read it with atomic loads; only the control loop writes its
// state, and only Reconfigure its settings.
type service struct {
	addr netip.AddrPort
	slot int // index in serviceTable.all: stable for the engine's life

	// backend holds the packed BackendOptions announced to clients;
	// learned says they were learned at least once, fixed that the
	// operator set them (nothing is learned then).
	backend atomic.Uint32
	learned atomic.Bool
	fixed   atomic.Bool

	// mode is the configured Mode; state is the State workers apply to
	// SYNs, one atomic load each.
	mode  atomic.Uint32
	state atomic.Uint32
	// sources are the allow and deny lists; nil when both are empty, so
	// a SYN to a service without lists costs one load.
	sources atomic.Pointer[sourceLists]
	// thresholds are the watermarks the control loop applies.
	thresholds atomic.Pointer[Thresholds]
	// attack is the attack in progress, for the metrics; nil when none.
	attack atomic.Pointer[AttackStatus]
	// attacks counts the attacks that started.
	attacks atomic.Uint64
	// held counts the service's client segments held for a hand-off.
	held atomic.Int64
	// sampler records the service's SYNs during an attack; nil when none.
	sampler atomic.Pointer[samplerBox]
	// bySource counts sampled SYNs and completed handshakes by source
	// prefix, for attack attribution.
	bySource *heavyhitter.Sketch

	// halfOpen counts SYNs let through; halfOpenN is its count at the
	// last control tick.
	halfOpen  *halfOpenTable
	halfOpenN atomic.Int64
	// control is the controller's own state: only Run's goroutine (or a
	// test's control call) touches it.
	control serviceControl
}

// sourceLists are a service's allow and deny prefixes.
type sourceLists struct {
	allow, deny []netip.Prefix
}

// verdict says what the lists decide for a SYN from src: denied, allowed,
// or neither (0).
func (l *sourceLists) verdict(src netip.Addr) Counter {
	for _, p := range l.deny {
		if p.Contains(src) {
			return SYNDenied
		}
	}
	for _, p := range l.allow {
		if p.Contains(src) {
			return SYNAllowed
		}
	}
	return noCount
}

// serviceTable is the set of services, replaced whole by Reconfigure so
// that a worker sees one consistent version with one atomic load.
type serviceTable struct {
	// all holds every service the engine ever had, by slot. A removed
	// service keeps its slot, so its pending flows, counters and
	// histogram stay valid, and comes back to it if it is added again.
	all []*service
	// live are the slots of the configured services, in configuration
	// order; index maps their addresses to their slots.
	live  []int
	index map[netip.AddrPort]int
}

// lookup returns the slot of the live service at addr.
func (t *serviceTable) lookup(addr netip.AddrPort) (int, bool) {
	svc, ok := t.index[addr]
	return svc, ok
}

// svc returns the service in slot i.
func (e *Engine) svc(i int) *service { return e.table.Load().all[i] }

// Service is a protected service as the engine reports it.
type Service struct {
	// Index identifies the service in Stats, ServiceState and the other
	// per-service calls, and in the events. It stays the same for the
	// engine's life, across reloads.
	Index int
	Addr  netip.AddrPort
	Mode  Mode
}

// Services returns the protected services, in configuration order.
func (e *Engine) Services() []Service {
	t := e.table.Load()
	out := make([]Service, len(t.live))
	for i, slot := range t.live {
		s := t.all[slot]
		out[i] = Service{Index: slot, Addr: s.addr, Mode: Mode(s.mode.Load())}
	}
	return out
}

// resolved is a ServiceConfig with Config's defaults filled in.
func (e *Engine) resolved(sc ServiceConfig) ServiceConfig {
	if sc.Mode == 0 {
		sc.Mode = e.cfg.Mode
	}
	if sc.Thresholds == (Thresholds{}) {
		sc.Thresholds = e.cfg.Thresholds
	}
	if sc.Backend == nil {
		sc.Backend = e.cfg.BackendOverride
	}
	return sc
}

// newService makes the service of slot for sc (resolved).
func newService(slot int, sc ServiceConfig, now time.Time) *service {
	s := &service{addr: sc.Addr, slot: slot}
	// The zero configuration is valid: New cannot fail with it.
	s.bySource, _ = heavyhitter.New(heavyhitter.Config{})
	s.halfOpen = newHalfOpenTable(DefaultHalfOpenSlots, sc.Thresholds.HandshakeTimeout, now)
	s.control = newServiceControl(sc.Thresholds)
	s.backend.Store(packBackend(DefaultBackendOptions(sc.Addr.Addr().Is6())))
	s.apply(sc)
	return s
}

// apply puts the settings of sc (resolved) in force. The controller picks
// up new thresholds at its next tick.
func (s *service) apply(sc ServiceConfig) {
	th := sc.Thresholds
	s.thresholds.Store(&th)
	s.halfOpen.setTimeout(th.HandshakeTimeout)

	if sc.Backend != nil {
		s.fixed.Store(true)
		s.backend.Store(packBackend(*sc.Backend))
	} else if s.fixed.Swap(false) {
		// No longer fixed: learn again, from the next probe or SYN-ACK.
		s.learned.Store(false)
	}

	var lists *sourceLists
	if len(sc.Allow) > 0 || len(sc.Deny) > 0 {
		lists = &sourceLists{allow: masked(sc.Allow), deny: masked(sc.Deny)}
	}
	s.sources.Store(lists)

	old := Mode(s.mode.Swap(uint32(sc.Mode)))
	switch {
	case sc.Mode == ModeAlways:
		s.state.Store(uint32(StateCookie))
	case sc.Mode == ModeOff:
		s.state.Store(uint32(StatePassthrough))
	case old == 0:
		s.state.Store(uint32(StatePassthrough))
	}
	// A service switched to auto keeps its state; the control loop
	// takes it from there.
}

func masked(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Masked()
	}
	return out
}

// Reconfigure replaces the set of protected services and their settings,
// as a reload does. Services kept keep their counters, half-open counts,
// learned backend options and pending flows; removed ones stop matching
// packets at once, and their pending flows finish. It changes nothing if
// services is invalid.
func (e *Engine) Reconfigure(services []ServiceConfig) error {
	if err := validateServices(services); err != nil {
		return fmt.Errorf("engine config: %w", err)
	}
	e.reconfigure.Lock()
	defer e.reconfigure.Unlock()
	old := e.table.Load()
	next := &serviceTable{all: slices.Clone(old.all), index: make(map[netip.AddrPort]int, len(services))}
	slotOf := make(map[netip.AddrPort]int, len(old.all))
	for _, s := range old.all {
		slotOf[s.addr] = s.slot
	}
	added := 0
	for _, sc := range services {
		if _, ok := slotOf[sc.Addr]; !ok {
			added++
		}
	}
	if len(old.all)+added > MaxServices {
		return fmt.Errorf("engine config: %d services over this run's life: at most %d; restart to start afresh", len(old.all)+added, MaxServices)
	}
	now := e.cfg.Now()
	for _, sc := range services {
		sc = e.resolved(sc)
		slot, ok := slotOf[sc.Addr]
		if !ok {
			slot = len(next.all)
			next.all = append(next.all, newService(slot, sc, now))
		} else {
			next.all[slot].apply(sc)
		}
		next.live = append(next.live, slot)
		next.index[sc.Addr] = slot
	}
	e.table.Store(next)
	// The control loop, and the fast path synced after it, take the new
	// table now rather than at a quiet loop's next step.
	e.wakeControl()
	return nil
}

// errNoService is returned for a service index the engine never had.
var errNoService = errors.New("no such service")

// ServiceByAddr returns the live service at addr.
func (e *Engine) ServiceByAddr(addr netip.AddrPort) (Service, error) {
	t := e.table.Load()
	slot, ok := t.lookup(addr)
	if !ok {
		return Service{}, fmt.Errorf("%s: %w", addr, errNoService)
	}
	s := t.all[slot]
	return Service{Index: slot, Addr: addr, Mode: Mode(s.mode.Load())}, nil
}

// BackendOrigin says where service svc's announced options come from:
// "fixed" by the operator, "learned" from its backend, or "default" until
// they are learned.
func (e *Engine) BackendOrigin(svc int) string {
	s := e.svc(svc)
	switch {
	case s.fixed.Load():
		return "fixed"
	case s.learned.Load():
		return "learned"
	}
	return "default"
}

// PacketSampler keeps a sample of packets (package capture's Sampler
// does, as a pcap file). Offer is called on the packet path: it must not
// block or allocate.
type PacketSampler interface {
	Offer(pkt []byte, ts time.Time) bool
}

type samplerBox struct{ s PacketSampler }

// SetSampler makes service svc offer each SYN it receives to s, until it
// is set to nil.
func (e *Engine) SetSampler(svc int, s PacketSampler) {
	if s == nil {
		e.svc(svc).sampler.Store(nil)
		return
	}
	e.svc(svc).sampler.Store(&samplerBox{s})
}

// SourceLists returns service svc's allow and deny lists, masked.
func (e *Engine) SourceLists(svc int) (allow, deny []netip.Prefix) {
	l := e.svc(svc).sources.Load()
	if l == nil {
		return nil, nil
	}
	return l.allow, l.deny
}

// ObserveSource counts a SYN to service svc seen elsewhere (a sample of
// the XDP fast path's), weighing weight SYNs, by its source's prefix. The
// SYNs also count toward waking a quiet control loop.
func (e *Engine) ObserveSource(svc int, src netip.Addr, weight uint32) {
	if t := e.table.Load(); svc >= 0 && svc < len(t.all) {
		t.all[svc].bySource.ObserveN(src, weight)
		e.sawSYNs(uint64(weight))
	}
}
