package gateway

import (
	"sync"

	"github.com/synguard/synguard/engine"
	"github.com/synguard/synguard/telemetry"
)

// attackHistoryLen is how many ended attacks are kept per service.
const attackHistoryLen = 20

// attackHistory keeps the attacks that ended, per service, for the
// dashboard: a bounded record, newest last.
type attackHistory struct {
	mu  sync.Mutex
	per map[string][]telemetry.Attack
}

func newAttackHistory() *attackHistory {
	return &attackHistory{per: make(map[string][]telemetry.Attack)}
}

func (h *attackHistory) add(a engine.AttackEnd) {
	h.mu.Lock()
	defer h.mu.Unlock()
	svc := a.Service.String()
	list := append(h.per[svc], telemetry.Attack{
		Started: a.Start, Ended: a.Start.Add(a.Duration), PeakSYNRate: a.PeakSYNRate,
		SYNs: a.SYNs, HandedOff: a.HandedOff, Completion: a.Completion,
		TopSources: sourceCounts(a.Sources.Top), Spread: a.Sources.Spread, TopShare: a.Sources.TopShare,
	})
	if len(list) > attackHistoryLen {
		list = list[len(list)-attackHistoryLen:]
	}
	h.per[svc] = list
}

// newest returns at most n attacks per service, newest first.
func (h *attackHistory) newest(n int) map[string][]telemetry.Attack {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string][]telemetry.Attack, len(h.per))
	for svc, list := range h.per {
		k := min(n, len(list))
		rev := make([]telemetry.Attack, k)
		for i := range k {
			rev[i] = list[len(list)-1-i]
		}
		out[svc] = rev
	}
	return out
}

func sourceCounts(top []engine.SourceCount) []telemetry.SourceCount {
	out := make([]telemetry.SourceCount, len(top))
	for i, c := range top {
		out[i] = telemetry.SourceCount{Prefix: c.Prefix.String(), SYNs: c.SYNs, Completed: c.Completed}
	}
	return out
}
