package gateway

import (
	"github.com/synguard/synguard/conntrack"
	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/nfq"
	"github.com/synguard/synguard/telemetry"
)

// source feeds the metrics collector.
type source struct {
	eng        *engine.Engine
	queues     []*nfq.Queue
	queueStats *nfq.KernelStatsReader
	queueOf    func(i int) (num uint16, kind string) // gateway.queueOf
	fast       *fastPath                             // nil without XDP
	health     *health
	attacks    *attackHistory
	watch      *rulesWatch

	entries     *conntrack.Counter
	handoffMark uint32
}

// HandoffEntries counts the kernel's entries with the hand-off mark, for
// synguard_handoff_entries: a standby's shows what conntrackd copied.
func (s *source) HandoffEntries() (int, error) {
	return s.entries.Count(s.handoffMark)
}

// Attacks are the attacks that ended, newest first.
func (s *source) Attacks(n int) map[string][]telemetry.Attack { return s.attacks.newest(n) }

// backend is service i's backend for telemetry.
func (s *source) backend(i int) telemetry.Backend {
	o := s.eng.Backend(i)
	b := telemetry.Backend{MSS: o.MSS, WindowScale: int(o.WindowScale), SACK: o.SACKPermitted, Options: s.eng.BackendOrigin(i)}
	b.Up, b.Reason, b.Since = s.health.view(i)
	return b
}

// attack is the attack in progress on service i, or nil.
func (s *source) attack(i int) *telemetry.Attack {
	a := s.eng.Attack(i)
	if a == nil {
		return nil
	}
	return &telemetry.Attack{
		Started: a.Start, Reason: a.Reason, PeakSYNRate: a.PeakSYNRate, SYNs: a.SYNs, HandedOff: a.HandedOff,
		Completion: a.Completion, TopSources: sourceCounts(a.Sources.Top), Spread: a.Sources.Spread, TopShare: a.Sources.TopShare,
	}
}

func (s *source) ServiceCounters() []telemetry.ServiceCounters {
	svcs := s.eng.Services()
	out := make([]telemetry.ServiceCounters, len(svcs))
	for j, sv := range svcs {
		i, svc := sv.Index, sv.Addr
		st := s.eng.Stats(i)
		m := make(map[string]uint64, len(st))
		for _, c := range engine.Counters() {
			m[c.String()] = st.Get(c)
		}
		if s.fast != nil {
			s.fast.counters(i, m)
		}
		out[j] = telemetry.ServiceCounters{Index: i, Service: svc.String(), Mode: s.serviceMode(i), Counters: m, HalfOpen: s.eng.HalfOpen(i), Pending: s.eng.Pending(), Held: s.eng.HeldBy(i),
			Backend: s.backend(i), Attack: s.attack(i), AttacksStarted: s.eng.AttacksStarted(i)}
	}
	return out
}

// serviceMode is the synguard_mode label of service i: what it does with
// SYNs now (cookie or passthrough), or off when synguard only observes.
func (s *source) serviceMode(i int) string {
	if s.eng.ServiceMode(i) == engine.ModeOff {
		return engine.ModeOff.String()
	}
	return s.eng.ServiceState(i).String()
}

func (s *source) QueueCounters() []telemetry.QueueCounters {
	kernel, _ := s.queueStats.Read()
	out := make([]telemetry.QueueCounters, len(s.queues))
	for i, q := range s.queues {
		st := q.Stats()
		num, kind := s.queueOf(i)
		qc := telemetry.QueueCounters{Queue: num, Kind: kind, Received: st.Received, Batches: st.Batches, ENOBUFS: st.ENOBUFS, VerdictError: st.VerdictErrors}
		for _, k := range kernel {
			if k.Queue == qc.Queue {
				qc.KernelDrops = k.QueueDropped + k.UserDropped
			}
		}
		out[i] = qc
	}
	return out
}

// XDPActions are the fast path's verdict counts; nil without one.
func (s *source) XDPActions() map[string]uint64 {
	if s.fast == nil {
		return nil
	}
	return s.fast.actions()
}
