package gateway

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/firewall"
	"github.com/synguard/synguard/telemetry"
)

// The rules watch (docs/architecture.md, Rules watch) keeps synguard's
// firewall rules in place while other tools rewrite the ruleset.

// RulesCheckPeriod is how often the rules watch compares the live ruleset
// with synguard's rules when the kernel's change notifications cannot be
// relied on: legacy iptables, or no subscription.
const RulesCheckPeriod = 2 * time.Second

// RulesCheckQuiet is the period while they can: synguard's rules are in
// nf_tables, which announces every committed change, and the watch
// receives the announcements. The check then only backs them up; each
// one runs iptables-save once per table, some 10 ms of CPU.
const RulesCheckQuiet = 30 * time.Second

// rulesSettle is how long the watch lets a burst of change notifications
// (one restore of another tool's is many messages) go on before it checks.
const rulesSettle = 100 * time.Millisecond

// ruleset is what the watch keeps in place: *firewall.Installed.
type ruleset interface {
	Check(ctx context.Context) ([]string, error)
	Restore(ctx context.Context) error
}

// rulesWatch checks synguard's rules every period, and soon after the
// kernel announces a netfilter change, and restores what is missing.
type rulesWatch struct {
	log      zerolog.Logger
	restored atomic.Uint64 // synguard_rules_restored_total

	// Tests shorten these, and replace subscribe and inNFTables.
	period, quiet, settle time.Duration
	// subscribe returns a channel that receives after netfilter changes,
	// one that is closed if the notifications stop coming, and how to
	// stop it.
	subscribe func() (changes, lost <-chan struct{}, stop func(), err error)
	// inNFTables reports whether synguard's rules are in nf_tables.
	inNFTables func() bool
}

func newRulesWatch(log zerolog.Logger) *rulesWatch {
	return &rulesWatch{log: log, period: RulesCheckPeriod, quiet: RulesCheckQuiet, settle: rulesSettle,
		subscribe: netfilterChanges, inNFTables: ownChainsInNFTables}
}

// part returns the watch over rules as a gateway part. It acts in the
// network namespace of the calling thread, where Install put the rules,
// whichever thread it runs on later.
func (w *rulesWatch) part(rules ruleset) part {
	ns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		ns = -1 // stay where it runs: every thread of a plain process shares one namespace
	}
	return part{"rules watch", func(ctx context.Context) error {
		if ns >= 0 {
			err := enterNetns(ns)
			unix.Close(ns)
			if err != nil {
				// Protection goes on; only the repair is off.
				w.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventRulesRestoreFailed).
					Msg("rules watch cannot run; firewall rules will not be restored")
				<-ctx.Done()
				return nil
			}
		}
		w.run(ctx, rules)
		return nil
	}}
}

// run checks rules after netfilter changes, and every period (quiet while
// the notifications can be relied on), until ctx is done.
func (w *rulesWatch) run(ctx context.Context, rules ruleset) {
	changes, lost, stop, err := w.subscribe()
	if err != nil {
		// No notifications (not allowed to join, say): polling alone.
		changes, lost, stop = nil, nil, func() {}
	}
	defer stop()
	// Rules in nf_tables are found once, and again after each restore
	// (which might have gone elsewhere).
	relied := changes != nil && w.inNFTables()
	every := func() time.Duration {
		if relied {
			return w.quiet
		}
		return w.period
	}
	tick := time.NewTicker(every())
	defer tick.Stop()
	// One check at once: a change between Install and the join was
	// announced to no one.
	settled := time.After(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-lost:
			lost, relied = nil, false
			tick.Reset(every())
			continue
		case <-changes:
			if settled == nil {
				settled = time.After(w.settle)
			}
			continue
		case <-settled:
		case <-tick.C:
		}
		settled = nil
		if w.round(ctx, rules) {
			if r := lost != nil && w.inNFTables(); r != relied {
				relied = r
				tick.Reset(every())
			}
			// The restore's own notifications are no news. One that
			// arrives later costs one check that finds nothing, so the
			// watch never feeds on itself.
			select {
			case <-changes:
			default:
			}
		}
	}
}

// round checks the rules once and restores what is missing, and reports
// whether it tried to.
func (w *rulesWatch) round(ctx context.Context, rules ruleset) bool {
	start := time.Now()
	missing, err := rules.Check(ctx)
	if err == nil && len(missing) == 0 {
		return false
	}
	if err == nil {
		err = rules.Restore(ctx)
	}
	switch {
	case ctx.Err() != nil || errors.Is(err, firewall.ErrRemoved):
		// Stopping: the rules come down on purpose.
	case err != nil:
		w.log.Error().Err(err).Str(telemetry.FieldEvent, telemetry.EventRulesRestoreFailed).
			Strs("missing", missing).Msg("could not check or restore firewall rules; retrying")
	default:
		w.restored.Add(1)
		w.log.Warn().Str(telemetry.FieldEvent, telemetry.EventRulesRestored).
			Strs("missing", missing).Int64("took_ms", time.Since(start).Milliseconds()).
			Msg("firewall rules changed by someone else; restored")
	}
	return len(missing) > 0
}

// RulesRestored is synguard_rules_restored_total.
func (s *source) RulesRestored() uint64 {
	if s.watch == nil {
		return 0
	}
	return s.watch.restored.Load()
}

// netfilterChanges joins the nf_tables multicast group, where the kernel
// announces every committed change to the ruleset (iptables-nft's
// included; legacy iptables announces nothing), and signals after each
// message. A lost message (ENOBUFS) also means a change. The second
// channel is closed when the socket breaks (or is closed by stop).
func netfilterChanges() (<-chan struct{}, <-chan struct{}, func(), error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("join netfilter change notifications: %w", err)
	}
	changes := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := c.Receive(); err != nil && !errors.Is(err, unix.ENOBUFS) {
				return // closed, or broken: the periodic check goes on
			}
			select {
			case changes <- struct{}{}:
			default:
			}
		}
	}()
	return changes, done, func() { c.Close(); <-done }, nil
}

// ownChainsInNFTables reports whether nf_tables holds a chain of
// synguard's (SYNGUARD-*), as iptables-nft puts them there: then every
// change to them is a transaction the kernel announces. It lists the
// chains of every table and family with one netlink dump; any
// failure is a no.
func ownChainsInNFTables() bool {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return false
	}
	defer c.Close()
	// nfgenmsg: family AF_UNSPEC (all), version 0, resource id 0.
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETCHAIN),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return false
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			continue
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_CHAIN_NAME && firewall.OwnsChain(ad.String()) {
				return true
			}
		}
	}
	return false
}

// enterNetns moves the calling goroutine, for the rest of its life, onto a
// thread in network namespace fd, unless its thread is in it already: in a
// process that never changes namespace every thread is, and entering one
// would need CAP_SYS_ADMIN.
func enterNetns(fd int) error {
	runtime.LockOSThread()
	var want, have unix.Stat_t
	if err := unix.Fstat(fd, &want); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace: %w", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &have); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace: %w", err)
	}
	if want.Dev == have.Dev && want.Ino == have.Ino {
		runtime.UnlockOSThread()
		return nil
	}
	// The thread stays locked: the runtime ends it with the goroutine
	// rather than hand it, in this namespace, to another.
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter the rules' network namespace: %w", err)
	}
	return nil
}
